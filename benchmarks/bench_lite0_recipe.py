"""Lite0 recipes chosen on validation photos, then reported on test photos (issue 32).

    python benchmarks/bench_lite0_recipe.py [--work DIR] [--data flowers] [--seeds 1337,1,2]
                                            [--variants base,ft-all,...] [--out FILE.md]

Each (variant, seed): `edgecls train DATA --backbone efficientnet_lite0 --img-size 224 --seed S` plus the
variant's options (VARIANTS), and the MobileNetV2 default (`edgecls train DATA --seed S`) on the same split (the
seed draws it). Runs are cached in --work (an interrupted benchmark resumes).

The choice is made on the **validation** photos only (pooled over the seeds: the variant with the most right
answers), so the test photos stay unseen by the choice; the test column is read afterwards, for every variant,
with Wilson 95% intervals, and the chosen variant's difference to the MobileNetV2 default on the same test photos
(Newcombe's interval for two proportions, edgecls/metrics.py: difference_interval — it ignores the pairing, so it
is wider than a paired one). Validation accuracy is the best epoch's, so it is biased upwards alike for every
variant.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_lite0 import link_lite0  # noqa: E402
from bench_rounding import DATA  # noqa: E402
from make_results import EDGECLS, ROOT, Stages, publish  # noqa: E402

from edgecls.metrics import difference_interval, wilson_interval  # noqa: E402

LITE0 = ["--backbone", "efficientnet_lite0", "--img-size", "224"]
# name: options after LITE0 (None: the MobileNetV2 default, the baseline)
VARIANTS: dict[str, list[str] | None] = {
    "mnv2-default": None,
    "base": [],
    "ft-all": ["--fine-tune-at", "0"],
    "ft-all-long": ["--fine-tune-at", "0", "--fine-tune-epochs", "24"],
    "head-images": ["--head", "images"],
    "no-smoothing": ["--label-smoothing", "0"],
    # a shorter head phase: its best validation epoch is lower, so the fine-tuned weights are kept (the run keeps
    # the weights of the best validation epoch over both phases, and Lite0's head on features peaks high)
    "short-head": ["--epochs", "5"],
    "short-head-all": ["--epochs", "5", "--fine-tune-at", "0"],
    # a larger input (MobileNetV2 gained 2 pp on flowers from 160 to 224 px); needs IMG_SIZE_RANGE up to 288
    "base-288": ["--img-size", "288"],
    # the backbone frozen throughout, as MediaPipe Model Maker trains its Lite0 by default (its 91.3% anchor): on
    # cached features, on augmented images, and at 288 px
    "head-only": ["--fine-tune-epochs", "0"],
    "head-images-only": ["--head", "images", "--fine-tune-epochs", "0"],
    "head-only-288": ["--img-size", "288", "--fine-tune-epochs", "0"],
}


def train(st: Stages, a, variant: str, name: str, seed: int) -> dict | None:
    run = a.work / "runs" / f"{name}-{variant}-s{seed}"
    extra = VARIANTS[variant]
    cmd = [*EDGECLS, "train", DATA[name], "--out", run, "--seed", str(seed), "--force", "--json"]
    rec = st.run(f"train-{name}-{variant}-s{seed}", cmd + ([] if extra is None else LITE0 + extra))
    if rec["rc"] != 0:
        return None
    meta = json.loads((run / "run.json").read_text())
    return {"val": _count(meta["metrics"]["val"]), "test": _count(meta["metrics"]["test"]),
            "seconds": rec["seconds"], "cmd": rec["cmd"]}


def _count(m: dict) -> tuple[int, int]:
    return round(m["accuracy"] * m["n"]), m["n"]


def pooled(counts: list[tuple[int, int]]) -> str:
    k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {k / n * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / ".edgecls-cache" / "lite0-recipe")
    ap.add_argument("--data", default="flowers")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    st = Stages(a.work, fresh=False)
    link_lite0(a.work)
    seeds = [int(s) for s in a.seeds.split(",")]
    figures = {}
    for variant in a.variants.split(","):
        for seed in seeds:
            f = train(st, a, variant, a.data, seed)
            if f:
                figures.setdefault(variant, {})[seed] = f
    done = {v: fs for v, fs in figures.items() if len(fs) == len(seeds)}
    lite = [v for v in done if VARIANTS[v] is not None]
    chosen = max(lite, key=lambda v: sum(f["val"][0] for f in done[v].values())) if lite else None
    lines = [f"## Lite0 recipes chosen on validation photos (`python benchmarks/bench_lite0_recipe.py "
             f"{' '.join(sys.argv[1:]).replace(str(ROOT) + '/', '')}`)", "",
             f"{a.data}, seeds {a.seeds}; options after `{' '.join(LITE0)}` (mnv2-default: `edgecls train DATA`). "
             "Chosen on pooled validation right answers; test read afterwards.", "",
             "| variant | options | validation, pooled (95% CI) | test, pooled (95% CI) | test per seed | mean train s |",
             "|---|---|---|---|---|---|"]
    for v, fs in done.items():
        opts = "MobileNetV2 160 px default" if VARIANTS[v] is None else (" ".join(VARIANTS[v]) or "Lite0 defaults")
        per_seed = ", ".join(f"{fs[s]['test'][0]}/{fs[s]['test'][1]}" for s in seeds)
        secs = sum(f["seconds"] for f in fs.values()) / len(fs)
        mark = " **(chosen)**" if v == chosen else ""
        lines.append(f"| {v}{mark} | {opts} | {pooled([f['val'] for f in fs.values()])} | "
                     f"{pooled([f['test'] for f in fs.values()])} | {per_seed} | {secs:.0f} |")
    if chosen and "mnv2-default" in done:
        k = {v: [sum(f["test"][i] for f in done[v].values()) for i in (0, 1)] for v in (chosen, "mnv2-default")}
        lo, hi = difference_interval(*k["mnv2-default"], *k[chosen])
        d = (k[chosen][0] / k[chosen][1] - k["mnv2-default"][0] / k["mnv2-default"][1]) * 100
        lines += ["", f"Chosen: **{chosen}**, test {d:+.1f} pp against the MobileNetV2 default on the same photos "
                  f"({lo * 100:+.1f} to {hi * 100:+.1f}, unpaired); the issue asks +3 pp or 93%."]
    publish(a.out or HERE / "results" / f"lite0-recipe-{a.data}.md", lines)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
