"""The bundle's self-test (`edgecls verify`, and `edgecls run` at start-up): the exam export stored in golden/.

Three checks, each of which catches what the others cannot:
1. **Outputs.** Each artifact runs on the stored prepared images; its probabilities are held to what the
   host's runtime gave on the very same pixels (max |Δp|, top-1 agreement), with top-1 agreement with the
   float model beside them. Catches another model file, another runtime's kernels, a wrong input feed.
2. **Photos.** The stored raw photos go through this machine's decoding and `prepare()` and must give the
   stored tensors: exactly with the exact resampler, within ±1 with OpenCV's (`pixel_tolerance`). Catches a
   wrong resize mode or colour order, which (1) cannot see: its pixels are prepared already.
3. **Normalisation.** An int8 model fed pixel codes carries the normalisation in its input quantization:
   scale s and zero point round(−o/s), read from the model file itself. edgecls.json's scale/offset must
   imply exactly that. (For a model with `in_model: true` and no such artifact, scale/offset are not used by
   any computation: editing them changes no answer, and there is nothing to catch.)

Tolerances (`tolerances()`) come from measurements (docs/pi-stack.md): fed the same pixels, LiteRT on an
emulated Pi 4 matched the host's int8 outputs within 1/256; other correct int8 kernels (TFLite's reference
kernels = tflite-runtime, onnxruntime's ARM kernels) differed by up to 13/256 (onnxruntime x86 vs ARM) and
40/256 (reference vs XNNPACK on a weak model), and flipped only near-ties (host margins 0.02–0.25). No TensorFlow.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecls.bundle import GOLDEN_LABELS, PIXEL_CODES, Bundle, golden_entries, labels_from_meta, verify_file
from edgecls.device.model.labels_check import labels_check, labels_line, unbound_note
from edgecls.errors import EdgeclsError
from edgecls.formats import BY_KEY

STEP = 1 / 256                  # one step of a uint8 probability output
SAME_KERNELS = 1 * STEP         # int8, same pixels, LiteRT x86 vs emulated Pi 4: within 1/256 on 120/120 photos
INT8_MAX_DIFF = 48 * STEP       # other int8 kernels: up to 40/256 measured (reference vs XNNPACK), + margin
FLOAT_MAX_DIFF = 1e-3           # float kernels: export holds float artifacts to 1e-3 of Keras (convert/gate.py)
NEAR_TIE = 0.3                  # int8: a top-1 may differ from the host's only where the host's margin between
                                # the two classes is below this (widest kernel flip measured: 0.57 vs 0.32)
UNRELATED = 2.0                 # mean |Δp| vs the host above this × the host's own mean |Δp| vs float: another
                                # model (tiny digits run: other kernels 0.42×, another run's int8 file 4.9×)
MAX_FILE_BYTES = 64 << 20       # a golden file (or array, inflated) larger than this is not one export wrote


def pixel_tolerance(spec) -> int:
    """How far (in 8-bit steps) this machine's prepare() may be from the host's on the same photo: 0 with the
    exact, CPU-independent resampler; 1 with OpenCV's (its INTER_AREA rounds by SIMD width: 25–68 of 76,800
    values off by ±1 between x86 and an emulated Pi 4, docs/pi-stack.md)."""
    from edgecls.preprocess import EXACT

    return 0 if getattr(spec, "resampler", None) == EXACT else 1


def tolerances() -> dict:
    """The rule's numbers, as export records them in edgecls.json (golden.tolerances) for the reader."""
    return {"int8_max_abs_diff": INT8_MAX_DIFF, "int8_same_kernels": SAME_KERNELS, "int8_near_tie": NEAR_TIE,
            "float_max_abs_diff": FLOAT_MAX_DIFF, "float_near_tie": 2 * FLOAT_MAX_DIFF,
            "wrong_model": f"mean |Δp| vs the host > {UNRELATED:g} × the host's own mean |Δp| vs float "
                           "+ float_max_abs_diff"}


class ExamFailed(EdgeclsError):
    exit_code = 1   # the bundle is readable but does not compute here what it computed on the host


# ---------------------------------------------------------------- the stored exam

@dataclass
class Golden:
    images: np.ndarray                      # (N,H,W,3) uint8, prepared
    float: np.ndarray                       # (N,C) the Keras model's probabilities
    outputs: dict[str, np.ndarray]          # artifact key → (N,C) the host runtime's probabilities
    runtimes: dict[str, str]                # artifact key → the host runtime that gave them
    photos: list[Path]
    photos_prepared: np.ndarray             # (P,H,W,3) uint8
    labels: list[str] | None = None         # the labels as exported (None: exported before golden kept them)
    # Where `float` is an int8 artifact's answers standing in for a float model the bundle lacks (a version taught
    # on a device with an int8-only bundle): what int8 moved the parent from its real float model. Without it the
    # host's own quantization error reads 0, and another CPU's int8 rounding looks like another model.
    stand_in_error: float = 0.0


def _checked(bundle: Bundle, entry: dict, where: str) -> Path:
    path = bundle.root / entry["file"]
    if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
        raise EdgeclsError(f"bundle file missing or not one export wrote: {path} ({where})")
    verify_file(path, entry["sha256"])
    return path


def _labels(bundle: Bundle, g: dict) -> list[str] | None:
    if GOLDEN_LABELS not in g:
        return None
    path = _checked(bundle, g[GOLDEN_LABELS], "golden.labels")
    return labels_from_meta(path.read_bytes(), f"{path} (golden.labels)")


def _array(bundle: Bundle, entry: dict, where: str) -> np.ndarray:
    path = _checked(bundle, entry, where)
    try:
        with np.load(path, allow_pickle=False) as z:
            with z.zip.open("array.npy") as f:   # the header first: a few KB of zip can inflate to gigabytes
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            if math.prod(shape) * np.dtype(dtype).itemsize > MAX_FILE_BYTES:
                raise ValueError("too large")
            return z["array"]
    except Exception as e:   # zipfile/ValueError/KeyError for a file that is not an edgecls array
        raise EdgeclsError(f"cannot read {path} ({where}): {type(e).__name__}: {e}") from None


def load_golden(bundle: Bundle) -> Golden | None:
    """The bundle's exam, every file checked against its sha256; None for a bundle exported without one."""
    g = bundle.meta.get("golden")
    if g is None:
        return None
    for name, e in golden_entries(g).items():
        if name.startswith("golden.photos["):
            verify_file(bundle.root / e["file"], e["sha256"])
    images, ref = _array(bundle, g["images"], "golden.images"), _array(bundle, g["float"], "golden.float")
    outputs = {k: _array(bundle, e, f"golden.outputs.{k}") for k, e in g["outputs"].items()}
    prepared = _array(bundle, g["photos_prepared"], "golden.photos_prepared")
    h, w, c = bundle.spec.height, bundle.spec.width, len(bundle.labels)
    shapes_ok = (images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (h, w, 3)
                 and prepared.dtype == np.uint8 and prepared.shape == (len(g["photos"]), h, w, 3)
                 and all(a.shape == (len(images), c) for a in (ref, *outputs.values())))
    if not shapes_ok:
        raise ExamFailed(f"preprocessing (size): the golden arrays of {bundle.root} are not {h}x{w}x3 for "
                         f"{c} classes: edgecls.json's height/width/labels were changed after export")
    return Golden(images, ref.astype(np.float32), {k: v.astype(np.float32) for k, v in outputs.items()},
                  {k: e.get("runtime", "?") for k, e in g["outputs"].items()},
                  [bundle.root / p["file"] for p in g["photos"]], prepared, _labels(bundle, g),
                  float(g["float"].get("stand_in_error", 0.0)))


# ---------------------------------------------------------------- the three checks

@dataclass
class ArtifactExam:
    key: str
    runtime: str
    host_runtime: str
    images: int
    max_abs_diff: float             # vs the host's runtime, same pixels
    mean_abs_diff: float
    host_quant_error: float         # mean |Δp| of the host's outputs vs float: what quantization itself moved
    agree_host: int                 # top-1 equal to the host's
    agree_float: int                # top-1 equal to the float (Keras) model's
    host_agree_float: int           # the host's own top-1 agreement with float on these images
    flips: list[dict] = field(default_factory=list)   # {image, host, here, host_margin}
    passed: bool = True
    kernels: str = "same"           # same | other (within the measured range) — only when passed
    why: str = ""

    @property
    def unrelated(self) -> bool:
        """Further from the host than the host is from float: not rounding, another model."""
        return self.mean_abs_diff > UNRELATED * self.host_quant_error + FLOAT_MAX_DIFF


def examine(model, golden: Golden) -> ArtifactExam:
    key = model.key
    if key not in golden.outputs:
        raise EdgeclsError(f"edgecls.json golden block has no host outputs for {key}: re-export the bundle")
    host, ref = golden.outputs[key], golden.float
    here = np.asarray(model.predict(golden.images), np.float32)
    int8 = BY_KEY[key].precision == "int8"
    limit, near = (INT8_MAX_DIFF, NEAR_TIE) if int8 else (FLOAT_MAX_DIFF, 2 * FLOAT_MAX_DIFF)
    finite = bool(np.isfinite(here).all())
    diff = np.abs(here - host) if finite else np.full_like(host, np.inf)
    hp, dp, fp = host.argmax(1), here.argmax(1), ref.argmax(1)
    flips = [{"image": int(i), "host": int(hp[i]), "here": int(dp[i]),
              "host_margin": round(float(host[i, hp[i]] - host[i, dp[i]]), 4)} for i in np.flatnonzero(hp != dp)]
    ex = ArtifactExam(key, model.runtime, golden.runtimes.get(key, "?"), len(here), float(diff.max()),
                      float(diff.mean()), max(float(np.abs(host - ref).mean()), golden.stand_in_error),
                      int((dp == hp).sum()),
                      int((dp == fp).sum()), int((hp == fp).sum()), flips)
    sure = [f for f in flips if f["host_margin"] >= near]
    if not finite:
        ex.passed, ex.why = False, "non-finite outputs (NaN or infinity)"
    elif sure:
        ex.passed, ex.why = False, (f"{len(sure)} of {len(here)} answers differ from the host's where the host was "
                                    f"sure (margin ≥ {near:g}; largest {max(f['host_margin'] for f in sure):.2f})")
    elif ex.max_abs_diff > limit:
        ex.passed, ex.why = False, f"max |Δp| vs the host {_p(ex.max_abs_diff, int8)} > {_p(limit, int8)}"
    elif int8 and ex.unrelated:
        ex.passed, ex.why = False, (f"mean |Δp| vs the host {ex.mean_abs_diff:.3f} is over {UNRELATED:g}× what int8 "
                                    f"moved the host from float ({ex.host_quant_error:.3f}): not a rounding difference")
    else:
        ex.kernels = "same" if ex.max_abs_diff <= (SAME_KERNELS if int8 else 1e-5) else "other"
    return ex


def _p(v: float, int8: bool) -> str:
    return f"{v * 256:.1f}/256" if int8 else f"{v:.2g}"


def photo_check(golden: Golden, spec) -> dict:
    """Each stored raw photo through this machine's decoder and prepare() vs the host's tensor."""
    from edgecls.images import load_rgb
    from edgecls.preprocess import prepare

    tol, worst, off = pixel_tolerance(spec), 0, 0
    for path, want in zip(golden.photos, golden.photos_prepared):
        got = prepare(load_rgb(path), spec, image_order="RGB")
        if got.shape != want.shape:
            worst, off = 255, off + want.size
            continue
        d = np.abs(got.astype(np.int16) - want.astype(np.int16))
        worst, off = max(worst, int(d.max())), off + int((d > 0).sum())
    return {"photos": len(golden.photos), "values_off": off, "max_diff": worst, "tolerance": tol,
            "passed": worst <= tol}


def normalisation_problem(model, spec) -> str | None:
    """A pixel-codes model's input quantization (from the file) against edgecls.json's scale/offset: the
    only place an in-model normalisation is visible to the device (see the module docstring)."""
    if model.feed != PIXEL_CODES:
        return None
    io, name = model.input_io, model.artifact.path.name
    if not spec.in_model:
        return f"edgecls.json says in_model false, but {name} takes pixel codes (its normalisation is inside it)"
    if len(set(spec.scale)) != 1 or len(set(spec.offset)) != 1 or spec.scale[0] <= 0:
        return f"edgecls.json's per-channel scale/offset cannot be {name}'s one input quantization"
    s, o = spec.scale[0], spec.offset[0]
    z = math.floor(-o / s + 0.5) - (128 if np.dtype(io.dtype) == np.int8 else 0)
    if not math.isclose(io.scale, s, rel_tol=1e-5) or io.zero_point != z:
        return (f"edgecls.json's scale {s:.6g} / offset {o:.6g} mean input scale {s:.6g}, zero point {z}, "
                f"but {name} was built for scale {io.scale:.6g}, zero point {io.zero_point}")
    return None


# ---------------------------------------------------------------- the exam and its verdict

@dataclass
class Exam:
    bundle: str
    photos: dict
    normalisation: str | None
    artifacts: dict[str, ArtifactExam]      # the examined artifacts
    others: dict[str, ArtifactExam]         # examined only to name the cause of a failure
    labels: dict = field(default_factory=dict)   # labels_check
    normalised_here: bool = False           # edgecls.json's scale/offset reach the models (in_model false)
    reason: str | None = None               # None: passed
    seconds: float = 0.0
    sensor: str | None = None               # the IMX500 package's note: an exam this host cannot take (imx500_camera)

    @property
    def passed(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "passed": self.passed, "reason": self.reason, "seconds": round(self.seconds, 3),
                "photos": self.photos, "normalisation": self.normalisation or "ok", "labels": self.labels,
                "tolerances": tolerances(),
                "artifacts": {k: {**_json_safe(asdict(a)), "verdict": _verdict(a)} for k, a in self.artifacts.items()}}


def _json_safe(row: dict) -> dict:
    """NaN/inf (a model that outputs them) as null: --json output is strict JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _verdict(a: ArtifactExam) -> str:
    if not a.passed:
        return "fail"
    return "pass" if a.kernels == "same" else "pass (other kernels, within the measured range)"


def cause(exam: Exam) -> str | None:
    """One line naming the likely cause of a failed exam, or None when it passed."""
    if exam.labels.get("problem"):
        return exam.labels["problem"]
    ph = exam.photos
    if not ph["passed"]:
        return (f"preprocessing (resize/colour order/normalisation): the bundle's {ph['photos']} stored photos "
                f"prepare to other pixels here ({ph['values_off']} values off, up to {ph['max_diff']}; allowed "
                f"{ph['tolerance']}) — edgecls.json's resize or color_order differs from export's, or this "
                f"machine resizes differently")
    if exam.normalisation:
        return f"preprocessing (normalisation): {exam.normalisation}"
    failed = [a for a in exam.artifacts.values() if not a.passed]
    if not failed:
        return None
    everything = {**exam.others, **exam.artifacts}
    every_one = len(everything) > 1 and all(not a.passed for a in everything.values())
    # Pixels that pass (1) and (3) can still reach every model wrong only through edgecls.json's scale/offset,
    # which are used only with in_model false; with in_model true, every file failing means every file is wrong.
    if every_one and exam.normalised_here:
        return (f"preprocessing (resize/colour order/normalisation): every artifact answers differently from the "
                f"host on the same stored pixels ({failed[0].key}: {failed[0].why}) — the pixels reach the models "
                f"differently here (edgecls.json in_model/scale/offset or input feed), or every model file is wrong")
    if every_one and all(a.unrelated for a in everything.values()):
        return (f"wrong model files: every artifact ({', '.join(everything)}) answers unlike the host's on the same "
                f"stored pixels, which reach them as on the host (photos and normalisation pass; in_model true) "
                f"({failed[0].key}: {failed[0].why}): the files are not the ones exported with this bundle")
    a = failed[0]
    if a.unrelated:
        return (f"wrong model file: {a.key} agrees with the float model on {a.agree_float}/{a.images} stored images, "
                f"the host's {a.key} on {a.host_agree_float}/{a.images}, and its outputs are unrelated to the host's "
                f"({a.why}): {a.key}'s file is not the one exported with this bundle")
    return (f"runtime/kernels: {a.key} on {a.runtime} differs from the host's {a.host_runtime} on the same pixels "
            f"({a.why}) while the bundle's other checks pass")


def run_exam(bundle: Bundle, models: dict, golden: Golden, load=None, t0: float | None = None) -> Exam:
    """Examine `models` (key → loaded Model). `load(key)` loads another artifact: every pixel-codes artifact
    for the normalisation check, and, when one fails, the others, to name the cause. `t0`: when the exam
    began (its seconds count loading the golden files too)."""
    t0 = time.perf_counter() if t0 is None else t0
    photos = photo_check(golden, bundle.spec)
    norm = None
    for key, art in bundle.artifacts.items():
        if (art.meta.get("input") or {}).get("feed") == PIXEL_CODES and (key in models or load):
            norm = norm or normalisation_problem(models[key] if key in models else load(key), bundle.spec)
    exams = {k: examine(m, golden) for k, m in models.items()}
    others = {}
    if load and not all(e.passed for e in exams.values()):
        others = {k: examine(load(k), golden) for k in bundle.artifacts if k not in exams and k in golden.outputs}
    exam = Exam(str(bundle.root), photos, norm, exams, others, labels=labels_check(bundle, golden.labels, models),
                normalised_here=not bundle.spec.in_model)
    exam.reason = cause(exam)
    exam.seconds = time.perf_counter() - t0
    return exam


def loader(bundle: Bundle, threads: int | None = None):
    from edgecls.device.model.runtime import load_model

    def load(key: str):
        fmt = BY_KEY[key]
        return load_model(bundle, fmt.family, fmt.precision, threads=threads)
    return load


def verify(bundle: Bundle, keys: list[str], threads: int | None = None) -> Exam:
    """`edgecls verify`: the exam of `keys`. EdgeclsError when the bundle has no exam (exit 2)."""
    t0 = time.perf_counter()
    golden = load_golden(bundle)
    if golden is None:
        raise EdgeclsError(f"bundle {bundle.root} has no golden exam (exported before edgecls could self-test): "
                           "re-export it to verify it")
    load = loader(bundle, threads)
    exam = run_exam(bundle, {k: load(k) for k in keys}, golden, load, t0)
    if "imx500" in bundle.meta:   # export --target imx500: say which exam applied to it, and that this is not it
        from edgecls.device.capture.imx500_camera import startup_note

        exam.sensor = startup_note(bundle.meta)
    return exam


@dataclass
class SelfTest:
    """What `run` reports of its start-up exam: a console line, and a record for the --json summary."""
    line: str
    record: dict


def startup_exam(bundle: Bundle, model, threads: int | None = None) -> SelfTest:
    """`edgecls run`'s self-test of the artifact it will use; ExamFailed (exit 1) when it fails. Nothing is
    printed here: a later error must still be the run's only line on stderr."""
    t0 = time.perf_counter()
    golden = load_golden(bundle)
    if golden is None:
        unbound = "" if model.labels_bound else "\n" + unbound_note(bundle)
        return SelfTest(f"edgecls: note: {bundle.root} has no golden exam (exported before edgecls could "
                        f"self-test): running without a self-test{unbound}",
                        {"passed": None, "skipped": "no golden exam", "labels_bound": model.labels_bound})
    exam = run_exam(bundle, {model.key: model}, golden, loader(bundle, threads), t0)
    if not exam.passed:
        raise ExamFailed(f"self-test failed, not starting (--no-verify skips it): {exam.reason}")
    a, ph = exam.artifacts[model.key], exam.photos
    return SelfTest(f"edgecls: self-test passed in {exam.seconds:.2f} s: {model.key} {a.agree_host}/{a.images} answers "
                    f"as on the host, max |Δp| {_p(a.max_abs_diff, BY_KEY[model.key].precision == 'int8')}; "
                    f"{ph['photos']} photos prepared {'exactly' if ph['max_diff'] == 0 else 'within ±1'}"
                    + ("\n" + unbound_note(bundle) if exam.labels["unbound"] else ""),
                    {"passed": True, "artifact": model.key, "seconds": round(exam.seconds, 3),
                     "agree_host": a.agree_host, "images": a.images, "max_abs_diff": a.max_abs_diff,
                     "photos_max_diff": ph["max_diff"], "labels_bound": not exam.labels["unbound"]})


def format_exam(exam: Exam) -> str:
    """The exam as `edgecls verify` prints it: one line per artifact, then the photos and the verdict."""
    lines = []
    for k, a in exam.artifacts.items():
        int8 = BY_KEY[k].precision == "int8"
        lines.append(f"{k:<13} {_verdict(a):<5}  max |Δp| {_p(a.max_abs_diff, int8):>9}  top-1 as host "
                     f"{a.agree_host}/{a.images}  as float {a.agree_float}/{a.images} (host {a.host_agree_float})  "
                     f"{a.runtime}{'' if a.passed else '  — ' + a.why}")
    ph = exam.photos
    lines.append(f"photos        {'pass' if ph['passed'] else 'fail'}   {ph['photos']} raw photos prepared here: "
                 f"{ph['values_off']} values off (max {ph['max_diff']}, allowed {ph['tolerance']})")
    lines.append(f"normalisation {'fail   ' + exam.normalisation if exam.normalisation else 'pass'}")
    lines.append("labels        " + labels_line(exam.labels))
    if exam.sensor:
        lines.append(f"imx500        not examined here: {exam.sensor}")
    lines.append(f"verdict: {'PASS' if exam.passed else 'FAIL'} ({exam.seconds:.2f} s)")
    return "\n".join(lines)
