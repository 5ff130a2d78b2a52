"""The run folder `train` writes and `export` reads (no TensorFlow needed to read it).

RUN_DIR/
  model.keras     float tf_keras model, flat, raw-pixel input (normalisation is its first layer)
  labels.txt      one class per line, index order
  run.json        config, preprocessing, dataset summary, versions, history, metrics, status
  splits.json     {"root", "classes", "train"|"val"|"test": [[relative path, label], ...]}
  dataset.json    every photo used, by content hash: path, class, split, sha256 (edgecls/dataset_manifest.py)
  history.png, confusion.png
  .checkpoint/    while training: state.json, last.h5, best.h5, to resume from (removed when the run completes)
  .cache/         while training with --cache disk: the decoded splits (train/split_input.py; removed likewise)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.preprocess import PreprocessSpec

RUN_FORMAT = "edgecls-run"
RUN_VERSION = 1
MODEL_FILE = "model.keras"
RUN_JSON = "run.json"
SPLITS_JSON = "splits.json"
LABELS_TXT = "labels.txt"
DATASET_JSON = "dataset.json"
CKPT = ".checkpoint"
STATE_JSON = "state.json"   # in CKPT: the phase, epoch and history a resumed run continues from
CACHE = ".cache"


@dataclass
class RunInfo:
    root: Path
    meta: dict
    labels: list[str]
    spec: PreprocessSpec
    splits: dict

    @property
    def model_path(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def data_root(self) -> Path:
        return Path(self.splits["root"])

    def split_items(self, name: str) -> list[tuple[str, int]]:
        return [(rel, int(y)) for rel, y in self.splits.get(name, [])]


def is_run(path: str | os.PathLike) -> bool:
    p = Path(path) / RUN_JSON
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == RUN_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def has_checkpoint(run: Path) -> bool:
    return (run / CKPT / STATE_JSON).is_file()


def is_complete(run: Path) -> bool:
    try:
        return json.loads((run / RUN_JSON).read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


def load_run(path: str | os.PathLike, require_complete: bool = True) -> RunInfo:
    root = Path(path)
    if not root.is_dir():
        raise EdgeclsError(f"run folder not found: {root}")
    if not is_run(root):
        raise EdgeclsError(f"not an edgecls run: {root} (no valid {RUN_JSON}; make one with `edgecls train`)")
    meta = json.loads((root / RUN_JSON).read_text())
    if require_complete and meta.get("status") != "complete":
        raise EdgeclsError(f"run {root} did not finish training (status: {meta.get('status')}); "
                           f"resume it with `edgecls train --resume {root}`")
    if not (root / MODEL_FILE).is_file():
        raise EdgeclsError(f"run {root} has no {MODEL_FILE}")
    try:
        splits = json.loads((root / SPLITS_JSON).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgeclsError(f"run {root}: cannot read {SPLITS_JSON}: {e}") from None
    labels = list(splits.get("classes") or meta.get("labels") or [])
    return RunInfo(root=root, meta=meta, labels=labels, spec=PreprocessSpec.from_dict(meta["preprocessing"]),
                   splits=splits)
