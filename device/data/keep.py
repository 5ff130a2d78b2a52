"""`edgecls run … --keep DIR`: keep the frames worth labelling, with the model's answer beside each.

A policy picks frames (cheap, on the camera loop); a rate limit caps how many a second are kept; a worker
thread behind a bounded queue encodes and writes them (photos.save_photo: atomic, photo then sidecar), so keeping
never slows the loop — when the queue is full a frame is dropped and counted. When DIR reaches its disk budget
keeping stops with one warning and the run goes on. A disk that is full (or read-only) is one warning naming it,
the first time; frames are then dropped and counted as such (tried again after DISK_RETRY_S, when room may have
been made), and the run goes on at full speed. What a killed run left in DIR is removed at start.

Policies are one function each, `(frame, result) -> reason or None`:
    uncertain  top-1 probability below --keep-below
    random     each frame with probability --keep-chance (a plain sample of what the camera sees)
`disagree` (needs `--shadow N`) keeps the shadowed frames whose int8 top-1 differs from the float model's: the
float answer comes later, from the shadow's worker, so each shadowed frame is held (a few at most) until its pair
arrives (device/model/shadow.py: ShadowReport.pairs).
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Callable

from edgecls.device.sinks.events import bundle_id
from edgecls.device.output.outputs import Output
from edgecls.device.model.shadow import QUEUED
from edgecls.device.data.photos import clean_at_start, encode_jpeg, folder_bytes, iso_utc, save_photo, writable_dir
from edgecls.device.sinks.sink_queue import QueuedSink
from edgecls.errors import EdgeclsError
from edgecls.fsutil import WriteError

DISAGREE = "disagree"
POLICIES = ("uncertain", "random", DISAGREE)
HELD_MAX = 8   # shadowed frames waiting for their float answer (the worker holds one, its queue one more)
DISK_RETRY_S = 2.0   # after a disk fault, frames are dropped without trying for this long (no encode, no write)
Policy = Callable[[object, object], "str | None"]


def make_policy(name: str, below: float, chance: float, seed: int | None = None) -> Policy:
    if name == "uncertain":
        return lambda frame, result: f"top-1 {result.confidence:.3f} < {below}" if result.confidence < below else None
    if name == "random":
        rng = random.Random(seed)
        return lambda frame, result: "random sample" if rng.random() < chance else None
    if name == DISAGREE:   # decided when the shadow's pair arrives (KeepOutput._settle), not per frame
        return lambda frame, result: None
    raise EdgeclsError(f"--keep-policy must be one of {', '.join(POLICIES)} (got {name!r})")


class _Writer(QueuedSink):
    """Writes kept frames on its own thread; stops for good at the disk budget."""

    def __init__(self, folder: Path, max_bytes: int, log):
        super().__init__("keep")
        self.folder, self.max_bytes, self.log = folder, max_bytes, log
        self.used = folder_bytes(folder)  # what earlier runs left counts too: the budget is the folder's
        self.full = self.used >= max_bytes
        self.written: list[str] = []
        self.disk_dropped, self.disk_error = 0, None   # frames lost to a disk fault, and the first fault's line
        self._retry_at = 0.0
        if self.full:
            self._warn_full()

    def _warn_full(self):
        self.log(f"edgecls: warning: --keep {self.folder} reached its --keep-max-mb budget "
                 f"({self.used / 1e6:.1f} MB): keeping stops, the run goes on")

    def deliver(self, item) -> bool:
        bgr, side = item
        if self.full:
            return False
        if time.monotonic() < self._retry_at:
            self.disk_dropped += 1
            return False
        try:
            return self._write(bgr, side)
        except WriteError as e:
            self._disk_fault(e)
            return False

    def _disk_fault(self, e: WriteError) -> None:
        self.disk_dropped += 1
        self._retry_at = time.monotonic() + DISK_RETRY_S
        if self.disk_error is None:
            self.disk_error = str(e)
            self.log(f"edgecls: warning: --keep: {e}; frames to keep are dropped while it lasts (tried again "
                     f"every {DISK_RETRY_S:g} s), the run goes on")

    def _write(self, bgr, side) -> bool:
        jpeg = encode_jpeg(bgr)
        size = len(jpeg) + 1024  # (and its sidecar, under 1 KiB)
        if self.used + size > self.max_bytes:
            self.used = folder_bytes(self.folder)  # frames filed away on the web page since have freed room
        if self.used + size > self.max_bytes:
            self.full = True
            self._warn_full()
            return False
        path = save_photo(self.folder, bgr, side, jpeg=jpeg)
        self.used += len(jpeg) + path.with_suffix(".json").stat().st_size
        self.written.append(path.name)
        return True


class KeepOutput(Output):
    """The keeping, as one more output of the live loop."""

    def __init__(self, folder: Path, net, *, policy: str, rate: float, max_mb: float, below: float, chance: float,
                 log=None, seed: int | None = None, shadow: bool = False):
        # (no defaults here: they are written once, device/data/labelling.py: LabellingOptions.DEFAULTS)
        policy_name = policy
        if policy_name == DISAGREE and not shadow:
            raise EdgeclsError("--keep-policy disagree needs --shadow N (the float model's answers to compare with)")
        if not 0 < rate <= 1000:
            raise EdgeclsError(f"--keep-rate must be a positive number of frames per second (got {rate})")
        if not 0 < max_mb < 1e9:
            raise EdgeclsError(f"--keep-max-mb must be a positive number of megabytes (got {max_mb})")
        if not 0.0 < below <= 1.0:
            raise EdgeclsError(f"--keep-below must be a probability in (0, 1] (got {below})")
        if not 0.0 < chance <= 1.0:
            raise EdgeclsError(f"--keep-chance must be a probability in (0, 1] (got {chance})")
        self.policy_name = policy_name
        self.policy = make_policy(policy_name, below, chance, seed)
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.folder = writable_dir(folder, "--keep")
        clean_at_start([self.folder], self.log)
        self.min_gap = 1.0 / rate
        self.net = net
        self.bundle = bundle_id(net.bundle)
        self.source_name = ""
        self._last: float | None = None
        self.chosen = self.rate_limited = 0
        self._held: dict[int, tuple] = {}   # disagree: frame index -> (frame, its pixels, result)
        self.writer = _Writer(self.folder, int(max_mb * 1e6), self.log)

    def attach_source(self, source, fps) -> None:
        self.source_name = source.name

    def render(self, frame, result, stats, annotated, shadow=None):
        if self.writer.full:
            return
        if self.policy_name == DISAGREE:
            if shadow is not None and shadow.status == QUEUED:
                self._held[frame.index] = (frame, frame.bgr().copy(), result)  # (a camera may reuse its buffer)
                while len(self._held) > HELD_MAX:
                    self._held.pop(next(iter(self._held)))
            self._settle(shadow)
            return
        reason = self.policy(frame, result)
        if reason is not None:
            self._keep(frame, frame.bgr(), result, reason)

    def shadow_tail(self, shadow):
        self._settle(shadow)

    def _settle(self, shadow) -> None:
        """disagree: the pairs the shadow finished decide the frames held for them."""
        for pair in shadow.pairs if shadow is not None else ():
            held = self._held.pop(pair["frame"], None)
            if held is not None and not pair["agree"] and not self.writer.full:
                self._keep(*held, f"int8 {pair['int8']} ≠ float {pair['float']} "
                                  f"(float margin {pair['float_margin']:.3f})")

    def _keep(self, frame, bgr, result, reason: str) -> None:
        self.chosen += 1
        now = time.monotonic()
        if self._last is not None and now - self._last < self.min_gap:
            self.rate_limited += 1
            return
        self._last = now
        side = {"time": iso_utc(time.time() - (now - frame.t_capture)), "source": self.source_name,
                "frame": frame.index, "by": "keep", "policy": self.policy_name, "reason": reason,
                "model": {"label": result.label, "confidence": round(result.confidence, 5),
                          "top": [{"label": lab, "p": round(p, 5)} for lab, p in result.top],
                          "artifact": self.net.artifact_key, "bundle": self.bundle}}
        if frame.file is not None:
            side["file"] = frame.file
        self.writer.put((bgr, side))  # the frame's own pixels (never the annotated copy)

    def close(self):
        self.writer.close()
        k = self.summary()["keep"]
        disk = f", {k['disk_dropped']} of them: {k['disk_error'].split(':')[0]}" if k["disk_dropped"] else ""
        self.log(f"edgecls: keep: {k['kept']} frames kept in {self.folder} ({k['rate_limited']} over --keep-rate, "
                 f"{k['dropped']} dropped{disk})")

    def summary(self) -> dict:
        w = self.writer.summary()
        return {"keep": {"kept": w["sent"], "dropped": w["dropped"], "rate_limited": self.rate_limited,
                         "budget_reached": self.writer.full, "folder": str(self.folder),
                         "disk_dropped": self.writer.disk_dropped, "disk_error": self.writer.disk_error}}
