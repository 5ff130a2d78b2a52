"""Loading a run's `model.keras` without ever running code stored in it.

A run folder may come from anywhere (a colleague, a download). Keras can execute code from a model file:
a legacy HDF5 model's `Lambda` layer is Python bytecode that `load_model` runs with no safe mode, and a
config may name any importable module. So before Keras sees the file:
- it must be a Keras v3 archive (a zip) — an HDF5 file named `.keras` is refused, not loaded;
- its config may only reference Keras' own modules, no `Lambda` layer, and TF-op layers only for the
  arithmetic edgecls' backbones use (MobileNetV3's hard-swish);
and Keras loads it with `safe_mode=True` as well.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from edgecls.errors import EdgeclsError

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS_MODULES = ("keras", "tf_keras")
# The TF ops tf_keras wraps as TFOpLambda layers in the backbones edgecls builds (x + 3, x * (1/6)).
SAFE_TF_OPS = frozenset({"__operators__.add", "math.multiply", "math.add", "math.subtract", "math.truediv"})


def _refusal(config) -> str | None:
    """Why this config must not be deserialized, or None."""
    if isinstance(config, list):
        return next((r for r in (_refusal(v) for v in config) if r), None)
    if not isinstance(config, dict):
        return None
    cls, module = config.get("class_name"), config.get("module")
    if cls == "Lambda":
        return "a Lambda layer (Python code)"
    if cls in ("TFOpLambda", "SlicingOpLambda"):
        fn = (config.get("config") or {}).get("function")
        if fn not in SAFE_TF_OPS:
            return f"a TensorFlow-op layer calling {fn!r}"
    if isinstance(module, str) and module.split(".")[0] not in KERAS_MODULES:
        return f"an object from module {module!r} ({cls})"
    return next((r for r in (_refusal(v) for v in config.values()) if r), None)


def check_model_file(path: str | os.PathLike) -> None:
    """Raise EdgeclsError unless `path` is a Keras v3 archive whose config holds nothing that runs code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:4] != ZIP_MAGIC:
            kind = "an HDF5 file" if head == HDF5_MAGIC else "not a Keras archive"
            raise EdgeclsError(f"refusing to load {path}: it is {kind}, not the zip a .keras model is "
                               f"(an HDF5 model can carry Python code)")
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise EdgeclsError(f"cannot load the run's model {path}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else 'corrupt file'}") from None
    why = _refusal(config)
    if why:
        raise EdgeclsError(f"refusing to load {path}: its config holds {why}, which edgecls never writes")


def load_model_safely(keras, path: str | os.PathLike):
    """tf_keras model from a checked `.keras` archive, deserialized in safe mode, uncompiled."""
    check_model_file(path)
    return keras.models.load_model(str(path), compile=False, safe_mode=True)
