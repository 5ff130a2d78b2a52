"""Loading one bundle artifact into an inference engine: LiteRT for .tflite, onnxruntime for .onnx.

`load_model(bundle, family, precision)` → `Model.predict(pixels)` with pixels the (N,H,W,3) uint8
output of `edgecls.preprocess.prepare`. How pixels enter the model is edgecls.json's
`input.feed`: "pixel-codes" (an int8 model that folded its normalisation into its input quantization:
the pixel is the code, `pixel_codes`) or "values" (the default: quantised with the tensor's own scale and
zero point, normalised first when the spec says the model does not); the output is dequantised with its
own parameters. The same code serves float, uint8-I/O and int8-I/O models.
No TensorFlow import anywhere in this package.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from edgecls.bundle import (FEED_VALUES, INPUT_FEEDS, LABELS_META, PIXEL_CODES, Artifact, Bundle,
                            labels_difference, labels_from_meta)
from edgecls.device.model.onnx_scan import OnnxParseError, external_tensors
from edgecls.device.model.tflite_scan import TfliteParseError
from edgecls.device.teach.head import base_labels, with_head
from edgecls.device.model.tflite_scan import metadata as tflite_metadata
from edgecls.errors import EdgeclsError
from edgecls.preprocess import PreprocessSpec, model_input


def tflite_interpreter_class():
    """(Interpreter class, runtime name): LiteRT first, tflite-runtime only as the fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    trap = numpy2_trap()
    if trap:  # on aarch64 the import succeeds and Interpreter() dies later with a SystemError: refuse first
        raise EdgeclsError(trap)
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime"
    except Exception:  # a broken install surfaces as ImportError or AttributeError depending on versions
        raise EdgeclsError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime on old systems)") from None


def int8_dot_product() -> bool:
    """Whether this CPU has an int8 dot-product instruction (x86 VNNI; every ARM64 edgecls targets runs NEON int8).
    Without it (x86 with AVX2 only) onnxruntime 1.32's fused int8 kernels move answers: a flowers model's int8 ONNX
    agreed with float on 110/110 held-out photos run as the QDQ graph and on 101/110 fused (benchmarks/NOTES.md)."""
    import platform

    if not platform.machine().lower().startswith(("x86", "amd64", "i686")):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags


AS_WRITTEN_ENV = "EDGECLS_ONNX_AS_WRITTEN"


def onnx_fused_int8() -> bool:
    """Whether an int8 ONNX runs on onnxruntime's fused int8 kernels (where the CPU has an int8 dot product) rather
    than as the QDQ graph as written. EDGECLS_ONNX_AS_WRITTEN=1 asks for the graph as written everywhere: the same
    answers on every x86 host (the fused kernels of a VNNI CPU and the graph of an AVX2-only one differ on
    near-ties: 306 vs 307 of the 310 digits96 photos agreeing with a Pi 4), which is what the Pi stack check holds
    a Pi's answers to (tools/pi_stack/check.py; docs/pi-stack.md)."""
    return os.environ.get(AS_WRITTEN_ENV, "") != "1" and int8_dot_product()


def numpy2_trap() -> str | None:
    """The message for tflite-runtime <= 2.14 (built against NumPy 1.x) next to NumPy 2, else None."""
    from importlib import metadata

    try:
        version = metadata.version("tflite-runtime")
    except metadata.PackageNotFoundError:
        return None
    major_minor = tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in (version.split(".") + ["0"])[:2])
    if int(np.__version__.split(".")[0]) >= 2 and major_minor <= (2, 14):
        return (f"tflite-runtime {version} was built for NumPy 1.x and cannot run with NumPy {np.__version__}: "
                f"pip install ai-edge-litert (preferred) or pip install 'numpy<2'")
    return None


def onnx_providers(requested: list[str] | None = None) -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in have]
        if missing:
            raise EdgeclsError(f"onnxruntime provider(s) not available: {', '.join(missing)} (have: {', '.join(have)})")
        return requested
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in have] or have


def _quantize(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """Float → quantised input (only for non-uint8 input; uint8 pixels go through Model._lookup)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def pixel_codes(pixels: np.ndarray, dtype) -> np.ndarray:
    """Prepared pixels as 8-bit codes: uint8 p as it is, int8 p − 128 (the same bits with the top one flipped)."""
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    if np.dtype(dtype) == np.uint8:
        return pixels
    return np.bitwise_xor(pixels, np.uint8(0x80)).view(np.int8)


@dataclass
class TensorIO:
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.dtype(self.dtype).kind in "iu"


class Model:
    """A loaded artifact. `predict(pixels)` → (N, classes) float32 probabilities."""

    runtime: str
    input_io: TensorIO
    output_io: TensorIO
    providers: list[str]
    labels_bound = False    # load_model: the file carries the bundle's labels (False: it carries none)

    def __init__(self, artifact: Artifact, spec: PreprocessSpec, n_classes: int):
        self.artifact, self.spec, self.n_classes = artifact, spec, n_classes
        self.feed = (artifact.meta.get("input") or {}).get("feed", FEED_VALUES)
        self.roles = output_roles(artifact)
        if self.feed not in INPUT_FEEDS:
            raise EdgeclsError(f"{artifact.path.name}: edgecls.json says its input is fed as {self.feed!r}, which "
                               f"this edgecls does not know ({', '.join(INPUT_FEEDS)}) — upgrade edgecls")

    def check_feed(self) -> None:
        """Pixel codes are 8-bit integers: a model whose input is not cannot take them."""
        if self.feed == PIXEL_CODES and np.dtype(self.input_io.dtype) not in (np.uint8, np.int8):
            raise EdgeclsError(f"{self.artifact.path.name}: edgecls.json says its input takes pixel codes, but the "
                               f"model's input is {np.dtype(self.input_io.dtype).name}")

    @property
    def key(self) -> str:
        return self.artifact.key

    def _to_input(self, pixels: np.ndarray) -> np.ndarray:
        io = self.input_io
        if self.feed == PIXEL_CODES:
            return pixel_codes(pixels, io.dtype)
        if io.quantized:
            if pixels.dtype == np.uint8 and pixels.shape[-1] == 3:
                return self._lookup(pixels)
            src = pixels if self.spec.in_model else model_input(pixels, self.spec)
            return _quantize(src, io.dtype, io.scale, io.zero_point)
        x = model_input(pixels, self.spec)
        return x if io.dtype == np.float32 else x.astype(io.dtype)

    def _lookup(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels → quantised input through a per-channel 256-entry table.

        Normalisation (when outside the model) and quantisation are a fixed function of each 8-bit value, so
        computing them once per value gives the same numbers as the float route at a fraction of the cost
        per frame (this is the live loop's hot path). Identity tables (uint8, scale 1, zero point 0) skip it.
        """
        if not hasattr(self, "_lut"):
            io = self.input_io
            values = np.arange(256, dtype=np.float64)[:, None].repeat(3, 1)
            if not self.spec.in_model:
                values = values * np.asarray(self.spec.scale) + np.asarray(self.spec.offset)
            info = np.iinfo(io.dtype)
            lut = np.clip(np.round(values / io.scale + io.zero_point), info.min, info.max).astype(io.dtype)
            identity = io.dtype == np.uint8 and np.array_equal(lut, np.arange(256)[:, None].repeat(3, 1))
            same = (lut == lut[:, :1]).all()  # one table for all channels: cv2.LUT is ~2x faster with it
            self._lut = None if identity else np.ascontiguousarray(lut[:, 0] if same else lut.reshape(1, 256, 3))
        if self._lut is None:
            return pixels
        flat = np.ascontiguousarray(pixels).reshape(-1, pixels.shape[-2], 3)
        return cv2.LUT(flat, self._lut).reshape(pixels.shape)

    def _finish(self, out: np.ndarray, io: TensorIO | None = None) -> np.ndarray:
        io = io or self.output_io
        if io.quantized:
            out = (out.astype(np.float32) - io.zero_point) * io.scale
        return out.astype(np.float32).reshape(out.shape[0], -1)

    @property
    def has_embedding(self) -> bool:
        return "embedding" in self.roles

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.predict_both(pixels)[0]

    def predict_both(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, embeddings or None) from one run of the model: the outputs edgecls.json names."""
        outs = self._run(pixels)
        emb = outs[self.roles["embedding"]] if self.has_embedding else None
        return (self._finish(outs[self.roles["probabilities"]]),
                None if emb is None else self._finish(emb, self.embedding_io))

    def _run(self, pixels: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def embedded_labels(self) -> list[str] | None:
        """The labels export embedded in the file (bundle.LABELS_META), in order; None for a file without them
        (exported before they were, or not by edgecls)."""
        return labels_from_meta(self._labels_meta(), f"{self.artifact.path.name}'s {LABELS_META} metadata")

    def _labels_meta(self):
        return None

    def check_shape(self, shape, where: str) -> None:
        h, w = int(shape[1]), int(shape[2])
        if (h, w) != (self.spec.height, self.spec.width) or int(shape[3]) != 3:
            raise EdgeclsError(f"{self.artifact.path.name}: model input {'x'.join(str(d) for d in shape)} does not match the bundle's "
                               f"{self.spec.height}x{self.spec.width}x3 ({where})")


class TFLiteModel(Model):
    def __init__(self, artifact: Artifact, spec: PreprocessSpec, n_classes: int, threads: int | None = None):
        super().__init__(artifact, spec, n_classes)
        Interpreter, self.runtime = tflite_interpreter_class()
        try:
            self.interp = Interpreter(model_path=str(artifact.path), num_threads=threads or os.cpu_count())
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise EdgeclsError(f"cannot load {artifact.path.name}: {str(e).splitlines()[0]}") from None
        self.providers = ["XNNPACK/CPU"]
        inp, outs = self.interp.get_input_details()[0], self.interp.get_output_details()
        self.check_shape(inp["shape"], "edgecls.json preprocessing")
        check_roles(self, len(outs))
        out = outs[self.roles["probabilities"]]
        self._in_index, self._out_indices = inp["index"], [d["index"] for d in outs]
        self.input_io = self._tensor_io(inp)
        self.output_io = self._tensor_io(out)
        self.embedding_io = self._tensor_io(outs[self.roles["embedding"]]) if self.has_embedding else None
        self.check_feed()
        if int(out["shape"][-1]) != n_classes:
            raise EdgeclsError(f"{artifact.path.name}: model has {int(out['shape'][-1])} outputs but the bundle "
                               f"has {n_classes} labels")

    @staticmethod
    def _tensor_io(d: dict) -> TensorIO:
        s, z = d["quantization"]
        return TensorIO(np.dtype(d["dtype"]), float(s), int(z))

    def _labels_meta(self):
        try:
            return tflite_metadata(self.artifact.path.read_bytes()).get(LABELS_META)
        except TfliteParseError as e:
            raise EdgeclsError(f"cannot load {self.artifact.path.name}: its metadata cannot be read ({e})") from None

    def _run(self, pixels: np.ndarray) -> list[np.ndarray]:
        x = self._to_input(pixels)
        wanted = sorted(set(self.roles.values()))   # a one-output read where nothing asks for the embedding
        outs: list[list[np.ndarray]] = [[] for _ in self._out_indices]
        for i in range(len(x)):  # exported with batch 1: the shape a camera loop uses
            self.interp.set_tensor(self._in_index, x[i:i + 1])
            self.interp.invoke()
            for j in wanted:
                outs[j].append(self.interp.get_tensor(self._out_indices[j]).copy())
        return [np.concatenate(o, 0) if o else None for o in outs]


ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


class OnnxModel(Model):
    def __init__(self, artifact: Artifact, spec: PreprocessSpec, n_classes: int, threads: int | None = None,
                 providers: list[str] | None = None):
        super().__init__(artifact, spec, n_classes)
        import onnxruntime as ort

        self.runtime = f"onnxruntime {ort.__version__}"
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        if artifact.fmt.precision == "int8" and not onnx_fused_int8():
            # The QDQ graph as written (basic optimizations: no int8 fusion), where the fused kernels would move
            # answers (int8_dot_product; on such a CPU they are no faster than float anyway), or when asked to.
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # The sha256 covers this one file: refuse weights kept in other files ("external data"), then load from
        # the bytes just checked so onnxruntime opens nothing else.
        model_bytes = artifact.path.read_bytes()
        try:
            external = external_tensors(model_bytes)
        except OnnxParseError as e:
            raise EdgeclsError(f"cannot load {artifact.path.name}: not an ONNX model ({e})") from None
        if external:
            raise EdgeclsError(f"cannot load {artifact.path.name}: it keeps weights ({', '.join(external[:3])}) in "
                               "external data files, which a bundle does not allow (only the hashed file is read)")
        try:
            self.sess = ort.InferenceSession(model_bytes, sess_options=opts, providers=onnx_providers(providers))
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise EdgeclsError(f"cannot load {artifact.path.name}: {str(e).splitlines()[0][:200]}") from None
        del model_bytes
        self.providers = self.sess.get_providers()
        inp = self.sess.get_inputs()[0]
        self._in_name = inp.name
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        self.check_shape(shape, "edgecls.json preprocessing")
        if inp.type not in ONNX_DTYPES:
            raise EdgeclsError(f"{artifact.path.name}: unsupported input type {inp.type}")
        # ONNX files carry no scales; edgecls.json does (an ONNX converted from an int8 TFLite keeps its
        # uint8 input and output).
        outputs = self.sess.get_outputs()
        check_roles(self, len(outputs))
        out = outputs[self.roles["probabilities"]]
        classes = out.shape[-1] if out.shape else None
        if isinstance(classes, int) and classes != n_classes:
            raise EdgeclsError(f"{artifact.path.name}: model has {classes} outputs but the bundle has {n_classes} labels")
        self.input_io = self._io(inp.type, artifact.meta.get("input", {}))
        self.output_io = self._io(out.type, artifact.meta.get("output", {}))
        self.embedding_io = (self._io(outputs[self.roles["embedding"]].type, artifact.meta.get("embedding", {}))
                             if self.has_embedding else None)
        self.check_feed()

    def _labels_meta(self):
        return self.sess.get_modelmeta().custom_metadata_map.get(LABELS_META)

    @staticmethod
    def _io(onnx_type: str, meta: dict) -> TensorIO:
        return TensorIO(np.dtype(ONNX_DTYPES.get(onnx_type, np.float32)), float(meta.get("scale", 0.0)),
                        int(meta.get("zero_point", 0)))

    def _run(self, pixels: np.ndarray) -> list[np.ndarray]:
        x = self._to_input(pixels)
        # One frame at a time, as the camera loop runs, even where the batch is free: onnxruntime's float kernels
        # sum in a batch-dependent order, and in a QDQ graph that moves int8 answers by up to 4 codes (a tiny
        # digits model, 16 photos as one batch vs one by one), so eval would report answers no camera gives.
        # It costs eval and verify time, not the camera's (batch 1 anyway): 68 vs 57 ms for 16 photos on 2 x86 cores
        # (benchmarks/scratch/onnx_batch_order.py).
        runs = [self.sess.run(None, {self._in_name: x[i:i + 1]}) for i in range(len(x))]
        return [np.concatenate([r[j] for r in runs], 0) for j in range(len(runs[0]))] if runs else []


BACKENDS = {"litert": TFLiteModel, "onnxruntime": OnnxModel}


def output_roles(artifact: Artifact) -> dict[str, int]:
    """edgecls.json's artifacts.KEY.outputs: which output index is which (convert/embeddings.py); a bundle
    exported before the embedding output has none, and its one output is the probabilities."""
    roles = artifact.meta.get("outputs") or {"probabilities": 0}
    if (not isinstance(roles, dict) or "probabilities" not in roles
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in roles.values())):
        raise EdgeclsError(f"{artifact.path.name}: edgecls.json's outputs must map probabilities (and embedding) "
                           f"to output indices, not {roles!r}")
    return {k: v for k, v in roles.items() if k in ("probabilities", "embedding")}


def check_roles(model: Model, n_outputs: int) -> None:
    if any(i >= n_outputs for i in model.roles.values()):
        raise EdgeclsError(f"{model.artifact.path.name}: edgecls.json names output {max(model.roles.values())} but "
                           f"the model has {n_outputs} output(s): it belongs to another bundle; re-export")


def load_model(bundle: Bundle, family: str | None = None, precision: str | None = None,
               threads: int | None = None, **kw) -> Model:
    """The bundle's artifact for --format/--precision, opened, with its file's labels held to the bundle's."""
    art = bundle.artifact(family, precision)
    cls = BACKENDS[art.fmt.runtime]
    own_labels = base_labels(bundle)   # a taught version (device/teach/command.py) answers through head.npz
    if cls is OnnxModel:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise EdgeclsError("onnxruntime is not installed: pip install onnxruntime (Jetson: JetPack's onnxruntime-gpu)") from None
        model = cls(art, bundle.spec, len(own_labels), threads=threads, **kw)
    else:
        model = cls(art, bundle.spec, len(own_labels), threads=threads)
    embedded = model.embedded_labels()
    if embedded is not None and embedded != own_labels:   # export writes both from one list
        raise EdgeclsError(labels_mismatch(art.path.name, embedded, own_labels))
    model.labels_bound = embedded is not None   # False: exported before files carried labels (verify says so)
    return with_head(bundle, model)


def labels_mismatch(name: str, carried: list[str], listed: list[str]) -> str:
    """The one line refusing a model file whose labels are not the bundle's, naming the first difference."""
    return (f"{name} carries the labels {', '.join(carried[:4])}{'…' if len(carried) > 4 else ''} but the bundle "
            f"lists {', '.join(listed[:4])}{'…' if len(listed) > 4 else ''} ({labels_difference(carried, listed)}): "
            "it belongs to another bundle, or edgecls.json and labels.txt were edited; re-export")
