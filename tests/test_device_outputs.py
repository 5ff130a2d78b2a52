"""Outputs: the MJPEG HTTP stream fetched from localhost, annotated video files, JSON lines, console, overlay."""
from __future__ import annotations

import io
import json
import time
import urllib.request

import cv2
import numpy as np
import pytest

from edgecls.device.model.classifier import UNCERTAIN, Prediction
from edgecls.device.capture.frame import Frame
from edgecls.device.output.mjpeg import MjpegServer
from edgecls.device.output.outputs import (ConsoleOutput, JsonLinesOutput, Outputs, StreamOutput, VideoFileOutput,
                                    WindowOutput, opencv_window_available, parse_host_port)
from edgecls.device.output.overlay import draw_overlay
from edgecls.device.output.stats import LiveStats
from edgecls.errors import EdgeclsError


@pytest.fixture(scope="module")
def photo(shared) -> np.ndarray:
    path = sorted((shared / "data" / "sign_language_digits" / "5").glob("*.JPG"))[0]
    return cv2.resize(cv2.imread(str(path)), (320, 240))  # BGR, a size where the banner is readable


def _result(label="5", p=0.9):
    return Prediction(label, p, [(label, p), ("3", 1 - p)], 5, 12.5, time.monotonic())


def _frame(img, i=0, file=None):
    return Frame(img, "BGR", time.monotonic() - 0.01, i, file)


def test_overlay_draws_a_banner_and_leaves_the_frame_alone(photo):
    before = photo.copy()
    out = draw_overlay(photo, _result(), fps=29.7)
    assert np.array_equal(photo, before)
    assert out.shape == photo.shape
    banner, rest = np.abs(out.astype(int) - photo)[:40], np.abs(out.astype(int) - photo)[80:]
    assert banner.mean() > 10 and rest.max() == 0


def test_mjpeg_stream_serves_annotated_frames_on_localhost(photo):
    stats = LiveStats()
    out = Outputs([StreamOutput("127.0.0.1", 0, log=lambda m: None)])
    server: MjpegServer = out.outputs[0].server
    assert server.host == "127.0.0.1"
    try:
        for i in range(3):
            f = _frame(photo, i)
            r = _result()
            stats.update(f.t_capture, r.t_done, r.infer_ms)
            out.render(f, r, stats)
        with urllib.request.urlopen(server.url + "frame.jpg", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "image/jpeg"
            jpeg = cv2.imdecode(np.frombuffer(resp.read(), np.uint8), cv2.IMREAD_COLOR)
        assert jpeg.shape == photo.shape
        assert np.abs(jpeg[:40].astype(int) - photo[:40]).mean() > 10  # the banner is in the stream
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            assert b"/stream" in resp.read()
        # A real MJPEG client (OpenCV/FFmpeg, what VLC and browsers also speak) reads the stream live.
        cap = cv2.VideoCapture(server.url + "stream", cv2.CAP_FFMPEG)
        got = []
        for i in range(3, 6):
            out.render(_frame(photo, i), _result(), stats)
            ok, img = cap.read()
            if ok:
                got.append(img)
        cap.release()
        assert len(got) >= 2 and got[0].shape == photo.shape
    finally:
        out.close()


def test_stream_port_in_use_is_a_clear_error():
    first = MjpegServer("127.0.0.1", 0)
    try:
        with pytest.raises(EdgeclsError, match="cannot serve the MJPEG stream"):
            MjpegServer("127.0.0.1", first.port)
    finally:
        first.close()


def test_video_file_output_appears_complete_or_not_at_all(tmp_path, photo):
    dest = tmp_path / "annotated.mp4"
    out = Outputs([VideoFileOutput(dest, fps=10)])
    stats = LiveStats()
    for i in range(7):
        out.render(_frame(photo, i), _result(), stats)
    assert not dest.exists()                      # still being written under a temporary name
    out.close()
    cap = cv2.VideoCapture(str(dest))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 7 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 320
    assert [p.name for p in tmp_path.iterdir()] == ["annotated.mp4"]


def test_video_file_output_rejects_bad_paths(tmp_path):
    with pytest.raises(EdgeclsError, match="unsupported video type"):
        VideoFileOutput(tmp_path / "out.gif", 10)
    with pytest.raises(EdgeclsError, match="does not exist"):
        VideoFileOutput(tmp_path / "missing" / "out.mp4", 10)


def test_json_lines_name_the_file_or_frame_and_carry_topk_and_latency(photo):
    buf = io.StringIO()
    out = Outputs([JsonLinesOutput(buf)])
    stats = LiveStats()
    out.render(_frame(photo, 0, file="data/5/a.JPG"), _result(), stats)
    out.render(_frame(photo, 1), _result(UNCERTAIN, 0.3), stats)
    a, b = (json.loads(line) for line in buf.getvalue().splitlines())
    assert a["file"] == "data/5/a.JPG" and a["frame"] == 0 and a["label"] == "5"
    assert a["top"] == [{"label": "5", "p": 0.9}, {"label": "3", "p": 0.1}]
    assert 5 < a["latency_ms"] < 1000 and a["infer_ms"] == 12.5 and abs(a["timestamp"] - time.time()) < 5
    assert "file" not in b and b["frame"] == 1 and b["label"] == "uncertain"


def test_console_prints_every_file_frame_but_throttles_live_ones(photo):
    files, live = io.StringIO(), io.StringIO()
    out_files, out_live = ConsoleOutput(True, files), ConsoleOutput(False, live, interval_s=10)
    for i in range(5):
        out_files.render(_frame(photo, i, f"img{i}.jpg"), _result(), LiveStats(), None)
        out_live.render(_frame(photo, i), _result(), LiveStats(), None)
    assert len(files.getvalue().splitlines()) == 5 and "img4.jpg: 5 90.0%" in files.getvalue()
    assert len(live.getvalue().splitlines()) == 1


@pytest.mark.skipif(opencv_window_available(), reason="this OpenCV can open windows")
def test_window_without_gui_is_a_clear_error():
    with pytest.raises(EdgeclsError, match="--headless"):
        WindowOutput()


def test_host_port_parsing():
    assert parse_host_port("8080") == ("127.0.0.1", 8080)
    assert parse_host_port("0.0.0.0:9000") == ("0.0.0.0", 9000)
    with pytest.raises(EdgeclsError):
        parse_host_port("host:http")

