"""The unknown rule's calibration (device/model/unknown.py) on embeddings drawn as the device stores them: tight
exported classes with held-out photos, and a taught class whose few photos are looser and stand in both sets
(device/teach/command.py: stored). No model: the arithmetic, fast. End to end: tests/test_teach.py."""
from __future__ import annotations

import numpy as np
import pytest

from edgecls.device.model.unknown import KEEP, UnknownRule, calibrate, class_means, leave_one_out, taught_rows

D = 64


def cluster(rng, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    return (centre + spread * rng.standard_normal((n, D))).astype(np.float16)


def exported(rng, n_classes: int = 4, spread: float = 0.5):
    """A teach set as export writes it: 20 training and 20 held-out embeddings per class, tight classes."""
    centres = rng.standard_normal((n_classes, D)) * 2
    emb = np.concatenate([cluster(rng, c, 20, spread) for c in centres])
    held = np.concatenate([cluster(rng, c, 20, spread) for c in centres])
    classes = np.repeat(np.arange(n_classes), 20).astype(np.int16)
    arrays = {"embeddings": emb, "classes": classes, "calib_embeddings": held, "calib_classes": classes.copy(),
              "kernel": np.zeros((D, n_classes), np.float32), "bias": np.zeros(n_classes, np.float32)}
    return arrays, centres


def teach(arrays: dict, photos: np.ndarray) -> dict:
    """What `edgecls teach --label NEW` stores: the photos in both sets, a new class index, a wider kernel."""
    c = arrays["kernel"].shape[1]
    out = dict(arrays)
    for emb, cls in (("embeddings", "classes"), ("calib_embeddings", "calib_classes")):
        out[emb] = np.concatenate([arrays[emb], photos])
        out[cls] = np.concatenate([arrays[cls], np.full(len(photos), c, np.int16)])
    out["kernel"], out["bias"] = np.zeros((D, c + 1), np.float32), np.zeros(c + 1, np.float32)
    return out


def rule_of(arrays: dict, block: dict, shared_only: bool = False) -> UnknownRule:
    n = arrays["kernel"].shape[1]
    thresholds = np.full(n, block["threshold"]) if shared_only else np.asarray(block["class_thresholds"])
    return UnknownRule(thresholds.astype(np.float32), class_means(arrays["embeddings"], arrays["classes"], n))


def test_at_export_every_class_shares_the_threshold_that_keeps_95_percent_of_held_out_photos():
    arrays, _ = exported(np.random.default_rng(0))
    block = calibrate(arrays)
    assert not taught_rows(arrays).any() and block["taught"] == {}
    assert block["class_thresholds"] == [block["threshold"]] * 4
    assert block["images"] == 80 and KEEP * 80 <= block["kept"] < 80   # the highest such threshold drops some
    rule = rule_of(arrays, block)
    kept = sum(not rule.unknown(e) for e in arrays["calib_embeddings"])
    assert kept == block["kept"]


def test_a_loose_taught_class_gets_its_own_threshold_so_its_unseen_photos_are_named_not_unknown():
    rng = np.random.default_rng(1)
    arrays, centres = exported(rng)
    new_centre = rng.standard_normal(D) * 2
    taught = teach(arrays, cluster(rng, new_centre, 10, 2.0))   # ten photos, four times looser than the others
    block = calibrate(taught)
    assert taught_rows(taught).sum() == 10 and list(block["taught"]) == ["4"]
    own = block["class_thresholds"][4]
    assert own < block["threshold"] and block["class_thresholds"][:4] == [block["threshold"]] * 4
    # the prediction bound of the teach photos scored leave-one-out: here below every one of the ten
    loo = leave_one_out(taught["calib_embeddings"][taught["calib_classes"] == 4])
    assert block["taught"]["4"] == {"photos": 10, "kept_leave_one_out": int((loo >= own).sum())} and (loo >= own).all()
    unseen = cluster(rng, new_centre, 200, 2.0)
    named = sum(not rule_of(taught, block).unknown(e) for e in unseen)
    named_shared = sum(not rule_of(taught, block, shared_only=True).unknown(e) for e in unseen)
    assert named >= 0.8 * len(unseen) and named_shared <= 0.2 * len(unseen), (named, named_shared)
    # What is far from every class stays unknown; the exported classes' held-out photos keep their rate.
    strangers = (rng.standard_normal((200, D)) * 2).astype(np.float16)
    assert sum(rule_of(taught, block).unknown(e) for e in strangers) >= 0.95 * len(strangers)
    assert block["kept"] == calibrate(arrays)["kept"] and block["images"] == 80


def test_a_class_with_no_stored_embeddings_never_vouches_and_more_photos_of_an_exported_class_keep_the_shared_one():
    rng = np.random.default_rng(2)
    arrays, centres = exported(rng)
    means = class_means(arrays["embeddings"], arrays["classes"], 5)   # a fifth label with nothing stored
    rule = UnknownRule(np.full(5, -1.0, np.float32), means)   # a threshold any cosine passes, but no mean
    assert not rule.unknown(arrays["calib_embeddings"][0])
    assert UnknownRule(np.array([2, 2, 2, 2, -1], np.float32), means).unknown(arrays["calib_embeddings"][0])
    more = dict(arrays)   # `teach --more` on class 0: its added photos join both sets, its own held-out stay
    extra = cluster(rng, centres[0], 5, 2.0)
    for emb, cls in (("embeddings", "classes"), ("calib_embeddings", "calib_classes")):
        more[emb] = np.concatenate([arrays[emb], extra])
        more[cls] = np.concatenate([arrays[cls], np.zeros(5, np.int16)])
    block = calibrate(more)
    assert block["taught"] == {} and block["class_thresholds"] == [block["threshold"]] * 4


def test_a_taught_threshold_is_the_prediction_bound_that_keeps_95_percent_of_new_photos():
    """From ten photos the lowest leave-one-out score keeps about 10/11 of new photos of the class, and one photo's
    luck decides it; the normal prediction bound keeps KEEP of them (simulated on normal scores: 4,000 teach sets)."""
    from edgecls.device.model.unknown import t_quantile, taught_threshold, threshold_keeping

    for p, df, exact in ((0.95, 2, 2.9200), (0.95, 4, 2.1318), (0.95, 9, 1.8331), (0.975, 29, 2.0452)):
        assert t_quantile(p, df) == pytest.approx(exact, abs=0.01 if df < 4 else 2e-4)
    rng = np.random.default_rng(3)
    sets, new = rng.normal(0.7, 0.05, (4000, 10)), rng.normal(0.7, 0.05, (4000, 200))
    bound = np.array([taught_threshold(s) for s in sets])
    lowest = np.array([threshold_keeping(s)[0] for s in sets])
    assert abs((new >= bound[:, None]).mean() - KEEP) < 0.005
    assert abs((new >= lowest[:, None]).mean() - 10 / 11) < 0.005
    assert np.percentile((new >= bound[:, None]).mean(1), 5) > np.percentile((new >= lowest[:, None]).mean(1), 5)
    assert taught_threshold(np.array([0.6, 0.8])) == 0.6      # two photos: the lower score
