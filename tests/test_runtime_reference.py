"""The device runtime on a known-good model edgecls did not make: real LiteRT, real photos."""
import numpy as np

from edgecls.bundle import load_bundle
from edgecls.images import load_rgb
from edgecls.preprocess import prepare
from edgecls.device.runtime import load_model


def test_reference_int8_model_names_the_photos(reference_bundle, reference_photos):
    b = load_bundle(reference_bundle)
    m = load_model(b, "tflite", "int8", threads=2)
    x = np.stack([prepare(load_rgb(p), b.spec) for p in reference_photos])
    probs = m.predict(x)
    assert probs.shape == (len(reference_photos), 1001)
    got = [b.labels[i] for i in probs.argmax(1)]
    assert [g.split(",")[0] for g in got] == list(reference_photos.values())
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.05)
