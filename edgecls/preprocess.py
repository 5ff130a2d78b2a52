"""The preprocessing contract: how a picture becomes the model's input tensor.

Training and the device both call `prepare()`, so the tensor the model was trained on and the
tensor it sees on the device come from one piece of code. Every parameter lives in `PreprocessSpec`,
which is stored in the run (`run.json`) and in the bundle (`edgecls.json`) — the device never guesses.

The model itself takes raw pixels (0..255) in `color_order`; the backbone's normalisation
(scale/offset) is a layer inside the model, recorded here for documentation and for int8 I/O.

The resize is named by `resampler`: "exact" (edgecls/resample.py: integer arithmetic, the same bytes on every
CPU; what new runs train with) or "opencv" (cv2.resize, whose rounding differs by ±1 between x86 and ARM; what
runs and bundles written before the field existed were made with, so they keep it).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from edgecls import resample
from edgecls.errors import EdgeclsError

RESIZE_MODES = ("stretch", "crop", "letterbox")
COLOR_ORDERS = ("RGB", "BGR")
EXACT, OPENCV = "exact", "opencv"
RESAMPLERS = (EXACT, OPENCV)
# What a preprocessing block written before `resampler` existed was made with (run.json, bundle version <= 2).
LEGACY_RESAMPLER = OPENCV
INTERPOLATION = {   # the human-readable "interpolation" line of to_dict(), per resampler
    EXACT: "exact integer resampler (edgecls.resample): per axis, area average when shrinking, bilinear when "
           "enlarging, rounded once half up; the same bytes on every CPU",
    OPENCV: "OpenCV: area when shrinking both sides, else bilinear (may differ by 1 between x86 and ARM)",
}
REQUIRED = ("height", "width", "resize", "color_order", "scale", "offset", "in_model")   # pad_value: 0 unless letterbox says
# Largest model input side accepted: far above any edge model, far below what would exhaust memory when
# `eval` allocates its N x H x W x 3 batch (a tampered 100000 px would ask for hundreds of GiB).
MAX_INPUT_SIDE = 4096


@dataclass(frozen=True)
class PreprocessSpec:
    height: int
    width: int
    resize: str = "stretch"          # stretch: ignore aspect | crop: centre-crop to aspect | letterbox: fit + pad
    color_order: str = "RGB"         # channel order the model expects
    pad_value: int = 0               # letterbox padding, every channel
    # Normalisation x = pixel * scale + offset (per channel, in color_order). Models edgecls trains
    # carry it as their first layer (in_model=True) so raw pixels go in; foreign models may need it applied.
    scale: tuple[float, ...] = field(default=(1 / 127.5,) * 3)
    offset: tuple[float, ...] = field(default=(-1.0,) * 3)
    in_model: bool = True
    resampler: str = EXACT           # exact: edgecls.resample, identical on every CPU | opencv: cv2.resize

    def __post_init__(self):
        for name in ("height", "width"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_INPUT_SIDE:
                raise EdgeclsError(f"preprocessing.{name} must be a whole number from 1 to {MAX_INPUT_SIDE} "
                                   f"(got {value!r})")
        if not _is_int(self.pad_value) or not 0 <= self.pad_value <= 255:
            raise EdgeclsError(f"preprocessing.pad_value must be a whole number from 0 to 255 (got {self.pad_value!r})")
        for name in ("scale", "offset"):
            value = getattr(self, name)
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise EdgeclsError(f"preprocessing.{name} must be 3 finite numbers, one per channel (got {list(value)})")
        if not isinstance(self.in_model, bool):
            raise EdgeclsError(f"preprocessing.in_model must be true or false (got {self.in_model!r})")
        if self.resize not in RESIZE_MODES:
            raise EdgeclsError(f"unknown resize mode {self.resize!r}; expected one of {', '.join(RESIZE_MODES)}")
        if self.color_order not in COLOR_ORDERS:
            raise EdgeclsError(f"unknown colour order {self.color_order!r}; expected RGB or BGR")
        if self.resampler not in RESAMPLERS:
            raise EdgeclsError(f"unknown resampler {self.resampler!r}; expected one of {', '.join(RESAMPLERS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scale"], d["offset"] = list(self.scale), list(self.offset)
        d["input"] = ("uint8 pixels 0..255 in color_order, NHWC" +
                      ("; normalisation is inside the model" if self.in_model else "; apply scale/offset first"))
        d["interpolation"] = INTERPOLATION[self.resampler]
        return d

    @classmethod
    def from_dict(cls, d: dict, implied_resampler: str | None = LEGACY_RESAMPLER) -> "PreprocessSpec":
        """From run.json / edgecls.json; types are checked, not coerced ("96" or true is not a height).

        `implied_resampler`: what a block without "resampler" was made with — OpenCV for one written before the
        field existed; None where the field is required (bundle version 3 on)."""
        if not isinstance(d, dict):
            raise EdgeclsError(f"invalid preprocessing block: expected an object, got {type(d).__name__}")
        # Every fact the pixels depend on must be written down: a missing one is refused, never guessed (a
        # MobileNet default for scale/offset would silently feed a ResNet the wrong numbers).
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise EdgeclsError(f"invalid preprocessing block: missing {', '.join(missing)} (the device never guesses)")
        resampler = d.get("resampler", implied_resampler)
        if resampler is None:
            raise EdgeclsError("invalid preprocessing block: missing resampler (the device never guesses)")
        return cls(height=d["height"], width=d["width"], resize=d["resize"], color_order=d["color_order"],
                   pad_value=d.get("pad_value", 0), scale=_numbers(d["scale"]), offset=_numbers(d["offset"]),
                   in_model=d["in_model"], resampler=resampler)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _numbers(values) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) for v in values):
        raise EdgeclsError(f"preprocessing scale/offset must be lists of numbers (got {values!r})")
    return tuple(float(v) for v in values)


def model_input(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Prepared uint8 pixels → the float tensor a float model takes (normalised only if not in the model)."""
    x = pixels.astype(np.float32)
    if not spec.in_model:
        x = x * np.asarray(spec.scale, np.float32) + np.asarray(spec.offset, np.float32)
    return x


def _resize(img: np.ndarray, w: int, h: int, resampler: str) -> np.ndarray:
    if resampler == EXACT:
        return resample.resize(img, w, h)
    sh, sw = img.shape[:2]
    interp = cv2.INTER_AREA if (sh > h and sw > w) else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def prepare(img: np.ndarray, spec: PreprocessSpec, image_order: str = "RGB") -> np.ndarray:
    """HxWx3 uint8 picture in `image_order` → spec.height x spec.width x 3 uint8 in spec.color_order."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 image, got {img.shape} {img.dtype}")
    h, w = spec.height, spec.width
    sh, sw = img.shape[:2]
    if spec.resize == "crop":
        # Largest centred window with the target aspect ratio.
        if sw * h > sh * w:
            cw = max(1, round(sh * w / h))
            x0 = (sw - cw) // 2
            img = img[:, x0:x0 + cw]
        else:
            ch = max(1, round(sw * h / w))
            y0 = (sh - ch) // 2
            img = img[y0:y0 + ch]
        out = _resize(img, w, h, spec.resampler)
    elif spec.resize == "letterbox":
        s = min(w / sw, h / sh)
        nw, nh = max(1, round(sw * s)), max(1, round(sh * s))
        out = np.full((h, w, 3), spec.pad_value, dtype=np.uint8)
        y0, x0 = (h - nh) // 2, (w - nw) // 2
        out[y0:y0 + nh, x0:x0 + nw] = _resize(img, nw, nh, spec.resampler)
    else:
        out = _resize(img, w, h, spec.resampler)
    if image_order != spec.color_order:
        # Same values as out[..., ::-1], without numpy's strided copy (~15x slower; this runs once per camera frame).
        out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out)
