"""`edgecls run --shadow N`: every Nth frame also goes through the bundle's float artifact, beside the live int8 one.

    shadow = Shadow(bundle, net.artifact_key, every=10)    # the float twin: tflite-float for tflite-int8, …
    shadow.offer(frame, result)   # in the loop: hands the prepared tensor to the worker, never waits
    pairs = shadow.finished()     # int8 and float top-1 of the frames the worker has done since the last call

The float model runs on its own thread with its own interpreter at 1 thread, so it does not fight the live
interpreter for cores, and LiteRT/onnxruntime release the GIL while they compute. That thread runs in Linux's idle
scheduling class (SCHED_IDLE, that thread only; elsewhere, or with `--shadow-priority normal`, at normal priority):
with a core to spare it runs at full speed, and on a busy CPU the live loop gets the core first and the shadow
falls behind, never the other way round. The hand-over is a queue of one: a frame that comes due while the worker
is still busy is not shadowed (counted as `skipped`), so the live loop never waits for float. The float model gets
the very tensor the int8 one got (`Prediction.pixels`): no second resize, and the comparison is on identical input, as
`edgecls eval` compares the two on a photo.
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgecls.bundle import Bundle
from edgecls.device.model.classifier import Prediction
from edgecls.device.model.drift import DriftMonitor, Pair, ShadowFigures, agreement_floor
from edgecls.device.capture.frame import Frame
from edgecls.device.model.runtime import load_model
from edgecls.errors import EdgeclsError
from edgecls.formats import BY_KEY, float_twin as twin_key
from edgecls.metrics import top_margin

QUEUED, SKIPPED = "queued", "skipped"   # what happened to a frame that came due (its JSON line says it)
# --shadow-priority: "idle" (the default) never takes a core the live loop or anything else wants; "normal" takes its
# share of a busy CPU (checks every Nth frame there too, at the live loop's expense).
PRIORITIES = ("idle", "normal")
PRIORITY = PRIORITIES[0]   # the default, written once (`run --shadow-priority` takes it)


def run_this_thread_when_idle() -> None:
    """Put the calling thread in SCHED_IDLE: it gets a core only when nothing else wants it (Linux: the policy of a
    thread id is that thread's alone; no privilege needed to lower one's own)."""
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):   # not Linux, or not allowed: the shadow still works, at normal priority
        pass


def float_twin(bundle: Bundle, live_key: str) -> str:
    """The float artifact of the live one's family (tflite-float for tflite-int8); EdgeclsError when there is none."""
    fmt = BY_KEY[live_key]
    if fmt.precision == "float":
        raise EdgeclsError(f"--shadow compares the live int8 model with its float twin, but the live model "
                           f"{live_key} is already float: drop --precision float")
    twin = twin_key(live_key)
    if twin not in bundle.artifacts:
        raise EdgeclsError(f"--shadow needs the bundle's {twin} model beside {live_key}, and bundle {bundle.root} has "
                           f"none (it has: {', '.join(bundle.artifacts)}); export it with --formats {fmt.family}")
    return twin


class Shadow:
    def __init__(self, bundle: Bundle, live_key: str, every: int, priority: str = PRIORITY):
        if every < 1:
            raise EdgeclsError("--shadow must be at least 1 (shadow every Nth frame)")
        if priority not in PRIORITIES:
            raise EdgeclsError(f"--shadow-priority must be one of {', '.join(PRIORITIES)} (got {priority!r})")
        self.every, self.priority = every, priority
        self.key = float_twin(bundle, live_key)
        twin = BY_KEY[self.key]
        self.model = load_model(bundle, twin.family, twin.precision, threads=1)
        self.due = self.queued = self.skipped = 0
        self._seen = 0
        self._todo: queue.Queue = queue.Queue(maxsize=1)
        self._done: deque[Pair] = deque()   # appended by the worker, emptied by the loop (deque ops are atomic)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="edgecls-shadow", daemon=True)
        self._thread.start()

    def offer(self, frame: Frame, result: Prediction) -> str | None:
        """Every Nth call: hand the frame's tensor to the worker ("queued"), or "skipped" when it is still busy.
        None for the frames in between. Never blocks."""
        n, self._seen = self._seen, self._seen + 1
        if n % self.every:
            return None
        self.due += 1
        try:
            self._todo.put_nowait((frame.index, result.pixels, result.frame_class))
        except queue.Full:
            self.skipped += 1
            return SKIPPED
        self.queued += 1
        return QUEUED

    def finished(self) -> list[Pair]:
        """The pairs the worker completed since the last call (in frame order); raises what the worker raised."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def _work(self) -> None:
        if self.priority == "idle":
            run_this_thread_when_idle()
        while True:
            item = self._todo.get()
            if item is None:
                return
            index, pixels, int8_class = item
            try:
                probs = self.model.predict(pixels[None])
                if not np.isfinite(probs).all():  # a broken float model must not pass as "int8 disagrees"
                    raise EdgeclsError(f"the shadow's {self.key} model gave non-finite outputs for frame {index}: "
                                       "the model is broken")
                margin = float(top_margin(probs)[0])
                self._done.append(Pair(index, int8_class, int(probs[0].argmax()), margin))
            except BaseException as e:  # reported to the loop by finished(); the worker stops
                self._error = e if isinstance(e, EdgeclsError) else EdgeclsError(
                    f"the shadow's {self.key} model failed on frame {index}: {type(e).__name__}: {e}")
                return

    def close(self, timeout_s: float = 30.0) -> list[Pair]:
        """Let the worker finish the frame it holds (so every queued frame is paired), stop it, and return the
        pairs not yet collected."""
        if self._thread.is_alive():
            try:
                self._todo.put(None, timeout=timeout_s)
            except queue.Full:
                pass
            self._thread.join(timeout_s)
        return self.finished()


# ---------------------------------------------------------------- the shadow in the live loop

@dataclass
class ShadowReport:
    """What the shadow adds to one frame's outputs (device/output/outputs.py)."""
    status: str | None          # this frame: QUEUED, SKIPPED, or None (not due)
    pairs: list[dict]           # pairs completed since the previous frame, as JSON records
    figures: dict | None        # the running figures, when pairs completed (ShadowFigures.to_dict)
    events: list[dict]          # drift / drift_cleared events those pairs raised
    lines: list[str]            # the overlay's and the MJPEG page's text
    drifting: list[str]         # drift kinds in an episode now


def parse_every(text: str) -> int:
    """--shadow N: a whole number >= 1."""
    try:
        every = int(text)
    except ValueError:
        raise EdgeclsError(f"--shadow takes a whole number N >= 1 (every Nth frame goes through float), got {text!r}") from None
    if every < 1:
        raise EdgeclsError(f"--shadow must be at least 1 (every Nth frame goes through float), got {every}")
    return every


class ShadowCheck:
    """The worker, the figures and the drift rules, joined for `run_pipeline`: one `step` per live frame."""

    def __init__(self, bundle: Bundle, live_key: str, every: int, priority: str = PRIORITY):
        self.labels = bundle.labels
        self.shadow = Shadow(bundle, live_key, every, priority)
        self.figures = ShadowFigures()
        self.drift = DriftMonitor(agreement_floor(bundle.meta, live_key), bundle.float_margin)
        self._lines = self.figures.lines()
        self._idle: ShadowReport | None = None

    @property
    def notes(self) -> list[str]:
        return self.drift.notes

    def step(self, frame: Frame, result: Prediction) -> ShadowReport:
        return self._report(self.shadow.offer(frame, result), self.shadow.finished())

    def close(self) -> ShadowReport:
        """Waits for the frame the worker holds: the summary then counts every queued frame."""
        return self._report(None, self.shadow.close())

    def _report(self, status: str | None, pairs: list[Pair]) -> ShadowReport:
        if not pairs and status is None and self._idle is not None:
            return self._idle   # most frames: nothing new, the same report (this runs once per live frame)
        events = []
        for p in pairs:
            self.figures.add(p)
            events += self.drift.check(self.figures, p.frame)
        if pairs:
            self._lines = self.figures.lines()
        drifting = [k for k, v in self.drift.active.items() if v]
        lines = self._lines + ([f"DRIFT: {', '.join(drifting)}"] if drifting else [])
        self._idle = ShadowReport(None, [], None, [], lines, drifting)
        if not pairs and status is None:
            return self._idle
        return ShadowReport(status, [self._record(p) for p in pairs], self.figures.to_dict() if pairs else None,
                            events, lines, drifting)

    def _record(self, p: Pair) -> dict:
        return {"frame": p.frame, "int8": self.labels[p.int8_class], "float": self.labels[p.float_class],
                "agree": p.agree, "float_margin": round(p.float_margin, 5)}

    def summary(self) -> dict:
        s = self.shadow
        return {"artifact": s.key, "every": s.every, "priority": s.priority, "due": s.due, "queued": s.queued, "skipped": s.skipped,
                **self.figures.to_dict(), "float_margin_histogram": self.figures.histogram(), "drift": self.drift.summary()}

    def summary_text(self) -> str:
        f, s = self.figures, self.shadow
        episodes = ", ".join(f"{k} {n}" for k, n in self.drift.episodes.items() if n) or "none"
        return f"float shadow ({s.key}, every {s.every}th frame, {s.skipped} skipped while busy): {'; '.join(f.lines())}; drift episodes: {episodes}"
