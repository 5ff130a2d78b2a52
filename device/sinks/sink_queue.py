"""A bounded queue and a worker thread in front of a slow or unreliable place events go (a broker, a web server).

The camera loop only appends to the queue: when it is full the item is dropped and counted, never waited for.
The worker delivers in order; `close()` gives it `close_timeout` seconds to flush, then counts what is left
as dropped, so a dead broker or a hanging server can neither block the loop nor hold up the shutdown.
"""
from __future__ import annotations

import collections
import re
import threading

from edgecls.device.sinks.events import EventSink

QUEUE_SIZE = 256
CLOSE_TIMEOUT_S = 3.0


class QueuedSink(EventSink):
    def __init__(self, name: str, maxsize: int = QUEUE_SIZE, close_timeout: float = CLOSE_TIMEOUT_S):
        self.name, self.maxsize, self.close_timeout = name, maxsize, close_timeout
        self.sent = self.dropped = 0
        self._q: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self.give_up = threading.Event()   # set when the flush time is over: deliver() must stop waiting
        self._thread = threading.Thread(target=self._work, name=f"edgecls {name}", daemon=True)
        self._thread.start()

    def send(self, event: dict) -> None:
        self.put(event)

    def put(self, item) -> bool:
        with self._cond:
            if self._closing or len(self._q) >= self.maxsize:
                self.dropped += 1
                return False
            self._q.append(item)
            self._cond.notify()
        return True

    def deliver(self, item) -> bool:
        """Deliver one item (on the worker thread; may wait, but must return once `give_up` is set).
        True: delivered; False: dropped."""
        raise NotImplementedError

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._q and not self._closing:
                    self._cond.wait()
                if not self._q:
                    return
                item = self._q.popleft()
            if self.give_up.is_set():
                ok = False
            else:
                try:
                    ok = self.deliver(item)
                except Exception:  # a sink must never take the run down; the item is counted as lost
                    ok = False
            with self._cond:
                if ok:
                    self.sent += 1
                else:
                    self.dropped += 1

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self.close_timeout)
        self.give_up.set()
        self._thread.join(max(1.0, self.close_timeout))
        with self._cond:
            self.dropped += len(self._q)
            self._q.clear()
        self.shutdown()

    def shutdown(self) -> None:
        """Release the connection (after the queue is flushed or given up)."""

    def summary(self) -> dict:
        with self._cond:
            return {"sent": self.sent, "dropped": self.dropped}


def wait_until(event: threading.Event, give_up: threading.Event, step: float = 0.05) -> bool:
    """Wait for `event` until `give_up` is set; True when it happened."""
    while not event.is_set():
        if give_up.wait(step):
            return event.is_set()
    return True


def backoff_delays(first: float, longest: float, attempts: int):
    """first, 2·first, … capped at `longest`: the waits between retries."""
    d = first
    for _ in range(attempts):
        yield d
        d = min(d * 2, longest)


def sleep_unless(give_up: threading.Event, seconds: float) -> bool:
    """Sleep, but wake when asked to give up; True when the full time passed."""
    return not give_up.wait(seconds)


def checked_port(u, refusal: str) -> int | None:
    """The port of a sink's split URL `u` (None when it names none); `refusal`, as an EdgeclsError, when it is
    not a number from 1 to 65535 (urlsplit raises ValueError for some and returns 0 for ":0")."""
    from edgecls.errors import EdgeclsError

    try:
        port = u.port
    except ValueError:
        port = 0
    if port == 0:
        raise EdgeclsError(refusal)
    return port


def masked_url(url: str) -> str:
    """A sink's URL as messages show it: any user:password@ in it masked."""
    return re.sub(r"//[^/]*@", "//***@", url, count=1)
