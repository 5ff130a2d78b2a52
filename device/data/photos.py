"""Photos the device saves for labelling — by `collect`, by `run --keep`, by the web page's capture buttons —
and moving them into a training folder. One naming scheme, one sidecar format, one way to write:

    NAME.jpg    the frame at full resolution (JPEG, quality 95)
    NAME.json   its sidecar: {"time", "source", "frame", "width", "height", "by", "camera": {…}, …}

Both are written whole under hidden temporary names (`.NAME.jpg.PID.RANDOM.tmp`, fsynced), then given their
names photo first, sidecar second, each only if no file has that name (os.link: an existing photo or sidecar is
never replaced; another name is drawn). So a sidecar is never without its photo, and a reader that trusts a
photo by its sidecar never sees half a pair. A move copies the pair the same way and removes the source only
once the new pair is whole and on disk: a failure at any point leaves the old pair intact or the new pair whole.
Disk faults (full, read-only, no permission, a name too long) are one line naming the folder
(edgecls/fsutil.py: write_error). What a killed process left (its temporary files, a sidecar whose photo is
gone) is removed by the next start of collect, keep or the web page (`clean_leftovers`).
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.fsutil import (NO_HARD_LINKS, clean_dead_temps, fsync_dir, json_bytes, link_new, new_temp_file,
                            temp_name, write_error, write_synced)

JPEG_QUALITY = 95
# A name the web page may send back: what photo_name() makes (no separators, no leading dot, bounded).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,150}")
MAX_LABEL_CHARS = 100
# A label is a folder name (DATA_DIR/LABEL): at most 255 bytes (NAME_MAX) on the file systems devices use, less
# what edgecls adds to a name it writes under a temporary one (".NAME.PID.RANDOM.partial", PID up to 7 digits).
MAX_LABEL_BYTES = 255 - len("." + ".4194304." + "abcdefgh" + ".partial")
SIDECAR_BY = ("collect", "keep", "ui-capture")      # who writes sidecars ("by"): how a leftover is known as ours
SIDECAR_FIELDS = ("time", "frame", "width", "height", "by")
SIDECAR_MAX_BYTES = 64 * 1024
NAME_TRIES = 100
_MOVES = threading.Lock()   # one move at a time: a double click must not file one photo twice


def check_label(label: str, allowed: list[str] | None = None, flag: str = "--label") -> str:
    """A class name that is one plain folder name (no path separators, not . or .., no leading dot) that every
    file system takes (at most MAX_LABEL_BYTES in UTF-8)."""
    if not label or len(label) > MAX_LABEL_CHARS or label in (".", "..") or label.startswith(".") \
            or any(c in label for c in "/\\\0") or label != label.strip() or not label.isprintable():
        raise EdgeclsError(f"{flag} {label[:MAX_LABEL_CHARS]!r} is not a class name (one folder name: no '/', "
                           f"no '..', no leading dot, at most {MAX_LABEL_CHARS} characters)")
    size = len(label.encode("utf-8", "surrogatepass"))
    if size > MAX_LABEL_BYTES:
        raise EdgeclsError(f"{flag} {label[:20]!r}… is {size} bytes as a folder name: a class name may be at most "
                           f"{MAX_LABEL_BYTES} bytes (UTF-8)")
    if allowed is not None and label not in allowed:
        raise EdgeclsError(f"{flag} {label!r} is not one of the classes: {', '.join(allowed)}")
    return label


def writable_dir(path: Path, what: str) -> Path:
    """Create `path` if needed and check we can write in it: one clear error instead of a failure mid-run."""
    try:
        if path.exists() and not path.is_dir():
            raise EdgeclsError(f"{what} {path} is not a folder")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeclsError(f"{what} {path}: cannot create it ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise EdgeclsError(f"{what} {path} is not writable")
    return path


def iso_utc(t: float | None = None) -> str:
    when = dt.datetime.now(dt.timezone.utc) if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return when.isoformat(timespec="milliseconds")


def photo_name(prefix: str = "") -> str:
    """Unique, sortable by time: [PREFIX-]20261130-172501-123-a1b2c3 (a random tail: two devices or two
    processes writing into one folder never clash)."""
    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"
    return f"{prefix}-{stamp}" if prefix else stamp


def encode_jpeg(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise EdgeclsError("could not encode the frame as JPEG")
    return buf.tobytes()


def save_photo(folder: Path, bgr: np.ndarray, sidecar: dict, prefix: str = "", jpeg: bytes | None = None) -> Path:
    """Write a new NAME.jpg and NAME.json into `folder` (module docstring); returns the photo's path. A disk
    fault is an edgecls.fsutil.WriteError, and nothing of this photo is left behind."""
    jpeg = encode_jpeg(bgr) if jpeg is None else jpeg
    h, w = bgr.shape[:2]
    side = json_bytes({**sidecar, "width": w, "height": h}, folder / "NAME.json")
    names = (photo_name(prefix) for _ in range(NAME_TRIES))
    return _place(folder, lambda: _temp_with(folder, "photo.jpg", jpeg), side, names)


def move_photo(photo: Path, dest_dir: Path, extra: dict | None = None) -> Path:
    """Move PHOTO.jpg and its sidecar into `dest_dir` (the sidecar gains `extra`), keeping the name unless a file
    there has it. The new pair is made whole and synced first (a hard link on one file system, a copy across
    two), then the old pair removed. FileNotFoundError when the photo is gone (filed or discarded already)."""
    with _MOVES:
        if not photo.is_file():
            raise FileNotFoundError(photo)
        meta = _read_sidecar(photo.with_suffix(".json"))
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(e, dest_dir) from None
        side = json_bytes({**meta, **(extra or {})}, dest_dir / f"{photo.stem}.json")
        dest = _place(dest_dir, lambda: _staged_copy(photo, dest_dir), side, _move_names(photo.stem))
        _remove_source(photo, dest)
    return dest


def _remove_source(photo: Path, dest: Path) -> None:
    """The last step of a move: the new pair durable, then the old pair gone (a source that cannot be removed,
    e.g. a read-only keep folder, undoes the move: never one photo in two places)."""
    try:
        fsync_dir(dest.parent)
        photo.unlink(missing_ok=True)   # (removed meanwhile by another process: the new pair is the one left)
    except OSError as e:
        _discard(dest)   # (_MOVES is held)
        raise write_error(e, photo.parent) from None
    photo.with_suffix(".json").unlink(missing_ok=True)   # (failing, it is a leftover the next start removes)


def _move_names(stem: str) -> Iterator[str]:
    yield stem
    for _ in range(NAME_TRIES):
        yield f"{stem}-{secrets.token_hex(2)}"


def _read_sidecar(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        meta = {}
    return meta if isinstance(meta, dict) else {}


def _place(folder: Path, stage_photo: Callable[[], Path], side: bytes, names: Iterator[str]) -> Path:
    """Stage the photo and the sidecar `side` as temporary files in `folder`, then claim a pair of names from
    `names` for them; the temporary files are gone on return, whatever happened."""
    temps: list[Path] = []
    try:
        temps.append(stage_photo())
        temps.append(_temp_with(folder, "photo.json", side))
        return _claim_pair(folder, temps[0], temps[1], names)
    except OSError as e:
        raise write_error(e, folder) from None
    finally:
        for t in temps:
            _unlink_quietly(t)


def _claim_pair(folder: Path, photo_tmp: Path, side_tmp: Path, names: Iterator[str]) -> Path:
    """NAME.jpg then NAME.json for the first NAME of `names` where neither is taken (an old sidecar without its
    photo keeps its name too). Never replaces a file; a clash on the sidecar gives the photo's name back."""
    for name in names:
        photo, side = folder / f"{name}.jpg", folder / f"{name}.json"
        if os.path.lexists(side):
            continue
        try:
            link_new(photo_tmp, photo)
        except FileExistsError:
            continue
        try:
            link_new(side_tmp, side)
        except FileExistsError:   # (taken since the check above) give the photo's name back, draw another
            _unclaim(photo, photo_tmp)
            continue
        except BaseException:     # (a full directory, …) no photo is left without its sidecar
            _unclaim(photo, photo_tmp)
            raise
        return photo
    raise EdgeclsError(f"no free photo name in {folder} after {NAME_TRIES} tries")


def _unclaim(name: Path, tmp: Path) -> None:
    """Undo link_new(tmp, name): `name` goes, the bytes stay under `tmp` (a rename where link_new had to rename:
    not otherwise, as renaming one hard link onto another of the same file does nothing)."""
    if os.path.lexists(tmp):
        os.unlink(name)
    else:
        os.rename(name, tmp)


def _temp_with(folder: Path, what: str, data: bytes) -> Path:
    tmp = new_temp_file(folder, f".{what}.", ".tmp")
    try:
        write_synced(tmp, data)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _staged_copy(photo: Path, folder: Path) -> Path:
    """The photo's bytes under a temporary name in `folder`: a second hard link to it on the same file system
    (no copy), else a copy, fsynced."""
    tmp = temp_name(folder, f".{photo.name}.", ".tmp")
    try:
        os.link(photo, tmp)
        return tmp
    except OSError as e:
        if e.errno not in (errno.EXDEV, *NO_HARD_LINKS):
            raise
    tmp = new_temp_file(folder, f".{photo.name}.", ".tmp")
    try:
        with open(photo, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def discard_photo(photo: Path) -> None:
    with _MOVES:   # (not while the same photo is being moved)
        _discard(photo)


def _discard(photo: Path) -> None:
    photo.unlink(missing_ok=True)
    photo.with_suffix(".json").unlink(missing_ok=True)


# ---------------------------------------------------------------- what a killed process left

def clean_leftovers(folder: Path) -> list[Path]:
    """Remove, in `folder`, the temporary files of dead edgecls processes (a live one's are kept: the pid in the
    name) and the sidecars edgecls wrote whose photo is gone (their own fields say so). Returns what went."""
    removed = clean_dead_temps(folder, ".tmp")
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.endswith(".json") and _orphan_sidecar(entry):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _orphan_sidecar(entry: os.DirEntry) -> bool:
    """A sidecar of ours (a plain small file, edgecls's own fields) whose photo is not beside it."""
    if not SAFE_NAME.fullmatch(entry.name) or os.path.lexists(entry.path[:-len(".json")] + ".jpg"):
        return False
    try:
        if not entry.is_file(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_size > SIDECAR_MAX_BYTES:
            return False
        with open(entry.path, "rb") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("by") in SIDECAR_BY and all(k in meta for k in SIDECAR_FIELDS)


def clean_at_start(folders, log) -> int:
    """clean_leftovers in each folder, one line for each that had any; returns how many were removed."""
    total = 0
    for folder in folders:
        removed = clean_leftovers(Path(folder))
        if removed:
            log(f"edgecls: removed {len(removed)} leftover(s) of an interrupted edgecls in {folder}")
        total += len(removed)
    return total


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files directly in `folder` (what a keep budget counts)."""
    total = 0
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total

