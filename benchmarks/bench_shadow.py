"""What `--shadow N` costs the live loop: `edgecls run` FPS with and without it, same video, same model, one run.

    python benchmarks/bench_shadow.py BUNDLE [--every 10] [--frames 3000] [--repeats 5] [--threads N] [--target 0.95]

Each run is the real command, `edgecls run BUNDLE VIDEO --json --loop --max-frames F [--shadow N]`, in a
subprocess; its FPS is the one its summary reports (first capture to last result: start-up excluded). The runs
alternate plain / shadow `--repeats` times (A B A B …) because on a shared machine the absolute speed swings up
to 2x from one minute to the next: neighbours in time see the same load. The ratio reported is shadow over
plain for each adjacent pair, then their median (and the ratio of the medians), with the CPU time per frame of
both (all threads of the process: what the shadow's float model adds, whatever the wall clock does). Prints a
table and a JSON line; exit 1 if the median pair ratio is below --target.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_pipeline import make_video

VIDEO_SIZE = (640, 480)   # a camera's VGA frames, made from the shared flowers photos


def run_once(bundle: Path, video: Path, frames: int, threads: int | None, every: int | None) -> dict:
    cmd = [sys.executable, "-m", "edgecls", "run", str(bundle), str(video), "--json", "--loop", "--max-frames",
           str(frames), "--format", "tflite", "--precision", "int8"]
    cmd += ["--threads", str(threads)] if threads else []
    cmd += ["--shadow", str(every)] if every else []
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.splitlines()[-1])["summary"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--frames", type=int, default=3000, help="frames per run (the video loops)")
    ap.add_argument("--repeats", type=int, default=5, help="plain/shadow pairs")
    ap.add_argument("--threads", type=int, default=None, help="live interpreter threads (default: the run's, all cores)")
    ap.add_argument("--target", type=float, default=0.95)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "flowers.avi", VIDEO_SIZE, 600)
        run_once(a.bundle, video, 200, a.threads, a.every)   # warm the page cache and the imports
        plain, shadow = [], []
        for i in range(a.repeats):
            plain.append(run_once(a.bundle, video, a.frames, a.threads, None))
            shadow.append(run_once(a.bundle, video, a.frames, a.threads, a.every))
            print(f"pair {i + 1}: plain {plain[-1]['fps']:.1f} FPS, --shadow {a.every} {shadow[-1]['fps']:.1f} FPS "
                  f"({shadow[-1]['shadow']['pairs']} pairs, {shadow[-1]['shadow']['skipped']} skipped)", flush=True)
    pair_ratios = [s["fps"] / p["fps"] for p, s in zip(plain, shadow)]
    fps_p, fps_s = np.median([r["fps"] for r in plain]), np.median([r["fps"] for r in shadow])
    cpu_p = np.median([r["cpu_ms_per_frame"] for r in plain])
    cpu_s = np.median([r["cpu_ms_per_frame"] for r in shadow])
    p95_p = np.median([r["latency_ms_p95"] for r in plain])
    p95_s = np.median([r["latency_ms_p95"] for r in shadow])
    out = {"bundle": str(a.bundle), "every": a.every, "frames": a.frames, "repeats": a.repeats, "threads": a.threads,
           "fps_plain_median": round(float(fps_p), 1), "fps_shadow_median": round(float(fps_s), 1),
           "ratio_of_medians": round(float(fps_s / fps_p), 4), "pair_ratios": [round(r, 4) for r in pair_ratios],
           "median_pair_ratio": round(float(np.median(pair_ratios)), 4),
           "cpu_ms_per_frame_plain": round(float(cpu_p), 3), "cpu_ms_per_frame_shadow": round(float(cpu_s), 3),
           "latency_ms_p95_plain": round(float(p95_p), 2), "latency_ms_p95_shadow": round(float(p95_s), 2),
           "skipped": [r["shadow"]["skipped"] for r in shadow], "pairs": [r["shadow"]["pairs"] for r in shadow]}
    print(f"median FPS: plain {fps_p:.1f}, --shadow {a.every} {fps_s:.1f} → {fps_s / fps_p * 100:.1f}%; "
          f"median of pair ratios {np.median(pair_ratios) * 100:.1f}%; CPU ms/frame {cpu_p:.3f} → {cpu_s:.3f}; "
          f"latency p95 {p95_p:.2f} → {p95_s:.2f} ms")
    print(json.dumps(out))
    sys.exit(0 if out["median_pair_ratio"] >= a.target else 1)


if __name__ == "__main__":
    main()
