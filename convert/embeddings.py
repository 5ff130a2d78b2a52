"""The embedding output and the teach set: what export gives the device so that it can learn a class itself
(`edgecls teach`, device/teach/command.py) and say "unknown" (device/model/unknown.py).

- Every model file export converts gets a second output, the pooled features the classifier reads
  (`with_embedding`: one model, no second file); which output is which is recorded by index in edgecls.json
  (`output_roles`, artifacts.KEY.outputs), so the device never guesses.
- `teach.npz` (`write`): TEACH_PER_CLASS training photos' embeddings per class and CALIB_PER_CLASS held-out
  (validation) photos' embeddings per class, float16, computed with the bundle's own int8 model through the
  device runtime — the very numbers the device's embeddings will be compared with — and the classifier's
  Dense kernel and bias, so the device can rebuild the classifier in NumPy.
- the unknown rule, calibrated on the held-out embeddings (device/model/unknown.py: calibrate).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError

TEACH_FILE = "teach.npz"
TEACH_PER_CLASS = 20     # training photos per class kept as embeddings: 1280 × 2 B × 20 = 51 KB per class (MobileNetV2)
CALIB_PER_CLASS = 20     # held-out (val) photos per class: the unknown rule is re-calibrated on them after each teach
ROLES = ("probabilities", "embedding")
EMBEDDING_LAYER = "embedding"
# The int8 artifacts first: the device teaches with the bundle's own int8 model (docs/teach.md).
SOURCE_ORDER = ("tflite-int8", "onnx-int8", "tflite-float", "onnx-float")


def with_embedding(model):
    """`model` (Keras, single softmax output) with the classifier's input — the pooled features after the
    global average pool (dropout is the identity at inference) — as a second output, probabilities first.
    The same layers and weights, and the same name (TFLite names ops after it: the search's float ops must keep
    matching the ONNX nodes)."""
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    if len(model.outputs) != 1:
        return model   # already has its embedding output
    last = model.layers[-1]
    features = last.input
    if len(features.shape) != 2:
        raise EdgeclsError(f"the model's last layer {last.name} does not read pooled features (input shape "
                           f"{tuple(features.shape)}): no embedding output can be exported")
    # Its own tensor, through a reshape to (1, D) (no converter folds away a reshape of an output): the int8
    # converter turns model outputs into uint8 in place, and the classifier's input itself as an output broke
    # the int8 model whenever the search kept the classifier float (a float FC fed uint8).
    embedding = keras.layers.Reshape((1, int(features.shape[-1])), name=EMBEDDING_LAYER)(features)
    return keras.Model(model.inputs, [model.output, embedding], name=model.name)


def output_roles(last_dims: list[int], n_classes: int | None) -> dict[str, int]:
    """Which output index holds which role, for edgecls.json's artifacts.KEY.outputs: {"probabilities": 0} for a
    one-output file, {"probabilities": i, "embedding": j} for two. The converters do not keep `with_embedding`'s
    order (the int8 TFLite puts the embedding first), so the probabilities are found as the output with
    `n_classes` values; an embedding exactly as wide as the class list cannot be told apart and is refused."""
    if len(last_dims) == 1:
        return {"probabilities": 0}
    if len(last_dims) != 2:
        raise EdgeclsError(f"a model with {len(last_dims)} outputs: export writes one (probabilities) or two "
                           "(probabilities, embedding)")
    matching = [i for i, d in enumerate(last_dims) if d == n_classes]
    if n_classes is None or len(matching) != 1:
        raise EdgeclsError(f"cannot tell the probabilities from the embedding among outputs of {last_dims} values "
                           f"for {n_classes} classes")
    return {"probabilities": matching[0], "embedding": 1 - matching[0]}


def per_class(y: np.ndarray, n: int) -> np.ndarray:
    """Up to n indices of each class (the first in split order: splits.json's order is already shuffled by seed)."""
    picked = [np.flatnonzero(y == c)[:n] for c in sorted(set(y.tolist()))]
    return np.concatenate(picked) if picked else np.zeros(0, int)


def source_key(entries: dict[str, dict]) -> str | None:
    """The artifact whose embeddings the teach set holds: the int8 model the device runs by default."""
    return next((k for k in SOURCE_ORDER if k in entries and "embedding" in entries[k].get("outputs", {})), None)


def classifier_weights(model) -> tuple[np.ndarray, np.ndarray]:
    """The Keras classifier's Dense kernel (D, C) and bias (C,), float32."""
    kernel, bias = model.layers[-1].get_weights()[:2]
    return np.asarray(kernel, np.float32), np.asarray(bias, np.float32)


def write(ctx, bundle_dir: Path, entries: dict[str, dict]) -> dict:
    """teach.npz into `bundle_dir`; returns edgecls.json's `teach` and `unknown` blocks ({} when no artifact has
    an embedding output)."""
    from edgecls.convert.golden import entry
    from edgecls.device.teach.head import embed_all, save_npz
    from edgecls.device.model.unknown import calibrate

    key = source_key(entries)
    if key is None:
        return {}
    model = ctx.model_for(key, bundle_dir / entries[key]["file"], entries[key])
    im = ctx.images
    train_idx = per_class(im.y["train"], TEACH_PER_CLASS)
    held_split = "val" if len(im.x["val"]) else "test"
    held_idx = per_class(im.y[held_split], CALIB_PER_CLASS)
    emb = embed_all(model, im.x["train"][train_idx])
    held = embed_all(model, im.x[held_split][held_idx])
    kernel, bias = classifier_weights(ctx.model)
    arrays = {"embeddings": emb.astype(np.float16), "classes": im.y["train"][train_idx].astype(np.int16),
              "calib_embeddings": held.astype(np.float16),
              "calib_classes": im.y[held_split][held_idx].astype(np.int16), "kernel": kernel, "bias": bias}
    save_npz(bundle_dir / TEACH_FILE, arrays)
    teach = {**entry(bundle_dir, bundle_dir / TEACH_FILE), "source_artifact": key,
             "per_class": TEACH_PER_CLASS, "calib_per_class": CALIB_PER_CLASS, "calib_split": held_split,
             "embedding_size": int(emb.shape[1]), "dtype": "float16"}
    return {"teach": teach, "unknown": {**calibrate(arrays), "split": held_split}}
