"""Training configuration: parsed and checked before TensorFlow is imported, so bad input fails in milliseconds."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edgecls.dataset import check_split_fractions
from edgecls.errors import EdgeclsError
from edgecls.preprocess import RESIZE_MODES, PreprocessSpec
from edgecls.train.backbones import IMG_SIZE_RANGE, get_backbone
from edgecls.train.split_input import CACHE_MODES
from edgecls.train.tfenv import keras_cache_dirs


HEAD_MODES = ("features", "images")
SCHEDULES = ("cosine", "constant")

# What each preset sets (an option given on the command line wins). Time on this project's 2-core CPU for
# ~2,000 photos (docs/train.md): fast ~2 min, balanced 5-9 min (measured), accurate ~13 min.
PRESETS: dict[str, dict] = {
    "fast": {"img_size": 128, "epochs": 20, "fine_tune_epochs": 5},
    "balanced": {"img_size": 160, "epochs": 20, "fine_tune_epochs": 12},
    "accurate": {"img_size": 224, "epochs": 30, "fine_tune_epochs": 15},
}
STRATEGIES = ("auto", "mirrored", "multiworker", "none")


@dataclass
class TrainConfig:
    data_dir: str
    backbone: str = "mobilenet_v2"
    alpha: float = 1.0
    img_size: int = 160
    weights: str = "imagenet"          # imagenet | none | path to an .h5 of no-top weights
    resize: str = "stretch"
    epochs: int = 20                   # head only, backbone frozen (cheap with head="features")
    fine_tune_epochs: int = 12         # top of the backbone unfrozen, lr / 10: where the accuracy comes from
    fine_tune_at: int | None = None    # first backbone layer index to unfreeze (default: per backbone)
    lr: float = 1e-3
    head: str = "features"             # features: the head trains on backbone features computed once | images
    schedule: str = "cosine"           # fine-tuning rate: cosine (warm-up, then decay) | constant
    preset: str = "balanced"           # fast | balanced | accurate: see PRESETS
    time_budget: float | None = None   # minutes: fine-tune epochs are planned to fit
    batch_size: int = 32
    label_smoothing: float = 0.1
    dropout: float = 0.2
    class_weights: bool = True
    augment: bool = True
    val_split: float = 0.15
    test_split: float = 0.15
    seed: int = 1337
    patience: int = 5
    strategy: str = "auto"             # one of STRATEGIES (multiworker: TF_CONFIG's cluster, train/multiworker.py)
    mixed_precision: bool = False
    max_images_per_class: int | None = None   # for quick experiments and tests
    cache: str = "auto"                # auto | memory | disk | none: where decoded pixels live (train/split_input.py)
    init: str | None = None            # train --init: the run folder whose weights this run starts from

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def preprocess_spec(self) -> PreprocessSpec:
        bb = get_backbone(self.backbone)
        return PreprocessSpec(height=self.img_size, width=self.img_size, resize=self.resize,
                              color_order=bb.color_order, scale=bb.scale, offset=bb.offset)

    def validate(self) -> None:
        for f in fields(self):  # NaN slips through every comparison below (NaN <= 0 is False): refuse it first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise EdgeclsError(f"--{f.name.replace('_', '-')} must be a finite number, not {value}")
        bb = get_backbone(self.backbone)
        bb.check_alpha(self.alpha)
        lo, hi = IMG_SIZE_RANGE
        if not lo <= self.img_size <= hi:
            raise EdgeclsError(f"--img-size {self.img_size} is out of range ({lo}-{hi})")
        if self.resize not in RESIZE_MODES:
            raise EdgeclsError(f"--resize must be one of {', '.join(RESIZE_MODES)}")
        if self.cache not in CACHE_MODES:
            raise EdgeclsError(f"--cache must be one of {', '.join(CACHE_MODES)}, not {self.cache!r}")
        if self.head not in HEAD_MODES or self.schedule not in SCHEDULES:
            raise EdgeclsError(f"--head must be one of {', '.join(HEAD_MODES)} and --schedule one of {', '.join(SCHEDULES)}")
        if self.preset not in PRESETS:
            raise EdgeclsError(f"--preset must be one of {', '.join(PRESETS)}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise EdgeclsError("--time-budget must be a positive number of minutes")
        if self.strategy not in STRATEGIES:
            raise EdgeclsError("--strategy must be auto, mirrored, multiworker or none")
        if self.strategy == "multiworker":
            from edgecls.train.multiworker import cluster_from_env, collective_timeout, startup_timeout

            cluster_from_env()   # TF_CONFIG missing or wrong: one line now, not a hang in gRPC later
            startup_timeout()      # a bad value of either: one line now, not a traceback from TensorFlow later
            collective_timeout()
            if self.time_budget is not None:   # each worker would plan by its own clock: they must agree
                raise EdgeclsError("--time-budget is planned by one machine's clock; with --strategy multiworker "
                                   "give --fine-tune-epochs instead")
        for name in ("epochs", "fine_tune_epochs"):
            if getattr(self, name) < 0:
                raise EdgeclsError(f"--{name.replace('_', '-')} must be >= 0")
        if self.epochs + self.fine_tune_epochs == 0:
            raise EdgeclsError("nothing to train: --epochs and --fine-tune-epochs are both 0")
        if self.batch_size < 1 or self.lr <= 0 or not 0 <= self.label_smoothing < 1:
            raise EdgeclsError("--batch-size must be >= 1, --lr > 0 and --label-smoothing in [0, 1)")
        if not 0 <= self.seed < 2 ** 32:  # NumPy's seed range, which Keras' set_random_seed passes it to
            raise EdgeclsError(f"--seed must be in 0..{2 ** 32 - 1}, not {self.seed}")
        if self.patience < 0 or (self.fine_tune_at is not None and self.fine_tune_at < 0):
            raise EdgeclsError("--patience and --fine-tune-at must not be negative")
        if self.max_images_per_class is not None and self.max_images_per_class < 1:
            raise EdgeclsError("--max-images-per-class must be at least 1")
        check_split_fractions(self.val_split, self.test_split)
        self.resolve_weights()

    def resolve_weights(self) -> str | None:
        """None (random init), a file path, or 'imagenet' (let Keras download: needs the internet)."""
        w = self.weights
        if w.lower() == "none":
            return None
        if w.lower() == "imagenet":
            cached = get_backbone(self.backbone).cached_imagenet_weights(self.alpha, keras_cache_dirs())
            return cached or "imagenet"
        if not Path(w).is_file():
            raise EdgeclsError(f"weights file not found: {w}")
        return os.path.abspath(w)
