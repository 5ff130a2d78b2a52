"""EfficientNet-Lite0, built with Keras' own EfficientNet builder (there is no public Lite0 class).

Lite0 is EfficientNet-B0's widths, depths, kernels and strides with ReLU6 and no squeeze-and-excitation: the
builder makes it with `activation="relu6"` and `se_ratio=0` in every block (../shared/weights/PROVENANCE.md).
The builder lives in tf_keras' internal `tf_keras.src.applications.efficientnet`, not its public API, so it is
pinned here and tested (tests/test_lite0.py: the layer and parameter counts of the weights file); if a tf_keras
upgrade moves or changes it, `builder` fails with one line that says so instead of a traceback from deep in Keras.

Preprocessing: the builder puts Rescaling(1/255) and a Normalization layer (mean 127/255, variance (128/255)²
in the weights file) at the top: (x − 127)/128. edgecls wants ONE normalisation, first, as a plain Rescaling
named `normalize` (the int8 input fold reads it: convert/tflite.py: fold_plan), so `body` rebuilds the builder's
model with those two layers replaced by that one, after checking that the weights file's Normalization is
(x − 127)/128 — the scale/offset that edgecls.json records (train/backbones.py: BACKBONES).
"""
from __future__ import annotations

import copy

import numpy as np

from edgecls.errors import EdgeclsError

PINNED = "tf_keras.src.applications.efficientnet.EfficientNet"
LAYERS = 157                 # the no-top model the builder makes (and the weights file holds), stem normalisation included
PARAMS = 3_413_031
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0   # Lite0's own preprocessing: (x − 127) / 128


def builder():
    """The pinned builder and its default blocks, or one line that says a tf_keras upgrade broke them."""
    try:
        from tf_keras.src.applications import efficientnet as E

        ctor, blocks = E.EfficientNet, copy.deepcopy(E.DEFAULT_BLOCKS_ARGS)
        if not all("se_ratio" in b for b in blocks):
            raise KeyError("se_ratio")
    except (ImportError, AttributeError, KeyError, TypeError) as e:
        raise EdgeclsError(f"efficientnet_lite0 needs Keras' internal EfficientNet builder ({PINNED}), which this "
                           f"tf_keras does not have as pinned ({type(e).__name__}: {e}); install the tf_keras "
                           "version in pyproject.toml or choose another --backbone") from None
    for b in blocks:
        b["se_ratio"] = 0.0
    return ctor, blocks


def standalone(size: int, weights: str | None):
    """The builder's own Lite0 (its stem normalisation included), no top, `weights` a file path or None."""
    ctor, blocks = builder()
    try:
        return ctor(1.0, 1.0, 224, dropout_rate=0.2, activation="relu6", blocks_args=blocks,
                    model_name="efficientnet_lite0", include_top=False, weights=weights,
                    input_shape=(size, size, 3))
    except TypeError as e:   # a changed signature: the builder is not the one pinned
        raise EdgeclsError(f"efficientnet_lite0: Keras' EfficientNet builder ({PINNED}) changed its signature "
                           f"({e}); install the tf_keras version in pyproject.toml") from None
    except (ValueError, OSError) as e:   # not a Lite0 weights file, or not an HDF5 file at all
        raise EdgeclsError(f"cannot load weights {weights} into efficientnet_lite0: "
                           f"{str(e).splitlines()[0][:160]}") from None


def check_normalization(model) -> None:
    """The weights file's stem Normalization must be (x − 127)/128: what edgecls.json says the model computes."""
    norm = next(layer for layer in model.layers if type(layer).__name__ == "Normalization")
    mean = np.ravel(norm.mean.numpy()) * 255
    std = np.sqrt(np.ravel(norm.variance.numpy())) * 255
    if not (np.allclose(mean, PIXEL_MEAN, atol=0.01) and np.allclose(std, PIXEL_STD, atol=0.01)):
        raise EdgeclsError(f"efficientnet_lite0 weights normalise pixels by mean {np.round(mean, 2).tolist()} and std "
                           f"{np.round(std, 2).tolist()}, not Lite0's (x - 127)/128: not a Lite0 weights file")


def body(keras, size: int, weights: str | None, scale, offset, input_name: str, norm_name: str):
    """Lite0 from raw pixels as one flat model: Input `input_name` → Rescaling `norm_name` (scale, offset) →
    the builder's layers after its own normalisation, with the weights file's values (random init for None)."""
    if weights == "imagenet":   # not cached: never the builder's own "imagenet" (B0's file, another normalisation)
        from edgecls.train.lite0_weights import fetch
        from edgecls.train.tfenv import keras_cache_dirs

        weights = fetch(keras_cache_dirs()[0], standalone(224, None), PIXEL_MEAN, PIXEL_STD)
    built = standalone(size, weights)
    if weights is not None:
        check_normalization(built)
    config = built.get_config()
    stem = [layer for layer in built.layers[1:3]]
    if [type(layer).__name__ for layer in stem] != ["Rescaling", "Normalization"]:
        raise EdgeclsError(f"efficientnet_lite0: Keras' EfficientNet builder ({PINNED}) no longer starts with "
                           "Rescaling and Normalization; install the tf_keras version in pyproject.toml")
    config["layers"] = rewired(config["layers"], config["input_layers"][0][0], [s.name for s in stem],
                               input_name, norm_name, scale, offset)
    config["input_layers"] = [[input_name, 0, 0]]
    model = keras.Model.from_config(config)
    for layer in model.layers:
        if layer.weights and layer.name != norm_name:
            layer.set_weights(built.get_layer(layer.name).get_weights())
    return model


def rewired(layers: list[dict], old_input: str, stem: list[str], input_name: str, norm_name: str,
            scale, offset) -> list[dict]:
    """The builder's layer configs with its input renamed and its stem normalisation (`stem`, in order) replaced by
    one Rescaling: the layer that read the stem's output reads the new Rescaling."""
    renamed = {old_input: input_name, stem[-1]: norm_name}
    out = []
    for layer in layers:
        name = layer["name"]
        if name == old_input:
            layer = copy.deepcopy(layer)
            layer["name"] = layer["config"]["name"] = input_name
        elif name == stem[0]:
            layer = {"module": "keras.layers", "class_name": "Rescaling", "name": norm_name, "inbound_nodes": [[[input_name, 0, 0, {}]]],
                     "config": {"name": norm_name, "scale": list(scale), "offset": list(offset),
                                "trainable": True, "dtype": "float32"}}
        elif name in stem:
            continue
        else:
            layer = copy.deepcopy(layer)
            layer["inbound_nodes"] = [[[renamed.get(ref[0], ref[0]), *ref[1:]] for ref in node]
                                      for node in layer["inbound_nodes"]]
        out.append(layer)
    return out
