"""The tensor the device feeds an exported model equals the tensor training fed the Keras model,
for every resize mode and colour order a bundle can declare, from RGB files and BGR camera frames."""
from __future__ import annotations

import itertools
import json
import shutil

import cv2
import numpy as np
import pytest

from edgecls.bundle import MANIFEST, load_bundle
from edgecls.dataset import load_arrays
from edgecls.device.model.classifier import Classifier
from edgecls.device.capture.frame import Frame
from edgecls.images import load_rgb
from edgecls.preprocess import COLOR_ORDERS, RESIZE_MODES, PreprocessSpec, model_input, prepare

from conftest import REFERENCE
from conftest import build_tiny_bundle

# A non-square photo, so crop and letterbox differ from stretch.
PHOTO = REFERENCE / "coral_test_data_extras" / "grace_hopper.bmp"


@pytest.fixture(scope="session")
def bundle(tiny_run, tmp_path_factory):
    return build_tiny_bundle(tiny_run, tmp_path_factory.getbasetemp())[0]


def _declare(src, dest, spec: PreprocessSpec):
    """A copy of the exported bundle that declares `spec` (what a run trained with `spec` would export)."""
    shutil.copytree(src, dest)
    meta = json.loads((dest / MANIFEST).read_text())
    meta["preprocessing"] = spec.to_dict()
    (dest / MANIFEST).write_text(json.dumps(meta))
    return dest


@pytest.mark.parametrize("resize,order,in_model", [
    *((r, o, True) for r, o in itertools.product(RESIZE_MODES, COLOR_ORDERS)),
    ("letterbox", "BGR", False),   # a foreign model whose normalisation is outside it
])
def test_device_input_equals_training_input(bundle, tmp_path, resize, order, in_model):
    spec = PreprocessSpec(height=96, width=96, resize=resize, color_order=order, pad_value=114,
                          scale=(1 / 127.5,) * 3, offset=(-1.0,) * 3, in_model=in_model)
    b = _declare(bundle, tmp_path / "b", spec)
    assert load_bundle(b).spec == spec                     # the declaration survives edgecls.json

    # Training time: the run's loader, then what the Keras model is given.
    pixels, _ = load_arrays(PHOTO.parent, [(PHOTO.name, 0)], spec)
    trained_on = model_input(pixels, spec)
    assert pixels.shape == (1, 96, 96, 3)
    if resize == "letterbox":
        assert (pixels[0, :, 0] == 114).all()              # the photo is portrait: padded left/right

    frames = [Frame(load_rgb(PHOTO), "RGB", 0.0, 0), Frame(cv2.imread(str(PHOTO)), "BGR", 0.0, 1)]
    for precision in ("float", "int8"):
        clf = Classifier(b, "tflite", precision, threads=1)
        for frame in frames:
            device_pixels = prepare(frame.image, clf.spec, image_order=frame.order)   # Classifier.classify's step
            fed = clf.model._to_input(device_pixels[None])
            if precision == "float":
                np.testing.assert_array_equal(fed, trained_on)
            elif in_model:
                # Pixel codes: the pixels themselves. The input quantization (scale 1/127.5, zero point 128) turns
                # them into the training normalisation less the constant 1/255 the first conv absorbs.
                io = clf.model.input_io
                assert clf.model.feed == "pixel-codes" and fed.dtype == np.uint8
                np.testing.assert_array_equal(fed, device_pixels[None])
                normalised = trained_on * np.float32(spec.scale[0]) + np.float32(spec.offset[0])
                got = (fed.astype(np.float32) - io.zero_point) * np.float32(io.scale)
                np.testing.assert_allclose(got - normalised, -0.5 * io.scale, atol=1e-6)
