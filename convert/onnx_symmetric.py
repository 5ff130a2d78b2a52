"""ONNX int8 for TensorRT (`export --target tensorrt`, artifact onnx-int8-trt): an explicitly quantized QDQ model.

TensorRT 10.1 deprecated its implicit int8 calibrator and TensorRT 11 removes it: int8 must arrive as Q/DQ nodes
in the ONNX, and TensorRT's int8 is symmetric (every zero point 0). So, with onnxruntime's `quantize_static`:
- activations int8, symmetric (ActivationSymmetric); weights int8, per output channel, symmetric (WeightSymmetric);
- Q/DQ only where TensorRT fuses them into an int8 kernel: the inputs and weights of Conv, Gemm and MatMul
  (`QUANTIZED_OPS`), each input's range taken after its ReLU/ReLU6 (`RANGE_OPS`: onnxruntime then calibrates the
  activation's output, [0, 6] for MobileNetV2, as TensorRT's Conv+ReLU fusion expects; with the convs alone it
  calibrated the pre-activation tensor, up to ±17, and the tiny digits model's held-out agreement fell from 83% to
  58%). Add, pooling, Reshape and Softmax get no Q/DQ of their own: TensorRT runs them on the
  dequantized tensors (fp16/fp32) or propagates the neighbouring scales itself; onnxruntime placing a Q/DQ pair on
  each would add scales TensorRT cannot fuse (a QDQ on a residual Add's inputs only helps when both branches share
  it). Softmax stays float: its output is the probabilities the bundle promises;
- the graph keeps the float ONNX's opset (onnx_export.OPSET, 17): per-channel DequantizeLinear needs 13, and
  TensorRT 10's parser takes 9-20.
Calibrated like the other int8 artifacts (the same images, min/max or percentile ranges), measured against the float
ONNX on the held-out photos on onnxruntime's CPU provider, judged by the same gate. `tools/tensorrt_check.py` builds
and runs a TensorRT engine from it where a GPU is at hand.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from edgecls.convert.onnx_export import QUANT_META, calibration_reader

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")   # where TensorRT fuses Q/DQ into an int8 kernel
RANGE_OPS = ("Clip", "Relu")                  # quantized too, so a conv input's range is the activation's output
TARGET = "tensorrt"
METHODS = {"ptq": "minmax", "ptq-percentile": "percentile"}   # candidate name → activation ranges


def to_int8(float_onnx: Path, calib: Iterable[np.ndarray], dest: Path, method: str = "minmax") -> Path:
    """Symmetric int8 QDQ of `float_onnx` (see the module docstring); the choice recorded in QUANT_META."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=False)
        quantize_static(str(pre), str(out), calibration_reader(calib), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=[*QUANTIZED_OPS, *RANGE_OPS],
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile,
                                          "entropy": CalibrationMethod.Entropy}[method],
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        model = onnx.load(str(out))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, QUANT_META: json.dumps(
        {"target": TARGET, "activations": "int8", "weights": "int8", "format": "QDQ", "per_channel": True,
         "symmetric": True, "quantized_ops": list(QUANTIZED_OPS), "calibration": method})})
    dest.write_bytes(model.SerializeToString())
    return dest


def routes(ctx) -> dict:
    """export's candidates (convert/export.py: choose): min/max ranges, then percentile ones, each of the float
    ONNX whose weights PTQ rounded (Context.ptq_onnx: the same weights the other int8 artifacts start from)."""
    def route(name: str, method: str):
        def build():
            path = ctx.candidate("onnx-int8-trt", name, ".onnx")
            to_int8(ctx.ptq_onnx(), ctx.calib, path, method)
            return path, {"float_ops": [], "weight_rounding": ctx.rounded()[1]}
        return build
    return {name: route(name, method) for name, method in METHODS.items()}


# ---------------------------------------------------------------- what a TensorRT parser needs (checked by tests)

def qdq_report(path: Path) -> dict:
    """What the file holds: every Q/DQ zero point's value, and for each op in QUANTIZED_OPS whether its data input
    and its weight each come through a DequantizeLinear (TensorRT fuses only those)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    zero_points = [consts[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]

    def through_dq(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    ops = [{"name": n.name, "op": n.op_type, "input_dq": through_dq(n.input[0]), "weight_dq": through_dq(n.input[1])}
           for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    return {"opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
            "zero_points": len(zero_points),
            "nonzero_zero_points": int(sum(int(np.count_nonzero(z)) for z in zero_points)),
            "zero_point_types": sorted({str(z.dtype) for z in zero_points}),
            "ops": ops, "unquantized": [o["name"] for o in ops if not (o["input_dq"] and o["weight_dq"])]}
