"""The TensorRT int8 ONNX's activation ranges: min/max, percentile or entropy, from the same weights (issue 34).

    python benchmarks/bench_trt_calibration.py RUN_DIR [RUN_DIR ...] [--methods minmax,percentile,entropy]

For each run, `edgecls export RUN --formats tensorrt` runs as far as the onnx-int8-trt builder (the same GPTQ-rounded
float ONNX and calibration images as the real export); there each method builds the symmetric QDQ file
(convert/onnx_symmetric.py: to_int8) and is scored against the Keras float model on the val split (what export's
choice may look at) and the test split (held out from everything). Nothing is written: the export stops there.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Measured(Exception):
    """Stops the export once the builder under study has been measured."""


def measure(run: Path, methods: list[str]) -> dict:
    import edgecls.convert.export as ex
    from edgecls.convert import onnx_symmetric
    from edgecls.metrics import agreement_count, mean_tv

    rows: dict[str, dict] = {}

    def builder(ctx):
        for method in methods:
            path = ctx.candidate("onnx-int8-trt", method, ".onnx")
            t0 = time.time()
            onnx_symmetric.to_int8(ctx.ptq_onnx(), ctx.calib, path, method)
            model, row = ctx.model_for("onnx-int8-trt", path, {}), {"seconds": round(time.time() - t0, 1)}
            for split in ("val", "test"):
                probs, ref = model.predict(ctx.images.x[split]), ctx.images.keras[split]
                a = agreement_count(probs.argmax(1), ref.argmax(1))
                row[split] = (a["agreed"], a["images"])
                row[f"{split}_tv"] = round(mean_tv(probs, ref), 5)
            rows[method] = row
        raise Measured()

    saved = ex.BUILDERS["onnx-int8-trt"]
    ex.BUILDERS["onnx-int8-trt"] = (builder, ())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ex.export(ex.ExportOptions(run_dir=run, out=Path(tmp) / "bundle", families=("tensorrt",), allow_drop=True,
                                       show_progress=False))
    except Measured:
        pass
    finally:
        ex.BUILDERS["onnx-int8-trt"] = saved
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--methods", default="minmax,percentile,entropy")
    args = ap.parse_args()
    print("| run | ranges | val agreement | val mean TV | test agreement | test mean TV | quantize s |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        for method, r in measure(run, args.methods.split(",")).items():
            print(f"| {run.name} | {method} | {r['val'][0]}/{r['val'][1]} | {r['val_tv']} | {r['test'][0]}/{r['test'][1]} "
                  f"| {r['test_tv']} | {r['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
