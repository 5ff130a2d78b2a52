"""Events, not frames: a class *enters* when its probability stays ≥ `on` for `min_dwell` seconds and *leaves*
when it stays below `off` for `min_dwell` (hysteresis: `off` < `on`, so flicker around one threshold toggles
nothing). "uncertain" can be watched too: it enters when no watched class is in and none reaches `on` for
`min_dwell`, and leaves when a class enters.

Time is the source's own for finite sources (frame index / frame rate of a video or folder), so a file gives
the same events on every run; live sources use the monotonic clock. Each event is one JSON-able dict:

    {"event": "enter"|"leave", "label", "confidence", "time" (ISO 8601, UTC), "monotonic",
     "source_time_s" (finite sources), "frame", "file" (image sources), "duration_s" (leave), "bundle"}

This module is the event model and the sinks' interface (`EventSink`); the sinks themselves are built from the
run flags in `device/sinks/factory.py`, which imports them all (so no sink's import comes back here).
"""
from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from typing import IO

import numpy as np

from edgecls.device.model.classifier import UNCERTAIN
from edgecls.device.output.outputs import Output
from edgecls.device.data.photos import iso_utc
from edgecls.errors import EdgeclsError
from edgecls.httpauth import DEFAULT_BIND

FOLDER_RATE = 30.0  # images/s a folder stands for when no --fps is given (the rate --save writes it at, too)


@dataclass
class _Track:
    inside: bool = False
    since: float | None = None      # when the pending change's condition first held (None: no change pending)
    entered_at: float = 0.0


class EventTracker:
    """Per-class hysteresis + dwell over a stream of probability vectors. `update()` returns the events that
    the frame completes (leaves before enters, each in watch order: the same input gives the same list)."""

    def __init__(self, labels: list[str], watch: list[str], on: float, off: float, min_dwell: float):
        self.labels, self.on, self.off, self.min_dwell = labels, on, off, min_dwell
        self.watch = [w for w in watch if w != UNCERTAIN]
        self.index = {lab: labels.index(lab) for lab in self.watch}
        self.watch_uncertain = UNCERTAIN in watch
        self.tracks = {lab: _Track() for lab in watch}

    @property
    def inside(self) -> list[str]:
        return [lab for lab, t in self.tracks.items() if t.inside]

    def update(self, probs: np.ndarray, t: float) -> list[tuple[str, str, float, float]]:
        """(kind, label, confidence, duration_s) for each event at time t."""
        leaves, enters = [], []
        for lab in self.watch:
            p = float(probs[self.index[lab]])
            tr = self.tracks[lab]
            wanted = p < self.off if tr.inside else p >= self.on
            kind = self._step(tr, wanted, t)
            if kind:
                (enters if kind == "enter" else leaves).append((kind, lab, p, t - tr.entered_at if kind == "leave"
                                                                else 0.0))
        if self.watch_uncertain:
            tr = self.tracks[UNCERTAIN]
            top = float(probs.max())
            confident = any(self.tracks[lab].inside or probs[self.index[lab]] >= self.on for lab in self.watch)
            if tr.inside and enters:  # a class entered: the scene is no longer uncertain
                tr.inside, tr.since = False, None
                leaves.append(("leave", UNCERTAIN, top, t - tr.entered_at))
            elif not tr.inside and self._step(tr, not confident, t):
                enters.append(("enter", UNCERTAIN, top, 0.0))
        for kind, lab, _, _ in leaves + enters:
            if kind == "enter":
                self.tracks[lab].entered_at = t
        return leaves + enters

    def _step(self, tr: _Track, wanted: bool, t: float) -> str | None:
        """Advance one track: the change happens once `wanted` has held for min_dwell seconds."""
        if not wanted:
            tr.since = None
            return None
        if tr.since is None:
            tr.since = t
        if t - tr.since < self.min_dwell - 1e-9:  # (frame times are index / rate: 0.3 - 0.1 < 0.2 in floats)
            return None
        tr.inside, tr.since = not tr.inside, None
        return "enter" if tr.inside else "leave"


def bundle_id(bundle) -> str:
    """A short, stable name of the bundle: its recommended artifact's sha256 prefix (what any runtime reads)."""
    arts = bundle.meta.get("artifacts", {})
    key = bundle.meta.get("default_artifact") or next(iter(arts), "")
    return str(arts.get(key, {}).get("sha256", ""))[:12]


class EventSink:
    """One place events go (MQTT, a webhook, GPIO pins, Prometheus). `send` and `frame` run on the camera
    loop, so they must never block: the network sinks queue (bounded) and work on their own thread."""

    name = "sink"

    def send(self, event: dict) -> None:
        raise NotImplementedError

    def frame(self, frame, result, stats, state: list[str]) -> None:
        """Called once per frame with the labels that are in (cheap; most sinks ignore it)."""

    def close(self) -> None:
        pass

    def summary(self) -> dict:
        return {}


@dataclass
class EventOptions:
    """The run flags of the event model and its sinks (built in one place from the CLI)."""
    on: float | None = None           # None: the default below (given or not decides whether events are on)
    off: float | None = None
    min_dwell: float = 0.0
    classes: str | None = None
    events: bool = False              # --events: event lines in --json even without a sink
    mqtt: str | None = None
    mqtt_qos: int = 0
    mqtt_retain: bool = False
    mqtt_ca: str | None = None
    mqtt_state_interval: float = 0.0  # > 0: per-frame state on TOPIC/state at most once per interval
    mqtt_password_file: str | None = None   # (or EDGECLS_MQTT_PASSWORD; never in the URL)
    webhook: str | None = None
    webhook_secret: str | None = None       # given on the command line: refused (read_secret says where instead)
    webhook_secret_file: str | None = None  # (or EDGECLS_WEBHOOK_SECRET)
    webhook_timeout: float = 5.0
    gpio: str | None = None
    gpio_pulse: float | None = None
    metrics: int | None = None
    host: str = DEFAULT_BIND

    DEFAULT_ON, DEFAULT_OFF = 0.8, 0.6

    @property
    def active(self) -> bool:
        return bool(self.events or self.mqtt or self.webhook or self.gpio or self.metrics is not None
                    or self.classes or self.min_dwell or self.on is not None or self.off is not None)

    @property
    def levels(self) -> tuple[float, float]:
        return (self.DEFAULT_ON if self.on is None else self.on, self.DEFAULT_OFF if self.off is None else self.off)


def watched_labels(classes: str | None, labels: list[str], flag: str = "--classes") -> list[str]:
    if not classes:
        return list(labels)
    out = [c.strip() for c in classes.split(",") if c.strip()]
    unknown = [c for c in out if c not in labels and c != UNCERTAIN]
    if unknown or not out:
        raise EdgeclsError(f"{flag}: unknown label {unknown[0]!r} (the bundle has: {', '.join(labels)}, and "
                           f"'{UNCERTAIN}')" if unknown else f"{flag} names no label")
    return list(dict.fromkeys(out))


def check_levels(opts: EventOptions) -> None:
    on, off = opts.levels
    for flag, v in (("--on", on), ("--off", off)):
        if not 0.0 <= v <= 1.0:  # (NaN fails this too)
            raise EdgeclsError(f"{flag} must be a probability between 0 and 1 (got {v})")
    if not off < on:
        raise EdgeclsError(f"--off ({off}) must be below --on ({on}): the gap between them is what stops flicker")
    if not 0.0 <= opts.min_dwell < 86400:
        raise EdgeclsError(f"--min-dwell must be 0 or more seconds (got {opts.min_dwell})")


class EventsOutput(Output):
    """The event model as one more output of the live loop: tracks every frame, writes event lines to the
    JSON stream, and hands each event to its sinks."""

    def __init__(self, tracker: EventTracker, sinks: list[EventSink], bundle: str,
                 json_stream: IO[str] | None = None, log=None):
        self.tracker, self.sinks, self.bundle, self.json_stream = tracker, sinks, bundle, json_stream
        self.log = log
        self.rate: float | None = None   # frames/s of a finite source: its frames carry their own time
        self.counts: dict[str, dict[str, int]] = {}
        self.source = None
        for s in sinks:  # the metrics sink reports the others' figures
            if hasattr(s, "peers"):
                s.peers = [o for o in sinks if o is not s]

    def attach_source(self, source, fps: float | None) -> None:
        """Finite sources keep time by frame index (the same events every run); live ones by the clock."""
        self.source = source
        if not source.live:
            self.rate = getattr(source, "fps", None) or fps or FOLDER_RATE
        for s in self.sinks:
            getattr(s, "attach_source", lambda _s: None)(source)

    def render(self, frame, result, stats, annotated, shadow=None):
        t = frame.index / self.rate if self.rate else frame.t_capture
        probs = result.probs if result.probs is not None else _probs_from_top(result, self.tracker.labels)
        for kind, label, conf, duration in self.tracker.update(probs, t):
            ev = {"event": kind, "label": label, "confidence": round(conf, 5), "time": iso_utc(),
                  "monotonic": round(time.monotonic(), 6)}
            if self.rate:
                ev["source_time_s"] = round(t, 6)
            ev["frame"] = frame.index
            if frame.file is not None:
                ev["file"] = frame.file
            if kind == "leave":
                ev["duration_s"] = round(duration, 6)
            ev["bundle"] = self.bundle
            self.counts.setdefault(label, {"enter": 0, "leave": 0})[kind] += 1
            if self.json_stream is not None:
                self.json_stream.write(json.dumps(ev, allow_nan=False) + "\n")
                self.json_stream.flush()
            elif self.log:  # a person watching the console sees the events too (stderr: stdout has the frames)
                self.log(f"edgecls: {kind} {label} ({conf * 100:.1f}%) at {frame.file or f'frame {frame.index}'}"
                         + (f" after {duration:.1f} s" if kind == "leave" else ""))
            for s in self.sinks:
                s.send(ev)
        state = self.tracker.inside
        for s in self.sinks:
            s.frame(frame, result, stats, state)
            if shadow is not None and shadow.figures and hasattr(s, "shadow"):
                s.shadow(shadow.figures)   # (the metrics sink: live int8-vs-float agreement)

    def event(self, event):
        """A run event outside the class model (`--shadow`'s drift warnings): the sinks publish it too, so a
        broker or a webhook hears that the camera sees something the training photos did not."""
        ev = {**event, "bundle": self.bundle}
        for s in self.sinks:
            s.send(ev)

    def close(self):
        errors = []
        for s in self.sinks:  # each flushes what it can in bounded time; every one is closed
            try:
                s.close()
            except Exception as e:
                errors.append(e)
        if self.log and self.json_stream is None:  # (with --json the summary line says it)
            for name, fig in self.summary()["event_outputs"].items():
                if "sent" in fig:
                    self.log(f"edgecls: {name}: {fig['sent']} sent, {fig['dropped']} dropped"
                             + (f", {fig['reconnects']} reconnects" if "reconnects" in fig else ""))
        if errors:
            raise errors[0]

    def summary(self) -> dict:
        return {"events": self.counts, "event_outputs": {s.name: s.summary() for s in self.sinks}}


def _probs_from_top(result, labels: list[str]) -> np.ndarray:
    probs = np.zeros(len(labels), dtype=np.float32)
    for lab, p in result.top:
        probs[labels.index(lab)] = p
    return probs


SECRET_MAX_BYTES = 64 * 1024
WEBHOOK_SECRET_ENV, MQTT_PASSWORD_ENV = "EDGECLS_WEBHOOK_SECRET", "EDGECLS_MQTT_PASSWORD"


def read_secret(env_var: str, file_flag: str, path: str | None) -> str | None:
    """A secret from the environment or a file — never from the command line, which every local user can read
    in /proc/PID/cmdline (the environment and a 0600 file only the owner and root can). None when not given."""
    value = os.environ.get(env_var)
    if path is None:
        if value == "":
            raise EdgeclsError(f"{env_var} is set but empty")
        return value
    if value is not None:
        raise EdgeclsError(f"give the secret once: {env_var} or {file_flag}, not both")
    return read_secret_file(file_flag, path)


def read_secret_file(flag: str, path: str) -> str:
    """The one line of a secret file (a trailing line break is not part of it); it must not be world-readable."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # (a FIFO would block the start for ever)
            raise EdgeclsError(f"{flag} {path}: not a regular file")
        if st.st_mode & stat.S_IROTH:
            raise EdgeclsError(f"{flag} {path}: every user can read it (mode {st.st_mode & 0o777:03o}); "
                               f"chmod 600 {path}")
        with open(path, "rb") as f:
            data = f.read(SECRET_MAX_BYTES + 1)
    except OSError as e:
        raise EdgeclsError(f"{flag} {path}: {e.strerror}") from None
    try:
        secret = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise EdgeclsError(f"{flag} {path}: not UTF-8 text") from None
    if len(data) > SECRET_MAX_BYTES or not secret or any(c in secret for c in "\r\n\0"):
        raise EdgeclsError(f"{flag} {path}: expected the secret on one line "
                           + ("(the file is empty)" if not secret else f"(at most {SECRET_MAX_BYTES} bytes)"))
    return secret


def check_orphans(opts: EventOptions) -> None:
    """A flag whose output is not given would silently do nothing; a secret on the command line is refused."""
    if opts.webhook_secret is not None:
        raise EdgeclsError("--webhook-secret on the command line is readable by every local user "
                           f"(/proc/PID/cmdline): put it in the environment variable {WEBHOOK_SECRET_ENV} or in a "
                           "file readable only by you, --webhook-secret-file PATH")
    for flag, given, needs, base in (("--gpio-pulse", opts.gpio_pulse is not None, "--gpio LABEL=PIN", opts.gpio),
                                      ("--mqtt-ca", opts.mqtt_ca, "an mqtts:// --mqtt URL", opts.mqtt),
                                      ("--mqtt-qos", opts.mqtt_qos, "--mqtt URL", opts.mqtt),
                                      ("--mqtt-retain", opts.mqtt_retain, "--mqtt URL", opts.mqtt),
                                      ("--mqtt-state-interval", opts.mqtt_state_interval, "--mqtt URL", opts.mqtt),
                                      ("--mqtt-password-file", opts.mqtt_password_file, "--mqtt URL", opts.mqtt),
                                      ("--webhook-secret-file", opts.webhook_secret_file, "--webhook URL",
                                       opts.webhook)):
        if given and not base:
            raise EdgeclsError(f"{flag} needs {needs}")
