"""Who may talk to edgecls's HTTP servers: one rule for the web page, the MJPEG stream and /metrics.

- A loopback bind (127.0.0.1, ::1, localhost: the default) needs no token, but only answers a Host header that
  names the loopback (127.0.0.1, localhost, [::1], with any port): a DNS-rebinding page on another site
  (Host: evil.example, resolved to 127.0.0.1) gets 403 and cannot read frames, metrics or the page's API.
- Any other bind (0.0.0.0, a LAN address) answers only requests carrying the token: `Authorization: Bearer T`
  (what Prometheus' scrape config sends), `?token=T` in the URL (the link for a phone; the reply then sets an
  HttpOnly SameSite=Strict cookie, so the page's own requests carry it), or that cookie. Everything else: 401.
  The Host check is the token's job there (a rebinding page cannot know the token).

The token is EDGECLS_TOKEN's (never an option: argv is visible to every user of the machine) or, unset, made
once per process; `announce` prints it once, with a link, after the servers are up. It is compared in constant
time and never written anywhere else.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
import socket
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from edgecls.errors import EdgeclsError

TOKEN_ENV = "EDGECLS_TOKEN"
COOKIE = "edgecls_token"
COOKIE_MAX_AGE_S = 30 * 24 * 3600
# Sent in a URL, a header and a cookie unescaped: URL-safe characters only, and long enough not to be guessed.
TOKEN_FORM = re.compile(r"[A-Za-z0-9._~-]{16,256}")
LOOPBACK_NAMES = ("localhost",)
DEFAULT_BIND = "127.0.0.1"   # every server edgecls runs binds here unless its --host says otherwise

_lock = threading.Lock()
_token: str | None = None
_guarded: list[tuple[str, str, int, str]] = []   # (what, bind host, port, path) of each server that needs it
_announced = False


@dataclass(frozen=True)
class Refusal:
    code: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


UNAUTHORIZED = Refusal(401, b"unauthorized: open the link with ?token= that edgecls printed at start-up\n",
                       (("WWW-Authenticate", 'Bearer realm="edgecls"'),))
FOREIGN_HOST = Refusal(403, b"unexpected Host header\n")


def is_loopback(host: str) -> bool:
    """Whether an address or name (a bind address, or a Host header's name) is this machine's loopback."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a Host header without its port: 'a:80' → 'a', '[::1]:80' → '::1', '::1' → '::1'."""
    header = header.strip()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def process_token() -> str:
    """EDGECLS_TOKEN, or one made for this process (the same for every server it runs)."""
    global _token
    with _lock:
        if _token is None:
            given = os.environ.get(TOKEN_ENV)
            if given is not None and not TOKEN_FORM.fullmatch(given):
                raise EdgeclsError(f"{TOKEN_ENV} must be 16 to 256 characters of A-Z a-z 0-9 . _ ~ - "
                                   "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')")
            _token = given or secrets.token_urlsafe(24)
        return _token


class AccessRule:
    """The rule of one server, bound to `host`: `refusal(...)` is None for a request it answers."""

    def __init__(self, host: str, token: str | None):
        self.host, self.token = host, token

    @classmethod
    def for_bind(cls, host: str) -> "AccessRule":
        """Checked before the port is bound: a bad EDGECLS_TOKEN is one line and binds nothing."""
        return cls(host, None if is_loopback(host) else process_token())

    def register(self, what: str, port: int, path: str = "/") -> None:
        """A bound server that needs the token, for `announce`'s lines."""
        if self.token is not None:
            with _lock:
                _guarded.append((what, self.host, port, path))

    def refusal(self, headers, target: str) -> Refusal | None:
        if self.token is None:
            return None if is_loopback(host_name(headers.get("Host", ""))) else FOREIGN_HOST
        offered = [_bearer(headers.get("Authorization", "")), _query_token(target)]
        offered += _cookie_values(headers.get_all("Cookie") or [])
        return None if any(self._matches(t) for t in offered if t) else UNAUTHORIZED

    def cookie_for(self, target: str) -> str | None:
        """The Set-Cookie value for a request that came with a right ?token= (the phone's link)."""
        given = _query_token(target)
        if self.token is None or not given or not self._matches(given):
            return None
        return f"{COOKIE}={self.token}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Strict"

    def _matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode("utf-8", "replace"), self.token.encode())


def _bearer(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _query_token(target: str) -> str | None:
    values = parse_qs(urlsplit(target).query).get("token")
    return values[-1] if values else None


def _cookie_values(headers: list[str]) -> list[str]:
    out = []
    for header in headers:
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                out.append(value.strip().strip('"'))
    return out


def announce(log) -> None:
    """Once per process, after its servers are bound: the link with the token, and what it protects."""
    global _announced
    with _lock:
        if _announced or not _guarded:
            return
        _announced, guarded = True, list(_guarded)
    what, host, port, path = min(guarded, key=lambda g: _LINK_ORDER.get(g[0], 9))
    base = f"http://{_reachable_host(host)}:{port}{path}?token="
    if os.environ.get(TOKEN_ENV):
        log(f"edgecls: open {base}<{TOKEN_ENV}> on a phone (the token is {TOKEN_ENV}'s)")
    else:
        log(f"edgecls: open {base}{process_token()} on a phone (a new token each start; set {TOKEN_ENV} to "
            "keep one)")
    names = ", ".join(f"the {w} (:{p})" for w, _, p, _ in guarded)
    log(f"edgecls: protected by that token on {host}: {names}; send it as ?token=, the cookie that link sets, "
        "or Authorization: Bearer (anything else gets 401)")


_LINK_ORDER = {"web page": 0, "stream": 1, "metrics": 2}


def _reachable_host(bind_host: str) -> str:
    """The address a phone would use: the bind address, or for 0.0.0.0 this machine's address on its default
    route (a UDP socket's connect sends nothing), else its name."""
    if bind_host not in ("", "0.0.0.0", "::"):
        return f"[{bind_host}]" if ":" in bind_host else bind_host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))   # TEST-NET-1: only picks the route
            address = s.getsockname()[0]
        if address and address != "0.0.0.0":
            return address
    except OSError:
        pass
    return socket.gethostname()
