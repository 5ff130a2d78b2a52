"""The Raspberry Pi AI Camera (Sony IMX500): the network runs on the sensor, and picamera2's IMX500 helper hands its
output tensor over with each frame's metadata. A thin adapter over that documented API (picamera2's
`picamera2.devices.IMX500`: `IMX500(rpk)`, `.camera_num`, `.show_network_fw_progress_bar()`,
`.get_outputs(metadata, add_batch=True)`; `Picamera2(camera_num)`, `.create_preview_configuration(main=…,
controls=…, buffer_count=…)`, `.start(config, show_preview=False)`, `.camera_configuration()`, `.capture_request()`
→ `.get_metadata()`, `.make_array("main")`, `.release()`; `.stop()`, `.close()`), as the picamera2 IMX500 examples
and the manual's "capture_request" section use it. One request gives both the pixels and the metadata, so a frame's
output tensor is the one the sensor computed on that very frame.

`edgecls run BUNDLE --source imx500` reads it through `device/capture/sources.py: SensorSource` (frames that carry
the tensor: `SensorFrame`) and classifies with `device/model/sensor_classifier.py: SensorClassifier`.

Tested here against a stand-in with exactly those names (tests/test_imx500.py, tests/test_imx500_run.py); NOT
tested on a camera: the .rpk loading, the frame rate and the tensor's layout on real hardware are as the picamera2
manual describes them.

What can be examined where: `export --target imx500` judged MCT's simulation of the sensor's arithmetic on the
held-out photos (edgecls.json `imx500.metrics`); on the sensor itself edgecls can take no exam (the bundle's golden
answers need a model the CPU runs), so `run` says so at start-up (`startup_note`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.device.capture.cameras import PICAM_FORMAT, PICAM_LAYOUT, SourceOpenError, picam_image
from edgecls.device.capture.frame import Frame
from edgecls.errors import EdgeclsError

SCHEME = "imx500"         # --source imx500 (the bundle's network) | imx500:PATH.rpk
NETWORK_FILE = "imx500/network.rpk"   # inside the bundle: what `imx500-package` writes on the Pi
FRAME_RATE = 30.0         # picamera2's IMX500 classification example runs classifiers at this rate
NETWORK_WAIT_S = 120.0    # frames without an output while the network uploads to the sensor (first time: tens of s)
PICAMERA2_MISSING = ("the AI Camera needs picamera2 with its IMX500 helper (Raspberry Pi OS: "
                     "sudo apt install python3-picamera2 imx500-all; in a venv create it with --system-site-packages)")


def is_imx500(uri: str) -> bool:
    """The source names the AI Camera: the model then runs on the sensor, not on this CPU."""
    return uri == SCHEME or uri.startswith(SCHEME + ":")


def network_file(bundle, uri: str) -> Path:
    """The .rpk `--source imx500[:PATH]` names: PATH, else the bundle's imx500/network.rpk."""
    rest = uri[len(SCHEME) + 1:]
    return Path(rest) if rest else bundle.root / NETWORK_FILE


def check_ready(bundle, rpk: Path) -> None:
    """Everything `run` needs for the AI Camera, checked before anything opens (one line each that says what to do)."""
    if SCHEME not in bundle.meta:
        raise EdgeclsError(f"bundle {bundle.root} has no IMX500 network (no `imx500` block in edgecls.json): export "
                           "it with `edgecls export RUN --target imx500` (docs/imx500.md)")
    if not rpk.is_file():
        raise EdgeclsError(f"{rpk}: no such network file; on the Pi, make it from the bundle with "
                           f"`imx500-package -i {bundle.root}/imx500/packerOut.zip -o {bundle.root}/imx500/` "
                           "(docs/imx500.md)")
    picamera2_classes()


def picamera2_classes():
    """(Picamera2, IMX500), or the one-line error that says how to install them."""
    try:
        from picamera2 import Picamera2
        from picamera2.devices import IMX500
    except ImportError:
        raise EdgeclsError(PICAMERA2_MISSING) from None
    return Picamera2, IMX500


def startup_note(meta: dict) -> str:
    """The one line `run` prints when the network runs on the sensor: which exam applied, and which cannot."""
    block = meta.get("imx500") or {}
    a = (block.get("metrics") or {}).get("agreement_heldout")
    judged = (f"MCT's simulation of it agreed with float on {a['agreed']}/{a['images']} held-out photos at export"
              if a else "this bundle records no judged IMX500 model")
    return (f"IMX500: the network runs on the camera's sensor, where edgecls cannot take the bundle's exam; {judged} "
            "(`edgecls verify` examines the CPU artifacts only)")


@dataclass
class SensorFrame(Frame):
    """A frame with the output tensor the sensor's network computed on it (the first output, batch of 1)."""
    outputs: np.ndarray | None = None


def probabilities(outputs: np.ndarray, labels: list[str]) -> np.ndarray:
    """The sensor's output as the classifier's probabilities over `labels`, (n_classes,) float32."""
    probs = np.asarray(outputs, np.float32).reshape(-1)
    if probs.size != len(labels):
        raise EdgeclsError(f"the camera's network gives {probs.size} outputs but the bundle has {len(labels)} labels: "
                           "the .rpk on the camera is not this bundle's")
    return probs


class Imx500Capture:
    """LiveSource's adapter (read()/release()/order): `read()` gives a frame's pixels and leaves the output tensor the
    sensor computed on them in `outputs`; None when the camera fails (LiveSource reopens it)."""

    def __init__(self, rpk: Path, size: tuple[int, int] | None = None, fps: float | None = None):
        Picamera2, IMX500 = picamera2_classes()
        if not Path(rpk).is_file():
            raise SourceOpenError(f"{rpk}: no such network file (docs/imx500.md: imx500-package)")
        self.imx500 = IMX500(str(rpk))
        self.camera = Picamera2(self.imx500.camera_num)
        main = {"format": PICAM_FORMAT, **({"size": tuple(size)} if size else {})}
        config = self.camera.create_preview_configuration(main=main, controls={"FrameRate": float(fps or FRAME_RATE)},
                                                          buffer_count=12)
        self.imx500.show_network_fw_progress_bar()   # uploading the network to the sensor takes seconds
        self.camera.start(config, show_preview=False)
        configured = self.camera.camera_configuration()["main"]   # what libcamera set, not what was asked
        self.fmt, self.frame_size = configured["format"], tuple(configured["size"])
        if self.fmt not in PICAM_LAYOUT:
            self.release()
            raise SourceOpenError(f"imx500: the camera gave {self.fmt} frames (edgecls reads {', '.join(PICAM_LAYOUT)})")
        self.order = PICAM_LAYOUT[self.fmt][0]
        self.outputs: np.ndarray | None = None

    def read(self) -> np.ndarray | None:
        deadline = time.monotonic() + NETWORK_WAIT_S
        while time.monotonic() < deadline:
            request = self.camera.capture_request()
            try:
                outputs = self.imx500.get_outputs(request.get_metadata(), add_batch=True)
                if outputs is None:   # no output for this frame yet (the network still uploading)
                    continue
                image, _ = picam_image(request.make_array("main"), self.fmt)
            finally:
                request.release()
            self.outputs = np.asarray(outputs[0], np.float32)
            return image
        return None

    def release(self) -> None:
        try:
            self.camera.stop()
        finally:
            self.camera.close()
