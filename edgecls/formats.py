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


FORMATS: tuple[Format, ...] = (
    Format("tflite-float", "tflite", "float", "model_float.tflite", "litert"),
    Format("tflite-int8", "tflite", "int8", "model_int8.tflite", "litert"),
    Format("onnx-float", "onnx", "float", "model_float.onnx", "onnxruntime"),
    Format("onnx-int8", "onnx", "int8", "model_int8.onnx", "onnxruntime"),
)
FAMILIES = tuple(dict.fromkeys(f.family for f in FORMATS))
PRECISIONS = ("int8", "float")
BY_KEY = {f.key: f for f in FORMATS}


def find(family: str, precision: str) -> Format:
    for f in FORMATS:
        if f.family == family and f.precision == precision:
            return f
    raise KeyError(f"{family}-{precision}")
