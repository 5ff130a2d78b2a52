"""Reading image files into RGB uint8 arrays, the same way on the training machine and on the device."""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# The most pixels an image may have to be decoded at all. Phone photos are 12 MP, their full-resolution modes
# 48-50 MP; one 50 MP picture costs ~350 MB while decoding (PIL's 4 bytes per pixel, then the RGB array).
# Beyond that a file is refused unread: a 48 KB PNG can declare 20000 x 20000 pixels and take 4 GB to decode,
# which kills a Raspberry Pi.
MAX_IMAGE_PIXELS = 50_000_000
# PIL's own check (warn above its limit, refuse at twice it) is replaced by check_pixels, which names the size.
Image.MAX_IMAGE_PIXELS = None


class ImageRefused(ValueError):
    """A file not decoded on purpose: too many pixels, or not a regular file. The message says which."""


def check_pixels(width: int, height: int, what: str = "image") -> None:
    """Refuse a picture (or video frame) size above MAX_IMAGE_PIXELS, before anything is decoded."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageRefused(f"{what} is {width}x{height} = {width * height / 1e6:.0f} MP, above the "
                           f"{MAX_IMAGE_PIXELS / 1e6:g} MP limit")


def open_regular(path: str | os.PathLike):
    """Open a regular file for reading, refusing FIFOs, devices and sockets without blocking on them.

    (A named pipe with no writer would block open() for ever; O_NONBLOCK returns at once and fstat says what
    the path is, on the very file that was opened.)
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageRefused(f"not a regular file ({file_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode any supported file to an HxWx3 uint8 RGB array.

    EXIF orientation is applied (phones store portrait photos rotated); grayscale, palette,
    RGBA, CMYK and 16-bit images are converted to 8-bit RGB. Raises OSError/ValueError on a
    corrupt or unreadable file, ImageRefused (a ValueError) on one too large to decode or not a regular file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns on odd EXIF; the pixels are still fine
        with open_regular(path) as f:
            with Image.open(f) as im:  # lazy: reads the header only, so the size is known before decoding
                check_pixels(*im.size)
                im = ImageOps.exif_transpose(im)
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float32)
                    arr = (arr / max(float(arr.max()), 1.0) * 255.0).astype(np.uint8)
                    im = Image.fromarray(arr)
                if im.mode != "RGB":
                    im = im.convert("RGB")
                return np.asarray(im, dtype=np.uint8).copy()
