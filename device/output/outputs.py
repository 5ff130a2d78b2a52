"""Where results go: a window, the console, JSON lines, an MJPEG HTTP stream, an annotated video file.

Each output is one object with `render(frame, result, stats)` and `close()`; `Outputs` fans a result out to
all of them and draws the overlay at most once per frame, only when some output shows pictures. With
`run --shadow`, a `ShadowReport` (device/model/shadow.py) travels with the frame: its fields join the JSON line, its
text the overlay and the MJPEG page, and its drift events become their own JSON lines and a console warning.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from edgecls.device.model.classifier import Prediction
from edgecls.device.capture.frame import Frame
from edgecls.device.output.mjpeg import MjpegServer
from edgecls.device.output.overlay import draw_overlay
from edgecls.device.model.shadow import ShadowReport
from edgecls.device.output.stats import LiveStats
from edgecls.errors import EdgeclsError
from edgecls.fsutil import temp_file


def result_record(frame: Frame, result: Prediction, stats: LiveStats, shadow: ShadowReport | None = None) -> dict:
    """The per-frame JSON record (one line of `edgecls run --json`)."""
    rec = {"timestamp": round(time.time() - (time.monotonic() - frame.t_capture), 6), "frame": frame.index}
    if frame.file is not None:
        rec["file"] = frame.file
    rec.update({"label": result.label, "confidence": round(result.confidence, 5),
                "top": [{"label": lab, "p": round(p, 5)} for lab, p in result.top],
                "latency_ms": round((result.t_done - frame.t_capture) * 1000.0, 3),
                "infer_ms": round(result.infer_ms, 3), "fps": round(stats.fps_now, 2)})
    if shadow is not None:
        if shadow.status:
            rec["shadow"] = shadow.status          # this frame went to the float worker, or was skipped (busy)
        if shadow.pairs:
            rec["shadow_pairs"] = shadow.pairs     # frames the worker finished since the previous line
            rec["shadow_live"] = shadow.figures
    return rec


class Output:
    shows_pictures = False   # True: render() receives the annotated BGR frame
    wants_stop = False       # True once the user asked this output to end the run (window: q / Esc)
    switch_to = None         # a bundle version the user asked the run to go on with (the page: "Run it now")

    def render(self, frame: Frame, result: Prediction, stats: LiveStats, annotated: np.ndarray | None,
               shadow: ShadowReport | None = None) -> None:
        raise NotImplementedError

    def event(self, event: dict) -> None:
        """A run event (drift) outside any one frame's record; most outputs show it only through the overlay."""

    def shadow_tail(self, shadow: ShadowReport) -> None:
        """The shadow's pairs finished after the last frame (the run waits for them before its summary)."""

    def attach_source(self, source, fps: float | None) -> None:
        """Outputs built before the source opened (ports bound early) learn of it here."""

    def close(self) -> None:
        pass

    def summary(self) -> dict:
        """What this output adds to the run summary (e.g. messages sent and dropped)."""
        return {}


class JsonLinesOutput(Output):
    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def render(self, frame, result, stats, annotated, shadow=None):
        self.stream.write(json.dumps(result_record(frame, result, stats, shadow), allow_nan=False) + "\n")
        self.stream.flush()

    def event(self, event):
        self.stream.write(json.dumps(event, allow_nan=False) + "\n")
        self.stream.flush()

    def shadow_tail(self, shadow):
        if shadow.pairs:   # a line like a frame's shadow fields, without a frame: every pair is on some line
            self.event({"shadow_pairs": shadow.pairs, "shadow_live": shadow.figures})


class ConsoleOutput(Output):
    """Human-readable lines: every frame for finite sources, at most one a second for live ones."""

    def __init__(self, every_frame: bool, stream: IO[str] | None = None, interval_s: float = 1.0):
        self.every_frame, self.stream, self.interval = every_frame, stream or sys.stdout, interval_s
        self._last = 0.0

    def render(self, frame, result, stats, annotated, shadow=None):
        now = time.monotonic()
        if not self.every_frame and now - self._last < self.interval:
            return
        self._last = now
        where = frame.file if frame.file is not None else f"frame {frame.index}"
        others = ", ".join(f"{lab} {p * 100:.1f}%" for lab, p in result.top[1:])
        self.stream.write(f"{where}: {result.label} {result.confidence * 100:.1f}%"
                          + (f"  ({others})" if others else "") + f"  [{stats.fps_now:.1f} FPS]\n")
        self.stream.flush()


def opencv_window_available() -> bool:
    """False for opencv-python-headless builds (no highgui backend) and machines without a display."""
    gui = next((l.split(":", 1)[1].strip() for l in cv2.getBuildInformation().splitlines()
                if l.strip().startswith("GUI:")), "NONE")
    return gui.upper() != "NONE" and bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class WindowOutput(Output):
    shows_pictures = True

    def __init__(self, title: str = "edgecls"):
        self.title = title
        try:
            if not opencv_window_available():
                raise cv2.error("no GUI")
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise EdgeclsError("no display window: this OpenCV has no GUI (opencv-python-headless) or no display "
                               "is available; use --headless, --json, --stream or --save") from None

    def render(self, frame, result, stats, annotated, shadow=None):
        cv2.imshow(self.title, annotated)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.wants_stop = True

    def close(self):
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


class StreamOutput(Output):
    shows_pictures = True

    def __init__(self, host: str, port: int, log=None):
        self.server = MjpegServer(host, port)
        (log or (lambda m: print(m, file=sys.stderr)))(f"edgecls: streaming on {self.server.url}")

    def render(self, frame, result, stats, annotated, shadow=None):
        self.server.publish(annotated)
        if shadow is not None:
            self.server.set_status(shadow.lines)

    def close(self):
        self.server.close()


VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class VideoFileOutput(Output):
    """Annotated frames to a video file, written under a temporary name and renamed when complete."""

    shows_pictures = True

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in VIDEO_CODECS:
            raise EdgeclsError(f"--save {self.path}: unsupported video type {ext or '(none)'}; "
                               f"use one of {', '.join(VIDEO_CODECS)}")
        if not self.path.parent.is_dir():
            raise EdgeclsError(f"--save {self.path}: folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise EdgeclsError(f"--save {self.path} is a folder; give a video file name, e.g. {self.path / 'run.mp4'}")
        # Checked now, not after the whole run: the temporary file is made before the first frame.
        # Hidden, named by our pid (a killed run's leftover is removed by the next one), mode per the umask.
        try:
            self.tmp = temp_file(self.path.parent, f".{self.path.stem}.", ext)
        except OSError as e:
            raise EdgeclsError(f"--save {self.path}: cannot write in {self.path.parent} ({e.strerror or e})") from None
        self.fps, self.writer, self.frames = fps, None, 0

    def render(self, frame, result, stats, annotated, shadow=None):
        if self.writer is None:
            h, w = annotated.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                raise EdgeclsError(f"cannot write video {self.path} (codec {VIDEO_CODECS[self.path.suffix.lower()]})")
            self.size = (w, h)
        if annotated.shape[1::-1] != self.size:  # a live source may change resolution after a reconnect
            annotated = cv2.resize(annotated, self.size)
        self.writer.write(annotated)
        self.frames += 1

    def close(self):
        if self.writer is not None:
            self.writer.release()
        try:
            if self.frames:
                # OpenCV's writer reports no write errors (a full disk goes unnoticed): read the result back
                # before it replaces anything, and keep the previous file when it is not whole.
                problem = unreadable_video(self.tmp, self.frames)
                if problem:
                    raise EdgeclsError(f"--save {self.path}: the recording could not be written ({problem}"
                                       f"{disk_full_hint(self.path.parent)}); "
                                       + ("the previous file is kept" if self.path.exists() else "nothing was saved"))
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def unreadable_video(path: Path, frames: int) -> str | None:
    """None if `path` opens as a video of `frames` frames whose first and last decode, else what is wrong."""
    if path.stat().st_size == 0:
        return "the file is empty"
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return "the file does not open as a video"
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count != frames:
            return f"it holds {max(count, 0)} of the {frames} frames written"
        if not cap.read()[0]:
            return "its first frame does not decode"
        # (frames > 1: FFmpeg cannot seek back to frame 0 of a 1-frame file, which the read above covered)
        if frames > 1 and not (cap.set(cv2.CAP_PROP_POS_FRAMES, frames - 1) and cap.read()[0]):
            return "its last frame does not decode"
    finally:
        cap.release()
    return None


def disk_full_hint(folder: Path) -> str:
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    return f"; {folder} has {free // 1024} KiB free: disk full?" if free < (1 << 20) else ""


class Outputs:
    """All chosen outputs; draws the overlay once per frame if any of them shows pictures."""

    def __init__(self, outputs: list[Output], log=None):
        self.outputs = outputs
        self.shows_pictures = any(o.shows_pictures for o in outputs)
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))

    @property
    def wants_stop(self) -> bool:
        return any(o.wants_stop for o in self.outputs)

    @property
    def switch_to(self):
        return next((o.switch_to for o in self.outputs if o.switch_to is not None), None)

    def render(self, frame: Frame, result: Prediction, stats: LiveStats, shadow: ShadowReport | None = None) -> None:
        annotated = None
        if self.shows_pictures:
            annotated = draw_overlay(frame.bgr(), result, stats.fps_now,
                                     shadow_lines=shadow.lines if shadow else (), alarm=bool(shadow and shadow.drifting))
        for out in self.outputs:
            out.render(frame, result, stats, annotated, shadow)
        if shadow is not None:
            self.events(shadow.events)

    def finish_shadow(self, shadow: ShadowReport) -> None:
        """After the last frame: the pairs and events of the frames the shadow still held."""
        for out in self.outputs:
            out.shadow_tail(shadow)
        self.events(shadow.events)

    def events(self, events: list[dict]) -> None:
        """Drift events: a console line (stderr) each, and whatever each output makes of them (a JSON line)."""
        for ev in events:
            word = "warning: drift" if ev["event"] == "drift" else "note: drift cleared"
            self.log(f"edgecls: {word} ({ev['kind']}) at frame {ev['frame']}: {ev['message']}")
            for out in self.outputs:
                out.event(ev)

    def close(self) -> None:
        errors = []
        for out in self.outputs:
            try:
                out.close()
            except Exception as e:  # close every output even if one fails
                errors.append(e)
        if errors:
            raise errors[0]

    def summary(self) -> dict:
        return {k: v for out in self.outputs for k, v in out.summary().items()}


def open_output(json_lines: bool = False, headless: bool = False, every_frame: bool = True,
                stream: str | None = None, save: str | None = None, save_fps: float = 30.0,
                log=None, extra: list[Output] = ()) -> Outputs:
    """The outputs the run flags ask for. `stream` is "HOST:PORT" or "PORT"; no window with --headless/--json.
    `extra`: outputs built before the source opened (the event outputs), closed with the others on failure."""
    outs: list[Output] = []
    try:
        if not (headless or json_lines):
            outs.append(WindowOutput())
        if save:
            outs.append(VideoFileOutput(save, save_fps))
        if stream is not None:
            host, port = parse_host_port(stream)
            outs.append(StreamOutput(host, port, log))
        if json_lines:
            outs.append(JsonLinesOutput())
        elif headless:
            outs.append(ConsoleOutput(every_frame))
        outs += extra  # after the JSON lines: a frame's record comes before the events it completes
    except BaseException:
        # e.g. the port is taken: do not leave a half-open set of outputs behind
        Outputs(outs + [o for o in extra if o not in outs]).close()
        raise
    return Outputs(outs, log)


def parse_host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        raise EdgeclsError(f"bad stream address {text!r}: expected PORT or HOST:PORT") from None
    if not 0 <= p < 65536:
        raise EdgeclsError(f"bad port {p}")
    return host or default_host, p
