"""`edgecls run` end to end vs a bare decode → OpenCV resize → invoke loop, per frame size and thread count.

    python benchmarks/bench_pipeline.py BUNDLE [--sizes 640x480,1280x720,1920x1080] [--threads 1,2]
                                               [--frames 200] [--repeats 3] [--shadow 10] [--target 0.90] [--json]

Videos (MJPG) are made from the shared flowers photos (real pictures, scaled to each size). The bare loop is the
least a Python program can do per frame (OpenCV decode, OpenCV INTER_AREA to the model size, LiteRT
set_tensor/invoke/get_tensor on the bundle's int8 TFLite artifact): issue 29's baseline. The pipeline is the real
command, `edgecls run BUNDLE VIDEO --json` in a subprocess, with its start-up exam (verify on, the default), and
again with `--shadow N`; its FPS is the one its summary reports (first capture to last result: interpreter
start-up and the exam are excluded). The three are run in turn (bare, run, run --shadow, bare, …) `--repeats`
times and the medians compared: on a shared machine absolute FPS swings with the others' load, and interleaving
makes all three feel the same swings. Per-stage milliseconds (decode, the exact resize vs OpenCV's, invoke, the
JSON output) come from one more in-process pass over the same video through the pipeline's own parts.
Prints a table and a JSON line; exit 1 if `edgecls run` falls below --target of the bare loop anywhere.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgecls.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
# Named, not the bundle's default_artifact: that is the ONNX one when no int8 artifact passed the gate.
ARTIFACT = ("tflite", "int8")
FLOWERS = Path(os.environ.get("EDGECLS_SHARED", ROOT.parent / "shared")) / "data" / "flowers"


def make_video(dest: Path, size: tuple[int, int], frames: int) -> Path:
    """Real photos (the shared flowers, every 7th in turn) scaled to `size`, as an MJPG AVI."""
    photos = sorted(FLOWERS.glob("*/*.jpg"))
    w = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for i in range(frames):
        w.write(cv2.resize(cv2.imread(str(photos[(7 * i) % len(photos)])), size, interpolation=cv2.INTER_CUBIC))
    w.release()
    return dest


def bare_loop(bundle_dir: Path, video: Path, threads: int) -> dict:
    """decode → OpenCV resize → invoke with the bundle's int8 TFLite artifact: FPS and CPU ms per frame."""
    from edgecls.device.model.runtime import tflite_interpreter_class

    b = load_bundle(bundle_dir)
    Interpreter, _ = tflite_interpreter_class()
    interp = Interpreter(model_path=str(b.artifact(*ARTIFACT).path), num_threads=threads)
    interp.allocate_tensors()
    art = b.artifact(*ARTIFACT)   # a bundle with an embedding output names which output is the probabilities
    probabilities = (art.meta.get("outputs") or {}).get("probabilities", 0)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[probabilities]
    size, rgb, dtype = (b.spec.width, b.spec.height), b.spec.color_order == "RGB", inp["dtype"]
    cap = cv2.VideoCapture(str(video))
    n, t0, cpu0 = 0, None, 0.0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if t0 is None:
            t0, cpu0 = time.perf_counter(), time.process_time()
        shrink = img.shape[0] > size[1] and img.shape[1] > size[0]
        x = cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if rgb:
            x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
        # edgecls models take raw pixels (uint8 I/O: scale 1, zero point 0), so these casts are exact.
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
    return {"fps": (n - 1) / wall, "cpu_ms": cpu * 1000.0 / (n - 1), "frames": n}


def edgecls_run(bundle_dir: Path, video: Path, threads: int, extra: tuple[str, ...] = ()) -> dict:
    p = subprocess.run([sys.executable, "-m", "edgecls", "run", str(bundle_dir), str(video), "--json",
                        "--format", ARTIFACT[0], "--precision", ARTIFACT[1], "--threads", str(threads), *extra],
                       capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"edgecls run failed: {p.stderr.strip().splitlines()[-1]}")
    s = json.loads(p.stdout.strip().splitlines()[-1])["summary"]
    if not s["self_test"].get("passed"):
        sys.exit(f"edgecls run did not pass its start-up exam: {s['self_test']}")
    return {"fps": s["fps"], "cpu_ms": s["cpu_ms_per_frame"], "frames": s["frames"]}


def stage_times(bundle_dir: Path, video: Path, threads: int) -> dict:
    """Median ms per frame of each stage, through the pipeline's own parts (source, prepare, model, output)."""
    from edgecls.device.model.classifier import Classifier
    from edgecls.device.output.outputs import JsonLinesOutput
    from edgecls.device.capture.sources import open_source
    from edgecls.device.output.stats import LiveStats
    from edgecls.preprocess import prepare

    net = Classifier(bundle_dir, *ARTIFACT, threads=threads)
    size, out, stats = (net.spec.width, net.spec.height), JsonLinesOutput(io.StringIO()), LiveStats()
    times: dict[str, list[float]] = {k: [] for k in ("decode", "resize_exact", "resize_opencv", "invoke", "outputs")}
    frames = iter(open_source(str(video)))
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        if frame is None:
            break
        t1 = time.perf_counter()
        pixels = prepare(frame.image, net.spec, frame.order)
        t2 = time.perf_counter()
        cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA)
        t3 = time.perf_counter()
        net.model.predict(pixels[None])
        t4 = time.perf_counter()
        result = net.classify(frame)
        t5 = time.perf_counter()
        out.render(frame, result, stats, None)
        t6 = time.perf_counter()
        out.stream.seek(0)
        out.stream.truncate()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5)):
            times[key].append(dt * 1000.0)
    return {k: round(float(np.median(v[1:])), 3) for k, v in times.items()}


def compare(bundle: Path, video: Path, threads: int, repeats: int, shadow: int) -> dict:
    """Bare, run and run --shadow in turn, `repeats` times: the medians and the ratios to bare."""
    runs: dict[str, list[dict]] = {"bare": [], "run": [], "shadow": []}
    for _ in range(repeats):
        runs["bare"].append(bare_loop(bundle, video, threads))
        runs["run"].append(edgecls_run(bundle, video, threads))
        runs["shadow"].append(edgecls_run(bundle, video, threads, ("--shadow", str(shadow))))
    med = {k: float(np.median([r["fps"] for r in v])) for k, v in runs.items()}
    cpu = {k: float(np.median([r["cpu_ms"] for r in v])) for k, v in runs.items()}
    return {"fps": {k: round(v, 1) for k, v in med.items()}, "cpu_ms": {k: round(v, 3) for k, v in cpu.items()},
            "ratio_run": round(med["run"] / med["bare"], 3), "ratio_shadow": round(med["shadow"] / med["bare"], 3),
            "all_fps": {k: [round(r["fps"], 1) for r in v] for k, v in runs.items()}}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--sizes", default="640x480,1280x720,1920x1080")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shadow", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.90)
    args = ap.parse_args()
    cv2.setNumThreads(1)   # the bare loop's resize on one core, as edgecls's exact one is
    b = load_bundle(args.bundle)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in parse_sizes(args.sizes):
            video = make_video(Path(tmp) / f"{size[0]}x{size[1]}.avi", size, args.frames)
            for threads in (int(t) for t in args.threads.split(",")):
                row = {"size": f"{size[0]}x{size[1]}", "threads": threads,
                       "stages_ms": stage_times(args.bundle, video, threads),
                       **compare(args.bundle, video, threads, args.repeats, args.shadow)}
                rows.append(row)
                print_row(row, flush=True)
    low = [f"{r['size']}/{r['threads']}t" for r in rows if min(r["ratio_run"], r["ratio_shadow"]) < args.target]
    print(f"model tflite-int8 {b.spec.width}x{b.spec.height} ({b.spec.resampler} resampler), median of "
          f"{args.repeats} interleaved repeats; target: edgecls run ≥ {args.target * 100:.0f}% of bare: "
          + (f"missed at {', '.join(low)}" if low else "met everywhere"))
    print(json.dumps({"model": f"{b.spec.width}x{b.spec.height}", "artifact": "-".join(ARTIFACT), "repeats": args.repeats,
                      "frames": args.frames, "shadow": args.shadow, "rows": rows, **overall(rows)}))
    sys.exit(1 if low else 0)


def overall(rows: list[dict]) -> dict:
    """The figures make_results.py's summary row reads: the worst ratios, and the first row's FPS."""
    return {"ratio": min(r["ratio_run"] for r in rows),
            "cpu_ratio": round(min(r["cpu_ms"]["bare"] / r["cpu_ms"]["run"] for r in rows), 4),
            "bare_fps": rows[0]["all_fps"]["bare"], "pipeline_fps": rows[0]["all_fps"]["run"]}


def print_row(r: dict, flush: bool = False) -> None:
    s, f = r["stages_ms"], r["fps"]
    print(f"{r['size']:>9} {r['threads']}t  bare {f['bare']:6.1f} FPS  run {f['run']:6.1f} ({r['ratio_run'] * 100:5.1f}%)"
          f"  --shadow {f['shadow']:6.1f} ({r['ratio_shadow'] * 100:5.1f}%)  | ms: decode {s['decode']:.2f}, resize "
          f"exact {s['resize_exact']:.2f} / OpenCV {s['resize_opencv']:.2f}, invoke {s['invoke']:.2f}, "
          f"outputs {s['outputs']:.3f}", flush=flush)


if __name__ == "__main__":
    main()
