"""`edgecls train`: CLI wiring only; the work is in edgecls.train.trainer (imported lazily: it loads TensorFlow)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer

from edgecls.errors import EdgeclsError
from edgecls.train.backbones import BACKBONES, IMG_SIZE_RANGE
from edgecls.train.config import PRESETS, TrainConfig

D = {f.name: f.default for f in fields(TrainConfig)}   # the CLI's defaults are the config's: one place


def _typed_here(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option `name` (typer vendors click: compare the source by name, not by class)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def train(
    ctx: typer.Context,
    data_dir: Optional[Path] = typer.Argument(None, help="Folder with one sub-folder per class (or train/ val/ test/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder to create [default: runs/<backbone>-<time>]."),
    backbone: str = typer.Option(D["backbone"], help=" | ".join(BACKBONES) + "."),
    alpha: float = typer.Option(D["alpha"], help="Width multiplier (MobileNets)."),
    img_size: int = typer.Option(D["img_size"], help="Square input size in pixels (%d-%d)." % IMG_SIZE_RANGE),
    weights: str = typer.Option(D["weights"], help="imagenet | none | PATH to no-top .h5 weights."),
    resize: str = typer.Option(D["resize"], help="stretch | crop | letterbox (recorded for the device)."),
    epochs: int = typer.Option(D["epochs"], help="Epochs with the backbone frozen (head only)."),
    fine_tune_epochs: int = typer.Option(D["fine_tune_epochs"], help="Epochs with the top of the backbone unfrozen."),
    fine_tune_at: Optional[int] = typer.Option(D["fine_tune_at"], help="First backbone layer to unfreeze [default: per backbone]."),
    lr: float = typer.Option(D["lr"], help="Head learning rate; fine-tuning uses lr/10."),
    batch_size: int = typer.Option(D["batch_size"]),
    label_smoothing: float = typer.Option(D["label_smoothing"]),
    class_weights: bool = typer.Option(D["class_weights"], "--class-weights/--no-class-weights", help="Balance classes in the loss."),
    augment: bool = typer.Option(D["augment"], "--augment/--no-augment"),
    val_split: float = typer.Option(D["val_split"]),
    test_split: float = typer.Option(D["test_split"]),
    seed: int = typer.Option(D["seed"]),
    head: str = typer.Option(D["head"], help="features (the frozen phase trains on backbone features computed "
                             "once) | images (every epoch through the backbone, with augmentation)."),
    schedule: str = typer.Option(D["schedule"], help="Fine-tuning rate: cosine (warm-up, decay to 0) | constant."),
    preset: str = typer.Option(D["preset"], help="fast | balanced | accurate: input size and epochs (options given "
                               "here win). ~2 / 6 / 13 min for 2,000 photos on a 2-core CPU."),
    time_budget: Optional[float] = typer.Option(D["time_budget"], help="Minutes: plan the fine-tune epochs to fit."),
    patience: int = typer.Option(D["patience"], help="Early stopping: epochs without val-accuracy gain, per phase."),
    strategy: str = typer.Option(D["strategy"], help="auto | mirrored | multiworker | none (mirrored: all GPUs of this machine; "
                                  "multiworker: the workers in TF_CONFIG, docs/multiworker.md)."),
    mixed_precision: bool = typer.Option(D["mixed_precision"], "--mixed-precision", help="float16 compute on a GPU."),
    max_images_per_class: Optional[int] = typer.Option(D["max_images_per_class"], help="Use at most N images per class (quick trials)."),
    cache: str = typer.Option(D["cache"], help="memory | disk | none | auto: decoded photos kept in memory, in a "
                              "file in the run folder (memory does not grow with the dataset), or decoded every "
                              "epoch [auto: memory below 1.5 GB of pixels, else disk]."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run folder."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this run's weights (its backbone, alpha, "
                                        "size and resize; a new head if the labels differ)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
):
    """Transfer-learn a classifier from a folder of labelled photos."""
    if resume is not None:
        if init is not None:
            raise EdgeclsError("--init starts a new run; --resume continues one: give one of them")
        cfg, run_dir = None, resume
    else:
        if data_dir is None:
            raise EdgeclsError("missing DATA_DIR (or --resume RUN_DIR)")
        if preset not in PRESETS:
            raise EdgeclsError(f"--preset must be one of {', '.join(PRESETS)}")
        chosen = {n: v for n, v in PRESETS[preset].items() if not _typed_here(ctx, n)}
        img_size, epochs, fine_tune_epochs = (chosen.get(n, v) for n, v in
                                              (("img_size", img_size), ("epochs", epochs),
                                               ("fine_tune_epochs", fine_tune_epochs)))
        if init is not None:   # the architecture comes from the init run; an explicit other value is refused
            from edgecls.train.init_run import ARCHITECTURE, architecture_options, open_init_run

            if _typed_here(ctx, "weights"):
                raise EdgeclsError("--weights and --init both say where the weights come from: give one of them")
            typed = {"backbone": backbone, "alpha": alpha, "img_size": img_size, "resize": resize}
            given = {n: v for n, v in typed.items() if _typed_here(ctx, n)}
            arch = architecture_options(open_init_run(init), given)
            backbone, alpha, img_size, resize = (arch[n] for n in ARCHITECTURE)
        cfg = TrainConfig(data_dir=os.path.abspath(data_dir), backbone=backbone, alpha=alpha, img_size=img_size, weights=weights,
                          resize=resize, epochs=epochs, fine_tune_epochs=fine_tune_epochs, fine_tune_at=fine_tune_at,
                          lr=lr, batch_size=batch_size, label_smoothing=label_smoothing, class_weights=class_weights,
                          augment=augment, val_split=val_split, test_split=test_split, seed=seed, patience=patience,
                          head=head, schedule=schedule, preset=preset, time_budget=time_budget,
                          strategy=strategy, mixed_precision=mixed_precision, max_images_per_class=max_images_per_class,
                          cache=cache, init=None if init is None else os.path.abspath(init))
        cfg.validate()  # before TensorFlow loads: bad options fail at once
        run_dir = out or Path("runs") / f"{backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
    from edgecls.train.trainer import train as run_training

    summary = run_training(cfg, Path(run_dir), force=force, resume=resume is not None, quiet=json_out)
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"run: {summary['run_dir']}  {_accuracy_text(summary)}  ({summary['train_seconds']:.0f}s)\n"
                   f"time: {_timing_text(summary['timing'])}\n"
                   f"next: edgecls export {summary['run_dir']} --int8")


def _accuracy_text(summary: dict) -> str:
    if summary["test_accuracy"] is None:
        return f"val accuracy {summary['val_accuracy']:.4f} (no test split)"
    lo, hi = summary["test_interval"]
    return (f"test accuracy {summary['test_accuracy']:.1%} (95% interval {lo:.1%}-{hi:.1%}, "
            f"{summary['test_photos']} photos)")


def _timing_text(timing: dict) -> str:
    parts = [f"{k[:-2]} {v:.0f}s" for k, v in timing.items() if k.endswith("_s") and not k.endswith("per_s")]
    rates = [f"{k[:-len('_images_per_s')]} {v:.0f} images/s" for k, v in timing.items() if k.endswith("_images_per_s")]
    return ", ".join(parts) + (f"  ({', '.join(rates)})" if rates else "")


def register(app) -> None:
    app.command("train")(train)
