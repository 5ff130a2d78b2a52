"""Training throughput (images/s) and peak memory per backbone and input size.

Each configuration runs in its own process (so peak RSS is its own) on real images from the shared
digits set: one warm-up epoch, then a timed epoch, for the frozen-backbone (head) phase and the
fine-tune phase (top 35% unfrozen, BatchNorm frozen) as `edgecls train` runs them.

    python benchmarks/bench_train.py [--sizes 96,224] [--backbones all] [--images 256] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = Path(os.environ.get("EDGECLS_SHARED", ROOT.parent / "shared")) / "data" / "sign_language_digits"


def child(backbone: str, size: int, n_images: int, batch: int) -> dict:
    import numpy as np

    from edgecls.dataset import load_arrays, scan
    from edgecls.train.backbones import BACKBONES
    from edgecls.train.config import TrainConfig
    from edgecls.train.model import backbone_layers, build_model, default_fine_tune_at, set_phase
    from edgecls.train.tfenv import import_tf

    tf, keras = import_tf()
    s = scan(DIGITS, check=False)
    items = s.items[:: max(1, len(s.items) // n_images)][:n_images]
    cfg = TrainConfig(data_dir=str(DIGITS), backbone=backbone, img_size=size, weights="none",
                      alpha=1.0 if 1.0 in BACKBONES[backbone].alphas else BACKBONES[backbone].alphas[-1])
    x, y = load_arrays(s.root, items, cfg.preprocess_spec())
    x = x.astype(np.float32)
    y = keras.utils.to_categorical(y, 10)
    model = build_model(cfg, 10, None)
    out = {"backbone": backbone, "img_size": size, "alpha": cfg.alpha, "images": len(x), "batch": batch,
           "params": int(model.count_params()), "layers": len(backbone_layers(model))}
    for phase in ("head", "finetune"):
        set_phase(model, phase, default_fine_tune_at(cfg, model))
        model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy")
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)      # warm-up: graph tracing
        t = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        out[f"{phase}_img_per_s"] = round(len(x) / (time.perf_counter() - t), 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="96,224")
    ap.add_argument("--backbones", default="all")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.images, a.batch)))
        return
    from edgecls.train.backbones import BACKBONES

    names = list(BACKBONES) if a.backbones == "all" else a.backbones.split(",")
    rows = []
    for name in names:
        for size in (int(s) for s in a.sizes.split(",")):
            r = subprocess.run([sys.executable, __file__, "--child", name, str(size), "--images", str(a.images),
                                "--batch", str(a.batch)], capture_output=True, text=True)
            if r.returncode != 0:
                rows.append({"backbone": name, "img_size": size, "error": r.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            if not a.json:
                print(rows[-1], file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print("| backbone | px | params | head img/s | fine-tune img/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['backbone']} | {r['img_size']} | error: {r['error']} | | | |")
        else:
            print(f"| {r['backbone']} {r['alpha']} | {r['img_size']} | {r['params']:,} | {r['head_img_per_s']} | "
                  f"{r['finetune_img_per_s']} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
