"""SIGINT/SIGTERM during `train` and `export`: stop at the next safe point, never lose the signal.
(No TensorFlow here: it only recognises TensorFlow's frames on the stack.)

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

One more place where raising is not safe: Python code that TensorFlow's C++ calls back into (its `nest`
utilities import lazily). KeyboardInterrupt raised there is dropped by the C++ caller and comes back as
"SystemError: __import__ returned a result with an exception set", with a traceback TensorFlow prints before our
one-line error (CI: inside `nest.flatten` and `AssertSameStructureForData`). Python frames do not show where C++
sits between them, so a first signal that lands while any TensorFlow (or import machinery) frame is on the stack
is retried every 50 ms (SIGALRM) until the main thread is back in code of ours, for at most 30 s.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_S = 0.05
MAX_WAIT_S = 30.0
UNSAFE_PACKAGES = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx")
# Installed packages only: a user's own folder called keras/ is not TensorFlow.
UNSAFE_PATHS = tuple(f"{where}-packages/{pkg}/" for where in ("site", "dist") for pkg in UNSAFE_PACKAGES)


def _inside_tensorflow(frame) -> bool:
    """Whether a TensorFlow or import-machinery frame is on the stack (where C++ may be between frames)."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<frozen importlib") or any(part in name for part in UNSAFE_PATHS):
            return True
        frame = frame.f_back
    return False


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self.deferring = False
        self._retry_until: float | None = None

    def _handle(self, signum, frame):
        first = self.signum is None
        self.signum = self.signum or signum
        if first and self.deferring:
            return
        if first and _inside_tensorflow(frame):
            self._retry_until = time.monotonic() + MAX_WAIT_S
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        raise KeyboardInterrupt

    def _retry(self, signum, frame):
        if self._retry_until is None or self.deferring:   # stale, or training's callback will act on it
            return
        if _inside_tensorflow(frame) and time.monotonic() < self._retry_until:
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        self._retry_until = None
        raise KeyboardInterrupt

    def caused(self, error: BaseException) -> bool:
        """Whether `error` is (or came from) a stop: a signal raises KeyboardInterrupt wherever the main thread
        is, and inside TensorFlow's code that can surface as another exception (seen: AttributeError
        '_type_spec' while fit() was starting)."""
        return isinstance(error, KeyboardInterrupt) or self.signum is not None

    @property
    def exit_signal(self) -> int:
        return self.signum or signal.SIGINT

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
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._retry)
        try:
            yield self
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for s, handler in previous.items():
                signal.signal(s, handler)
