"""Scratch (issue 34): which symmetric-int8 QDQ choices keep the TensorRT ONNX closest to float on held-out photos.

    python benchmarks/scratch/trt_variants.py RUN_DIR FLOAT_ONNX [--calib N] [--variants a,b]
Each variant quantizes FLOAT_ONNX with onnxruntime's quantize_static (symmetric activations and per-channel weights,
as convert/onnx_symmetric.py) and is scored by top-1 agreement with the float ONNX on the run's test split and val split.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--calib", type=int, default=200)
    ap.add_argument("--variants", default="base,percentile,entropy,float-head,calib-all")
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
    x = {s: load_arrays(run.data_root, run.split_items(s), run.spec)[0] for s in ("train", "val", "test")}
    calib = x["train"][[run.split_items("train").index(it) for it in calibration_subset(run.split_items("train"), a.calib)]]

    def predict(path, xs):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        # BASIC: Q/DQ stay as they are (float conv between them) — the exact int8 arithmetic an engine like
        # TensorRT computes; ENABLE_ALL fuses them into x86 int8 kernels that saturate on CPUs without VNNI
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return np.concatenate([s.run(None, {name: xs[i:i + 16].astype(np.float32)})[0] for i in range(0, len(xs), 16)])

    ref = {s: predict(a.onnx, x[s]).argmax(1) for s in ("val", "test")}
    tmp = Path(tempfile.mkdtemp())
    pre = tmp / "pre.onnx"
    quant_pre_process(str(a.onnx), str(pre), skip_symbolic_shape=False)
    model = onnx.load(str(pre))
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    for v in a.variants.split(","):
        method = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}.get(v, CalibrationMethod.MinMax)
        data = x["train"] if v == "calib-all" else calib
        exclude = heads if v == "float-head" else []
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
        if v == "p99999-all":
            method, data = CalibrationMethod.Percentile, x["train"]
        if v == "p9999":
            method, extra["CalibPercentile"] = CalibrationMethod.Percentile, 99.99
        out = tmp / f"{v}.onnx"
        quantize_static(str(pre), str(out), calibration_reader(data), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=[*QUANTIZED_OPS, *RANGE_OPS], nodes_to_exclude=exclude,
                        calibrate_method=method, extra_options=extra)
        cells = []
        for s in ("val", "test"):
            got = predict(out, x[s]).argmax(1)
            cells.append(f"{s} {int((got == ref[s]).sum())}/{len(got)}")
        print(v, *cells, flush=True)


if __name__ == "__main__":
    main()
