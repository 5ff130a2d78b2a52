"""Does keeping the classifier's tail float help int8 parity? (issue 18, measured 2026-12-01; not adopted)

    python benchmarks/scratch/float_tail.py RUN

From the run's calibrated float TFLite (the export's own path), four int8 models: all-int8, the two ops the
QuantizationDebugger ranks worst kept float (the search's usual step), and each of those with the final
FULLY_CONNECTED and SOFTMAX also float and a float32 output (no answer decided by a tie of the uint8 output).
Prints the flips against the Keras model's top-1 and the net test top-1 change per split.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main(run_dir: Path) -> None:
    import tensorflow as tf
    from tensorflow.lite.python import convert as lite_convert
    from tensorflow.lite.python import util as lite_util

    from edgecls.convert import tflite
    from edgecls.convert.context import Context, keras_predictor, load_images
    from edgecls.convert.export import ExportOptions, check_images, load_keras_model
    from edgecls.rundir import load_run

    run = load_run(run_dir)
    opts = ExportOptions(run_dir=run_dir, show_progress=False)
    items, _ = check_images(run)
    model = load_keras_model(run.model_path)
    images, calib = load_images(run, items, opts, keras_predictor(model))
    ctx = Context(opts, model, run.spec, run.labels, Path(tempfile.mkdtemp()), calib, images)
    calibrated, samples = tflite.calibrate(ctx.saved_model("float"), calib, "uint8")
    worst = [name for name, _ in tflite.ranked_op_errors(calibrated, samples)[:2]]
    interp = tf.lite.Interpreter(model_content=calibrated)
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    tail = [names[o["outputs"][0]] for o in ops if o["op_name"] in ("FULLY_CONNECTED", "SOFTMAX")][-2:]
    for label, float_ops, float_out in (("all-int8", [], False), ("worst 2 float", worst, False),
                                        ("tail float", tail, True), ("worst 2 + tail float", worst + tail, True)):
        if float_out:
            quantized = lite_convert.mlir_quantize(calibrated, denylisted_nodes=float_ops)
            data = tflite.with_input_feed(lite_util.modify_model_io_type(quantized, tf.uint8, tf.float32),
                                          tflite.input_feed(calibrated))
        else:
            data = tflite.quantize_guarded(calibrated, float_ops, "uint8")
        path = ctx.work / f"{len(float_ops)}-{float_out}.tflite"
        path.write_bytes(data)
        m = ctx.model_for("tflite-int8", path)
        parts = []
        for split in ("train", "val", "test"):
            pred, ref, y = m.predict(images.x[split]).argmax(1), images.keras[split].argmax(1), images.y[split]
            parts.append(f"{split} flips {int((pred != ref).sum())}/{len(ref)} "
                         f"net {int((pred == y).sum()) - int((ref == y).sum()):+d}")
        print(f"{label}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
