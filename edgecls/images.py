"""Reading image files into RGB uint8 arrays, the same way on the training machine and on the device."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Photos from phones reach 12+ MP; anything far beyond is more likely a decompression bomb than a photo.
Image.MAX_IMAGE_PIXELS = 200_000_000


def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode any supported file to an HxWx3 uint8 RGB array.

    EXIF orientation is applied (phones store portrait photos rotated); grayscale, palette,
    RGBA, CMYK and 16-bit images are converted to 8-bit RGB. Raises OSError/ValueError on a
    corrupt or unreadable file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns on odd EXIF; the pixels are still fine
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = (arr / max(float(arr.max()), 1.0) * 255.0).astype(np.uint8)
                im = Image.fromarray(arr)
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
