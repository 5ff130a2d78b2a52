"""The photos `edgecls teach` learns from: a folder, image files, a video or a camera (device/capture/sources.py), each
prepared as the live loop prepares a frame, with a record of what was used (name and sha256). No TensorFlow.

A folder is read whole before anything is computed: one unreadable photo stops the teach with its name (a
folder the user chose to teach from holds what they meant to teach; skipping silently would teach less than
they think). Frames of a video or camera are taken every `every`-th frame until `count` are in.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.fsutil import sha256_file
from edgecls.preprocess import prepare

MAX_COUNT = 1000


@dataclass
class TeachPhotos:
    pixels: np.ndarray                              # (N, H, W, 3) uint8, prepared
    used: list[dict] = field(default_factory=list)  # {"file" or "frame", "sha256"} per photo


def spaced(files: list[Path], count: int) -> list[Path]:
    """`count` files evenly spaced over the sorted list (all of them when there are fewer)."""
    if len(files) <= count:
        return files
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, count).round()]


def from_files(files: list[Path], spec, count: int) -> TeachPhotos:
    from edgecls.images import load_rgb

    chosen = spaced(files, count)
    pixels = np.empty((len(chosen), spec.height, spec.width, 3), np.uint8)
    for i, path in enumerate(chosen):
        try:
            pixels[i] = prepare(load_rgb(path), spec, image_order="RGB")
        except EdgeclsError as e:
            raise EdgeclsError(f"--source: cannot read {path}: {e}; nothing was taught") from None
        except Exception as e:  # PIL raises many types for a corrupt file
            raise EdgeclsError(f"--source: cannot read {path} ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:80] if str(e) else 'corrupt'}); nothing was taught") from None
    return TeachPhotos(pixels, [{"file": str(p), "sha256": sha256_file(p)} for p in chosen])


def from_frames(source, spec, count: int, every: int) -> TeachPhotos:
    frames, used = [], []
    for frame in source:
        if frame.index % every:
            continue
        px = prepare(frame.image, spec, image_order=frame.order)
        frames.append(px)
        used.append({"frame": int(frame.index), "sha256": hashlib.sha256(np.ascontiguousarray(frame.image)).hexdigest()})
        if len(frames) >= count:
            break
    shape = (0, spec.height, spec.width, 3)
    return TeachPhotos(np.stack(frames) if frames else np.zeros(shape, np.uint8), used)


def collect(uri: str, spec, count: int, every: int = 1) -> TeachPhotos:
    """Up to `count` prepared photos from `uri`; EdgeclsError (one line) for an empty or unreadable source."""
    from edgecls.device.capture.sources import ImageFilesSource, SourceOptions, open_source

    if not 1 <= count <= MAX_COUNT:
        raise EdgeclsError(f"--count must be between 1 and {MAX_COUNT}")
    if every < 1:
        raise EdgeclsError("--every must be at least 1")
    opts = SourceOptions(model_input=(spec.width, spec.height))
    with open_source(uri, opts) as source:
        if isinstance(source, ImageFilesSource):
            photos = from_files(source.files, spec, count)
        else:
            photos = from_frames(source, spec, count, every)
    if not len(photos.pixels):
        raise EdgeclsError(f"--source {uri} gave no photos: nothing to teach")
    return photos
