"""Events to an HTTP endpoint: `--webhook URL` POSTs each event as JSON (Node-RED, Home Assistant, a server).

With `--webhook-secret S` each request carries `X-Edgecls-Signature: sha256=<hex HMAC-SHA256 of the body, key S>`
(GitHub's scheme) so the receiver can check it came from this device. Each attempt times out after
`--webhook-timeout` seconds; a failure (no connection, a timeout, 5xx or 429) is retried after 0.5, 1, 2 s; after
that the event is dropped and counted. A 4xx other than 429 is not retried (the request itself is wrong).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request

from edgecls.device.sink_queue import QueuedSink, backoff_delays, sleep_unless
from edgecls.errors import EdgeclsError

SIGNATURE_HEADER = "X-Edgecls-Signature"
RETRIES = 3
BACKOFF_S = (0.5, 2.0)


def check_url(url: str) -> None:
    u = urllib.parse.urlsplit(url)
    try:
        u.port
    except ValueError:
        raise EdgeclsError(f"bad --webhook {url!r}: the port is not a number from 1 to 65535") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise EdgeclsError(f"bad --webhook {url!r}: expected http(s)://HOST[:PORT]/PATH")


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink(QueuedSink):
    def __init__(self, url: str, secret: str | None = None, timeout: float = 5.0, retries: int = RETRIES):
        self.url, self.secret, self.timeout, self.retries = url, secret, timeout, retries
        self.failures = 0   # attempts that failed (each retried or, at the last, dropped)
        # Flush at exit: at most one attempt's time for what is still queued.
        super().__init__("webhook", close_timeout=timeout)

    def deliver(self, event) -> bool:
        body = json.dumps(event, allow_nan=False).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "edgecls", "X-Edgecls-Event": event["event"]}
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        for wait in backoff_delays(*BACKOFF_S, self.retries):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read(65536)
                return True
            except urllib.error.HTTPError as e:
                if 400 <= e.code < 500 and e.code != 429:
                    self.failures += 1
                    return False
            except (OSError, ValueError):  # refused, reset, timed out, DNS
                pass
            self.failures += 1
            if not sleep_unless(self.give_up, wait):
                return False
        return False

    def summary(self) -> dict:
        return {**super().summary(), "failed_attempts": self.failures}
