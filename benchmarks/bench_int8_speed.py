"""int8 vs float speed of one bundle: the interleaved latency ratio int8/float per family and thread count.

    python benchmarks/bench_int8_speed.py BUNDLE_OR_RUN [--threads 1,2] [--rounds 400] [--json]

A run folder means its `bundle/`. Each (family, threads) pair loads the float and the int8 artifact through
the device runtime (`Model.predict`: the input feed, invoke, dequantise — what the camera loop pays) and
times them in turns, A B A B …, no other model loaded (`edgecls.device.bench.int8_vs_float_ms`, the ratio
`edgecls bench` reports as `vs float`), so both see the same machine load
and the ratio holds on a busy machine even when the milliseconds do not. Issue 18's target: int8 TFLite
≤ 0.65× float TFLite at 1 thread; int8 ONNX no slower than float ONNX.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecls.bundle import MANIFEST, load_bundle
from edgecls.device.bench import bench_input, int8_vs_float_ms
from edgecls.formats import FAMILIES


def bundle_path(path: Path) -> Path:
    return path if (path / MANIFEST).is_file() or not (path / "bundle" / MANIFEST).is_file() else path / "bundle"


def ratios(bundle_dir: Path, threads: list[int], rounds: int, warmup: int = 10) -> list[dict]:
    bundle = load_bundle(bundle_dir)
    x = bench_input(bundle)
    rows = []
    for family in FAMILIES:
        if not {f"{family}-float", f"{family}-int8"} <= set(bundle.artifacts):
            continue
        for t in threads:
            float_ms, int8_ms = int8_vs_float_ms(bundle, family, t, x, rounds, warmup)
            rows.append({"family": family, "threads": t, "float_ms": round(float_ms, 3), "int8_ms": round(int8_ms, 3),
                         "ratio": round(int8_ms / float_ms, 3), "rounds": rounds,
                         "int8_method": bundle.artifacts[f"{family}-int8"].meta.get("method"),
                         "int8_input_feed": (bundle.artifacts[f"{family}-int8"].meta.get("input") or {}).get("feed",
                                                                                                           "values")})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path, help="bundle folder (edgecls.json) or a run folder with bundle/")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = ratios(bundle_path(args.path), [int(t) for t in args.threads.split(",")], args.rounds)
    if args.json:
        print(json.dumps({"bundle": str(bundle_path(args.path)), "rows": rows}, indent=2))
        return 0
    print(f"{'family':8} {'threads':>7} {'float ms':>9} {'int8 ms':>8} {'int8/float':>10}  int8 method (input feed)")
    for r in rows:
        print(f"{r['family']:8} {r['threads']:>7} {r['float_ms']:>9.2f} {r['int8_ms']:>8.2f} {r['ratio']:>10.3f}  "
              f"{r['int8_method']} ({r['int8_input_feed']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
