"""A threading HTTP server with bounds and one access rule, for every server this project runs (the MJPEG
stream, the web page, /metrics).

The standard library's ThreadingHTTPServer gives each connection a thread for as long as the client keeps it
open, without limit, and prints a traceback when a client goes away mid-reply. Here:
- at most `max_connections` at once; the next one gets a short 503 and is closed (threads and memory bounded);
- every socket operation times out after `timeout_s` (an idle or stalled client frees its slot);
- a client that resets or closes the connection is normal, not an error: nothing is printed;
- every request passes edgecls/httpauth.py's rule (Host header on a loopback bind, the token on any other)
  before any handler sees it: handlers derive from GuardedHandler, which the server insists on.
"""
from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgecls.httpauth import AccessRule

MAX_CONNECTIONS = 32
TIMEOUT_S = 10.0
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n"
         b"Retry-After: 5\r\nConnection: close\r\n\r\ntoo many viewers; retry\n")

CLIENT_GONE = (ConnectionError, TimeoutError)  # reset, broken pipe, aborted, timed out


class GuardedHandler(BaseHTTPRequestHandler):
    """The base of every handler: requests the access rule refuses are answered here (401/403) and never reach
    do_GET/do_POST; a reply to a right ?token= sets the cookie. Quiet: the console is for results."""

    set_cookie: str | None = None

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        rule: AccessRule = self.server.access
        refusal = rule.refusal(self.headers, self.path)
        if refusal is None:
            self.set_cookie = rule.cookie_for(self.path)
            return True
        self.close_connection = True   # its body (if any) is not read
        self.send_response(refusal.code)
        for name, value in (("Content-Type", "text/plain"), ("Content-Length", str(len(refusal.body))),
                            ("Cache-Control", "no-store"), *refusal.headers):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(refusal.body)
        return False

    def end_headers(self) -> None:
        if self.set_cookie:
            self.send_header("Set-Cookie", self.set_cookie)
            self.set_cookie = None
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


class BoundedHTTPServer(ThreadingHTTPServer):
    """`what`/`path`: how `edgecls/httpauth.py: announce` names this server and links to it."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int = MAX_CONNECTIONS, timeout_s: float = TIMEOUT_S,
                 log=None, what: str = "server", path: str = "/"):
        if not issubclass(handler, GuardedHandler):
            raise TypeError("edgecls's HTTP handlers derive from edgecls.httpserve.GuardedHandler")
        self.access = AccessRule.for_bind(address[0])   # before binding: a bad EDGECLS_TOKEN binds nothing
        self.max_connections, self.timeout_s = max_connections, timeout_s
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        super().__init__(address, handler)
        self.access.register(what, self.server_address[1], path)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:  # answered from the accepting thread: keep it short and never wait long on this client
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            request.settimeout(self.timeout_s)
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, CLIENT_GONE):
            return
        self.log(f"edgecls: warning: HTTP request from {client_address[0]} failed: {type(exc).__name__}: {exc}")
