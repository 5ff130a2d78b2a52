"""The one table of model formats. Export, the bundle, eval, run and bench all iterate over it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    key: str          # artifact key in edgecls.json
    family: str       # what --format / --formats name
    precision: str    # what --precision names
    filename: str     # file inside the bundle
    runtime: str      # which device backend runs it
    twin: str | None = None   # the float artifact an int8 one is held to (None: its family's float)
    opt_in: bool = False      # exported only when asked for (export --target / --formats), not by default


FORMATS: tuple[Format, ...] = (
    Format("tflite-float", "tflite", "float", "model_float.tflite", "litert"),
    Format("tflite-int8", "tflite", "int8", "model_int8.tflite", "litert"),
    Format("onnx-float", "onnx", "float", "model_float.onnx", "onnxruntime"),
    Format("onnx-int8", "onnx", "int8", "model_int8.onnx", "onnxruntime"),
    # Symmetric int8 QDQ for TensorRT (convert/onnx_symmetric.py), held to the same float ONNX.
    Format("onnx-int8-trt", "tensorrt", "int8", "model_int8_trt.onnx", "onnxruntime", twin="onnx-float",
           opt_in=True),
)
FAMILIES = tuple(dict.fromkeys(f.family for f in FORMATS))
DEFAULT_FAMILIES = tuple(dict.fromkeys(f.family for f in FORMATS if not f.opt_in))   # what export builds unasked
PRECISIONS = ("int8", "float")
BY_KEY = {f.key: f for f in FORMATS}


def float_twin(key: str) -> str | None:
    """The float artifact key an int8 one is compared with (agreement, shadow, bench); None for a float one."""
    fmt = BY_KEY[key]
    if fmt.precision == "float":
        return None
    return fmt.twin or find(fmt.family, "float").key


def find(family: str, precision: str) -> Format:
    for f in FORMATS:
        if f.family == family and f.precision == precision:
            return f
    raise KeyError(f"{family}-{precision}")
