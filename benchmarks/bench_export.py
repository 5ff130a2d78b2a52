"""Export benchmark: PTQ vs QAT (and auto) on one real run, side by side, with wall time.

    python benchmarks/bench_export.py RUN_DIR [--methods ptq,qat,auto] [--work DIR] [--results benchmarks/RESULTS.md]

Each method is a separate `edgecls export` process (fresh TensorFlow, real exit code, wall time measured
around it), with --allow-drop so a failing method still reports its numbers. Prints one table and
appends it to RESULTS.md. Targets from issue 3: int8 within 1.0 pp of float top-1, agreement >= 98%,
int8 TFLite <= 30% of float TFLite's size, export < 5 minutes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_export(run_dir: Path, out: Path, method: str, extra: list[str]) -> tuple[dict | None, float, str]:
    cmd = [sys.executable, "-m", "edgecls", "export", str(run_dir), "--out", str(out), "--int8-method", method,
           "--allow-drop", "--json", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return None, wall, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    return json.loads(r.stdout.strip().splitlines()[-1]), wall, ""


def rows_for(method: str, m: dict, wall: float) -> list[list[str]]:
    arts = m["artifacts"]
    keras_acc = m["report"]["keras_accuracy"]
    ratio = arts["tflite-int8"]["bytes"] / arts["tflite-float"]["bytes"] if "tflite-int8" in arts else None
    out = []
    for key in ("tflite-float", "tflite-int8", "onnx-float", "onnx-int8"):
        if key not in arts:
            continue
        a, mt = arts[key], arts[key]["metrics"]
        out.append([method, key, a.get("method", ""), f"{keras_acc * 100:.2f}", f"{mt['accuracy'] * 100:.2f}",
                    f"{(mt['accuracy'] - keras_acc) * 100:+.2f}", f"{mt['agreement'] * 100:.1f}",
                    f"{mt.get('max_abs_diff', float('nan')):.1e}" if "max_abs_diff" in mt else "",
                    f"{a['bytes'] / 1e6:.2f}", f"{ratio * 100:.1f}%" if key == "tflite-int8" and ratio else "",
                    f"{mt['latency_ms']:.2f}", f"{wall:.0f}"])
    return out


HEADER = ["method", "artifact", "chosen", "keras top-1 %", "top-1 %", "Δ pp", "agreement %", "max abs Δp",
          "MB", "int8/float size", "host ms/img", "export s"]


def markdown(rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--methods", default="ptq,qat,auto")
    ap.add_argument("--work", type=Path, default=None, help="where the bundles go (default: a temp folder)")
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    ap.add_argument("extra", nargs="*", help="more export options, after --")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-export-"))
    rows, notes = [], []
    for method in args.methods.split(","):
        m, wall, err = run_export(args.run_dir, work / method, method, args.extra)
        print(f"{method}: {'ok' if m else 'FAILED: ' + err} in {wall:.0f} s", flush=True)
        if m is None:
            notes.append(f"- {method}: failed: {err}")
            continue
        rows += rows_for(method, m, wall)
        cands = {k: a.get("candidates") for k, a in m["artifacts"].items() if a.get("candidates")}
        notes.append(f"- {method}: val-split candidates {json.dumps(cands)}")
    table = markdown(rows)
    print(table)
    print("\n".join(notes))
    run = json.loads((args.run_dir / "run.json").read_text())
    cfg = run.get("config", {})
    section = (f"\n## Export: PTQ vs QAT — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
               f"Run `{args.run_dir}`: {cfg.get('backbone')} alpha {cfg.get('alpha')} {cfg.get('img_size')} px, "
               f"{run['metrics']['test']['n'] if 'metrics' in run else '?'} test images; host "
               f"{os.cpu_count()} CPUs (shared). `python benchmarks/bench_export.py {args.run_dir}`\n\n"
               f"{table}\n\n" + "\n".join(notes) + "\n")
    with open(args.results, "a") as f:
        f.write(section)
    print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
