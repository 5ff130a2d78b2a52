"""The model stage of the live loop: a bundle artifact that turns a `Frame` into a `Prediction`.

Preprocessing comes from the bundle's edgecls.json only (via `prepare`); the frame's own channel order is
passed along so a BGR camera frame is never converted as a whole. Optional temporal smoothing averages
the probabilities of the last N frames; below `threshold` the answer is reported as "uncertain".
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgecls.bundle import load_bundle
from edgecls.device.capture.frame import Frame
from edgecls.device.model.runtime import load_model
from edgecls.device.model.unknown import UNKNOWN, UnknownRule
from edgecls.errors import EdgeclsError
from edgecls.preprocess import prepare

UNCERTAIN = "uncertain"


@dataclass
class Prediction:
    label: str                       # top-1 label, or "uncertain" below the threshold
    confidence: float                # top-1 probability (after smoothing)
    top: list[tuple[str, float]]     # top-k (label, probability)
    class_index: int                 # top-1 class index (even when uncertain)
    infer_ms: float                  # preprocess + invoke + postprocess
    t_done: float                    # time.monotonic() when the result was ready
    probs: np.ndarray | None = None  # every class's probability (after smoothing): what events are tracked on
                                     # (all zeros when the answer is "unknown": events see no class)
    pixels: np.ndarray | None = None  # the prepared model input (HxWx3 uint8): what `--shadow` feeds the float model
    frame_class: int = -1            # top-1 of this frame's own probabilities (argmax, before smoothing)

    @property
    def uncertain(self) -> bool:
        return self.label == UNCERTAIN

    @property
    def unknown(self) -> bool:
        return self.label == UNKNOWN


def rank(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest probabilities; ties go to the lower class index, as argmax (and `eval`) does.
    (uint8 outputs are quantised to 1/256 steps, so exact ties do happen.)"""
    return np.argsort(-probs, kind="stable")[:k]


def check_decision(smooth: int, threshold: float) -> None:
    if smooth < 1:
        raise EdgeclsError("--smooth must be at least 1 (frames to average)")
    if not 0.0 <= threshold <= 1.0:
        raise EdgeclsError("--threshold must be between 0 and 1")


# The decision's defaults, written once: `run`'s --top-k/--smooth/--threshold (device/run_options.py) take them.
TOP_K, SMOOTH, THRESHOLD = 3, 1, 0.0


class Classifier:
    def __init__(self, bundle_path, family: str | None = None, precision: str | None = None,
                 threads: int | None = None, top_k: int = TOP_K, smooth: int = SMOOTH,
                 threshold: float = THRESHOLD):
        check_decision(smooth, threshold)
        self.bundle = load_bundle(bundle_path)
        self.model = load_model(self.bundle, family, precision, threads=threads)
        self.set_decision(top_k, smooth, threshold)

    def set_decision(self, top_k: int, smooth: int, threshold: float) -> None:
        """How an answer is decided from the probabilities (shared with device/model/sensor_classifier.py)."""
        self.labels, self.spec = self.bundle.labels, self.bundle.spec
        self.top_k = max(1, min(top_k, len(self.labels)))
        self.threshold = threshold
        # The bundle's calibrated unknown rule (device/model/unknown.py); --threshold, when given, overrides it.
        self.unknown_rule = UnknownRule.from_bundle(self.bundle) if threshold == 0.0 and self.model.has_embedding else None
        self._history: deque[np.ndarray] = deque(maxlen=smooth)

    @property
    def artifact_key(self) -> str:
        return self.model.key

    def model_outputs(self, frame: Frame):
        """(probabilities (n_classes,), embedding batch or None, the prepared input or None) for one frame."""
        pixels = prepare(frame.image, self.spec, image_order=frame.order)
        probs, embedding = self.model.predict_both(pixels[None])
        if not np.isfinite(probs).all():  # a broken model: no answer is better than NaN passed on as one
            raise EdgeclsError(f"{self.model.artifact.path.name} gave non-finite outputs (NaN or infinity) for "
                               f"{frame.file or f'frame {frame.index}'}: the model is broken")
        return probs[0], embedding, pixels

    def classify(self, frame: Frame) -> Prediction:
        t0 = time.perf_counter()
        probs, embedding, pixels = self.model_outputs(frame)
        frame_class = int(probs.argmax())   # argmax, as `eval` scores a photo
        self._history.append(probs)
        if len(self._history) > 1:
            probs = np.mean(self._history, axis=0)
        order = rank(probs, self.top_k)
        top = [(self.labels[i], float(probs[i])) for i in order]
        best, conf = int(order[0]), float(probs[order[0]])
        label = self.labels[best] if conf >= self.threshold else UNCERTAIN
        if self.unknown_rule is not None and self.unknown_rule.unknown(embedding[0]):
            label, probs = UNKNOWN, np.zeros_like(probs)   # events see no class (top keeps what the model said)
        now = time.perf_counter()
        return Prediction(label, conf, top, best, (now - t0) * 1000.0, time.monotonic(), probs=probs, pixels=pixels,
                      frame_class=frame_class)
