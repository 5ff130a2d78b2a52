"""Real training runs: the run folder's contents, interrupt + resume, and the multi-device path."""
import json

from edgecls.rundir import load_run

from conftest import DIGITS, TINY_TRAIN_ARGS, cli, train_then_interrupt


def test_tiny_run_folder_holds_everything(tiny_run):
    run = load_run(tiny_run)
    meta = run.meta
    for f in ("model.keras", "labels.txt", "run.json", "splits.json", "history.png", "confusion.png"):
        assert (tiny_run / f).is_file(), f
    assert not (tiny_run / ".checkpoint").exists()
    assert run.labels == [str(i) for i in range(10)]
    assert (tiny_run / "labels.txt").read_text().split() == run.labels
    parts = {k: {r for r, _ in run.split_items(k)} for k in ("train", "val", "test")}
    assert not (parts["train"] & parts["test"] or parts["val"] & parts["test"] or parts["train"] & parts["val"])
    assert meta["dataset"]["skipped"] and all(s["reason"] for s in meta["dataset"]["skipped"])
    assert len(meta["dataset"]["content_hash"]) == 64
    assert meta["versions"]["tensorflow"].startswith("2.")
    assert meta["preprocessing"]["height"] == 96 and meta["preprocessing"]["in_model"] is True
    head, finetune = (int(TINY_TRAIN_ARGS[TINY_TRAIN_ARGS.index(f) + 1]) for f in ("--epochs", "--fine-tune-epochs"))
    phases = [h["phase"] for h in meta["history"]]   # each phase may stop early (--patience), never run over
    n_head = phases.count("head")
    assert phases == ["head"] * n_head + ["finetune"] * (len(phases) - n_head), phases
    assert 0 < n_head <= head and 0 < len(phases) - n_head <= finetune, phases
    assert meta["preprocessing"]["resampler"] == "exact"
    test = meta["metrics"]["test"]
    assert test["n"] == len(parts["test"]) and len(test["confusion"]) == 10
    assert set(test["per_class"]["3"]) == {"precision", "recall", "f1", "support"}
    # The CI model is trained to answer confidently (conftest: TINY_TRAIN_ARGS; 94-96% measured on its 90 test photos).
    assert test["accuracy"] > 0.8, test["accuracy"]


def test_json_summary_and_model_loads_without_custom_code(tiny_run):
    from edgecls.train.tfenv import import_tf

    tf, keras = import_tf()
    model = keras.models.load_model(tiny_run / "model.keras")
    assert model.output_shape == (None, 10)


def test_interrupt_then_resume_completes_the_run(tmp_path, keras_home):
    out = tmp_path / "run"
    # Started with SIGINT ignored, as a non-interactive shell starts `make test &`: Python then keeps it
    # ignored, and Ctrl-C used to be lost (exit 0, run completed). `train` must act on it all the same.
    r = train_then_interrupt(out, DIGITS, "--img-size", "96", "--epochs", "3", "--fine-tune-epochs", "1",
                             "--max-images-per-class", "15", "--patience", "10", ignore_sigint=True)
    err = r.stderr
    assert r.returncode == 130, err[-2000:]
    state = out / ".checkpoint" / "state.json"
    assert "--resume" in err and "Traceback" not in err
    saved = json.loads(state.read_text())
    started = json.loads((out / "run.json").read_text())
    assert started["status"] == "running" and started["preprocessing"]["resampler"] == "exact"
    # As a run started by an edgecls from before preprocessing.resampler left it: it was trained on OpenCV's
    # pixels, and it must finish on them (and say so), not switch to the exact resampler half way.
    del started["preprocessing"]["resampler"]
    (out / "run.json").write_text(json.dumps(started))
    r = cli("train", "--resume", out, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["status"] == "complete"
    meta = json.loads((out / "run.json").read_text())
    # The epochs done before the interrupt are kept, and the plan was completed, not restarted.
    assert meta["history"][:len(saved["history"])] == saved["history"]
    assert [h["phase"] for h in meta["history"]] == ["head"] * 3 + ["finetune"]
    assert meta["preprocessing"]["resampler"] == "opencv"
    assert not (out / ".checkpoint").exists()
    assert "already finished" in cli("train", "--resume", out).stderr


def test_mirrored_strategy_on_two_logical_cpus(tmp_path, keras_home):
    out = tmp_path / "run"
    r = cli("train", DIGITS, "--out", out, "--img-size", "96", "--epochs", "1", "--fine-tune-epochs", "1",
            "--max-images-per-class", "10", "--strategy", "mirrored", env={"EDGECLS_CPU_DEVICES": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    training = json.loads((out / "run.json").read_text())["training"]
    assert training["strategy"] == "MirroredStrategy"
    assert len(training["devices"]) == 2
