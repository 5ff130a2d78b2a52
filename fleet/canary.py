"""The canary: a staged bundle answers live frames beside the running one before it may replace it.

On a worker thread the candidate's own int8 model and its float twin (one interpreter thread each) take the
frames the live loop offers (a queue of one: a frame that comes while the worker is busy is not judged, the loop
never waits). After `frames` judged frames it is promoted only if
  (a) its int8 answers agree with its own float on these frames as well as its export measured on held-out
      photos — refused when they are *shown* below that measurement (edgecls/metrics.py: shown_below_measured, a
      one-sided Fisher exact test: the export's count is itself a sample — taken as an exact rate, a perfect 90
      of 90 made any one flip among 40 frames "below 100%");
  (b) it has not collapsed: it does not give one class for nearly every frame (≥ COLLAPSE_SHARE) where the
      running model gives that class on fewer than half, and it agrees with the running model on at least the
      publisher's `min_agreement_with_current` (same test), when the release sets one.
Frames are compared by label, so a release may reorder or add classes.

The test counts *distinct views*, not frames: a camera on a still scene (or a looping video) hands over the same
picture again and again, and the binomial test would count one near-tie of the float model, flipped by int8, once
per repeat — refusing a faithful model (measured: 2 flipped photos of a 40-photo loop counted 4 times gave 36 of 40,
"shown below" 98.9%; as distinct photos, 38 of 40, is not). A frame whose small grey thumbnail is within
SAME_VIEW_MAD of one already judged is not judged again. When the scene offers fewer distinct views than asked
(after LOOK_LIMIT frames looked at per view wanted), the canary judges the views it has: fewer views, less power to
refuse, never a repeat counted as evidence.
"""
from __future__ import annotations

import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.device.model.drift import heldout_count
from edgecls.errors import EdgeclsError
from edgecls.metrics import shown_below, shown_below_measured

COLLAPSE_SHARE = 0.95
VIEW_THUMB = 16          # a view's signature: the frame's grey thumbnail, 16×16 (area averages: sensor noise averages out)
SAME_VIEW_MAD = 3.0      # mean |difference| of two thumbnails, in 0-255 levels, below which they show the same view
LOOK_LIMIT = 20          # frames looked at per distinct view wanted, before the canary judges the views it has


def view_signature(image: np.ndarray) -> np.ndarray:
    """The frame's grey thumbnail (HxWx3 or HxW uint8 in, VIEW_THUMB² float32 out; the channel order is irrelevant)."""
    import cv2

    grey = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    return cv2.resize(grey, (VIEW_THUMB, VIEW_THUMB), interpolation=cv2.INTER_AREA)


class ViewMemory:
    """The views already judged: `new(image)` is True (and remembers it) for a frame unlike every one of them."""

    def __init__(self, same_view_mad: float = SAME_VIEW_MAD):
        self.same_view_mad, self.signatures = same_view_mad, []

    def new(self, image: np.ndarray) -> bool:
        sig = view_signature(image)
        if any(float(np.abs(sig - seen).mean()) < self.same_view_mad for seen in self.signatures):
            return False
        self.signatures.append(sig)
        return True


def export_agreement(meta: dict, key: str) -> tuple[int, int] | None:
    """(agreed, images): the export's int8-vs-float agreement of `key` on its held-out photos (the drift monitor's
    reader)."""
    return heldout_count(meta, (meta.get("artifacts", {}).get(key) or {}).get("metrics") or {})


@dataclass
class Verdict:
    promote: bool
    reason: str
    figures: dict = field(default_factory=dict)


def judge(answers: list[tuple[str, str, str]], expected: tuple[int, int] | None, floor: float | None) -> Verdict:
    """answers: (candidate int8, candidate float, running model) labels per judged frame; expected: the export's
    (agreed, images) on held-out photos; floor: the publisher's minimum agreement with the running model."""
    n = len(answers)
    own = sum(a == f for a, f, _ in answers)
    with_current = sum(a == c for a, _, c in answers)
    top, top_n = Counter(a for a, _, _ in answers).most_common(1)[0]
    current_share = sum(c == top for _, _, c in answers) / n
    figures = {"frames": n, "agreement_with_own_float": round(own / n, 4),
               "export_agreement": list(expected) if expected else None,
               "agreement_with_current": round(with_current / n, 4), "most_common": top,
               "most_common_share": round(top_n / n, 4)}
    if expected is not None and shown_below_measured(own, n, *expected):
        return Verdict(False, f"its int8 model agrees with its own float on {own} of {n} distinct live frames, shown below "
                              f"the {expected[0]} of {expected[1]} its export measured on held-out photos", figures)
    if top_n / n >= COLLAPSE_SHARE and current_share < 0.5:
        return Verdict(False, f"it answers {top!r} for {top_n} of {n} distinct live frames, where the running model does on "
                              f"{current_share:.0%}: collapsed", figures)
    if floor is not None and shown_below(with_current, n, floor):
        return Verdict(False, f"it agrees with the running model on {with_current} of {n} distinct live frames, shown below "
                              f"the publisher's floor of {floor:.1%}", figures)
    return Verdict(True, f"agrees with its own float on {own} of {n} distinct live frames and with the running model on "
                         f"{with_current}", figures)


class Canary:
    def __init__(self, bundle_dir: Path, family: str | None, frames: int, floor: float | None):
        from edgecls.device.model.classifier import Classifier
        from edgecls.device.model.runtime import load_model
        from edgecls.device.model.shadow import float_twin
        from edgecls.formats import BY_KEY

        self.frames, self.floor = frames, floor
        self.net = Classifier(bundle_dir, family, "int8" if family else None, threads=1)
        twin = BY_KEY[float_twin(self.net.bundle, self.net.artifact_key)]
        self.float = load_model(self.net.bundle, twin.family, twin.precision, threads=1)
        self.expected = export_agreement(self.net.bundle.meta, self.net.artifact_key)
        self.answers: list[tuple[str, str, str]] = []
        self.offered = self.skipped = self.looked = 0
        self.views = ViewMemory()
        self.few_views = False   # the scene offered fewer distinct views than `frames`: judged on those it had
        self.error: str | None = None
        self.done, self._stop = threading.Event(), threading.Event()
        self._todo: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._work, name="edgecls-canary", daemon=True)
        self._thread.start()

    def offer(self, frame, current_label: str) -> None:
        """From the live loop, after its own answer; never waits."""
        if self.done.is_set():
            return
        self.offered += 1
        try:
            self._todo.put_nowait((frame, current_label))
        except queue.Full:
            self.skipped += 1

    def _work(self) -> None:
        labels = self.net.labels
        while len(self.answers) < self.frames and not self._stop.is_set():
            try:
                item = self._todo.get(timeout=0.2)
            except queue.Empty:
                continue
            frame, current = item
            self.looked += 1
            if not self.views.new(frame.image):   # a view already judged: not evidence a second time
                if self.answers and self.looked >= self.frames * LOOK_LIMIT:
                    self.few_views = True
                    break
                continue
            try:
                r = self.net.classify(frame)
                f = int(self.float.predict(r.pixels[None])[0].argmax())
            except (EdgeclsError, ValueError, RuntimeError) as e:
                self.error = f"the candidate failed on a live frame: {e}"
                break
            self.answers.append((labels[r.frame_class], labels[f], current))
        self.done.set()

    def verdict(self) -> Verdict | None:
        """None until `frames` distinct frames are judged, or the scene had no more (few_views), or the candidate
        failed."""
        if not self.done.is_set():
            return None
        if self.error or (len(self.answers) < self.frames and not self.few_views):
            return Verdict(False, self.error or "stopped before the canary finished")
        verdict = judge(self.answers, self.expected, self.floor)
        verdict.figures.update(frames_looked_at=self.looked, few_views=self.few_views)
        return verdict

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


LABELLED_LIMIT = 300      # the newest labelled photos judged (a few seconds on a Pi with one thread)


def labelled_photos(data_dir: Path, labels: set[str], limit: int = LABELLED_LIMIT) -> list[tuple[Path, str]]:
    """The newest photos filed by the labelling page under DATA_DIR/<label>/, for labels both models know."""
    from edgecls.images import IMAGE_EXTS

    found = [(p, d.name) for d in sorted(data_dir.iterdir()) if d.is_dir() and d.name in labels
             for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    found.sort(key=lambda pl: pl[0].stat().st_mtime, reverse=True)
    return found[:limit]


def labelled_verdict(candidate, current, data_dir: Path | None) -> Verdict | None:
    """Rule (c): on the labelled photos the device holds, the candidate may not be shown worse than the running
    model — of the photos exactly one of them gets right, the candidate must not win significantly fewer than half
    (a one-sided sign test at the gate's level). None when there are no such photos."""
    from edgecls.images import load_rgb
    from edgecls.preprocess import prepare

    if data_dir is None or not data_dir.is_dir():
        return None
    photos = labelled_photos(data_dir, set(candidate.labels) & set(current.labels))
    if not photos:
        return None

    def answer(net, img) -> str:
        probs = net.model.predict(prepare(img, net.spec, image_order="RGB")[None])[0]
        return net.labels[int(probs.argmax())]

    wins = losses = both = 0
    for path, label in photos:
        try:
            img = load_rgb(path)
        except (EdgeclsError, OSError, ValueError):
            continue
        new_ok, old_ok = answer(candidate, img) == label, answer(current, img) == label
        wins, losses, both = wins + (new_ok and not old_ok), losses + (old_ok and not new_ok), both + (new_ok and old_ok)
    n = wins + losses + both
    figures = {"labelled_photos": n, "candidate_right": wins + both, "current_right": losses + both}
    if wins + losses and shown_below(wins, wins + losses, 0.5):
        return Verdict(False, f"on {n} labelled photos on this device it is right on {wins + both} where the "
                              f"running model is right on {losses + both}: shown worse", figures)
    return Verdict(True, f"on {n} labelled photos: right on {wins + both} (running model {losses + both})", figures)
