"""int8 TFLite PTQ against the number of calibration images, on one training run.

    python benchmarks/scratch/calib_sweep.py RUN_DIR [--sizes 200,500,1442] [--work DIR]

Converts the run's float model once to a SavedModel, then to full-integer TFLite with the first N training
images (round-robin over classes, as `edgecls export --calib-samples N` picks them) for each N, and prints
per N: the conversion time and, on the val and test splits, float and int8 top-1, top-1 agreement and the
mean / max |Δp| of int8 vs float probabilities (through the device runtime, as the export's parity check).
One JSON line per N.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def sizes(text: str) -> list[int]:
    try:
        out = [int(s) for s in text.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, comma-separated: {text!r}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--sizes", default="200,500,1442", type=sizes, help="calibration image counts, comma-separated")
    ap.add_argument("--work", help="keep the SavedModel and the .tflite files here (default: a temp folder)")
    args = ap.parse_args()

    from edgecls.convert import tflite
    from edgecls.convert.context import calibration_subset, keras_predictor, predict_all, runtime_model
    from edgecls.convert.export import load_keras_model
    from edgecls.dataset import load_arrays
    from edgecls.rundir import load_run

    run = load_run(args.run_dir)
    model = load_keras_model(run.model_path)
    keras = keras_predictor(model)
    splits = {}
    for split in ("val", "test"):
        x, y = load_arrays(run.data_root, run.split_items(split), run.spec)
        p = np.concatenate([keras(x[i:i + 32]) for i in range(0, len(x), 32)]) if len(x) else np.zeros((0, 1))
        splits[split] = (x, y, p)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        saved = tflite.save_batch1(model, run.spec, work / "saved_float")
        for n in args.sizes:
            calib, _ = load_arrays(run.data_root, calibration_subset(run.split_items("train"), n), run.spec)
            t = time.perf_counter()
            path = work / f"int8_calib{n}.tflite"
            path.write_bytes(tflite.to_int8(saved, calib))
            rec = {"calib_samples": len(calib), "convert_s": round(time.perf_counter() - t, 1)}
            m = runtime_model("tflite-int8", path, run.spec, len(run.labels), None)
            for split, (x, y, pf) in splits.items():
                if not len(x):
                    continue
                pq = predict_all(m, x)
                rec[split] = {"float_top1": round(float((pf.argmax(1) == y).mean()), 4),
                              "int8_top1": round(float((pq.argmax(1) == y).mean()), 4),
                              "agreement": round(float((pq.argmax(1) == pf.argmax(1)).mean()), 4),
                              "mean_abs_dp": round(float(np.abs(pq - pf).mean()), 5),
                              "max_abs_dp": round(float(np.abs(pq - pf).max()), 4)}
            print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    from edgecls.errors import EdgeclsError

    try:
        sys.exit(main())
    except EdgeclsError as e:   # a folder that is not a run, a corrupt model: one line, exit 1
        sys.exit(f"calib_sweep: error: {e}")
