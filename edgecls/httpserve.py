"""A threading HTTP server with bounds, for every server this project runs (today: the MJPEG stream).

The standard library's ThreadingHTTPServer gives each connection a thread for as long as the client keeps it
open, without limit, and prints a traceback when a client goes away mid-reply. Here:
- at most `max_connections` at once; the next one gets a short 503 and is closed (threads and memory bounded);
- every socket operation times out after `timeout_s` (an idle or stalled client frees its slot);
- a client that resets or closes the connection is normal, not an error: nothing is printed.
"""
from __future__ import annotations

import sys
import threading
from http.server import ThreadingHTTPServer

MAX_CONNECTIONS = 32
TIMEOUT_S = 10.0
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n"
         b"Retry-After: 5\r\nConnection: close\r\n\r\ntoo many viewers; retry\n")

CLIENT_GONE = (ConnectionError, TimeoutError)  # reset, broken pipe, aborted, timed out


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, max_connections: int = MAX_CONNECTIONS, timeout_s: float = TIMEOUT_S,
                 log=None):
        self.max_connections, self.timeout_s = max_connections, timeout_s
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        super().__init__(address, handler)

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
