"""`edgecls doctor`: what this machine has for running a bundle, and what to install when something is missing.

Never imports TensorFlow (only asks whether it could be found). Each check is a dict:
{"name", "status": ok|warn|missing|info, "detail", "fix"}.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import platform
import shutil
import sys
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _check(name, status, detail, fix=""):
    return {"name": name, "status": status, "detail": detail, "fix": fix}


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def check_python() -> list[dict]:
    import numpy as np

    out = [_check("python", "ok" if sys.version_info >= (3, 10) else "missing",
                  f"{platform.python_version()} ({platform.machine()}, {os.cpu_count()} CPUs)",
                  "" if sys.version_info >= (3, 10) else "edgecls needs Python 3.10 or newer"),
           _check("numpy", "ok", np.__version__)]
    board = _read("/proc/device-tree/model")
    if os.path.exists("/etc/nv_tegra_release"):
        board = (board or "NVIDIA Jetson") + f" ({(_read('/etc/nv_tegra_release') or '').splitlines()[0][:60]})"
    out.append(_check("board", "info", board or f"{platform.system()} {platform.machine()} (not a Pi or Jetson)"))
    return out


def check_tflite() -> list[dict]:
    from edgecls.device.model.runtime import numpy2_trap

    litert, tfl = _version("ai-edge-litert"), _version("tflite-runtime")
    out = []
    if litert:
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401
            out.append(_check("litert", "ok", f"ai-edge-litert {litert} (runs .tflite)"))
        except Exception as e:  # a broken wheel: say so rather than crash the doctor
            out.append(_check("litert", "warn", f"ai-edge-litert {litert} installed but fails to import: {e}",
                              "pip install --force-reinstall ai-edge-litert"))
    if tfl:
        trap = numpy2_trap()
        out.append(_check("tflite-runtime", "info" if litert else "warn" if trap else "ok",
                          f"tflite-runtime {tfl}" + (" (fallback; ai-edge-litert is used first)" if litert else "")))
        if trap:  # it only bites when tflite-runtime is the runtime edgecls falls back to
            message, _, fix = trap.partition(": pip")
            out.append(_check("numpy-2-trap", "info" if litert else "warn",
                              message + (" (harmless here: ai-edge-litert is used)" if litert else ""), "pip" + fix))
    if not litert and not tfl:
        out.append(_check("litert", "missing", "no TFLite runtime: .tflite artifacts cannot run",
                          "pip install ai-edge-litert   (64-bit Python 3.10+; on 32-bit Pi OS: tflite-runtime)"))
    return out


def check_onnxruntime() -> list[dict]:
    if not importlib.util.find_spec("onnxruntime"):
        return [_check("onnxruntime", "missing", "not installed: .onnx artifacts cannot run",
                       "pip install onnxruntime   (Jetson: the onnxruntime-gpu wheel for your JetPack)")]
    import onnxruntime as ort

    providers = ort.get_available_providers()
    out = [_check("onnxruntime", "ok", f"{ort.__version__}; providers: {', '.join(providers)}")]
    if os.path.exists("/etc/nv_tegra_release") and "CUDAExecutionProvider" not in providers:
        out.append(_check("onnxruntime-gpu", "warn", "Jetson without the CUDA provider: ONNX runs on the CPU",
                          "install the onnxruntime-gpu wheel built for your JetPack (NVIDIA's Jetson Zoo)"))
    return out


def opencv_features() -> dict[str, str]:
    import cv2

    want = {"GStreamer:": "gstreamer", "FFMPEG:": "ffmpeg", "v4l/v4l2:": "v4l2", "GUI:": "gui"}
    found = {}
    for line in cv2.getBuildInformation().splitlines():
        s = line.strip()
        for prefix, key in want.items():
            if s.startswith(prefix) and key not in found:
                found[key] = s[len(prefix):].strip()
    return found


def check_opencv() -> list[dict]:
    import cv2

    f = opencv_features()
    yes = {k: v.upper().startswith("YES") or (k == "gui" and v.upper() not in ("", "NONE")) for k, v in f.items()}
    detail = ", ".join(f"{k} {'yes' if yes.get(k) else 'no'}" for k in ("ffmpeg", "v4l2", "gstreamer", "gui"))
    out = [_check("opencv", "ok", f"{cv2.__version__}: {detail}")]
    if not yes.get("gstreamer"):
        out.append(_check("opencv-gstreamer", "info", "no GStreamer: csi:// (Jetson CSI cameras) unavailable",
                          "on Jetson use JetPack's OpenCV (apt python3-opencv) in a venv with --system-site-packages"))
    if not yes.get("gui"):
        out.append(_check("opencv-gui", "info", "no GUI: no on-screen window; use --headless/--json/--stream",
                          "pip install opencv-python (instead of -headless) for a window on a desktop"))
    return out


AI_CAMERA_MODEL = "imx500"   # the Model picamera2's global_camera_info() gives the Raspberry Pi AI Camera
AI_CAMERA_FIX = "sudo apt install imx500-all imx500-tools python3-picamera2 (docs/imx500.md)"


def check_picamera() -> list[dict]:
    if not importlib.util.find_spec("picamera2"):
        return [_check("picamera2", "missing", "not installed: picam: sources unavailable",
                       "Raspberry Pi OS: sudo apt install python3-picamera2; create the venv with "
                       "--system-site-packages")]
    try:
        from picamera2 import Picamera2

        cams = Picamera2.global_camera_info()
    except Exception as e:  # libcamera missing or broken
        return [_check("picamera2", "warn", f"installed but unusable: {str(e)[:100]}",
                       "sudo apt install python3-libcamera python3-picamera2")]
    names = ", ".join(f"picam:{i} {c.get('Model', '?')}" + (" (AI Camera)" if is_ai_camera(c) else "")
                      for i, c in enumerate(cams)) or "no camera detected"
    return [_check("picamera2", "ok" if cams else "warn", f"libcamera cameras: {names}",
                   "" if cams else "check the ribbon cable and `rpicam-hello --list-cameras`"),
            *check_ai_camera([i for i, c in enumerate(cams) if is_ai_camera(c)])]


def is_ai_camera(info: dict) -> bool:
    return str(info.get("Model", "")).lower() == AI_CAMERA_MODEL


def check_ai_camera(indexes: list[int]) -> list[dict]:
    """The AI Camera's row, when one is attached: what `run --source imx500` needs besides the camera — picamera2's
    IMX500 helper, and `imx500-package` (imx500-tools), which turns a bundle's packerOut.zip into network.rpk."""
    if not indexes:
        return []
    where = ", ".join(f"picam:{i}" for i in indexes)
    missing = [what for what, there in (("picamera2.devices.IMX500", _ai_helper_found()),
                                        ("imx500-package", shutil.which("imx500-package") is not None)) if not there]
    if missing:
        return [_check("ai-camera", "warn", f"AI Camera (IMX500) at {where}; missing: {', '.join(missing)}",
                       AI_CAMERA_FIX)]
    return [_check("ai-camera", "ok", f"AI Camera (IMX500) at {where}: the network runs on the sensor "
                   "(`edgecls run BUNDLE --source imx500`; bundles from `edgecls export RUN --target imx500`)")]


def _ai_helper_found() -> bool:
    from edgecls.device.capture.imx500_camera import picamera2_classes   # what `run --source imx500` imports

    try:
        picamera2_classes()
        return True
    except Exception:  # its EdgeclsError, or a broken install: a missing helper here
        return False


def check_cameras() -> list[dict]:
    devs = sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))
    if not devs:
        return [_check("v4l2-cameras", "info", "no /dev/video* devices", "plug in a USB camera, or use picam:/csi://")]
    named = [f"{d} ({_read(f'/sys/class/video4linux/{os.path.basename(d)}/name') or '?'})" for d in devs]
    return [_check("v4l2-cameras", "ok", ", ".join(named))]


def check_tensorflow() -> list[dict]:
    present = importlib.util.find_spec("tensorflow") is not None
    return [_check("tensorflow", "info", "importable (not needed on the device)" if present
                   else "not installed (not needed on the device)")]


CHECKS = (check_python, check_tflite, check_onnxruntime, check_opencv, check_picamera, check_cameras, check_tensorflow)


def run_checks() -> list[dict]:
    out = []
    for check in CHECKS:
        try:
            out += check()
        except Exception as e:  # one broken library must not hide the others' report
            out.append(_check(check.__name__.removeprefix("check_"), "warn", f"check failed: {type(e).__name__}: {e}"))
    return out


MARKS = {"ok": "ok  ", "warn": "WARN", "missing": "MISS", "info": "info"}


def format_report(checks: list[dict]) -> str:
    width = max(len(c["name"]) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"[{MARKS[c['status']]}] {c['name'].ljust(width)}  {c['detail']}")
        if c["fix"] and c["status"] != "ok":
            lines.append(f"       {' ' * width}  → {c['fix']}")
    return "\n".join(lines)
