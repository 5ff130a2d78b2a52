"""Atomic file and folder writes, and hashing: nothing half-written is ever left where a reader looks."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from edgecls.errors import EdgeclsError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike, is_dir: bool = False) -> None:
    """Give a mkstemp/mkdtemp result (0600/0700, private) the mode any new file or folder would get."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


# ---------------------------------------------------------------- temporary names, and their leftovers
# Every temporary name edgecls makes is PREFIX + PID + "." + 8 random characters + SUFFIX, so a later start can
# tell a leftover of a killed process (SIGKILL, power loss: no cleanup ran) from the work of a live one.

STALE_AFTER_S = 6 * 3600   # names without a pid (older versions wrote them): stale once this old
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part


def temp_prefix(prefix: str) -> str:
    return f"{prefix}{os.getpid()}."


def _process_start(pid: int) -> float | None:
    """When process `pid` started (Unix time; Linux /proc), None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])   # field 22, starttime, after "pid (comm)"
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_alive(pid: int, last_modified: float) -> bool:
    """Whether the process that wrote an entry (last modified at `last_modified`) still runs: `pid` exists and
    started before that moment (one that started later only reuses the number of a dead one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    started = _process_start(pid)
    return started is None or started <= last_modified + 1.0   # btime has 1 s resolution


def clean_stale(folder: str | os.PathLike, prefix: str, suffix: str = "") -> list[Path]:
    """Remove the leftovers of dead processes in `folder` named by `temp_prefix(prefix)` … `suffix`.

    Stale: the process in the name is gone (or its number now belongs to a newer process); names without a
    pid (written by older versions) once older than STALE_AFTER_S. A live process's temporary files are never
    touched, however long it runs. Returns what was removed.
    """
    pattern = re.compile(re.escape(prefix) + r"(?:(\d+)\.)?" + _RANDOM + re.escape(suffix))
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m or entry.name.startswith(temp_prefix(prefix)):
            continue
        try:
            modified = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = m.group(1)
        if (time.time() - modified > STALE_AFTER_S) if pid is None else not _owner_alive(int(pid), modified):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def temp_file(folder: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """A new empty file in `folder` (mode per the umask) after cleaning stale ones of the same kind."""
    clean_stale(folder, prefix, suffix)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(prefix), suffix=suffix, dir=folder)
    os.close(fd)
    follow_umask(tmp)
    return Path(tmp)


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A private working folder (in the system temp folder by default), removed on exit like
    tempfile.TemporaryDirectory; stale ones a killed process left behind are removed first."""
    parent = parent or tempfile.gettempdir()
    clean_stale(parent, prefix)
    path = Path(tempfile.mkdtemp(prefix=temp_prefix(prefix), dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Strict JSON only: a NaN or infinity (which json.dumps would write as bare `NaN`, invalid JSON that other
    readers reject) is an error naming where it is, and nothing is written."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        where = non_finite_path(obj)
        raise EdgeclsError(f"refusing to write {path}: {where or 'a value'} is not a finite number "
                           "(NaN or infinity)") from None
    atomic_write_text(path, text + "\n")


def non_finite_path(obj, where: str = "") -> str | None:
    """The dotted path of the first NaN/infinity inside nested dicts and lists, e.g. "report.accuracy"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = non_finite_path(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `final` in one rename.

    On any exception (Ctrl-C included) the temporary folder is removed, so readers
    see either the old folder or the complete new one, never a half-written one.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".partial", ".old"):
        clean_stale(final.parent, f".{final.name}.", suffix)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(f".{final.name}."), suffix=".partial", dir=final.parent))
    follow_umask(tmp, is_dir=True)  # a service user must be able to read the bundle like any other folder
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(f".{final.name}."), suffix=".old", dir=final.parent))
            os.replace(final, old)  # onto the empty folder just made: a unique name, no clash with a concurrent writer
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
