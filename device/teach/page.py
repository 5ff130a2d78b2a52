"""The web page's "teach as a new class" (`edgecls run BUNDLE … --ui PORT`; issue 33): POST /api/teach and
GET /api/teach, dispatched by device/data/webui.py. The same code path as `edgecls teach` (device/teach/command.py:
teach), on the bundle `run` started with; a new version is written beside it and takes its exam.

    POST /api/teach {"label": NEW, "names": [kept NAME.jpg, …]}  teach from these kept frames
    POST /api/teach {"label": NEW, "capture": N}                 teach from the next N live frames (CAPTURE_GAP_S apart)
    GET  /api/teach                                              {"state": "idle" | "capturing" | "teaching" |
                                                                  "done" | "failed", …} of the last teach

Bad input (a label the bundle has or with path characters, no photos, a corrupt photo, a bundle exported before
teach) is answered at once, with the CLI's one-line reason, before anything runs. The teach itself runs on its
own thread (one at a time); the request waits up to WAIT_S for it and otherwise answers 202, and the page polls
GET. The live loop keeps running the version it started with until the page asks for the new one:

    POST /api/teach/use {"bundle": the version the last teach wrote}      run goes on with it ("Run it now")

Then the loop ends after its frame and `run` starts again on the new version — model, exam, outputs, page and
source opened afresh, as a restart would (device/live.py: its outputs, keep sidecars and events hold a version's
labels) — and goes back to the version it had if the new one cannot start. In a device folder of `edgecls update`
(`run DEVICE_DIR/current`) the version is first installed into the free slot (fleet/slots.py: install_taught), so
that going back, a crash loop and the next update treat it as any installed version (docs/fleet.md).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from edgecls.device.data.webui import BadRequest, disk_fault
from edgecls.errors import EdgeclsError

WAIT_S = 10.0          # how long POST waits for the teach before answering 202 (then: GET /api/teach)
CAPTURE_GAP_S = 0.25   # between two live frames taught from: some variety as the object is turned
MAX_CAPTURE = 100
MAX_NAMES = 200        # kept frames in one teach: as many as the gallery shows (decoded in the request)
RUNNING = ("capturing", "teaching")


class TeachPage:
    """The teach action of the page of `run`: `bundle` is the folder run started with; `ui` the WebUi (its
    newest frame, for capture)."""

    def __init__(self, bundle: Path, ui, log):
        self.bundle, self.ui, self.log = Path(bundle), ui, log
        self._lock = threading.Lock()
        self._job: dict = {"state": "idle"}
        self._done = threading.Event()
        self.switch_to: Path | None = None   # set by POST /api/teach/use; the live loop reads it (UiOutput)

    def state(self) -> dict:
        with self._lock:
            return dict(self._job)

    def start(self, body: dict, kept_photo) -> tuple[int, dict]:
        """Check the request, start the teach, wait up to WAIT_S: (HTTP status, reply). `kept_photo(name)` is the
        page's own check of a kept frame's name (WebUi._kept_photo's rules)."""
        from edgecls.device.teach.command import check_request

        label, names, capture = _fields(body)
        bundle, state = self._open()
        check_request(state, label, more=False, forget=False)
        photos = _kept_photos(bundle, [kept_photo(n) for n in dict.fromkeys(names)]) if names else None
        with self._lock:
            if self._job["state"] in RUNNING:
                raise BadRequest(409, f"a teach of {self._job['label']!r} is still running")
            self._job = {"state": "capturing" if capture else "teaching", "label": label, "since": time.time()}
            self._done.clear()
        threading.Thread(target=self._work, args=(label, photos, capture, bundle.spec), name="edgecls-teach",
                         daemon=True).start()
        self._done.wait(WAIT_S)
        job = self.state()
        if job["state"] in RUNNING:
            return 202, job
        return (200, job) if job["state"] == "done" else (job["code"], job)

    def check_use(self, body: dict) -> Path:
        """The version POST /api/teach/use may switch to: the one the last teach wrote, and only that one. In a device
        folder it is installed into the free slot first, and the folder's link is what run starts again on."""
        from edgecls.fleet.live import device_dir_of

        job = self.state()
        if job["state"] != "done":
            raise BadRequest(409, "no taught version to run: teach a class first")
        if body.get("bundle") != job["bundle"]:
            raise BadRequest(400, f"'bundle' must be the version the last teach wrote ({job['bundle']})")
        device = device_dir_of(self.bundle)
        if device is None:
            return Path(job["bundle"])
        from edgecls.device.teach.command import install_version

        state = install_version(device, job)   # the finished job's fields are teach's reply
        self.log(f"edgecls: the taught version is installed in slot {state['current']['slot']} of {device} "
                 f"(previous: slot {(state.get('previous') or {}).get('slot')}, to go back to)")
        return device / "current"

    def _open(self):
        from edgecls.bundle import load_bundle
        from edgecls.device.teach.command import TeachState

        bundle = load_bundle(self.bundle)
        return bundle, TeachState.of(bundle)

    def _work(self, label: str, photos, capture: int, spec) -> None:
        from edgecls.device.teach.command import TeachRequest, teach

        try:
            if capture:
                photos = self._capture(capture, spec)
                self._set(state="teaching")
            written = teach(TeachRequest(self.bundle, label, photos=photos))
            self._set(state="done", **written, use="/api/teach/use")
            self.log(f"edgecls: the web page taught {label!r}: {written['bundle']} (exam {written['exam']}); "
                     f"`run` keeps the version it started with until the page says to run it")
        except Exception as e:   # the thread's end is the reply: every failure is one line on the page
            known = isinstance(e, (OSError, EdgeclsError))
            code, reason = disk_fault(e) if known else (500, f"{type(e).__name__}: {e}")
            self._set(state="failed", code=code, error=reason)
            if code >= 500:
                self.log(f"edgecls: warning: the web page could not teach {label!r}: {reason}")
        finally:
            self._done.set()

    def _set(self, **changes) -> None:
        with self._lock:
            self._job = {**self._job, **changes}

    def _capture(self, count: int, spec):
        """The next `count` live frames, prepared as `teach --source CAMERA` prepares them."""
        from edgecls.device.teach.photos import from_frames

        return from_frames(self._live_frames(count), spec, count, every=1)

    def _live_frames(self, count: int):
        seen, deadline = None, time.monotonic() + 10.0 + count * CAPTURE_GAP_S * 4
        while time.monotonic() < deadline:
            frame = self.ui.frame
            if frame is not None and frame.index != seen:
                seen = frame.index
                self._set(captured=self.state().get("captured", 0) + 1)
                yield frame
                time.sleep(CAPTURE_GAP_S)
            else:
                time.sleep(0.02)
        raise EdgeclsError("the camera gave no new frames to teach from: nothing was taught")


def _fields(body: dict) -> tuple[str, list[str], int]:
    label, names, capture = body.get("label"), body.get("names"), body.get("capture")
    if not isinstance(label, str):
        raise BadRequest(400, "missing 'label' (the new class's name)")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                              or len(names) > MAX_NAMES):
        raise BadRequest(400, f"'names' must be a list of at most {MAX_NAMES} kept frames' names")
    if capture is not None and (isinstance(capture, bool) or not isinstance(capture, int)
                                or not 1 <= capture <= MAX_CAPTURE):
        raise BadRequest(400, f"'capture' must be a number of frames from 1 to {MAX_CAPTURE}")
    if bool(names) == bool(capture):
        raise BadRequest(400, "no photos: select kept frames (names) or give a number of live frames (capture) — "
                              "one of the two")
    return label, names or [], capture or 0


def _kept_photos(bundle, paths: list[Path]):
    """The kept frames, decoded and prepared now: a corrupt one is refused before anything runs."""
    from edgecls.device.teach.photos import from_files

    return from_files(paths, bundle.spec, len(paths))
