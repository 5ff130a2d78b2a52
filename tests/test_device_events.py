"""Issue 14: events (enter/leave with hysteresis and dwell) to MQTT, webhooks, GPIO pins and Prometheus.

Real parts: a real Mosquitto broker started here on 127.0.0.1, real HTTP servers, real videos written from the
held-out photos of the committed digits bundle (tests/data/digits96), gpiozero's own MockFactory for pins, and
the real `edgecls run` in a subprocess (through test_device_run's wrapper, which fails if TensorFlow loads).
"""
from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecls.bundle import load_bundle
from edgecls.device.sinks.events import EventTracker
from edgecls.device.model.runtime import load_model
from edgecls.preprocess import prepare

from conftest import ROOT, skip_or_fail
from test_device_run import ENV, WRAPPER, edgecls, json_lines, one_line_error

DIGITS96 = ROOT / "tests" / "data" / "digits96"
BUNDLE = DIGITS96 / "bundle"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
FPS = 10          # the test videos' frame rate: event times are frame index / 10
SIDE = 100        # the photos' own size: a lossless video holds their exact pixels
WALL = ("time", "monotonic")  # the only fields that differ between two runs of the same file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def video_frame(path: Path) -> np.ndarray:
    return cv2.resize(cv2.imread(str(path)), (SIDE, SIDE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def confident(shared) -> dict[str, list[Path]]:
    """Two classes and, for each, held-out photos the bundle itself gives that class with p ≥ 0.95 — computed
    here on the exact frames the videos hold, not written down."""
    b = load_bundle(BUNDLE)
    model = load_model(b, threads=1)
    by_class: dict[str, list[Path]] = {}
    for rel in (DIGITS96 / "test_images.txt").read_text().split():
        path = shared / "data" / "sign_language_digits" / rel
        label = rel.split("/")[0]
        probs = model.predict(prepare(video_frame(path), b.spec, image_order="BGR")[None])[0]
        if b.labels[int(probs.argmax())] == label and probs.max() >= 0.95:
            by_class.setdefault(label, []).append(path)
    pair = [lab for lab, photos in sorted(by_class.items()) if len(photos) >= 4][:2]
    assert len(pair) == 2, {k: len(v) for k, v in by_class.items()}
    return {lab: by_class[lab][:4] for lab in pair}


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), FPS, (SIDE, SIDE))  # lossless
    for f in frames:
        w.write(f)
    w.release()
    return path


def segments(confident, order: str, each: int) -> list[np.ndarray]:
    """`order` like "ABA": `each` frames of class A, then B, then A, cycling through that class's photos."""
    a, b = list(confident)
    frames = []
    for which in order:
        photos = confident[a if which == "A" else b]
        frames += [video_frame(photos[i % len(photos)]) for i in range(each)]
    return frames


class Broker:
    """A real Mosquitto on 127.0.0.1:port, stoppable and restartable on the same port."""

    def __init__(self, tmp: Path, settings: str = "allow_anonymous true\n"):
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        # `user`: a broker started as root keeps root (it would drop to "mosquitto", which cannot read tmp_path)
        self.conf.write_text(f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\n{settings}")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None, "mosquitto exited"
            time.sleep(0.05)
        raise AssertionError("mosquitto did not listen")

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def broker_available() -> None:
    """Skip without Mosquitto — except in CI, where a missing broker is a broken setup, not a reason to skip."""
    if not Path(MOSQUITTO).exists():
        skip_or_fail("mosquitto is not installed (apt install mosquitto; .ci/run installs it)")


@pytest.fixture
def broker(tmp_path):
    broker_available()
    b = Broker(tmp_path)
    yield b
    b.kill()


class Subscriber:
    """A paho subscriber that records TOPIC's messages in order and resubscribes after a reconnect."""

    def __init__(self, port: int, topic: str, ca: Path | None = None, auth: tuple[str, str] | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if ca:
            c.tls_set(ca_certs=str(ca))
        if auth:
            c.username_pw_set(*auth)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.ready.set()
        c.on_message = lambda cl, u, msg: self.messages.append(
            json.loads(msg.payload) if msg.payload.startswith(b"{") else msg.payload.decode())
        c.reconnect_delay_set(1, 2)
        c.connect_async("127.0.0.1", port)
        c.loop_start()
        self.client = c
        assert self.ready.wait(10), "subscriber did not connect"

    def wait_for(self, n: int, timeout: float = 15) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def events_of(stdout: str) -> tuple[list[dict], dict]:
    recs, summary = json_lines(stdout)
    return [r for r in recs if "event" in r], summary


def without_wall_clock(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in WALL} for e in events]


# --- the event model on its own ------------------------------------------------------------------------------

def test_hysteresis_and_dwell_turn_flicker_into_one_enter_and_one_leave():
    labels = ["a", "b"]
    t = EventTracker(labels, labels, on=0.8, off=0.6, min_dwell=0.25)
    # p(a) at 10 frames a second: held, then flicker around --on and single dips below --off, then gone
    seq = [0.9] * 4 + [0.7, 0.85, 0.5, 0.9, 0.79, 0.81, 0.5, 0.9] + [0.7] * 4 + [0.4, 0.3, 0.3, 0.3]
    got = []
    for i, p in enumerate(seq):
        got += [(i, kind, lab) for kind, lab, _, _ in t.update(np.array([p, 1 - p]), i / 10)]
    # enters once ≥ 0.8 has held 0.25 s (frame 3); the dips below 0.6 last one frame (< 0.25 s): no leave;
    # 0.7 for 0.4 s is below --on but not below --off: still in; below 0.6 from frame 16, it leaves at frame 19
    assert got == [(3, "enter", "a"), (19, "leave", "a")]
    assert t.inside == []
    # hysteresis alone (no dwell): flicker between the thresholds keeps it in
    t1 = EventTracker(labels, ["a"], on=0.8, off=0.6, min_dwell=0.0)
    flicker = [t1.update(np.array([p, 1 - p]), i / 10) for i, p in enumerate([0.9, 0.7, 0.85, 0.65, 0.95, 0.61])]
    assert [[(k, lab) for k, lab, _, _ in ev] for ev in flicker] == [[("enter", "a")], [], [], [], [], []]
    t2 = EventTracker(labels, ["a", "uncertain"], on=0.8, off=0.6, min_dwell=0.0)
    out = [t2.update(np.array([p, 1 - p]), i / 10) for i, p in enumerate([0.5, 0.5, 0.9, 0.9, 0.1])]
    assert [[(k, lab) for k, lab, _, _ in ev] for ev in out] == [
        [("enter", "uncertain")], [], [("leave", "uncertain"), ("enter", "a")], [],
        [("leave", "a"), ("enter", "uncertain")]]
    assert out[2][0][3] == pytest.approx(0.2)  # uncertain lasted 0.2 s


# --- MQTT -----------------------------------------------------------------------------------------------------

def expected_aba(confident, each: int, dwell_frames: int) -> list[tuple]:
    a, b = list(confident)
    return [("enter", a, dwell_frames), ("leave", a, each + dwell_frames), ("enter", b, each + dwell_frames),
            ("leave", b, 2 * each + dwell_frames), ("enter", a, 2 * each + dwell_frames)]


def test_mqtt_publishes_exactly_the_expected_events_in_order_and_every_run_the_same(broker, confident, tmp_path):
    video = write_video(tmp_path / "aba.mkv", segments(confident, "ABA", each=8))
    sub = Subscriber(broker.port, "edgecls/cam1")
    try:
        args = ("run", BUNDLE, video, "--json", "--mqtt", f"mqtt://127.0.0.1:{broker.port}/edgecls/cam1",
                "--mqtt-qos", "1", "--min-dwell", "0.2", "--on", "0.8", "--off", "0.6")
        p = edgecls(*args)
        assert p.returncode == 0, p.stderr
        events, summary = events_of(p.stdout)
        assert [(e["event"], e["label"], e["frame"]) for e in events] == expected_aba(confident, 8, 2)
        received = sub.wait_for(len(events))
        assert received == events  # the very same JSON, in order
        first, leave = events[0], events[1]
        assert first["source_time_s"] == 0.2 and leave["duration_s"] == pytest.approx(0.8)
        assert first["bundle"] == load_bundle(BUNDLE).meta["artifacts"]["tflite-int8"]["sha256"][:12]
        assert first["time"].endswith("+00:00") and first["confidence"] >= 0.8
        assert summary["event_outputs"]["mqtt"] == {"sent": 5, "dropped": 0, "reconnects": 0}
        again, _ = events_of(edgecls(*args).stdout)
        assert without_wall_clock(again) == without_wall_clock(events)
    finally:
        sub.close()


def make_tls_files(folder: Path) -> Path:
    """A private CA and a certificate for 127.0.0.1 signed by it (openssl, EC keys: fast)."""
    if not shutil.which("openssl"):
        if os.environ.get("CI"):
            pytest.fail("openssl is not installed (.ci/run installs it)")
        pytest.skip("openssl is not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=edgecls test CA"],
                ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
                ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]):
        (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        subprocess.run(["openssl", *cmd], cwd=folder, check=True, capture_output=True)
    return folder / "ca.pem"


def secret_file(path: Path, text: str) -> Path:
    """A secret as the docs say to keep it: a file only its owner can read."""
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_mqtts_with_a_private_ca_and_a_password(confident, tmp_path, monkeypatch):
    broker_available()
    ca = make_tls_files(tmp_path)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(tmp_path / "pw"), "cam", "p@ss:word"], check=True)
    broker = Broker(tmp_path, f"cafile {ca}\ncertfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}\n"
                              f"allow_anonymous false\npassword_file {tmp_path / 'pw'}\n")
    video = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    sub = Subscriber(broker.port, "secure/cam", ca=ca, auth=("cam", "p@ss:word"))
    try:
        # the user name in the URL (percent-encoded), the password never on the command line: here from the
        # environment, below from a file
        url = f"mqtts://c%61m@127.0.0.1:{broker.port}/secure/cam"
        monkeypatch.setitem(ENV, "EDGECLS_MQTT_PASSWORD", "p@ss:word")
        p = edgecls("run", BUNDLE, video, "--json", "--mqtt", url, "--mqtt-ca", ca, "--mqtt-qos", "1")
        assert p.returncode == 0, p.stderr
        events, summary = events_of(p.stdout)
        assert len(events) == 3 and sub.wait_for(3) == events
        assert summary["event_outputs"]["mqtt"]["sent"] == 3
        monkeypatch.delitem(ENV, "EDGECLS_MQTT_PASSWORD")
        wrong = edgecls("run", BUNDLE, video, "--headless", "--mqtt", url, "--mqtt-ca", ca,
                        "--mqtt-password-file", secret_file(tmp_path / "wrong", "p@ss:wort"))
        assert wrong.returncode == 0 and wrong.stderr.count("refused the connection: Not authorized") == 1
        assert "p@ss" not in wrong.stderr + p.stderr and "wort" not in wrong.stderr  # never print the password
        assert "edgecls: mqtt: 0 sent, 3 dropped" in wrong.stderr  # the console run's summary names the loss
        a, b = list(confident)
        assert f"edgecls: leave {a} (" in wrong.stderr and "at frame 4 after 0.4 s" in wrong.stderr
    finally:
        sub.close()
        broker.kill()


@pytest.mark.slow
def test_broker_killed_for_5s_mid_run_the_run_goes_on_reconnects_and_counts_what_it_dropped(broker, confident,
                                                                                          tmp_path):
    video = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    sub = Subscriber(broker.port, "cam")
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "run", str(BUNDLE), str(video), "--loop", "--json",
                             "--mqtt", f"mqtt://127.0.0.1:{broker.port}/cam", "--mqtt-qos", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lines: list[str] = []  # read as it comes: a full pipe would stall the loop, not the broker
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        assert len(sub.wait_for(4)) >= 4
        broker.kill()
        time.sleep(5)
        assert proc.poll() is None  # the camera loop did not stop with the broker
        before = len(sub.messages)
        broker.start()
        assert len(sub.wait_for(before + 4, timeout=40)) >= before + 4, "no events after the broker came back"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(10)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    assert proc.returncode == 0, err
    events, summary = events_of("".join(lines))
    mqtt = summary["event_outputs"]["mqtt"]
    assert mqtt["reconnects"] >= 1 and "MQTT reconnected" in err and "lost" in err
    assert mqtt["sent"] + mqtt["dropped"] == len(events)  # every event is accounted for: delivered or dropped
    assert mqtt["dropped"] > 0, (summary, err)
    assert summary["stopped_by"] == "SIGTERM"


def test_the_last_will_says_offline_when_the_device_vanishes(broker, confident, tmp_path):
    video = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    status = Subscriber(broker.port, "cam/status")
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(BUNDLE), str(video), "--loop", "--headless",
                             "--mqtt", f"mqtt://127.0.0.1:{broker.port}/cam"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    try:
        assert status.wait_for(1) == ["online"]
        proc.kill()  # no clean exit: the broker publishes the will
        proc.wait()
        assert status.wait_for(2) == ["online", "offline"]
    finally:
        if proc.poll() is None:
            proc.kill()
        status.close()


def test_a_dead_broker_drops_and_counts_instead_of_blocking(confident, tmp_path):
    video = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    p = edgecls("run", BUNDLE, video, "--loop", "--max-frames", "400", "--json", "--mqtt",
                f"mqtt://127.0.0.1:{port}/x", "--mqtt-state-interval", "0.01")
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t0 < 30
    events, summary = events_of(p.stdout)
    assert summary["frames"] == 400 and len(events) >= 50
    mqtt = summary["event_outputs"]["mqtt"]
    assert mqtt["sent"] == 0 and mqtt["dropped"] >= len(events)


# --- webhook --------------------------------------------------------------------------------------------------

class Hook(BaseHTTPRequestHandler):
    received: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()


@contextlib.contextmanager
def http_server(handler):
    """A real HTTP server on 127.0.0.1 (a free port) for the length of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


class FlakyHook(Hook):
    """Answers 503 to every other request: each event needs one retry."""

    def do_POST(self):
        if len(self.received) % 2 == 0:
            self.received.append(None)
            self.send_response(503)
            self.end_headers()
            return
        super().do_POST()


def test_webhook_retries_a_failed_post_with_backoff(confident, tmp_path):
    video = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    FlakyHook.received = []
    with http_server(FlakyHook) as port:
        p = edgecls("run", BUNDLE, video, "--json", "--webhook", f"http://127.0.0.1:{port}/")
    events, summary = events_of(p.stdout)
    assert [json.loads(r[1]) for r in FlakyHook.received if r] == events and len(events) == 3
    assert summary["event_outputs"]["webhook"] == {"sent": 3, "dropped": 0, "failed_attempts": 3}


def test_webhook_posts_each_event_signed_and_a_hanging_server_does_not_slow_the_loop(confident, tmp_path,
                                                                                    monkeypatch):
    video = write_video(tmp_path / "aba.mkv", segments(confident, "ABA", each=8))
    Hook.received = []
    monkeypatch.setitem(ENV, "EDGECLS_WEBHOOK_SECRET", "s3cret")  # (never on the command line)
    with http_server(Hook) as port:
        p = edgecls("run", BUNDLE, video, "--json", "--webhook", f"http://127.0.0.1:{port}/hook")
    assert p.returncode == 0, p.stderr
    events, summary = events_of(p.stdout)
    assert len(events) == 5 and summary["event_outputs"]["webhook"]["sent"] == 5
    assert [json.loads(body) for _, body in Hook.received] == events
    for headers, body in Hook.received:
        fields = dict(part.split("=", 1) for part in headers["X-Edgecls-Signature"].split(","))
        signed = f"{fields['t']}.{fields['id']}.".encode() + body  # the time and the id are signed with the body
        want = hmac.new(b"s3cret", signed, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(fields["v1"], want)
        assert abs(int(fields["t"]) - time.time()) < 120 and headers["X-Edgecls-Timestamp"] == fields["t"]
        assert headers["X-Edgecls-Event-Id"] == fields["id"]
        assert headers["Content-Type"] == "application/json"
    assert len({h["X-Edgecls-Event-Id"] for h, _ in Hook.received}) == 5  # one id per event

    # A server that accepts and never answers: the loop runs as fast as without a webhook.
    hang = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        hang.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(hang.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    long = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    base = ("run", BUNDLE, long, "--loop", "--max-frames", "600", "--json", "--threads", "1", "--events")
    try:
        plain = json_lines(edgecls(*base).stdout)[1]
        t0 = time.monotonic()
        p = edgecls(*base, "--webhook", f"http://127.0.0.1:{hang.getsockname()[1]}/x", "--webhook-timeout", "1")
        took = time.monotonic() - t0
    finally:
        stop.set()
        hang.close()
        for c in held:
            c.close()
    assert p.returncode == 0, p.stderr
    events, hung = events_of(p.stdout)
    assert held, "the hanging server was never reached"
    assert hung["fps"] >= 0.5 * plain["fps"], (hung["fps"], plain["fps"])  # generous: the ratio is benchmarked
    assert took < 20  # the exit flushes for a bounded time (about one timeout), then counts the rest as dropped
    wh = hung["event_outputs"]["webhook"]
    assert wh["sent"] == 0 and wh["dropped"] == len(events) > 0


# --- GPIO (gpiozero's MockFactory, in this process) -----------------------------------------------------------

@pytest.fixture
def mock_pins():
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    old = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = old


def run_in_process(capsys, *args) -> tuple[list[dict], dict]:
    from edgecls.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", *map(str, args)])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return events_of(out.out)


def pin_levels(factory, pin: int) -> list[bool]:
    levels = [s.state for s in factory.pin(pin).states]
    return [v for i, v in enumerate(levels) if i == 0 or v != levels[i - 1]]


def test_gpio_flicker_does_not_toggle_the_pin_and_pulse_mode_pulses_once_per_enter(mock_pins, confident, tmp_path,
                                                                                   capsys):
    a, b = list(confident)
    fa, fb = video_frame(confident[a][0]), video_frame(confident[b][0])
    # a held, then a flickering with b every other frame (a camera at the edge of seeing it), then b held
    video = write_video(tmp_path / "flicker.mkv", [fa] * 5 + [fa, fb] * 8 + [fb] * 6)
    base = (BUNDLE, video, "--json", "--gpio", f"{a}=17", "--classes", a)
    events, summary = run_in_process(capsys, *base)  # no dwell: every flicker is an event
    assert len(events) > 10 and pin_levels(mock_pins, 17)[1:].count(True) > 5
    mock_pins.reset()
    events, summary = run_in_process(capsys, *base, "--min-dwell", "0.25")
    assert [(e["event"], e["label"]) for e in events] == [("enter", a), ("leave", a)]
    assert pin_levels(mock_pins, 17) == [False, True, False]  # one HIGH while a was in, LOW and released after
    assert summary["event_outputs"]["gpio"]["pins"] == {a: None}
    mock_pins.reset()
    video = write_video(tmp_path / "aba.mkv", segments(confident, "ABA", each=10))
    events, summary = run_in_process(capsys, BUNDLE, video, "--json", "--gpio", f"{a}=GPIO27", "--gpio-pulse", "0.002")
    enters = [e for e in events if e["event"] == "enter" and e["label"] == a]
    assert len(enters) == 2 and pin_levels(mock_pins, 27).count(True) == 2


# --- Prometheus -----------------------------------------------------------------------------------------------

def test_metrics_endpoint_parses_as_prometheus_text(confident, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    video = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    port, dead = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "run", str(BUNDLE), str(video), "--loop", "--json",
                             "--metrics", str(port), "--mqtt", f"mqtt://127.0.0.1:{dead}/x"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        n = 0
        while n < 3:  # three events seen: the counters have something to say
            n += "event" in json.loads(proc.stdout.readline())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = [s for f in fams.values() for s in f.samples]
    value = lambda name, **labels: next(s.value for s in samples  # noqa: E731
                                        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
    assert fams["edgecls_frames"].type == "counter" and value("edgecls_frames_total") > 0
    assert fams["edgecls_inference_seconds"].type == "histogram"
    assert abs(value("edgecls_inference_seconds_count") - value("edgecls_frames_total")) <= 1  # (read mid-frame)
    assert value("edgecls_fps") > 0
    assert value("edgecls_events_total", event="enter") >= 1
    assert value("edgecls_output_messages_dropped_total", output="mqtt") >= 0
    assert value("edgecls_output_messages_sent_total", output="mqtt") == 0
    assert value("edgecls_reconnects_total", what="source") == 0 and "edgecls_dropped_frames" in fams
    assert proc.returncode == 0


# --- bad input: one line, exit 2, before the camera opens ---------------------------------------------------------

def test_bad_event_flags_are_one_line_errors_before_the_source_is_touched(tmp_path):
    camera = socket.create_server(("127.0.0.1", 0))  # a "network camera" that must never be connected to
    taken = socket.create_server(("127.0.0.1", 0))
    source = f"http://127.0.0.1:{camera.getsockname()[1]}/stream"
    cases = [
        (("--mqtt", "mqtt://:1883/t"), "bad --mqtt"),
        (("--mqtt", "mqtt://broker:99999/t"), "port"),
        (("--mqtt", "http://broker/t"), "bad --mqtt"),
        (("--mqtt", "mqtt://broker"), "no topic"),
        (("--mqtt", "mqtt://broker/a/+"), "subscribing"),
        (("--gpio", "11=17"), "unknown label '11'"),
        (("--gpio", "3"), "LABEL=PIN"),
        (("--gpio", "3=17", "--classes", "4"), "not among --classes"),
        (("--classes", "3,eleven"), "unknown label 'eleven'"),
        (("--on", "0.5", "--off", "0.5"), "must be below --on"),
        (("--on", "nan"), "between 0 and 1"),
        (("--metrics", str(taken.getsockname()[1])), "cannot serve --metrics"),
        (("--stream", str(taken.getsockname()[1])), "cannot serve the MJPEG stream"),
        (("--webhook", "ftp://x/y"), "bad --webhook"),
        (("--gpio-pulse", "1"), "needs --gpio"),
        (("--mqtt", "mqtt://broker/t", "--mqtt-qos", "3"), "--mqtt-qos must be"),
        (("--mqtt", "mqtt://broker/t", "--mqtt-state-interval", "nan"), "--mqtt-state-interval"),
    ]
    try:
        camera.settimeout(0)
        for flags, fragment in cases:
            one_line_error(edgecls("run", BUNDLE, source, "--json", *flags), fragment)
            with pytest.raises(BlockingIOError):  # nobody knocked: the source was never opened
                camera.accept()
    finally:
        camera.close()
        taken.close()


def test_the_event_libraries_load_only_when_their_flags_are_given(confident, tmp_path):
    probe = ("import sys, runpy; sys.argv = ['edgecls'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('edgecls', run_name='__main__')\n"
             "finally:\n    sys.stderr.write('LOADED=%s\\n' % sorted({m.split('.')[0] for m in sys.modules} & "
             "{'paho', 'gpiozero', 'prometheus_client'}))\n")
    video = write_video(tmp_path / "a.mkv", segments(confident, "A", each=3))
    for flags, loaded in (((), "[]"), (("--events",), "[]"), (("--metrics", "0"), "['prometheus_client']")):
        p = subprocess.run([sys.executable, "-c", probe, "run", str(BUNDLE), str(video), "--json", *flags],
                           capture_output=True, text=True, timeout=120, env=ENV)
        assert p.returncode == 0 and f"LOADED={loaded}" in p.stderr, p.stderr
