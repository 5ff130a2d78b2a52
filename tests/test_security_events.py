"""Issue 27 (items 2, 6, 11, 12, 13): webhooks and MQTT under hostile input — redirects, secrets off the command
line, signatures a receiver can check for freshness and replays, topics that are not filters, URLs checked first.

Real parts: HTTP servers on 127.0.0.1 (one that redirects to a second one), the receiver docs/device.md gives
(its code block is executed here, not copied), a real Mosquitto with a password file, and the real `edgecls run`
in a subprocess (test_device_run's wrapper) or, for the table of bad input, the real CLI entry point in-process.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from conftest import ROOT
from test_device_events import (BUNDLE, Broker, Subscriber, broker_available, confident, events_of,  # noqa: F401
                                http_server, secret_file, segments, write_video)
from test_device_run import ENV, WRAPPER, edgecls, one_line_error

SECRET_ENVS = ("EDGECLS_WEBHOOK_SECRET", "EDGECLS_MQTT_PASSWORD")


def docs_receiver():
    """The webhook check docs/device.md tells a receiver to run, executed from the page itself."""
    text = (ROOT / "docs" / "device.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def check_edgecls" in block)
    namespace: dict = {}
    exec(code, namespace)
    return namespace["check_edgecls"], namespace["seen"]


def recording_handler(answer):
    """A handler class with its own list: every request of any method as (method, path, headers, body), answered
    by `answer(handler, body)` (status, extra headers)."""

    class Handler(BaseHTTPRequestHandler):
        requests: list = []

        def log_message(self, *args):
            pass

        def handle_any(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, extra = answer(self, body)
            self.requests.append((self.command, self.path, self.headers, body, status))
            self.send_response(status)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = handle_any

    return Handler


# --- item 2: a redirect is never followed, and the events it swallowed are counted as dropped ----------------

def test_a_webhook_that_redirects_sends_nothing_elsewhere_and_counts_every_event_dropped(confident, tmp_path,
                                                                                        monkeypatch):
    video = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    monkeypatch.setitem(ENV, "EDGECLS_WEBHOOK_SECRET", "s3cret")
    elsewhere = recording_handler(lambda h, body: (204, {}))
    with http_server(elsewhere) as other_port:
        location = f"http://127.0.0.1:{other_port}/collect"
        redirecting = recording_handler(lambda h, body: (302, {"Location": location}))
        with http_server(redirecting) as port:
            p = edgecls("run", BUNDLE, video, "--json", "--webhook", f"http://127.0.0.1:{port}/hook",
                        "--webhook-timeout", "1")
    assert p.returncode == 0, p.stderr
    events, summary = events_of(p.stdout)
    assert len(events) == 3
    assert elsewhere.requests == []  # the other origin got nothing: no GET, no POST, no signature
    assert redirecting.requests and all(m == "POST" and json.loads(body) in events and "t=" in h["X-Edgecls-Signature"]
                                        for m, _, h, body, _ in redirecting.requests)
    wh = summary["event_outputs"]["webhook"]
    assert wh["sent"] == 0 and wh["dropped"] == 3 and wh["failed_attempts"] >= 1, wh  # not "sent 3"
    warnings = [line for line in p.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and location in warnings[0] and "302" in warnings[0], p.stderr


# --- item 11: the signature covers a timestamp and an event id; the documented receiver rejects replays ------

def test_the_documented_receiver_accepts_each_event_once_and_rejects_replays_stale_and_altered(confident, tmp_path):
    check, seen = docs_receiver()
    key = secrets.token_hex(16)
    verdicts: list[str] = []

    def judge(handler, body):
        verdict = check(handler.headers, body, key.encode())
        verdicts.append(verdict)
        return (401 if verdict == "bad" else 200), {}

    receiver = recording_handler(judge)
    video = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    with http_server(receiver) as port:
        url = f"http://127.0.0.1:{port}/hook"
        p = edgecls("run", BUNDLE, video, "--json", "--webhook", url,
                    "--webhook-secret-file", secret_file(tmp_path / "key", key))
        assert p.returncode == 0, p.stderr
        events, summary = events_of(p.stdout)
        assert verdicts == ["new"] * 3 and summary["event_outputs"]["webhook"]["sent"] == 3
        captured = [(dict(h.items()), body) for _, _, h, body, _ in receiver.requests]
        assert [json.loads(body) for _, body in captured] == events

        def post(headers, body) -> int:
            keep = {k: v for k, v in headers.items() if k.lower().startswith(("x-edgecls", "content-type"))}
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=keep), timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        headers, body = captured[0]
        fields = dict(part.split("=", 1) for part in headers["X-Edgecls-Signature"].split(","))
        assert fields["id"] == headers["X-Edgecls-Event-Id"] and fields["t"] == headers["X-Edgecls-Timestamp"]
        assert abs(int(fields["t"]) - time.time()) < 120
        post(headers, body)  # the same request again: a replay (or a retry) is not acted on twice
        assert verdicts[-1] == "seen"
        fresh_t = {**headers, "X-Edgecls-Signature": headers["X-Edgecls-Signature"].replace(
            f"t={fields['t']}", f"t={int(fields['t']) + 1}")}
        assert post(fresh_t, body) == 401  # the time is signed: it cannot be made fresh again
        assert post(headers, body.replace(b'"enter"', b'"leave"')) == 401  # nor the body altered
        old, new_id = int(time.time()) - 600, "0" * 32
        mac = hmac.new(key.encode(), f"{old}.{new_id}.".encode() + body, hashlib.sha256).hexdigest()
        stale = {**headers, "X-Edgecls-Signature": f"t={old},id={new_id},v1={mac}"}
        assert post(stale, body) == 401  # correctly signed, but 10 minutes old
        assert post({"Content-Type": "application/json"}, body) == 401  # unsigned
    assert verdicts.count("new") == 3 and len(seen) == 3


# --- item 6: secrets from the environment or a 0600 file, never in /proc/PID/cmdline ------------------------

@dataclass
class SecretSinks:
    password: str        # Mosquitto's, for the user "cam"
    key: str             # the webhook's signing secret
    video: Path          # a looped run of it sends events to both
    mqtt_url: str
    webhook_url: str
    subscriber: Subscriber   # on the broker's topic, as "cam"
    verdicts: list           # the receiver's verdict on each request ("new", "seen", "bad")

    def wait_until_used(self) -> None:
        """Both secrets in use: the broker let the run log in, the receiver verified its signature."""
        assert self.subscriber.wait_for(1, timeout=30), "no event reached the password-protected broker"
        deadline = time.monotonic() + 30
        while "new" not in self.verdicts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.verdicts and set(self.verdicts) == {"new"}, self.verdicts


@contextlib.contextmanager
def secret_sinks(confident, tmp_path):
    """A real Mosquitto that wants a password and a webhook receiver that checks signatures with the docs' code,
    each with a fresh random secret, and a video whose events reach both (also used by test_run_config)."""
    broker_available()
    password, key = "mq-" + secrets.token_hex(8), "wh-" + secrets.token_hex(8)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(tmp_path / "pw"), "cam", password], check=True)
    broker = Broker(tmp_path, f"allow_anonymous false\npassword_file {tmp_path / 'pw'}\n")
    check, _ = docs_receiver()
    verdicts: list[str] = []
    receiver = recording_handler(lambda h, body: (verdicts.append(check(h.headers, body, key.encode())) or 200, {}))
    video = write_video(tmp_path / "ab.mkv", segments(confident, "AB", each=4))
    sub = Subscriber(broker.port, "cam", auth=("cam", password))
    try:
        with http_server(receiver) as port:
            yield SecretSinks(password, key, video, f"mqtt://cam@127.0.0.1:{broker.port}/cam",
                              f"http://127.0.0.1:{port}/hook", sub, verdicts)
    finally:
        sub.close()
        broker.kill()


def test_a_running_device_has_no_secret_in_its_command_line(confident, tmp_path):
    proc = None
    with secret_sinks(confident, tmp_path) as s:
        password, key = s.password, s.key
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", WRAPPER, "run", str(BUNDLE), str(s.video), "--loop", "--json",
                 "--mqtt", s.mqtt_url, "--mqtt-password-file", str(secret_file(tmp_path / "mqtt-password", password)),
                 "--webhook", s.webhook_url],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**ENV, "EDGECLS_WEBHOOK_SECRET": key})
            s.wait_until_used()
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert b"--webhook" in cmdline and b"cam@127.0.0.1" in cmdline  # (the live process, read right)
            assert password.encode() not in cmdline and key.encode() not in cmdline
            assert os.stat(f"/proc/{proc.pid}/environ").st_mode & 0o077 == 0  # the environment: its owner's only
            proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=30)[1].decode()
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert password not in err and key not in err


# --- items 6, 12, 13: bad input is one line, exit 2, before the source is touched -----------------------------

def run_cli(capsys, *args) -> subprocess.CompletedProcess:
    """The real CLI entry point, in this process (fast: no interpreter start per case)."""
    from edgecls.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", *map(str, args)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, e.value.code, out.out, out.err)


def test_secrets_on_the_command_line_bad_topics_and_bad_urls_are_one_line_errors(tmp_path, capsys, monkeypatch):
    for name in SECRET_ENVS:
        monkeypatch.delenv(name, raising=False)
    camera = socket.create_server(("127.0.0.1", 0))  # a "network camera" that must never be connected to
    source = f"http://127.0.0.1:{camera.getsockname()[1]}/stream"
    hook, broker = "http://127.0.0.1:9/hook", "mqtt://cam@127.0.0.1:9"
    good = secret_file(tmp_path / "good", "hunter2")
    readable = secret_file(tmp_path / "readable", "hunter2")
    readable.chmod(0o644)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    cases = [  # (flags, extra environment, what the one line must say)
        (("--webhook", hook, "--webhook-secret", "hunter2"), {}, "EDGECLS_WEBHOOK_SECRET"),
        (("--mqtt", "mqtt://cam:hunter2@127.0.0.1/t"), {}, "EDGECLS_MQTT_PASSWORD"),
        (("--mqtt", "mqtt://cam:hunter2@127.0.0.1/t"), {}, "--mqtt-password-file"),
        (("--mqtt", f"{broker}/t", "--mqtt-password-file", readable), {}, f"chmod 600 {readable}"),
        (("--mqtt", f"{broker}/t", "--mqtt-password-file", tmp_path / "missing"), {}, "No such file"),
        (("--mqtt", "mqtt://127.0.0.1/t"), {"EDGECLS_MQTT_PASSWORD": "hunter2"}, "needs a user name"),
        (("--mqtt", f"{broker}/t", "--mqtt-password-file", good), {"EDGECLS_MQTT_PASSWORD": "hunter2"}, "not both"),
        (("--webhook", hook, "--webhook-secret-file", empty), {}, "empty"),
        (("--webhook", hook), {"EDGECLS_WEBHOOK_SECRET": ""}, "EDGECLS_WEBHOOK_SECRET is set but empty"),
        (("--mqtt-password-file", good), {}, "needs --mqtt"),
        (("--webhook-secret-file", good), {}, "needs --webhook"),
        (("--mqtt", f"{broker}/ec/#"), {}, "subscribing"),  # urlsplit alone took '#' for a fragment: "ec/"
        (("--mqtt", f"{broker}/ec/%23"), {}, "subscribing"),
        (("--mqtt", f"{broker}/ec/+/x"), {}, "subscribing"),
        (("--mqtt", f"{broker}/ec/"), {}, "empty level"),
        (("--mqtt", f"{broker}//ec"), {}, "empty level"),
        (("--mqtt", f"{broker}/a//b"), {}, "empty level"),
        (("--mqtt", f"{broker}/a%00b"), {}, "NUL"),
        (("--mqtt", f"{broker}/"), {}, "no topic"),
        (("--mqtt", f"{broker}/$SYS/x"), {}, "'$'"),
        (("--mqtt", "mqtt://127.0.0.1:0/t"), {}, "port"),
        (("--webhook", "http://127.0.0.1:8080/my hook"), {}, "percent-encode"),
        (("--webhook", "http://127.0.0.1:8080/a\tb"), {}, "not allowed in a URL"),
        (("--webhook", "http://127.0.0.1:8080/é"), {}, "not allowed in a URL"),
        (("--webhook", "http://127.0.0.1:0/"), {}, "port"),
        (("--webhook", "http://127.0.0.1:65536/"), {}, "port"),
        (("--webhook", "http:///hook"), {}, "expected http(s)://HOST"),
        (("--webhook", "https://cam:hunter2@127.0.0.1/hook"), {}, "no user or password"),
    ]
    try:
        camera.settimeout(0)
        for flags, env, fragment in cases:
            for name in SECRET_ENVS:
                monkeypatch.delenv(name, raising=False)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            p = run_cli(capsys, BUNDLE, source, "--json", "--no-verify", *flags)
            one_line_error(p, fragment)
            assert "hunter2" not in p.stderr, (flags, p.stderr)  # a secret is never echoed back
            with pytest.raises(BlockingIOError):  # nobody knocked: the source was never opened
                camera.accept()
    finally:
        camera.close()
