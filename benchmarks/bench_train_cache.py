"""Peak memory and throughput of `edgecls train --cache`: does memory stay flat when the dataset grows ten-fold?

Each configuration is one real `edgecls train` in its own process; its peak RSS is that process's own
(`os.wait4` → ru_maxrss). The data: the shared flowers (750 photos) and the same photos N times under distinct
file names (hard links in a temporary folder: the scan takes them as ordinary files; nothing folds identical
content, so N× the names is N× the photos to decode, cache and train on). Throughput: training images per
second of the last epoch (its seconds in run.json include that epoch's validation pass; the first epoch also
traces the graph). `--head images` (the default here) makes every head epoch read the split, so that is what
is timed; `train`'s own default, `--head features`, reads it once for the backbone features and fine-tunes on it.

    python benchmarks/bench_train_cache.py [--copies 1,10] [--modes disk,memory] [--img-size 96] [--epochs 2]
                                           [--fine-tune-epochs 0] [--head images|features]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = Path(os.environ.get("EDGECLS_SHARED", ROOT.parent / "shared")).resolve() / "data" / "flowers"


def replicate(src: Path, dest: Path, copies: int) -> Path:
    """`copies` names for every photo of src/<class>/ in dest/<class>/ (hard links; symlinks across devices)."""
    for cdir in sorted(p for p in src.iterdir() if p.is_dir()):
        (dest / cdir.name).mkdir(parents=True)
        for photo in sorted(p for p in cdir.iterdir() if p.is_file()):
            for k in range(copies):
                link = dest / cdir.name / f"{photo.stem}_{k}{photo.suffix}"
                try:
                    os.link(photo, link)
                except OSError:
                    link.symlink_to(photo)
    return dest


def train_once(data: Path, out: Path, mode: str, img_size: int, epochs: int, fine_tune_epochs: int,
               head: str) -> dict:
    cmd = [sys.executable, "-m", "edgecls", "train", str(data), "--out", str(out), "--img-size", str(img_size),
           "--epochs", str(epochs), "--fine-tune-epochs", str(fine_tune_epochs), "--head", head, "--cache", mode,
           "--json"]
    t = time.time()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-800:]
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {tail}")
    meta = json.loads((out / "run.json").read_text())
    last = meta["history"][-1]
    n_train = meta["dataset"]["split_sizes"]["train"]
    return {"mode": mode, "cache": meta["training"]["cache"], "images": meta["dataset"]["images"],
            "train_images": n_train, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "last_epoch_s": last["seconds"], "train_img_per_s": round(n_train / last["seconds"], 1),
            "wall_s": round(time.time() - t, 1), "test_accuracy": meta["metrics"]["test"]["accuracy"],
            "cache_left": (out / ".cache").exists()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", default="1,10")
    ap.add_argument("--modes", default="disk,memory")
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--fine-tune-epochs", type=int, default=0)
    ap.add_argument("--head", default="images", help="images: every head epoch reads the split (what is timed); "
                    "features: train's default, the split read once for the backbone features")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as work:
        for copies in (int(c) for c in a.copies.split(",")):
            data = replicate(FLOWERS, Path(work) / f"flowers-x{copies}", copies)
            for i, mode in enumerate(a.modes.split(",")):   # a mode may repeat: interleaved runs
                row = {"copies": copies, **train_once(data, Path(work) / f"run-x{copies}-{i}-{mode}", mode,
                                                      a.img_size, a.epochs, a.fine_tune_epochs, a.head)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print("| data | photos | --cache | peak RSS MB | train img/s (last epoch) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| flowers ×{r['copies']} | {r['images']} | {r['mode']} | {r['peak_rss_mb']} | "
              f"{r['train_img_per_s']} |")


if __name__ == "__main__":
    main()
