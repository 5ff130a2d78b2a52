"""`edgecls train`: two-phase transfer learning into a resumable run folder — the story, in order.

Check everything that can be checked before TensorFlow loads and before anything is written (`_check`); load the
photos and split them (train/run_photos.py); build the model under its strategy (train/multiworker.py:
choose_strategy); only then write the run folder; fit the two phases (train/phases.py), checkpointing every epoch
(train/checkpoint.py); finish: the best weights measured, the plots, model.keras, run.json complete (`_finish`).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import time
from pathlib import Path

from edgecls.errors import EdgeclsError, Interrupted
from edgecls.fsutil import atomic_write_json
from edgecls.metrics import classification_report
from edgecls.preprocess import PreprocessSpec
from edgecls.progress import say
from edgecls.rundir import (CACHE, CKPT, MODEL_FILE, RUN_FORMAT, RUN_JSON, RUN_VERSION, SPLITS_JSON, has_checkpoint,
                            is_run)
from edgecls.stopping import StopRequest
from edgecls.train import run_photos
from edgecls.train.checkpoint import CheckpointState, load_checkpoint
from edgecls.train.config import TrainConfig
from edgecls.train.init_run import InitRun, open_init_run
from edgecls.train.out_dir import Replacement, check_out_dir, recover_replaced
from edgecls.train.phases import Fitting
from edgecls.train.run_photos import RunPhotos
from edgecls.train.split_input import decoded_bytes, open_splits, resolve_cache
from edgecls.versions import library_versions

# Environment failures while writing: one line, not a traceback (EFBIG: a file-size limit, RLIMIT_FSIZE).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
CANNOT_WRITE = DISK_FULL + (errno.EROFS, errno.EACCES, errno.EPERM)


@dataclasses.dataclass
class _Checked:
    """What `_check` found before TensorFlow loads: the config, and when resuming what the run recorded."""
    cfg: TrainConfig
    previous_meta: dict                    # run.json of the run being resumed ({} for a new run)
    splits: dict | None                    # its splits.json
    state: CheckpointState | None          # its checkpoint
    init: InitRun | None                   # --init: the previous run whose weights this one starts from


def train(cfg: TrainConfig | None, out: Path, force: bool = False, resume: bool = False, quiet: bool = False) -> dict:
    """Train into `out` (or continue it). SIGINT/SIGTERM stop at the next safe point (edgecls/stopping.py).
    --strategy multiworker: this process is one worker of TF_CONFIG's cluster (edgecls.train.multiworker)."""
    from edgecls.train import multiworker

    return multiworker.launch(_train_one, cfg, out, force, resume, quiet)


def _train_one(cfg: TrainConfig | None, out: Path, force: bool, resume: bool, quiet: bool) -> dict:
    stop = StopRequest()
    replacement = None if resume else Replacement(out)
    with stop.installed():
        try:
            return _train(cfg, out, force, resume, quiet, stop, replacement)
        except BaseException as e:
            if replacement is not None:
                replacement.rollback()   # no-op once the new run has its first checkpoint
            saved = has_checkpoint(out) and (replacement is None or replacement.committed)
            then = f"edgecls train --resume {out}" if saved else "run the same command again"
            if stop.caused(e):
                what = ("interrupted; the last finished epoch is saved" if saved else
                        "interrupted before the first epoch finished; nothing was kept")
                raise Interrupted(f"{what}: {then}", stop.exit_signal) from None
            if isinstance(e, OSError) and e.errno in CANNOT_WRITE:
                where = e.filename or out
                why = "disk full" if e.errno in DISK_FULL else (e.strerror or str(e)).lower()
                raise EdgeclsError(f"cannot write {where} ({why}); fix that, then {then}") from None
            raise


def _open_for_resume(out: Path) -> tuple[dict, dict]:
    if not is_run(out):
        raise EdgeclsError(f"cannot resume: {out} is not an edgecls run")
    meta = json.loads((out / RUN_JSON).read_text())
    if meta.get("status") == "complete":
        raise EdgeclsError(f"{out} already finished training; nothing to resume")
    if not has_checkpoint(out):
        raise EdgeclsError(f"{out} has no checkpoint to resume from; start again with --force")
    try:
        splits = json.loads((out / SPLITS_JSON).read_text())
        splits["root"], splits["classes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgeclsError(f"cannot resume {out}: {SPLITS_JSON} is unreadable ({type(e).__name__})") from None
    return meta, splits


def _check(cfg: TrainConfig | None, out: Path, force: bool, resume: bool) -> _Checked:
    """Everything that can fail before TensorFlow loads: the run to resume, or --out and the --init run."""
    if resume:
        previous_meta, splits = _open_for_resume(out)
        cfg = TrainConfig.from_dict(previous_meta["config"])
        cfg.data_dir = splits["root"]   # absolute (older runs kept the path as typed): resume from any folder
        state = CheckpointState(out)    # a corrupt state.json fails here, before TensorFlow loads
        checked = _Checked(cfg, previous_meta, splits, state, None)
    else:
        check_out_dir(out, cfg.data_dir, force)
        init = None
        if cfg.init:
            from edgecls.train.init_run import check_matches

            init = open_init_run(cfg.init)   # missing, unfinished or unsafe: refused before TensorFlow loads
            check_matches(init, cfg)
        checked = _Checked(cfg, {}, None, None, init)
    checked.cfg.validate()
    return checked


def _train(cfg: TrainConfig | None, out: Path, force: bool, resume: bool, quiet: bool, stop: StopRequest,
           replacement: Replacement | None) -> dict:
    """Check everything, then write: load the photos, build the model, fit the two phases, finish the run."""
    t_start = time.time()
    recover_replaced(out, quiet)
    checked = _check(cfg, out, force, resume)
    cfg, state = checked.cfg, checked.state
    from edgecls.train.tfenv import import_tf

    tf, keras = import_tf()   # before anything is written: a missing TensorFlow must not leave a half run folder
    weights = cfg.resolve_weights()
    spec = cfg.preprocess_spec()
    if resume:   # a run resumes with the resampler it started with (one from before the field: OpenCV)
        spec = dataclasses.replace(spec, resampler=PreprocessSpec.from_dict(
            checked.previous_meta.get("preprocessing")).resampler)
    photos = run_photos.load(cfg, checked.splits, checked.init, quiet)
    t_loaded = time.time()
    model, dist, training = _build(tf, keras, cfg, photos, weights, state, checked.init, quiet)
    training.update(cache=resolve_cache(cfg.cache, photos.n_images, spec),
                    decoded_bytes=decoded_bytes(photos.n_images, spec))

    # Every check passed: only now is anything written (so a refused option leaves no stub behind).
    if replacement is not None:
        replacement.begin()
        run_photos.write(out, photos)
        state = CheckpointState(out)
    meta = _run_meta(cfg, spec, photos, training, checked.previous_meta)
    atomic_write_json(out / RUN_JSON, meta)
    first_checkpoint = replacement.commit if replacement is not None else (lambda: None)
    t_pixels = time.time()
    inputs = open_splits(training["cache"], photos.data.root, photos.parts, spec, out / CACHE,
                         photos.summary["content_hash"], quiet)
    load_s = (t_loaded - t_start) + (time.time() - t_pixels)   # checking the photos, then decoding or caching them
    run = Fitting(tf, keras, model, dist, cfg, state, stop, first_checkpoint, quiet, t_start)
    from edgecls.train.phases import fit

    timing = fit(run, inputs, len(photos.data.classes), training["fine_tune_at"], weights is None and not cfg.init)
    meta["timing"] = {"load_s": round(load_s, 1), **timing}
    return _finish(out, run, inputs, photos.data.classes, meta)


def _run_meta(cfg: TrainConfig, spec: PreprocessSpec, photos: RunPhotos, training: dict, previous_meta: dict) -> dict:
    """run.json while training (status "running"); `_finish` completes it."""
    meta = {"format": RUN_FORMAT, "version": RUN_VERSION, "status": "running", "labels": photos.data.classes,
            "config": cfg.to_dict(), "preprocessing": spec.to_dict(), "dataset": photos.summary,
            "training": training, "versions": library_versions("tensorflow", "tf-keras")}
    if photos.init_block or previous_meta.get("init"):
        meta["init"] = photos.init_block or previous_meta["init"]
    return meta


def _build(tf, keras, cfg: TrainConfig, photos: RunPhotos, weights, state: CheckpointState | None,
           init: InitRun | None, quiet: bool):
    """The model under its distribution strategy (from the checkpoint when resuming: `state`; from the --init
    run's weights: `init`). A wrong --weights file or --fine-tune-at fails here, before anything is written.
    Returns (model, the strategy object: train/multiworker.py: OneMachine or Workers, run.json's block)."""
    from edgecls.train.model import build_model, default_fine_tune_at
    from edgecls.train.multiworker import choose_strategy

    keras.utils.set_random_seed(cfg.seed)
    gpus = tf.config.list_physical_devices("GPU")
    if cfg.mixed_precision:
        if gpus:
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            say("warning: --mixed-precision needs a GPU; training in float32", quiet)
    dist = choose_strategy(tf, cfg.strategy)
    dist.check_same_data(tf, json.dumps(photos.manifest["files"], sort_keys=True))   # not the root: paths may differ
    with dist.strategy.scope():
        model = build_model(cfg, len(photos.data.classes), None if state is not None or init is not None else weights)
        if state is not None:
            load_checkpoint(model, state, quiet)
        elif init is not None:
            from edgecls.train.init_run import copy_weights

            copy_weights(keras, model, init, photos.labels_same)
    training = {"strategy": dist.name, "workers": dist.workers, "devices": dist.devices, "gpus": len(gpus),
                "fine_tune_at": default_fine_tune_at(cfg, model),
                "mixed_precision": keras.mixed_precision.global_policy().name}
    return model, dist, training


def _finish(out: Path, run: Fitting, inputs: dict, classes: list[str], meta: dict) -> dict:
    """The best epoch's weights measured on val and test, the plots, model.keras (atomically), run.json complete."""
    from edgecls.plots import plot_confusion, plot_history

    t_finish = time.time()
    run.state.restore_best(run.model, run.dist.strategy)
    metrics = _measure(run, inputs, classes)
    history = run.state.data["history"]
    plot_history(history, out / "history.png")
    final = metrics.get("test") or metrics["val"]
    plot_confusion(final["confusion"], classes, out / "confusion.png",
                   title=f"{'test' if 'test' in metrics else 'val'} confusion (accuracy {final['accuracy']:.3f})")
    _save_model(run, out / MODEL_FILE)
    timing = meta.setdefault("timing", {})
    timing["finish_s"] = round(time.time() - t_finish, 1)
    meta.update(status="complete", history=history, metrics=metrics,
                train_seconds=round(time.time() - run.t_start, 1))
    atomic_write_json(out / RUN_JSON, meta)
    shutil.rmtree(out / CKPT, ignore_errors=True)
    for source in inputs.values():
        source.close()
    shutil.rmtree(out / CACHE, ignore_errors=True)   # like the checkpoint: kept only while the run can resume
    return run_summary(out, meta)


def _measure(run: Fitting, inputs: dict, classes: list[str]) -> dict:
    """The model on val and test, each through its split's own pipeline (a split not in memory is never
    materialised)."""
    from edgecls.train.data import make_dataset

    cfg = run.cfg
    metrics = {}
    replicas = run.dist.input_replicas(cfg.batch_size)
    for s in ("val", "test"):
        if s in inputs:
            ds = make_dataset(run.tf, run.keras, inputs[s], len(classes), cfg.batch_size, False, False, cfg.seed,
                              replicas)
            pred = run.model.predict(ds, verbose=0).argmax(1)[:len(inputs[s])]   # several workers: copies at the end
            metrics[s] = classification_report(inputs[s].labels, pred, classes)
    return metrics


def _save_model(run: Fitting, dest: Path) -> None:
    """model.keras, whole or not at all."""
    keras, cfg = run.keras, run.cfg
    tmp = dest.with_name(f".{dest.name}.partial.keras")
    try:
        # Saved with a plain optimizer: the fine-tuning schedule is edgecls code, and model.keras must load
        # anywhere without it (export, --init and QAT compile their own anyway).
        with run.dist.strategy.scope():
            run.model.compile(optimizer=keras.optimizers.Adam(cfg.lr), metrics=["accuracy"],
                              loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing))
        run.model.save(str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def run_summary(out: Path, meta: dict) -> dict:
    m = meta.get("metrics", {})
    return {"run_dir": str(out), "status": meta["status"], "backbone": meta["config"]["backbone"],
            "img_size": meta["config"]["img_size"], "weights": meta["config"]["weights"],
            "classes": len(meta["labels"]), "split_sizes": meta["dataset"]["split_sizes"],
            "skipped": len(meta["dataset"]["skipped"]), "val_accuracy": m.get("val", {}).get("accuracy"),
            "test_accuracy": m.get("test", {}).get("accuracy"), **_test_interval(m.get("test")),
            "train_seconds": meta.get("train_seconds"), "epochs_run": len(meta.get("history", [])),
            "timing": meta.get("timing", {})}


def _test_interval(test: dict | None) -> dict:
    """The test accuracy's 95% interval and its photo count (one photo of 110 is 0.9 pp)."""
    if not test:
        return {}
    from edgecls.metrics import wilson_interval

    n = int(sum(sum(row) for row in test["confusion"]))
    k = int(round(test["accuracy"] * n))
    return {"test_photos": n, "test_interval": [round(v, 4) for v in wilson_interval(k, n)]}
