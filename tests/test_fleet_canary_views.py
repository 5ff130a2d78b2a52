"""The canary judges distinct views (fleet/canary.py): a still scene or a looping video repeats one picture, and
counting a flipped near-tie once per repeat refused a faithful model (test_fleet_live's 40-photo loop: 36 of 40).
The session's real digits bundle, real photos, real interpreters."""
from __future__ import annotations

import time

import cv2
import numpy as np

from conftest import DIGITS


def _photos(n_per_class: int, first: int = 100) -> list[np.ndarray]:
    """Unseen digits photos (the tiny run trains on at most 40 a class), BGR as a camera gives them."""
    classes = sorted(p for p in DIGITS.iterdir() if p.is_dir())
    return [cv2.imread(str(sorted(d.iterdir())[i])) for i in range(first, first + n_per_class) for d in classes]


def _feed(canary, images, timeout=120):
    """Offer `images` in a loop, as a live loop would, until the canary is done; returns how many were offered."""
    from edgecls.device.capture.frame import Frame

    deadline, i = time.time() + timeout, 0
    while not canary.done.is_set():
        assert time.time() < deadline, f"canary not done after {i} frames: {len(canary.answers)} judged"
        canary.offer(Frame(images[i % len(images)], "BGR", time.monotonic(), i), "0")
        i += 1
        time.sleep(0.002)
    return i


def _judged(bundle, images, frames):
    """A canary of `bundle` on `frames` distinct frames, fed `images` in a loop; returns it and its verdict."""
    from edgecls.fleet.canary import Canary

    canary = Canary(bundle, "tflite", frames=frames, floor=None)
    try:
        _feed(canary, images)
        return canary, canary.verdict()
    finally:
        canary.close()


def test_a_repeat_is_one_view_and_another_photo_is_another():
    from edgecls.fleet.canary import ViewMemory

    photos = _photos(1)
    views = ViewMemory()
    rng = np.random.default_rng(0)
    assert views.new(photos[0]) and not views.new(photos[0].copy())
    noisy = np.clip(photos[0].astype(np.int16) + rng.normal(0, 4, photos[0].shape).round(), 0, 255).astype(np.uint8)
    assert not views.new(noisy)                                  # sensor noise: still the same view
    assert all(views.new(p) for p in photos[1:])                 # every other digit photo: a new view
    assert len(views.signatures) == len(photos)


def test_the_canary_counts_each_photo_of_a_loop_once(digits_bundle):
    photos = [p for p in _photos(4) for _ in range(3)]           # 40 distinct photos, 3 frames each, looped
    canary, verdict = _judged(digits_bundle, photos, 40)
    assert len(canary.answers) == len(canary.views.signatures) == 40 and not canary.few_views
    assert verdict.figures["frames"] == 40 and verdict.figures["frames_looked_at"] >= 40


def test_a_still_scene_is_judged_on_the_views_it_has(digits_bundle):
    from edgecls.fleet.canary import LOOK_LIMIT

    photos = _photos(1)[:3]                                      # 3 views, where 10 are asked
    canary, verdict = _judged(digits_bundle, photos, 10)
    assert len(canary.answers) == 3 and canary.few_views and canary.looked >= 10 * LOOK_LIMIT
    assert verdict is not None and verdict.figures["frames"] == 3 and verdict.figures["few_views"], verdict
    assert "3 distinct live frames" in verdict.reason, verdict.reason
