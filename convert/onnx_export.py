"""Keras → ONNX float (tf2onnx), and ONNX int8 as QDQ (onnxruntime `quantize_static`).

Per-channel weights are not optional: per-tensor QDQ measured 0.416 vs 0.798 top-1 on MobileNetV2
here. Labels and preprocessing are embedded as metadata so the .onnx file is usable on its own.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgecls.bundle import LABELS_META

OPSET = 17
INPUT_NAME = "pixels"


def to_float(model, spec, dest: Path) -> Path:
    import tensorflow as tf
    import tf2onnx

    from edgecls.convert.embeddings import with_embedding

    sig = [tf.TensorSpec([None, spec.height, spec.width, 3], tf.float32, name=INPUT_NAME)]
    proto, _ = tf2onnx.convert.from_keras(with_embedding(model), input_signature=sig, opset=OPSET)
    dest.write_bytes(proto.SerializeToString())
    return dest


def from_tflite(tflite_path: Path, dest: Path) -> Path:
    """ONNX (QDQ) converted from an int8 TFLite by tf2onnx: the same integer model, uint8/int8 I/O."""
    import tf2onnx

    with warnings.catch_warnings():   # tf2onnx reads the file with tf.lite.Interpreter, which warns it is deprecated
        warnings.simplefilter("ignore")
        model, _ = tf2onnx.convert.from_tflite(str(tflite_path), opset=OPSET)
    shield_float_weights(model)   # a guarded TFLite's float conv: 31% on val unshielded
    dest.write_bytes(model.SerializeToString())
    return dest


class _Calibration:
    """onnxruntime CalibrationDataReader over prepared training images (raw pixels, float32)."""

    def __init__(self, images: Iterable[np.ndarray], input_name: str):
        self._it = iter([{input_name: np.asarray(x, np.float32)[None]} for x in images])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # onnxruntime calls this only for multi-pass calibrators; one pass is all we use
        pass


def calibration_reader(images: Iterable[np.ndarray]):
    """An onnxruntime CalibrationDataReader over prepared images, feeding the float ONNX's input."""
    from onnxruntime.quantization import CalibrationDataReader

    return type("Reader", (_Calibration, CalibrationDataReader), {})(images, INPUT_NAME)


# The int8 types per target CPU (activations, weights), both as onnxruntime's QDQ. Measured on the flowers run
# (MobileNetV2 160 px, onnxruntime 1.32, this x86 CPU, 1 thread, interleaved vs float ONNX: benchmarks/NOTES.md):
# S8S8 0.97-0.98x float — onnxruntime's x86 kernels run its depthwise convs as float between DequantizeLinear and
# QuantizeLinear — U8S8 0.91-0.93x, every conv a QLinearConv, about as accurate (same calibration, val+test mean
# |Δp| vs float 0.0105 vs 0.0109; the two exports on all 750 photos: 10 vs 8 answers changed). On ARM S8S8 is onnxruntime's recommended setting, was the more accurate on two of three runs
# and agreed better between the x86 and ARM kernels (99.35% vs 98.71%, benchmarks/NOTES.md).
ONNX_TARGETS = {"x86": ("uint8", "int8"), "arm": ("int8", "int8")}


def host_target() -> str:
    """The ONNX target of the machine this runs on (what --onnx-target auto means)."""
    import platform

    machine = platform.machine().lower()
    return "arm" if machine.startswith(("arm", "aarch64")) else "x86"


def resolve_target(target: str | None) -> str:
    return host_target() if target in (None, "auto") else target


def to_int8(float_onnx: Path, calib: Iterable[np.ndarray], dest: Path, method: str = "minmax",
            float_nodes: Sequence[str] = (), target: str | None = None) -> Path:
    """QDQ int8 with per-channel int8 weights and the activation type of `target` (ONNX_TARGETS; None or "auto":
    this machine's). `method` sets the activation ranges: minmax (as TFLite) or percentile (99.999th: ignores
    the rare outliers that widen a range). `float_nodes` stay float, as PTQ keeps them in the TFLite
    (`nodes_named`). The choice is written into the file's metadata (QUANT_META), which `entry_fields` reads back
    for edgecls.json."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = resolve_target(target)
    activations, weights = ONNX_TARGETS[target]
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    reader = calibration_reader(calib)
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # Shape inference + graph fusion first, as onnxruntime recommends before static quantisation.
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=False)
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=qtype[activations], weight_type=qtype[weights],
                        nodes_to_exclude=list(float_nodes),
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile}[method])
        model = onnx.load(str(out))
    shield_float_weights(model)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, QUANT_META: json.dumps(
        {"target": target, "activations": activations, "weights": weights, "format": "QDQ", "per_channel": True})})
    dest.write_bytes(model.SerializeToString())
    return dest


QUANT_META = "edgecls.quantization"   # metadata_props entry: the int8 types to_int8 chose, and for which target


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm")   # the ops onnxruntime's WeightBiasQuantization rewrites


def shield_float_weights(model) -> None:
    """Put an exact no-op Clip between each float-weight Conv/Gemm and the DequantizeLinear that feeds it.

    Without it onnxruntime's graph optimizer (WeightBiasQuantization, on by default in onnxruntime 1.32) sees
    "DQ → Conv with float weights" and quantizes those weights per *tensor* at load time — the precision a
    depthwise conv cannot take: MobileNetV2 with its first depthwise conv kept float scored 22.6% instead of
    97.7% (with optimizations off, 97.7%). The Clip spans exactly the DQ's representable range."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for index, node in reversed(list(enumerate(graph.node))):   # reversed: inserting keeps earlier indices
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in consts:
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        scale = float(numpy_helper.to_array(consts[dq.input[1]]))
        zero = numpy_helper.to_array(consts[dq.input[2]])
        info = np.iinfo(zero.dtype)
        bounds = [f"{node.name}/float_in_min", f"{node.name}/float_in_max"]
        graph.initializer.extend(numpy_helper.from_array(np.array(scale * (q - int(zero)), np.float32), name)
                                 for q, name in zip((info.min, info.max), bounds))
        shielded = f"{node.name}/float_in"
        graph.node.insert(index, helper.make_node("Clip", [node.input[0], *bounds], [shielded], name=shielded))
        node.input[0] = shielded


def nodes_named(onnx_path: Path, tflite_ops: Sequence[str]) -> list[str]:
    """The ONNX nodes behind TFLite op names. TFLite names a fused op by its TF ops' names joined with ';'
    and a digit appended ("…/Relu6;…/FusedBatchNormV3;…/depthwise1"); tf2onnx names nodes after TF ops."""
    import onnx

    wanted = set()
    for op in tflite_ops:
        for part in op.split(";"):
            wanted |= {part, part.rstrip("0123456789")}
    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.name in wanted]


def embed_metadata(path: Path, labels: list[str], preprocessing: dict, extra: dict | None = None) -> None:
    """Write labels and the preprocessing contract into the model's metadata_props (in place)."""
    import onnx

    model = onnx.load(str(path))
    props = {LABELS_META: json.dumps(labels), "edgecls.preprocessing": json.dumps(preprocessing),
             **{f"edgecls.{k}": json.dumps(v) for k, v in (extra or {}).items()}}
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in kept}, **props})
    path.write_bytes(model.SerializeToString())


def read_metadata(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len("edgecls."):]: json.loads(p.value) for p in model.metadata_props if p.key.startswith("edgecls.")}


def entry_fields(path: Path, n_classes: int | None = None) -> dict:
    """The fields of an ONNX artifact's edgecls.json entry that the file itself carries: {"input", "output"}, and
    "quantization" for an int8 file to_int8 made; "embedding" and "outputs" for a file with an embedding output."""
    import onnx

    from edgecls.convert.embeddings import output_roles

    model = onnx.load(str(path), load_external_data=False)
    names = {1: "float32", 2: "uint8", 3: "int8"}

    def one(v):
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"dtype": names.get(t.elem_type, str(t.elem_type)), "shape": shape, "scale": 0.0, "zero_point": 0}

    outs = list(model.graph.output)
    carried = {p.key: p.value for p in model.metadata_props}.get(LABELS_META)   # a bundle's file: its labels
    n_classes = n_classes or (len(json.loads(carried)) if carried else None)
    roles = output_roles([one(o)["shape"][-1] for o in outs], n_classes)
    details = {"input": one(model.graph.input[0]), "output": one(outs[roles["probabilities"]])}
    if "embedding" in roles:   # its second output (convert/embeddings.py)
        details.update(embedding=one(outs[roles["embedding"]]), outputs=roles)
    chosen = {p.key: p.value for p in model.metadata_props}.get(QUANT_META)
    if chosen:   # an int8 file to_int8 made: edgecls.json records its types and target (artifacts.KEY.quantization)
        details["quantization"] = json.loads(chosen)
    return details
