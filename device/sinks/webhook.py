"""Events to an HTTP endpoint: `--webhook URL` POSTs each event as JSON (Node-RED, Home Assistant, a server).

Every request carries `X-Edgecls-Event-Id` (one random id per event, the same on every retry: a receiver
drops duplicates by it) and `X-Edgecls-Timestamp` (Unix seconds at this attempt). With a secret
(`EDGECLS_WEBHOOK_SECRET` or `--webhook-secret-file`; never on the command line) it also carries

    X-Edgecls-Signature: t=<unix seconds>,id=<event id>,v1=<hex HMAC-SHA256 of "<t>.<id>." + body, key: the secret>

so a receiver checks that it came from this device, unaltered, recently (t), and once (id): docs/device.md.

Only a 2xx answer counts as delivered. Redirects are never followed (a 3xx would carry the signed event to a
place nobody configured): it is a failed attempt, with one warning naming its Location. Each attempt times out
after `--webhook-timeout` seconds; a failure (no connection, a timeout, 3xx, 5xx or 429) is retried after 0.5
and 1 s; after the third attempt the event is dropped and counted. A 4xx other than 429 is not retried (the
request itself is wrong).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from edgecls.device.sinks.sink_queue import QueuedSink, backoff_delays, checked_port, masked_url, sleep_unless
from edgecls.errors import EdgeclsError

SIGNATURE_HEADER = "X-Edgecls-Signature"
TIMESTAMP_HEADER = "X-Edgecls-Timestamp"
EVENT_ID_HEADER = "X-Edgecls-Event-Id"
RETRIES = 3
BACKOFF_S = (0.5, 2.0)
# What http.client refuses in a request line (it would fail at every POST): controls, spaces, and non-ASCII.
_NOT_IN_URL = re.compile(r"[\x00-\x20\x7f-\U0010ffff]")


def check_url(url: str) -> None:
    """One line about what is wrong with a --webhook URL, before anything is started."""
    bad = f"bad --webhook {masked_url(url)!r}"
    found = _NOT_IN_URL.search(url)
    if found:
        raise EdgeclsError(f"{bad}: {found.group()!r} at position {found.start()} is not allowed in a URL "
                           "(percent-encode it, e.g. a space as %20)")
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise EdgeclsError(f"{bad}: expected http(s)://HOST[:PORT]/PATH")
    checked_port(u, f"{bad}: the port is not a number from 1 to 65535")
    if u.username is not None or u.password is not None:
        raise EdgeclsError("bad --webhook URL: no user or password in it (the command line is readable by "
                           "every local user); sign with EDGECLS_WEBHOOK_SECRET or --webhook-secret-file instead")


def signature(secret: str, timestamp: int, event_id: str, body: bytes) -> str:
    """The X-Edgecls-Signature value: what is signed is the time and the id as well as the body, so a captured
    request can be neither replayed later (the receiver checks t) nor twice (it remembers ids)."""
    signed = f"{timestamp}.{event_id}.".encode() + body
    mac = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},id={event_id},v1={mac}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is answered as it is (an HTTPError), never followed: not with the signature, not anywhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class WebhookSink(QueuedSink):
    def __init__(self, url: str, secret: str | None = None, timeout: float = 5.0, retries: int = RETRIES,
                 log=None):
        self.url, self.secret, self.timeout, self.retries = url, secret, timeout, retries
        self.log = log or (lambda m: None)
        self.failures = 0   # attempts that failed (each retried or, at the last, dropped)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._warned_locations: set[str] = set()
        # Flush at exit: at most one attempt's time for what is still queued.
        super().__init__("webhook", close_timeout=timeout)

    def headers(self, event: dict, event_id: str, body: bytes) -> dict[str, str]:
        now = int(time.time())
        out = {"Content-Type": "application/json", "User-Agent": "edgecls", "X-Edgecls-Event": str(event["event"]),
               EVENT_ID_HEADER: event_id, TIMESTAMP_HEADER: str(now)}
        if self.secret:
            out[SIGNATURE_HEADER] = signature(self.secret, now, event_id, body)
        return out

    def deliver(self, event) -> bool:
        body = json.dumps(event, allow_nan=False).encode()
        event_id = uuid.uuid4().hex   # one per event: a retry that did arrive twice is dropped by the receiver
        waits = list(backoff_delays(*BACKOFF_S, self.retries - 1)) + [None]   # (no wait after the last attempt)
        for wait in waits:
            outcome = self.attempt(body, self.headers(event, event_id, body))
            if outcome == "sent":
                return True
            self.failures += 1
            if outcome == "refused" or wait is None or not sleep_unless(self.give_up, wait):
                return False
        return False

    def attempt(self, body: bytes, headers: dict[str, str]) -> str:
        """One POST: "sent" (a 2xx), "refused" (a 4xx but 429: retrying cannot help) or "failed"."""
        try:
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            with self._opener.open(req, timeout=self.timeout) as resp:
                resp.read(65536)
                return "sent" if 200 <= resp.status < 300 else "failed"
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400:
                self.warn_redirect(e.code, e.headers.get("Location") if e.headers else None)
            return "refused" if 400 <= e.code < 500 and e.code != 429 else "failed"
        except (OSError, ValueError):  # refused, reset, timed out, DNS
            return "failed"

    def warn_redirect(self, code: int, location: str | None) -> None:
        where = location or "(no Location)"
        if where not in self._warned_locations:   # once per place, not once per event
            self._warned_locations.add(where)
            self.log(f"edgecls: warning: the --webhook server answered {code}, a redirect to {where!r}: not "
                     "followed (the event would go where nobody configured); not delivered — fix the --webhook URL")

    def summary(self) -> dict:
        return {**super().summary(), "failed_attempts": self.failures}
