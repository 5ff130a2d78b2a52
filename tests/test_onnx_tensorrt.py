"""The TensorRT-ready int8 ONNX (`export --target tensorrt`, artifact onnx-int8-trt: convert/onnx_symmetric.py):
symmetric int8 everywhere (every zero point 0), Q/DQ on every conv input and weight, an opset TensorRT parses.
The whole export with it runs in tests/test_imx500.py's slow test (one export for both accelerators)."""
from __future__ import annotations

import json

from edgecls.dataset import load_arrays
from edgecls.rundir import load_run


def calibration(tiny_run, n=8):
    run = load_run(tiny_run)
    return load_arrays(run.data_root, run.split_items("train")[:n], run.spec)[0]


def test_symmetric_onnx_has_zero_zero_points_and_qdq_on_every_conv(tiny_run, digits_bundle, tmp_path):
    from edgecls.convert import onnx_export, onnx_symmetric

    dest = onnx_symmetric.to_int8(digits_bundle / "model_float.onnx", calibration(tiny_run), tmp_path / "trt.onnx")
    report = onnx_symmetric.qdq_report(dest)
    convs = [o for o in report["ops"] if o["op"] == "Conv"]
    assert len(convs) == 52                     # MobileNetV2: every one of its convolutions, depthwise included
    assert report["unquantized"] == []          # each conv/gemm's input and weight come through a DequantizeLinear
    assert report["zero_points"] > 2 * len(convs)
    assert report["nonzero_zero_points"] == 0   # TensorRT's int8 is symmetric
    assert set(report["zero_point_types"]) <= {"int8", "int32"}   # int32: the biases; no uint8 anywhere
    assert 13 <= report["opset"] <= 20          # per-channel DequantizeLinear needs 13; TensorRT 10 parses to 20
    meta = json.loads({p.key: p.value for p in __import__("onnx").load(str(dest)).metadata_props}[onnx_export.QUANT_META])
    assert meta["symmetric"] and meta["target"] == "tensorrt" and meta["activations"] == meta["weights"] == "int8"


def test_the_check_catches_an_asymmetric_file(tiny_run, digits_bundle, tmp_path):
    """The same check on the x86 int8 ONNX (uint8 activations, zero point 128-ish): refused, so it can fail."""
    from edgecls.convert import onnx_export, onnx_symmetric

    dest = onnx_export.to_int8(digits_bundle / "model_float.onnx", calibration(tiny_run), tmp_path / "x86.onnx",
                               target="x86")
    report = onnx_symmetric.qdq_report(dest)
    assert report["nonzero_zero_points"] > 0 and "uint8" in report["zero_point_types"]


def test_tensorrt_is_opt_in_and_brings_its_float_twin():
    """Default exports build no onnx-int8-trt; --target tensorrt (or --formats tensorrt) builds it with onnx-float,
    the float file it is held to (edgecls.formats: Format.twin), as the device's eval and shadow pair them."""
    from pathlib import Path

    from edgecls.convert.export import ExportOptions
    from edgecls.device.evaluate import agreement_reference

    assert "onnx-int8-trt" not in ExportOptions(Path("run")).keys()
    assert ExportOptions(Path("run"), targets=("tensorrt",)).keys()[-2:] == ["onnx-int8", "onnx-int8-trt"]
    keys = ExportOptions(Path("run"), families=("tensorrt",)).keys()
    assert keys == ["onnx-float", "onnx-int8-trt"]
    assert agreement_reference("onnx-int8-trt", keys) == "onnx-float"
