"""Photos the device saves for labelling — by `collect`, by `run --keep`, by the web page's capture buttons —
and moving them into a training folder. One naming scheme, one sidecar format, atomic writes everywhere:

    NAME.jpg    the frame at full resolution (JPEG, quality 95), written under a temporary name then renamed
    NAME.json   its sidecar: {"time", "source", "frame", "width", "height", "camera": {…}, …}, written first

A reader (training, the gallery) only trusts a photo whose sidecar is there; a crash leaves neither half a
photo nor a sidecar pointing at nothing that a later step would mistake for data.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
from pathlib import Path

import cv2
import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.fsutil import atomic_write_bytes, atomic_write_json

JPEG_QUALITY = 95
# A name the web page may send back: what photo_name() makes (no separators, no leading dot, bounded).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,150}")
MAX_LABEL_CHARS = 100


def check_label(label: str, allowed: list[str] | None = None, flag: str = "--label") -> str:
    """A class name that is one plain folder name (no path separators, not . or .., no leading dot)."""
    if not label or len(label) > MAX_LABEL_CHARS or label in (".", "..") or label.startswith(".") \
            or any(c in label for c in "/\\\0") or label != label.strip() or not label.isprintable():
        raise EdgeclsError(f"{flag} {label!r} is not a class name (one folder name: no '/', no '..', "
                           "no leading dot)")
    if allowed is not None and label not in allowed:
        raise EdgeclsError(f"{flag} {label!r} is not one of the classes: {', '.join(allowed)}")
    return label


def writable_dir(path: Path, what: str) -> Path:
    """Create `path` if needed and check we can write in it: one clear error instead of a failure mid-run."""
    if path.exists() and not path.is_dir():
        raise EdgeclsError(f"{what} {path} is not a folder")
    try:
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
    """Write NAME.json then NAME.jpg into `folder` atomically; returns the photo's path."""
    jpeg = encode_jpeg(bgr) if jpeg is None else jpeg
    while True:
        name = photo_name(prefix)
        if not (folder / f"{name}.jpg").exists() and not (folder / f"{name}.json").exists():
            break
    h, w = bgr.shape[:2]
    atomic_write_json(folder / f"{name}.json", {**sidecar, "width": w, "height": h})
    try:
        atomic_write_bytes(folder / f"{name}.jpg", jpeg)
    except BaseException:
        (folder / f"{name}.json").unlink(missing_ok=True)
        raise
    return folder / f"{name}.jpg"


def move_photo(photo: Path, dest_dir: Path, extra: dict | None = None) -> Path:
    """Move PHOTO.jpg and its sidecar into `dest_dir` (the sidecar gains `extra`). The sidecar is written at
    the destination first, then the photo renamed (one atomic step on one file system), then the old sidecar
    removed: at every moment the photo is whole in exactly one place."""
    src_side = photo.with_suffix(".json")
    try:
        meta = json.loads(src_side.read_text()) if src_side.is_file() else {}
    except (OSError, ValueError):
        meta = {}
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / photo.name
    if dest.exists():
        dest = dest_dir / f"{photo.stem}-{secrets.token_hex(2)}{photo.suffix}"
    atomic_write_json(dest.with_suffix(".json"), {**meta, **(extra or {})})
    try:
        os.replace(photo, dest)
    except OSError as e:
        if e.errno != 18:  # EXDEV: another file system; copy under a temporary name, then rename
            dest.with_suffix(".json").unlink(missing_ok=True)
            raise
        atomic_write_bytes(dest, photo.read_bytes())
        photo.unlink()
    src_side.unlink(missing_ok=True)
    return dest


def discard_photo(photo: Path) -> None:
    photo.unlink(missing_ok=True)
    photo.with_suffix(".json").unlink(missing_ok=True)


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

