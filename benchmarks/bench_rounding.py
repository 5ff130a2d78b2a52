"""GPTQ weight rounding (layer by layer against float, convert/rounding.py) against rounding to nearest, pooled
over seeds: the default export of the same runs
with `--weight-rounding gptq` (the default) and `--weight-rounding nearest` (the converters' own rounding).

    python benchmarks/bench_rounding.py [--work DIR] [--data flowers,digits] [--seeds 1337,1,2]
                                        [--roundings gptq,nearest] [--out FILE.md]

Each seed is another split of the photos (`edgecls train DATA --seed S`, defaults otherwise; cached in --work, as
are the exports). Every figure comes from the bundles' edgecls.json: top-1 agreement with the float twin on the
held-out test photos (`agreement_heldout`: photos training, calibration, rounding and the search never saw) with
its Wilson 95% interval, the test split's photos lost and gained against float with the paired drop's interval,
the latency ratio, and — labelled as such — agreement and mean total-variation distance over every image,
training photos included (`agreement_all`, `mean_tv_all`).
Across seeds: the per-seed figures' range and their total count, **no pooled interval**: the seeds are splits of
the same photos, so their test photos overlap (8 splits of 750 photos are not 6,000 independent photos), and an
interval over the pooled count would be too narrow.
Writes benchmarks/results/rounding.md and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_results import EDGECLS, ROOT, SHARED, Stages, last_json  # noqa: E402

from edgecls.metrics import agreement_text, delta_text  # noqa: E402

DATA = {"flowers": SHARED / "data" / "flowers", "digits": SHARED / "data" / "sign_language_digits"}
ROUNDINGS = {"gptq": [], "nearest": ["--weight-rounding", "nearest"]}
KEYS = ("tflite-int8", "onnx-int8")


def count_ci(agreed: int, images: int) -> str:
    """"98.18% (108/110; 93.6–99.5)": a count with its Wilson 95% interval."""
    return agreement_text(agreed, images, interval=True)


def seed_row(name: str, seed: int, how: str, art: dict, seconds: float) -> tuple[str, dict]:
    """One artifact of one seed's bundle as a table row, and the figures the across-seeds table keeps."""
    mt = art["metrics"]
    held, every, d = mt["agreement_heldout"], mt["agreement_all"], mt["drop"]
    row = (f"| {name} | {seed} | {art['key']} ({art['method']}) | {how} | {held['reference']} | "
           f"{count_ci(held['agreed'], held['images'])} | {delta_text(d)} (−{d['lost']} +{d['gained']}) | "
           f"{mt.get('latency_ratio', float('nan')):.2f} | {every['rate'] * 100:.2f}% ({every['agreed']}/"
           f"{every['images']}), TV {mt['mean_tv_all']:.4f} | {len(art.get('float_ops') or [])} | {seconds:.0f} |")
    return row, {"held": held["rate"], "agreed": held["agreed"], "images": held["images"], "drop": d["drop_pp"],
                 "ratio": mt.get("latency_ratio"), "all": every["rate"]}


def across_seeds(name: str, key: str, how: str, per_seed: list[dict]) -> str:
    """The per-seed figures' range: no interval over the pooled count (the seeds' test photos overlap)."""
    def span(field, fmt, sign=1.0):
        vals = sorted(sign * f[field] + 0.0 for f in per_seed if f[field] is not None)
        return f"{fmt(vals[0])} to {fmt(vals[-1])}" if vals else ""
    pct = lambda v: f"{v * 100:.2f}%"   # noqa: E731
    agreed, images = sum(f["agreed"] for f in per_seed), sum(f["images"] for f in per_seed)
    return (f"| {name} | {key} | {how} | {len(per_seed)} | {span('held', pct)} | {agreed}/{images} "
            f"({agreed / images * 100:.2f}%) | {span('drop', lambda v: f'{v:+.2f}', sign=-1.0)} | "
            f"{span('ratio', lambda v: f'{v:.2f}')} | {span('all', pct)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # rounding: the one-pass GPTQ; rounding2: layer by layer, a probe per layer; rounding3: one pass, one damping rule
    ap.add_argument("--work", type=Path, default=ROOT / ".edgecls-cache" / "rounding3")
    ap.add_argument("--data", default="flowers,digits")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--roundings", default="gptq,nearest")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rounding.md")
    a = ap.parse_args()
    st = Stages(a.work, fresh=False)
    seeds = [int(s) for s in a.seeds.split(",")]
    args = " ".join(sys.argv[1:]).replace(str(ROOT) + "/", "")
    lines = [f"## The default export on photos it never saw, per seed (`python benchmarks/bench_rounding.py"
             f"{' ' + args if args else ''}`)", "",
             "Held-out agreement: top-1 of the int8 artifact equal to its float twin's (the reference column) on the "
             "run's test photos, which training, calibration, weight rounding and the search never saw, with its "
             "Wilson 95% interval; `edgecls eval BUNDLE test-photos/` prints the same count. Δ: test top-1 of int8 "
             "minus float with its paired 95% interval (photos lost and gained). Latency: int8 / float, same runtime, "
             "1 thread, interleaved. The last figures are over every image of the run, **training photos included** "
             "(they flatter int8), with the mean total-variation distance from float over them.", "",
             "| data | seed | artifact | rounding | vs | agreement, held-out (95% CI) | Δ top-1 pp (95% CI) | "
             "int8/float latency | agreement incl. training photos | float ops | export s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    pooled = {}
    for name in a.data.split(","):
        for seed in seeds:
            run = a.work / "runs" / f"{name}-s{seed}"
            st.run(f"train-{name}-s{seed}", [*EDGECLS, "train", DATA[name], "--out", run, "--seed", str(seed),
                                             "--force", "--json"])
            for how in a.roundings.split(","):
                extra = ROUNDINGS[how]
                rec = st.run(f"export-{name}-s{seed}-{how}",
                             [*EDGECLS, "export", run, "--out", a.work / f"bundle-{name}-s{seed}-{how}", *extra,
                              "--allow-drop", "--json"], ok_codes=(0, 3))
                m = last_json(rec["stdout"])
                if not m:
                    lines.append(f"| {name} | {seed} | | {how} | | failed (exit {rec['rc']}) | | | | | |")
                    continue
                for key in KEYS:
                    row, figures = seed_row(name, seed, how, {"key": key, **m["artifacts"][key]}, rec["seconds"])
                    lines.append(row)
                    pooled.setdefault((name, key, how), []).append(figures)
    lines += ["", f"Across the seeds ({a.seeds}): each seed's range, and the held-out counts summed — with no "
              "interval, since the seeds' test photos overlap (splits of the same photos):", "",
              "| data | artifact | rounding | seeds | agreement, held-out | summed count | Δ top-1 pp | "
              "int8/float latency | agreement incl. training photos |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, key, how), per_seed in pooled.items():
        lines.append(across_seeds(name, key, how, per_seed))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    (a.work / "pooled.json").write_text(json.dumps({"|".join(k): v for k, v in pooled.items()}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
