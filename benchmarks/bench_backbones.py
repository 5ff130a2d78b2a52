"""The backbone table behind the presets (issue 32): MobileNetV2 and EfficientNet-Lite0 at two input sizes, per data
set, over the same seeds (each seed draws the split, so every row of a seed is tested on the same photos).

    python benchmarks/bench_backbones.py [--data flowers] [--seeds 1337,1,2] [--out FILE.md]

Reads the runs other benchmarks trained (nothing is trained here):
- MobileNetV2 160 px (the default): bench_rounding.py's `.edgecls-cache/heldout/runs/DATA-sSEED`, its int8 bundles
  `bundle-DATA-sSEED-gptq` and their export records;
- MobileNetV2 224 px: `.edgecls-cache/lite0/runs/mnv2-DATA-224-sSEED` (`edgecls train DATA --img-size 224 --seed S`),
  its bundle `bundle-mnv2-DATA-224-sSEED` and export record where they exist;
- Lite0 at each size: bench_lite0.py's `.edgecls-cache/lite0/runs/DATA-PX-sSEED`, bundles and export records.
Per (backbone, size): mean float test top-1 (per seed), pooled with its Wilson 95% interval, the paired difference
from MobileNetV2 160 px on the same photos (all seeds together; edgecls.metrics.paired_drop), the int8 TFLite's
held-out agreement with its float twin and its paired Δ pooled over the seeds that have a bundle, int8 latency on 1
thread against MobileNetV2 int8 160 px (one seed's bundles, every int8 model interleaved in this process), mean
train and export seconds. Writes --out (default benchmarks/results/backbones-DATA.md) and prints it.
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
from bench_recipe import test_correct  # noqa: E402
from make_results import ROOT, last_json, publish  # noqa: E402

from edgecls.metrics import agreement_text, delta_text, paired_drop, wilson_interval  # noqa: E402

HELD = ROOT / ".edgecls-cache" / "heldout"
LITE0 = ROOT / ".edgecls-cache" / "lite0"
LATENCY_ROUNDS = 60


def seeds_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def candidates(data: str, seed: int) -> dict[tuple[str, int], dict]:
    """(backbone, px) → {"run", "bundle", "export"} of one seed, for the runs that exist."""
    rows = {("MobileNetV2", 160): {"run": HELD / "runs" / f"{data}-s{seed}",
                                   "bundle": HELD / f"bundle-{data}-s{seed}-gptq",
                                   "export": HELD / f"export-{data}-s{seed}-gptq.json"},
            ("MobileNetV2", 224): {"run": LITE0 / "runs" / f"mnv2-{data}-224-s{seed}",
                                   "bundle": LITE0 / f"bundle-mnv2-{data}-224-s{seed}",
                                   "export": LITE0 / f"export-mnv2-{data}-224-s{seed}.json"}}
    for px in (160, 224):
        rows[("Lite0", px)] = {"run": LITE0 / "runs" / f"{data}-{px}-s{seed}",
                               "bundle": LITE0 / f"bundle-{data}-{px}-s{seed}",
                               "export": LITE0 / f"export-{data}-{px}-s{seed}.json"}
    return {k: v for k, v in rows.items() if (v["run"] / "run.json").is_file()}


def int8_metrics(export_record: Path | None) -> dict | None:
    if export_record is None or not export_record.is_file():
        return None
    rec = json.loads(export_record.read_text())
    m = last_json(rec["stdout"])
    art = (m or {}).get("artifacts", {}).get("tflite-int8")
    return {**art["metrics"], "export_s": rec["seconds"]} if art else None


def latency(bundles: dict[tuple[str, int], Path]) -> dict[tuple[str, int], float]:
    """int8 TFLite latency of each bundle / MobileNetV2 int8 160 px, 1 thread, interleaved call by call."""
    from edgecls.bundle import load_bundle
    from edgecls.device.bench import bench_input, interleaved_ratios
    from edgecls.device.model.runtime import load_model

    base_key = ("MobileNetV2", 160)
    if base_key not in bundles:
        return {}
    loaded = {k: load_bundle(p) for k, p in bundles.items()}
    models = {k: (load_model(b, "tflite", "int8", threads=1), bench_input(b)) for k, b in loaded.items()}
    base, x_base = models.pop(base_key)
    keys = list(models)
    ratios = interleaved_ratios(lambda _: base.predict(x_base),
                                [(lambda m, x: lambda _: m.predict(x))(*models[k]) for k in keys],
                                x_base, rounds=LATENCY_ROUNDS)
    return {base_key: 1.0, **dict(zip(keys, ratios))}


def table(data: str, seeds: list[int]) -> list[str]:
    per_seed = {s: candidates(data, s) for s in seeds}
    keys = sorted({k for c in per_seed.values() for k in c}, key=lambda k: (k[0] != "MobileNetV2", k[1]))
    base_key = ("MobileNetV2", 160)
    lat_seed = next((s for s in seeds if all((per_seed[s].get(k) or {}).get("bundle", Path("/-")).is_dir()
                                             for k in keys if k[0] == "Lite0" or k == base_key)), None)
    lat = {}
    if lat_seed is not None:
        lat = latency({k: v["bundle"] for k, v in per_seed[lat_seed].items()
                       if v.get("bundle") and v["bundle"].is_dir()})
    lines = [f"| backbone | px | seeds | mean test top-1 (per seed) | pooled (95% CI) | Δ vs MobileNetV2 160 px, paired "
             f"pp (95% CI) | int8 held-out agreement, pooled | int8 Δ top-1, pooled | int8 latency / MobileNetV2 int8 "
             f"160 px{f' (seed {lat_seed})' if lat_seed is not None else ''} | train s | export s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        have = [s for s in seeds if key in per_seed[s]]
        metas = [json.loads((per_seed[s][key]["run"] / "run.json").read_text()) for s in have]
        tests = [m["metrics"]["test"] for m in metas]
        k = sum(round(t["accuracy"] * t["n"]) for t in tests)
        n = sum(t["n"] for t in tests)
        lo, hi = wilson_interval(k, n)
        both = [s for s in have if base_key in per_seed[s]]
        if key != base_key and both:
            d = paired_drop(np.concatenate([test_correct(per_seed[s][base_key]["run"]) for s in both]),
                            np.concatenate([test_correct(per_seed[s][key]["run"]) for s in both]))
            delta = f"{delta_text(d)} (−{d['lost']} +{d['gained']}; {seeds_text(len(both))})"
        else:
            delta = "–"
        int8 = [m for m in (int8_metrics(per_seed[s][key].get("export")) for s in have) if m]
        if int8:
            agreed = sum(m["agreement_heldout"]["agreed"] for m in int8)
            images = sum(m["agreement_heldout"]["images"] for m in int8)
            lost = sum(m["drop"]["lost"] for m in int8)
            gained = sum(m["drop"]["gained"] for m in int8)
            int8_cells = [f"{agreement_text(agreed, images, interval=True)} ({seeds_text(len(int8))})",
                          f"{(gained - lost) / images * 100:+.2f} pp (−{lost} +{gained})"]
            export_s = f"{np.mean([m['export_s'] for m in int8]):.0f}"
        else:
            int8_cells, export_s = ["–", "–"], "–"
        each = ", ".join(f"{t['accuracy'] * 100:.1f}" for t in tests)
        cells = [key[0], str(key[1]), str(len(have)),
                 f"**{np.mean([t['accuracy'] for t in tests]) * 100:.1f}%** ({each})",
                 f"{k}/{n} = {k / n * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f})", delta, *int8_cells,
                 f"{lat[key]:.2f}" if key in lat else "–",
                 f"{np.mean([m['train_seconds'] for m in metas]):.0f}", export_s]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="flowers")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    command = " ".join(["python benchmarks/bench_backbones.py", *sys.argv[1:]])
    lines = [f"## Backbones and input sizes on {a.data} (`{command}`)", "", *table(a.data, seeds)]
    publish(a.out or HERE / "results" / f"backbones-{a.data}.md", lines)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
