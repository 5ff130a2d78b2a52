"""The exact resampler: a resize whose result is the same bytes on every CPU.

OpenCV's INTER_AREA rounds its fixed-point sums differently with each vector unit: on an emulated Pi 4 it gave
25–68 of 76,800 values ±1 off the x86 result on every real photo, enough to flip a near-tie (issue 13). Here
every output value is an exact rational function of the input pixels, computed in integers and rounded once:

- each axis on its own — **area** average when the axis shrinks, **bilinear** when it grows, a copy when it keeps
  its size (OpenCV's rule takes area only when both axes shrink, and its bilinear skips pixels on a shrinking axis);
- area, n_in → n_out: input pixel i covers [i·n_out, (i+1)·n_out) and output j covers [j·n_in, (j+1)·n_in) on
  one integer scale, so each weight is an integer overlap and the weights of an output sum to n_in;
- bilinear, n_in → n_out: pixel-centre convention, source position ((2j+1)·n_in − n_out) / (2·n_out), clamped
  to the first and last pixel (as OpenCV's INTER_LINEAR), integer weights summing to 2·n_out;
- the two axes' weighted sums are kept unrounded in integers (int32, or int64 when the bound needs it) and the
  result is rounded once, half up: floor((2·num + D) / (2·D)), D the product of both axes' weight sums.

Integer addition and multiplication are exact in any order, so neither NumPy's SIMD nor the CPU can change a
value. Each axis is a few "taps" (gather a shifted copy of the rows, multiply by an integer weight per output,
add): ceil(n_in / n_out) + 1 taps for area, 2 for bilinear — no dense weight matrix, so a 3024×3024 photo stays
fast.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_INT32_MAX = int(np.iinfo(np.int32).max)


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWxC uint8 → height x width x C uint8, exactly (see the module docstring)."""
    h0, w0, ch = img.shape
    num, den = img.reshape(h0, w0 * ch), 1          # rows of interleaved channels: every gather is contiguous
    if height != h0:
        num, den = _resample(num, 0, height, den, 1)
    if width != w0:
        num, den = _resample(num, 1, width, den, ch)
    if den > 1:
        num = num.astype(_dtype(255 * 2 * den + den), copy=False)     # 2·num + D, num ≤ 255·D
        num *= 2
        num += den
        num //= 2 * den
    return np.ascontiguousarray(num, dtype=np.uint8).reshape(height, width, ch)


def _dtype(bound: int):
    """The narrowest of int32/int64 holding `bound`: exact either way, int32 is faster."""
    return np.int32 if bound <= _INT32_MAX else np.int64


def _resample(x: np.ndarray, axis: int, n_out: int, den: int, channels: int) -> tuple[np.ndarray, int]:
    """Resample axis 0 (rows) or 1 (columns of `channels` interleaved values) of 2-D x, whose values are
    ≤ 255·den: (integer numerators, their new denominator den·weight sum)."""
    n_in = x.shape[axis] // channels
    index, weight, total = _interleaved_taps(n_in, n_out, channels)
    dtype = _dtype(255 * den * total)
    acc = None
    for i, w in zip(index, weight):
        term = np.take(x, i, axis=axis).astype(dtype, copy=False)
        term *= w[:, None] if axis == 0 else w
        if acc is None:
            acc = term
        else:
            acc += term
    return acc, den * total


@lru_cache(maxsize=64)
def _interleaved_taps(n_in: int, n_out: int, channels: int):
    """taps() with each index and weight repeated for `channels` interleaved values (weights as int32, which
    holds every weight: an int64 one would make each int32 multiply go through int64)."""
    index, weight, total = taps(n_in, n_out)
    lanes = np.arange(channels)
    return (tuple((channels * i[:, None] + lanes).ravel() for i in index),
            tuple(np.repeat(w, channels).astype(np.int32) for w in weight), total)


@lru_cache(maxsize=64)
def taps(n_in: int, n_out: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], int]:
    """One axis n_in → n_out as taps: (source index per output, integer weight per output) per tap, and the
    weights' sum for every output (the denominator): area when shrinking, bilinear when growing."""
    j = np.arange(n_out, dtype=np.int64)
    if n_out < n_in:
        lo, hi = j * n_in, (j + 1) * n_in      # output j on the common scale; input pixel i is [i·n_out, (i+1)·n_out)
        first = lo // n_out
        index, weight = [], []
        for t in range(-(-n_in // n_out) + 1):   # an output overlaps at most ceil(n_in / n_out) + 1 pixels
            i = first + t
            overlap = np.maximum(0, np.minimum(hi, (i + 1) * n_out) - np.maximum(lo, i * n_out))
            if overlap.any():                        # e.g. the last tap of an integer ratio: all zero, skipped
                index.append(np.minimum(i, n_in - 1))   # past the end: weight 0
                weight.append(overlap)
        return tuple(index), tuple(weight), n_in
    den = 2 * n_out
    pos = np.clip((2 * j + 1) * n_in - n_out, 0, (n_in - 1) * den)   # source position × den, clamped to the edges
    i0 = pos // den
    frac = pos - i0 * den
    return (i0, np.minimum(i0 + 1, n_in - 1)), (den - frac, frac), den
