"""One captured picture on its way through the live loop, and the flips/rotations a mounted camera needs."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgecls.errors import EdgeclsError

FLIPS = ("none", "h", "v", "both")
ROTATIONS = (0, 90, 180, 270)
_CV_FLIP = {"h": 1, "v": 0, "both": -1}
_CV_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


@dataclass
class Frame:
    """`image` is HxWx3 uint8 in `order` (OpenCV gives BGR, PIL and picamera2-as-configured give RGB):
    the order travels with the pixels and `prepare()` swaps only the small model input, never the frame."""
    image: np.ndarray
    order: str            # "RGB" | "BGR"
    t_capture: float      # time.monotonic() when the pixels arrived
    index: int            # position in the stream (0, 1, 2, ...)
    file: str | None = None  # the image file it came from (folder/glob/image sources)

    def bgr(self) -> np.ndarray:
        return self.image if self.order == "BGR" else np.ascontiguousarray(self.image[..., ::-1])


@dataclass(frozen=True)
class Orientation:
    flip: str = "none"
    rotate: int = 0

    def __post_init__(self):
        if self.flip not in FLIPS:
            raise EdgeclsError(f"--flip must be one of {', '.join(FLIPS)} (got {self.flip!r})")
        if self.rotate not in ROTATIONS:
            raise EdgeclsError(f"--rotate must be one of 0, 90, 180, 270 (got {self.rotate})")

    @property
    def identity(self) -> bool:
        return self.flip == "none" and self.rotate == 0

    def apply(self, img: np.ndarray) -> np.ndarray:
        if self.flip != "none":
            img = cv2.flip(img, _CV_FLIP[self.flip])
        if self.rotate:
            img = cv2.rotate(img, _CV_ROTATE[self.rotate])
        return img
