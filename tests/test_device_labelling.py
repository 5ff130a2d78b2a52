"""Issue 15, device side: `edgecls collect`, `run --keep`, and the web page's endpoints (`run --ui`, `edgecls ui`).

Real parts: videos written with cv2.VideoWriter from the held-out photos of the committed digits bundle
(tests/data/digits96, no training), the real `edgecls` in subprocesses (through test_device_run's wrapper, which
fails if TensorFlow loads), real signals, a real HTTP server answering real requests.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecls.device.data.photos import save_photo
from edgecls.device.data.webui import MAX_BODY, WebUi

from test_device_events import BUNDLE, DIGITS96, free_port, video_frame, write_video
from test_device_run import ENV, WRAPPER, edgecls, json_lines, one_line_error

LABELS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def held_out(shared) -> list[Path]:
    """Ten held-out photos of the committed bundle, one per class (the order of test_images.txt)."""
    by_class: dict[str, Path] = {}
    for rel in (DIGITS96 / "test_images.txt").read_text().split():
        by_class.setdefault(rel.split("/")[0], shared / "data" / "sign_language_digits" / rel)
    return [by_class[lab] for lab in sorted(by_class)]


@pytest.fixture(scope="module")
def video(held_out, tmp_path_factory) -> Path:
    """30 frames at 10 fps: each held-out photo for 3 frames."""
    frames = [video_frame(p) for p in held_out for _ in range(3)]
    return write_video(tmp_path_factory.mktemp("video") / "held_out.mkv", frames)


def photos_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def assert_whole(folder: Path) -> list[Path]:
    """Every photo decodes and has its sidecar, every sidecar has its photo, nothing else (no temporary file)."""
    names = sorted(p.name for p in folder.iterdir())
    jpgs = [n for n in names if n.endswith(".jpg")]
    assert names == sorted(jpgs + [n[:-4] + ".json" for n in jpgs]), names
    for n in jpgs:
        assert cv2.imread(str(folder / n)) is not None, n
        json.loads((folder / n).with_suffix(".json").read_text())
    return [folder / n for n in jpgs]


# --- collect -------------------------------------------------------------------------------------------------

def test_collect_from_a_video_writes_n_decodable_photos_with_sidecars(video, held_out, tmp_path):
    data = tmp_path / "data"
    p = edgecls("collect", data, "--source", video, "--label", "seven", "--every", "0.5", "--count", "4", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["summary"] == {"saved": 4, "folder": str(data / "seven"), "stopped_by": "count"}
    photos = assert_whole(data / "seven")
    assert len(photos) == 4
    sides = [json.loads(ph.with_suffix(".json").read_text()) for ph in photos]
    # one photo every 0.5 s of the video's own time (10 fps): frames 0, 5, 10, 15 — whole frames, full size
    assert sorted(s["frame"] for s in sides) == [0, 5, 10, 15]
    assert sorted(s["source_time_s"] for s in sides) == [0.0, 0.5, 1.0, 1.5]
    for s, ph in zip(sides, photos):
        assert s["label"] == "seven" and s["source"] == str(video) and s["by"] == "collect"
        assert (s["width"], s["height"]) == (100, 100) and s["camera"]["fps"] == 10.0
        assert s["time"].endswith("+00:00")
        assert cv2.imread(str(ph)).shape == (100, 100, 3)
    # the pixels are the video's frame (JPEG quality 95: close, not equal)
    by_frame = {s["frame"]: ph for s, ph in zip(sides, photos)}
    want = video_frame(held_out[5 // 3]).astype(int)
    assert np.abs(cv2.imread(str(by_frame[5])).astype(int) - want).mean() < 3.0


def test_training_reads_collected_photos_and_takes_their_sidecars_for_what_they_are(video, tmp_path):
    from edgecls.dataset import scan

    data = tmp_path / "data"
    for label in ("a", "b"):
        assert edgecls("collect", data, "--source", video, "--label", label, "--count", "3").returncode == 0
    (data / "a" / "notes.json").write_text("{}")  # a JSON file that is no photo's sidecar is still named
    s = scan(data, check=False)
    assert s.classes == ["a", "b"] and len(s.items) == 6
    assert [path for path, _ in s.skipped] == ["a/notes.json"]


def test_collect_refuses_bad_input_with_one_line_and_writes_nothing(video, tmp_path):
    data = tmp_path / "data"
    for label in ("../x", "a/b", "..", ".hidden", "a\\b"):
        one_line_error(edgecls("collect", data, "--source", video, "--label", label), "is not a class name")
    one_line_error(edgecls("collect", data, "--source", video, "--label", "a", "--count", "0"), "--count must be")
    one_line_error(edgecls("collect", data, "--source", video, "--label", "a", "--every", "-1"), "--every must be")
    assert not data.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(edgecls("collect", a_file, "--source", video, "--label", "a"), "is not a folder")
    one_line_error(edgecls("collect", a_file / "data", "--source", video, "--label", "a"), "cannot create it")
    one_line_error(edgecls("collect", data, "--source", tmp_path / "nope.mkv", "--label", "a"), "source not found")
    assert not data.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_collect_leaves_no_half_written_file(held_out, tmp_path, sig):
    # big frames (1920x1080: each photo takes a while to encode and write), looped for ever until the signal
    big = [cv2.resize(cv2.imread(str(p)), (1920, 1080)) for p in held_out[:3]]
    w = cv2.VideoWriter(str(tmp_path / "big.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (1920, 1080))
    for f in big:
        w.write(f)
    w.release()
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "collect", str(data), "--source", str(tmp_path / "big.avi"),
                             "--label", "a", "--loop"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    deadline = time.monotonic() + 60
    while len(list((data / "a").glob("*.jpg"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"(stopped: {sig.name})" in err
    photos = assert_whole(data / "a")
    assert len(photos) >= 5
    for ph in photos:
        assert cv2.imread(str(ph)).shape == (1080, 1920, 3)


# --- run --keep ----------------------------------------------------------------------------------------------

def test_keep_uncertain_stores_each_kept_frame_with_the_models_answer(video, tmp_path):
    keep = tmp_path / "keep"
    p = edgecls("run", BUNDLE, video, "--json", "--keep", keep, "--keep-policy", "uncertain", "--keep-below", "0.95",
                "--keep-rate", "1000")
    assert p.returncode == 0, p.stderr
    recs, summary = json_lines(p.stdout)
    uncertain = {r["frame"]: r for r in recs if r["confidence"] < 0.95}
    assert 0 < len(uncertain) < len(recs)  # a real choice: some frames are kept, some are not
    photos = assert_whole(keep)
    sides = {json.loads(ph.with_suffix(".json").read_text())["frame"]: json.loads(ph.with_suffix(".json").read_text())
             for ph in photos}
    assert summary["keep"]["kept"] + summary["keep"]["rate_limited"] + summary["keep"]["dropped"] == len(uncertain)
    assert len(sides) == summary["keep"]["kept"] >= 1 and set(sides) <= set(uncertain)
    for frame, s in sides.items():
        rec = uncertain[frame]
        assert s["model"]["label"] == rec["label"] and s["model"]["confidence"] == rec["confidence"]
        assert s["model"]["top"] == rec["top"] and s["model"]["artifact"] == "tflite-int8"
        assert s["policy"] == "uncertain" and (s["width"], s["height"]) == (100, 100)


def test_keep_rate_limits_and_random_samples(video, tmp_path):
    keep = tmp_path / "keep"
    p = edgecls("run", BUNDLE, video, "--json", "--keep", keep, "--keep-policy", "random", "--keep-chance", "1",
                "--keep-rate", "2")
    assert p.returncode == 0, p.stderr
    _, summary = json_lines(p.stdout)
    elapsed = summary["frames"] / summary["fps"]
    kept = summary["keep"]["kept"]
    assert 1 <= kept <= int(elapsed * 2) + 1 and kept + summary["keep"]["rate_limited"] == 30
    assert len(assert_whole(keep)) == kept


def test_keep_stops_at_the_disk_budget_with_one_warning_and_the_run_goes_on(video, tmp_path):
    keep = tmp_path / "keep"
    p = edgecls("run", BUNDLE, video, "--json", "--keep", keep, "--keep-below", "1", "--keep-rate", "1000",
                "--keep-max-mb", "0.02")
    assert p.returncode == 0, p.stderr
    recs, summary = json_lines(p.stdout)
    assert len(recs) == 30 and summary["stopped_by"] == "end of source"
    assert summary["keep"]["budget_reached"] is True and 1 <= summary["keep"]["kept"] < 30
    assert p.stderr.count("reached its --keep-max-mb budget") == 1
    assert sum(f.stat().st_size for f in keep.iterdir()) <= 20_000
    assert len(assert_whole(keep)) == summary["keep"]["kept"]
    # a second run into the full folder keeps nothing and says so once, before the first frame
    p2 = edgecls("run", BUNDLE, video, "--json", "--keep", keep, "--keep-below", "1", "--keep-max-mb", "0.02")
    assert p2.returncode == 0 and p2.stderr.count("reached its --keep-max-mb budget") == 1
    assert json_lines(p2.stdout)[1]["keep"]["kept"] == 0


def test_keep_and_ui_flags_refuse_bad_input(video, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for args, fragment in ((("--keep", tmp_path / "k", "--keep-policy", "novelty"), "--keep-policy must be one of"),
                           (("--keep", tmp_path / "k", "--keep-rate", "0"), "--keep-rate must be"),
                           (("--keep", tmp_path / "k", "--keep-max-mb", "-1"), "--keep-max-mb must be"),
                           (("--keep", tmp_path / "k", "--keep-below", "1.5"), "--keep-below must be"),
                           (("--keep-policy", "random",), "--keep-policy needs --keep DIR"),
                           (("--keep", a_file,), "is not a folder"),
                           (("--data", tmp_path / "d",), "--data needs --ui PORT")):
        one_line_error(edgecls("run", BUNDLE, video, "--json", *args), fragment)
    assert not (tmp_path / "k").exists() and not (tmp_path / "d").exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        one_line_error(edgecls("run", BUNDLE, video, "--json", "--ui", taken.getsockname()[1]), "Address already in use")


def test_realtime_plays_a_video_at_its_own_rate(video):
    t0 = time.monotonic()
    p = edgecls("run", BUNDLE, video, "--json", "--realtime")
    elapsed = time.monotonic() - t0
    recs, summary = json_lines(p.stdout)
    assert p.returncode == 0 and len(recs) == 30
    assert 9.0 <= summary["fps"] <= 10.5 and elapsed >= 2.9  # 30 frames at 10 fps: 2.9 s from first to last


# --- the web page's endpoints, on a real server --------------------------------------------------------------

@pytest.fixture
def label_ui(tmp_path, held_out):
    """`edgecls ui`'s server in this process: a keep folder with two kept frames, an empty DATA_DIR."""
    keep, data = tmp_path / "keep", tmp_path / "data"
    keep.mkdir()
    kept = [save_photo(keep, video_frame(p), {"by": "keep", "model": {"label": str(i), "confidence": 0.5}})
            for i, p in enumerate(held_out[:2])]
    ui = WebUi("127.0.0.1", 0, LABELS, data, keep, live=False, log=lambda m: None)
    yield ui, kept, keep, data
    ui.close()


def request(ui, method: str, path: str, body=None, headers=None) -> tuple[int, dict | bytes]:
    c = http.client.HTTPConnection("127.0.0.1", ui.server.port, timeout=10)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    c.request(method, path, body=data, headers=hdrs)
    r = c.getresponse()
    raw = r.read()
    c.close()
    return r.status, json.loads(raw) if r.getheader("Content-Type") == "application/json" else raw


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_ui_files_a_kept_frame_with_its_sidecar_and_discards_another(label_ui):
    ui, kept, keep, data = label_ui
    code, listing = request(ui, "GET", "/api/kept")
    assert code == 200 and sorted(p["name"] for p in listing["photos"]) == sorted(k.name for k in kept)
    code, img = request(ui, "GET", f"/api/kept/{kept[0].name}")
    assert code == 200 and img == kept[0].read_bytes()
    code, out = request(ui, "POST", "/api/label", {"name": kept[0].name, "label": "3"})
    assert code == 200 and out == {"moved_to": f"3/{kept[0].name}"}
    assert tree(data) == ["3", f"3/{kept[0].name}", f"3/{kept[0].stem}.json"]
    side = json.loads((data / "3" / f"{kept[0].stem}.json").read_text())
    assert side["label"] == "3" and side["model"] == {"label": "0", "confidence": 0.5} and side["labelled_by"] == "ui"
    assert request(ui, "POST", "/api/discard", {"name": kept[1].name}) == (200, {"discarded": kept[1].name})
    assert tree(keep) == []
    # filed twice: the photo is gone from the keep folder, nothing else moves
    assert request(ui, "POST", "/api/label", {"name": kept[0].name, "label": "3"})[0] == 404
    status = request(ui, "GET", "/api/status")[1]
    assert status["mode"] == "label" and status["data"]["3"] == 1 and status["can_label"] and not status["can_capture"]


def test_ui_refuses_traversal_symlinks_unknown_labels_and_oversized_bodies(label_ui, tmp_path):
    ui, kept, keep, data = label_ui
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(kept[0].read_bytes())
    (keep / "evil.jpg").symlink_to(outside)
    (keep / "evil.json").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    data.mkdir(exist_ok=True)
    (data / "7").symlink_to(tmp_path / "elsewhere")     # a class folder that leads out of DATA_DIR
    before_keep, before_data = tree(keep), tree(data)
    name = kept[0].name
    for path in ("/api/kept/../../outside.jpg", "/api/kept/..%2F..%2Foutside.jpg", "/api/kept/evil.jpg",
                 "/api/kept/%2Fetc%2Fpasswd", "/api/kept/.hidden.jpg"):
        assert request(ui, "GET", path)[0] in (400, 404), path
    for body in ({"name": "../outside.jpg", "label": "1"}, {"name": str(outside), "label": "1"},
                 {"name": "evil.jpg", "label": "1"}, {"name": f"sub/{name}", "label": "1"},
                 {"name": name, "label": "../1"}, {"name": name, "label": "nine"}, {"name": name, "label": "7"},
                 {"name": name, "label": ["1"]}, {"name": name}):
        code, out = request(ui, "POST", "/api/label", body)
        assert code == 400 and "error" in out, (body, code, out)
    assert request(ui, "POST", "/api/discard", {"name": "../outside.jpg"})[0] == 400
    assert request(ui, "POST", "/api/label", b"x" * (MAX_BODY + 1))[0] == 413
    assert request(ui, "POST", "/api/label", b"{", )[0] == 400
    assert request(ui, "POST", "/api/label", {"name": name, "label": "1"}, {"Content-Type": "text/plain"})[0] == 415
    assert request(ui, "GET", "/api/label")[0] == 405
    assert request(ui, "GET", "/api/status", headers={"Host": "attacker.example"})[0] == 403
    assert request(ui, "POST", "/api/capture", {"label": "1"})[0] == 409  # labelling only: no live frame
    # a huge declared body is refused unread, and the server still answers
    c = http.client.HTTPConnection("127.0.0.1", ui.server.port, timeout=10)
    c.putrequest("POST", "/api/label")
    c.putheader("Content-Type", "application/json")
    c.putheader("Content-Length", str(10 ** 9))
    c.endheaders()
    assert c.getresponse().status == 413
    c.close()
    assert tree(keep) == before_keep and tree(data) == before_data and outside.is_file()
    assert tree(tmp_path / "elsewhere") == []
    assert request(ui, "GET", "/api/status")[0] == 200


def test_edgecls_ui_needs_classes_and_binds_localhost(tmp_path):
    one_line_error(edgecls("ui", tmp_path / "data"), "no classes")
    one_line_error(edgecls("ui", tmp_path / "data", "--labels", "a,../b"), "is not a class name")
    assert not (tmp_path / "data").exists()
    port = free_port()
    (tmp_path / "data" / "cat").mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "ui", str(tmp_path / "data"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/api/status")
                status = json.loads(c.getresponse().read())
                break
            except OSError:
                time.sleep(0.1)
        assert status["labels"] == ["cat"] and status["mode"] == "label"
        c.request("GET", "/")
        page = c.getresponse().read().decode()
        assert 'name="viewport"' in page and "http" not in page.replace("http-equiv", "")  # no CDN
        # bound to 127.0.0.1 only (not every interface): the kernel's own list of listening sockets
        assert listening_on(port) == {"0100007F"}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err, err


def listening_on(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, _, hexport = local.rpartition(":")
                if state == "0A" and int(hexport, 16) == port:
                    found.add(addr)
    return found
