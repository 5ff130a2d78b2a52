"""EfficientNet-Lite0 against the MobileNetV2 default, per seed, on the project's splits (issue 32).

    python benchmarks/bench_lite0.py [--work DIR] [--data flowers] [--seeds 1337,1,2] [--sizes 224]
                                     [--baseline DIR] [--out FILE.md]

Each (data, size, seed): `edgecls train DATA --backbone efficientnet_lite0 --img-size SIZE --seed S` (the Lite0
weights from ../shared/weights through the Keras cache, i.e. `--weights imagenet` offline), then the default
`edgecls export RUN --formats tflite --allow-drop` (cached in --work, so an interrupted benchmark resumes). The
seed also draws the split, so the MobileNetV2 default runs of benchmarks/bench_rounding.py with the same seeds
(--baseline: its --work) are tested on the same photos.
Reported: test top-1 (float Keras model) per seed with its Wilson 95% interval and the mean; the int8 TFLite's
held-out agreement with its float twin and its paired drop (bench_rounding's columns); train and export wall
time; and latency on 1 thread, interleaved call by call in this one process (device/bench.py: interleaved_ratios):
Lite0 int8 over MobileNetV2 int8 (its bundle's size, 160 px) and over Lite0's own float.
Writes --out (default benchmarks/results/lite0-DATA.md) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_rounding import DATA, count_ci  # noqa: E402
from make_results import EDGECLS, ROOT, SHARED, Stages, last_json, publish  # noqa: E402

from edgecls.metrics import delta_text, wilson_interval  # noqa: E402

LITE0_WEIGHTS = SHARED / "weights" / "efficientnet_lite0_no_top.h5"
LATENCY_ROUNDS = 60


def link_lite0(work: Path) -> None:
    """The Lite0 file under the name the Keras cache lookup wants (train/backbones.py: weights_glob)."""
    target = work / "keras_home" / "models" / LITE0_WEIGHTS.name
    if not target.exists():
        target.symlink_to(LITE0_WEIGHTS)


def latency(lite0_bundle: Path, mnv2_bundle: Path) -> dict:
    """Lite0 int8 / MobileNetV2 int8 and Lite0 int8 / Lite0 float, 1 thread, timed in turns."""
    from edgecls.bundle import load_bundle
    from edgecls.device.bench import bench_input, interleaved_ratios
    from edgecls.device.model.runtime import load_model

    lite, mnv2 = load_bundle(lite0_bundle), load_bundle(mnv2_bundle)
    x_lite, x_mnv2 = bench_input(lite), bench_input(mnv2)
    base = load_model(mnv2, "tflite", "int8", threads=1)
    lite_int8 = load_model(lite, "tflite", "int8", threads=1)
    lite_float = load_model(lite, "tflite", "float", threads=1)
    # each model its own input size: the shared x of interleaved_ratios is ignored
    ratios = interleaved_ratios(lambda _: base.predict(x_mnv2),
                                [lambda _: lite_int8.predict(x_lite), lambda _: lite_float.predict(x_lite)],
                                x_lite, rounds=LATENCY_ROUNDS)
    return {"int8_vs_mnv2_int8": ratios[0], "int8_vs_own_float": ratios[0] / ratios[1]}


def host_line() -> str:
    """Latency ratios depend on whether int8 has a dot product on this CPU: say which."""
    from edgecls.device.model.runtime import int8_dot_product

    return ("This host's CPU has an int8 dot product (x86 VNNI; on ARM64 SDOT, which a Pi 5 has and a Pi 4 lacks)."
            if int8_dot_product() else
            "This host's CPU has no int8 dot product (x86 AVX2 only): int8 is no faster than float here.")


def seed_figures(st: Stages, a, name: str, size: int, seed: int) -> dict | None:
    run = a.work / "runs" / f"{name}-{size}-s{seed}"
    tr = st.run(f"train-{name}-{size}-s{seed}", [*EDGECLS, "train", DATA[name], "--out", run, "--seed", str(seed),
                                                 "--backbone", "efficientnet_lite0", "--img-size", str(size),
                                                 "--force", "--json"])
    if tr["rc"] != 0:
        return None
    test = json.loads((run / "run.json").read_text())["metrics"]["test"]
    bundle = a.work / f"bundle-{name}-{size}-s{seed}"
    ex = st.run(f"export-{name}-{size}-s{seed}", [*EDGECLS, "export", run, "--out", bundle, "--formats", "tflite",
                                                  "--allow-drop", "--json"], ok_codes=(0, 3))
    out = {"seed": seed, "size": size, "test": test, "train_s": tr["seconds"], "export_s": ex["seconds"],
           "train_cmd": tr["cmd"], "export_cmd": ex["cmd"]}
    m = last_json(ex["stdout"])
    if m:
        out["int8"] = m["artifacts"]["tflite-int8"]
        mnv2 = a.baseline / f"bundle-{name}-s{seed}-gptq"
        if mnv2.is_dir():
            out["latency"] = latency(bundle, mnv2)
    return out


def baseline_test(a, name: str, seed: int) -> dict | None:
    meta = a.baseline / "runs" / f"{name}-s{seed}" / "run.json"
    return json.loads(meta.read_text())["metrics"]["test"] if meta.is_file() else None


def top1(test: dict) -> str:
    k, n = round(test["accuracy"] * test["n"]), test["n"]
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {k / n * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f})"


def seed_row(name: str, f: dict, base: dict | None) -> str:
    cells = [name, str(f["seed"]), f"{f['size']}", top1(f["test"]), top1(base) if base else "–"]
    art = f.get("int8")
    if art:
        mt = art["metrics"]
        held, d = mt["agreement_heldout"], mt["drop"]
        cells += [count_ci(held["agreed"], held["images"]), f"{delta_text(d)} (−{d['lost']} +{d['gained']})",
                  f"{mt.get('latency_ratio', float('nan')):.2f}"]
    else:
        cells += ["export failed", "", ""]
    lat = f.get("latency") or {}
    cells += [f"{lat['int8_vs_own_float']:.2f}" if lat else "–", f"{lat['int8_vs_mnv2_int8']:.2f}" if lat else "–",
              f"{f['train_s']:.0f}", f"{f['export_s']:.0f}"]
    return "| " + " | ".join(cells) + " |"


def summary(name: str, size: int, rows: list[dict], bases: list[dict]) -> str:
    mean = sum(f["test"]["accuracy"] for f in rows) / len(rows) * 100
    base = (sum(b["accuracy"] for b in bases) / len(bases) * 100) if len(bases) == len(rows) else float("nan")
    k = sum(round(f["test"]["accuracy"] * f["test"]["n"]) for f in rows)
    n = sum(f["test"]["n"] for f in rows)
    lo, hi = wilson_interval(k, n)
    if base != base:   # no baseline runs for these seeds (--baseline)
        return f"| {name} | {size} | {len(rows)} | **{mean:.1f}%** | {k}/{n} ({lo * 100:.1f}–{hi * 100:.1f}) | – | – |"
    return (f"| {name} | {size} | {len(rows)} | **{mean:.1f}%** | {k}/{n} ({lo * 100:.1f}–{hi * 100:.1f}) | "
            f"{base:.1f}% | {mean - base:+.1f} |")


HEADER = ["| data | seed | px | Lite0 test top-1 (95% CI) | MobileNetV2 default, same photos | int8 agreement, held-out "
          "(95% CI) | int8 Δ top-1 pp (95% CI) | export's int8/float | int8/float, here | int8 / MobileNetV2 int8 "
          "160 px | train s | export s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / ".edgecls-cache" / "lite0")
    ap.add_argument("--baseline", type=Path, default=ROOT / ".edgecls-cache" / "heldout")
    ap.add_argument("--data", default="flowers")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--sizes", default="224")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    st = Stages(a.work, fresh=False)
    link_lite0(a.work)
    lines = [f"## EfficientNet-Lite0 against the MobileNetV2 default (`python benchmarks/bench_lite0.py "
             f"{' '.join(sys.argv[1:]).replace(str(ROOT) + '/', '')}`)", ""] + HEADER
    sums, cmds = [], []
    for name in a.data.split(","):
        for size in (int(s) for s in a.sizes.split(",")):
            rows, bases = [], []
            for seed in (int(s) for s in a.seeds.split(",")):
                f = seed_figures(st, a, name, size, seed)
                if f is None:
                    lines.append(f"| {name} | {seed} | {size} | train failed | | | | | | | | |")
                    continue
                base = baseline_test(a, name, seed)
                rows.append(f)
                cmds += [f"- `{f['train_cmd']}`", f"- `{f['export_cmd']}`"] if not cmds else []
                bases += [base] if base else []
                lines.append(seed_row(name, f, base))
            if rows:
                sums.append(summary(name, size, rows, bases))
    lines += ["", "| data | px | seeds | mean Lite0 test top-1 | pooled (95% CI; seeds' test photos overlap) | "
              "mean MobileNetV2 default | difference pp |", "|---|---|---|---|---|---|---|", *sums, "",
              "Commands (the first seed; the others differ by --seed, --out):", *cmds, "", host_line()]
    publish(a.out or HERE / "results" / f"lite0-{a.data.replace(',', '-')}.md", lines)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
