"""Building the classifier: raw pixels → normalise → backbone → pooled head, as ONE flat Keras model.

Flat (every layer a direct member of one Model, no nested sub-model) because tfmot's QAT cannot
quantise nested models; normalisation as a plain `Rescaling` layer so the exported model takes raw
pixels and the device has nothing to guess.
"""
from __future__ import annotations

from edgecls.errors import EdgeclsError
from edgecls.train.backbones import get_backbone
from edgecls.train.config import TrainConfig

HEAD_LAYERS = ("pool", "head_dropout", "predictions")
NORMALIZE = "normalize"


def build_model(cfg: TrainConfig, n_classes: int, weights: str | None):
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    bb = get_backbone(cfg.backbone)
    size = cfg.img_size
    if bb.builder:   # a backbone no public Keras class builds: its module makes the flat model from raw pixels
        import importlib

        module = importlib.import_module(f"edgecls.train.{bb.builder}")
        base = module.body(keras, size, weights, bb.scale, bb.offset, input_name="pixels", norm_name=NORMALIZE)
        return _with_head(keras, cfg, base, base.input, n_classes, weights)
    inp = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(list(bb.scale), list(bb.offset), name=NORMALIZE)(inp)
    ctor = getattr(keras.applications, bb.keras_fn)
    kwargs = dict(input_tensor=x, input_shape=(size, size, 3), include_top=False, weights=weights, **bb.extra_kwargs)
    if len(bb.alphas) > 1:
        kwargs["alpha"] = cfg.alpha
    try:
        base = ctor(**kwargs)
    except Exception as e:  # a failed download or an unreadable weights file
        if weights == "imagenet":
            raise EdgeclsError(f"ImageNet weights for {cfg.backbone} alpha {cfg.alpha} are not cached and could not "
                               f"be downloaded ({type(e).__name__}); pass --weights PATH or --weights none") from None
        raise EdgeclsError(f"cannot load weights {weights} into {cfg.backbone}: {str(e).splitlines()[0][:160]}") from None
    return _with_head(keras, cfg, base, inp, n_classes, weights)


def _with_head(keras, cfg: TrainConfig, base, inp, n_classes: int, weights: str | None):
    """The pooled head on the backbone's feature map: the whole flat model from `inp` (raw pixels)."""
    if weights is None:
        # From scratch, Keras' BatchNorm momentum (0.999 in MobileNets) leaves the moving statistics far
        # from the batch ones for thousands of steps: validation looks like chance while training learns.
        for layer in base.layers:
            if layer.__class__.__name__ == "BatchNormalization":
                layer.momentum = 0.9
    y = keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
    y = keras.layers.Dropout(cfg.dropout, name="head_dropout")(y)
    # float32 output even under mixed precision: softmax in float16 loses the small probabilities.
    y = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(y)
    return keras.Model(inp, y, name=f"edgecls_{cfg.backbone}")


def backbone_layers(model) -> list:
    return [layer for layer in model.layers
            if layer.name not in HEAD_LAYERS and layer.name != NORMALIZE and not layer.__class__.__name__ == "InputLayer"]


def default_fine_tune_at(cfg: TrainConfig, model) -> int:
    n = len(backbone_layers(model))
    if cfg.fine_tune_at is not None:
        if not 0 <= cfg.fine_tune_at < n:
            raise EdgeclsError(f"--fine-tune-at {cfg.fine_tune_at} is outside the backbone's 0-{n - 1} layers")
        return cfg.fine_tune_at
    return int(n * (1 - get_backbone(cfg.backbone).fine_tune_fraction))


def set_phase(model, phase: str, fine_tune_at: int, from_scratch: bool = False) -> None:
    """'head': backbone frozen. 'finetune': backbone layers from fine_tune_at on are trainable, but
    BatchNormalization stays frozen (in inference mode), so small batches cannot wreck its statistics.
    from_scratch (no pretrained weights): there are no features worth freezing, so everything trains."""
    layers = backbone_layers(model)
    for i, layer in enumerate(layers):
        is_bn = layer.__class__.__name__ == "BatchNormalization"
        layer.trainable = from_scratch or (phase == "finetune" and i >= fine_tune_at and not is_bn)
    for name in HEAD_LAYERS:
        model.get_layer(name).trainable = True
