"""The dataset manifest every run keeps, and `train --init RUN_DIR` (real training, tiny: 96 px, one epoch)."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from edgecls.dataset import scan
from edgecls.rundir import load_run

from conftest import DIGITS, TINY_TRAIN_ARGS, cli, train_then_interrupt

PER_CLASS = int(TINY_TRAIN_ARGS[TINY_TRAIN_ARGS.index("--max-images-per-class") + 1])   # tiny_run's photos per class
TOTAL = 10 * PER_CLASS

# One head epoch at a learning rate that cannot move a weight: the new model is what --init loaded.
FROZEN = ("--epochs", "1", "--fine-tune-epochs", "0", "--lr", "1e-12", "--batch-size", "32")


def _copy_photos(dest, classes, per_class, extra=None):
    """The first `per_class` photos of each digit class (those tiny_run used: --max-images-per-class keeps the
    first ones in scan order), plus `extra` {class: n} photos after them."""
    data = scan(DIGITS, check=False)
    for c in classes:
        files = sorted(rel for rel, y in data.items if data.classes[y] == c)
        for rel in files[:per_class + (extra or {}).get(c, 0)]:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DIGITS / rel, dest / rel)
    return dest


def _model(run_dir):
    from edgecls.train.model_file import load_model_safely
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    return load_model_safely(keras, run_dir / "model.keras")


def test_run_keeps_a_dataset_manifest_of_every_photo_by_content(tiny_run):
    run = load_run(tiny_run)
    manifest = json.loads((tiny_run / "dataset.json").read_text())
    assert manifest["format"] == "edgecls-dataset" and manifest["content_hash"] == run.meta["dataset"]["content_hash"]
    by_path = {f["path"]: f for f in manifest["files"]}
    splits = {rel: s for s in ("train", "val", "test") for rel, _ in run.split_items(s)}
    assert set(by_path) == set(splits) and len(by_path) == TOTAL
    for rel, f in list(by_path.items())[::37]:
        data = (run.data_root / rel).read_bytes()
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["bytes"] == len(data)
        assert f["split"] == splits[rel] and f["class"] == rel.split("/")[0]


@pytest.mark.slow
def test_init_with_the_same_labels_starts_from_all_the_weights(tiny_run, tmp_path, keras_home):
    data = _copy_photos(tmp_path / "data", [str(i) for i in range(10)], PER_CLASS, extra={"3": 5})
    out = tmp_path / "next"
    r = cli("train", data, "--out", out, "--init", tiny_run, *FROZEN)   # no --img-size: --init implies 96
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"all weights copied (same labels); 5 new, 0 removed, {TOTAL} unchanged" in r.stderr
    meta = json.loads((out / "run.json").read_text())
    init = meta["init"]
    assert init["run"] == str(tiny_run.resolve()) and init["labels_same"] and init["head"] == "copied"
    assert init["model_sha256"] == hashlib.sha256((tiny_run / "model.keras").read_bytes()).hexdigest()
    since = init["data_since"]
    assert since["previous_manifest"] and (since["new"], since["removed"], since["unchanged"]) == (5, 0, TOTAL)
    assert since["per_class"]["3"] == {"new": 5, "removed": 0, "unchanged": PER_CLASS}
    assert meta["config"]["img_size"] == 96 and meta["config"]["init"] == str(tiny_run.resolve())
    # Each photo of the previous run keeps its split: none it trained on is in the new test split.
    before = {f["sha256"]: f["split"] for f in json.loads((tiny_run / "dataset.json").read_text())["files"]}
    after = {f["sha256"]: f["split"] for f in json.loads((out / "dataset.json").read_text())["files"]}
    assert all(after[h] == s for h, s in before.items()) and len(after) == TOTAL + 5
    # The model is the previous one (the learning rate could not move it): same answers on real photos.
    from edgecls.dataset import load_arrays

    run = load_run(tiny_run)
    x, _ = load_arrays(run.data_root, run.split_items("test")[:16], run.spec)
    old, new = (_model(p).predict(x.astype(np.float32), verbose=0) for p in (tiny_run, out))
    assert np.abs(old - new).max() < 1e-4


@pytest.mark.slow
def test_init_with_other_labels_keeps_the_backbone_and_makes_a_new_head(tiny_run, tmp_path, keras_home):
    prev = tmp_path / "old_run"   # a run from before the dataset manifest existed
    shutil.copytree(tiny_run, prev)
    (prev / "dataset.json").unlink()
    data = _copy_photos(tmp_path / "data", ["0", "1", "2"], 12)
    out = tmp_path / "next"
    r = cli("train", data, "--out", out, "--init", prev, *FROZEN)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "a new head (labels added: -; removed: 3, 4, 5, 6, 7, 8, 9)" in r.stderr
    assert "predates the dataset manifest" in r.stderr
    init = json.loads((out / "run.json").read_text())["init"]
    assert not init["labels_same"] and init["head"] == "new" and init["labels_removed"] == list("3456789")
    assert init["data_since"] == {"previous_manifest": False, "note": init["data_since"]["note"]}
    old, new = _model(prev), _model(out)
    assert new.output_shape == (None, 3)
    backbone = [(a, b) for a, b in zip(old.layers, new.layers) if a.name != "predictions" and a.weights]
    assert len(backbone) > 100
    for a, b in backbone:
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            assert np.abs(wa - wb).max() < 1e-5, a.name


@pytest.mark.parametrize("case, needle", [
    ("missing", "run folder not found"),
    ("not_a_run", "not an edgecls run"),
    ("other_size", "--img-size 128 differs from the --init run's 96"),
    ("other_backbone", "--backbone mobilenet_v3_small differs"),
    ("hdf5_model", "refusing to load"),
    ("with_resume", "--init starts a new run; --resume continues one"),
    ("with_weights", "--weights and --init both say where the weights come from"),
])
def test_init_refusals_are_one_line_and_write_nothing(tiny_run, tmp_path, case, needle):
    init = tmp_path / "init"
    extra = []
    if case == "not_a_run":
        init.mkdir()
        (init / "notes.txt").write_text("hello")
    elif case in ("other_size", "other_backbone", "hdf5_model", "with_resume", "with_weights"):
        shutil.copytree(tiny_run, init)
        extra = {"other_size": ["--img-size", "128"], "other_backbone": ["--backbone", "mobilenet_v3_small"],
                 "hdf5_model": [], "with_resume": ["--resume", init], "with_weights": ["--weights", "none"]}[case]
        if case == "hdf5_model":
            (init / "model.keras").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    out = tmp_path / "out"
    r = cli("train", DIGITS, "--out", out, "--init", init, *extra)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgecls: error:") and needle in lines[0], r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_an_interrupted_init_run_resumes_with_its_init_record(tiny_run, tmp_path, keras_home):
    data = _copy_photos(tmp_path / "data", [str(i) for i in range(10)], PER_CLASS, extra={"5": 3})
    out = tmp_path / "next"
    r = train_then_interrupt(out, data, "--init", tiny_run, "--epochs", "3", "--fine-tune-epochs", "1",
                             "--patience", "10")
    assert r.returncode == 130, r.stderr[-2000:]
    before = json.loads((out / "run.json").read_text())["init"]
    assert before["data_since"]["new"] == 3
    r = cli("train", "--resume", out)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["init"] == before
    assert [h["phase"] for h in meta["history"]] == ["head"] * 3 + ["finetune"]
