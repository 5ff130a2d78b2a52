"""`edgecls export RUN --target imx500`: the Raspberry Pi AI Camera's package, judged like every other int8 artifact.

Sony's Model Compression Toolkit (MCT: PTQ, or GPTQ with --imx500-gptq-epochs, against the IMX500 target platform
capabilities) and `imx500-converter` (`imxconv-tf` → packerOut.zip) pin TensorFlow 2.15, NumPy 1.26 and need a Java
runtime, so they live in an environment of their own: `edgecls setup-imx500` creates it once (`setup`; a venv under
the user's cache folder, or EDGECLS_IMX500_ENV), and the export runs convert/imx500_worker.py in it as a subprocess
on a job folder (the model as JSON + weights arrays, the calibration images, the judged photos). The worker answers
with MCT's quantized model's probabilities on the held-out photos: MCT's simulation of the sensor's integer
arithmetic, judged against the float model by convert/gate.py exactly like the CPU artifacts (`judge`). The bundle
gets `imx500/packerOut.zip` (what `imx500-package` turns into the camera's .rpk on the Pi: docs/imx500.md),
MCT's quantized model (`imx500/model_mct.keras`) and the `imx500` block of edgecls.json (`record`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.fsutil import atomic_write_json, sha256_file

ENV_VAR = "EDGECLS_IMX500_ENV"
# The environment `edgecls setup-imx500` installs (verified Dec 2026: 125 s, 2.3 GB on this x86 host; MCT 2.5.1 is
# what imx500-converter 3.19.2's sdspconv resolves with).
PACKAGES = ("tensorflow==2.15.1", "numpy==1.26.4", "model-compression-toolkit==2.5.1", "imx500-converter[tf]==3.19.2")
STAMP = ".edgecls-imx500"            # written last by setup: its absence means a half-made environment
JAVA_MIN = 17                        # imxconv-tf's Java (Sony's converter documentation)
# Backbones whose layers MCT's IMX500 capabilities and imxconv-tf take (measured on flowers, 3 seeds each:
# mobilenet_v2, and efficientnet_lite0 once its Activation('relu6') is ReLU(max_value=6): benchmarks/results/
# accelerators-lite0-imx500.md); others are refused before minutes of work, with what to do.
BACKBONES = ("mobilenet_v2", "efficientnet_lite0")
WORKER = Path(__file__).with_name("imx500_worker.py")
FOLDER = "imx500"                    # inside the bundle
SETUP_HINT = "run `edgecls setup-imx500` once (about 2 minutes and 2.3 GB: TensorFlow 2.15, MCT, imx500-converter)"


def env_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get(ENV_VAR) or cache / "edgecls" / "imx500-env")


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def java_major() -> int | None:
    """The `java` on PATH's major version, None when there is none."""
    java = shutil.which("java")
    if java is None:
        return None
    r = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', r.stderr + r.stdout)
    if not found:
        return 0
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major   # "1.8.0" is Java 8


def check_ready(backbone: str | None) -> Path:
    """Every reason the IMX500 export cannot run, as one line, before any slow work; returns the environment."""
    if backbone is not None and backbone not in BACKBONES:
        raise EdgeclsError(f"--target imx500: backbone {backbone!r} is not one MCT and imx500-converter are known to "
                           f"convert here (verified: {', '.join(BACKBONES)}); train with --backbone mobilenet_v2")
    env = env_dir()
    if not (env / STAMP).is_file() or not env_python(env).is_file():
        raise EdgeclsError(f"--target imx500 needs its own environment at {env} and it is not there: {SETUP_HINT}")
    major = java_major()
    if major is None or major < JAVA_MIN:
        found = "no java on PATH" if major is None else f"java {major} on PATH"
        raise EdgeclsError(f"--target imx500: imxconv-tf needs Java {JAVA_MIN} or newer ({found}): "
                           "sudo apt install openjdk-17-jre-headless")
    return env


def setup(env: Path | None = None, python: str | None = None, console=None) -> dict:
    """Create the IMX500 environment (a venv with PACKAGES), the stamp written last; returns {path, seconds, bytes}."""
    env = Path(env or env_dir())
    python = python or shutil.which("python3.11") or sys.executable
    if shutil.which(python) is None:
        raise EdgeclsError(f"setup-imx500: no Python at {python!r}; pass --python PATH to a Python 3.9-3.11")
    if env.exists() and any(env.iterdir()) and not (env / "pyvenv.cfg").is_file():
        # never delete a folder that is not a venv (a mistyped --env must not cost someone their files)
        raise EdgeclsError(f"setup-imx500: {env} exists and is not a Python environment; choose another --env")
    started = time.perf_counter()
    if env.exists():
        shutil.rmtree(env)
    steps = [[python, "-m", "venv", str(env)],
             [str(env_python(env)), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
             [str(env_python(env)), "-m", "pip", "install", "--quiet", *PACKAGES]]
    for step in steps:
        if console is not None:
            console.print(" ".join(step[:6]) + (" …" if len(step) > 6 else ""), markup=False)
        r = subprocess.run(step, capture_output=True, text=True)
        if r.returncode != 0:
            tail = [line for line in r.stderr.splitlines() if line.strip()][-1:] or ["(no output)"]
            raise EdgeclsError(f"setup-imx500: `{' '.join(step[:4])} …` failed: {tail[0][:200]}")
    size = sum(f.stat().st_size for f in env.rglob("*") if f.is_file() and not f.is_symlink())
    record = {"path": str(env), "packages": list(PACKAGES), "seconds": round(time.perf_counter() - started, 1),
              "bytes": size}
    atomic_write_json(env / STAMP, record)
    return record


# ---------------------------------------------------------------- one export

def write_job(job: Path, model, calib: np.ndarray, photos: np.ndarray, gptq_epochs: int) -> None:
    """The worker's inputs: architecture as JSON and weights as plain arrays (no pickles cross the boundary)."""
    job.mkdir(parents=True, exist_ok=True)
    (job / "model.json").write_text(model.to_json())
    np.savez(job / "weights.npz", **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    np.save(job / "calib.npy", np.asarray(calib, np.uint8))
    np.save(job / "eval.npy", np.asarray(photos, np.uint8))
    (job / "job.json").write_text(json.dumps({"gptq_epochs": int(gptq_epochs)}))


def worker_env() -> dict:
    """This process's environment without what edgecls's TensorFlow set up for itself: TF_USE_LEGACY_KERAS (tf_keras,
    which TF 2.15's environment has not: "Keras cannot be imported")."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    return {**env, "PYTHONNOUSERSITE": "1"}


def run_worker(env: Path, job: Path) -> dict:
    """convert/imx500_worker.py in the IMX500 environment; its failure becomes one line naming the stage."""
    log = job / "worker.log"
    try:
        with open(log, "w") as out:
            r = subprocess.run([str(env_python(env)), str(WORKER), str(job)], stdout=out, stderr=subprocess.STDOUT,
                               env=worker_env())
    except OSError as e:   # its python missing or not executable: a broken environment
        raise EdgeclsError(f"--target imx500: cannot start {env_python(env)} ({e.strerror}); {SETUP_HINT}") from None
    try:
        result = json.loads((job / "result.json").read_text())
    except (OSError, ValueError):
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:] or ["no output"]
        raise EdgeclsError(f"--target imx500: the IMX500 environment's worker exited {r.returncode} ({tail[0][:200]}); "
                           f"if it is broken, {SETUP_HINT}") from None
    if "error" in result:
        raise EdgeclsError(explain(result))
    return result


def explain(result: dict) -> str:
    """The worker's failure as one line that says what to do."""
    error, stage = result["error"], result.get("stage", "?")
    if "USOP" in error or "unsupported" in error.lower():
        return (f"--target imx500: the model has a layer the IMX500 cannot run ({error[:200]}); "
                "train with --backbone mobilenet_v2")
    return f"--target imx500 failed while {stage}: {error[:300]}"


def judge(opts, float_probs: np.ndarray, mct_probs: np.ndarray, labels: np.ndarray, split: str):
    """The gate's verdict on MCT's quantized model against the float model on the judged photos, and its row."""
    from edgecls.convert import gate
    from edgecls.metrics import agreement_count, flips, paired_drop

    ref, pred = float_probs.argmax(1), mct_probs.argmax(1)
    agree = {**agreement_count(pred, ref), "reference": "keras-float", "split": split, "heldout": split == "test"}
    drop = paired_drop(ref == labels, pred == labels)
    verdict = gate.judge(gate.Evidence("imx500", bool(np.isfinite(mct_probs).all()), drop, agree, split=split),
                         opts.max_drop, opts.min_agreement)
    row = {"accuracy": round(float((pred == labels).mean()), 4), "agreement_heldout": agree, "drop": drop,
           "flips": flips(float_probs, mct_probs, labels), "verdict": verdict.to_dict()}
    return verdict, row


def export(ctx, bundle_dir: Path, split: str, backbone: str | None) -> tuple[object, dict]:
    """Quantize, convert and judge; the package lands in bundle_dir/imx500/. Returns (verdict, edgecls.json block)."""
    env = check_ready(backbone)
    job = ctx.work / "imx500-job"
    photos, labels, keras = ctx.images.x[split], ctx.images.y[split], ctx.images.keras[split]
    write_job(job, ctx.model, ctx.calib, photos, ctx.opts.imx500_gptq_epochs)
    result = run_worker(env, job)
    float_probs, mct_probs = np.load(job / "float.npy"), np.load(job / "mct.npy")
    moved = float(np.abs(float_probs - keras).max()) if len(keras) else 0.0   # the model's trip into TF 2.15
    verdict, row = judge(ctx.opts, float_probs, mct_probs, labels, split)
    dest = bundle_dir / FOLDER
    dest.mkdir()
    for name, src in (("packerOut.zip", job / "out" / "packerOut.zip"), ("model_mct.keras", job / "model_mct.keras")):
        shutil.copyfile(src, dest / name)
    files = {name: {"file": f"{FOLDER}/{name}", "sha256": sha256_file(dest / name), "bytes": (dest / name).stat().st_size}
             for name in ("packerOut.zip", "model_mct.keras")}
    block = {"package": files["packerOut.zip"], "quantized_model": files["model_mct.keras"],
             "method": "gptq" if ctx.opts.imx500_gptq_epochs else "ptq", "gptq_epochs": ctx.opts.imx500_gptq_epochs,
             "target_platform": "imx500 v1 (MCT)", "calibration_images": int(len(ctx.calib)),
             "float_in_tf215_max_abs_diff": round(moved, 7), "metrics": row, "times": result.get("times", {}),
             "versions": result.get("versions", {}),
             "exam": "MCT's simulation, on this host's CPU at export (the held-out photos above); the sensor runs "
                     "the network inside the camera, where no exam of edgecls reaches it",
             "on_the_pi": f"imx500-package -i {FOLDER}/packerOut.zip -o imx500/ (docs/imx500.md)"}
    return verdict, block


def attach(ctx, bundle_dir: Path, split: str, backbone: str | None, result, console) -> dict:
    """Run `export` and put its verdict beside the artifacts' in the measurement's gate (convert/measure.py: Result)."""
    from edgecls.convert import gate
    from edgecls.metrics import flips_text

    console.print("IMX500: MCT quantization and imxconv-tf in their own environment (minutes) …")
    verdict, block = export(ctx, bundle_dir, split, backbone)
    result.verdicts["imx500"] = verdict
    o = ctx.opts
    result.gate = gate.summary(result.verdicts, o.max_drop, o.min_agreement, o.allow_drop)
    a = block["metrics"]["agreement_heldout"]
    console.print(f"imx500 (MCT {block['method']}) vs keras-float: {a['rate'] * 100:.2f}% agreement "
                  f"({a['agreed']}/{a['images']} {split} photos), Δ top-1 {-block['metrics']['drop']['drop_pp']:+.2f} pp, "
                  f"{'ok' if verdict.passed else 'FAIL'}; {flips_text(block['metrics']['flips'])}", markup=False)
    return block


def record(bundle_dir: Path, manifest: dict, block: dict) -> dict:
    """edgecls.json with the `imx500` block added (rewritten whole, inside the bundle's temp folder)."""
    from edgecls.bundle import MANIFEST

    manifest = {**manifest, "imx500": block}
    atomic_write_json(bundle_dir / MANIFEST, manifest)
    return manifest
