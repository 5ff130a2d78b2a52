"""The device runtime on a known-good model edgecls did not make: real LiteRT, real photos."""
import numpy as np

from edgecls.bundle import load_bundle
from edgecls.images import load_rgb
from edgecls.preprocess import prepare
from edgecls.device.model.runtime import load_model


def test_reference_int8_model_names_the_photos(reference_bundle, reference_photos):
    b = load_bundle(reference_bundle)
    m = load_model(b, "tflite", "int8", threads=2)
    x = np.stack([prepare(load_rgb(p), b.spec) for p in reference_photos])
    probs = m.predict(x)
    assert probs.shape == (len(reference_photos), 1001)
    got = [b.labels[i] for i in probs.argmax(1)]
    assert [g.split(",")[0] for g in got] == list(reference_photos.values())
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.05)


def test_onnx_converted_from_an_int8_tflite_gives_its_probabilities(reference_bundle, reference_photos, tmp_path):
    """export's `from-tflite` ONNX route: tf2onnx keeps the TFLite's uint8 output, and the runtime
    dequantizes it with the scale edgecls.json records, so ONNX and TFLite report the same probabilities."""
    from edgecls.bundle import Artifact
    from edgecls.convert import onnx_export, tflite
    from edgecls.device.model.runtime import OnnxModel
    from edgecls.formats import BY_KEY

    b = load_bundle(reference_bundle)
    src = reference_bundle / "model_int8.tflite"
    onnx = onnx_export.from_tflite(src, tmp_path / "model_int8.onnx")
    io = tflite.entry_fields(src)
    assert io["output"]["dtype"] == "uint8" and io["output"]["scale"] > 0
    x = np.stack([prepare(load_rgb(p), b.spec) for p in reference_photos])
    want = load_model(b, "tflite", "int8", threads=2).predict(x)
    got = OnnxModel(Artifact(BY_KEY["onnx-int8"], onnx, {"output_kind": "probabilities", **io}), b.spec, 1001).predict(x)
    assert list(got.argmax(1)) == list(want.argmax(1))
    np.testing.assert_allclose(got.sum(1), 1.0, atol=0.05)          # dequantized, not 0..255
    assert np.abs(got - want).max() <= 16 * io["output"]["scale"]   # integer kernels of two runtimes
    bare = OnnxModel(Artifact(BY_KEY["onnx-int8"], onnx, {"output_kind": "probabilities"}), b.spec, 1001).predict(x)
    assert bare.max() > 1.5   # without the recorded scale the raw uint8 would come through: the scale matters



def test_runtime_refuses_an_input_feed_it_does_not_know(reference_bundle, tmp_path):
    """edgecls.json input.feed decides how pixels enter the model; a value this edgecls does not know (a newer
    bundle) is refused, never guessed."""
    import json
    import shutil

    import pytest

    from edgecls.errors import EdgeclsError

    assert load_model(load_bundle(reference_bundle), "tflite", "int8", threads=1).feed == "values"   # the default
    dest = tmp_path / "bundle"
    shutil.copytree(reference_bundle, dest)
    meta = json.loads((dest / "edgecls.json").read_text())
    meta["artifacts"]["tflite-int8"]["input"] = {"feed": "bits"}
    (dest / "edgecls.json").write_text(json.dumps(meta))
    with pytest.raises(EdgeclsError, match="'bits'.*upgrade edgecls"):
        load_model(load_bundle(dest), "tflite", "int8", threads=1)


def test_pixel_codes_are_the_pixels_in_the_input_type():
    from edgecls.device.model.runtime import pixel_codes

    p = np.array([[0, 1, 127, 128, 255]], np.uint8)
    assert pixel_codes(p, np.uint8) is p
    assert pixel_codes(p, np.int8).tolist() == [[-128, -127, -1, 0, 127]]


def test_int8_onnx_runs_unfused_where_the_cpu_has_no_int8_dot_product(digits_bundle, monkeypatch):
    """On an x86 without VNNI onnxruntime's fused int8 kernels move answers (a flowers model: 101/110 held-out
    photos as float, 110/110 as the QDQ graph); there the device runtime runs the int8 ONNX unfused, and its
    answers are the QDQ graph's op by op. Elsewhere the fused kernels run (the fast path)."""
    import onnxruntime as ort

    from edgecls.device.model.runtime import int8_dot_product

    bundle = load_bundle(digits_bundle)
    model = load_model(bundle, "onnx", "int8")
    level = model.sess.get_session_options().graph_optimization_level
    want = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if int8_dot_product() else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert level == want
    x = np.load(digits_bundle / "golden" / "images.npz")["array"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(bundle.artifacts["onnx-int8"].path), so, providers=["CPUExecutionProvider"])
    name = plain.get_inputs()[0].name
    op_by_op = np.concatenate([plain.run(None, {name: model._to_input(x[i:i + 1])})[0] for i in range(len(x))])
    if not int8_dot_product():
        assert np.abs(model.predict(x) - model._finish(op_by_op)).max() < 1e-5
    # EDGECLS_ONNX_AS_WRITTEN=1: the graph as written on any CPU (the Pi stack check's host reference)
    monkeypatch.setenv("EDGECLS_ONNX_AS_WRITTEN", "1")
    written = load_model(bundle, "onnx", "int8")
    assert written.sess.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert np.abs(written.predict(x) - written._finish(op_by_op)).max() < 1e-5
