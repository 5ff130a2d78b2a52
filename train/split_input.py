"""Where a split's prepared pixels come from while training: memory, a disk cache, or the photo files.

`train --cache` (TrainConfig.cache):
  memory  each split decoded once into uint8 arrays: the fastest; memory grows with the dataset.
  disk    each photo decoded and prepared once into a file of fixed-size uint8 records (H*W*3 bytes, one per photo,
          in split order) under RUN/.cache/, read back with explicit reads every epoch. Not a memory mapping:
          pages touched through a mapping count in the process's RSS and would grow with the dataset; pages read
          with pread stay in the kernel's page cache, which gives them back under pressure.
  none    decoded from the photo files every epoch: no copy anywhere, the CPU pays every epoch.
  auto    memory while every split together decodes to less than AUTO_MEMORY_BYTES of uint8 pixels, else disk.
Every mode makes its pixels with the shared contract, `prepare(load_rgb(path), spec)`: the same bytes in each.
No TensorFlow here: `train/data.py: make_dataset` turns a split into a tf.data pipeline.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgecls.dataset import load_arrays
from edgecls.errors import EdgeclsError
from edgecls.fsutil import temp_file
from edgecls.images import load_rgb
from edgecls.preprocess import prepare
from edgecls.progress import progress_bar, say

CACHE_MODES = ("auto", "memory", "disk", "none")
# 1.5 GB of pixels: ~20,000 photos at 160 px, ~10,000 at 224 px, ~54,000 at 96 px. Above it, memory mode would
# hold more than a small training machine (or a CI runner with 7 GB) can spare beside TensorFlow.
AUTO_MEMORY_BYTES = 1_500_000_000
CHUNK = 64   # photos decoded at a time while building a cache: bounds the memory it takes


def decoded_bytes(n_images: int, spec) -> int:
    return n_images * spec.height * spec.width * 3


def resolve_cache(mode: str, n_images: int, spec) -> str:
    """The mode `auto` stands for with this many photos at this input size; other modes as given."""
    if mode != "auto":
        return mode
    return "memory" if decoded_bytes(n_images, spec) < AUTO_MEMORY_BYTES else "disk"


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class ArraySplit:
    """A split decoded into memory: (N,H,W,3) uint8 pixels and (N,) labels."""

    def __init__(self, x: np.ndarray, labels: np.ndarray):
        self.x, self.labels = x, labels
        self.shape = tuple(x.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices) -> np.ndarray:
        return self.x[np.asarray(indices, dtype=np.int64)]

    def close(self) -> None:
        pass


class FileSplit:
    """A split decoded from its photo files at every read, on a pool of threads (PIL and the resampler release
    the GIL: two threads decode about twice as fast as one)."""

    def __init__(self, root: Path, items: list[tuple[str, int]], spec):
        self.root, self.items, self.spec = Path(root), items, spec
        self.labels = np.array([y for _, y in items], dtype=np.int64)
        self.shape = (spec.height, spec.width, 3)
        self._pool = ThreadPoolExecutor(_workers(), thread_name_prefix="edgecls-decode")

    def __len__(self) -> int:
        return len(self.items)

    def _prepare(self, i: int) -> np.ndarray:
        return prepare(load_rgb(self.root / self.items[i][0]), self.spec)

    def read(self, indices) -> np.ndarray:
        out = np.empty((len(indices), *self.shape), dtype=np.uint8)
        for k, img in enumerate(self._pool.map(self._prepare, [int(i) for i in indices])):
            out[k] = img
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class DiskSplit:
    """A split in a cache file of fixed-size uint8 records, read with pread (see the module docstring: no mmap)."""

    def __init__(self, path: Path, labels: np.ndarray, shape: tuple[int, int, int]):
        self.path, self.labels, self.shape = path, labels, tuple(shape)
        self.record = int(np.prod(shape))
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), self.record), dtype=np.uint8)
        k = 0
        while k < len(idx):   # a run of consecutive records (val/test read in order) is one read
            end = k + 1
            while end < len(idx) and idx[end] == idx[end - 1] + 1:
                end += 1
            want = (end - k) * self.record
            if os.preadv(self._fd, [out[k:end]], int(idx[k]) * self.record) != want:
                raise EdgeclsError(f"the training cache {self.path} is shorter than it was written; "
                                   f"delete {self.path.parent} and resume")
            k = end
        return out.reshape(len(idx), *self.shape)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _cache_key(split_name: str, items: list[tuple[str, int]], spec, content_hash: str) -> str:
    """Names what a cache file holds: the split's photos (by name and the dataset's content hash) and the spec."""
    text = json.dumps([split_name, content_hash, spec.to_dict(), items], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_disk_cache(folder: Path, split_name: str, root: Path, items: list[tuple[str, int]], spec,
                     content_hash: str, quiet: bool = False) -> Path:
    """The split's cache file in `folder`, built unless a complete one for the same photos and spec is there.

    Written under a temporary name and renamed when complete (so a killed build is never taken for a cache),
    CHUNK photos at a time on a thread pool: memory stays that of a few dozen photos however large the split.
    """
    folder.mkdir(parents=True, exist_ok=True)
    record = decoded_bytes(1, spec)
    final = folder / f"{split_name}-{_cache_key(split_name, items, spec, content_hash)}.u8"
    if final.is_file() and final.stat().st_size == record * len(items):
        say(f"reusing the {split_name} cache {final}", quiet)
        return final
    for stale in folder.glob(f"{split_name}-*.u8"):   # other photos or spec (or a truncated file): not ours
        stale.unlink()
    tmp = temp_file(folder, f".{split_name}.", ".partial")
    files = FileSplit(root, items, spec)
    try:
        with open(tmp, "wb") as f, progress_bar(f"caching {split_name} images", quiet) as bar:
            for start in range(0, len(items), CHUNK):
                f.write(files.read(range(start, min(start + CHUNK, len(items)))))
                bar.update(min(start + CHUNK, len(items)), len(items))
            f.flush()
            os.fsync(f.fileno())   # renamed only once its bytes are on disk: a complete name means complete bytes
        os.replace(tmp, final)
    finally:
        files.close()
        tmp.unlink(missing_ok=True)
    return final


def open_splits(mode: str, root: Path, parts: dict[str, list[tuple[str, int]]], spec, cache_dir: Path,
                content_hash: str, quiet: bool = False) -> dict:
    """{split: ArraySplit | DiskSplit | FileSplit} for each non-empty split, in the resolved `mode`."""
    splits = {}
    for name, items in parts.items():
        if not items:
            continue
        if mode == "memory":
            with progress_bar(f"loading {name} images", quiet) as bar:
                splits[name] = ArraySplit(*load_arrays(root, items, spec, progress=bar.update))
        elif mode == "disk":
            path = build_disk_cache(cache_dir, name, root, items, spec, content_hash, quiet)
            splits[name] = DiskSplit(path, np.array([y for _, y in items], dtype=np.int64),
                                     (spec.height, spec.width, 3))
        elif mode == "none":
            splits[name] = FileSplit(root, items, spec)
        else:
            raise EdgeclsError(f"--cache must be one of {', '.join(CACHE_MODES)}, not {mode!r}")
    return splits
