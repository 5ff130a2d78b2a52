"""`edgecls run` end to end vs a bare decode → resize → invoke loop, same video, same model, same threads.

    python benchmarks/bench_pipeline.py BUNDLE [--video V] [--frames 300] [--threads 2] [--repeats 3]

The bare loop is the least a Python program can do per frame (OpenCV decode, the bundle's resize to the model size,
LiteRT set_tensor/invoke/get_tensor). The pipeline is the real command, `edgecls run BUNDLE VIDEO --json`
in a subprocess (sources, preprocessing contract, smoothing/top-k, JSON lines, stats); its FPS is the one it
reports in its summary (first capture to last result, so interpreter start-up is excluded on both sides).
Runs alternate bare/pipeline `--repeats` times and the best of each is compared, which damps the noise of a
shared machine. Without --video, a video is made from the last images of each class of the shared dataset.
Both loops also report CPU time per frame (all threads of the process): on a host shared with other work the
FPS of either loop swings with the others' load, while the CPU cost per frame stays put — the ratio of the
two is the robust reading of the pipeline's overhead. Prints the numbers and a JSON line; exit 1 if the
pipeline's best FPS falls below --target of the bare loop's best.
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

import cv2
import numpy as np

from edgecls import resample
from edgecls.bundle import load_bundle
from edgecls.preprocess import EXACT

ROOT = Path(__file__).resolve().parents[1]
# Named, not the bundle's default_artifact: that is the ONNX one when no int8 artifact passed the gate.
ARTIFACT = ("tflite", "int8")
DIGITS = Path(os.environ.get("EDGECLS_SHARED", ROOT.parent / "shared")) / "data" / "sign_language_digits"


def make_video(dest: Path, frames: int) -> Path:
    """Real photos (100x100, the dataset's own size), the last ones of each class in turn, as an MJPG AVI."""
    classes = sorted(p for p in DIGITS.iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.JPG"))[-20:] for c in classes]
    files = [per_class[i % len(classes)][(i // len(classes)) % 20] for i in range(frames)]
    w = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), 30, (100, 100))
    for f in files:
        w.write(cv2.resize(cv2.imread(str(f)), (100, 100)))
    w.release()
    return dest


def bare_loop(bundle_dir: Path, video: Path, threads: int) -> tuple[float, float, int]:
    """decode → resize → invoke with the bundle's int8 TFLite artifact; returns (FPS, CPU ms/frame, frames)."""
    from edgecls.device.runtime import tflite_interpreter_class

    b = load_bundle(bundle_dir)
    art = b.artifact(*ARTIFACT)
    Interpreter, _ = tflite_interpreter_class()
    interp = Interpreter(model_path=str(art.path), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    dtype = inp["dtype"]
    size = (b.spec.width, b.spec.height)
    cap = cv2.VideoCapture(str(video))
    n, t0 = 0, None
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if t0 is None:
            t0, cpu0 = time.perf_counter(), time.process_time()
        # The bundle's own resampler (edgecls.resample for "exact"), so both loops compute the same input.
        if b.spec.resampler == EXACT:
            x = resample.resize(img, *size)
        else:
            shrink = img.shape[0] > size[1] and img.shape[1] > size[0]
            x = cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if b.spec.color_order == "RGB":
            x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
        # edgecls models take raw pixels (uint8 I/O: scale 1, zero point 0), so these casts are exact. For a
        # foreign model with its normalisation outside (in_model false) the bare loop skips that step: it favours bare.
        if dtype == np.int8:
            x = (x.astype(np.int16) - 128).astype(np.int8)
        elif dtype == np.float32:
            x = x.astype(np.float32)
        interp.set_tensor(inp["index"], x[None])
        interp.invoke()
        interp.get_tensor(out["index"]).argmax()
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    cap.release()
    return (n - 1) / wall, cpu * 1000.0 / (n - 1), n


def pipeline(bundle_dir: Path, video: Path, threads: int) -> tuple[float, float, int]:
    p = subprocess.run([sys.executable, "-m", "edgecls", "run", str(bundle_dir), str(video), "--json",
                        "--format", ARTIFACT[0], "--precision", ARTIFACT[1], "--threads", str(threads)], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"edgecls run failed: {p.stderr.strip().splitlines()[-1]}")
    summary = json.loads(p.stdout.strip().splitlines()[-1])["summary"]
    return summary["fps"], summary["cpu_ms_per_frame"], summary["frames"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--video", type=Path)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.90)
    args = ap.parse_args()
    b = load_bundle(args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or make_video(Path(tmp) / "bench.avi", args.frames)
        bare, pipe = [], []
        for r in range(args.repeats):
            bare.append(bare_loop(args.bundle, video, args.threads))
            pipe.append(pipeline(args.bundle, video, args.threads))
            print(f"repeat {r + 1}: bare {bare[-1][0]:.1f} FPS ({bare[-1][1]:.3f} CPU ms/frame), edgecls run "
                  f"{pipe[-1][0]:.1f} FPS ({pipe[-1][1]:.3f} CPU ms/frame)  [{bare[-1][2]} / {pipe[-1][2]} frames]",
                  flush=True)
    best_bare, best_pipe = max(x[0] for x in bare), max(x[0] for x in pipe)
    ratio = best_pipe / best_bare
    # CPU per frame barely depends on what else runs on the machine: the check that survives a busy host.
    cpu_ratio = float(np.median([x[1] for x in bare]) / np.median([x[1] for x in pipe]))
    print(f"model tflite-int8 {b.spec.width}x{b.spec.height}, threads {args.threads}: "
          f"bare loop {best_bare:.1f} FPS, edgecls run {best_pipe:.1f} FPS → {ratio * 100:.1f}% of bare "
          f"(target ≥ {args.target * 100:.0f}%); by CPU time per frame {cpu_ratio * 100:.1f}% of bare")
    print(json.dumps({"bare_fps": [round(x[0], 2) for x in bare], "pipeline_fps": [round(x[0], 2) for x in pipe],
                      "bare_cpu_ms": [round(x[1], 3) for x in bare], "pipeline_cpu_ms": [round(x[1], 3) for x in pipe],
                      "ratio": round(ratio, 4), "cpu_ratio": round(cpu_ratio, 4), "threads": args.threads,
                      "artifact": "-".join(ARTIFACT)}))
    sys.exit(0 if ratio >= args.target else 1)


if __name__ == "__main__":
    main()
