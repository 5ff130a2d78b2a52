"""What export's builders share: the run's images with Keras' answers (`Images`, `load_images`), and the
`Context` that builds the expensive things once (SavedModels, the float files, QAT, the PTQ search) and
measures candidates through the device runtime (`runtime_model`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from edgecls.bundle import Artifact
from edgecls.dataset import SPLITS
from edgecls.errors import EdgeclsError
from edgecls.formats import BY_KEY
from edgecls.progress import progress_bar

if TYPE_CHECKING:
    from edgecls.convert.export import ExportOptions

LATENCY_ROUNDS = 100             # interleaved calls per model for a latency ratio (~1 s for MobileNetV2 160 px)

# ---------------------------------------------------------------- the run's images and Keras' answers

@dataclass
class Images:
    """Every split's prepared images, labels and the Keras model's probabilities on them."""
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    keras: dict[str, np.ndarray]

    @property
    def search_split(self) -> str:
        """What the search and auto-selection score on: the validation split (the test split is for the
        verdict, and training images flatter int8 — measured on flowers: all-int8 agreed with float on
        99.5% of train+val but 97.3% of val), the training split only for a run without one."""
        return "val" if len(self.x["val"]) else "train"

    def search_set(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixels, labels, Keras top-1) of the search's split (`search_split`)."""
        split = self.search_split
        return self.x[split], self.y[split], self.keras[split].argmax(1)




# ---------------------------------------------------------------- what builders share (built lazily, once)

@dataclass
class Built:
    """One builder's result: the method kept and what edgecls.json records about how it was built."""
    method: str
    meta: dict = field(default_factory=dict)
    source: Path | None = None   # the kept candidate's file (the ONNX from-tflite route converts it)


@dataclass
class Context:
    opts: ExportOptions
    model: object
    spec: object
    labels: list[str]
    work: Path                       # scratch folder (SavedModels, candidates)
    calib: np.ndarray                # (N,H,W,3) uint8 from the training split
    images: Images
    stop: object = None              # edgecls.stopping.StopRequest: a signal is acted on after each step
    _cache: dict = field(default_factory=dict)

    def once(self, name: str, make: Callable[[], object]):
        if name not in self._cache:
            self._cache[name] = make()
            if self.stop is not None:
                self.stop.check()
        return self._cache[name]

    def saved_model(self, which: str = "float") -> Path:
        """SavedModel of the trained model ("float"), of its int8-rounded weights ("ptq", `rounded`) or of QAT's."""
        from edgecls.convert import tflite

        if which == "ptq" and self.opts.weight_rounding == "nearest":   # the same model: one SavedModel
            return self.saved_model("float")

        def model():
            return {"float": lambda: self.model, "ptq": lambda: self.rounded()[0], "qat": self.qat_model}[which]()
        return self.once(f"saved_{which}", lambda: tflite.save_batch1(model(), self.spec, self.work / f"saved_{which}"))

    def rounded(self) -> tuple[object, dict]:
        """(model, record): the model PTQ converts, its conv/dense weights on the converters' int8 grid by
        --weight-rounding (convert/rounding.py); "nearest" is the trained model itself, which the converters
        round to nearest."""
        from edgecls.convert import rounding

        def make():
            if self.opts.weight_rounding == "nearest":
                return self.model, {"method": "nearest"}
            with progress_bar("weight rounding (GPTQ)", quiet=not self.opts.show_progress, total=1) as adv:
                return rounding.rounded_copy(self.model, self.calib, progress=adv)
        return self.once("rounded", make)

    def ptq_onnx(self) -> Path:
        """The float ONNX that QDQ int8 quantizes: of the rounded model (`rounded`), or the float artifact's own."""
        from edgecls.convert import onnx_export

        if self.opts.weight_rounding == "nearest":
            return self.float_onnx()
        return self.once("ptq_onnx", lambda: onnx_export.to_float(self.rounded()[0], self.spec,
                                                                    self.work / "ptq-source.onnx"))

    def float_tflite(self) -> Path:
        """The float TFLite, converted once: the tflite-float artifact and the search's latency reference."""
        from edgecls.convert import tflite

        def make():
            path = self.work / "float.tflite"
            path.write_bytes(tflite.to_float(self.saved_model("float")))
            return path
        return self.once("float_tflite", make)

    def float_onnx(self) -> Path:
        """The float ONNX, converted once: the onnx-float artifact and the source of QDQ int8."""
        from edgecls.convert import onnx_export

        return self.once("float_onnx", lambda: onnx_export.to_float(self.model, self.spec, self.work / "float.onnx"))

    def qat_model(self):
        from edgecls.convert import qat

        def make():
            steps = int(np.ceil(len(self.images.x["train"]) / qat.BATCH)) * self.opts.qat_epochs
            with progress_bar(f"QAT fine-tune ({self.opts.qat_epochs} epochs)", quiet=not self.opts.show_progress,
                              total=steps) as adv:
                return qat.fine_tune(self.model, self.images.x["train"], self.opts.qat_epochs, lr=self.opts.qat_lr,
                                     progress=adv, calib=self.calib[:qat.CALIB_BATCH])
        return self.once("qat_model", make)

    def ptq_search(self) -> dict:
        """PTQ with the mixed-precision search, run once for both int8 formats (convert/search.py):
        {"path" (the kept int8 TFLite), "float_ops", "search" (what edgecls.json records)}."""
        return self.once("ptq_search", self._ptq_search)

    def _ptq_search(self) -> dict:
        from edgecls.convert import search, tflite

        o = self.opts
        if o.full_int8:
            path = self.work / "tflite-int8.ptq-full.tflite"
            path.write_bytes(tflite.to_int8(self.saved_model("ptq"), self.calib, o.io_dtype))
            return {"path": path, "float_ops": [], "search": None}
        calibrated, samples = tflite.calibrate(self.saved_model("ptq"), self.calib, o.io_dtype)
        ranked = tflite.ranked_op_errors(calibrated, samples)

        def build(ops):
            path = self.work / f"tflite-int8.ptq-{len(ops)}.tflite"
            path.write_bytes(tflite.quantize_guarded(calibrated, ops, o.io_dtype))
            return path

        n = min(o.max_float_ops, len(ranked)) + 1
        with progress_bar("mixed-precision search", quiet=not o.show_progress, total=n) as adv:
            result = search.choose_float_ops(ranked, build, lambda p: self.agreement("tflite-int8", p),
                                lambda paths: self.latency_ratios("tflite-int8", paths, self.float_tflite()),
                                o.target_agreement / 100, o.max_latency_ratio, o.max_float_ops, progress=adv)
        kept = result["steps"][result["chosen"]]
        return {"path": result["path"], "float_ops": kept.float_ops,
                "search": search.record(result, o.target_agreement / 100, o.max_latency_ratio,
                                        scored_on=self.images.search_split)}

    def model_for(self, key: str, path: Path, meta: dict | None = None, threads: int | None = None):
        return runtime_model(key, path, self.spec, len(self.labels), threads or self.opts.threads, meta)

    def agreement(self, key: str, path: Path, meta: dict | None = None) -> tuple[int, int]:
        """(images where the candidate's top-1 equals Keras', images) on the search's split (Images.search_split)."""
        x, _, ref = self.images.search_set()
        pred = self.model_for(key, path, meta).predict(x).argmax(1)
        return int((pred == ref).sum()), len(ref)

    def latency_ratios(self, key: str, paths: list[Path], float_path: Path, meta: dict | None = None) -> list[float]:
        """int8 / float latency of each file, same runtime, one thread each, all timed in turns with the float
        model in this process (float, q0, q1, …, float, q0, …): the median over rounds of each call's time over
        the float call's of that round."""
        from edgecls.device.bench import interleaved_ratios

        float_key = key.replace("int8", "float")
        x = self.images.x["val"][:1] if len(self.images.x["val"]) else self.calib[:1]
        base = self.model_for(float_key, float_path, threads=1)
        models = [self.model_for(key, p, meta, threads=1) for p in paths]
        return interleaved_ratios(base.predict, [m.predict for m in models], x, rounds=LATENCY_ROUNDS)

    def candidate(self, key: str, method: str, suffix: str) -> Path:
        return self.work / f"{key}.{method}{suffix}"


def keras_predictor(model):
    """uint8 pixels → probabilities, through one traced graph (eager calls cost ~150 ms of Python each)."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda px: fn(tf.constant(px, tf.float32)).numpy()


def predict_all(model, x: np.ndarray) -> np.ndarray:
    return model.predict(x) if len(x) else np.zeros((0, model.n_classes), np.float32)


def runtime_model(key: str, path: Path, spec, n_classes: int, threads: int | None, meta: dict | None = None):
    from edgecls.device.model.runtime import BACKENDS

    fmt = BY_KEY[key]
    # A candidate has no edgecls.json entry yet: its I/O block (input.feed) comes from the file, as it will
    # there; what the builder recorded goes on top (the from-tflite ONNX's uint8 scales: ONNX files carry none).
    art = Artifact(fmt, path, {"output_kind": "probabilities", **entry_fields_of(key, path, n_classes), **(meta or {})})
    return BACKENDS[fmt.runtime](art, spec, n_classes, threads=threads)


def entry_fields_of(key: str, path: Path, n_classes: int | None = None) -> dict:
    """The fields of artifact `key`'s edgecls.json entry that its file itself carries (input, output, …),
    read by its family's reader."""
    from edgecls.convert import onnx_export, tflite

    return (tflite if BY_KEY[key].family == "tflite" else onnx_export).entry_fields(path, n_classes)


def calibration_subset(items: list[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    """Up to n training items, round-robin over classes so every class is represented."""
    by_class: dict[int, list] = {}
    for it in sorted(items):
        by_class.setdefault(it[1], []).append(it)
    out, i = [], 0
    while len(out) < min(n, len(items)):
        for y in sorted(by_class):
            if i < len(by_class[y]) and len(out) < n:
                out.append(by_class[y][i])
        i += 1
    return out


def check_images(run) -> tuple[dict[str, list], str]:
    """Every split's items and the split the verdict is on, after checking that each image is still there (a
    stat each: one missing image must not become an internal error mid-export). Runs before the model loads."""
    items = {s: run.split_items(s) for s in SPLITS}
    if not items["train"]:
        raise EdgeclsError(f"run {run.root} has no training split in splits.json: nothing to calibrate on")
    eval_split = "test" if items["test"] else "val"
    if not items[eval_split]:
        raise EdgeclsError(f"run {run.root} has neither a test nor a val split to measure the export on")
    missing = [rel for s in items.values() for rel, _ in s if not (run.data_root / rel).is_file()]
    if missing:
        raise EdgeclsError(f"{len(missing)} of the run's images are missing from {run.data_root} (e.g. {missing[0]})")
    return items, eval_split


def load_calib_folder(folder: Path, spec, n: int) -> tuple[np.ndarray, dict]:
    """`export --calib DIR`: int8 calibration images from a folder of device frames (any depth, class folders or
    not), prepared with the run's own preprocessing (`spec`). At most `n` (--calib-samples), evenly spaced over
    the sorted list. Every problem is one line, raised before the model loads. Returns (images, the record
    edgecls.json and the report keep: path, images, list_sha256 over each used file's path and bytes)."""
    import hashlib
    import os

    from edgecls.fsutil import sha256_file
    from edgecls.images import IMAGE_EXTS, is_image_name, load_rgb
    from edgecls.preprocess import prepare

    if not folder.is_dir():
        raise EdgeclsError(f"--calib {folder}: {'not a folder' if folder.exists() else 'folder not found'}")
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))   # hidden: half-written captures
        found += [Path(dirpath) / f for f in filenames if is_image_name(f) and not f.startswith(".")]
    found.sort()
    if not found:
        raise EdgeclsError(f"--calib {folder}: no images in it (looked for {', '.join(IMAGE_EXTS)})")
    used = [found[i] for i in np.linspace(0, len(found) - 1, min(n, len(found))).round().astype(int)]
    x = np.empty((len(used), spec.height, spec.width, 3), np.uint8)
    h = hashlib.sha256()
    for i, path in enumerate(used):
        rel = path.relative_to(folder).as_posix()
        try:
            x[i] = prepare(load_rgb(path), spec)
        except Exception as e:  # PIL raises many types for corrupt data
            raise EdgeclsError(f"--calib {folder}: cannot read {rel} ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:80] if str(e) else 'corrupt'})") from None
        h.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return x, {"source": "folder", "path": str(folder.resolve()), "images": len(used), "found": len(found),
               "list_sha256": h.hexdigest()}


def load_images(run, items: dict[str, list], opts: ExportOptions, keras_predict,
                calib_folder: np.ndarray | None = None) -> tuple[Images, np.ndarray]:
    """Every split's images (`items`, from check_images) with Keras' answers, and the calibration images: a
    subset of the training split, or `calib_folder` (from load_calib_folder) when given."""
    from edgecls.dataset import load_arrays

    x, y, keras = {}, {}, {}
    for split in SPLITS:
        with progress_bar(f"loading {split} images", quiet=not opts.show_progress,
                          total=len(items[split])) as adv:
            x[split], y[split] = load_arrays(run.data_root, items[split], run.spec, progress=adv)
        with progress_bar(f"Keras on {split}", quiet=not opts.show_progress, total=len(x[split])) as adv:
            parts = []
            for i in range(0, len(x[split]), 32):
                parts.append(keras_predict(x[split][i:i + 32]))
                adv(min(i + 32, len(x[split])), len(x[split]))
            keras[split] = np.concatenate(parts) if parts else np.zeros((0, len(run.labels)), np.float32)
    if calib_folder is not None:
        return Images(x, y, keras), calib_folder
    calib_items = calibration_subset(items["train"], opts.calib_samples)
    index = {it: i for i, it in enumerate(items["train"])}
    calib = x["train"][[index[it] for it in calib_items]]
    return Images(x, y, keras), calib
