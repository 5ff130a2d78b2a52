"""`edgecls collect DATA_DIR --source SRC --label CLASS`: photos from the camera the model will run on, into
DATA_DIR/CLASS/ — the best training data a camera classifier can get.

Any source `run` accepts; every frame at full resolution, one photo every `every` seconds (the source's own
time for files: frame index / frame rate, so a video gives the same photos each time; the clock for cameras),
until `count` photos, the end of the source, or SIGINT/SIGTERM — which finish the photo being written (each is
written atomically, photo then sidecar: see photos.py) and release the camera. A disk that fills up (or turns
read-only) stops it with one line naming the folder and the cause; the photos saved before it stay whole. What a
killed collect left in the folder (temporary files, a sidecar without its photo) is removed when the next starts.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgecls.device.sinks.events import FOLDER_RATE
from edgecls.device.data.photos import check_label, clean_at_start, iso_utc, save_photo, writable_dir
from edgecls.device.pipeline import stop_on_signals
from edgecls.device.capture.sources import Source, SourceOptions
from edgecls.errors import EdgeclsError
from edgecls.fsutil import WriteError


@dataclass
class CollectOptions:
    every: float = 0.0          # seconds between photos (0: every frame)
    count: int | None = None    # stop after this many photos


def check_collect(data_dir: Path, label: str, opts: CollectOptions) -> Path:
    """All the checks, before the camera opens. Returns DATA_DIR/LABEL (created)."""
    check_label(label)
    if opts.count is not None and opts.count < 1:
        raise EdgeclsError(f"--count must be at least 1 (got {opts.count})")
    if not 0.0 <= opts.every < 86400:  # (NaN fails this too)
        raise EdgeclsError(f"--every must be 0 or more seconds (got {opts.every})")
    writable_dir(data_dir, "DATA_DIR")
    return writable_dir(data_dir / label, "DATA_DIR/LABEL")


def camera_settings(source: Source, src_opts: SourceOptions) -> dict:
    """What is known of how the pictures were taken (requested settings; a video's own frame rate)."""
    cam = {"live": source.live}
    if src_opts.size:
        cam["resolution_requested"] = f"{src_opts.size[0]}x{src_opts.size[1]}"
    if src_opts.fps:
        cam["fps_requested"] = src_opts.fps
    if getattr(source, "fps", None):
        cam["fps"] = source.fps
    cam["flip"], cam["rotate"] = src_opts.orientation.flip, src_opts.orientation.rotate
    return cam


def collect(source: Source, folder: Path, label: str, opts: CollectOptions, src_opts: SourceOptions,
            log=None) -> dict:
    """Save photos until done; returns {"saved", "folder", "stopped_by"}. The source is closed on return."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    rate = None if source.live else (getattr(source, "fps", None) or src_opts.fps or FOLDER_RATE)
    cam = camera_settings(source, src_opts)
    saved, last_t, stopped_by = 0, None, "end of source"
    clean_at_start([folder], log)
    try:
        with stop_on_signals(source) as signals:
            for frame in source:
                t = frame.index / rate if rate else frame.t_capture
                if last_t is not None and t - last_t < opts.every - 1e-9:
                    continue
                last_t = t
                side = {"time": _wall(frame.t_capture), "label": label, "source": source.name, "frame": frame.index,
                        "camera": cam, "by": "collect"}
                if frame.file is not None:
                    side["file"] = frame.file
                if rate:
                    side["source_time_s"] = round(t, 6)
                path = _save(folder, frame.bgr(), side, saved)
                saved += 1
                log(f"edgecls: saved {path}")
                if opts.count and saved >= opts.count:
                    stopped_by = "count"
                    break
            if signals:
                stopped_by = signal.Signals(signals[0]).name
    finally:
        source.close()
    return {"saved": saved, "folder": str(folder), "stopped_by": stopped_by}


def _save(folder: Path, bgr, side: dict, saved: int) -> Path:
    try:
        return save_photo(folder, bgr, side)
    except WriteError as e:   # the disk is full (or read-only…): stop, and say what is already safe
        raise EdgeclsError(f"{e}; the {saved} photo(s) saved before it are whole") from None


def _wall(t_monotonic: float) -> str:
    return iso_utc(time.time() - (time.monotonic() - t_monotonic))


@contextlib.contextmanager
def made_only_if_used(data_dir: Path, label: str):
    """The folders `collect` makes before the source opens are removed again if it fails to open (a bad source
    leaves nothing behind); never a folder that was there before, never one with anything in it."""
    fresh = [d for d in (data_dir / label, data_dir) if not d.exists()]
    try:
        yield
    except BaseException:
        for d in fresh:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
