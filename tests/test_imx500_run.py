"""`edgecls run BUNDLE --source imx500`: the AI Camera in the live loop, the network on its sensor. The real `edgecls
run` in a subprocess with a stand-in for picamera2 on PYTHONPATH (tests/standins/picamera2: exactly the documented
names, each frame's output tensor a row of the bundle's own golden answers); a copy of the cached digits bundle gets
an `imx500` block and a dummy network.rpk here (no MCT, no TensorFlow). Not tested on a camera: docs/imx500.md."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecls.bundle import MANIFEST

from conftest import cli
from test_imx500 import one_line_error

STANDINS = Path(__file__).parent / "standins"


def sensor_bundle(digits_bundle: Path, dest: Path, block: bool = True, rpk: bool = True) -> Path:
    """A copy of the digits bundle as `export --target imx500` would leave it on the Pi (after imx500-package)."""
    shutil.copytree(digits_bundle, dest)
    if block:
        meta = json.loads((dest / MANIFEST).read_text())
        meta["imx500"] = {"metrics": {"agreement_heldout": {"agreed": 15, "images": 16, "split": "test"}},
                          "on_the_pi": "imx500-package -i imx500/packerOut.zip -o imx500/ (docs/imx500.md)"}
        (dest / MANIFEST).write_text(json.dumps(meta))
    if rpk:
        (dest / "imx500").mkdir()
        (dest / "imx500" / "network.rpk").write_bytes(b"not a real network: the stand-in never reads it")
    return dest


def camera_env(tmp_path: Path, outputs: np.ndarray, standin: bool = True) -> dict:
    np.save(tmp_path / "outputs.npy", outputs)
    path = [str(STANDINS)] if standin else []
    return {"PYTHONPATH": os.pathsep.join(path + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
            "STANDIN_IMX500_OUTPUTS": str(tmp_path / "outputs.npy"), "STANDIN_IMX500_LOADING": "3",
            "STANDIN_IMX500_LOG": str(tmp_path / "camera.log")}


def golden_answers(bundle: Path) -> np.ndarray:
    with np.load(bundle / "golden" / "outputs_keras-float.npz") as z:
        return z["array"]


def camera_calls(tmp_path: Path) -> list[list]:
    log = tmp_path / "camera.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_run_classifies_with_the_sensors_output(digits_bundle, tmp_path):
    """Each frame's JSON line names the class of the output tensor that came with that frame (not a CPU model's
    answer on the stand-in's flat grey pictures); the start-up note says which exam applied and which cannot."""
    bundle = sensor_bundle(digits_bundle, tmp_path / "bundle")
    answers = golden_answers(bundle)
    labels = json.loads((bundle / MANIFEST).read_text())["labels"]
    r = cli("run", bundle, "--source", "imx500", "--json", "--max-frames", "24", "--top-k", "2",
            env=camera_env(tmp_path, answers), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    frames, summary = lines[:-1], lines[-1]["summary"]
    assert len(frames) == 24
    for rec in frames:   # a live source may drop frames; the index says which tensor the sensor gave
        row = answers[rec["frame"] % len(answers)]
        assert rec["label"] == labels[int(row.argmax())], rec
        assert rec["confidence"] == pytest.approx(float(row.max()), abs=1e-5)
        assert len(rec["top"]) == 2
    assert len({rec["label"] for rec in frames}) >= 5           # the sensor's answers, not one answer on grey
    assert summary["artifact"] == "imx500" and summary["source"] == f"imx500:{bundle / 'imx500' / 'network.rpk'}"
    assert summary["self_test"]["passed"] is None and "sensor" in summary["self_test"]["skipped"]
    assert "cannot take the bundle's exam" in r.stderr and "15/16 held-out photos" in r.stderr
    calls = camera_calls(tmp_path)
    assert calls[:4] == [["IMX500", str(bundle / "imx500" / "network.rpk")], ["Picamera2", 0], ["progress"],
                         ["start", "RGB888", 30.0, 12, False]]
    assert calls[-2:] == [["stop"], ["close"]]


@pytest.mark.parametrize("case", ["no imx500 block", "no network.rpk", "no picamera2", "--shadow"])
def test_what_the_camera_needs_is_one_line_before_anything_opens(digits_bundle, tmp_path, case):
    bundle = sensor_bundle(digits_bundle, tmp_path / "bundle", block=case != "no imx500 block",
                           rpk=case != "no network.rpk")
    extra = ("--shadow", "10") if case == "--shadow" else ()
    r = cli("run", bundle, "--source", "imx500", "--json", "--max-frames", "2", *extra,
            env=camera_env(tmp_path, golden_answers(bundle), standin=case != "no picamera2"), timeout=120)
    needle = {"no imx500 block": "edgecls export RUN --target imx500", "no network.rpk": "imx500-package -i",
              "no picamera2": "sudo apt install python3-picamera2 imx500-all",
              "--shadow": "--shadow cannot be used with --source imx500"}[case]
    one_line_error(r, needle)
    assert r.stdout == "" and camera_calls(tmp_path) == []       # the camera was never opened


def test_imx500_needs_its_network_file_outside_run(tmp_path):
    """`collect` (and any other user of the sources) must name the .rpk: only `run` knows the bundle's."""
    r = cli("collect", tmp_path / "data", "--source", "imx500", "--label", "a", "--count", "1", timeout=60)
    one_line_error(r, "imx500:PATH.rpk")


def test_doctor_names_the_ai_camera_and_what_it_still_needs(tmp_path):
    """`edgecls doctor` with picamera2 reporting an AI Camera: the camera list names it, and its own row says what
    `run --source imx500` still lacks (imx500-package, from imx500-tools) until it is there; another camera gets
    no such row."""
    def doctor(extra_path: str = "", cameras: list | None = None) -> dict:
        env = {"PYTHONPATH": str(STANDINS), "PATH": os.pathsep.join(filter(None, [extra_path, "/usr/bin", "/bin"]))}
        if cameras is not None:
            env["STANDIN_CAMERAS"] = json.dumps(cameras)
        r = cli("doctor", "--json", env=env, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return {c["name"]: c for c in json.loads(r.stdout)["checks"]}

    checks = doctor()
    assert checks["picamera2"]["status"] == "ok" and "picam:0 imx500 (AI Camera)" in checks["picamera2"]["detail"]
    ai = checks["ai-camera"]
    assert ai["status"] == "warn" and "missing: imx500-package" in ai["detail"], ai
    assert "apt install imx500-all imx500-tools" in ai["fix"]

    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "imx500-package").write_text("#!/bin/sh\nexit 0\n")
    (tools / "imx500-package").chmod(0o755)
    ai = doctor(str(tools))["ai-camera"]
    assert ai["status"] == "ok" and "edgecls run BUNDLE --source imx500" in ai["detail"], ai

    checks = doctor(str(tools), cameras=[{"Model": "imx708", "Num": 0}])
    assert "ai-camera" not in checks and "picam:0 imx708" in checks["picamera2"]["detail"]
    assert "AI Camera" not in checks["picamera2"]["detail"]
