"""`edgecls run DEVICE_DIR/current --updates URL`: the canary on live frames, the swap between two frames, going
back by itself, the MQTT notify path (a real Mosquitto) — with a real nginx serving the repository."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from fleet_fixtures import Fleet, fleet, keys, tree, variant, web  # noqa: F401  (fixtures)
from test_device_events import broker  # noqa: F401  (a real Mosquitto for the notify test)
from webserver import free_port


# ---------------------------------------------------------------- live: canary and hot swap in `edgecls run`

def _edit_final_layer(src: Path, dest: Path, edit, keys=("tflite-int8",)) -> Path:
    """A copy of bundle `src` whose TFLite models `keys` have their final dense layer changed by
    `edit(weights, bias, per-channel quantization)`, with their hashes and their exam answers made again — a bundle
    a key holder re-published: it loads, is signed and passes its own exam, and answers otherwise."""
    from edgecls.bundle import load_bundle
    from edgecls.device.model.runtime import load_model
    from edgecls.fsutil import sha256_file

    shutil.copytree(src, dest)
    meta = json.loads((dest / "edgecls.json").read_text())
    for key in keys:
        art = meta["artifacts"][key]
        _edit_tflite(dest / art["file"], edit)
        art["sha256"], art["bytes"] = sha256_file(dest / art["file"]), (dest / art["file"]).stat().st_size
    (dest / "edgecls.json").write_text(json.dumps(meta, indent=2))
    bundle = load_bundle(dest)
    images = np.load(dest / meta["golden"]["images"]["file"])["array"]
    for key in keys:
        family, precision = key.split("-")
        out = load_model(bundle, family, precision).predict(images).astype(np.float32)
        entry = meta["golden"]["outputs"][key]
        buf = io.BytesIO()
        np.savez_compressed(buf, array=out)
        (dest / entry["file"]).write_bytes(buf.getvalue())
        entry["sha256"], entry["bytes"] = sha256_file(dest / entry["file"]), (dest / entry["file"]).stat().st_size
    meta["release_note"] = dest.name
    (dest / "edgecls.json").write_text(json.dumps(meta, indent=2))
    assert cli("verify", dest, "--format", "tflite").returncode == 0, "it must pass its own exam"
    return dest


def _edit_tflite(path: Path, edit) -> None:
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils as fu

    model = fu.read_model(str(path))
    sg = model.subgraphs[0]
    fc = [op for op in sg.operators
          if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.FULLY_CONNECTED][-1]
    w_t, b_t = sg.tensors[fc.inputs[1]], sg.tensors[fc.inputs[2]]
    dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}
    w = np.frombuffer(bytes(model.buffers[w_t.buffer].data), dtype[w_t.type]).reshape(w_t.shape).copy()
    b = np.frombuffer(bytes(model.buffers[b_t.buffer].data), dtype[b_t.type]).copy()
    edit(w, b, [t.quantization for t in (w_t, b_t) if t.quantization is not None and
                t.quantization.scale is not None and len(t.quantization.scale) == len(b) > 1])
    model.buffers[w_t.buffer].data = np.frombuffer(w.tobytes(), np.uint8)
    model.buffers[b_t.buffer].data = np.frombuffer(b.tobytes(), np.uint8)
    fu.write_model(model, str(path))


def _roll_classes(w, b, per_channel):   # int8 answers the next class where float answers one
    w[:] = np.roll(w, 1, axis=0)
    b[:] = np.roll(b, 1)
    for q in per_channel:                 # an int8 layer's per-class scales move with their rows
        q.scale = np.roll(np.asarray(q.scale), 1)
        if q.zeroPoint is not None and len(q.zeroPoint) == len(b):
            q.zeroPoint = np.roll(np.asarray(q.zeroPoint), 1)


def _one_class(w, b, per_channel):      # int8 answers class 0 for everything
    b[0] = 1e4 if b.dtype == np.float32 else 2 ** 30




@pytest.fixture(scope="module")
def video(digits_bundle, tmp_path_factory):
    """A lossless video of 40 digits photos the tiny run never saw, 96×96."""
    import cv2

    from conftest import DIGITS

    # Photos 100–103 of each class: the tiny run trains on at most 40 a class, so it never saw these.
    files = [f for i in range(100, 104) for d in sorted(p for p in DIGITS.iterdir() if p.is_dir()) for f in sorted(d.iterdir())[i:i + 1]]
    path = tmp_path_factory.mktemp("video") / "digits.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30, (96, 96))
    for f in files:
        w.write(cv2.resize(cv2.imread(str(f)), (96, 96), interpolation=cv2.INTER_AREA))
    w.release()
    return path


def _run_with_updates(fleet, video, until, *extra, seconds=240, interval="0.5", on_start=None):
    """`edgecls run DEV/current --updates URL` on the looping video until `until(record)` is true for a JSON
    line (then 60 more frames), or `seconds` pass; returns (frame indices, update records, summary, stderr)."""
    cmd = [sys.executable, "-m", "edgecls", "run", str(fleet.dev / "current"), "--source", str(video), "--loop",
           "--json", "--threads", "1", "--updates", fleet.url, "--update-interval", interval, "--canary-frames", "40",
           *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(p.stderr), daemon=True).start()
    frames, updates, lines, after, deadline, stopping = [], [], [], None, time.time() + seconds, False
    for line in p.stdout:       # read to the end, also after SIGINT: the summary is the last line
        rec = json.loads(line)
        lines.append(rec)
        if "frame" in rec and "event" not in rec:
            frames.append(rec["frame"])
            if on_start is not None and len(frames) == 100:
                on_start()
        if "update" in rec:
            updates.append(rec["update"])
        if after is None and until(rec):
            after = len(frames) + 60
        if not stopping and ((after is not None and len(frames) >= after) or time.time() > deadline):
            p.send_signal(signal.SIGINT)
            stopping = True
    p.wait(timeout=120)
    err = "".join(err)
    summary = next(r["summary"] for r in lines if "summary" in r)
    return frames, updates, summary, err


@pytest.mark.slow
def test_run_promotes_a_new_version_between_two_frames_without_dropping_one(fleet, digits_bundle, video, tmp_path):
    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    fleet.publish(variant(digits_bundle, tmp_path / "b2", release_note="v2"))
    frames, updates, summary, err = _run_with_updates(fleet, video, lambda r: "update" in r)
    assert [u["action"] for u in updates] == ["promoted"] and updates[0]["version"] == 2, err[-2000:]
    assert frames == list(range(frames[0], frames[0] + len(frames))), "a frame was dropped or classified twice"
    assert frames[0] < updates[0]["before_frame"] < frames[-1] - 50   # the swap happened mid-stream
    assert summary["updates"]["current"]["version"] == 2 and summary["updates"]["promoted"] == 1
    assert os.readlink(fleet.dev / "current") == "slots/b"


@pytest.mark.slow
@pytest.mark.parametrize("edit", [_roll_classes, _one_class], ids=["answers-unlike-its-float", "one-class"])
def test_the_canary_refuses_a_signed_bundle_whose_int8_answers_unlike_its_float(fleet, digits_bundle, video, tmp_path,
                                                                               edit):
    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    before = fleet.current()
    fleet.publish(_edit_final_layer(digits_bundle, tmp_path / "bad", edit))
    frames, updates, summary, err = _run_until_refused(fleet, video)
    assert updates == [] and summary["updates"]["refused"] >= 1, err[-2000:]
    assert "canary:" in summary["updates"]["last"]["reason"]
    assert fleet.current() == before and os.readlink(fleet.dev / "current") == "slots/a"
    state = json.loads(cli("status", fleet.dev, "--json").stdout)
    assert state["refused"]["2"].startswith("canary:")


def _run_until_refused(fleet, video, *extra):
    """Run until the device's state records the canary's refusal (or 4 minutes)."""
    def refused(_rec):
        try:
            return "2" in json.loads((fleet.dev / "state.json").read_text()).get("refused", {})
        except (OSError, ValueError):
            return False
    return _run_with_updates(fleet, video, refused, *extra)


def _device_on_v2(fleet, digits_bundle, tmp_path) -> None:
    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    fleet.publish(variant(digits_bundle, tmp_path / "b2", release_note="v2"))
    assert fleet.update()[1]["current"]["version"] == 2


def test_a_promoted_bundle_that_fails_its_start_up_exam_goes_back_by_itself(fleet, digits_bundle, video, tmp_path):
    _device_on_v2(fleet, digits_bundle, tmp_path)
    manifest = fleet.dev / "slots" / "b" / "edgecls.json"      # the slot's bundle damaged on the device
    meta = json.loads(manifest.read_text())
    meta["preprocessing"]["color_order"] = "BGR"
    manifest.write_text(json.dumps(meta))
    r = cli("run", fleet.dev / "current", "--source", video, "--max-frames", "5", "--json")
    assert r.returncode == 1 and "went back to version 1" in r.stderr, r.stderr[-1500:]
    assert os.readlink(fleet.dev / "current") == "slots/a"
    r = cli("run", fleet.dev / "current", "--source", video, "--max-frames", "5", "--json")
    assert r.returncode == 0, r.stderr[-1500:]
    state = json.loads(cli("status", fleet.dev, "--json").stdout)
    assert state["current"]["version"] == 1 and "start-up exam" in state["refused"]["2"]


def test_a_crash_loop_goes_back_to_the_previous_bundle(fleet, digits_bundle, video, tmp_path):
    from edgecls.fleet.live import MAX_UNCONFIRMED_STARTS

    _device_on_v2(fleet, digits_bundle, tmp_path)
    for _ in range(MAX_UNCONFIRMED_STARTS):     # starts that die before classifying a frame
        r = cli("run", fleet.dev / "current", "--source", tmp_path / "no-such-video.mp4")
        assert r.returncode == 2 and os.readlink(fleet.dev / "current") == "slots/b"
    r = cli("run", fleet.dev / "current", "--source", video, "--max-frames", "40", "--json")
    assert r.returncode == 0 and "crash loop" in r.stderr, r.stderr[-1500:]
    assert os.readlink(fleet.dev / "current") == "slots/a"
    assert json.loads(cli("status", fleet.dev, "--json").stdout)["current"]["version"] == 1


def test_runs_that_classify_confirm_the_bundle_so_restarts_never_go_back(fleet, digits_bundle, video, tmp_path):
    from edgecls.fleet.live import MAX_UNCONFIRMED_STARTS

    _device_on_v2(fleet, digits_bundle, tmp_path)
    for _ in range(MAX_UNCONFIRMED_STARTS + 2):     # plain runs, no --updates, each classifying the video
        r = cli("run", fleet.dev / "current", "--source", video, "--max-frames", "40", "--json")
        assert r.returncode == 0, r.stderr[-1500:]
    assert os.readlink(fleet.dev / "current") == "slots/b"
    assert json.loads(cli("status", fleet.dev, "--json").stdout)["current"]["confirmed"] is True


def test_the_device_side_updates_in_a_venv_without_tensorflow(fleet, digits_bundle, device_venv):
    fleet.publish(digits_bundle)
    p = subprocess.run([str(device_venv / "bin" / "edgecls"), "update", fleet.url, "--device-dir", str(fleet.dev),
                        "--root", str(fleet.repo / "metadata" / "1.root.json"), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and json.loads(p.stdout)["action"] == "installed", p.stderr[-2000:]
    assert fleet.current() == tree(digits_bundle)


@pytest.mark.slow
def test_a_notify_on_mqtt_wakes_the_poll_and_the_device_reports_its_version(fleet, digits_bundle, video, tmp_path,
                                                                             broker):
    import urllib.request

    from test_device_events import Subscriber

    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    v2 = variant(digits_bundle, tmp_path / "b2", release_note="v2")
    status = Subscriber(broker.port, "cam1/update")
    metrics_port = free_port()
    scraped = {}

    def publish_v2_with_notify():
        fleet.publish(v2, "--notify", f"mqtt://127.0.0.1:{broker.port}/edgecls/updates")

    def promoted(rec):
        if "update" in rec and not scraped:
            time.sleep(0.5)
            scraped["text"] = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        return "update" in rec

    t0 = time.monotonic()
    frames, updates, summary, err = _run_with_updates(
        fleet, video, promoted, "--mqtt", f"mqtt://127.0.0.1:{broker.port}/cam1", "--metrics", str(metrics_port),
        interval="3600", on_start=publish_v2_with_notify)
    assert [u["version"] for u in updates] == [2], err[-2000:]
    assert time.monotonic() - t0 < 120, "the notify should wake the poll long before its 3600 s interval"
    assert 'edgecls_bundle_info{bundle_id="' in scraped["text"] and 'version="2"' in scraped["text"]
    assert 'edgecls_updates_total{outcome="promoted"} 1.0' in scraped["text"]
    seen = status.wait_for(2)
    status.close()
    assert seen[0]["current"]["version"] == 1 and seen[-1]["current"]["version"] == 2, seen


@pytest.mark.slow
def test_the_canary_refuses_a_bundle_worse_on_the_photos_labelled_on_the_device(fleet, digits_bundle, video, tmp_path):
    """int8 and float both answer the next class: they agree with each other on live frames, nothing collapses,
    no floor is set — only the photos filed on this device (`--data`) show it worse than the running model."""
    from conftest import DIGITS

    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    before = fleet.current()
    fleet.publish(_edit_final_layer(digits_bundle, tmp_path / "worse", _roll_classes, ("tflite-int8", "tflite-float")))
    data = tmp_path / "data"
    for d in sorted(p for p in DIGITS.iterdir() if p.is_dir()):     # 3 unseen photos a class, as the page files them
        (data / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[110:113]:
            shutil.copy(f, data / d.name / f.name)
    frames, updates, summary, err = _run_until_refused(fleet, video, "--ui", str(free_port()), "--data", str(data))
    assert updates == [] and "labelled photos on this device" in summary["updates"]["last"]["reason"], err[-2000:]
    assert fleet.current() == before
