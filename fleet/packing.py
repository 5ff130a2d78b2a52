"""A bundle folder as one file for the update repository: a tar with the same bytes for the same folder.

Deterministic (sorted names, no owners, no times) so publishing one bundle twice gives one hash. Unpacking takes
regular files and folders only, each path inside the destination: a tar names paths, and a hostile one could
name `../../etc/x` or a link out of the folder.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path, PurePosixPath

from edgecls.errors import EdgeclsError

MAX_MEMBERS = 10_000
MAX_BYTES = 4 << 30     # far above any bundle (the largest, ResNet50 float + int8 in two formats, is ~300 MB)


def pack(bundle_dir: Path, dest: Path) -> None:
    """Write `bundle_dir`'s files into the tar `dest` (regular files only: a bundle has no links)."""
    files = sorted(p for p in bundle_dir.rglob("*") if p.is_file() and not p.is_symlink())
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(path.relative_to(bundle_dir).as_posix())
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with open(path, "rb") as f:
                tar.addfile(info, f)


def _safe_name(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or not p.parts or any(part in ("..", "") for part in p.parts) or "\\" in name:
        raise EdgeclsError(f"the bundle archive names a path outside its folder: {name!r}")
    return p


def unpack(archive: Path, dest: Path) -> None:
    """Extract `archive` into the existing empty folder `dest`, refusing anything but files and folders inside it."""
    try:
        with tarfile.open(archive, "r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS or sum(m.size for m in members) > MAX_BYTES:
                raise EdgeclsError(f"the bundle archive is larger than any bundle ({len(members)} entries)")
            for m in members:
                rel = _safe_name(m.name)
                if m.isdir():
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not m.isfile():
                    raise EdgeclsError(f"the bundle archive holds {m.name!r}, which is not a regular file")
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with open(dest / rel, "xb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
    except (tarfile.TarError, io.UnsupportedOperation, EOFError) as e:
        raise EdgeclsError(f"the bundle archive is not a readable tar: {e}") from None
    except FileExistsError as e:
        raise EdgeclsError(f"the bundle archive names {e.filename} twice") from None
