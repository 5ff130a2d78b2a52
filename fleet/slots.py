"""The device's folder: two bundle slots, which one runs, and the record of what happened.

    DEVICE_DIR/state.json      current and previous slot (version, bundle id), last check, last refusal
    DEVICE_DIR/current         a link to the slot that runs: `edgecls run DEVICE_DIR/current`
    DEVICE_DIR/slots/a, b      bundles; a new one goes into the slot that is not current (a release, or a version
                               taught on this device: `install_taught`)
    DEVICE_DIR/tuf/            TUF's trusted metadata (root.json: the trust anchor, then newer roots it verified)
    DEVICE_DIR/device-id       this device's stable id (its rollout cohort)
    DEVICE_DIR/.lock           held while state.json and the slots change (see `DeviceDir.locked`)

state.json is the commit point, written whole by one rename: a power cut (SIGKILL) at any step of an install
leaves the current slot untouched and named by state.json; the next start repairs the link from it and removes
the half-made slot. Every change of state.json and the slots holds the folder's lock, so the update checker,
`teach --install`, the page and `run`'s start-up record never interleave (each reads state.json, then writes it).
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.fsutil import atomic_write_json, clean_stale, temp_prefix

SLOTS = ("a", "b")
STATE_FORMAT = "edgecls-device"

try:
    import fcntl
except ImportError:   # not on Windows; a device is Linux
    fcntl = None


class _FolderLock:
    """One writer at a time for one device folder: a thread lock inside this process (re-entrant: install_taught
    calls install, starting calls revert), and flock on DEVICE_DIR/.lock between processes while the outermost
    holder holds it (the kernel drops a flock when its process dies: a killed writer never leaves it locked)."""

    def __init__(self, path: Path):
        self.path, self.thread_lock, self.depth, self.fd = path, threading.RLock(), 0, None

    def __enter__(self):
        self.thread_lock.acquire()
        try:
            if self.depth == 0 and fcntl is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self.fd = fd
        except BaseException:
            self.thread_lock.release()
            raise
        self.depth += 1
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth == 0 and self.fd is not None:
            os.close(self.fd)   # closing the descriptor releases the flock
            self.fd = None
        self.thread_lock.release()


_LOCKS: dict[Path, _FolderLock] = {}
_LOCKS_GUARD = threading.Lock()


def _folder_lock(path: Path) -> _FolderLock:
    key = Path(os.path.abspath(path))
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, _FolderLock(key / ".lock"))


def _holding_lock(method):
    """A DeviceDir method that reads state.json and writes it back (or moves slots) runs under the folder's lock."""
    @functools.wraps(method)
    def holding(self, *args, **kwargs):
        with self.locked():
            return method(self, *args, **kwargs)
    return holding


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class DeviceDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # --- the record ---------------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def state(self) -> dict:
        import json

        if not self.state_file.is_file():
            return {"format": STATE_FORMAT, "current": None, "previous": None, "refused": {}}
        try:
            state = json.loads(self.state_file.read_text())
            if state.get("format") != STATE_FORMAT:
                raise ValueError(f"format {state.get('format')!r}")
            return state
        except (OSError, ValueError) as e:
            raise EdgeclsError(f"{self.state_file} is unreadable ({e}): the device folder is damaged") from None

    def locked(self) -> _FolderLock:
        """The folder's lock, to hold (`with`) for a read of state.json that a write will follow (reads alone need
        none, since state.json is replaced whole)."""
        return _folder_lock(self.path)

    def save(self, state: dict) -> None:
        atomic_write_json(self.state_file, state)

    @_holding_lock
    def note(self, **fields) -> dict:
        """Record the outcome of a check (last_check, last_result, a refusal) without touching the slots."""
        state = self.state()
        state.update(fields)
        self.save(state)
        return state

    # --- identity ------------------------------------------------------------------------------------------
    def device_id(self) -> str:
        """EDGECLS_DEVICE_ID, else the id made on first use and kept in DEVICE_DIR/device-id."""
        given = os.environ.get("EDGECLS_DEVICE_ID")
        if given:
            return given
        f = self.path / "device-id"
        if not f.is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            with open(f, "x") as out:
                out.write(uuid.uuid4().hex + "\n")
        return f.read_text().strip()

    # --- slots ---------------------------------------------------------------------------------------------
    def slot_dir(self, slot: str) -> Path:
        return self.path / "slots" / slot

    def free_slot(self) -> str:
        current = (self.state().get("current") or {}).get("slot")
        return "b" if current == "a" else "a"

    def current_bundle(self) -> Path | None:
        current = self.state().get("current")
        return self.slot_dir(current["slot"]) if current else None

    @_holding_lock
    def repair(self) -> list[Path]:
        """After a power cut: remove half-made slots of dead processes and point the link at state.json's slot."""
        slots = self.path / "slots"
        removed = []
        for slot in SLOTS:
            for suffix in (".partial", ".old"):
                removed += clean_stale(slots, f".{slot}.", suffix)
        current = self.state().get("current")
        if current:
            self._link(current["slot"])
        return removed

    def _link(self, slot: str) -> None:
        link, target = self.path / "current", Path("slots") / slot
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        tmp = self.path / f".current.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)   # the link changes in one rename

    def new_slot(self) -> Path:
        """An empty folder beside the slots for a bundle being installed (removed at the next start if we die)."""
        slots = self.path / "slots"
        slots.mkdir(parents=True, exist_ok=True)
        slot = self.free_slot()
        return Path(tempfile.mkdtemp(prefix=temp_prefix(f".{slot}."), suffix=".partial", dir=slots))

    @_holding_lock
    def install(self, made: Path, record: dict) -> dict:
        """Put the checked bundle in `made` into the free slot and make it current; the old current becomes
        previous (the one to go back to). Three renames and two state writes, in an order that is safe to cut."""
        state = self.state()
        slot = self.free_slot()
        final = self.slot_dir(slot)
        # 1. The free slot's old bundle is about to go: no longer a previous one to return to.
        if state.get("previous") and state["previous"]["slot"] == slot:
            state["previous"] = None
            self.save(state)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(f".{slot}."), suffix=".old", dir=final.parent))
            os.replace(final, old)
        else:
            old = None
        os.replace(made, final)
        # 2. The commit point.
        state["previous"], state["current"] = state.get("current"), {**record, "slot": slot, "installed": now()}
        self.save(state)
        self._link(slot)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return state

    @_holding_lock
    def install_taught(self, version: Path, taught: dict) -> dict:
        """A version `edgecls teach` wrote on this device from the current bundle (a device-local derivative) into
        the free slot, made current; the bundle it was taught from becomes previous (the one to go back to). Its
        record keeps the publisher's version number, so the same release is not fetched again and a newer one
        replaces it (what was taught here is then in `previous` only), and says what was taught (`taught`)."""
        from edgecls.fsutil import sha256_file

        current = self.state().get("current")
        if not current:
            raise EdgeclsError(f"{self.path} has no installed version to put a taught one beside")
        made = self.new_slot()
        moved = Path(version).resolve().parent == (self.path / "slots").resolve()
        try:
            if moved:
                os.replace(version, made)   # teach wrote it beside the slots: one rename, no second copy
            else:
                shutil.copytree(version, made, dirs_exist_ok=True)
            record = {"version": current["version"], "bundle_id": sha256_file(made / "edgecls.json")[:16],
                      "taught": {**taught, "from_bundle_id": current.get("bundle_id"), "at": now()}}
            return self.install(made, record)
        except BaseException:
            if moved and made.is_dir() and not Path(version).exists():
                os.replace(made, version)   # not installed: the version stays where teach wrote it
            shutil.rmtree(made, ignore_errors=True)
            raise

    # --- going back ----------------------------------------------------------------------------------------
    @_holding_lock
    def revert(self, reason: str) -> dict | None:
        """Make the previous slot current again (it was the running bundle before the last install); the
        reverted version is remembered as refused so it is not installed again. None when there is no previous."""
        state = self.state()
        current, previous = state.get("current"), state.get("previous")
        if not previous or not self.slot_dir(previous["slot"]).is_dir():
            return None
        refused = dict(state.get("refused", {}))
        if current and not current.get("taught"):   # a taught version carries the publisher's number: not refused
            refused[str(current["version"])] = f"reverted: {reason}"
        state.update(current=previous, previous=None, refused=refused, last_result=f"reverted: {reason}",
                     last_refusal={"version": (current or {}).get("version"), "reason": f"reverted: {reason}",
                                   "at": now()})
        self.save(state)
        self._link(previous["slot"])
        return state

    @_holding_lock
    def starting(self, max_unconfirmed: int) -> dict | None:
        """`run` starts on the current slot: count the start; after `max_unconfirmed` starts that never reached
        `confirm()` (a crash loop), go back to the previous slot. Returns the revert's state, else None."""
        state = self.state()
        current = state.get("current")
        if not current or current.get("confirmed"):
            return None
        current["starts"] = current.get("starts", 0) + 1
        self.save(state)
        if current["starts"] > max_unconfirmed:
            return self.revert(f"version {current['version']} started {current['starts'] - 1} times without "
                               "running (a crash loop)")
        return None

    @_holding_lock
    def confirm(self) -> None:
        """The current slot ran: its start-up exam passed and it classified frames."""
        state = self.state()
        if state.get("current") and not state["current"].get("confirmed"):
            state["current"]["confirmed"] = True
            self.save(state)
