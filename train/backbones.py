"""The backbone registry: every fact about a backbone in one row (no TensorFlow needed to read it)."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from edgecls.errors import EdgeclsError

# 320: above EfficientNet-Lite4's 300 px; Keras loads the 224 px ImageNet weights for any size (the convolutions do
# not depend on it). Measured: Lite0 at 288 px on flowers, benchmarks/results/lite0-recipe-flowers.md.
IMG_SIZE_RANGE = (96, 320)


@dataclass(frozen=True)
class Backbone:
    name: str
    keras_fn: str                          # constructor in tf_keras.applications
    alphas: tuple[float, ...]              # width multipliers the architecture offers
    scale: tuple[float, float, float]      # normalisation inside the model: x = pixel * scale + offset
    offset: tuple[float, float, float]
    color_order: str = "RGB"
    fine_tune_fraction: float = 0.35       # default: unfreeze the top 35% of the backbone's layers
    weights_glob: str | None = None        # Keras cache file name(s) of the ImageNet no-top weights
    extra_kwargs: dict = field(default_factory=dict)
    builder: str | None = None             # no public Keras class: the edgecls.train module whose body() builds it

    def check_alpha(self, alpha: float) -> None:
        if not any(abs(alpha - a) < 1e-9 for a in self.alphas):
            offered = ", ".join(str(a) for a in self.alphas)
            raise EdgeclsError(f"--alpha {alpha} is not available for {self.name} (offered: {offered})")

    def cached_imagenet_weights(self, alpha: float, dirs: list[str]) -> str | None:
        """A cached no-top weights file for this alpha. Conv weights do not depend on the input size,
        so any cached resolution serves any --img-size."""
        if not self.weights_glob:
            return None
        pattern = self.weights_glob.format(alpha=_alpha_str(alpha))
        for d in dirs:
            hits = sorted(glob.glob(os.path.join(d, pattern)))
            if hits:
                return hits[-1]
        return None


def _alpha_str(alpha: float) -> str:
    return f"{alpha:g}" if alpha != int(alpha) else f"{alpha:.1f}"


_MOBILENET = dict(scale=(1 / 127.5,) * 3, offset=(-1.0,) * 3)
# EfficientNet-Lite0's own preprocessing, (x - 127)/128 (train/lite0.py checks the weights file agrees).
_LITE = dict(scale=(1 / 128,) * 3, offset=(-127 / 128,) * 3)
# ResNet50 was trained "caffe"-style: BGR, ImageNet mean subtracted, no scaling.
_CAFFE = dict(scale=(1.0,) * 3, offset=(-103.939, -116.779, -123.68), color_order="BGR")

BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("mobilenet_v2", "MobileNetV2", (0.35, 0.5, 0.75, 1.0, 1.3, 1.4), **_MOBILENET,
             weights_glob="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_*_no_top.h5"),
    # include_preprocessing=False: V3's built-in Rescaling would be a second normalisation.
    Backbone("mobilenet_v3_small", "MobileNetV3Small", (0.75, 1.0), **_MOBILENET,
             weights_glob="weights_mobilenet_v3_small_224_{alpha}_float_no_top*.h5",
             extra_kwargs={"include_preprocessing": False}),
    Backbone("mobilenet_v3_large", "MobileNetV3Large", (0.75, 1.0), **_MOBILENET,
             weights_glob="weights_mobilenet_v3_large_224_{alpha}_float_no_top*.h5",
             extra_kwargs={"include_preprocessing": False}),
    Backbone("resnet50", "ResNet50", (1.0,), fine_tune_fraction=0.2, **_CAFFE,
             weights_glob="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # Built by Keras' internal EfficientNet builder (train/lite0.py); weights: ../shared/weights/PROVENANCE.md.
    Backbone("efficientnet_lite0", "", (1.0,), **_LITE, weights_glob="efficientnet_lite0_no_top.h5",
             builder="lite0"),
)}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise EdgeclsError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None
