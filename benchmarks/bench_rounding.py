"""GPTQ weight rounding (layer by layer against float, convert/rounding.py) against rounding to nearest, pooled
over seeds: the default export of the same runs
with `--weight-rounding gptq` (the default) and `--weight-rounding nearest` (the converters' own rounding).

    python benchmarks/bench_rounding.py [--work DIR] [--data flowers,digits] [--seeds 1337,1,2]
                                        [--roundings gptq,nearest] [--out FILE.md]

Each seed is another split of the photos (`edgecls train DATA --seed S`, defaults otherwise; cached in --work, as
are the exports). Every figure comes from the bundles' edgecls.json: agreement with float over all the run's
images, mean total-variation distance from float over them (`mean_tv_all`), and the test split's photos lost
and gained against float. Pooled = summed over seeds, the drop's 95% interval paired over the pooled test photos.
Writes benchmarks/results/rounding.md and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_results import EDGECLS, ROOT, SHARED, Stages, last_json  # noqa: E402

from edgecls.metrics import delta_text, paired_drop  # noqa: E402

DATA = {"flowers": SHARED / "data" / "flowers", "digits": SHARED / "data" / "sign_language_digits"}
ROUNDINGS = {"gptq": [], "nearest": ["--weight-rounding", "nearest"]}
KEYS = ("tflite-int8", "onnx-int8")


def pooled_drop(lost: int, gained: int, n: int) -> dict:
    """metrics.paired_drop over n photos of which `lost` only float and `gained` only int8 got right."""
    ref, new = np.ones(n, bool), np.ones(n, bool)
    new[:lost] = False
    ref[lost:lost + gained] = False
    return paired_drop(ref, new)


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
    lines = [f"## GPTQ weight rounding, layer by layer against float, vs nearest, pooled over seeds "
             f"(`python benchmarks/bench_rounding.py"
             f"{' ' + args if args else ''}`)", "",
             "The default export of each run twice: `--weight-rounding gptq` (default) and `nearest` (the converters' "
             "own rounding). Agreement and TV (mean total-variation distance from float) over every image of the "
             "run; test = photos only float got right (lost) and only int8 got right (gained).", "",
             "| data | seed | artifact | rounding | agreement, all images | TV | test lost / gained (n) | float ops | "
             "latency ratio | export s |", "|---|---|---|---|---|---|---|---|---|---|"]
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
                    lines.append(f"| {name} | {seed} | | {how} | failed (exit {rec['rc']}) | | | | | |")
                    continue
                for key in KEYS:
                    art = m["artifacts"][key]
                    mt = art["metrics"]
                    ag, d = mt["agreement_all"], mt["drop"]
                    p = pooled.setdefault((name, key, how), {"agreed": 0, "images": 0, "tv": 0.0, "lost": 0,
                                                             "gained": 0, "n": 0})
                    p["agreed"] += ag["agreed"]
                    p["images"] += ag["images"]
                    p["tv"] += mt["mean_tv_all"] * ag["images"]
                    p["lost"] += d["lost"]
                    p["gained"] += d["gained"]
                    p["n"] += d["n"]
                    lines.append(f"| {name} | {seed} | {key} ({art['method']}) | {how} | {ag['rate'] * 100:.2f}% "
                                 f"({ag['agreed']}/{ag['images']}) | {mt['mean_tv_all']:.4f} | "
                                 f"−{d['lost']} +{d['gained']} ({d['n']}) | {len(art.get('float_ops') or [])} | "
                                 f"{mt.get('latency_ratio', float('nan')):.2f} | {rec['seconds']:.0f} |")
    lines += ["", f"Pooled over the seeds ({a.seeds}):", "", "| data | artifact | rounding | agreement (changed answers) | TV | "
              "test lost / gained | test Δ pp (95% CI) |", "|---|---|---|---|---|---|---|"]
    for (name, key, how), p in pooled.items():
        d = pooled_drop(p["lost"], p["gained"], p["n"])
        lines.append(f"| {name} | {key} | {how} | {p['agreed'] / p['images'] * 100:.2f}% "
                     f"({p['images'] - p['agreed']} of {p['images']}) | {p['tv'] / p['images']:.4f} | "
                     f"−{p['lost']} +{p['gained']} of {p['n']} | {delta_text(d)} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    (a.work / "pooled.json").write_text(json.dumps({"|".join(k): v for k, v in pooled.items()}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
