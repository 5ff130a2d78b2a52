"""SIGINT/SIGTERM during `train`: stop at the next safe point, never lose the signal.

Why Python's own Ctrl-C handling was not enough (issue 17):
- A process started with SIGINT ignored (what a non-interactive shell does to `cmd &`, e.g. `make test &`
  from a script) keeps it ignored: Python installs its KeyboardInterrupt handler only when SIGINT is at its
  default. SIGINT was then lost and the run completed with exit 0.
- SIGTERM (systemd, `timeout`, a CI runner) killed the process outright.
- KeyboardInterrupt raised at an arbitrary bytecode can land inside a `__del__` or weakref callback
  (TensorFlow iterators and resources have many), where Python prints "Exception ignored" and drops it.

So both signals get a handler of ours for the whole of `train`. Outside the training loop it raises
KeyboardInterrupt at once (loading data: nothing to save). Inside `fit` it only records the signal; the
training callback calls `check()` after every batch and epoch, where raising is safe and the last
checkpoint is complete. A second signal stops at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self.deferring = False

    def _handle(self, signum, frame):
        first = self.signum is None
        self.signum = self.signum or signum
        if not (first and self.deferring):
            raise KeyboardInterrupt

    def check(self) -> None:
        """Called at safe points in the training loop."""
        if self.signum is not None:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        """While training: record the signal, act on it at the next `check()`."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # signal.signal works only there
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
