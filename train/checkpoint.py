"""A training run's checkpoint: its state (phase, epoch, history, best accuracy), the weights written whole or not at
all, and the Keras callback that checkpoints every epoch and acts on a stop or a diverged loss."""
from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.progress import say
from edgecls.fsutil import atomic_write_bytes, atomic_write_json
from edgecls.rundir import CKPT, STATE_JSON
from edgecls.stopping import StopRequest

PHASES = ("head", "finetune")


class CheckpointState:
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

    def restore_best(self, model, strategy) -> None:
        """Continue from (or finish with) the best weights so far, where there are any."""
        if self.best.is_file():
            with strategy.scope():
                model.load_weights(str(self.best))


def save_weights_atomic(model, path: Path) -> None:
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


def load_checkpoint(model, state: CheckpointState, quiet: bool) -> None:
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


def not_finite(logs: dict) -> str | None:
    """Which loss in `logs` is NaN or infinite, said as "loss is nan"; None when all are finite."""
    bad = [k for k, v in logs.items() if "loss" in k and not math.isfinite(float(v))]
    return f"{bad[0]} is {float(logs[bad[0]])}" if bad else None


def epoch_callback(keras, state: CheckpointState, phase: str, patience: int, bar, stop: StopRequest,
                   first_checkpoint):
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
            why = not_finite(logs or {})
            if why:
                raise EdgeclsError(f"training diverged in {phase} epoch {self.epoch + 1} "
                                   f"batch {batch + 1}: {why} (try a lower --lr)")
            bar.advance(logs or {})

        def on_test_batch_end(self, batch, logs=None):
            stop.check()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            why = not_finite(logs)
            if why:
                raise EdgeclsError(f"training diverged in {phase} epoch {epoch + 1}: {why} (try a lower --lr)")
            row = {"phase": phase, "epoch": epoch + 1, "seconds": round(time.time() - self.t0, 2)}
            row.update({k: round(float(v), 5) for k, v in logs.items()})
            d = state.data
            d["history"].append(row)
            acc = row.get("val_accuracy", -1.0)
            if acc > d["best_val_accuracy"]:
                d["best_val_accuracy"] = acc
                save_weights_atomic(self.model, state.best)
            if acc > d["phase_best"]:
                d["phase_best"], d["phase_best_epoch"] = acc, epoch
            save_weights_atomic(self.model, state.last)
            d["phase"], d["epoch"] = phase, epoch + 1
            state.save()
            first_checkpoint()
            bar.end_epoch(row)
            stop.check()
            if epoch - d["phase_best_epoch"] >= patience:
                self.model.stop_training = True

    return EpochEnd()
