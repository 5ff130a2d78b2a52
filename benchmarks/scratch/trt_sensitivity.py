"""Scratch (issue 34): which conv, kept float, moves the symmetric int8 ONNX closest to float? One quantize_static
per excluded node (symmetric, per-channel, min/max ranges as convert/onnx_symmetric.py), scored on val and test
agreement with the float ONNX (ORT_ENABLE_BASIC: the QDQ graph as written).

    python benchmarks/scratch/trt_sensitivity.py RUN_DIR FLOAT_ONNX [--calib 200]
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--calib", type=int, default=200)
    a = ap.parse_args()
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgecls.convert.context import calibration_subset
    from edgecls.convert.onnx_export import calibration_reader
    from edgecls.convert.onnx_symmetric import QUANTIZED_OPS, RANGE_OPS
    from edgecls.dataset import load_arrays
    from edgecls.rundir import load_run

    run = load_run(a.run)
    x = {s: load_arrays(run.data_root, run.split_items(s), run.spec)[0].astype(np.float32) for s in ("train", "val", "test")}
    items = run.split_items("train")
    calib = x["train"][[items.index(it) for it in calibration_subset(items, a.calib)]]

    def predict(path, xs):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: xs})[0]

    ref = {s: predict(a.onnx, x[s]).argmax(1) for s in ("val", "test")}
    tmp = Path(tempfile.mkdtemp())
    pre = tmp / "pre.onnx"
    quant_pre_process(str(a.onnx), str(pre), skip_symbolic_shape=False)
    convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in QUANTIZED_OPS]
    for name in [None, *convs]:
        out = tmp / "q.onnx"
        quantize_static(str(pre), str(out), calibration_reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=[*QUANTIZED_OPS, *RANGE_OPS], nodes_to_exclude=[name] if name else [],
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        cells = [f"{s} {int((predict(out, x[s]).argmax(1) == ref[s]).sum())}/{len(ref[s])}" for s in ("val", "test")]
        print(name or "(all int8)", *cells, flush=True)


if __name__ == "__main__":
    main()
