"""The model stage on a real model: channel order, smoothing, threshold, top-k ties."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgecls.device.model.classifier import UNCERTAIN, Classifier, rank
from edgecls.device.capture.frame import Frame
from edgecls.images import load_rgb


def _frame(img, order="RGB"):
    return Frame(img, order, time.monotonic(), 0)


@pytest.fixture(scope="module")
def photos(reference_photos):
    return {label: load_rgb(path) for path, label in reference_photos.items()}


def test_bgr_frames_are_classified_like_rgb_ones(reference_bundle, photos):
    net = Classifier(reference_bundle, threads=1, top_k=1001)
    cat = photos["Egyptian cat"]
    rgb = net.classify(_frame(cat))
    bgr = net.classify(_frame(np.ascontiguousarray(cat[..., ::-1]), "BGR"))
    assert rgb.label == bgr.label == "Egyptian cat" and rgb.top == bgr.top
    wrong = net.classify(_frame(np.ascontiguousarray(cat[..., ::-1]), "RGB"))  # the order mislabelled
    assert dict(wrong.top)["Egyptian cat"] != dict(rgb.top)["Egyptian cat"]


def test_smoothing_averages_the_last_n_frames(reference_bundle, photos):
    single = Classifier(reference_bundle, threads=1, top_k=1001)
    a = dict(single.classify(_frame(photos["macaw"])).top)
    b = dict(single.classify(_frame(photos["Egyptian cat"])).top)
    smooth = Classifier(reference_bundle, threads=1, top_k=1001, smooth=2)
    smooth.classify(_frame(photos["macaw"]))
    mixed = smooth.classify(_frame(photos["Egyptian cat"]))
    for label, p in mixed.top[:5]:
        assert p == pytest.approx((a[label] + b[label]) / 2, abs=1e-6)
    third = dict(smooth.classify(_frame(photos["hotdog"])).top)  # the macaw has left the 2-frame window
    c = dict(single.classify(_frame(photos["hotdog"])).top)
    assert third["macaw"] == pytest.approx((b["macaw"] + c["macaw"]) / 2, abs=1e-6)


def test_threshold_reports_uncertain_below_it(reference_bundle, photos):
    net = Classifier(reference_bundle, threads=1, threshold=0.9)
    sure, unsure = net.classify(_frame(photos["macaw"])), net.classify(_frame(photos["Egyptian cat"]))
    assert sure.label == "macaw" and sure.confidence >= 0.9
    assert unsure.label == UNCERTAIN and unsure.uncertain and unsure.top[0][0] == "Egyptian cat"


def test_ranking_breaks_ties_like_argmax():
    probs = np.array([0.1, 0.3, 0.3, 0.05, 0.25], np.float32)  # classes 1 and 2 tie, as uint8 outputs often do
    assert rank(probs, 3).tolist() == [1, 2, 4] and rank(probs, 1)[0] == probs.argmax()
