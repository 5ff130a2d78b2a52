"""The Raspberry Pi AI Camera (Sony IMX500): the network runs on the sensor, and picamera2's IMX500 helper hands its
output tensor over with each frame's metadata. A thin adapter over that documented API (picamera2's
`picamera2.devices.IMX500`: `IMX500(rpk)`, `.camera_num`, `.show_network_fw_progress_bar()`,
`.get_outputs(metadata, add_batch=True)`; `Picamera2(camera_num)`, `.create_preview_configuration(controls=…)`,
`.start(config, show_preview=False)`, `.capture_metadata()`, `.stop()`), as the picamera2 IMX500 examples use it.

Tested here against a stand-in with exactly those names (tests/test_imx500.py); NOT tested on a camera: the .rpk
loading, the frame rate and the tensor's layout on real hardware are as the picamera2 manual describes them.

What can be examined where: `export --target imx500` judged MCT's simulation of the sensor's arithmetic on the
held-out photos (edgecls.json `imx500.metrics`); on the sensor itself edgecls can take no exam (the bundle's golden
answers need a model the CPU runs), so the adapter says so at start-up (`startup_note`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError

FRAME_RATE = 30.0   # picamera2's IMX500 classification example runs classifiers at this rate


def startup_note(meta: dict) -> str:
    """The one line `run` prints when the network runs on the sensor: which exam applied, and which cannot."""
    block = meta.get("imx500") or {}
    a = (block.get("metrics") or {}).get("agreement_heldout")
    judged = (f"MCT's simulation of it agreed with float on {a['agreed']}/{a['images']} held-out photos at export"
              if a else "this bundle records no judged IMX500 model")
    return (f"IMX500: the network runs on the camera's sensor, where edgecls cannot take the bundle's exam; {judged} "
            "(`edgecls verify` examines the CPU artifacts only)")


@dataclass
class SensorResult:
    probabilities: np.ndarray   # the network's output for one frame, (n_classes,)
    label: str
    score: float


class Imx500Camera:
    """Frames' classifications from the sensor: `read()` → SensorResult, or None while the network has no output."""

    def __init__(self, rpk: Path, labels: list[str], frame_rate: float = FRAME_RATE):
        try:
            from picamera2 import Picamera2
            from picamera2.devices import IMX500
        except ImportError:
            raise EdgeclsError("the AI Camera needs picamera2 with its IMX500 helper (Raspberry Pi OS: "
                               "sudo apt install python3-picamera2 imx500-all)") from None
        if not Path(rpk).is_file():
            raise EdgeclsError(f"{rpk}: no such network file; on the Pi, make it from the bundle with "
                               "`imx500-package -i imx500/packerOut.zip -o imx500/` (docs/imx500.md)")
        self.labels = list(labels)
        self.imx500 = IMX500(str(rpk))
        self.camera = Picamera2(self.imx500.camera_num)
        config = self.camera.create_preview_configuration(controls={"FrameRate": frame_rate}, buffer_count=12)
        self.imx500.show_network_fw_progress_bar()   # uploading the network to the sensor takes seconds
        self.camera.start(config, show_preview=False)

    def read(self) -> SensorResult | None:
        outputs = self.imx500.get_outputs(self.camera.capture_metadata(), add_batch=True)
        if outputs is None:   # the sensor has not produced an output for this frame (e.g. while loading)
            return None
        return interpret(outputs, self.labels)

    def close(self) -> None:
        self.camera.stop()


def interpret(outputs, labels: list[str]) -> SensorResult:
    """The first output tensor (batch of 1) as the classifier's probabilities over `labels`."""
    probs = np.asarray(outputs[0], np.float32).reshape(-1)
    if probs.size != len(labels):
        raise EdgeclsError(f"the camera's network gives {probs.size} outputs but the bundle has {len(labels)} labels: "
                           "the .rpk on the camera is not this bundle's")
    best = int(probs.argmax())
    return SensorResult(probs, labels[best], float(probs[best]))
