"""The publisher's update repository: plain files under REPO_DIR, signed with python-tuf's metadata API.

    REPO_DIR/metadata/1.root.json, root.json       who may sign what (root key; root.json: the newest copy)
    REPO_DIR/metadata/N.targets.json              the releases: the index and each bundle archive, by hash
    REPO_DIR/metadata/N.snapshot.json             which targets metadata is current
    REPO_DIR/metadata/timestamp.json              which snapshot is current; expires soonest (freshness)
    REPO_DIR/targets/<sha256>.releases.json       the index (fleet/release.py)
    REPO_DIR/targets/bundles/<sha256>.NAME-vN.tar each bundle (fleet/packing.py)

Consistent snapshots (every file named by version or hash) and timestamp.json written last, in one rename: a
device that reads the repository while a release is being published sees the old state or the new, never a mix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.fleet import keys
from edgecls.fleet.release import INDEX, Release, index_bytes, needs_of, parse_index
from edgecls.fsutil import atomic_write_bytes, sha256_file, temp_file

EXPIRY_DAYS = {"root": 365, "targets": 365, "snapshot": 30, "timestamp": 7}


def _expiry(days: float) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


@dataclass
class Repo:
    path: Path
    root: object       # tuf Metadata[Root]
    targets: object    # Metadata[Targets]
    snapshot: object
    timestamp: object

    @property
    def meta_dir(self) -> Path:
        return self.path / "metadata"

    def releases(self) -> list[Release]:
        info = self.targets.signed.targets.get(INDEX)
        if info is None:
            return []
        name = f"{info.hashes['sha256']}.{INDEX}"
        return parse_index((self.path / "targets" / name).read_bytes())


def _write(md, path: Path) -> None:
    from tuf.api.serialization.json import JSONSerializer

    atomic_write_bytes(path, md.to_bytes(JSONSerializer(compact=False)))


def _create(path: Path, keydir: Path) -> Repo:
    from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

    root = Metadata(Root(expires=_expiry(EXPIRY_DAYS["root"]), consistent_snapshot=True))
    for role in keys.ROLES:
        root.signed.add_key(keys.public_key(keydir, role), role)
    root.sign(keys.signer(keydir, "root"))
    repo = Repo(path, root, Metadata(Targets(expires=_expiry(EXPIRY_DAYS["targets"]))),
                Metadata(Snapshot(expires=_expiry(EXPIRY_DAYS["snapshot"]))),
                Metadata(Timestamp(expires=_expiry(EXPIRY_DAYS["timestamp"]))))
    repo.targets.signed.version = 0    # the first release makes it 1
    _write(root, repo.meta_dir / "1.root.json")
    _write(root, repo.meta_dir / "root.json")
    return repo


def open_repo(path: Path, keydir: Path | None = None, create: bool = False) -> Repo:
    """The repository's newest signed state; a new repository (root signed with the offline root key) when
    `create` and REPO_DIR has none."""
    from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

    meta = path / "metadata"
    if not (meta / "root.json").is_file():
        if not create:
            raise EdgeclsError(f"{path} is not an update repository (no metadata/root.json)")
        return _create(path, keydir)
    try:
        root = Metadata[Root].from_file(str(meta / "root.json"))
        timestamp = Metadata[Timestamp].from_file(str(meta / "timestamp.json"))
        snap_version = timestamp.signed.snapshot_meta.version
        snapshot = Metadata[Snapshot].from_file(str(meta / f"{snap_version}.snapshot.json"))
        targets_version = snapshot.signed.meta["targets.json"].version
        targets = Metadata[Targets].from_file(str(meta / f"{targets_version}.targets.json"))
    except (OSError, ValueError, KeyError) as e:
        raise EdgeclsError(f"{path}: the repository's metadata is unreadable: {e}") from None
    return Repo(path, root, targets, snapshot, timestamp)


def _add_target(repo: Repo, target_path: str, local: Path) -> None:
    """Name `local` by its hash under targets/ (a consistent snapshot) and list it in the targets metadata."""
    from tuf.api.metadata import TargetFile

    info = TargetFile.from_file(target_path, str(local))
    folder, _, name = target_path.rpartition("/")
    final = repo.path / "targets" / folder / f"{info.hashes['sha256']}.{name}"
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(local, final)
    repo.targets.signed.targets[target_path] = info


def _commit(repo: Repo, keydir: Path, targets_changed: bool, timestamp_days: float) -> None:
    """Sign and write what changed, timestamp.json last: until that rename devices see the previous state."""
    from tuf.api.metadata import MetaFile

    if targets_changed:
        t = repo.targets.signed
        t.version += 1
        t.expires = _expiry(EXPIRY_DAYS["targets"])
        repo.targets.signatures.clear()
        repo.targets.sign(keys.signer(keydir, "targets"))
        _write(repo.targets, repo.meta_dir / f"{t.version}.targets.json")
    s = repo.snapshot.signed
    s.meta["targets.json"] = MetaFile(version=repo.targets.signed.version)
    s.version += 1
    s.expires = _expiry(max(EXPIRY_DAYS["snapshot"], timestamp_days))
    repo.snapshot.signatures.clear()
    repo.snapshot.sign(keys.signer(keydir, "snapshot"))
    _write(repo.snapshot, repo.meta_dir / f"{s.version}.snapshot.json")
    ts = repo.timestamp.signed
    ts.snapshot_meta = MetaFile(version=s.version)
    ts.version += 1
    ts.expires = _expiry(timestamp_days)
    repo.timestamp.signatures.clear()
    repo.timestamp.sign(keys.signer(keydir, "timestamp"))
    _write(repo.timestamp, repo.meta_dir / "timestamp.json")


def _write_index(repo: Repo, releases: list[Release]) -> None:
    tmp = temp_file(repo.path / "targets", f".{INDEX}.", ".tmp")
    tmp.write_bytes(index_bytes(releases))
    _add_target(repo, INDEX, tmp)


def publish(bundle_dir: Path, repo_dir: Path, keydir: Path, rollout: float = 100.0,
            min_agreement_with_current: float | None = None, min_edgecls: str | None = None,
            timestamp_days: float = EXPIRY_DAYS["timestamp"]) -> Release:
    """Add `bundle_dir` as the next version of `repo_dir` (made on first use) and sign it."""
    from edgecls.bundle import load_bundle
    from edgecls.fleet.packing import pack

    bundle = load_bundle(bundle_dir)
    repo = open_repo(repo_dir, keydir, create=True)
    releases = repo.releases()
    version = max((r.version for r in releases), default=0) + 1
    target = f"bundles/{bundle.root.name}-v{version}.tar"
    (repo.path / "targets" / "bundles").mkdir(parents=True, exist_ok=True)
    tmp = temp_file(repo.path / "targets" / "bundles", ".pack.", ".tmp")
    try:
        pack(bundle.root, tmp)
        bundle_id = sha256_file(bundle.root / "edgecls.json")[:16]
        release = Release(version, target, bundle_id, needs_of(bundle, min_edgecls), rollout,
                          min_agreement_with_current,
                          {"published": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "bytes": tmp.stat().st_size})
        _add_target(repo, target, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_index(repo, [*releases, release])
    _commit(repo, keydir, True, timestamp_days)
    return release


def set_rollout(repo_dir: Path, keydir: Path, version: int, rollout: float,
                timestamp_days: float = EXPIRY_DAYS["timestamp"]) -> Release:
    """Change one release's rollout percentage (10 → 100: the first 10% of devices stay in)."""
    repo = open_repo(repo_dir)
    releases = repo.releases()
    match = [r for r in releases if r.version == version]
    if not match:
        raise EdgeclsError(f"{repo_dir} has no release {version} (it has: "
                           f"{', '.join(str(r.version) for r in releases) or 'none'})")
    match[0].rollout_percent = rollout
    _write_index(repo, releases)
    _commit(repo, keydir, True, timestamp_days)
    return match[0]


def refresh(repo_dir: Path, keydir: Path, timestamp_days: float = EXPIRY_DAYS["timestamp"]) -> datetime:
    """Sign the repository's state again with a later expiry (a timer does it: devices refuse stale metadata)."""
    repo = open_repo(repo_dir)
    _commit(repo, keydir, False, timestamp_days)
    return repo.timestamp.signed.expires
