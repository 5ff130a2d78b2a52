"""The exact resampler (edgecls/resample.py) and how the contract names it (issue 13, "the same pixels everywhere").

Its byte-identity across CPUs is tested on the emulated Pi stack (tests/test_pi_stack.py); here: that it computes
what its docstring says, on real photos, that it gives the same bytes as the first implementation (issue 29 made
it about as fast as OpenCV; the first one is kept below as the slow reference), and that old runs and bundles
keep OpenCV.
"""
from __future__ import annotations

import functools
import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import DIGITS, ROOT
from edgecls import resample
from edgecls.bundle import MANIFEST, load_bundle
from edgecls.errors import EdgeclsError
from edgecls.images import load_rgb
from edgecls.preprocess import EXACT, OPENCV, RESIZE_MODES, PreprocessSpec, prepare

FLOWERS = DIGITS.parent / "flowers"
BIG = DIGITS / "7" / "IMG_5874.JPG"          # 3024 x 3024, one of the three in the shared digits
DIGITS96 = ROOT / "tests" / "data" / "digits96" / "bundle"


def flowers(n: int) -> list[Path]:
    return sorted(FLOWERS.glob("*/*.jpg"))[:n]


def reference_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """The first implementation of edgecls.resample.resize (before issue 29), kept as the slow reference: per axis,
    a few taps (gather, integer weight, add) in int32/int64, rounded once half up."""
    h0, w0, ch = img.shape
    num, den = img.reshape(h0, w0 * ch), 1
    if height != h0:
        num, den = _reference_pass(num, 0, height, den, 1)
    if width != w0:
        num, den = _reference_pass(num, 1, width, den, ch)
    if den > 1:
        num = num.astype(np.int64) * 2 + den
        num //= 2 * den
    return np.ascontiguousarray(num, dtype=np.uint8).reshape(height, width, ch)


def _reference_pass(x: np.ndarray, axis: int, n_out: int, den: int, channels: int):
    index, weight, total = _reference_taps(x.shape[axis] // channels, n_out)
    lanes = np.arange(channels)
    acc = 0
    for i, w in zip(index, weight):
        i, w = (channels * i[:, None] + lanes).ravel(), np.repeat(w, channels)
        acc = acc + np.take(x, i, axis=axis).astype(np.int64) * (w[:, None] if axis == 0 else w)
    return acc, den * total


def _reference_taps(n_in: int, n_out: int):
    j = np.arange(n_out, dtype=np.int64)
    if n_out < n_in:
        lo, hi = j * n_in, (j + 1) * n_in
        first = lo // n_out
        index, weight = [], []
        for t in range(-(-n_in // n_out) + 1):
            i = first + t
            overlap = np.maximum(0, np.minimum(hi, (i + 1) * n_out) - np.maximum(lo, i * n_out))
            index.append(np.minimum(i, n_in - 1))
            weight.append(overlap)
        return index, weight, n_in
    den = 2 * n_out
    pos = np.clip((2 * j + 1) * n_in - n_out, 0, (n_in - 1) * den)
    i0 = pos // den
    frac = pos - i0 * den
    return (i0, np.minimum(i0 + 1, n_in - 1)), (den - frac, frac), den


def _axis(values: list[Fraction], n_out: int) -> list[Fraction]:
    """One axis by the definition, with fractions: overlap-weighted mean when shrinking, bilinear when growing."""
    n_in = len(values)
    if n_out == n_in:
        return values
    if n_out < n_in:
        return [sum(max(0, min((j + 1) * n_in, (i + 1) * n_out) - max(j * n_in, i * n_out)) * v
                    for i, v in enumerate(values)) / n_in for j in range(n_out)]
    out = []
    for j in range(n_out):
        x = min(max(Fraction((2 * j + 1) * n_in - n_out, 2 * n_out), Fraction(0)), Fraction(n_in - 1))
        i0 = math.floor(x)
        i1 = min(i0 + 1, n_in - 1)
        out.append((1 - (x - i0)) * values[i0] + (x - i0) * values[i1])
    return out


def by_definition(img: np.ndarray, width: int, height: int) -> np.ndarray:
    cols = [_axis([Fraction(int(v)) for v in img[:, x, c]], height) for x in range(img.shape[1]) for c in range(3)]
    out = np.empty((height, width, 3), np.uint8)
    for y in range(height):
        for c in range(3):
            row = _axis([cols[x * 3 + c][y] for x in range(img.shape[1])], width)
            out[y, :, c] = [math.floor(v + Fraction(1, 2)) for v in row]   # rounded once, half up
    return out


@pytest.mark.parametrize("size, out", [((7, 5), (2, 3)), ((5, 7), (4, 9)), ((13, 11), (3, 13)), ((4, 9), (17, 11)),
                                       ((1, 1), (3, 3)), ((6, 6), (1, 1)), ((33, 20), (29, 7))])
def test_equals_the_definition_in_fractions(size, out, shared):
    """Every value equals the exact rational result rounded half up: shrinking, growing, mixed, 1 pixel."""
    w, h = size
    img = np.ascontiguousarray(load_rgb(flowers(1)[0])[40:40 + h, 60:60 + w])
    assert np.array_equal(resample.resize(img, *out), by_definition(img, *out))


def test_integer_ratio_is_the_block_mean(shared):
    """3:1 and 4:1 shrink = the mean of each 3x4 block of a real photo, rounded half up."""
    img = np.ascontiguousarray(load_rgb(flowers(1)[0])[:237, :320])   # 237 = 3 x 79, 320 = 4 x 80
    blocks = img.reshape(79, 3, 80, 4, 3).astype(np.int64).sum(axis=(1, 3))
    want = (2 * blocks + 12) // 24                                    # floor(sum / 12 + 1/2)
    assert np.array_equal(resample.resize(img, 80, 79), want.astype(np.uint8))


@pytest.mark.parametrize("src, dst", [((480, 640), (224, 224)), ((100, 100), (224, 224)), ((300, 90), (160, 160)),
                                      ((3, 2), (1, 7))])
def test_a_constant_image_stays_constant(src, dst):
    for value in (0, 1, 127, 128, 254, 255):
        img = np.full((*src, 3), value, np.uint8)
        assert (resample.resize(img, dst[1], dst[0]) == value).all()


def test_within_one_of_opencv_on_real_photos(shared):
    """Both axes shrinking: within ±1 of INTER_AREA (OpenCV rounds its fixed-point weights); both growing: of
    INTER_LINEAR. (One growing and one shrinking, OpenCV takes bilinear for both and skips pixels on the
    shrinking axis; the exact resampler averages them, so there the two differ by more, by design.)"""
    differ = total = 0
    for path in [BIG, *flowers(12)]:
        img = load_rgb(path)
        for w, h in ((224, 224), (160, 160), (96, 96)):
            if img.shape[0] <= h or img.shape[1] <= w:
                continue
            ours = resample.resize(img, w, h).astype(int)
            delta = np.abs(ours - cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
            assert delta.max() <= 1, (path.name, w, h)
            differ, total = differ + int((delta > 0).sum()), total + delta.size
    assert total > 20 * 96 * 96 * 3 and differ / total < 0.01, (total, differ / total)
    small = load_rgb(sorted(DIGITS.glob("0/*.JPG"))[0])
    assert small.shape[:2] == (100, 100)
    up = np.abs(resample.resize(small, 224, 224).astype(int) - cv2.resize(small, (224, 224)))
    assert up.max() <= 1, up.max()


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_crop_and_letterbox_geometry_is_unchanged(resize, shared):
    """Only the resampler changes: the same window, the same padding, the same channel swap as with OpenCV."""
    img = load_rgb(flowers(1)[0])                     # 320 x 263: letterbox pads left and right
    exact, opencv = (PreprocessSpec(height=96, width=128, resize=resize, color_order="BGR", pad_value=114,
                                    resampler=r) for r in (EXACT, OPENCV))
    a, b = prepare(img, exact, "RGB").astype(int), prepare(img, opencv, "RGB").astype(int)
    assert a.shape == b.shape == (96, 128, 3)
    assert np.abs(a - b).max() <= 1
    if resize == "letterbox":   # the picture where OpenCV put it, the padding around it
        s = min(128 / img.shape[1], 96 / img.shape[0])
        nw, nh = round(img.shape[1] * s), round(img.shape[0] * s)
        x0, y0 = (128 - nw) // 2, (96 - nh) // 2
        assert (x0, y0, nw, nh) == (5, 0, 117, 96)
        pad = np.ones((96, 128), bool)
        pad[y0:y0 + nh, x0:x0 + nw] = False
        assert (a[pad] == 114).all() and (b[pad] == 114).all() and not (a[~pad] == 114).all()
    # the channel swap: BGR out of an RGB picture
    assert np.array_equal(prepare(img, exact, "RGB"), prepare(img[..., ::-1].copy(), exact, "BGR"))
    assert np.array_equal(prepare(img, exact, "RGB")[..., ::-1],
                          prepare(img, PreprocessSpec(height=96, width=128, resize=resize, color_order="RGB",
                                                      pad_value=114), "RGB"))


def _spec_dict(**changes) -> dict:
    d = PreprocessSpec(height=96, width=96).to_dict()
    d.update(changes)
    return d


def test_new_specs_say_exact_and_old_ones_mean_opencv(shared):
    from edgecls.train.config import TrainConfig

    assert TrainConfig(data_dir=str(DIGITS)).preprocess_spec().resampler == EXACT   # what a new run trains with
    d = _spec_dict()
    assert d["resampler"] == EXACT and "same bytes on every CPU" in d["interpolation"]
    assert PreprocessSpec.from_dict(d).resampler == EXACT
    old = {k: v for k, v in d.items() if k != "resampler"}          # run.json written before the field
    spec = PreprocessSpec.from_dict(old)
    assert spec.resampler == OPENCV and "OpenCV" in spec.to_dict()["interpolation"]
    img = load_rgb(flowers(1)[0])
    assert np.array_equal(prepare(img, spec), cv2.resize(img, (96, 96), interpolation=cv2.INTER_AREA))
    with pytest.raises(EdgeclsError, match="missing resampler"):
        PreprocessSpec.from_dict(old, implied_resampler=None)


def version_1(meta: dict) -> dict:
    """A manifest as bundle version 1 wrote it (the committed digits96 bundle was one until issue 28): no
    resampler field — its pixels came from OpenCV — and no exam."""
    preprocessing = {k: v for k, v in meta["preprocessing"].items() if k != "resampler"}
    return {**{k: v for k, v in meta.items() if k != "golden"}, "version": 1, "preprocessing": preprocessing}


def test_bundle_versions_and_the_resampler(tmp_path, shared):
    """Version <= 2 (before the field): OpenCV, and only OpenCV. Version 3: the field is required."""
    assert load_bundle(DIGITS96).spec.resampler == EXACT   # today's bundle (tests/test_fixtures_current.py)
    b = tmp_path / "b"
    shutil.copytree(DIGITS96, b)
    meta = version_1(json.loads((b / MANIFEST).read_text()))
    (b / MANIFEST).write_text(json.dumps(meta))
    assert load_bundle(b).spec.resampler == OPENCV

    def load_with(version, **pre):
        m = dict(meta, version=version, preprocessing={**meta["preprocessing"], **pre})
        (b / MANIFEST).write_text(json.dumps(m))
        return load_bundle(b)

    assert load_with(2).spec.resampler == OPENCV
    assert load_with(3, resampler="exact").spec.resampler == EXACT
    assert load_with(3, resampler="opencv").spec.resampler == OPENCV
    with pytest.raises(EdgeclsError, match="missing resampler"):
        load_with(3)
    with pytest.raises(EdgeclsError, match="resampler 'exact' needs bundle version 3"):
        load_with(2, resampler="exact")


def test_prepare_is_fast_enough_for_live_frames(shared):
    """640x480 camera frame → 224x224 well inside a frame's budget (about 1.3 ms here, OpenCV about the same;
    benchmarks/RESULTS.md). The bound is loose: CI shares its cores."""
    import time

    frame = cv2.resize(load_rgb(BIG), (640, 480))
    spec = PreprocessSpec(height=224, width=224)
    prepare(frame, spec)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        prepare(frame, spec)
        times.append(time.perf_counter() - t)
    assert sorted(times)[len(times) // 2] < 0.015


# ---- issue 29: the fast implementation gives the reference's bytes --------------------------------------------

SIDES = (1, 2, 3, 5, 7, 16, 31, 96, 97, 100, 160, 224, 241)
FEW_SIDES = (1, 7, 97, 160, 224, 241)      # for frames of 480 px and more, where the reference is slow


@pytest.mark.parametrize("src", [(1, 1), (2, 3), (7, 5), (31, 17), (100, 100), (263, 320), (480, 640), (481, 641),
                                 (720, 1280)])
def test_same_bytes_as_the_reference_on_many_sizes(src, shared):
    """Every pair of output sides from 1 px to 241 px (odd, prime, whole and fractional ratios, shrinking, growing,
    one of each) from inputs of 1x1 to 720p, cut from real photos: byte for byte the reference's."""
    h, w = src
    photo = _big() if h > 263 else load_rgb(flowers(1)[0])
    img = np.ascontiguousarray(photo[:h, :w]) if photo.shape[0] >= h else cv2.resize(photo, (w, h))
    sides = SIDES if h < 480 else FEW_SIDES
    differ = [(oh, ow) for oh in sides for ow in sides
              if not np.array_equal(resample.resize(img, ow, oh), reference_resize(img, ow, oh))]
    assert not differ, differ


@functools.lru_cache(maxsize=1)
def _big() -> np.ndarray:
    return load_rgb(BIG)


@pytest.mark.parametrize("size", [(480, 640), (1080, 1920), (241, 97)])
def test_same_bytes_as_the_reference_on_extreme_pixels(size):
    """All 255 (the largest sums) and a checkerboard of 0/255 (every rounding direction) at camera sizes."""
    h, w = size
    checker = ((np.indices((h, w)).sum(axis=0) % 2) * 255).astype(np.uint8)
    for img in (np.full((h, w, 3), 255, np.uint8), np.repeat(checker[..., None], 3, axis=2)):
        for oh, ow in ((160, 160), (224, 224), (96, 128), (97, 101), (h, 3 * w // 4), (h + 3, 160)):
            assert np.array_equal(resample.resize(img, ow, oh), reference_resize(img, ow, oh)), (size, oh, ow)


def test_same_bytes_on_the_largest_prefix_sums():
    """A white 4K UHD frame: the largest picture the int32 prefix sums take (255·h·w just under 2^31)."""
    white = np.full((2160, 3840, 3), 255, np.uint8)
    assert 255 * 2160 * 3840 <= resample.PREFIX_MAX_PIXELS * 255 < 2 ** 31
    for ow, oh in ((224, 224), (101, 97)):
        assert np.array_equal(resample.resize(white, ow, oh), reference_resize(white, ow, oh))


def test_same_bytes_on_phone_photos_and_past_32_bits(shared):
    """A 3024x3024 photo (past resample.PREFIX_MAX_PIXELS: direct taps, or block sums for whole ratios) and a
    4099x5 strip enlarged to 4111 wide while shrinking to 97 high (denominator 4099·4111, so 255·D passes 2^32:
    the 64-bit path)."""
    big = _big()
    for ow, oh in ((224, 224), (223, 97), (756, 1008)):
        assert np.array_equal(resample.resize(big, ow, oh), reference_resize(big, ow, oh)), (ow, oh)
    strip = cv2.resize(big[:, 1500:1505], (5, 4099))
    strip[:1000] = 255                         # white: sums of 255·D, past 2^32 (a 32-bit sum would wrap)
    assert np.array_equal(resample.resize(strip, 4111, 97), reference_resize(strip, 4111, 97))


def test_phase_sums_give_the_references_bytes_in_every_channel_count_and_width(shared):
    """The phase sums (camera frames to a model's size): 1-4 channels, a crop read in place (rows longer than the
    picture), 16- and 32-bit row sums (a period of 258 rows: 255·258 passes 2^16), whole and fractional ratios,
    one axis kept. And the camera sizes of issue 29 take that path."""
    frame = cv2.resize(_big(), (640, 480))
    for ch in (1, 2, 3, 4):
        img = np.ascontiguousarray(np.dstack([frame, frame[..., :1]])[..., :ch])
        for ow, oh in ((224, 224), (160, 160), (192, 96), (640, 224), (97, 480)):
            assert np.array_equal(resample.resize(img, ow, oh), reference_resize(img, ow, oh)), (ch, ow, oh)
    crop = frame[7:407, 13:613]                                        # 400x600, not contiguous
    assert not crop.flags.c_contiguous
    assert np.array_equal(resample.resize(crop, 224, 224), reference_resize(crop, 224, 224))
    tall = cv2.resize(frame, (300, 516))
    tall[:258] = 255
    assert resample._plan(516, 300, 3, 2, 100).phased[2] == np.uint32
    assert np.array_equal(resample.resize(tall, 100, 2), reference_resize(tall, 100, 2))
    for (w, h) in ((640, 480), (1280, 720), (1920, 1080)):
        for side in (160, 224):
            assert resample._plan(h, w, 3, side, side).phased, (w, h, side)


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_prepare_gives_the_references_bytes_in_every_mode(resize, shared, monkeypatch):
    """prepare() in every resize mode, both colour orders, camera frames and photos, shrinking and enlarging:
    the same tensor as with the reference resampler in its place."""
    frame = cv2.resize(_big(), (640, 480))
    pictures = [frame, load_rgb(flowers(1)[0]), load_rgb(sorted(DIGITS.glob("0/*.JPG"))[0]), frame[:479, :637]]
    specs = [PreprocessSpec(height=h, width=w, resize=resize, color_order=order, pad_value=114)
             for h, w in ((160, 160), (224, 224), (96, 128), (120, 90), (300, 300)) for order in ("RGB", "BGR")]
    fast = [prepare(img, spec, order) for img in pictures for spec in specs for order in ("RGB", "BGR")]
    monkeypatch.setattr(resample, "resize", reference_resize)
    slow = [prepare(img, spec, order) for img in pictures for spec in specs for order in ("RGB", "BGR")]
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))


def test_as_fast_as_opencv_on_camera_frames(shared):
    """Issue 29: the exact resize at most 1.5x OpenCV's INTER_AREA on 640x480 and 1920x1080 frames (by phase sums
    0.44-0.76x on an AVX-512 Xeon, where OpenCV is faster than on the AVX2 hosts; the prefix sums before them
    measured 1.27-1.63x there at 640x480 → 224, benchmarks/RESULTS.md). Interleaved, one call each in turn,
    medians: both feel the same load."""
    import time

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    photo = _big()
    try:
        for size in ((640, 480), (1920, 1080)):
            frame = cv2.resize(photo, size)
            for out in ((160, 160), (224, 224)):
                times = {"exact": [], "opencv": []}
                for _ in range(30 if size[0] < 1000 else 10):
                    for name, fn in (("exact", resample.resize), ("opencv", _opencv_area)):
                        t = time.perf_counter()
                        fn(frame, *out)
                        times[name].append(time.perf_counter() - t)
                ratio = np.median(times["exact"]) / np.median(times["opencv"])
                assert ratio <= 1.5, (size, out, ratio)
    finally:
        cv2.setNumThreads(threads)


def _opencv_area(img: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
