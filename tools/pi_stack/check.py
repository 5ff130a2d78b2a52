#!/usr/bin/env python3
"""Does edgecls give the host's answers on a Raspberry Pi's software stack?

    python tools/pi_stack/check.py BUNDLE IMAGES_DIR [--cpus cortex-a72,cortex-a53] [--json-out FILE]

Builds (or reuses) the emulated Pi OS Bookworm stack with `build.sh`, then, for every int8 artifact of
BUNDLE: runs `edgecls eval BUNDLE IMAGES --json` and `edgecls run BUNDLE --source IMAGES --headless --json` on the
host and in each Pi environment, and prints per environment the share of images whose top-1 answer
matches the host's. `edgecls doctor --json` must name the runtime each environment has, and warn about
the tflite-runtime + NumPy 2 trap in the environment built to fall into it. Two more checks (pixels.py) keep
preprocessing apart from kernels: `same-pixels` runs each int8 artifact on the host's prepared tensors (so only
the kernels differ), `pixels` asserts that prepare() gives byte-identical tensors with the exact resampler.
An image that flips anywhere is counted once in the closing summary. `teach` (teach_check.py) teaches a copy of
the bundle a new label from 5 photos on the host and, once per CPU in the first runtime environment, on the Pi, and
compares the two new versions; `edgecls verify` must pass on the Pi's.
Exit 0 when every command worked and every agreement is >= --min-agreement (default 0.99), 1 otherwise,
2 on bad usage. Standard library only (teach's comparison imports NumPy, which edgecls brings): it runs with any
host python that has edgecls installed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_sibling(name: str):
    """A module of this folder (check.py is run as a script and loaded by tests/test_pi_stack.py as a file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"edgecls_pi_stack_{name}", HERE / f"{name}.py")
    mod = sys.modules.get(spec.name)
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod   # dataclasses look their module up here
        spec.loader.exec_module(mod)
    return mod


teach_check = load_sibling("teach_check")
INT8_ARTIFACTS = {"tflite-int8": "tflite", "onnx-int8": "onnx"}   # bundle artifact key -> --format
# Environment -> the TFLite runtime `edgecls doctor` must report there (see build.sh).
ENVS = {"litert": "ai-edge-litert", "tflite": "tflite-runtime"}
# `edgecls run` per environment: the tflite env exists for the TFLite fallback (its onnxruntime is the
# litert env's, and `eval` there covers ONNX under NumPy 1 already), so it runs the TFLite artifact only.
RUN_ARTIFACTS = {"litert": tuple(INT8_ARTIFACTS), "tflite": ("tflite-int8",)}
TRAP_ENV = "tflite-np2"
# The ARMv8.2 dot-product instructions (SDOT/UDOT) a Pi 4 / Pi 3 lacks: seeing them means QEMU_CPU was
# not applied, and the default `max` CPU would hide a wheel that crashes with SIGILL on the real board.
NO_DOTPROD_CPUS = ("cortex-a72", "cortex-a53")
CPU_FEATURES = ("try:\n from numpy._core._multiarray_umath import __cpu_features__ as f\n"
                "except ImportError:\n from numpy.core._multiarray_umath import __cpu_features__ as f\n"
                "import platform; print(platform.machine(), *sorted(k for k, v in f.items() if v))")
COMMAND_TIMEOUT_S = 900
# A Pi answer that differs from the host's is a *near-tie* when the host scored it at most this much below
# its own answer: int8 kernels that round differently per CPU flip those (the widest measured: onnxruntime,
# host 0.57 vs 0.32 on a trained bundle, docs/pi-stack.md); a preprocessing or label bug flips confident ones.
NEAR_TIE = 0.3
# The checks --commands can ask for: the CLI's answers (eval, run), the int8 outputs on the host's own
# prepared tensors (same-pixels: kernels alone), the byte-identity of prepare() itself (pixels) and the
# bundle's own exam (verify: `edgecls verify`, the golden images and photos export stored, device/model/verify.py),
# one signed update (update) and a new class taught on the Pi against the host's (teach: teach_check.py).
SAME_PIXELS, PIXELS, VERIFY, UPDATE, TEACH = "same-pixels", "pixels", "verify", "update", teach_check.TEACH
COMMANDS = ("eval", "run", SAME_PIXELS, PIXELS, VERIFY, UPDATE, TEACH)


@dataclass
class Row:
    cpu: str
    env: str
    check: str            # "eval tflite-int8", "run onnx-int8", "doctor", ...
    ok: bool
    seconds: float
    agree: int = 0
    total: int = 0
    detail: str = ""
    mismatches: list = field(default_factory=list)
    near_ties: int = 0    # of the mismatches, how many are near-ties on the host (see NEAR_TIE)

    @property
    def agreement(self) -> float | None:
        return self.agree / self.total if self.total else None


@dataclass
class Proc:
    rc: int
    out: str
    err: str
    seconds: float

    def last_err(self) -> str:
        lines = [l for l in self.err.splitlines() if l.strip()]
        return lines[-1] if lines else f"exit {self.rc}"


@dataclass
class Reference:
    """The host's answers to one check (command × artifact), which a Pi's answers are held to: {file: top-1},
    and {file: [(label, probability), ...]} best first, to tell near-ties from real differences."""
    command: str
    artifact: str
    top1: dict[str, str]
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    @property
    def check(self) -> str:   # the name rows carry: "eval tflite-int8"
        return f"{self.command} {self.artifact}"


def call(argv: list[str], env: dict | None = None) -> Proc:
    t = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT_S)
        return Proc(p.returncode, p.stdout, p.stderr, time.perf_counter() - t)
    except subprocess.TimeoutExpired:
        return Proc(124, "", f"timed out after {COMMAND_TIMEOUT_S}s", time.perf_counter() - t)


# ---- reading the commands' JSON -------------------------------------------------------------------

def run_records(stdout: str):
    """`edgecls run --json`: one record per frame with "file", "label" and "top", then a {"summary": ...} line."""
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rec = json.loads(line)
            if "file" in rec and "label" in rec:
                yield rec


def top1_from_run(stdout: str) -> dict[str, str]:
    """The model's top-1 class per frame (`top[0]`), not `label`: the label is "unknown" where the bundle's unknown
    rule (a threshold on a score) says so, and a score at that threshold flips between CPUs as a near-tie does;
    what this check compares is the kernels' answers."""
    return {rec["file"]: (rec["top"][0]["label"] if rec.get("top") else rec["label"]) for rec in run_records(stdout)}


def top_from_run(stdout: str) -> dict[str, list[tuple[str, float]]]:
    """{file: [(label, probability), ...]}, best first."""
    return {rec["file"]: [(t["label"], float(t["p"])) for t in rec["top"]] for rec in run_records(stdout)}


def is_near_tie(host_top: list[tuple[str, float]] | None, pi_label: str) -> bool:
    theirs = dict(host_top or []).get(pi_label)
    return theirs is not None and host_top[0][1] - theirs <= NEAR_TIE


def host_odds(host_top: list[tuple[str, float]] | None, pi_label: str) -> str:
    """How the host scored its answer and the Pi's, for the report: "p 0.52 vs 0.41"."""
    if not host_top:
        return ""
    theirs = dict(host_top).get(pi_label)
    return f"p {host_top[0][1]:.2f} vs {'?' if theirs is None else f'{theirs:.2f}'}"


def grade_mismatches(row: Row, tops: dict, where: str, rel=lambda f: f) -> str:
    """Count row's mismatches that are near-ties under `tops` ({file: the reference side's top-k}), attach
    its odds to each, and return the phrase for row.detail ("" when nothing differs)."""
    row.near_ties = sum(is_near_tie(tops.get(rel(f)), got) for f, _, got in row.mismatches)
    row.mismatches = [(rel(f), want, got, host_odds(tops.get(rel(f)), got)) for f, want, got in row.mismatches]
    return f"; {row.near_ties} of the {len(row.mismatches)} that differ are near-ties {where}" if row.mismatches else ""


def top1_from_eval(stdout: str) -> dict[str, tuple[dict[str, str], str]]:
    """`edgecls eval --json`: artifact key -> ({file: top-1 label}, runtime that ran it)."""
    doc = json.loads(stdout)
    files, classes = doc["files"], doc["classes"]
    out = {}
    for key, art in doc["artifacts"].items():
        preds = art["predictions"]
        if len(preds) != len(files):
            raise ValueError(f"{key}: {len(preds)} predictions for {len(files)} files")
        out[key] = ({f: classes[int(i)] for f, i in zip(files, preds)}, str(art.get("runtime", "?")))
    return out


def compare(host: dict[str, str], pi: dict[str, str]) -> tuple[int, int, list]:
    """(same top-1, images the host classified, [(file, host label, pi label)] for the others)."""
    diff = [(f, lab, pi.get(f, "<missing>")) for f, lab in sorted(host.items()) if pi.get(f) != lab]
    return len(host) - len(diff), len(host), diff


# ---- the checks ---------------------------------------------------------------------------------

def eval_args(bundle: str, images: str) -> list[str]:
    # One eval per environment covers every int8 artifact (eval also runs the float reference, if any).
    return ["eval", bundle, images, "--json", "--precision", "int8"]


def run_args(bundle: str, images: str, fmt: str) -> list[str]:
    return ["run", bundle, "--source", images, "--headless", "--json", "--format", fmt, "--precision", "int8"]


PARSERS = {"eval": top1_from_eval, "run": top1_from_run}


def predictions(proc: Proc, kind: str):
    """(parsed predictions, "") or (None, why the command failed)."""
    if proc.rc != 0:
        return None, f"exit {proc.rc}: {proc.last_err()}"
    if "Traceback" in proc.err:
        return None, "printed a traceback"
    try:
        preds = PARSERS[kind](proc.out)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        return None, f"unreadable --json output: {type(e).__name__}: {e}"
    return (preds, "") if preds else (None, "no per-image predictions")


def doctor_checks(proc: Proc) -> list[dict]:
    if proc.rc != 0 or "Traceback" in proc.err:
        raise ValueError(f"exit {proc.rc}: {proc.last_err()}")
    return json.loads(proc.out)["checks"]


def check_doctor(proc: Proc, env: str) -> tuple[bool, str]:
    """The doctor must name the runtime the environment has (and, in the trap env, warn about NumPy 2)."""
    try:
        checks = doctor_checks(proc)
    except (ValueError, KeyError, TypeError) as e:
        return False, str(e)
    text = lambda c: f"{c.get('name', '')} {c.get('detail', '')}".lower()   # noqa: E731
    numpy_warn = [c for c in checks if c.get("status") == "warn" and "numpy" in text(c)]
    if env == TRAP_ENV:
        if not numpy_warn:
            return False, "no warning about tflite-runtime + NumPy 2"
        return True, f"warns: {numpy_warn[0]['detail']}"
    want = ENVS[env]
    found = [c for c in checks if c.get("status") == "ok" and want in text(c)]
    if not found:
        return False, f"does not report {want} as ok"
    if numpy_warn:
        return False, f"warns about NumPy where it should not: {numpy_warn[0]['detail']}"
    return True, f"found {found[0]['detail']}"


def check_trap_run(proc: Proc) -> tuple[bool, str]:
    """tflite-runtime 2.14 under NumPy 2 cannot work: edgecls must stop with its one-line error."""
    lines = [l for l in proc.err.splitlines() if l.strip()]
    if proc.rc == 0:
        return False, "exited 0 although tflite-runtime cannot run under NumPy 2"
    if not lines or not lines[-1].startswith("edgecls: error:"):
        return False, f"exit {proc.rc} without the one-line error: {lines[-1] if lines else ''}"
    if "numpy" not in lines[-1].lower():
        return False, f"the error does not name NumPy: {lines[-1]}"
    if "Traceback" in proc.err:
        return False, f"printed a traceback before: {lines[-1]}"
    return True, lines[-1]


def check_cpu(proc: Proc, cpu: str) -> tuple[bool, str]:
    if proc.rc != 0:
        return False, f"exit {proc.rc}: {proc.last_err()}"
    machine, *features = proc.out.split()
    if machine != "aarch64":
        return False, f"platform.machine() is {machine}"
    if cpu in NO_DOTPROD_CPUS and "ASIMDDP" in features:
        return False, f"the CPU has ASIMDDP (dot product): QEMU_CPU={cpu} not applied"
    return True, f"aarch64, NumPy sees {' '.join(features)}"


def read_manifest(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "edgecls.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"check.py: error: cannot read {bundle}/edgecls.json: {e}")


def int8_formats(bundle: Path, only: list[str] | None = None) -> dict[str, str]:
    arts = read_manifest(bundle).get("artifacts", {})
    return {key: fam for key, fam in INT8_ARTIFACTS.items() if key in arts and (not only or key in only)}


def int8_only_bundle(bundle: Path, dest: Path) -> Path:
    """The bundle as a Pi would carry it: the int8 artifacts only (same files, same sha256).

    `edgecls eval` also runs a bundle's float model as its parity reference; emulated, that float run
    costs more than both int8 ones together and is not what this check compares.
    """
    meta = read_manifest(bundle)
    keep = {k: v for k, v in meta.get("artifacts", {}).items() if k in INT8_ARTIFACTS}
    dest.mkdir(parents=True, exist_ok=True)
    for art in keep.values():   # copies: a bundle's files must lie inside its folder (no symlinks out of it)
        (dest / art["file"]).unlink(missing_ok=True)
        shutil.copyfile(bundle / art["file"], dest / art["file"])
    for extra in ("teach", "head"):   # the teach set and a taught head travel with it (edgecls.json names them)
        if isinstance(meta.get(extra), dict) and meta[extra].get("file"):
            shutil.copyfile(bundle / meta[extra]["file"], dest / meta[extra]["file"])
    if (bundle / "golden").is_dir():   # the bundle's exam travels with it (`edgecls verify`, run's self-test)
        shutil.rmtree(dest / "golden", ignore_errors=True)
        shutil.copytree(bundle / "golden", dest / "golden", symlinks=False)
    meta["artifacts"] = keep
    if meta.get("default_artifact") not in keep:
        meta["default_artifact"] = next(iter(keep), None)
    (dest / "edgecls.json").write_text(json.dumps(meta, indent=2))
    return dest


def host_env() -> dict[str, str]:
    """The host's commands run an int8 ONNX as the QDQ graph as written (EDGECLS_ONNX_AS_WRITTEN): the same
    reference on every x86 host, where onnxruntime's fused kernels on a VNNI CPU would differ on near-ties from
    those on an AVX2-only one (device/model/runtime.py: onnx_fused_int8)."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EDGECLS_ONNX_AS_WRITTEN="1")


def host_predictions(args, formats: dict[str, str], rows: list[Row]) -> dict[str, Reference]:
    """The host's answers, the reference every Pi answer is compared with, by check name ("eval tflite-int8")."""
    bundle, images = str(args.bundle), str(args.images)
    host_py = [args.host_python, "-m", "edgecls"]
    env = host_env()
    host: dict[str, Reference] = {}
    tops: dict[str, dict] = {}   # artifact -> {file relative to IMAGES: the host's top-k}
    # The host's `run` gets `--top-k N`: every class's probability, and the same top-1 as the Pi's `run`.
    # Its output serves both the near-tie check (always) and the `run` comparison (when asked for).
    all_classes = ["--top-k", str(len(read_manifest(args.bundle)["labels"]))]
    procs: dict[tuple, Proc] = {}

    def host_call(cli: list[str]) -> Proc:
        cli = cli + all_classes if cli[0] == "run" else cli
        if tuple(cli) not in procs:
            procs[tuple(cli)] = call(host_py + cli, env)
        return procs[tuple(cli)]

    compared = [c for c in args.commands if c in PARSERS]
    for _, key, proc in outputs(host_call, ["run"] if compared else [], bundle, images, formats):
        if proc.rc == 0:
            tops[key] = {os.path.relpath(f, images): t for f, t in top_from_run(proc.out).items()}
    for kind, key, proc in outputs(host_call, compared, bundle, images, formats):
        preds, why = predictions(proc, kind)
        for k in (list(formats) if key is None else [key]):
            p = preds if kind == "run" or preds is None else preds.get(k, (None, ""))[0]
            if p is None:
                rows.append(Row("host", "host", f"{kind} {k}", False, proc.seconds, detail=why or f"no {k} in the output"))
                continue
            ref = Reference(kind, k, p, tops.get(k, {}))
            host[ref.check] = ref
            rows.append(Row("host", "host", f"{kind} {k}", True, proc.seconds, total=len(p), detail=f"{len(p)} images"))
    if "eval tflite-int8" in host and "tflite" in args.envs:
        kernels = reference_kernel_answers(args, rows)
        if kernels:
            host[kernels.check] = kernels
    return host


# tflite-runtime 2.14's aarch64 wheel computes what TFLite's reference kernels compute, not what LiteRT's
# default XNNPACK kernels compute (docs/pi-stack.md, Findings): its answers are also compared with those.
REF_KERNELS = "tflite-int8 reference kernels"


def reference_kernel_answers(args, rows: list[Row]) -> Reference | None:
    """The bundle's int8 TFLite run by the host's LiteRT with its reference kernels, with their own
    probabilities (a flip against them is a near-tie or not, as for the host)."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "kernels.json"
        p = call([args.host_python, str(HERE / "kernels.py"), str(args.bundle), str(args.images), "--save", str(saved)],
                 host_env())
        try:
            doc = json.loads(saved.read_text())
            manifest = read_manifest(args.bundle)
            labels, q = manifest["labels"], manifest["artifacts"]["tflite-int8"]["output"]
            ref = next(v for k, v in doc["outputs"].items() if k.endswith(" reference"))
            top1 = {f: labels[max(range(len(o)), key=o.__getitem__)] for f, o in zip(doc["files"], ref)}
            top = {f: sorted(((lab, (v - q["zero_point"]) * q["scale"]) for lab, v in zip(labels, o)),
                             key=lambda t: -t[1])[:5] for f, o in zip(doc["files"], ref)}
        except (OSError, ValueError, KeyError, StopIteration) as e:
            rows.append(Row("host", "host", f"eval {REF_KERNELS}", False, p.seconds,
                            detail=f"kernels.py: {p.last_err() if p.rc else e}"))
            return None
    rows.append(Row("host", "host", f"eval {REF_KERNELS}", True, p.seconds, total=len(top1),
                    detail=f"{len(top1)} images (tools/pi_stack/kernels.py)"))
    return Reference("eval", REF_KERNELS, top1, top)


def outputs(execute, commands: list[str], bundle: str, images: str, formats: dict[str, str],
            run_keys=tuple(INT8_ARTIFACTS)):
    """Run the compared commands: yields (command, artifact key or None for all, Proc)."""
    if "eval" in commands:
        yield "eval", None, execute(eval_args(bundle, images))
    if "run" in commands:
        for key, fam in formats.items():
            if key in run_keys:
                yield "run", key, execute(run_args(bundle, images, fam))


def compare_rows(cpu: str, env: str, kind: str, key: str | None, proc: Proc, formats,
                 host: dict[str, Reference], min_agreement, images: str) -> list[Row]:
    preds, why = predictions(proc, kind)
    keys = list(formats) if key is None else [key]
    rows = []
    for k in keys:
        reference = host.get(f"{kind} {k}")
        if reference is None:
            continue   # failed on the host already
        row = Row(cpu, env, f"{kind} {k}", False, proc.seconds, detail=why)
        rows.append(row)
        if preds is None:
            continue
        runtime = ""
        if kind == "eval":
            if k not in preds:
                row.detail = f"no {k} in the output"
                continue
            pi, runtime = preds[k]
        else:
            pi = preds
        row.agree, row.total, row.mismatches = compare(reference.top1, pi)
        rel = (lambda f: os.path.relpath(f, images)) if kind == "run" else (lambda f: f)   # noqa: E731
        ties = grade_mismatches(row, reference.top, "on the host", rel)
        row.ok = row.agreement >= min_agreement
        row.detail = f"{row.agree}/{row.total} same top-1 as the host" + (f" ({runtime})" if runtime else "") + ties
        want = ENVS[env]
        if k.startswith("tflite") and runtime and not runtime.startswith(want):
            row.ok, row.detail = False, row.detail + f": expected {want} to run it"
        kernels = host.get(f"eval {REF_KERNELS}")
        if env == "tflite" and k == "tflite-int8" and kernels and kernels.top1:
            if kind == "run":   # run names files by the path it was given, eval relative to the folder
                pi = {os.path.relpath(f, images): lab for f, lab in pi.items()}
            ref = Row(cpu, env, f"{kind} vs reference kernels", False, 0.0)
            ref.agree, ref.total, ref.mismatches = compare(kernels.top1, pi)
            ties = grade_mismatches(ref, kernels.top, "there")
            ref.ok = ref.agreement >= min_agreement
            ref.detail = f"{ref.agree}/{ref.total} same top-1 as the host's LiteRT reference kernels" + ties
            rows.append(ref)
    return rows


# ---- preprocessing apart from kernels (pixels.py) -------------------------------------------------

PIXELS_PY = HERE / "pixels.py"


@dataclass
class PixelsCheck:
    """One pixels.py check the host has saved its side of: the Pi runs `pixels.py *cli --compare saved`."""
    name: str             # PIXELS or SAME_PIXELS
    cli: list[str]
    saved: Path


def host_pixels(args, formats: dict[str, str], tmp: Path, rows: list[Row]) -> list[PixelsCheck]:
    """The host's tensors (and, for same-pixels, its int8 probabilities on them), saved for the Pi to compare."""
    asked = {PIXELS: ["identity", str(args.images)],
             SAME_PIXELS: ["outputs", str(args.bundle), str(args.images), "--artifacts", ",".join(formats)]}
    checks = []
    for name, cli in asked.items():
        if name not in args.commands:
            continue
        saved = tmp / f"{name}.npz"
        p = call([args.host_python, str(PIXELS_PY), *cli, "--save", str(saved)],
                 host_env())
        ok = p.rc == 0 and saved.is_file()
        rows.append(Row("host", "host", name, ok, p.seconds, detail=p.out.strip() if ok else p.last_err()))
        if ok:
            checks.append(PixelsCheck(name, cli, saved))
    return checks


def pixel_rows(cpu: str, env: str, doc: dict, seconds: float) -> list[Row]:
    """`pixels.py identity --compare`: the exact resampler must give the host's bytes; OpenCV is reported."""
    rows = []
    for resampler, r in doc.items():
        row = Row(cpu, env, f"{PIXELS} {resampler}", True, seconds, agree=r["identical"], total=r["tensors"])
        row.detail = (f"{r['identical']}/{r['tensors']} tensors byte-identical to the host's; {r['values_differ']:,} of "
                      f"{r['values']:,} values differ (max |Δ| {r['max_abs']}) on {r['images_differ']} of "
                      f"{r['images']} images")
        if resampler == "exact":
            row.ok = r["identical"] == r["tensors"]
        else:
            row.detail += " (expected: OpenCV rounds per CPU; reported, not asserted)"
        rows.append(row)
    return rows


def same_pixel_rows(cpu: str, env: str, doc: dict, seconds: float, min_agreement: float) -> list[Row]:
    """`pixels.py outputs --compare`: each int8 artifact on the host's tensors, against the host's answers."""
    rows = []
    for key, r in doc.items():
        row = Row(cpu, env, f"{SAME_PIXELS} {key}", False, seconds, agree=r["same"], total=r["total"])
        row.mismatches = [(f, want, got) for f, want, got, _ in r["flips"]]
        ties = grade_mismatches(row, {f: [tuple(t) for t in top] for f, _, _, top in r["flips"]}, "on the host")
        row.ok = row.agreement >= min_agreement
        row.detail = (f"{row.agree}/{row.total} same top-1 as the host on the host's pixels, max |Δp| "
                      f"{r['max_dp']:.4f}" + ties)
        rows.append(row)
    return rows


def pi_pixels(pi_python: str, cpu: str, env: str, pi_env: dict, checks: list[PixelsCheck],
              min_agreement: float) -> list[Row]:
    rows = []
    for c in checks:
        p = call([pi_python, env, str(PIXELS_PY), *c.cli, "--compare", str(c.saved)], pi_env)
        try:
            doc = json.loads(p.out) if p.rc == 0 else None
        except ValueError:
            doc = None
        if doc is None:
            rows.append(Row(cpu, env, c.name, False, p.seconds, detail=f"exit {p.rc}: {p.last_err()}"))
        elif c.name == PIXELS:
            rows += pixel_rows(cpu, env, doc, p.seconds)
        else:
            rows += same_pixel_rows(cpu, env, doc, p.seconds, min_agreement)
    return rows


def flipped_images(rows: list[Row]) -> dict[str, set]:
    """Images whose top-1 differs from the host's anywhere (any CPU, environment, command, artifact), each
    once: {"anywhere": …, "same pixels": … (of those, the ones that flip on the host's own tensors too)}."""
    compared = [r for r in rows if r.cpu != "host" and "reference kernels" not in r.check
                and r.check.split()[0] in ("eval", "run", SAME_PIXELS)]
    return {"anywhere": {m[0] for r in compared for m in r.mismatches},
            "same pixels": {m[0] for r in compared if r.check.startswith(SAME_PIXELS) for m in r.mismatches}}


def run_checks(args, pi_python: str, tmp: Path) -> list[Row]:
    bundle, images = str(args.bundle), str(args.images)
    formats = int8_formats(args.bundle, args.formats)
    rows: list[Row] = []
    host = host_predictions(args, formats, rows)
    pixel_checks = host_pixels(args, formats, tmp, rows)
    taught = host_taught(args, tmp, rows) if TEACH in args.commands else None
    teach_env = next((e for e in args.envs if e in ENVS), None)   # not the trap env, where nothing runs
    for cpu in args.cpus:
        pi_env = dict(os.environ, QEMU_CPU=cpu)
        p = call([pi_python, args.envs[0], "-c", CPU_FEATURES], pi_env)
        ok, why = check_cpu(p, cpu)
        rows.append(Row(cpu, args.envs[0], "cpu features", ok, p.seconds, detail=why))
        for env in args.envs:
            pi = lambda cli: call([pi_python, env, "-m", "edgecls"] + cli, pi_env)   # noqa: E731
            p = pi(["doctor", "--json"])
            ok, why = check_doctor(p, env)
            rows.append(Row(cpu, env, "doctor", ok, p.seconds, detail=why))
            if env == TRAP_ENV:
                if "tflite-int8" in formats:
                    p = pi(run_args(bundle, images, "tflite"))
                    ok, why = check_trap_run(p)
                    rows.append(Row(cpu, env, "run tflite-int8 (must fail)", ok, p.seconds, detail=why))
                continue
            compared = [c for c in args.commands if c in PARSERS]
            for kind, key, proc in outputs(pi, compared, bundle, images, formats, RUN_ARTIFACTS[env]):
                rows += compare_rows(cpu, env, kind, key, proc, formats, host, args.min_agreement, images)
            rows += pi_pixels(pi_python, cpu, env, pi_env, pixel_checks, args.min_agreement)
            if VERIFY in args.commands:
                rows.append(verify_row(cpu, env, pi(["verify", bundle, "--json"])))
            if UPDATE in args.commands and (cpu, env) == (args.cpus[0], args.envs[0]):   # once: it is slow emulated
                rows.append(update_row(args, pi, cpu, env, tmp))
            if taught and env == teach_env:   # once per CPU: teaching takes about a minute emulated
                rows += teach_rows(args, pi, cpu, env, taught, tmp)
    return rows


def host_taught(args, tmp: Path, rows: list[Row]):
    """The host teaches a copy of BUNDLE a new label from 5 of IMAGES' photos; its version is the Pi's reference."""
    taught = teach_check.host_teach(call, args.host_python, args.bundle, args.images, tmp)
    rows.append(Row("host", "host", TEACH, not taught.error, taught.seconds, detail=taught.error or
                    f"taught {taught.label!r} from {teach_check.TEACH_PHOTOS} photos into {taught.out.name}"))
    return None if taught.error else taught


def teach_rows(args, pi, cpu: str, env: str, taught, tmp: Path) -> list[Row]:
    """The Pi teaches the same photos (teach_check.py compares the versions), then `edgecls verify` passes there on
    the Pi's new version and, where the Pi's kernels gave other embeddings, on the host's too (its exam holds this
    device to what the host answered; with the same kernels that is what the teach row already compared)."""
    v2 = tmp / f"teach-{cpu}-{env}"
    p = pi(taught.cli(args.bundle, v2))
    if p.rc != 0 or not (v2 / "head.npz").is_file():
        return [Row(cpu, env, TEACH, False, p.seconds, detail=f"exit {p.rc}: {p.last_err()}")]
    fields = teach_check.compare_versions(taught.out, v2, args.min_agreement)
    same_embeddings = fields.pop("same_embeddings", False)
    rows = [Row(cpu, env, TEACH, seconds=p.seconds, **fields)]
    versions = [(f"{TEACH} verify", v2)]
    if not same_embeddings:   # other kernels: does the host's exam hold them? (the same ones answer as the host did)
        versions.append((f"{TEACH} verify host's", taught.out))
    for name, version in versions:
        row = verify_row(cpu, env, pi(["verify", str(version), "--json"]))
        row.check = name
        rows.append(row)
    return rows


def update_row(args, pi, cpu: str, env: str, tmp: Path) -> Row:
    """One signed update on the Pi: the host publishes BUNDLE into a file:// repository (a USB stick's kind),
    the Pi's `edgecls update` installs it through TUF's client, and `edgecls verify DEVICE/current` passes there."""
    repo, keys, dev = tmp / "repo", tmp / "keys", tmp / f"device-{cpu}-{env}"
    for cli in (["keygen", str(keys)], ["publish", str(args.bundle), str(repo), "--keys", str(keys)]):
        p = call([args.host_python, "-m", "edgecls", *cli])
        if p.rc:
            return Row(cpu, env, UPDATE, False, p.seconds, detail=f"host {cli[0]}: {p.last_err()}")
    p = pi(["update", repo.resolve().as_uri(), "--device-dir", str(dev), "--root",
            str(repo / "metadata" / "1.root.json"), "--json"])
    if p.rc or '"installed"' not in p.out:
        return Row(cpu, env, UPDATE, False, p.seconds, detail=f"update: exit {p.rc}: {p.last_err()} {p.out[-300:]}")
    default = read_manifest(args.bundle).get("default_artifact", "tflite-int8")   # what the device runs
    family, precision = default.split("-")
    v = pi(["verify", str(dev / "current"), "--format", family, "--precision", precision, "--json"])
    return Row(cpu, env, UPDATE, v.rc == 0, p.seconds + v.seconds,
               detail=f"installed from a signed file:// repository; its {default} exam passes there" if v.rc == 0
               else f"installed, but verify: exit {v.rc}: {v.last_err()}")


def verify_row(cpu: str, env: str, p: Proc) -> Row:
    """`edgecls verify --json` in a Pi environment: the bundle's exam, run with that environment's runtime."""
    try:
        doc = json.loads(p.out[p.out.index("{"):]) if "{" in p.out else None   # (indented: several lines)
    except ValueError:
        doc = None
    if doc is None:
        return Row(cpu, env, VERIFY, False, p.seconds, detail=f"exit {p.rc}: {p.last_err()}")
    arts = doc.get("artifacts", {})
    detail = "; ".join(f"{k} {a['verdict']}, max |Δp| {a['max_abs_diff']:.4f}, top-1 {a['agree_host']}/{a['images']} "
                       f"as the host" for k, a in arts.items())
    if not doc.get("passed"):
        detail = f"{doc.get('reason')}; {detail}"
    return Row(cpu, env, VERIFY, p.rc == 0 and bool(doc.get("passed")), p.seconds,
               agree=sum(a["agree_host"] for a in arts.values()), total=sum(a["images"] for a in arts.values()),
               detail=detail)


def report(rows: list[Row], min_agreement: float) -> str:
    lines = [f"{'cpu':<11} {'env':<10} {'check':<34} {'agree':>7} {'time':>7}  result"]
    for r in rows:
        agree = f"{r.agreement * 100:6.1f}%" if r.agreement is not None and r.cpu != "host" else ""
        lines.append(f"{r.cpu:<11} {r.env:<10} {r.check:<34} {agree:>7} {r.seconds:6.1f}s  "
                     f"{'ok  ' if r.ok else 'FAIL'} {r.detail}")
        for f, want, got, *odds in r.mismatches[:5]:
            odds = f" (host {odds[0]})" if odds and odds[0] else ""
            lines.append(f"{'':<12}{'':<11}  differs: {f}: host {want!r}, pi {got!r}{odds}")
    flipped = flipped_images(rows)
    if any(r.check.split()[0] in PARSERS or r.check.startswith(SAME_PIXELS) for r in rows if r.cpu != "host"):
        lines.append(f"pi-stack: {len(flipped['anywhere'])} distinct images flipped anywhere "
                     f"(every CPU, environment, command and artifact together); {len(flipped['same pixels'])} "
                     f"of them on the host's own pixels: {', '.join(sorted(flipped['anywhere'])[:8]) or 'none'}")
    failed = [r for r in rows if not r.ok]
    lines.append(f"pi-stack: {len(rows) - len(failed)}/{len(rows)} checks ok "
                 f"(top-1 agreement must be >= {min_agreement * 100:.0f}%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("images", type=Path, help="folder of images in class sub-folders (what `edgecls eval` reads)")
    ap.add_argument("--cpus", default="cortex-a72", help="QEMU_CPU models, comma-separated "
                    "(cortex-a72 = Pi 4, cortex-a53 = Pi 3 / Zero 2 W, cortex-a76 = Pi 5)")
    ap.add_argument("--envs", default=",".join([*ENVS, TRAP_ENV]), help="Pi environments (see build.sh)")
    ap.add_argument("--commands", default="eval,run,same-pixels,verify", help=f"which checks to run: {','.join(COMMANDS)} "
                    "(same-pixels: int8 outputs on the host's prepared tensors; pixels: prepare() byte-identity; verify: the bundle's exam; "
                    "teach: a new label taught on the Pi vs the host, in the first of --envs but tflite-np2)")
    ap.add_argument("--formats", default=",".join(INT8_ARTIFACTS), help="which int8 artifacts to compare")
    ap.add_argument("--with-float", action="store_true",
                    help="keep the bundle's float artifacts (eval then also runs its float reference: slower)")
    ap.add_argument("--min-agreement", type=float, default=0.99)
    ap.add_argument("--host-python", default=sys.executable, help="host python with edgecls installed")
    ap.add_argument("--pi-python", help="an existing pi-python launcher (default: run build.sh)")
    ap.add_argument("--json-out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    args.cpus = [c for c in args.cpus.split(",") if c]
    args.envs = [e for e in args.envs.split(",") if e]
    args.commands = [c for c in args.commands.split(",") if c]
    args.formats = [f for f in args.formats.split(",") if f]
    unknown = ([e for e in args.envs if e not in ENVS and e != TRAP_ENV] + [c for c in args.commands if c not in COMMANDS]
               + [f for f in args.formats if f not in INT8_ARTIFACTS])
    if unknown or not args.envs:
        ap.error(f"unknown env, command or format: {', '.join(unknown)}")
    for p in (args.bundle, args.images):
        if not p.is_dir():
            ap.error(f"not a folder: {p}")
    args.bundle, args.images = args.bundle.resolve(), args.images.resolve()
    if not int8_formats(args.bundle, args.formats):
        ap.error(f"{args.bundle} has none of the int8 artifacts {', '.join(args.formats)}")
    with tempfile.TemporaryDirectory(prefix="pi-stack-") as tmp:
        if not args.with_float:
            args.bundle = int8_only_bundle(args.bundle, Path(tmp) / "bundle")
        return check(args, Path(tmp))


def check(args, tmp: Path) -> int:

    t0 = time.perf_counter()
    pi_python = args.pi_python
    if not pi_python:
        build = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHON=os.environ.get("PYTHON", args.host_python)))
        if build.returncode != 0:
            print(f"pi-stack: build.sh failed (exit {build.returncode})", file=sys.stderr)
            return 1
        pi_python = build.stdout.strip().splitlines()[-1]
    t_build = time.perf_counter() - t0
    rows = run_checks(args, pi_python, tmp)
    print(report(rows, args.min_agreement))
    print(f"pi-stack: build {t_build:.0f}s, checks {time.perf_counter() - t0 - t_build:.0f}s")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "build_seconds": round(t_build, 1), "pi_python": pi_python,
            "flipped_images": {k: sorted(v) for k, v in flipped_images(rows).items()},
            "rows": [dict(asdict(r), agreement=r.agreement) for r in rows]}, indent=2))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
