"""Video sources by URI, each one object yielding `Frame`s: `for frame in open_source(uri): ...`.

Finite sources (image file, folder, glob, video file) give every frame in order, none dropped, and end when
exhausted (unless loop=True). Live sources (cameras, network streams) are read on their own thread that keeps
only the newest frame, so a slow model never works on stale pictures; a device or stream that fails is
reopened with exponential backoff while the loop keeps waiting.

URIs: picam: | picam:N | csi://N | /dev/videoN | usb:N | imx500:PATH.rpk (the AI Camera: frames carry the sensor's
output) | rtsp://… | http(s)://… | video file | image file | folder | glob (e.g. "photos/*.jpg").
"""
from __future__ import annotations

import dataclasses
import glob as globlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2

from edgecls.device.capture.cameras import (NETWORK_TIMEOUT_MS, CvCapture, FramesTooLarge, PicamCapture, SourceOpenError,
                                    open_csi)
from edgecls.device.capture.frame import Frame, Orientation
from edgecls.device.capture.imx500_camera import SCHEME as IMX500, Imx500Capture, SensorFrame, is_imx500
from edgecls.errors import EdgeclsError
from edgecls.images import ImageRefused, file_kind, is_image_name, load_rgb

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass
class SourceOptions:
    size: tuple[int, int] | None = None   # requested capture resolution (cameras)
    fps: float | None = None              # requested capture rate (cameras)
    orientation: Orientation = field(default_factory=Orientation)
    loop: bool = False                    # finite sources: start again when exhausted
    realtime: bool = False                # finite sources: play at their own rate (a video's fps, else `fps`)
    backoff: tuple[float, float] = (0.5, 10.0)  # live sources: first and longest wait between reopen attempts
    give_up_after: int = 5                # live sources that never gave a frame: opens before it is an error
    # The model input (width, height): with no `size`, cameras that scale in hardware are asked for a frame just
    # covering it (device/capture/cameras.py: covering_size), so the CPU resizes little. None: the cameras' defaults.
    model_input: tuple[int, int] | None = None


class Source:
    live = False
    name = ""

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask a running iteration to end soon (safe from a signal handler or another thread)."""
        self._stopped = True

    def close(self) -> None:
        pass

    @property
    def stopped(self) -> bool:
        return getattr(self, "_stopped", False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ImageFilesSource(Source):
    """A list of image files, decoded like training and `eval` decode them (PIL, EXIF applied, RGB)."""

    def __init__(self, files: list[Path], name: str, opts: SourceOptions):
        self.files, self.name, self.opts = files, name, opts
        self.skipped: list[str] = []

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            for path in self.files:
                if self.stopped:
                    return
                try:
                    img = load_rgb(path)
                except Exception as e:  # a corrupt file among many: report it, keep going
                    self.skipped.append(str(path))
                    why = str(e) if isinstance(e, ImageRefused) else type(e).__name__
                    print(f"edgecls: warning: skipping unreadable image {path}: {why}", file=sys.stderr)
                    continue
                _pace(self, index)
                yield Frame(self.opts.orientation.apply(img), "RGB", time.monotonic(), index, str(path))
                index += 1
            if not self.opts.loop or not self.files:
                return


class VideoFileSource(Source):
    """A video file decoded frame by frame: no frame is dropped, however slow the model."""

    def __init__(self, path: Path, opts: SourceOptions):
        self.path, self.name, self.opts = path, str(path), opts
        self.cap = CvCapture(str(path))
        self.fps = self.cap.cap.get(cv2.CAP_PROP_FPS) or None  # what --save writes at, to keep the timing

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while not self.stopped:
            img = self.cap.read()
            if img is None:
                if not self.opts.loop or index == 0:
                    return
                self.cap.release()
                self.cap = CvCapture(str(self.path))
                continue
            _pace(self, index)
            yield Frame(self.opts.orientation.apply(img), self.cap.order, time.monotonic(), index)
            index += 1

    def close(self) -> None:
        self.cap.release()


def _pace(source: Source, index: int) -> None:
    """--realtime: hold frame `index` of a finite source until its time (as a camera would give it)."""
    if not source.opts.realtime:
        return
    rate = getattr(source, "fps", None) or source.opts.fps or 30.0
    if index == 0 or not hasattr(source, "_t0"):
        source._t0 = time.monotonic() - index / rate
    delay = source._t0 + index / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class LiveSource(Source):
    """A camera or stream read on its own thread; iteration yields the newest frame not yet seen.

    `opener()` returns an adapter with read()/release()/order (see cameras.py). The first open happens here
    and its failure is fatal (SourceOpenError); later failures are retried with backoff for as long as we run.
    The backoff grows until a frame actually arrives (a successful open is not enough: a URL can open and give
    nothing), and a source that never gave a single frame is given up after `give_up_after` opens.
    """

    live = True

    def __init__(self, opener: Callable[[], object], name: str, opts: SourceOptions,
                 log: Callable[[str], None] | None = None):
        self.opener, self.name, self.opts = opener, name, opts
        self.log = log or (lambda msg: print(f"edgecls: {msg}", file=sys.stderr))
        self.cap = opener()
        self.order = self.cap.order
        self.frame_size = getattr(self.cap, "frame_size", None)   # what the device delivers, read back
        self.captured = 0       # frames read from the device
        self.reconnects = 0     # successful reopens after a failure
        self.error: Exception | None = None   # why the capture gave up; raised by the iteration
        self._delay = opts.backoff[0]         # the next reopen's wait; back to the first only when a frame arrives
        self._empty_opens = 0                 # opens in a row that gave no frame
        self._frames_this_open = 0
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._capture_loop, name=f"capture {name}", daemon=True)
        self._thread.start()

    @property
    def delivers(self) -> str:
        """The start-up line's note on the frame size, e.g. "camera frames 320x240 (model input 224x224)"."""
        if not self.frame_size or not all(self.frame_size):
            return ""
        model = self.opts.model_input
        return (f"{self.name} delivers {self.frame_size[0]}x{self.frame_size[1]} frames"
                + (f" (model input {model[0]}x{model[1]})" if model else ""))

    def _reopen(self) -> bool:
        """Reopen after a failure, waiting first, then longer after every failed attempt. False if stopped."""
        with self._cond:
            cap, self.cap = self.cap, None
        if cap is not None:
            cap.release()
        longest = self.opts.backoff[1]
        while not self._stop_event.wait(self._delay):
            self._delay = min(self._delay * 2, longest)
            try:
                cap = self.opener()
            except Exception as e:  # EdgeclsError, or a library error from a half-present device
                self.log(f"{self.name}: reopen failed ({e}); retrying in {self._delay:.1f}s")
                continue
            with self._cond:
                self.cap = cap
            self.reconnects += 1
            self._frames_this_open = 0
            self.log(f"{self.name}: reconnected")
            return True
        return False

    def _read(self):
        try:
            return self.cap.read()
        except Exception:  # a library error mid-stream is a lost stream like any other
            return None

    def _capture_loop(self) -> None:
        while not self._stop_event.is_set():
            img = self._read()
            if img is None:
                if self._stop_event.is_set():
                    break
                self._empty_opens = 0 if self._frames_this_open else self._empty_opens + 1
                if self.captured == 0 and self._empty_opens >= self.opts.give_up_after:
                    self.error = SourceOpenError(f"{self.name} opened {self._empty_opens} times but never gave a "
                                                 "frame (an empty or finished stream, or not a video)")
                    break
                self.log(f"{self.name}: " + ("stream lost; reopening" if self._frames_this_open else
                                             f"opened but gave no frame; reopening in {self._delay:.1f}s"))
                if not self._reopen():
                    break
                continue
            self._frames_this_open += 1
            self._delay = self.opts.backoff[0]
            # Orientation is applied by the consumer, to the frames it takes, not to every captured one.
            frame = self._frame(img)
            with self._cond:
                self._latest = frame
                self.captured += 1
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _frame(self, img) -> Frame:
        """The frame for pixels just read (on the capture thread, right after the read)."""
        return Frame(img, self.order, time.monotonic(), self.captured)

    def __iter__(self) -> Iterator[Frame]:
        seen = -1
        while not self.stopped:
            with self._cond:
                while not self.stopped and self.error is None and (self._latest is None or self._latest.index == seen):
                    self._cond.wait(0.1)
                if self.error is not None:
                    raise self.error
                if self.stopped:
                    return
                frame = self._latest
            seen = frame.index
            if not self.opts.orientation.identity:
                frame = dataclasses.replace(frame, image=self.opts.orientation.apply(frame.image))
            yield frame

    def stop(self) -> None:
        super().stop()
        self._stop_event.set()

    def close(self) -> None:
        self.stop()
        self._thread.join(timeout=2 * NETWORK_TIMEOUT_MS / 1000)  # a blocked read returns by then
        with self._cond:
            cap, self.cap = self.cap, None
        if cap is not None:
            cap.release()


class SensorSource(LiveSource):
    """The AI Camera (device/capture/imx500_camera.py): its frames carry the output the sensor's network computed on
    them (`SensorFrame.outputs`), which `SensorClassifier` reads instead of running a model on this CPU."""

    def _frame(self, img) -> Frame:
        return SensorFrame(img, self.order, time.monotonic(), self.captured, outputs=self.cap.outputs)


def _image_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if is_image_name(f) and not f.startswith(".")]
    return out


def _device_index(uri: str, prefix: str) -> int:
    rest = uri[len(prefix):].strip("/") or "0"
    if not rest.isdigit():
        raise EdgeclsError(f"bad source {uri!r}: expected {prefix}N with N a camera number")
    return int(rest)


def open_source(uri: str, opts: SourceOptions | None = None) -> Source:
    """The source a URI names (see module doc). Raises EdgeclsError if it cannot be opened."""
    opts = opts or SourceOptions()
    size, fps, model = opts.size, opts.fps, opts.model_input
    if uri == "picam" or uri.startswith("picam:"):
        idx = _device_index(uri, "picam:") if uri != "picam" else 0
        return LiveSource(lambda: PicamCapture(idx, size, fps, model), f"picam:{idx}", opts)
    if is_imx500(uri):
        rpk = uri[len(IMX500) + 1:]
        if not rpk:   # `run` names the bundle's own network; elsewhere the file must be given
            raise SourceOpenError("--source imx500 needs its network file here: imx500:PATH.rpk")
        return SensorSource(lambda: Imx500Capture(Path(rpk), size, fps), f"{IMX500}:{rpk}", opts)
    if uri.startswith("csi://"):
        idx = _device_index(uri, "csi://")
        return LiveSource(lambda: open_csi(idx, size, fps, model), uri, opts)
    if uri.startswith("usb:") or uri.startswith("/dev/video"):
        target = _device_index(uri, "usb:") if uri.startswith("usb:") else uri
        if isinstance(target, str) and not os.path.exists(target):
            raise SourceOpenError(f"camera not found: {target} (see `edgecls doctor` for the cameras on this machine)")
        return LiveSource(lambda: CvCapture(target, cv2.CAP_V4L2, size, fps, model=model), uri, opts)
    if uri.lower().startswith(NETWORK_SCHEMES):
        return LiveSource(lambda: CvCapture(uri, cv2.CAP_FFMPEG, timeouts=True), uri, opts)
    if any(c in uri for c in "*?["):
        files = sorted(Path(p) for p in globlib.glob(uri, recursive=True) if is_image_name(p))
        if not files:
            raise SourceOpenError(f"no image files match {uri}")
        return ImageFilesSource(files, uri, opts)
    path = Path(uri)
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise SourceOpenError(f"no image files in folder {path}")
        return ImageFilesSource(files, str(path), opts)
    if not path.exists():
        raise SourceOpenError(f"source not found: {uri}")
    if not path.is_file():  # a FIFO with no writer would block open() for ever, and Ctrl-C with it
        raise SourceOpenError(f"source {uri} is {file_kind(path.stat().st_mode)}, not a video or image file "
                              "(cameras: /dev/videoN or usb:N)")
    if is_image_name(path):
        return ImageFilesSource([path], str(path), opts)
    try:
        return VideoFileSource(path, opts)
    except FramesTooLarge:
        raise
    except SourceOpenError:
        raise SourceOpenError(f"cannot open {path} as a video (not a video file, or a codec this OpenCV lacks)") from None
