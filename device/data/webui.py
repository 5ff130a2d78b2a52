"""The device's own web page: `edgecls run … --ui PORT` (live) and `edgecls ui DATA_DIR` (labelling alone).

Plain HTML + a little JavaScript from device/data/static/ (no build step, no CDN: devices are often offline), served
by the MJPEG server (device/output/mjpeg.py: bounded connections and timeouts) on 127.0.0.1 unless --host says more.

    GET  /                  the page                       GET  /static/app.js, /static/style.css
    GET  /stream            the annotated MJPEG stream     GET  /frame.jpg   the newest annotated frame
    GET  /api/status        {"mode", "labels", "frames", "fps", "latency_ms_p50", "label", "confidence", "top",
                             "events", "keep", "data", "can_label", "can_capture", "can_teach", "started",
                             "bundle" (run --ui: the version running)}
    GET  /api/kept          {"photos": [{"name", "url", "time", "reason", "model": {…}}]}, newest first
    GET  /api/kept/NAME.jpg a kept frame
    POST /api/label         {"name": NAME.jpg, "label": CLASS}: the kept frame and its sidecar → DATA_DIR/CLASS/
    POST /api/discard       {"name": NAME.jpg}: delete a kept frame and its sidecar
    POST /api/capture       {"label": CLASS}: the current frame (full resolution, no overlay) → DATA_DIR/CLASS/
    POST /api/teach         {"label": NEW, "names": [NAME.jpg, …]} or {"label": NEW, "capture": N}: teach the
    GET  /api/teach         bundle a new class (run --ui only; device/teach/page.py: TeachPage, dispatched here)
    POST /api/teach/use     {"bundle": the version the last teach wrote}: `run` goes on with it (device/live.py)

Every state change is a POST with a JSON body (Content-Type: application/json — which another site's page
cannot send here without a CORS preflight this server never answers), at most MAX_BODY bytes (TEACH_MAX_BODY for
/api/teach). Names must be plain file names inside the keep folder (no '/', '..', leading dot, or symlink); labels
must be the bundle's (or DATA_DIR's classes; a taught label must be new: device/teach/page.py). Who may ask at
all is edgecls/httpauth.py's rule (a loopback Host header, or on any other bind the token), applied by the
server before these routes. A disk fault while saving, moving or discarding a photo is a reply too (507 full,
403 read-only or not allowed, 500 else; {"error": reason}) and one warning line.
"""
from __future__ import annotations

import collections
import errno
import json
import sys
import threading
import time
from pathlib import Path

from edgecls.device.sinks.events import EventSink
from edgecls.device.output.mjpeg import MjpegServer
from edgecls.device.output.outputs import Output, result_record
from edgecls.device.data.photos import (SAFE_NAME, check_label, discard_photo, iso_utc, move_photo, save_photo,
                                   writable_dir)
from edgecls.errors import EdgeclsError
from edgecls.fsutil import DISK_FULL
from edgecls.httpserve import CLIENT_GONE

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/static/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_BODY = 4096        # bytes of a POST body: a name and a label
TEACH_MAX_BODY = 65536  # /api/teach: a label and the names of up to a few hundred kept frames
RECENT_EVENTS = 20
GALLERY_MAX = 200


class BadRequest(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class WebUi:
    """State behind the page, and its HTTP routes. `labels`: the classes a photo may be filed under."""

    def __init__(self, host: str, port: int, labels: list[str], data_dir: Path | None, keep_dir: Path | None,
                 live: bool, log=None):
        self.labels = [check_label(lab, flag="class") for lab in labels]
        self.data_dir = writable_dir(data_dir, "DATA_DIR").resolve() if data_dir else None
        self.keep_dir = keep_dir.resolve() if keep_dir else None
        if self.keep_dir is not None and not self.keep_dir.is_dir():
            raise EdgeclsError(f"--keep {keep_dir} is not a folder")
        self.live = live
        self.events: collections.deque = collections.deque(maxlen=RECENT_EVENTS)
        self.record: dict = {}
        self.stats = None
        self.frame = None
        self.source_name = ""
        self.extra_status = None   # () -> dict: e.g. the keep output's counts
        self.teacher = None        # run --ui: device/teach/page.py: TeachPage (set by device/data/labelling.py)
        self.started = f"{time.time():.6f}"   # the page reloads when this changes: run started again
        self._lock = threading.Lock()
        self._published = 0.0
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.server = MjpegServer(host, port, routes=self.route, what="web page")
        self.log(f"edgecls: web page on {self.server.url}")

    @property
    def url(self) -> str:
        return self.server.url

    # --- fed by the live loop ------------------------------------------------------------------------------

    def update(self, frame, result, stats, annotated) -> None:
        # JPEG-encoding every frame costs a Pi real time: only while someone watches the stream (else once a
        # second, so /frame.jpg stays fresh)
        now = time.monotonic()
        if self.server.clients or now - self._published >= 1.0:
            self.server.publish(annotated)
            self._published = now
        rec = result_record(frame, result, stats)
        with self._lock:
            self.record, self.stats, self.frame = rec, stats, frame

    # --- HTTP ----------------------------------------------------------------------------------------------

    def route(self, h, method: str, path: str) -> bool:
        try:
            if path in ("/api/teach", "/api/teach/use"):
                return self._teach(h, method, use=path.endswith("/use"))
            if method == "GET":
                if path in STATIC_FILES:
                    name, ctype = STATIC_FILES[path]
                    _send(h, 200, ctype, (STATIC / name).read_bytes())
                    return True
                if path == "/api/status":
                    return _json(h, 200, self.status())
                if path == "/api/kept":
                    return _json(h, 200, {"photos": self.kept()})
                if path.startswith("/api/kept/"):
                    photo = self._kept_photo(path[len("/api/kept/"):])
                    _send(h, 200, "image/jpeg", photo.read_bytes())
                    return True
                if path in ("/api/label", "/api/discard", "/api/capture"):
                    raise BadRequest(405, "state changes are POST only")
                return False
            if path == "/api/label":
                body = _body(h)
                photo = self._kept_photo(_field(body, "name"))
                label = self._label(body)
                dest = move_photo(photo, self._class_dir(label), {"label": label, "labelled": iso_utc(),
                                                                  "labelled_by": "ui"})
                return _json(h, 200, {"moved_to": f"{label}/{dest.name}"})
            if path == "/api/discard":
                photo = self._kept_photo(_field(_body(h), "name"))
                discard_photo(photo)
                return _json(h, 200, {"discarded": photo.name})
            if path == "/api/capture":
                label = self._label(_body(h))
                return _json(h, 200, {"saved": f"{label}/{self.capture(label).name}"})
            raise BadRequest(404, "not found")
        except BadRequest as e:
            return _json(h, e.code, {"error": str(e)})
        except FileNotFoundError:
            return _json(h, 404, {"error": "no such photo (already filed or discarded?)"})
        except CLIENT_GONE:
            raise   # the viewer went away mid-reply: nobody to answer (the server stays quiet)
        except (OSError, EdgeclsError) as e:
            code, reason = disk_fault(e)
            if code != 400:   # the device's disk, not the request: say so once on the console too
                self.log(f"edgecls: warning: the web page could not do {method} {path}: {reason}")
            return _json(h, code, {"error": reason})

    def status(self) -> dict:
        with self._lock:
            rec, stats = dict(self.record), self.stats
        out = {"mode": "run" if self.live else "label", "labels": self.labels, "source": self.source_name,
               "frames": 0, "fps": 0.0, "latency_ms_p50": None, "label": None, "confidence": None, "top": [],
               "events": list(self.events), "can_label": self.data_dir is not None and self.keep_dir is not None,
               "can_capture": self.live and self.data_dir is not None, "data": self.data_counts(), "keep": {},
               "can_teach": self.teacher is not None, "started": self.started}
        if self.teacher is not None:
            out["bundle"] = str(self.teacher.bundle)
        if stats is not None:
            s = stats.summary()
            out.update({"frames": s["frames"], "fps": rec.get("fps", 0.0), "latency_ms_p50": s["latency_ms_p50"],
                        "latency_ms_p95": s["latency_ms_p95"], "label": rec.get("label"),
                        "confidence": rec.get("confidence"), "top": rec.get("top", []), "frame": rec.get("frame")})
        if self.extra_status:
            out["keep"] = self.extra_status()
        return out

    def data_counts(self) -> dict:
        if self.data_dir is None:
            return {}
        counts = {}
        for lab in self.labels:
            d = self.data_dir / lab
            counts[lab] = sum(1 for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
                if d.is_dir() and not d.is_symlink() else 0
        return counts

    def kept(self) -> list[dict]:
        if self.keep_dir is None:
            return []
        photos = sorted((p for p in self.keep_dir.glob("*.jpg") if SAFE_NAME.fullmatch(p.name)
                         and p.with_suffix(".json").is_file() and not p.is_symlink()), reverse=True)
        out = []
        for p in photos[:GALLERY_MAX]:
            try:
                side = json.loads(p.with_suffix(".json").read_text())
            except (OSError, ValueError):
                continue
            out.append({"name": p.name, "url": f"/api/kept/{p.name}", "time": side.get("time"),
                        "reason": side.get("reason"), "model": side.get("model", {})})
        return out

    def capture(self, label: str) -> Path:
        with self._lock:
            frame = self.frame
        if not self.live or frame is None:
            raise BadRequest(409, "no live frame to capture (capture needs `edgecls run … --ui`)")
        if self.data_dir is None:
            raise BadRequest(409, "no DATA_DIR to save into (give `edgecls run … --data DATA_DIR`)")
        side = {"time": iso_utc(time.time() - (time.monotonic() - frame.t_capture)), "label": label,
                "source": self.source_name, "frame": frame.index, "by": "ui-capture",
                "model": {k: self.record.get(k) for k in ("label", "confidence", "top")}}
        return save_photo(self._class_dir(label), frame.bgr(), side)

    def _teach(self, h, method: str, use: bool) -> bool:
        if self.teacher is None:
            raise BadRequest(409, "teaching needs the model: `edgecls run BUNDLE … --ui PORT` "
                                  "(this page only labels)")
        if method == "GET":
            if use:
                raise BadRequest(405, "state changes are POST only")
            return _json(h, 200, self.teacher.state())
        if use:   # the reply is written before the loop may close this server to start again on the version
            version = self.teacher.check_use(_body(h))
            _json(h, 202, {"state": "switching", "bundle": str(version)})
            self.teacher.switch_to = version
            return True
        return _json(h, *self.teacher.start(_body(h, TEACH_MAX_BODY), self._kept_photo))

    def _label(self, body: dict) -> str:
        label = _field(body, "label")
        if label not in self.labels:
            raise BadRequest(400, f"unknown label {label[:100]!r}")
        return label

    def _class_dir(self, label: str) -> Path:
        if self.data_dir is None:
            raise BadRequest(409, "no DATA_DIR to file into (give `edgecls run … --data DATA_DIR`)")
        d = self.data_dir / label
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            raise BadRequest(400, f"DATA_DIR/{label} is not a plain folder")
        d.mkdir(exist_ok=True)
        return d

    def _kept_photo(self, name: str) -> Path:
        if self.keep_dir is None:
            raise BadRequest(409, "no --keep folder")
        if not SAFE_NAME.fullmatch(name) or not name.endswith(".jpg"):
            raise BadRequest(400, "bad photo name")
        p = self.keep_dir / name
        if p.is_symlink() or p.resolve().parent != self.keep_dir:
            raise BadRequest(400, "bad photo name")
        if not p.is_file():
            raise FileNotFoundError(name)
        return p

    def close(self) -> None:
        self.server.close()


NOT_ALLOWED = (errno.EROFS, errno.EACCES, errno.EPERM)


def disk_fault(exc: Exception) -> tuple[int, str]:
    """(HTTP status, one-line reason) of a failure at the handler's boundary: an OSError, or an EdgeclsError —
    a fault of the machine if it carries an errno or an OSError caused it (edgecls/fsutil.py: WriteError), else
    bad input (400)."""
    cause, code = exc, None
    for _ in range(8):   # the chain of causes, bounded
        code = getattr(cause, "errno", None)
        if cause is None or isinstance(code, int):
            break
        cause = cause.__cause__ or cause.__context__
    if not isinstance(code, int):
        return (500 if isinstance(exc, OSError) else 400), str(exc)
    if isinstance(exc, EdgeclsError):   # already one line that names the folder
        reason = str(exc)
    else:
        reason = f"{exc.strerror or type(exc).__name__}" + (f": {Path(str(exc.filename)).name}" if exc.filename else "")
    if code in DISK_FULL:
        return 507, reason if "disk full" in reason.lower() else f"disk full ({reason})"
    return (403 if code in NOT_ALLOWED else 500), reason


def _send(h, code: int, ctype: str, body: bytes) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Cache-Control", "no-store")
    h.send_header("X-Content-Type-Options", "nosniff")
    h.send_header("X-Frame-Options", "DENY")
    h.end_headers()
    h.wfile.write(body)


def _json(h, code: int, obj) -> bool:
    if code >= 400:
        h.close_connection = True  # the body of a refused request may not have been read
    _send(h, code, "application/json", json.dumps(obj, allow_nan=False).encode())
    return True


def _body(h, limit: int = MAX_BODY) -> dict:
    ctype = h.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise BadRequest(415, "send JSON (Content-Type: application/json)")
    try:
        length = int(h.headers.get("Content-Length", ""))
    except ValueError:
        raise BadRequest(411, "Content-Length required") from None
    if not 0 <= length <= limit:
        raise BadRequest(413, f"request body over {limit} bytes")
    try:
        body = json.loads(h.rfile.read(length))
    except ValueError:
        raise BadRequest(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return body


def _field(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise BadRequest(400, f"missing {key!r}")
    return value


class UiOutput(Output):
    """`run --ui`: the live loop's frames and answers to the page."""

    shows_pictures = True

    def __init__(self, ui: WebUi):
        self.ui = ui

    @property
    def switch_to(self):
        return self.ui.teacher.switch_to if self.ui.teacher is not None else None

    def attach_source(self, source, fps) -> None:
        self.ui.source_name = source.name

    def render(self, frame, result, stats, annotated, shadow=None):
        self.ui.update(frame, result, stats, annotated)

    def close(self):
        self.ui.close()


class UiEventSink(EventSink):
    """The recent events, for the page (events on: any event flag)."""

    name = "ui"

    def __init__(self, ui: WebUi):
        self.ui = ui

    def send(self, event: dict) -> None:
        self.ui.events.appendleft(event)


def labels_of_data_dir(data_dir: Path, extra: str | None) -> list[str]:
    """`edgecls ui`: the classes are DATA_DIR's plain subfolders plus --labels."""
    found = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.is_symlink()
                   and not p.name.startswith(".")) if data_dir.is_dir() else []
    given = [check_label(x.strip(), flag="--labels") for x in (extra or "").split(",") if x.strip()]
    labels = list(dict.fromkeys(found + given))
    if not labels:
        raise EdgeclsError(f"no classes: {data_dir} has no class folders; give --labels a,b")
    return labels
