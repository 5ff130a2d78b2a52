"""The two phases of training: the head with the backbone frozen (on features computed once, train/head.py, or
through Keras' fit on the images), then the top of the backbone fine-tuned at a tenth of --lr on a warm-up +
cosine rate, shortened to fit --time-budget. Each phase resumes from the checkpoint (train/checkpoint.py) and
stops at a safe point on a signal."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from edgecls.errors import EdgeclsError
from edgecls.stopping import StopRequest
from edgecls.train.checkpoint import PHASES, CheckpointState, epoch_callback, not_finite, save_weights_atomic
from edgecls.train.config import TrainConfig


@dataclass
class Fitting:
    """What every phase of one run shares."""
    tf: object
    keras: object
    model: object
    dist: object                          # train/multiworker.py: OneMachine, or Workers (several machines)
    cfg: TrainConfig
    state: CheckpointState
    stop: StopRequest
    first_checkpoint: Callable[[], None]  # the new run folder has a checkpoint: a replaced run may go
    quiet: bool
    t_start: float                        # when the run started (--time-budget counts from there)


def fit(run: Fitting, inputs: dict, n_classes: int, fine_tune_at: int, from_scratch: bool) -> dict:
    """The two phases (head, then fine-tune), each resumable from `run.state`; stops at a safe point on a signal.
    Returns where the time went (seconds and images/s per phase)."""
    from edgecls.progress import EpochBar
    from edgecls.train.data import balanced_class_weights, make_dataset

    tf, keras, cfg, state = run.tf, run.keras, run.cfg, run.state
    replicas = run.dist.input_replicas(cfg.batch_size, run.quiet)   # several workers: each batch split evenly
    ds_train = make_dataset(tf, keras, inputs["train"], n_classes, cfg.batch_size, True, cfg.augment, cfg.seed,
                            replicas)
    ds_val = make_dataset(tf, keras, inputs["val"], n_classes, cfg.batch_size, False, False, cfg.seed, replicas)
    class_weight = balanced_class_weights(inputs["train"].labels, n_classes) if cfg.class_weights else None
    timing: dict = {}
    start_phase = PHASES.index(state.data["phase"])
    with EpochBar(len(ds_train), run.quiet) as bar, run.stop.deferred():
        for phase in PHASES[start_phase:]:
            epochs = cfg.epochs if phase == "head" else cfg.fine_tune_epochs
            initial = state.data["epoch"] if phase == state.data["phase"] else 0
            if initial >= epochs:
                continue
            if phase != state.data["phase"]:
                state.data.update(phase=phase, epoch=0, phase_best=-1.0, phase_best_epoch=-1)
                state.restore_best(run.model, run.dist.strategy)   # from the best weights so far, not the last
                state.save()
            t0 = time.time()
            if phase == "head" and cfg.head == "features" and not from_scratch:
                timing.update(_head_on_features(run, inputs["train"], inputs["val"], n_classes, class_weight, bar))
            else:
                _fit_phase(run, phase, epochs, initial, fine_tune_at, from_scratch, ds_train, ds_val, class_weight,
                           bar)
            seconds = time.time() - t0
            timing[f"{phase}_s"] = round(seconds, 1)
            if phase == "finetune" or cfg.head == "images":
                ran = max(1, state.data["epoch"] - initial)
                timing[f"{phase}_images_per_s"] = round(ran * len(inputs["train"]) / max(seconds, 1e-9), 1)
            run.stop.check()
    return timing


def _head_on_features(run: Fitting, train_split, val_split, n_classes: int, class_weight, bar) -> dict:
    """The frozen phase on features computed once (train/head.py); one checkpoint at its end."""
    from edgecls.train.data import make_dataset
    from edgecls.train.head import PREDICTIONS, fit_head, pooled_features

    tf, keras, cfg, model, stop = run.tf, run.keras, run.cfg, run.model, run.stop
    t0 = time.time()
    plain = make_dataset(tf, keras, train_split, n_classes, cfg.batch_size, False, False, cfg.seed)
    ds_val = make_dataset(tf, keras, val_split, n_classes, cfg.batch_size, False, False, cfg.seed)
    local_call = run.dist.local_call   # several workers: each computes its features alone
    train_feats = pooled_features(keras, model, plain, bar, "features: train photos", local_call)
    stop.check()
    val_feats = pooled_features(keras, model, ds_val, bar, "features: val photos", local_call)
    stop.check()
    feature_s = time.time() - t0

    def on_epoch(row):
        why = not_finite(row)
        if why:
            raise EdgeclsError(f"training diverged in head epoch {row['epoch']}: {why} (try a lower --lr)")
        bar.end_epoch(row)
        stop.check()

    # Epochs on features cost milliseconds: no early stop short of all of them, the best val epoch is kept.
    rows = fit_head(keras, model, train_feats[:2], val_feats[:2], cfg.epochs, cfg.lr, cfg.batch_size,
                    cfg.label_smoothing, cfg.dropout, class_weight, patience=cfg.epochs, on_epoch=on_epoch)
    rows = run.dist.follow_chief_head(tf, model.get_layer(PREDICTIONS), rows)   # several workers: the chief's
    _checkpoint_head(run, rows)
    return {"features_s": round(feature_s, 1), "features_images_per_s": round(train_feats[2], 1)}


def _checkpoint_head(run: Fitting, rows: list[dict]) -> None:
    """The head phase on features is one step: its history rows, its weights as both best and last."""
    d = run.state.data
    d["history"] += rows
    best = max(r["val_accuracy"] for r in rows)
    if best > d["best_val_accuracy"]:
        d["best_val_accuracy"] = best
    save_weights_atomic(run.model, run.state.best)
    save_weights_atomic(run.model, run.state.last)
    d["phase"], d["epoch"] = "head", run.cfg.epochs
    run.state.save()
    run.first_checkpoint()


def _fit_phase(run: Fitting, phase: str, epochs: int, initial: int, fine_tune_at: int, from_scratch: bool,
               ds_train, ds_val, class_weight, bar) -> None:
    """One phase through Keras' fit: head at --lr, fine-tune at --lr/10 (cosine or constant)."""
    from edgecls.train.data import photo_accuracy
    from edgecls.train.model import set_phase
    from edgecls.train.schedule import warmup_cosine

    tf, keras, cfg, model = run.tf, run.keras, run.cfg, run.model
    steps = len(ds_train)
    lr = cfg.lr if phase == "head" else cfg.lr / 10
    planned = tf.Variable(epochs * steps, dtype=tf.int64, trainable=False)
    if phase == "finetune" and cfg.schedule == "cosine":
        lr = warmup_cosine(tf, keras, lr, min(steps, max(1, epochs * steps // 10)), planned)
    with run.dist.strategy.scope():
        set_phase(model, phase, fine_tune_at, from_scratch=from_scratch)
        model.compile(optimizer=keras.optimizers.Adam(lr),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                      metrics=[photo_accuracy(keras)])   # "accuracy", not counting multiworker's copies
        model.optimizer.iterations.assign(initial * steps)   # a resumed run continues its schedule
    callbacks = [epoch_callback(keras, run.state, phase, cfg.patience, bar, run.stop, run.first_checkpoint)]
    if cfg.time_budget and phase == "finetune":
        callbacks.append(_budget_callback(keras, cfg, epochs, steps, planned, run.t_start))
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
