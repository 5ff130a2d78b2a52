"""`edgecls train DATA_DIR --init RUN_DIR`: start from a previous run's weights.

--init takes the architecture from RUN_DIR (backbone, alpha, input size, resize): the CLI fills them in, and
refuses an option given explicitly with another value (the weights would not fit, or would see other pixels).
Same labels → every weight is copied; other labels (classes added or removed) → the backbone's weights and a
new, randomly initialised head. Everything here that can fail does so before TensorFlow loads, except the copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.fsutil import sha256_file
from edgecls.rundir import RunInfo, load_run

# The TrainConfig fields the previous model's weights fix (CLI option name → config field).
ARCHITECTURE = ("backbone", "alpha", "img_size", "resize")   # the CLI unpacks them in this order


@dataclass
class InitRun:
    run: RunInfo
    model_sha256: str

    @property
    def config(self) -> dict:
        return self.run.meta.get("config") or {}


def open_init_run(path: str | Path) -> InitRun:
    """The run --init names, checked: a finished edgecls run whose model.keras passes the safety checks."""
    from edgecls.train.model_file import check_model_file

    if not Path(path).exists():
        raise EdgeclsError(f"--init {path}: run folder not found")
    try:
        run = load_run(path)
    except EdgeclsError as e:
        raise EdgeclsError(f"--init {path}: {e}") from None
    check_model_file(run.model_path)
    return InitRun(run=run, model_sha256=sha256_file(run.model_path))


def architecture_options(init: InitRun, given: dict[str, object]) -> dict[str, object]:
    """The architecture options for a run started from `init`: its own, after refusing an explicit other one.
    `given`: the options the user typed (option field → value)."""
    cfg = init.config
    out = {}
    for name in ARCHITECTURE:
        theirs = cfg.get(name)
        if theirs is None:
            raise EdgeclsError(f"--init {init.run.root}: its run.json records no {name}")
        if name in given and given[name] != theirs:
            raise EdgeclsError(f"--{name.replace('_', '-')} {given[name]} differs from the --init run's {theirs} "
                               f"({init.run.root}); leave it out to use the run's")
        out[name] = theirs
    return out


def check_matches(init: InitRun, cfg) -> None:
    """A config (built by the CLI or by a caller of train()) must have the init run's architecture."""
    for name in ARCHITECTURE:
        if getattr(cfg, name) != init.config.get(name):
            raise EdgeclsError(f"{name} {getattr(cfg, name)} differs from the --init run's {init.config.get(name)} "
                               f"({init.run.root})")


def record(init: InitRun, classes: list[str], data_since: dict) -> dict:
    """run.json's `init` block."""
    old = init.run.labels
    same = list(old) == list(classes)
    return {"run": str(init.run.root.resolve()), "model_sha256": init.model_sha256, "labels_same": same,
            "head": "copied" if same else "new", "labels_added": [c for c in classes if c not in old],
            "labels_removed": [c for c in old if c not in classes], "data_since": data_since}


def describe(block: dict) -> str:
    d = block["data_since"]
    if block["labels_same"]:
        what = "all weights copied (same labels)"
    else:
        what = (f"backbone weights copied, a new head (labels added: {', '.join(block['labels_added']) or '-'}; "
                f"removed: {', '.join(block['labels_removed']) or '-'})")
    data = (f"{d['new']} new, {d['removed']} removed, {d['unchanged']} unchanged photo(s) since that run"
            if d["previous_manifest"] else d["note"])
    return f"--init {block['run']}: {what}; {data}"


def copy_weights(keras, model, init: InitRun, labels_same: bool) -> None:
    """Layer by layer (both models are built by edgecls.train.model.build_model, so they line up); the head
    ('predictions') only when the labels are the same."""
    from edgecls.train.model_file import load_model_safely

    src = load_model_safely(keras, init.run.model_path)
    if len(src.layers) != len(model.layers):
        raise EdgeclsError(f"--init {init.run.root}: its model has {len(src.layers)} layers, this one "
                           f"{len(model.layers)}; it was not built by this edgecls version's {init.config.get('backbone')}")
    for s, d in zip(src.layers, model.layers):
        if d.name == "predictions" and not labels_same:
            continue
        weights = s.get_weights()
        if [w.shape for w in weights] != [tuple(w.shape) for w in d.weights]:
            raise EdgeclsError(f"--init {init.run.root}: layer {s.name} does not fit this model's {d.name}")
        d.set_weights(weights)
