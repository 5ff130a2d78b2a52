"""An MJPEG-over-HTTP server: watch the annotated frames of a headless device in any browser.

GET /            a page showing the stream
GET /stream      multipart/x-mixed-replace JPEG stream (what browsers, VLC and OpenCV read)
GET /frame.jpg   the newest frame as one JPEG
GET /status.json the status lines under the picture (`run --shadow`: live int8-vs-float agreement, drift)
`routes(handler, method, path) -> bool` may serve more (the web page, device/data/webui.py): asked first, for GET
and POST; False lets the stream's own paths answer.
Binds to 127.0.0.1 unless told otherwise: a camera feed should not reach the network by accident. Who may ask:
edgecls/httpauth.py's rule (loopback Host headers only; any other bind needs the token), applied by the server.
"""
from __future__ import annotations

import html
import json
import threading
from http.server import BaseHTTPRequestHandler

import cv2
import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.httpserve import CLIENT_GONE, MAX_CONNECTIONS, TIMEOUT_S, BoundedHTTPServer, GuardedHandler

BOUNDARY = b"edgeclsframe"
_PAGE = ("<!doctype html><title>edgecls</title><body style='margin:0;background:#000;color:#ddd'>"
         "<img src='/stream' style='max-width:100%'><pre id='status' style='margin:4px'>{status}</pre>"
         # The status lines change while the page is open: poll them (the picture streams on its own).
         "<script>setInterval(()=>fetch('/status.json').then(r=>r.json()).then(s=>{{"
         "document.getElementById('status').textContent=s.lines.join('\\n')}}).catch(()=>{{}}),1000)</script>"
         "</body>")


class MjpegServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 8080, quality: int = 80,
                 max_clients: int = MAX_CONNECTIONS, timeout_s: float = TIMEOUT_S, routes=None, what: str = "stream"):
        self.quality = quality
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._status: list[str] = []
        self._closed = False
        self.clients = 0
        server = self

        class Handler(GuardedHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                if routes and routes(self, "GET", path):
                    return
                if path == "/":
                    status = html.escape("\n".join(server.status))   # class names are data, not markup
                    self._send(200, "text/html; charset=utf-8", _PAGE.format(status=status).encode())
                elif path == "/status.json":
                    self._send(200, "application/json", json.dumps({"lines": server.status}).encode())
                elif path == "/frame.jpg":
                    jpeg = server.wait_frame(-1, timeout=5.0)[1]
                    if jpeg is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", jpeg)
                elif path == "/stream":
                    server.stream_to(self)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def do_POST(self):
                if not (routes and routes(self, "POST", self.path.split("?")[0])):
                    self._send(405, "text/plain", b"method not allowed\n")

            def _send(self, code, ctype, body):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        try:
            # Bounded: at most max_clients connections (503 past it), each timing out after timeout_s.
            self.httpd = BoundedHTTPServer((host, port), Handler, max_connections=max_clients, timeout_s=timeout_s,
                                           what=what)
        except OSError as e:
            raise EdgeclsError(f"cannot serve the MJPEG stream on {host}:{port}: {e.strerror or e}") from None
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mjpeg", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def publish(self, bgr: np.ndarray) -> None:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return
        with self._cond:
            self._jpeg, self._seq = buf.tobytes(), self._seq + 1
            self._cond.notify_all()

    @property
    def status(self) -> list[str]:
        return self._status

    def set_status(self, lines: list[str]) -> None:
        """Text shown under the picture on the page (replaced whole: readers see the old or the new list)."""
        self._status = list(lines)

    def wait_frame(self, after_seq: int, timeout: float) -> tuple[int, bytes | None]:
        """The newest JPEG with a sequence number above `after_seq` (waiting up to `timeout`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or (self._jpeg is not None and self._seq > after_seq), timeout)
            return self._seq, self._jpeg

    def stream_to(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        seq = 0
        with self._cond:
            self.clients += 1
        try:
            while not self._closed:
                new_seq, jpeg = self.wait_frame(seq, timeout=1.0)
                if jpeg is None or new_seq == seq:
                    continue
                seq = new_seq
                handler.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                    + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
        except CLIENT_GONE:
            pass  # the viewer went away, or stopped reading for timeout_s
        finally:
            with self._cond:
                self.clients -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
