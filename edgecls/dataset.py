"""Finding labelled images in a folder, checking them, and splitting them reproducibly.

Layouts accepted:
  DATA_DIR/<class>/<image>                    (split here, stratified, by --seed)
  DATA_DIR/{train,val,test}/<class>/<image>   (pre-split: used as given)
No TensorFlow here: `eval` on the device uses the same scanner.
"""
from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.fsutil import sha256_file
from edgecls.images import is_image_name, load_rgb

SPLITS = ("train", "val", "test")


@dataclass
class Scan:
    root: Path
    classes: list[str]
    items: list[tuple[str, int]]                 # (path relative to root, class index)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    presplit: dict[str, list[tuple[str, int]]] | None = None
    _hashes: dict[str, str] | None = field(default=None, repr=False)

    def class_counts(self) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for _, y in self.items:
            counts[self.classes[y]] += 1
        return counts

    def file_hashes(self) -> dict[str, str]:
        """sha256 (hex) of each used file's bytes, by relative path; read once per scan (the dataset manifest
        and content_hash share it)."""
        if self._hashes is None or set(self._hashes) != {rel for rel, _ in self.items}:
            self._hashes = {rel: sha256_file(self.root / rel) for rel, _ in self.items}
        return self._hashes

    def content_hash(self) -> str:
        """sha256 over every used file's relative path, label and bytes: names a dataset version."""
        h = hashlib.sha256()
        hashes = self.file_hashes()
        for rel, y in sorted(self.items):
            h.update(f"{rel}\0{self.classes[y]}\0".encode())
            h.update(bytes.fromhex(hashes[rel]))
        return h.hexdigest()

    def summary(self) -> dict:
        return {"root": str(self.root), "classes": self.classes, "class_counts": self.class_counts(),
                "images": len(self.items), "skipped": [{"file": p, "reason": r} for p, r in self.skipped],
                "layout": "presplit" if self.presplit else "class-folders"}


def _check_image(path: Path) -> str | None:
    """None if the file decodes as an image, else the reason it does not."""
    try:
        img = load_rgb(path)
    except Exception as e:  # PIL raises many types for corrupt data
        return f"unreadable image ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else 'no detail'})"
    if img.shape[0] < 2 or img.shape[1] < 2:
        return "image smaller than 2x2"
    return None


def _check_class_names(names: list[str], root: Path) -> None:
    """Class names become labels: one line each in labels.txt, words in `run`'s output and in tables.

    Refuse names that would break a line (control characters, line separators, undecodable bytes) and
    names that differ only invisibly (Unicode normalisation, surrounding spaces): two labels a reader
    cannot tell apart.
    """
    for name in names:
        bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")]
        if bad:
            raise EdgeclsError(f"class folder {name!r} in {root} has a control, line-break or undecodable "
                               f"character ({ascii(bad[0])}); rename it")
    seen: dict[str, str] = {}
    for name in names:
        key = unicodedata.normalize("NFC", name).strip()
        if key in seen:
            raise EdgeclsError(f"class folders {seen[key]!r} and {name!r} in {root} give the same label; "
                               f"rename one")
        seen[key] = name


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _list_images(root: Path, groups: list[tuple[str, Path]], skipped: list) -> list[tuple[str, str, str]]:
    """(split, class, relpath) of every image file under the class folders of each group; what is not an image
    by its name goes to `skipped` with the reason."""
    found = []
    for split_name, folder in groups:
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                skipped.append((str(f.relative_to(root)), "file outside any class folder"))
        for cdir in _class_dirs(folder):
            for dirpath, dirnames, filenames in os.walk(cdir):
                dirnames.sort()
                photos = {Path(n).stem for n in filenames if is_image_name(n)}
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    rel = str((Path(dirpath) / name).relative_to(root))
                    if is_image_name(name):
                        found.append((split_name, cdir.name, rel))
                    elif name.endswith(".json") and name[:-5] in photos:
                        continue  # a photo's sidecar (`collect`, `run --keep`, the web page): not a stray file
                    else:
                        skipped.append((rel, "not an image file (by extension)"))
    return found


def scan(data_dir: str | os.PathLike, check: bool = True, classes: list[str] | None = None,
         progress=None) -> Scan:
    """List, check and label every image under data_dir.

    `classes`, when given (evaluating a trained model), fixes the label order and requires the
    folder's classes to be exactly those. `progress(n_done, n_total)` is called while checking.
    """
    root = Path(data_dir)
    if not root.exists():
        raise EdgeclsError(f"data folder not found: {root}")
    if not root.is_dir():
        raise EdgeclsError(f"not a folder: {root}")
    skipped: list[tuple[str, str]] = []
    top_dirs = _class_dirs(root)
    presplit = bool(top_dirs) and {p.name for p in top_dirs} <= set(SPLITS) and "train" in {p.name for p in top_dirs}
    groups = [(p.name, p) for p in top_dirs] if presplit else [("", root)]

    found = _list_images(root, groups, skipped)
    _check_class_names(sorted({c.name for _, g in groups for c in _class_dirs(g)}), root)  # before the slow part
    if check:
        ok = []
        for i, (split, cls, rel) in enumerate(found):
            reason = _check_image(root / rel)
            if reason:
                skipped.append((rel, reason))
            else:
                ok.append((split, cls, rel))
            if progress:
                progress(i + 1, len(found))
        found = ok

    folder_classes = sorted({c for _, c, _ in found} | {c.name for _, g in groups for c in _class_dirs(g)})
    if not folder_classes:
        raise EdgeclsError(f"no class folders in {root}: expected {root}/<class>/<image> (or train/val/test/<class>/...)")
    per_class = {c: 0 for c in folder_classes}
    for _, c, _ in found:
        per_class[c] += 1
    if classes is None:
        empty = [c for c, n in per_class.items() if n == 0]
        if empty:
            raise EdgeclsError(f"class folder(s) with no valid images: {', '.join(empty)} (in {root})")
        classes = folder_classes
        if len(classes) < 2:
            raise EdgeclsError(f"only one class ({classes[0]}) in {root}: a classifier needs at least two")
    else:
        extra = [c for c in folder_classes if c not in classes and per_class[c] > 0]
        if extra:
            raise EdgeclsError(f"classes in {root} that the model does not know: {', '.join(extra)} "
                               f"(model labels: {', '.join(classes)})")
        if not found:
            raise EdgeclsError(f"no valid images in {root}")
    index = {c: i for i, c in enumerate(classes)}
    items = [(rel, index[c]) for _, c, rel in found]
    pre = None
    if presplit:
        pre = {s: [(rel, index[c]) for sp, c, rel in found if sp == s] for s in SPLITS}
    return Scan(root=root, classes=list(classes), items=items, skipped=skipped, presplit=pre)


def check_split_fractions(val_split: float, test_split: float) -> None:
    if not (0 <= test_split < 1 and 0 < val_split < 1 and val_split + test_split < 0.9):
        raise EdgeclsError("--val-split must be in (0,1), --test-split in [0,1), and together below 0.9")


def split(scan_: Scan, val_split: float, test_split: float, seed: int,
          keep: dict[str, str] | None = None) -> dict[str, list[tuple[str, int]]]:
    """Stratified split, deterministic for (file list, fractions, seed). Pre-split folders are used as given.

    `keep` (train --init: sha256 → the previous run's split) keeps each photo the previous run had in its
    split, so the new run's test split holds no photo the previous model trained on; only the other photos
    are split here (by the usual fractions: a class with a single new photo puts it in train)."""
    if scan_.presplit:
        out = {s: list(v) for s, v in scan_.presplit.items()}
        if not out["val"]:
            raise EdgeclsError(f"pre-split data in {scan_.root} has no val/ images; add some or use one folder per class")
        return out
    check_split_fractions(val_split, test_split)
    out: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    kept: set[str] = set()
    if keep:
        hashes = scan_.file_hashes()
        for rel, y in scan_.items:
            if keep.get(hashes[rel]) in SPLITS:
                out[keep[hashes[rel]]].append((rel, y))
                kept.add(rel)
    for y in range(len(scan_.classes)):
        files = sorted(rel for rel, lab in scan_.items if lab == y and rel not in kept)
        # Seed per class from (seed, class name) so adding a class does not reshuffle the others.
        digest = hashlib.sha256(f"{seed}:{scan_.classes[y]}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        order = [files[i] for i in rng.permutation(len(files))]
        n = len(order)
        n_test = int(round(n * test_split))
        n_val = max(1, int(round(n * val_split))) if n - n_test > 1 else 0
        out["test"] += [(r, y) for r in order[:n_test]]
        out["val"] += [(r, y) for r in order[n_test:n_test + n_val]]
        out["train"] += [(r, y) for r in order[n_test + n_val:]]
    for s in SPLITS:
        out[s].sort()
    if not out["train"] or not out["val"]:
        raise EdgeclsError("too few images to split into train and val")
    return out


def load_arrays(root: Path, items: list[tuple[str, int]], spec, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Decode and prepare `items` into (N,H,W,3) uint8 and (N,) int labels, via the shared contract."""
    from edgecls.preprocess import prepare

    x = np.empty((len(items), spec.height, spec.width, 3), dtype=np.uint8)
    y = np.empty((len(items),), dtype=np.int64)
    for i, (rel, lab) in enumerate(items):
        x[i] = prepare(load_rgb(root / rel), spec)
        y[i] = lab
        if progress:
            progress(i + 1, len(items))
    return x, y
