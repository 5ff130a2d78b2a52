"""Issue 27, items 3, 10 and 4 (the reply): who may talk to edgecls's HTTP servers, and what the page answers
when the disk fails.

Real parts: the real `edgecls run`/`edgecls ui` in subprocesses (through test_device_run's wrapper, which fails
if TensorFlow loads) on the committed digits bundle, real HTTP on 127.0.0.1 (a server bound to 0.0.0.0 is asked
through 127.0.0.1 — the rule is the bind's, not the path's — never another machine), a real tmpfs for a full and
then read-only disk.
"""
from __future__ import annotations

import errno
import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgecls.device.data.photos import save_photo
from edgecls.httpserve import BoundedHTTPServer

from test_device_events import BUNDLE, free_port, video_frame
from test_device_labelling import held_out, video  # noqa: F401  (module fixtures: the photos, a 30-frame video)
from test_device_run import ENV, WRAPPER, one_line_error
from test_reliability_device import tmpfs

TOKEN_LINK = re.compile(r"\?token=([A-Za-z0-9._~-]+)")
LAN_NAME = "mypi.lan"   # a Host header a phone on the LAN would send (not a loopback name)
LAN_IP = "192.168.1.50"  # …or an address, as in the repro (curl http://HOST:8090/api/discard)


class Served:
    """A real `edgecls` serving in a subprocess; its stderr collected line by line while it runs."""

    def __init__(self, *args, env: dict | None = None):
        env = {**{k: v for k, v in ENV.items() if k != "EDGECLS_TOKEN"}, **(env or {})}   # made, unless given
        self.proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *map(str, args)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert self.proc.poll() is None and time.monotonic() < deadline, f"no {text!r}:\n{self.stderr[-3000:]}"
            time.sleep(0.05)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()   # never leave a server behind
            self.proc.wait()
        self._reader.join(timeout=10)
        return self.stderr   # (the caller asserts on it: an assert here would hide the test's own failure)


def ask(port: int, path: str, method: str = "GET", headers: dict | None = None, body=None, host: str | None = None):
    """(status, headers, body) of one request to 127.0.0.1:port; `host` sets the Host header's name. A 200 on
    /stream never ends: its body is not read."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    hdrs = {"Host": f"{host or '127.0.0.1'}:{port}", **(headers or {})}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
        body = json.dumps(body).encode()
    try:
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        data = b"" if r.status == 200 and path.startswith("/stream") else r.read()
        return r.status, r.headers, data
    finally:
        c.close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def kept_photos(keep: Path, held_out, n: int) -> list[Path]:  # noqa: F811
    keep.mkdir(parents=True, exist_ok=True)
    return [save_photo(keep, video_frame(p), {"by": "keep", "model": {"label": "0", "confidence": 0.5}})
            for p in held_out[:n]]


# --- item 3: a bind beyond loopback needs the token, on the page, the stream and /metrics ----------------------

def test_a_lan_bind_answers_only_with_the_token(video, held_out, tmp_path):  # noqa: F811
    keep, data = tmp_path / "keep", tmp_path / "data"
    photo = kept_photos(keep, held_out, 1)[0]
    ui, stream, metrics = free_port(), free_port(), free_port()
    s = Served("run", BUNDLE, video, "--loop", "--realtime", "--headless", "--host", "0.0.0.0", "--ui", ui,
               "--stream", stream, "--metrics", metrics, "--keep", keep, "--data", data)
    try:
        s.wait_for("web page on")   # every server is bound (metrics, stream, then the page)
        # Without the token (from a LAN name, or even from 127.0.0.1), with a wrong one: 401, nothing done.
        refused = [(ui, "/api/discard", "POST", {"name": photo.name}), (ui, "/api/status", "GET", None),
                   (ui, "/", "GET", None), (stream, "/frame.jpg", "GET", None), (stream, "/stream", "GET", None),
                   (metrics, "/metrics", "GET", None)]
        for port, path, method, body in refused:
            for host, headers in ((LAN_IP, {}), (LAN_NAME, {}), ("127.0.0.1", {}), (LAN_NAME, bearer("x" * 32)),
                                  (LAN_NAME, {"Cookie": "edgecls_token=nope"})):
                code, _, reply = ask(port, path, method, headers, body, host=host)
                assert code == 401 and b"token=" not in reply.replace(b"?token=", b""), (port, path, host, code)
        assert photo.is_file()
        s.wait_for("protected by that token")
        token = TOKEN_LINK.search(s.stderr).group(1)
        link = next(line for line in s.lines if "?token=" in line)
        assert f":{ui}/?token={token} " in link   # the link opens the page
        code, _, reply = ask(ui, "/", headers=bearer(token[:-1] + chr(ord(token[-1]) ^ 1)), host=LAN_NAME)
        assert code == 401 and token.encode() not in reply   # one character off is as wrong as any
        # Authorization: Bearer (what Prometheus sends) on every server
        code, _, text = ask(metrics, "/metrics", headers=bearer(token), host=LAN_NAME)
        assert code == 200 and b"edgecls_frames_total" in text
        code, hdrs, jpeg = ask(stream, "/frame.jpg", headers=bearer(token), host=LAN_NAME)
        assert code == 200 and hdrs["Content-Type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
        assert ask(stream, "/stream", headers=bearer(token), host=LAN_NAME)[0] == 200
        # ?token= (the phone's link): the page, and an HttpOnly SameSite=Strict cookie for its own requests
        code, hdrs, page = ask(ui, f"/?token={token}", host=LAN_NAME)
        cookie = hdrs["Set-Cookie"]
        assert code == 200 and b"app.js" in page
        assert cookie.startswith(f"edgecls_token={token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        jar = {"Cookie": cookie.split(";")[0]}
        assert ask(ui, "/api/status", headers=jar, host=LAN_NAME)[0] == 200
        assert ask(stream, "/frame.jpg", headers=jar, host=LAN_NAME)[0] == 200   # a cookie is per host, any port
        code, _, out = ask(ui, "/api/discard", "POST", jar, {"name": photo.name}, host=LAN_NAME)
        assert code == 200 and json.loads(out) == {"discarded": photo.name} and not photo.exists()
    finally:
        err = s.stop()
    assert "TF_LOADED=False" in err and err.count(token) == 1, err   # printed once, in the link line only
    protected = next(line for line in err.splitlines() if "protected by that token" in line)
    assert all(f"(:{p})" in protected for p in (ui, stream, metrics)), protected
    assert "Traceback" not in err


def test_the_token_from_the_environment_is_used_and_never_printed(tmp_path):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    port, token = free_port(), "a-fixed-token-from-the-env_123"
    s = Served("ui", tmp_path / "data", "--host", "0.0.0.0", "--port", port, env={"EDGECLS_TOKEN": token})
    try:
        s.wait_for("web page on")
        assert ask(port, "/api/status", host=LAN_NAME)[0] == 401
        s.wait_for("protected by that token")
        assert ask(port, "/api/status", headers=bearer(token), host=LAN_NAME)[0] == 200
        assert ask(port, f"/api/status?token={token}", host=LAN_NAME)[0] == 200
    finally:
        err = s.stop()
    assert "TF_LOADED=False" in err and token not in err and "?token=<EDGECLS_TOKEN>" in err, err
    for bad in ("", "short", "has spaces in it and is long"):   # a guessable or unsendable token binds nothing
        p = subprocess.run([sys.executable, "-c", WRAPPER, "ui", str(tmp_path / "data"), "--host", "0.0.0.0",
                            "--port", str(port)], capture_output=True, text=True, timeout=60,
                           env={**ENV, "EDGECLS_TOKEN": bad})
        one_line_error(p, "EDGECLS_TOKEN must be")


# --- item 10: on a loopback bind, a foreign Host header is refused by every server ----------------------------

def test_a_loopback_bind_refuses_a_foreign_host_on_page_stream_and_metrics(video):  # noqa: F811
    ui, stream, metrics = free_port(), free_port(), free_port()
    s = Served("run", BUNDLE, video, "--loop", "--realtime", "--headless", "--ui", ui, "--stream", stream,
               "--metrics", metrics)
    try:
        s.wait_for("web page on")
        for port, path in ((stream, "/frame.jpg"), (stream, "/stream"), (stream, "/status.json"),
                           (metrics, "/metrics"), (ui, "/api/status"), (ui, "/")):
            for host in ("evil.example", LAN_NAME, "127.0.0.1.evil.example"):   # a DNS-rebinding page's names
                code, _, body = ask(port, path, host=host)
                assert code == 403 and body == b"unexpected Host header\n", (port, path, host, code)
            for host in ("127.0.0.1", "localhost", "[::1]"):   # no token needed on loopback
                assert ask(port, path, host=host)[0] == 200, (port, path, host)
    finally:
        err = s.stop()
    assert "TF_LOADED=False" in err and "token" not in err and "Traceback" not in err, err   # nothing new said


def test_every_server_takes_the_one_access_rule():
    from http.server import BaseHTTPRequestHandler
    with pytest.raises(TypeError, match="GuardedHandler"):
        BoundedHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)


# --- item 4 (the reply): the page answers a full or read-only disk with a reason ------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 256 KiB tmpfs mounted for the test (tests run as root; under CI a missing mount fails)."""
    with tmpfs(tmp_path / "disk", "size=256k") as disk:
        yield disk


def fill(disk: Path) -> Path:
    """Write a filler file until the disk says it is full (ENOSPC)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def test_the_page_replies_with_a_reason_on_a_full_then_read_only_disk(held_out, small_tmpfs):  # noqa: F811
    keep, data = small_tmpfs / "keep", small_tmpfs / "data"
    (data / "3").mkdir(parents=True)
    photos = kept_photos(keep, held_out, 2)
    port = free_port()
    s = Served("ui", data, "--keep", keep, "--port", port)
    try:
        s.wait_for("web page on")
        filler = fill(small_tmpfs)
        code, hdrs, out = ask(port, "/api/label", "POST", body={"name": photos[0].name, "label": "3"})
        assert code == 507 and hdrs["Content-Type"] == "application/json", (code, out)
        assert "full" in json.loads(out)["error"]
        filler.unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
        for path, body in (("/api/discard", {"name": photos[1].name}), ("/api/label", {"name": photos[1].name,
                                                                                      "label": "3"})):
            code, _, out = ask(port, path, "POST", body=body)
            assert code == 403 and "read-only" in json.loads(out)["error"].lower(), (path, code, out)
        assert ask(port, "/api/status")[0] == 200   # and the page goes on
        assert all(p.is_file() and p.with_suffix(".json").is_file() for p in photos)   # nothing lost
        assert not list((data / "3").glob("*.jpg"))
    finally:
        err = s.stop()
    warnings = [line for line in err.splitlines() if line.startswith("edgecls: warning:")]
    assert "TF_LOADED=False" in err and len(warnings) == 3 and "Traceback" not in err, err
