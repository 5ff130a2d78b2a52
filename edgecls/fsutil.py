"""Atomic file and folder writes, and hashing: nothing half-written is ever left where a reader looks."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
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
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part
NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK)


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
    return _remove_stale(folder, [_named(prefix, suffix)])


def _named(prefix: str, suffix: str) -> re.Pattern:
    return re.compile(re.escape(prefix) + r"(?:(\d+)\.)?" + _RANDOM + re.escape(suffix))


def _any_name(suffix: str) -> re.Pattern:
    if not suffix:
        raise ValueError("a leftover of any name needs a suffix")   # never every hidden name with a number in it
    return re.compile(r"\..+\.(\d+)\." + _RANDOM + re.escape(suffix))


def clean_dead_temps(folder: str | os.PathLike, suffix: str) -> list[Path]:
    """Remove every temporary entry of a dead process in `folder` ending in `suffix`, whatever name it was
    for: hidden `.NAME.PID.RANDOM` + suffix (a killed export's `.partial`, a killed recording's hidden video, a
    photo's `.tmp`), where a later run may never write NAME again. Names without a pid are left alone."""
    return _remove_stale(folder, [_any_name(suffix)])


def _remove_stale(folder: str | os.PathLike, patterns: list[re.Pattern]) -> list[Path]:
    """Remove the entries whose whole name matches one of `patterns` (group 1: the writer's pid, or None) and
    whose writer is dead; this process's own are kept. One scan of the folder, whatever the patterns."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = next(filter(None, (pattern.fullmatch(entry.name) for pattern in patterns)), None)
        if not m or m.group(1) == str(os.getpid()):
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
    """A new empty file in `folder` (mode per the umask) after cleaning stale ones of the same kind — of any
    name when there is a suffix (a killed recording's hidden `.clip.PID.RANDOM.avi`, whatever the next is called)."""
    _remove_stale(folder, [_named(prefix, suffix)] + ([_any_name(suffix)] if suffix else []))
    return new_temp_file(folder, prefix, suffix)


def new_temp_file(folder: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """A new empty file `temp_prefix(prefix)` RANDOM `suffix` in `folder` (mode per the umask), without
    scanning the folder for leftovers (for writers that clean once at start, e.g. device/data/photos.py)."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(prefix), suffix=suffix, dir=folder)
    os.close(fd)
    follow_umask(tmp)
    return Path(tmp)


def temp_name(folder: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """A fresh temporary name (not created) of the same form as new_temp_file's, e.g. for os.link."""
    return Path(folder) / f"{temp_prefix(prefix)}{''.join(secrets.choice(_ALPHABET) for _ in range(8))}{suffix}"


def write_synced(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` into the existing file `path` and fsync it (it is whole on disk before it is renamed)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the names just created in `folder` durable (before the only other copy is removed)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_new(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Give the file `src` the name `dest` only if no file has it: FileExistsError otherwise, never a replace.
    On a file system without hard links (FAT on a USB stick) the name is claimed with O_EXCL, then `src` is
    renamed onto that empty placeholder (src is gone afterwards)."""
    try:
        os.link(src, dest)
        return
    except OSError as e:
        if e.errno not in NO_HARD_LINKS:
            raise
    os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    try:
        os.replace(src, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(dest)
        raise


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
        write_synced(tmp, data)
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
    atomic_write_bytes(path, json_bytes(obj, path))


def json_bytes(obj, path: str | os.PathLike) -> bytes:
    """`obj` as strict, indented JSON (what atomic_write_json writes); a NaN or infinity is an EdgeclsError
    naming where it is and the file `path` it was meant for."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        where = non_finite_path(obj)
        raise EdgeclsError(f"refusing to write {path}: {where or 'a value'} is not a finite number "
                           "(NaN or infinity)") from None
    return (text + "\n").encode("utf-8")


# ---------------------------------------------------------------- disk faults, as one line
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)   # EFBIG: a file-size limit (RLIMIT_FSIZE)
_CAUSES = {**{n: "disk full" for n in DISK_FULL}, errno.EROFS: "read-only file system",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.ENAMETOOLONG: "name too long"}


class WriteError(EdgeclsError):
    """Writing into `folder` failed for a reason of the machine, not of edgecls: `errno` says which (a web page
    can answer a full disk with 507 and a read-only one with 403)."""

    def __init__(self, message: str, errno_: int | None, folder: str | os.PathLike):
        super().__init__(message)
        self.errno, self.folder = errno_, Path(folder)

    @property
    def disk_full(self) -> bool:
        return self.errno in DISK_FULL


def write_error(e: OSError, folder: str | os.PathLike) -> WriteError:
    """One line for an OSError met writing into `folder`: "disk full: cannot write in FOLDER (No space left …)"."""
    cause = _CAUSES.get(e.errno, (e.strerror or type(e).__name__).lower())
    return WriteError(f"{cause}: cannot write in {folder} ({e.strerror or e})", e.errno, folder)


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
    # a killed writer's folders, whatever bundle they were for (pid-less ones of older versions: this name's)
    _remove_stale(final.parent, [_named(f".{final.name}.", ".partial"), _named(f".{final.name}.", ".old"),
                                 _any_name(".partial"), _any_name(".old")])
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
