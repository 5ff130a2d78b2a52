"""`edgecls update URL`: one check of a signed update repository, and an install when it has something for us.

Order of the checks, each refusal one line and the running bundle untouched: TUF's refresh (signatures, versions
never going back, expiry, snapshot consistency) → the signed release index → newest release for this device's
cohort → newer than what runs → its needs fit this device → the archive downloaded and verified against the
signed hash and length → unpacked into a new folder → the bundle loads (schema, every file's sha256) and is the
one the index names → its own exam passes here, on this device's runtime → installed into the free slot
(fleet/slots.py). A refused version is remembered and not downloaded again.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.fleet.release import INDEX, Release, in_rollout, parse_index, why_not_runnable
from edgecls.fleet.slots import DeviceDir, now
from edgecls.fsutil import sha256_file

SOCKET_TIMEOUT_S = 20


class Refused(EdgeclsError):
    """A release (or the repository) the device would not take; the running bundle is untouched. `final`: the
    release itself is at fault (its exam, its contents), so it is remembered and never downloaded again; a
    network fault, a full disk or a runtime this device lacks may pass, so those are tried again next time."""

    def __init__(self, message: str, final: bool = False):
        super().__init__(message)
        self.final = final


@dataclass
class Outcome:
    action: str                      # "installed", "up-to-date", "refused"
    version: int | None = None
    reason: str | None = None
    state: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"action": self.action, "version": self.version, "reason": self.reason,
                "current": self.state.get("current"), "previous": self.state.get("previous")}


def _tuf_reason(e: Exception) -> str:
    from tuf.api import exceptions as tx
    from urllib3.exceptions import HTTPError as Urllib3Error

    kinds = ((tx.UnsignedMetadataError, "not signed by the keys this device trusts"),
             (tx.BadVersionNumberError, "older than what this device has already seen (a rollback)"),
             (tx.ExpiredMetadataError, "the repository's signed metadata has expired (frozen or stale: the "
                                       "publisher must run `edgecls release REPO --refresh`)"),
             (tx.LengthOrHashMismatchError, "a file differs from its signed hash or length (tampered or cut)"),
             ((tx.DownloadError, Urllib3Error, OSError), "download failed"),
             (tx.RepositoryError, "the repository's metadata is invalid"))
    for kind, words in kinds:
        if isinstance(e, kind):
            return f"{words}: {e}"
    return f"{type(e).__name__}: {e}"


def file_fetcher():
    """TUF's fetcher for a file:// repository (a USB stick, a mounted share): a missing file is TUF's 404, which
    ends its search for newer roots as it does over HTTP."""
    import urllib.parse
    import urllib.request

    from tuf.api import exceptions
    from tuf.ngclient.fetcher import FetcherInterface

    class FileFetcher(FetcherInterface):
        def _fetch(self, url: str):
            path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
            try:
                f = open(path, "rb")
            except (FileNotFoundError, NotADirectoryError):
                raise exceptions.DownloadHTTPError(f"{path} not found", 404) from None

            def chunks():
                with f:
                    while chunk := f.read(1 << 20):
                        yield chunk
            return chunks()

    return FileFetcher()


def open_updater(url: str, dev: DeviceDir, root: Path | None):
    """TUF's client over DEVICE_DIR/tuf; on first use the trust anchor is `root` (the repository's 1.root.json,
    brought to the device by the installer, never fetched from the repository itself)."""
    from tuf.ngclient import Updater
    from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

    meta = dev.path / "tuf"
    meta.mkdir(parents=True, exist_ok=True)
    if (meta / "root.json").is_file():
        bootstrap = None     # the newest root TUF verified, as it keeps it
    elif root is not None:
        try:
            bootstrap = Path(root).read_bytes()
        except OSError as e:
            raise EdgeclsError(f"--root {root}: {e.strerror}") from None
    else:
        raise EdgeclsError(f"{dev.path} trusts no repository yet: give --root with the repository's 1.root.json "
                           "(copied from the publisher, not downloaded)")
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://", "file://")):
        raise EdgeclsError(f"the repository's URL must be http://, https:// or file:// (got {url!r})")
    fetcher = file_fetcher() if base.startswith("file://") else Urllib3Fetcher(socket_timeout=SOCKET_TIMEOUT_S)
    try:
        return Updater(str(meta), f"{base}/metadata/", str(dev.path / "downloads"), f"{base}/targets/",
                       fetcher=fetcher, bootstrap=bootstrap)
    except Exception as e:    # an unparsable or unsigned root
        raise EdgeclsError(f"the trusted root is not usable: {_tuf_reason(e)}") from None


def _fetch(updater, target: str, dest: Path) -> Path:
    try:
        info = updater.get_targetinfo(target)
        if info is None:
            raise Refused(f"the signed repository does not list {target}")
        return Path(updater.download_target(info, str(dest)))
    except EdgeclsError:
        raise
    except OSError as e:
        raise Refused(f"cannot write {dest}: {e.strerror or e}") from None
    except Exception as e:
        raise Refused(_tuf_reason(e)) from None


def choose(releases: list[Release], current_version: int, device_id: str) -> Release | None:
    mine = [r for r in releases if r.version > current_version and in_rollout(device_id, r)]
    return max(mine, key=lambda r: r.version, default=None)


def _exam(bundle, key: str) -> None:
    from edgecls.device.model.verify import verify

    try:
        exam = verify(bundle, [key])
    except EdgeclsError as e:
        raise Refused(f"its exam could not run here: {e}", final=True) from None
    if not exam.passed:
        raise Refused(f"it fails its own exam on this device: {exam.reason}", final=True)


@dataclass
class Staged:
    """A release downloaded, unpacked and examined in a folder beside the slots, not yet installed."""
    release: Release
    folder: Path

    @property
    def record(self) -> dict:
        return {"version": self.release.version, "bundle_id": self.release.bundle_id}

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _unpack_and_examine(dev: DeviceDir, archive: Path, release: Release) -> Staged:
    from edgecls.bundle import load_bundle
    from edgecls.fleet.packing import unpack

    made = dev.new_slot()
    try:
        unpack(archive, made)
        bundle = load_bundle(made)
        if sha256_file(made / "edgecls.json")[:16] != release.bundle_id:
            raise Refused("the archive's bundle is not the one its release names", final=True)
        key = release.needs.get("default_artifact") or bundle.meta.get("default_artifact")
        _exam(bundle, key)
        return Staged(release, made)
    except BaseException as e:
        shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, Refused) or not isinstance(e, (EdgeclsError, OSError)):
            raise
        if isinstance(e, OSError):
            raise Refused(f"cannot install into {dev.path}: {e.strerror or e}") from None
        raise Refused(f"the bundle is broken: {e}", final=True) from None   # the archive or its bundle


def stage(url: str, dev: DeviceDir, root: Path | None = None) -> Staged | Outcome:
    """One poll up to the install: the newest release meant for this device downloaded, verified and examined
    in a new folder (Staged), or the Outcome that says why there is nothing to install. Touches no slot."""
    dev.path.mkdir(parents=True, exist_ok=True)
    dev.repair()
    state = dev.state()
    current = (state.get("current") or {}).get("version", 0)
    updater = open_updater(url, dev, root)
    downloads = dev.path / "downloads"
    release = None
    try:
        try:
            updater.refresh()
        except Exception as e:
            raise Refused(f"repository: {_tuf_reason(e)}") from None
        releases = parse_index(_fetch(updater, INDEX, downloads / INDEX).read_bytes())
        release = choose(releases, current, dev.device_id())
        if release is None:
            return Outcome("up-to-date", current, state=dev.note(last_check=now(), last_result="up to date"))
        if str(release.version) in state.get("refused", {}):
            raise Refused(f"version {release.version} was refused before: {state['refused'][str(release.version)]}")
        problem = why_not_runnable(release.needs)
        if problem:
            raise Refused(problem)
        archive = _fetch(updater, release.target, downloads / f"v{release.version}.tar")
        try:
            return _unpack_and_examine(dev, archive, release)
        finally:
            archive.unlink(missing_ok=True)
    except Refused as e:
        return refuse(dev, release, e)


def install(dev: DeviceDir, staged: Staged) -> Outcome:
    try:
        state = dev.install(staged.folder, staged.record)
    except OSError as e:
        staged.discard()
        return refuse(dev, staged.release, Refused(f"cannot install into {dev.path}: {e.strerror or e}"))
    state = dev.note(last_check=now(), last_result=f"installed version {staged.release.version}")
    return Outcome("installed", staged.release.version, state=state)


def check_once(url: str, device_dir: Path, root: Path | None = None) -> Outcome:
    """`edgecls update`: install the newest release meant for this device once it passes every check
    here (no live frames, so no canary: `run --updates` adds it), or say why not."""
    dev = DeviceDir(device_dir)
    staged = stage(url, dev, root)
    return install(dev, staged) if isinstance(staged, Staged) else staged


def refuse(dev: DeviceDir, release: Release | None, e: Refused) -> Outcome:
    """Record a refusal (a release that failed on its own merits is remembered: `Refused.final`)."""
    reason = str(e)
    state = dev.state()
    refusal = {"version": release.version if release else None, "reason": reason, "at": now()}
    refused = dict(state.get("refused", {}))
    if release is not None and e.final:
        refused[str(release.version)] = reason
    state = dev.note(last_check=now(), last_result="refused", last_refusal=refusal, refused=refused)
    return Outcome("refused", release.version if release else None, reason, state)
