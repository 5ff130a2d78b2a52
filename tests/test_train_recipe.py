"""The training recipe: presets, the head on cached features, the fine-tuning schedule, --time-budget, and
the test accuracy reported with its interval (issue 16)."""
import json

import pytest

from conftest import DIGITS, cli


def test_schedule_warms_up_then_decays_to_zero():
    from edgecls.train.schedule import warmup_cosine
    from edgecls.train.tfenv import import_tf

    tf, keras = import_tf()
    total = tf.Variable(100, dtype=tf.int64)
    lr = warmup_cosine(tf, keras, 1e-3, 10, total)
    values = [float(lr(s)) for s in range(100)]
    assert values[0] == pytest.approx(1e-4) and values[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))   # decay only, after the warm-up
    assert values[99] < 1e-6 and values[55] == pytest.approx(5e-4, rel=0.01)
    total.assign(50)   # re-planned under a time budget: the decay now ends at step 50
    assert float(lr(49)) < 1e-5 and float(lr(80)) < 1e-9


def test_epochs_that_fit():
    from edgecls.train.schedule import epochs_that_fit

    # 600 s budget, 100 s gone, 60 s an epoch, 1 done, 60 s kept for the end: 7 more fit, capped by the plan.
    assert epochs_that_fit(600, 100, 60, 1, 12, 60) == 8
    assert epochs_that_fit(600, 100, 60, 1, 5, 60) == 5
    assert epochs_that_fit(60, 100, 60, 1, 12, 60) == 1     # over budget already: stop after what is done


def test_preset_budget_interval_and_features_head(tmp_path, keras_home):
    out = tmp_path / "run"
    # The accurate preset with the size typed here: the typed value wins, the preset sets the rest. A budget
    # of 3 seconds is spent before fine-tuning starts, so exactly one fine-tune epoch of the planned 4 runs.
    r = cli("train", DIGITS, "--out", out, "--preset", "accurate", "--img-size", "96", "--fine-tune-epochs", "4",
            "--max-images-per-class", "12", "--time-budget", "0.05", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    meta = json.loads((out / "run.json").read_text())
    cfg = meta["config"]
    assert (cfg["preset"], cfg["img_size"], cfg["epochs"], cfg["fine_tune_epochs"]) == ("accurate", 96, 30, 4)
    phases = [h["phase"] for h in meta["history"]]
    assert phases.count("finetune") == 1, phases
    assert 1 <= phases.count("head") <= 30
    timing = meta["timing"]
    assert timing["features_s"] > 0 and timing["finetune_images_per_s"] > 0 and timing["load_s"] > 0
    n = meta["dataset"]["split_sizes"]["test"]
    lo, hi = summary["test_interval"]
    assert summary["test_photos"] == n and lo <= summary["test_accuracy"] <= hi
    assert hi - lo > 0.2   # 18 test photos cannot pin accuracy down: the interval says so
    r = cli("train", "--resume", out)   # finished: nothing to resume (the budget's stop is an end, not a pause)
    assert "already finished" in r.stderr
