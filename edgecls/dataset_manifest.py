"""The dataset manifest a run keeps (`RUN_DIR/dataset.json`): every photo it used, by content.

  {"format": "edgecls-dataset", "version": 1, "root": "/abs/data", "content_hash": "<sha256>",
   "files": [{"path": "daisy/1.jpg", "class": "daisy", "split": "train", "sha256": "<hex>", "bytes": 1234}, ...]}

Photos are named by the sha256 of their bytes, so two runs can be compared by data (a renamed photo is the same
photo; a re-encoded one is new), and a run started with `train --init` knows which photos are new since the
previous run (`changes`) and keeps each old photo in the split it had (`previous_splits`): a photo the previous
model trained on never lands in the new run's test split. No TensorFlow here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from edgecls.fsutil import atomic_write_json
from edgecls.rundir import DATASET_JSON

DATASET_FORMAT = "edgecls-dataset"
DATASET_VERSION = 1


def build(scan_, parts: dict[str, list[tuple[str, int]]]) -> dict:
    """The manifest of `scan_` (an edgecls.dataset.Scan) split into `parts` ({split: [(rel, label)]})."""
    hashes = scan_.file_hashes()
    files = [{"path": rel, "class": scan_.classes[y], "split": split, "sha256": hashes[rel],
              "bytes": (scan_.root / rel).stat().st_size}
             for split, items in parts.items() for rel, y in items]
    files.sort(key=lambda f: f["path"])
    return {"format": DATASET_FORMAT, "version": DATASET_VERSION, "root": str(Path(scan_.root).resolve()),
            "content_hash": scan_.content_hash(), "files": files}


def write(run_dir: str | os.PathLike, manifest: dict) -> None:
    atomic_write_json(Path(run_dir) / DATASET_JSON, manifest)


def load(run_dir: str | os.PathLike) -> dict | None:
    """A run's manifest, or None when it has none (runs made before the manifest existed) or it is unreadable."""
    try:
        m = json.loads((Path(run_dir) / DATASET_JSON).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == DATASET_FORMAT and isinstance(m.get("files"), list) else None


def previous_splits(manifest: dict) -> dict[str, str]:
    """sha256 → the split the previous run put that photo in."""
    return {f["sha256"]: f["split"] for f in manifest["files"]}


def changes(previous: dict | None, current: dict) -> dict:
    """What changed since `previous` (a manifest, or None for a run that predates manifests), per class.

    A photo is the pair (content, class): one moved to another class counts as removed from the old class
    and new in the new one."""
    if previous is None:
        return {"previous_manifest": False,
                "note": "the previous run predates the dataset manifest: which photos are new is unknown"}
    before = {(f["sha256"], f["class"]) for f in previous["files"]}
    now = {(f["sha256"], f["class"]) for f in current["files"]}
    classes = sorted({c for _, c in before | now})
    per_class = {c: {"new": sum(1 for h, k in now - before if k == c),
                     "removed": sum(1 for h, k in before - now if k == c),
                     "unchanged": sum(1 for h, k in now & before if k == c)} for c in classes}
    totals = {k: sum(v[k] for v in per_class.values()) for k in ("new", "removed", "unchanged")}
    return {"previous_manifest": True, "previous_content_hash": previous.get("content_hash"), **totals,
            "per_class": per_class}
