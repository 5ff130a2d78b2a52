"""The model stage when the network runs on the AI Camera's sensor (`edgecls run BUNDLE --source imx500`): the same
`Prediction`s as `Classifier` (top-k, --smooth, --threshold), decided from the output tensor each frame brings with it
(device/capture/imx500_camera.py: SensorFrame) instead of a model run on this CPU. Chosen by the source (device/live.py),
never by guessing. No embedding comes off the sensor, so the bundle's unknown rule does not apply.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecls.bundle import load_bundle
from edgecls.device.capture.frame import Frame
from edgecls.device.capture.imx500_camera import check_ready, network_file, probabilities
from edgecls.device.model.classifier import SMOOTH, THRESHOLD, TOP_K, Classifier, check_decision
from edgecls.errors import EdgeclsError


@dataclass(frozen=True)
class SensorModel:
    """What the loop and its start-up line ask of a model, for the network inside the camera."""
    key: str = "imx500"
    runtime: str = "IMX500 sensor"
    providers: tuple[str, ...] = ("on the camera",)
    has_embedding: bool = False


class SensorClassifier(Classifier):
    """`source_uri` is `imx500` (the bundle's imx500/network.rpk) or `imx500:PATH.rpk`; everything the camera needs
    is checked here, before anything opens (device/capture/imx500_camera.py: check_ready)."""

    def __init__(self, bundle_path, source_uri: str, top_k: int = TOP_K, smooth: int = SMOOTH,
                 threshold: float = THRESHOLD):
        check_decision(smooth, threshold)
        self.bundle = load_bundle(bundle_path)
        self.rpk = network_file(self.bundle, source_uri)
        check_ready(self.bundle, self.rpk)
        self.model = SensorModel()
        self.set_decision(top_k, smooth, threshold)

    @property
    def source_uri(self) -> str:
        """The source that delivers this network's outputs (device/capture/sources.py: SensorSource)."""
        return f"imx500:{self.rpk}"

    def model_outputs(self, frame: Frame):
        outputs = getattr(frame, "outputs", None)
        if outputs is None:
            raise EdgeclsError(f"frame {frame.index} came without the sensor's output: the IMX500 classifier needs "
                               "--source imx500")
        probs = probabilities(outputs, self.labels)
        if not np.isfinite(probs).all():
            raise EdgeclsError(f"the camera's network gave non-finite outputs for frame {frame.index}")
        return probs, None, None
