"""Keras → TFLite: float, and full-integer int8 (weights, activations and I/O).

Conversion goes through a SavedModel with fixed batch-1 signatures: faster than converting from
Keras here, and batch 1 is the shape a camera loop feeds. The float model takes raw pixels 0..255.
The int8 model takes 8-bit pixel codes: where the model's normalisation folds into the input
quantization (`fold_plan`: MobileNets) it is built from the model *after* its normalisation layer, with
the input quantization chosen so that the code of pixel p is p itself (uint8; p − 128 for int8) — the
raw toolchain's graph, without an int8 MUL + ADD over the whole image. Otherwise (ResNet's per-channel
means) the int8 signature declares the raw pixel range with a fake-quant op, so the input scale is
exactly 1.0. Either way camera pixels go in as they are, with no rounding; the file's metadata entry
INPUT_META ("pixel-codes") says which, and `entry_fields` puts it into edgecls.json as input.feed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from edgecls.bundle import LABELS_META, PIXEL_CODES

IO_DTYPES = ("uint8", "int8")
TFLITE_FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16


FLOAT_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "pixels8"   # same model, input declared as 8-bit pixels 0..255
CODES_SIGNATURE = "codes8"     # the model after its normalisation, fed pixel codes (fold_plan)
FOLD_FILE = "edgecls_fold.json"   # in the SavedModel folder when it has CODES_SIGNATURE: the plan
INPUT_META = "edgecls.input_feed"   # TFLite metadata entry: how the device feeds the input (bundle.PIXEL_CODES)


def save_batch1(model, spec, dest: Path, fold: bool = True, embedding: bool = True) -> Path:
    """SavedModel of `model` with signatures taking (1,H,W,3) float32 raw pixels, and (when `fold` and
    `fold_plan` allows) CODES_SIGNATURE, the folded model the int8 conversion uses. With `embedding` every
    signature also returns the pooled features, second (convert/embeddings.py: with_embedding)."""
    import json

    import tensorflow as tf

    from edgecls.convert.embeddings import with_embedding

    if embedding:
        model = with_embedding(model)

    shape = tf.TensorSpec([1, spec.height, spec.width, 3], tf.float32, name="pixels")
    plain = tf.function(lambda x: model(x, training=False)).get_concrete_function(shape)
    # Identity on integer pixels 0..255; tells the converter the input range is exactly 8-bit.
    pixels8 = tf.function(lambda x: model(tf.quantization.fake_quant_with_min_max_args(
        x, min=0.0, max=255.0, num_bits=8), training=False)).get_concrete_function(shape)
    signatures = {FLOAT_SIGNATURE: plain, PIXELS_SIGNATURE: pixels8}
    # The root tracks the variables, not the Keras models: saving a Keras object traces every layer's call
    # for its own revival and loading re-creates them all, which nobody here uses (the converter reads the
    # signatures). Same TFLite bytes, each save and conversion ~4x faster (tiny digits run: save 23 -> 5.5 s,
    # each conversion 18 -> 5 s; benchmarks/scratch/saved_model_light.py).
    root = tf.Module()
    root.model_variables = list(model.variables)
    plan = fold_plan(model, spec) if fold else None
    if plan:
        folded = folded_model(model, plan)
        root.folded_variables = list(folded.variables)   # its own (shifted) weights are saved too
        s, z = plan["scale"], plan["zero_point"]
        # The codes' range, exactly: fake-quant's grid is then (q - z)·s, the input quantization's.
        signatures[CODES_SIGNATURE] = tf.function(lambda x: folded(tf.quantization.fake_quant_with_min_max_args(
            x, min=-z * s, max=(255 - z) * s, num_bits=8), training=False)).get_concrete_function(shape)
    tf.saved_model.save(root, str(dest), signatures=signatures)
    if plan:
        (dest / FOLD_FILE).write_text(json.dumps(plan))
    return dest


def fold_plan(model, spec) -> dict | None:
    """How the model's normalisation x = p·s + o folds into its int8 input quantization, or None.

    An 8-bit input with scale s and zero point z means the model computes with (q − z)·s; fed the pixel
    itself (q = p) that is the normalisation exactly when z = −o/s. For MobileNets −o/s = 127.5: with
    z = 128 every input is off by the same −s/2 (−1/255), and the first convolution absorbs a constant
    input shift exactly — its output moves by −s/2·ΣW per channel, added back to its bias or to the mean
    of the BatchNormalization after it (`folded_model`) — except where its window covers the zero
    padding (the last row and column of a stride-2 SAME conv on an even size: off by s/2·ΣW over the
    padded taps). Today's unfolded int8 graph is not exact either: its int8 normalised input rounds
    (2p − 255)/255, a tie on every pixel, away from zero. None (the unfolded graph) where the
    normalisation is per channel (ResNet's caffe means), is not the first layer of an edgecls model, or
    is followed by something other than a convolution whose shift can be absorbed.
    """
    from edgecls.train.model import NORMALIZE

    if not spec.in_model or len(set(spec.scale)) != 1 or len(set(spec.offset)) != 1 or spec.scale[0] <= 0:
        return None
    names = {layer.name for layer in model.layers}
    if NORMALIZE not in names:
        return None
    norm = model.get_layer(NORMALIZE)
    if type(norm).__name__ != "Rescaling" or len(norm._outbound_nodes) != 1:
        return None
    s, o = float(spec.scale[0]), float(spec.offset[0])
    if not (np.allclose(norm.scale, s, rtol=1e-6) and np.allclose(norm.offset, o, rtol=1e-6, atol=1e-9)):
        return None   # the layer is the truth; a spec that disagrees with it is not ours to fold
    exact = -o / s
    z = int(np.floor(exact + 0.5))
    if not 0 <= z <= 255:
        return None
    plan = {"scale": s, "zero_point": z, "shift": (exact - z) * s}
    if abs(exact - z) < 1e-9:
        return plan
    conv = norm._outbound_nodes[0].outbound_layer
    if type(conv).__name__ != "Conv2D" or getattr(conv, "groups", 1) != 1 or len(conv._outbound_nodes) != 1:
        return None
    plan["conv"] = conv.name
    if conv.use_bias:
        return plan
    bn = conv._outbound_nodes[0].outbound_layer
    if type(bn).__name__ != "BatchNormalization" or list(bn.axis) not in ([3], [-1]):
        return None
    return {**plan, "batch_norm": bn.name}


def folded_model(model, plan: dict):
    """A copy of `model` from after its normalisation layer, with the first conv absorbing plan["shift"]
    (fold_plan); the model's own weights stay untouched."""
    from edgecls.train.model import NORMALIZE
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if "conv" in plan:
        conv = clone.get_layer(plan["conv"])
        moved = plan["shift"] * conv.kernel.numpy().astype(np.float64).sum(axis=(0, 1, 2))  # per output channel
        if conv.use_bias:
            conv.bias.assign((conv.bias.numpy() - moved).astype(conv.bias.dtype.as_numpy_dtype))
        else:
            bn = clone.get_layer(plan["batch_norm"])
            bn.moving_mean.assign((bn.moving_mean.numpy() + moved).astype(bn.moving_mean.dtype.as_numpy_dtype))
    # Same name as the model: TFLite names ops after it, and the float ops' names must match the ONNX nodes.
    return keras.Model(clone.get_layer(NORMALIZE).output, clone.output, name=model.name)


def read_fold(saved_model: Path) -> dict | None:
    import json

    path = Path(saved_model) / FOLD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _converter(saved_model: Path, signature: str):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[signature])


def _convert(converter) -> bytes:
    from edgecls.train.tfenv import quiet_stderr

    with quiet_stderr():   # the C++ calibrator prints its settings ("fully_quantize: 0, ...") to fd 2
        return compact(converter.convert())


def to_float(saved_model: Path) -> bytes:
    return _convert(_converter(saved_model, FLOAT_SIGNATURE))


DEBUG_SAMPLES = 50     # calibration images the per-op error is measured on


def _int8_converter(saved_model: Path, calib: Iterable[np.ndarray], io_dtype: str):
    import tensorflow as tf

    plan = read_fold(saved_model)
    if plan:   # the folded signature takes codes' values (p − z)·s: exactly on its input grid
        samples = [((np.asarray(x, np.float32) - plan["zero_point"]) * np.float32(plan["scale"]))[None]
                   for x in calib]
    else:
        samples = [np.asarray(x, np.float32)[None] for x in calib]

    def representative():
        for s in samples:
            yield [s]

    conv = _converter(saved_model, CODES_SIGNATURE if plan else PIXELS_SIGNATURE)
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
    return with_input_feed(_convert(_int8_converter(saved_model, calib, io_dtype)[0]),
                           PIXEL_CODES if read_fold(saved_model) else None)


def calibrate(saved_model: Path, calib: Iterable[np.ndarray], io_dtype: str = "uint8") -> tuple[bytes, list]:
    """The float model with calibrated ranges, not yet quantized (the QuantizationDebugger's input), and the
    calibration samples as batches of one."""
    from edgecls.train.tfenv import quiet_stderr

    conv, samples = _int8_converter(saved_model, calib, io_dtype)
    conv._experimental_calibrate_only = True   # the documented QuantizationDebugger route (selective quantization)
    with quiet_stderr():
        calibrated = conv.convert()
    # quantize_guarded reads the feed back from here: it gets the calibrated model, not the SavedModel.
    return with_input_feed(calibrated, PIXEL_CODES if read_fold(saved_model) else None, share=False), samples


def ranked_op_errors(calibrated: bytes, samples: list[np.ndarray]) -> list[tuple[str, float]]:
    """Every quantizable op with its int8 error in quantization steps (`op_errors`, on DEBUG_SAMPLES of the
    calibration samples), worst first: the order the mixed-precision search (convert/search.py) keeps ops
    float in. TFLite's QuantizationDebugger runs every op in int8 and in float on the same int8 inputs.
    On MobileNetV2 (digits, 160 px) the worst is the first depthwise conv (1.31 steps; next 0.78): keeping it
    float cut the int8 model's mean |Δp| vs float by a third and its test flips from 5 to 1 of 310, for
    1.8 M of ~200 M MACs. The ONNX QDQ export keeps the same ops float (onnx_export.to_int8)."""
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
        quantized = lite_util.modify_model_io_type(model, dtype, dtype)
    return with_input_feed(quantized, input_feed(calibrated))


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
    from tensorflow.lite.python import schema_py_generated as schema

    return _pack(schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0)), share)


def _pack(obj, share: bool) -> bytes:
    """A schema ModelT → .tflite bytes; `share` stores identical arrays once (`compact`)."""
    import flatbuffers

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

    builder = (SharingBuilder if share else flatbuffers.Builder)(1 << 20)
    builder.Finish(obj.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def with_input_feed(model: bytes, feed: str | None, share: bool = True) -> bytes:
    """`model` (compacted when `share`) with its INPUT_META metadata entry set to `feed` (None: none)."""
    return with_metadata(model, {INPUT_META: None if feed is None else feed.encode()}, share)


def with_labels(model: bytes, labels: list[str]) -> bytes:
    """`model` (compacted) carrying `labels`, in order, as its LABELS_META entry: the device refuses the file
    beside any other labels (device/model/runtime.py: load_model), as an ONNX file's edgecls.labels."""
    import json

    return with_metadata(model, {LABELS_META: json.dumps(labels).encode()})


def with_metadata(model: bytes, entries: dict[str, bytes | None], share: bool = True) -> bytes:
    """`model` (compacted when `share`) with each named metadata entry set to its bytes (None: removed)."""
    from tensorflow.lite.python import schema_py_generated as schema

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))
    kept = [m for m in (obj.metadata or []) if m.name.decode() not in entries]
    for name, value in entries.items():
        if value is None:
            continue
        entry = schema.MetadataT()
        entry.name, entry.buffer = name.encode(), len(obj.buffers)
        data = schema.BufferT()
        data.data = np.frombuffer(value, np.uint8)
        obj.buffers.append(data)
        kept.append(entry)
    obj.metadata = kept
    return _pack(obj, share)


def input_feed(model: bytes) -> str | None:
    """The file's INPUT_META entry ("pixel-codes"), or None for a model that takes pixel values."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if entry.Name().decode() == INPUT_META:
            return root.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    return None


def labels_count(model: bytes) -> int | None:
    """How many labels the file carries (its LABELS_META entry), or None."""
    import json

    from edgecls.device.model.tflite_scan import metadata

    raw = metadata(model).get(LABELS_META)
    return len(json.loads(raw)) if raw else None


def entry_fields(path: Path, n_classes: int | None = None) -> dict:
    """The fields of a TFLite artifact's edgecls.json entry that the file itself carries: {"input": {...},
    "output": {...}}, read back from the file
    (input.feed: "pixel-codes" when the file's metadata says so, see the module docstring); a file with an
    embedding output also gets "embedding" and "outputs" (which index is which: convert/embeddings.py)."""
    from edgecls.convert.embeddings import output_roles
    from edgecls.device.model.runtime import tflite_interpreter_class

    Interpreter, _ = tflite_interpreter_class()
    interp = Interpreter(model_path=str(path))

    def one(d):
        scale, zp = d["quantization"]
        return {"dtype": np.dtype(d["dtype"]).name, "shape": [int(v) for v in d["shape"]],
                "scale": float(scale), "zero_point": int(zp)}

    outs = interp.get_output_details()
    roles = output_roles([int(d["shape"][-1]) for d in outs], n_classes or labels_count(Path(path).read_bytes()))
    details = {"input": one(interp.get_input_details()[0]), "output": one(outs[roles["probabilities"]])}
    if "embedding" in roles:   # its second output (convert/embeddings.py)
        details.update(embedding=one(outs[roles["embedding"]]), outputs=roles)
    feed = input_feed(Path(path).read_bytes())
    if feed:
        details["input"]["feed"] = feed
    return details
