#!/usr/bin/env python3
"""Build and run a TensorRT engine from a bundle's onnx-int8-trt (export --target tensorrt), where a GPU is at hand,
and record what happened.

    python tools/tensorrt_check.py BUNDLE [--out result.json] [--trtexec PATH]

Two routes, the first that exists: onnxruntime-gpu's TensorrtExecutionProvider (int8 on, the Q/DQ scales taken
from the file: no calibrator), then `trtexec --onnx=… --int8 --shapes=pixels:1xHxWx3` (TensorRT's own tool). The
engine answers the bundle's golden photos (golden/images.npz, the held-out photos the export examined), compared
with the answers the export recorded for onnx-int8-trt on the CPU (golden/outputs_onnx-int8-trt.npz) and with the
float ONNX's: top-1 agreement and max |Δp|. The JSON record says which route ran, on which GPU, or why none could
("no GPU", "no TensorRT"): the check never pretends.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def gpu_name() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    r = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def golden(bundle: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    meta = json.loads((bundle / "edgecls.json").read_text())
    g = meta["golden"]
    with np.load(bundle / g["images"]["file"]) as z:
        images = z[z.files[0]]
    answers = {}
    for key, entry in g.get("outputs", {}).items():
        with np.load(bundle / entry["file"]) as z:
            answers[key] = z[z.files[0]].astype(np.float32)
    return images, answers


def run_ort_tensorrt(model: Path, images: np.ndarray, cache: Path) -> dict:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return {"ran": False, "why": "onnxruntime has no TensorrtExecutionProvider (pip install onnxruntime-gpu)"}
    options = {"trt_int8_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
    t = time.perf_counter()
    session = ort.InferenceSession(str(model), providers=[("TensorrtExecutionProvider", options)])
    if session.get_providers()[0] != "TensorrtExecutionProvider":
        return {"ran": False, "why": f"TensorRT provider did not load (got {session.get_providers()})"}
    name = session.get_inputs()[0].name
    probs = np.concatenate([session.run(None, {name: x[None].astype(np.float32)})[0] for x in images])
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(50):
        session.run(None, {name: images[:1].astype(np.float32)})
    return {"ran": True, "route": "onnxruntime TensorrtExecutionProvider", "probabilities": probs,
            "build_and_first_pass_s": round(build_s, 2), "latency_ms": round((time.perf_counter() - t) * 20, 3),
            "onnxruntime": ort.__version__}


def run_trtexec(trtexec: str, model: Path, shape: tuple[int, ...]) -> dict:
    """trtexec builds the engine and times it; it does not hand answers back, so agreement is onnxruntime's route."""
    dims = "x".join(str(d) for d in shape)
    r = subprocess.run([trtexec, f"--onnx={model}", "--int8", f"--shapes=pixels:{dims}", "--noDataTransfers"],
                       capture_output=True, text=True)
    tail = [line for line in r.stdout.splitlines() if "GPU Compute Time" in line or "Throughput" in line]
    return {"ran": r.returncode == 0, "route": "trtexec", "exit": r.returncode, "timing": tail[-3:],
            **({} if r.returncode == 0 else {"why": (r.stderr or r.stdout).strip().splitlines()[-1:]})}


def compare(probs: np.ndarray, answers: dict[str, np.ndarray]) -> dict:
    out = {}
    for key in ("onnx-int8-trt", "onnx-float"):
        if key in answers:
            ref = answers[key]
            out[key] = {"agreed": int((probs.argmax(1) == ref.argmax(1)).sum()), "images": len(ref),
                        "max_abs_diff": round(float(np.abs(probs - ref).max()), 5)}
    return out


def check(bundle: Path, trtexec: str | None) -> dict:
    meta = json.loads((bundle / "edgecls.json").read_text())
    if "onnx-int8-trt" not in meta.get("artifacts", {}):
        return {"ran": False, "why": "the bundle has no onnx-int8-trt (export it with --target tensorrt)"}
    model = bundle / meta["artifacts"]["onnx-int8-trt"]["file"]
    record = {"bundle": str(bundle), "gpu": gpu_name()}
    if record["gpu"] is None:
        return {**record, "ran": False, "why": "no GPU (nvidia-smi found none): not run"}
    images, answers = golden(bundle)
    result = run_ort_tensorrt(model, images, bundle.parent / ".trt-cache")
    if result.get("ran"):
        probs = result.pop("probabilities")
        return {**record, **result, "vs": compare(probs, answers)}
    trtexec = trtexec or shutil.which("trtexec")
    if trtexec:
        return {**record, **run_trtexec(trtexec, model, (1, *images.shape[1:])), "ort_tensorrt": result.get("why")}
    return {**record, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--trtexec")
    args = parser.parse_args()
    record = {**check(args.bundle, args.trtexec), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    text = json.dumps(record, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0 if record.get("ran") else 1


if __name__ == "__main__":
    sys.exit(main())
