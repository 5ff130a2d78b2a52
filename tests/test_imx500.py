"""`edgecls export RUN --target imx500` (convert/imx500.py): Sony's MCT and imx500-converter in their own environment,
MCT's quantized model judged like the CPU artifacts, packerOut.zip in the bundle; and every reason it cannot run as
one line that says what to do, before the slow work."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from edgecls.bundle import MANIFEST, load_bundle

from conftest import NEAREST, cli, skip_or_fail

SMALL = ("--int8-method", "ptq", "--calib-samples", "16", "--max-drop", "50", "--min-agreement", "0", *NEAREST)


def one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgecls: error:"), r.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def fake_env(tmp_path: Path) -> Path:
    """An environment that passes the presence check (its stamp and python), so the next check is reached."""
    env = tmp_path / "imx500-env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    (env / ".edgecls-imx500").write_text("{}")
    return env


def test_without_its_environment_is_one_line(tiny_run, tmp_path):
    out = tmp_path / "bundle"
    r = cli("export", tiny_run, "--out", out, "--formats", "tflite", "--no-int8", "--target", "imx500",
            env={"EDGECLS_IMX500_ENV": str(tmp_path / "none")})
    one_line_error(r, "edgecls setup-imx500", str(tmp_path / "none"))
    assert not out.exists()


def test_without_java_is_one_line(tiny_run, tmp_path):
    empty = tmp_path / "path"
    empty.mkdir()   # PATH with no java on it (the CLI runs as sys.executable -m edgecls: no PATH lookup needed)
    out = tmp_path / "bundle"
    r = cli("export", tiny_run, "--out", out, "--formats", "tflite", "--no-int8", "--target", "imx500",
            env={"EDGECLS_IMX500_ENV": str(fake_env(tmp_path)), "PATH": str(empty)})
    one_line_error(r, "Java 17", "no java on PATH", "apt install openjdk-17-jre-headless")
    assert not out.exists()


def test_a_backbone_it_cannot_convert_is_one_line(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "run.json").read_text())
    meta["config"]["backbone"] = "mobilenet_v3_small"
    (run / "run.json").write_text(json.dumps(meta))
    r = cli("export", run, "--out", tmp_path / "bundle", "--formats", "tflite", "--no-int8", "--target", "imx500",
            env={"EDGECLS_IMX500_ENV": str(fake_env(tmp_path))})
    one_line_error(r, "mobilenet_v3_small", "--backbone mobilenet_v2")


def test_an_unknown_target_is_one_line(tiny_run, tmp_path):
    r = cli("export", tiny_run, "--out", tmp_path / "bundle", "--target", "hailo")
    one_line_error(r, "unknown --target 'hailo'", "tensorrt, imx500")


@pytest.mark.slow
def test_imx500_and_tensorrt_export_for_real(tiny_run, tmp_path):
    """One export for both accelerators (≈8 min on a busy 2-core host, most of it imxconv-tf): the real converter
    writes packerOut.zip offline; MCT's model is judged against float on the held-out photos; onnx-int8-trt is
    symmetric with Q/DQ on every conv; the bundle still loads and its CPU exam still passes."""
    from edgecls.convert import imx500, onnx_symmetric

    env = imx500.env_dir()
    if not (env / imx500.STAMP).is_file():
        skip_or_fail(f"no IMX500 environment at {env}: run `edgecls setup-imx500` (.ci/run does)")
    out = tmp_path / "bundle"
    r = cli("export", tiny_run, "--out", out, "--formats", "tensorrt", "--target", "imx500", *SMALL, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / MANIFEST).read_text())
    block = meta["imx500"]
    package = out / block["package"]["file"]
    with zipfile.ZipFile(package) as z:
        assert z.testzip() is None and z.namelist()
    from edgecls.fsutil import sha256_file

    assert sha256_file(package) == block["package"]["sha256"]
    agreement = block["metrics"]["agreement_heldout"]
    assert agreement["images"] == meta["report"]["images"] and agreement["split"] == "test"
    assert agreement["agreed"] >= 0.6 * agreement["images"]   # a weak 3-epoch model; flowers: benchmarks/RESULTS.md
    assert block["float_in_tf215_max_abs_diff"] < 1e-4        # the model crossed into TF 2.15 unchanged
    assert "imx500" in meta["report"]["gate"]["message"] or meta["report"]["gate"]["passed"]
    trt = meta["artifacts"]["onnx-int8-trt"]
    assert trt["metrics"]["reference"] == "onnx-float"
    report = onnx_symmetric.qdq_report(out / trt["file"])
    assert report["nonzero_zero_points"] == 0 and report["unquantized"] == []
    load_bundle(out)
    v = cli("verify", out)
    assert v.returncode == 0, v.stderr[-2000:]
    assert "imx500        not examined here" in v.stdout + v.stderr   # verify says which exam it cannot take
    assert os.path.getsize(out / block["quantized_model"]["file"]) > 0


def test_camera_adapter_follows_picamera2s_imx500_api(tmp_path, monkeypatch):
    """device/capture/imx500_camera.py against a stand-in for picamera2 with exactly the names its IMX500 examples use (no
    camera here: what real hardware does with them is untested, docs/imx500.md)."""
    import sys
    import types

    import numpy as np

    from edgecls.device.capture import imx500_camera
    from edgecls.errors import EdgeclsError

    calls = []

    class IMX500:
        def __init__(self, path):
            calls.append(("IMX500", path))
            self.camera_num, self.outputs = 1, [None, [np.array([[0.1, 0.7, 0.2]], np.float32)]]

        def show_network_fw_progress_bar(self):
            calls.append(("progress",))

        def get_outputs(self, metadata, add_batch=False):
            assert metadata == {"CnnOutputTensor": "…"} and add_batch
            return self.outputs.pop(0)

    class Picamera2:
        def __init__(self, camera_num):
            calls.append(("Picamera2", camera_num))

        def create_preview_configuration(self, controls=None, buffer_count=None):
            return {"controls": controls}

        def start(self, config, show_preview=False):
            calls.append(("start", config["controls"]["FrameRate"], show_preview))

        def capture_metadata(self):
            return {"CnnOutputTensor": "…"}

        def stop(self):
            calls.append(("stop",))

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=Picamera2))
    monkeypatch.setitem(sys.modules, "picamera2.devices", types.SimpleNamespace(IMX500=IMX500))
    rpk = tmp_path / "network.rpk"
    with pytest.raises(EdgeclsError, match="imx500-package"):
        imx500_camera.Imx500Camera(rpk, ["a", "b", "c"])
    rpk.write_bytes(b"rpk")
    cam = imx500_camera.Imx500Camera(rpk, ["a", "b", "c"])
    assert cam.read() is None                      # no output yet (the network still loading)
    result = cam.read()
    assert result.label == "b" and result.score == pytest.approx(0.7)
    cam.close()
    assert calls == [("IMX500", str(rpk)), ("Picamera2", 1), ("progress",), ("start", 30.0, False), ("stop",)]
    with pytest.raises(EdgeclsError, match="not this bundle's"):
        imx500_camera.interpret([np.zeros((1, 5))], ["a", "b", "c"])
    note = imx500_camera.startup_note({"imx500": {"metrics": {"agreement_heldout": {"agreed": 108, "images": 110}}}})
    assert "cannot take the bundle's exam" in note and "108/110" in note


def test_setup_refuses_a_folder_that_is_not_an_environment(tmp_path):
    """`setup-imx500 --env DIR` replaces an old environment; a folder with anything else in it is never deleted."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.jpg").write_bytes(b"x")
    one_line_error(cli("setup-imx500", "--env", folder), "is not a Python environment")
    assert (folder / "keep.jpg").read_bytes() == b"x"
    one_line_error(cli("setup-imx500", "--env", tmp_path / "new", "--python", str(tmp_path / "nope")), "no Python at")
