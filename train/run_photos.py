"""Which photos a training run uses: the folder scanned and checked, capped per class, split by seed (or the split
the run recorded, when it resumes), and with --init what changed since the previous run; then written into the run
folder as labels.txt, splits.json and dataset.json (edgecls/dataset_manifest.py). The pixels come later
(train/split_input.py: open_splits), once the run folder exists."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecls import dataset_manifest
from edgecls.dataset import SPLITS, Scan, scan, split
from edgecls.errors import EdgeclsError
from edgecls.fsutil import atomic_write_json, atomic_write_text
from edgecls.progress import progress_bar, say
from edgecls.rundir import LABELS_TXT, SPLITS_JSON
from edgecls.train.config import TrainConfig
from edgecls.train.init_run import InitRun


@dataclass
class RunPhotos:
    data: Scan                                # the scan: root, classes, items, skipped files
    parts: dict[str, list[tuple[str, int]]]   # split name -> (relative path, label)
    summary: dict                             # run.json's dataset block
    manifest: dict                            # dataset.json
    init_block: dict | None                   # run.json's init block (--init), else None

    @property
    def labels_same(self) -> bool:
        """--init: the previous run had these very classes (every weight can be copied)."""
        return bool(self.init_block and self.init_block["labels_same"])

    @property
    def n_images(self) -> int:
        return sum(len(v) for v in self.parts.values())


def load(cfg: TrainConfig, splits: dict | None, init: InitRun | None, quiet: bool) -> RunPhotos:
    """Scan and check every file, split (or take the recorded split when resuming: `splits`).
    With --init (`init`), the previous run's photos keep their split and what changed since it is measured."""
    with progress_bar("checking images", quiet) as bar:
        data = scan(cfg.data_dir, progress=bar.update)
    if cfg.max_images_per_class:
        _cap_per_class(data, cfg.max_images_per_class)
    for rel, why in data.skipped:
        say(f"warning: skipped {rel}: {why}", quiet)
    if data.skipped:
        say(f"warning: skipped {len(data.skipped)} file(s) in total", quiet)
    if splits is not None:
        parts, previous = _recorded_split(cfg, data, splits), None
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
    return RunPhotos(data, parts, summary, manifest, init_block)


def _cap_per_class(data: Scan, limit: int) -> None:
    """--max-images-per-class: the first `limit` photos of each class, in scan order."""
    kept: dict[int, int] = {}
    items = []
    for rel, y in data.items:
        if kept.get(y, 0) < limit:
            kept[y] = kept.get(y, 0) + 1
            items.append((rel, y))
    data.items = items
    data.presplit = None


def _recorded_split(cfg: TrainConfig, data: Scan, splits: dict) -> dict[str, list[tuple[str, int]]]:
    """A resumed run's split, as splits.json recorded it; refused when its classes or photos are gone."""
    if splits["classes"] != data.classes:
        raise EdgeclsError(f"the classes in {cfg.data_dir} changed since this run started; cannot resume")
    parts = {s: [(r, int(y)) for r, y in splits[s]] for s in SPLITS}
    missing = [r for v in parts.values() for r, _ in v if not (data.root / r).is_file()]
    if missing:
        raise EdgeclsError(f"{len(missing)} image(s) of this run are missing from {data.root} (e.g. {missing[0]}); "
                           f"put them back to resume, or start a new run")
    return parts


def write(out: Path, photos: RunPhotos) -> None:
    """labels.txt, splits.json (by file list) and dataset.json (by content) in the new run folder."""
    data = photos.data
    atomic_write_text(out / LABELS_TXT, "\n".join(data.classes) + "\n")
    atomic_write_json(out / SPLITS_JSON, {"root": str(data.root.resolve()), "classes": data.classes,
                                          **{s: [[r, y] for r, y in v] for s, v in photos.parts.items()}})
    dataset_manifest.write(out, photos.manifest)
