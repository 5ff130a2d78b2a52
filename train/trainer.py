"""`edgecls train`: two-phase transfer learning into a resumable run folder."""
from __future__ import annotations

import dataclasses
import errno
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

from edgecls import dataset_manifest
from edgecls.dataset import SPLITS, scan, split
from edgecls.errors import EdgeclsError, Interrupted
from edgecls.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from edgecls.metrics import classification_report
from edgecls.preprocess import PreprocessSpec
from edgecls.progress import progress_bar, say
from edgecls.rundir import LABELS_TXT, MODEL_FILE, RUN_FORMAT, RUN_JSON, RUN_VERSION, SPLITS_JSON, is_run
from edgecls.train.config import TrainConfig
from edgecls.train.init_run import InitRun, open_init_run
from edgecls.train.run_folder import (CACHE, CKPT, STATE_JSON, Replacement, check_out_dir, has_checkpoint,
                                      recover_replaced)
from edgecls.train.split_input import decoded_bytes, open_splits, resolve_cache
from edgecls.train.stopping import StopRequest
from edgecls.versions import library_versions

PHASES = ("head", "finetune")


def _write_run_json(out: Path, meta: dict) -> None:
    atomic_write_json(out / RUN_JSON, meta)


# ---------------------------------------------------------------- checkpoints

class _State:
    """What a resumed run needs: phase, next epoch, history, best validation accuracy."""

    def __init__(self, out: Path):
        self.dir = out / CKPT
        self.path = self.dir / STATE_JSON
        self.data = {"phase": PHASES[0], "epoch": 0, "history": [], "best_val_accuracy": -1.0,
                     "phase_best": -1.0, "phase_best_epoch": -1}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                if not isinstance(saved, dict) or saved.get("phase") not in PHASES:
                    raise ValueError("not a checkpoint state")
            except (ValueError, UnicodeDecodeError) as e:
                raise EdgeclsError(f"the checkpoint state {self.path} is corrupt ({e}); the run cannot be resumed: "
                                   f"start it again with --force") from None
            self.data.update(saved)

    def save(self) -> None:
        self.dir.mkdir(exist_ok=True)
        atomic_write_json(self.path, self.data)

    @property
    def last(self) -> Path:
        return self.dir / "last.h5"

    @property
    def best(self) -> Path:
        return self.dir / "best.h5"


def _save_weights_atomic(model, path: Path) -> None:
    """Legacy HDF5 weights (not .weights.h5): that loader also restores MirroredStrategy's on-read variables.

    Serialised in memory, then written with one atomic write: HDF5 writing straight to a full disk printed
    dozens of C-level error stacks and crashed; here a full disk is one OSError and the old file stays.
    """
    import h5py
    from tf_keras.src.saving.legacy import hdf5_format   # what model.save_weights(".h5") calls

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        hdf5_format.save_weights_to_hdf5_group(f, model)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(model, state: _State, quiet: bool) -> None:
    """Resume from last.h5; if it is unreadable (truncated, corrupt), from best.h5; else say what to do."""
    for path in (state.last, state.best):
        if not path.is_file():
            continue
        try:
            model.load_weights(str(path))
        except (OSError, ValueError, KeyError) as e:
            say(f"warning: cannot read the checkpoint {path.name} ({str(e).splitlines()[0][:120]})", quiet)
            continue
        if path == state.best:
            say(f"warning: continuing from the best checkpoint (val accuracy {state.data['best_val_accuracy']:.3f}) "
                f"instead of the last one", quiet)
        return
    raise EdgeclsError(f"no readable checkpoint in {state.dir} (last.h5, best.h5); start the run again with --force")


def _not_finite(logs: dict) -> str | None:
    bad = [k for k, v in logs.items() if "loss" in k and not math.isfinite(float(v))]
    return f"{bad[0]} is {float(logs[bad[0]])}" if bad else None


def _callback(keras, state: _State, phase: str, patience: int, bar, stop: StopRequest, first_checkpoint):
    class EpochEnd(keras.callbacks.Callback):
        """Checkpoint every epoch (so Ctrl-C loses at most one), keep the best weights, stop early.

        After every batch and epoch: act on a pending SIGINT/SIGTERM (a safe point), and fail on a
        non-finite loss (a diverged run must not be checkpointed or finished as if it were fine).
        """

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.epoch = time.time(), epoch
            bar.start_epoch(phase, epoch)

        def on_train_batch_end(self, batch, logs=None):
            stop.check()
            why = _not_finite(logs or {})
            if why:
                raise EdgeclsError(f"training diverged in {phase} epoch {self.epoch + 1} "
                                   f"batch {batch + 1}: {why} (try a lower --lr)")
            bar.advance(logs or {})

        def on_test_batch_end(self, batch, logs=None):
            stop.check()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            why = _not_finite(logs)
            if why:
                raise EdgeclsError(f"training diverged in {phase} epoch {epoch + 1}: {why} (try a lower --lr)")
            row = {"phase": phase, "epoch": epoch + 1, "seconds": round(time.time() - self.t0, 2)}
            row.update({k: round(float(v), 5) for k, v in logs.items()})
            d = state.data
            d["history"].append(row)
            acc = row.get("val_accuracy", -1.0)
            if acc > d["best_val_accuracy"]:
                d["best_val_accuracy"] = acc
                _save_weights_atomic(self.model, state.best)
            if acc > d["phase_best"]:
                d["phase_best"], d["phase_best_epoch"] = acc, epoch
            _save_weights_atomic(self.model, state.last)
            d["phase"], d["epoch"] = phase, epoch + 1
            state.save()
            first_checkpoint()
            bar.end_epoch(row)
            stop.check()
            if epoch - d["phase_best_epoch"] >= patience:
                self.model.stop_training = True

    return EpochEnd()


# ---------------------------------------------------------------- strategy

def choose_strategy(tf, name: str):
    if name == "multiworker":   # created before any other TensorFlow op (edgecls.train.multiworker.train)
        from edgecls.train import multiworker

        s = multiworker.strategy(tf)
        return s, multiworker.local_devices(s)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy(), [d.name for d in gpus[:1] or tf.config.list_logical_devices("CPU")[:1]]
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices]), [d.name for d in devices]


# ---------------------------------------------------------------- main entry

# Environment failures while writing: one line, not a traceback (EFBIG: a file-size limit, RLIMIT_FSIZE).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
CANNOT_WRITE = DISK_FULL + (errno.EROFS, errno.EACCES, errno.EPERM)


def train(cfg: TrainConfig | None, out: Path, force: bool = False, resume: bool = False, quiet: bool = False) -> dict:
    """Train into `out` (or continue it). SIGINT/SIGTERM stop at the next safe point (edgecls.train.stopping).
    --strategy multiworker: this process is one worker of TF_CONFIG's cluster (edgecls.train.multiworker)."""
    from edgecls.train import multiworker

    if resume:
        multiworker.refuse_resume_flag(out)
    elif cfg is not None and cfg.strategy == "multiworker":
        return multiworker.train(_train_one, cfg, out, force, resume, quiet)
    elif cfg is not None:
        multiworker.warn_if_cluster_unused(cfg.strategy, quiet)
    return _train_one(cfg, out, force, resume, quiet)


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


def _train(cfg: TrainConfig | None, out: Path, force: bool, resume: bool, quiet: bool, stop: StopRequest,
           replacement: Replacement | None) -> dict:
    """Check everything, then write: load the photos, build the model, fit the two phases, finish the run."""
    t_start = time.time()
    recover_replaced(out, quiet)
    splits = state = init = None
    previous_meta: dict = {}
    if resume:
        previous_meta, splits = _open_for_resume(out)
        cfg = TrainConfig.from_dict(previous_meta["config"])
        cfg.data_dir = splits["root"]   # absolute (older runs kept the path as typed): resume from any folder
        state = _State(out)             # a corrupt state.json fails here, before TensorFlow loads
    else:
        check_out_dir(out, cfg.data_dir, force)
        if cfg.init:
            from edgecls.train.init_run import check_matches

            init = open_init_run(cfg.init)   # missing, unfinished or unsafe: refused before TensorFlow loads
            check_matches(init, cfg)
    assert cfg is not None
    cfg.validate()
    from edgecls.train.tfenv import import_tf

    tf, keras = import_tf()   # before anything is written: a missing TensorFlow must not leave a half run folder
    weights = cfg.resolve_weights()
    spec = cfg.preprocess_spec()
    if resume:   # a run resumes with the resampler it started with (one from before the field: OpenCV)
        spec = dataclasses.replace(spec, resampler=PreprocessSpec.from_dict(
            previous_meta.get("preprocessing")).resampler)
    data, parts, summary, manifest, init_block = _load_photos(cfg, spec, splits, init, quiet)
    t_loaded = time.time()
    if cfg.strategy == "multiworker":
        from edgecls.train.multiworker import check_same_data

        check_same_data(tf, json.dumps(manifest["files"], sort_keys=True))   # not the root: paths may differ
    model, strategy, training = _build(tf, keras, cfg, len(data.classes), weights, state, quiet,
                                       init, init_block and init_block["labels_same"])
    n_images = sum(len(v) for v in parts.values())
    training.update(cache=resolve_cache(cfg.cache, n_images, spec), decoded_bytes=decoded_bytes(n_images, spec))

    # Every check passed: only now is anything written (so a refused option leaves no stub behind).
    if replacement is not None:
        replacement.begin()
        atomic_write_text(out / LABELS_TXT, "\n".join(data.classes) + "\n")
        atomic_write_json(out / SPLITS_JSON, {"root": str(data.root.resolve()), "classes": data.classes,
                                              **{s: [[r, y] for r, y in v] for s, v in parts.items()}})
        dataset_manifest.write(out, manifest)
        state = _State(out)
    meta = {"format": RUN_FORMAT, "version": RUN_VERSION, "status": "running", "labels": data.classes,
            "config": cfg.to_dict(), "preprocessing": spec.to_dict(), "dataset": summary, "training": training,
            "versions": library_versions("tensorflow", "tf-keras")}
    if init_block or previous_meta.get("init"):
        meta["init"] = init_block or previous_meta["init"]
    _write_run_json(out, meta)
    first_checkpoint = replacement.commit if replacement is not None else (lambda: None)
    t_pixels = time.time()
    inputs = open_splits(training["cache"], data.root, parts, spec, out / CACHE, summary["content_hash"], quiet)
    load_s = (t_loaded - t_start) + (time.time() - t_pixels)   # checking the photos, then decoding or caching them
    timing = _fit(tf, keras, model, strategy, cfg, inputs, len(data.classes), training["fine_tune_at"],
                  weights is None and not cfg.init, state, stop, first_checkpoint, quiet, t_start)
    meta["timing"] = {"load_s": round(load_s, 1), **timing}
    return _finish(out, model, strategy, state, cfg, inputs, data.classes, meta, t_start)


def _load_photos(cfg: TrainConfig, spec, splits: dict | None, init: InitRun | None, quiet: bool):
    """Scan and check every file, split (or take the recorded split when resuming: `splits`).
    With --init (`init`), the previous run's photos keep their split and what changed since it is measured.
    Returns (scan, {split: items}, the dataset summary for run.json, the dataset manifest, run.json's init block
    or None). The pixels come later (train/split_input.py: open_splits), once the run folder exists."""
    with progress_bar("checking images", quiet) as bar:
        data = scan(cfg.data_dir, progress=bar.update)
    if cfg.max_images_per_class:
        keep: dict[int, int] = {}
        items = []
        for rel, y in data.items:
            if keep.get(y, 0) < cfg.max_images_per_class:
                keep[y] = keep.get(y, 0) + 1
                items.append((rel, y))
        data.items = items
        data.presplit = None
    for rel, why in data.skipped:
        say(f"warning: skipped {rel}: {why}", quiet)
    if data.skipped:
        say(f"warning: skipped {len(data.skipped)} file(s) in total", quiet)
    if splits is not None:
        if splits["classes"] != data.classes:
            raise EdgeclsError(f"the classes in {cfg.data_dir} changed since this run started; cannot resume")
        parts = {s: [(r, int(y)) for r, y in splits[s]] for s in SPLITS}
        missing = [r for v in parts.values() for r, _ in v if not (data.root / r).is_file()]
        if missing:
            raise EdgeclsError(f"{len(missing)} image(s) of this run are missing from {data.root} (e.g. {missing[0]}); "
                               f"put them back to resume, or start a new run")
        previous = None
    else:
        previous = dataset_manifest.load(init.run.root) if init else None
        parts = split(data, cfg.val_split, cfg.test_split, cfg.seed,
                      keep=dataset_manifest.previous_splits(previous) if previous else None)
    summary = data.summary()
    summary["split_sizes"] = {s: len(v) for s, v in parts.items()}
    summary["content_hash"] = data.content_hash()
    manifest = dataset_manifest.build(data, parts)
    init_block = None
    if init is not None:
        from edgecls.train.init_run import describe, record

        init_block = record(init, data.classes, dataset_manifest.changes(previous, manifest))
        say(describe(init_block), quiet)
    return data, parts, summary, manifest, init_block


def _build(tf, keras, cfg: TrainConfig, n_classes: int, weights, state: _State | None, quiet: bool,
           init: InitRun | None = None, labels_same: bool = False):
    """The model under its distribution strategy (from the checkpoint when resuming: `state`; from the --init
    run's weights: `init`). A wrong --weights file or --fine-tune-at fails here, before anything is written.
    Returns (model, strategy, run.json's block)."""
    from edgecls.train.model import build_model, default_fine_tune_at

    keras.utils.set_random_seed(cfg.seed)
    gpus = tf.config.list_physical_devices("GPU")
    if cfg.mixed_precision:
        if gpus:
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            say("warning: --mixed-precision needs a GPU; training in float32", quiet)
    strategy, devices = choose_strategy(tf, cfg.strategy)
    with strategy.scope():
        model = build_model(cfg, n_classes, None if state is not None or init is not None else weights)
        if state is not None:
            _load_checkpoint(model, state, quiet)
        elif init is not None:
            from edgecls.train.init_run import copy_weights

            copy_weights(keras, model, init, labels_same)
    workers = 1
    if cfg.strategy == "multiworker":
        from edgecls.train.multiworker import cluster_from_env

        workers = cluster_from_env().workers
    training = {"strategy": "MultiWorkerMirroredStrategy" if cfg.strategy == "multiworker" else type(strategy).__name__,
                "workers": workers, "devices": devices, "gpus": len(gpus),
                "fine_tune_at": default_fine_tune_at(cfg, model),
                "mixed_precision": keras.mixed_precision.global_policy().name}
    return model, strategy, training


def _fit(tf, keras, model, strategy, cfg: TrainConfig, inputs: dict, n_classes: int, fine_tune_at: int,
         from_scratch: bool, state: _State, stop: StopRequest, first_checkpoint, quiet: bool,
         t_start: float) -> dict:
    """The two phases (head, then fine-tune), each resumable from `state`; stops at a safe point on a signal
    (`stop`). Returns where the time went (seconds and images/s per phase)."""
    from edgecls.progress import EpochBar
    from edgecls.train.data import balanced_class_weights, make_dataset
    from edgecls.train.multiworker import input_replicas

    replicas = input_replicas(cfg, strategy, quiet)   # several workers: each batch split evenly between them
    ds_train = make_dataset(tf, keras, inputs["train"], n_classes, cfg.batch_size, True, cfg.augment, cfg.seed,
                            replicas)
    ds_val = make_dataset(tf, keras, inputs["val"], n_classes, cfg.batch_size, False, False, cfg.seed, replicas)
    class_weight = balanced_class_weights(inputs["train"].labels, n_classes) if cfg.class_weights else None
    timing: dict = {}
    start_phase = PHASES.index(state.data["phase"])
    with EpochBar(len(ds_train), quiet) as bar, stop.deferred():
        for phase in PHASES[start_phase:]:
            epochs = cfg.epochs if phase == "head" else cfg.fine_tune_epochs
            initial = state.data["epoch"] if phase == state.data["phase"] else 0
            if initial >= epochs:
                continue
            if phase != state.data["phase"]:
                state.data.update(phase=phase, epoch=0, phase_best=-1.0, phase_best_epoch=-1)
                if state.best.is_file():  # continue from the best weights so far, not the last ones
                    with strategy.scope():
                        model.load_weights(str(state.best))
                state.save()
            t0 = time.time()
            if phase == "head" and cfg.head == "features" and not from_scratch:
                timing.update(_head_on_features(tf, keras, model, cfg, inputs["train"], inputs["val"], n_classes,
                                                class_weight, state, stop, first_checkpoint, bar))
            else:
                _fit_phase(tf, keras, model, strategy, cfg, phase, epochs, initial, fine_tune_at, from_scratch,
                           ds_train, ds_val, class_weight, state, stop, first_checkpoint, bar, t_start)
            seconds = time.time() - t0
            timing[f"{phase}_s"] = round(seconds, 1)
            if phase == "finetune" or cfg.head == "images":
                ran = max(1, state.data["epoch"] - initial)
                timing[f"{phase}_images_per_s"] = round(ran * len(inputs["train"]) / max(seconds, 1e-9), 1)
            stop.check()
    return timing


def _head_on_features(tf, keras, model, cfg: TrainConfig, train_split, val_split, n_classes: int, class_weight,
                      state: _State, stop: StopRequest, first_checkpoint, bar) -> dict:
    """The frozen phase on features computed once (train/head.py); one checkpoint at its end."""
    from edgecls.train.data import make_dataset
    from edgecls.train.head import fit_head, pooled_features

    t0 = time.time()
    plain = make_dataset(tf, keras, train_split, n_classes, cfg.batch_size, False, False, cfg.seed)
    ds_val = make_dataset(tf, keras, val_split, n_classes, cfg.batch_size, False, False, cfg.seed)
    local_call = None
    if cfg.strategy == "multiworker":
        from edgecls.train.multiworker import local_call
    train_feats = pooled_features(keras, model, plain, bar, "features: train photos", local_call)
    stop.check()
    val_feats = pooled_features(keras, model, ds_val, bar, "features: val photos", local_call)
    stop.check()
    feature_s = time.time() - t0

    def on_epoch(row):
        why = _not_finite(row)
        if why:
            raise EdgeclsError(f"training diverged in head epoch {row['epoch']}: {why} (try a lower --lr)")
        bar.end_epoch(row)
        stop.check()

    # Epochs on features cost milliseconds: no early stop short of all of them, the best val epoch is kept.
    rows = fit_head(keras, model, train_feats[:2], val_feats[:2], cfg.epochs, cfg.lr, cfg.batch_size,
                    cfg.label_smoothing, cfg.dropout, class_weight, patience=cfg.epochs, on_epoch=on_epoch)
    if cfg.strategy == "multiworker":   # every worker continues from the chief's head
        from edgecls.train.head import PREDICTIONS
        from edgecls.train.multiworker import follow_chief_head

        rows = follow_chief_head(tf, model.get_layer(PREDICTIONS), rows)
    d = state.data
    d["history"] += rows
    best = max(r["val_accuracy"] for r in rows)
    if best > d["best_val_accuracy"]:
        d["best_val_accuracy"] = best
    _save_weights_atomic(model, state.best)
    _save_weights_atomic(model, state.last)
    d["phase"], d["epoch"] = "head", cfg.epochs
    state.save()
    first_checkpoint()
    return {"features_s": round(feature_s, 1), "features_images_per_s": round(train_feats[2], 1)}


def _fit_phase(tf, keras, model, strategy, cfg: TrainConfig, phase: str, epochs: int, initial: int,
               fine_tune_at: int, from_scratch: bool, ds_train, ds_val, class_weight, state: _State,
               stop: StopRequest, first_checkpoint, bar, t_start: float) -> None:
    """One phase through Keras' fit: head at --lr, fine-tune at --lr/10 (cosine or constant)."""
    from edgecls.train.data import photo_accuracy
    from edgecls.train.model import set_phase
    from edgecls.train.schedule import warmup_cosine

    steps = len(ds_train)
    lr = cfg.lr if phase == "head" else cfg.lr / 10
    planned = tf.Variable(epochs * steps, dtype=tf.int64, trainable=False)
    if phase == "finetune" and cfg.schedule == "cosine":
        lr = warmup_cosine(tf, keras, lr, min(steps, max(1, epochs * steps // 10)), planned)
    with strategy.scope():
        set_phase(model, phase, fine_tune_at, from_scratch=from_scratch)
        model.compile(optimizer=keras.optimizers.Adam(lr),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                      metrics=[photo_accuracy(keras)])   # "accuracy", not counting multiworker's copies
        model.optimizer.iterations.assign(initial * steps)   # a resumed run continues its schedule
    callbacks = [_callback(keras, state, phase, cfg.patience, bar, stop, first_checkpoint)]
    if cfg.time_budget and phase == "finetune":
        callbacks.append(_budget_callback(keras, cfg, epochs, steps, planned, t_start))
    model.fit(ds_train, validation_data=ds_val, epochs=epochs, initial_epoch=initial, verbose=0,
              class_weight=class_weight, callbacks=callbacks)


def _budget_callback(keras, cfg: TrainConfig, epochs: int, steps: int, planned, t_start: float):
    """--time-budget: after each fine-tune epoch, re-plan how many fit; the cosine decay is shortened to end
    on the last of them, and training stops there."""
    from edgecls.train.schedule import epochs_that_fit

    class Budget(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s = time.time() - self.t0
            fit = epochs_that_fit(cfg.time_budget * 60, time.time() - t_start, epoch_s, epoch + 1, epochs,
                                  reserve_s=2 * epoch_s)
            planned.assign(fit * steps)
            if epoch + 1 >= fit:
                self.model.stop_training = True

    return Budget()


def _finish(out: Path, model, strategy, state: _State, cfg: TrainConfig, inputs: dict, classes: list[str],
            meta: dict, t_start: float) -> dict:
    """The best epoch's weights measured on val and test, the plots, model.keras (atomically), run.json complete."""
    from edgecls.train.data import make_dataset
    from edgecls.train.multiworker import input_replicas
    from edgecls.train.plots import plot_confusion, plot_history
    from edgecls.train.tfenv import import_tf

    tf, keras = import_tf()
    t_finish = time.time()
    if state.best.is_file():
        with strategy.scope():
            model.load_weights(str(state.best))
    metrics = {}
    replicas = input_replicas(cfg, strategy)
    for s in ("val", "test"):
        if s in inputs:   # through the split's own pipeline: a split not in memory is never materialised
            ds = make_dataset(tf, keras, inputs[s], len(classes), cfg.batch_size, False, False, cfg.seed, replicas)
            pred = model.predict(ds, verbose=0).argmax(1)[:len(inputs[s])]   # several workers: copies at the end
            metrics[s] = classification_report(inputs[s].labels, pred, classes)
    history = state.data["history"]
    plot_history(history, out / "history.png")
    final = metrics.get("test") or metrics["val"]
    plot_confusion(final["confusion"], classes, out / "confusion.png",
                   title=f"{'test' if 'test' in metrics else 'val'} confusion (accuracy {final['accuracy']:.3f})")
    tmp = out / f".{MODEL_FILE}.partial.keras"
    try:
        # Saved with a plain optimizer: the fine-tuning schedule is edgecls code, and model.keras must load
        # anywhere without it (export, --init and QAT compile their own anyway).
        with strategy.scope():
            model.compile(optimizer=keras.optimizers.Adam(cfg.lr), metrics=["accuracy"],
                          loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing))
        model.save(str(tmp))
        os.replace(tmp, out / MODEL_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    timing = meta.setdefault("timing", {})
    timing["finish_s"] = round(time.time() - t_finish, 1)
    meta.update(status="complete", history=history, metrics=metrics,
                train_seconds=round(time.time() - t_start, 1))
    _write_run_json(out, meta)
    shutil.rmtree(out / CKPT, ignore_errors=True)
    for source in inputs.values():
        source.close()
    shutil.rmtree(out / CACHE, ignore_errors=True)   # like the checkpoint: kept only while the run can resume
    return run_summary(out, meta)


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
