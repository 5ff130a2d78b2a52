"""Keras → TFLite: float, and full-integer int8 (weights, activations and I/O).

Conversion goes through a SavedModel with fixed batch-1 signatures: faster than converting from
Keras here, and batch 1 is the shape a camera loop feeds. The model takes raw pixels 0..255; the int8
signature declares that range with a fake-quant op on the input, so the int8 model's input scale is
exactly 1.0 (zero point 0 for uint8, -128 for int8) whatever the calibration images' brightest pixel
was — camera pixels go in as they are, with no rounding.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

IO_DTYPES = ("uint8", "int8")
TFLITE_FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16


FLOAT_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "pixels8"   # same model, input declared as 8-bit pixels 0..255


def save_batch1(model, spec, dest: Path) -> Path:
    """SavedModel of `model` with two signatures taking (1,H,W,3) float32 raw pixels."""
    import tensorflow as tf

    shape = tf.TensorSpec([1, spec.height, spec.width, 3], tf.float32, name="pixels")
    plain = tf.function(lambda x: model(x, training=False)).get_concrete_function(shape)
    # Identity on integer pixels 0..255; tells the converter the input range is exactly 8-bit.
    pixels8 = tf.function(lambda x: model(tf.quantization.fake_quant_with_min_max_args(
        x, min=0.0, max=255.0, num_bits=8), training=False)).get_concrete_function(shape)
    tf.saved_model.save(model, str(dest), signatures={FLOAT_SIGNATURE: plain, PIXELS_SIGNATURE: pixels8})
    return dest


def _converter(saved_model: Path, signature: str):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[signature])


def _convert(converter) -> bytes:
    from edgecls.train.tfenv import quiet_stderr

    with quiet_stderr():   # the C++ calibrator prints its settings ("fully_quantize: 0, ...") to fd 2
        return compact(converter.convert())


def to_float(saved_model: Path) -> bytes:
    return _convert(_converter(saved_model, FLOAT_SIGNATURE))


FLOAT_OP_STEPS = 1.0   # an op whose int8 output is off by more than this (RMSE, in its quantization steps)...
MAX_FLOAT_OPS = 3      # ...stays float, at most this many: the int8 model keeps its speed
DEBUG_SAMPLES = 50     # calibration images the per-op error is measured on


def _int8_converter(saved_model: Path, calib: Iterable[np.ndarray], io_dtype: str):
    import tensorflow as tf

    samples = [np.asarray(x, np.float32)[None] for x in calib]

    def representative():
        for s in samples:
            yield [s]

    conv = _converter(saved_model, PIXELS_SIGNATURE)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = getattr(tf, io_dtype)
    conv.inference_output_type = getattr(tf, io_dtype)
    return conv, samples


def to_int8(saved_model: Path, calib: Iterable[np.ndarray], io_dtype: str = "uint8") -> bytes:
    """Full-integer model. `calib` yields (H,W,3) uint8 training images (the representative dataset).

    For a QAT SavedModel the fake-quant ranges are used where present and `calib` covers the rest
    (layers left float during QAT, e.g. the in-model Rescaling).
    """
    return _convert(_int8_converter(saved_model, calib, io_dtype)[0])


def calibrate(saved_model: Path, calib: Iterable[np.ndarray], io_dtype: str = "uint8") -> tuple[bytes, list]:
    """The float model with calibrated ranges, not yet quantized (the QuantizationDebugger's input), and the
    calibration samples as batches of one."""
    from edgecls.train.tfenv import quiet_stderr

    conv, samples = _int8_converter(saved_model, calib, io_dtype)
    conv._experimental_calibrate_only = True   # the documented QuantizationDebugger route (selective quantization)
    with quiet_stderr():
        return conv.convert(), samples


def guard(calibrated: bytes, samples: list[np.ndarray]) -> dict:
    """Guarded PTQ: the ops int8 measurably breaks stay float (int8 around them, same I/O; `quantize_guarded`).
    Returns {"float_ops": [...], "op_error_steps": {the five worst ops: steps}} for the manifest.

    TFLite's QuantizationDebugger runs every op in int8 and in float on the same int8 inputs; an op whose
    output error exceeds FLOAT_OP_STEPS quantization steps stays float. Measured on MobileNetV2 (digits,
    160 px): only the first depthwise conv qualifies (1.31 steps; next 0.78); keeping it float cut the
    int8 model's mean |Δp| vs float by a third and its test-split flips from 5 to 1 of 310, for 1.8 M of
    ~200 M MACs. The ONNX QDQ export keeps the same ops float (onnx_export.to_int8).
    """
    ranked = ranked_op_errors(calibrated, samples)
    return {"float_ops": [n for n, e in ranked[:MAX_FLOAT_OPS] if e > FLOAT_OP_STEPS],
            "op_error_steps": {n: round(e, 3) for n, e in ranked[:5]}}


def ranked_op_errors(calibrated: bytes, samples: list[np.ndarray]) -> list[tuple[str, float]]:
    """Every quantizable op with its int8 error in quantization steps (`op_errors`, on DEBUG_SAMPLES of the
    calibration samples), worst first: the order the mixed-precision search keeps ops float in."""
    from edgecls.train.tfenv import quiet_stderr

    with quiet_stderr():
        errors = op_errors(calibrated, samples[::max(1, len(samples) // DEBUG_SAMPLES)])
    return sorted(errors.items(), key=lambda kv: -kv[1])


def quantize_guarded(calibrated: bytes, float_ops: list[str], io_dtype: str = "uint8") -> bytes:
    import tensorflow as tf
    from tensorflow.lite.python import convert as lite_convert
    from tensorflow.lite.python import util as lite_util

    from edgecls.train.tfenv import quiet_stderr

    with quiet_stderr():
        model = lite_convert.mlir_quantize(calibrated, denylisted_nodes=float_ops)   # float I/O, then ours:
        dtype = getattr(tf, io_dtype)
        return compact(lite_util.modify_model_io_type(model, dtype, dtype))


def op_errors(calibrated: bytes, samples: list[np.ndarray]) -> dict[str, float]:
    """Each quantizable op's int8 output RMSE vs its float twin, in units of its output scale."""
    import csv
    import io

    import tensorflow as tf
    from tensorflow.lite.python import convert as lite_convert

    debug_model = lite_convert.mlir_quantize(calibrated, enable_numeric_verify=True)
    debugger = tf.lite.experimental.QuantizationDebugger(quant_debug_model_content=debug_model,
                                                         debug_dataset=lambda: ([s] for s in samples))
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    return {r["tensor_name"]: float(r["mean_squared_error"]) ** 0.5 / float(r["scale"])
            for r in csv.DictReader(dump) if float(r["scale"]) > 0}


def compact(model: bytes) -> bytes:
    """The same model with every repeated array stored once: a lossless rewrite of the flatbuffer.

    The converter writes each tensor's quantisation parameters out in full, and per-channel int8 gives
    every conv weight and bias a zero-point vector of int64 zeros per channel: ~240 KB of identical
    vectors in a MobileNetV2 (9% of the int8 file). Flatbuffers let any number of fields point at one
    vector, so re-serialising through the schema's object API with a builder that hands back the offset
    of an identical vector already written stores each distinct array once. Every value a runtime reads
    is unchanged (outputs are bit-identical under LiteRT and tflite-runtime, every op resolver: tested).
    """
    return repack(model, share=True)


def repack(model: bytes, share: bool) -> bytes:
    """Re-serialise a .tflite through the schema's object API; `share` stores identical arrays once."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, size: int):
            super().__init__(size)
            self.written: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name)
            key = (x.dtype.str, x.tobytes())
            if key not in self.written:
                self.written[key] = self._bytes(x) if x.dtype == np.uint8 else super().CreateNumpyVector(x)
            return self.written[key]

        def _bytes(self, x):
            # Byte vectors are buffer data: keep the converter's 16-byte alignment for the kernels.
            self.StartVector(1, x.size, BUFFER_ALIGNMENT)
            self.head = self.head - x.size
            self.Bytes[self.Head():self.Head() + x.size] = x.tobytes()
            self.vectorNumElems = x.size
            return self.EndVector()

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))
    builder = (SharingBuilder if share else flatbuffers.Builder)(len(model))
    builder.Finish(obj.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def io_details(path: Path) -> dict:
    """{"input": {...}, "output": {...}} as edgecls.json records them, read back from the file itself."""
    from edgecls.device.runtime import tflite_interpreter_class

    Interpreter, _ = tflite_interpreter_class()
    interp = Interpreter(model_path=str(path))

    def one(d):
        scale, zp = d["quantization"]
        return {"dtype": np.dtype(d["dtype"]).name, "shape": [int(v) for v in d["shape"]],
                "scale": float(scale), "zero_point": int(zp)}

    return {"input": one(interp.get_input_details()[0]), "output": one(interp.get_output_details()[0])}
