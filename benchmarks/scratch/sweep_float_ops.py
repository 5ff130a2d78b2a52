"""What moves int8-vs-float agreement on held-out photos: ops kept float, and the calibration set.

    python benchmarks/scratch/sweep_float_ops.py RUN_DIR [--max-ops 8] [--calib 200,all,all+augmented]
                                         [--weight-rounding nearest|gptq]

For each calibration set (the first N training images; `all` of them; `all+augmented` = every training image
plus a flipped, brightness-jittered view of each), calibrates the run's model once, ranks the ops by their int8
error (QuantizationDebugger, as the export's search does) and, for k = 0 … --max-ops ops kept float, prints the
int8 TFLite's flips against the Keras model on the held-out photos (val + test), its mean total variation
from float, and its int8/float latency ratio (1 thread, interleaved: device/bench.py interleaved_ratios).
With `--weight-rounding gptq` the weights are first rounded as the export rounds them (convert/rounding.py, on
the calibration set's first images). One JSON line per (calibration set, k). This is a study tool: the export itself never looks at test photos.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--max-ops", type=int, default=8)
    ap.add_argument("--calib", default="200")
    ap.add_argument("--weight-rounding", choices=("nearest", "gptq"), default="nearest")
    a = ap.parse_args()

    from edgecls.convert import rounding, tflite
    from edgecls.convert.context import keras_predictor, runtime_model
    from edgecls.convert.export import load_keras_model
    from edgecls.dataset import load_arrays
    from edgecls.device.bench import interleaved_ratios
    from edgecls.rundir import load_run

    run = load_run(a.run_dir)
    model = load_keras_model(run.model_path)
    keras = keras_predictor(model)
    x_train, _ = load_arrays(run.data_root, run.split_items("train"), run.spec)
    n_val = len(run.split_items("val"))
    x, _ = load_arrays(run.data_root, run.split_items("val") + run.split_items("test"), run.spec)
    ref = np.concatenate([keras(x[i:i + 32]) for i in range(0, len(x), 32)])
    rng = np.random.default_rng(0)

    def augmented(img):
        img = img[:, ::-1] if rng.random() < 0.5 else img
        return np.clip(img.astype(np.float32) * rng.uniform(0.6, 1.4), 0, 255).astype(np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        float_path = work / "float.tflite"
        float_path.write_bytes(tflite.to_float(tflite.save_batch1(model, run.spec, work / "saved_float")))
        f = runtime_model("tflite-float", float_path, run.spec, len(run.labels), 1)
        for name in a.calib.split(","):
            calib = {"all": x_train, "all+augmented": np.concatenate([x_train, np.stack([augmented(i) for i in x_train])])
                     }.get(name, x_train[:int(name)] if name.isdigit() else None)
            if calib is None:
                raise SystemExit(f"unknown --calib set {name!r}")
            source = rounding.rounded_copy(model, calib)[0] if a.weight_rounding == "gptq" else model
            saved = tflite.save_batch1(source, run.spec, work / f"saved_{name}")
            calibrated, samples = tflite.calibrate(saved, calib)
            ranked = tflite.ranked_op_errors(calibrated, samples)
            for k in range(min(a.max_ops, len(ranked)) + 1):
                path = work / f"{k}.tflite"
                path.write_bytes(tflite.quantize_guarded(calibrated, [n for n, _ in ranked[:k]]))
                q = runtime_model("tflite-int8", path, run.spec, len(run.labels), 1)
                p = q.predict(x)
                flips = p.argmax(1) != ref.argmax(1)
                tv = np.abs(p - ref).sum(1) / 2
                print(json.dumps({"calib": name, "calib_images": len(calib), "weight_rounding": a.weight_rounding,
                                  "float_ops": k,
                                  "added": ranked[k - 1][0] if k else None,
                                  "error_steps": round(ranked[k - 1][1], 3) if k else None,
                                  "held_out_flips": int(flips.sum()), "held_out": len(x),
                                  "val_flips": int(flips[:n_val].sum()), "test_flips": int(flips[n_val:].sum()),
                                  "mean_tv": round(float(tv.mean()), 4), "val_tv": round(float(tv[:n_val].mean()), 4),
                                  "latency_ratio": round(interleaved_ratios(f.predict, [q.predict], x[:1], rounds=100)[0], 3)}),
                      flush=True)


if __name__ == "__main__":
    main()
