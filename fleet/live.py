"""`edgecls run DEVICE_DIR/current --updates URL`: updates while the camera keeps classifying.

A worker thread polls the repository (every `interval_s`; after a failure it backs off, doubling up to
MAX_BACKOFF_S; `wake()` — the MQTT notify topic — polls at once). A release that passes every check of
`edgecls update` (fleet/update.py: stage) becomes a canary on live frames (fleet/canary.py). If the canary
promotes it, it is installed into the free slot, its classifier is opened on the worker thread, and the live loop
takes it between two frames (`swap`): no frame is dropped or classified twice, and the camera never stops.
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Callable

from edgecls.errors import EdgeclsError
from edgecls.fleet.canary import Canary
from edgecls.fleet.slots import DeviceDir
from edgecls.fleet.update import Outcome, Refused, Staged, install, refuse, stage

MAX_BACKOFF_S = 3600.0
CANARY_FRAMES = 200
CONFIRM_AFTER_FRAMES = 30     # a bundle that classified this many frames after its start-up exam is known good
MAX_UNCONFIRMED_STARTS = 3    # starts that never got there before `run` goes back to the previous slot


def device_dir_of(bundle: Path) -> Path | None:
    """DEVICE_DIR when `bundle` is DEVICE_DIR/current of an `edgecls update` device folder, else None."""
    bundle = Path(bundle)
    return bundle.parent if bundle.name == "current" and (bundle.parent / "state.json").is_file() else None


class LiveUpdates:
    def __init__(self, url: str, device_dir: Path, open_net: Callable[[Path], tuple], labels: list[str],
                 family: str | None, interval_s: float = 300.0, canary_frames: int = CANARY_FRAMES,
                 json_lines: bool = False, log=None, data_dir: Path | None = None):
        """open_net(bundle folder) → (classifier, shadow check or None), opened as the run opened its own."""
        self.url, self.dev, self.open_net, self.family = url, DeviceDir(device_dir), open_net, family
        self.labels, self.json_lines, self.data_dir = list(labels), json_lines, data_dir
        self.wants_restart = False
        self.frames = 0
        self.interval_s, self.canary_frames = interval_s, canary_frames
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.checks = self.promoted = self.refused = 0
        self.last: dict = {}
        self._canary: Canary | None = None
        self._ready: tuple | None = None
        self._swapped = threading.Event()
        self._wake, self._stop = threading.Event(), threading.Event()
        # Started by the loop's first frame: a run that fails while it sets up leaves no thread behind.
        self._thread = threading.Thread(target=self._work, name="edgecls-updates", daemon=True)
        self._reporters: list = []

    def attach_sinks(self, sinks: list, notify_topic: str) -> None:
        """Say what happens through the run's event sinks: a retained TOPIC/update status on MQTT, the version
        and poll outcomes on /metrics; and wake on the MQTT notify topic (`edgecls publish --notify`)."""
        for sink in sinks:
            if hasattr(sink, "listen"):
                sink.listen(notify_topic, lambda _payload: self.wake())
            if hasattr(sink, "announce") or hasattr(sink, "update_status"):
                self._reporters.append(sink)
        self._report(None)

    def _report(self, outcome: str | None) -> None:
        status = self.status()
        for sink in self._reporters:
            try:
                if hasattr(sink, "announce"):
                    sink.announce("update", {k: status[k] for k in ("current", "previous", "last")})
                if hasattr(sink, "update_status"):
                    sink.update_status(outcome, status["current"])
            except Exception as e:   # a report must never stop the updates or the loop
                self.log(f"edgecls: warning: update status not reported to {type(sink).__name__}: {e}")

    # --- the live loop's side (its thread) -----------------------------------------------------------------
    def swap(self, net, shadow, output):
        """Before each frame: (classifier, shadow) of the promoted bundle when one is ready, else the running ones.
        The old shadow's last pairs are handed to the outputs before it goes."""
        if self._thread.ident is None and self.url is not None:
            self._thread.start()
        ready = self._ready
        if ready is None:
            return net, shadow
        self._ready = None
        (new_net, new_shadow), version, verdict = ready
        if shadow is not None:
            output.finish_shadow(shadow.close())
        self.promoted += 1
        self._say({"action": "promoted", "version": version, "before_frame": self.frames,
                   "canary": verdict.figures},
                  f"promoted version {version} ({verdict.reason}); running it from frame {self.frames}")
        self._report("promoted")
        self._swapped.set()
        return new_net, new_shadow

    def offer(self, frame, result) -> None:
        self.frames += 1
        if self.frames == CONFIRM_AFTER_FRAMES:
            self.dev.confirm()
        canary = self._canary
        if canary is not None:
            canary.offer(frame, result.label)

    def _say(self, record: dict, text: str) -> None:
        if self.json_lines:   # on the loop's thread, between two frame lines
            print(json.dumps({"update": record}, allow_nan=False), flush=True)
        self.log(f"edgecls: update: {text}")

    def wake(self) -> None:
        self._wake.set()

    def status(self) -> dict:
        state = self.dev.state()
        return {"current": state.get("current"), "previous": state.get("previous"), "checks": self.checks,
                "promoted": self.promoted, "refused": self.refused, "last": self.last,
                "canary": None if self._canary is None else {"judged": len(self._canary.answers),
                                                             "of": self.canary_frames}}

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(15)

    # --- the worker ----------------------------------------------------------------------------------------
    def _work(self) -> None:
        delay = self.interval_s
        while not self._stop.is_set():
            ok = self._check()
            self._report(self.last.get("action"))
            delay = self.interval_s if ok else min(max(delay, self.interval_s) * 2, MAX_BACKOFF_S)
            self._wake.wait(delay)
            self._wake.clear()

    def _check(self) -> bool:
        """One poll; False when the repository could not be read (back off)."""
        self.checks += 1
        try:
            staged = stage(self.url, self.dev)
        except EdgeclsError as e:
            staged = Outcome("refused", reason=str(e))
        if isinstance(staged, Outcome):
            self.last = staged.to_dict()
            if staged.action == "refused":
                self.refused += 1
                self.log(f"edgecls: update refused: {staged.reason}")
            return staged.action != "refused" or staged.version is not None
        return self._try(staged)

    def _try(self, staged: Staged) -> bool:
        version = staged.release.version
        self.log(f"edgecls: update: version {version} passed its checks here; canary on {self.canary_frames} "
                 "distinct live frames")
        try:
            canary = Canary(staged.folder, self.family, self.canary_frames,
                            staged.release.min_agreement_with_current)
        except EdgeclsError as e:
            return self._reject(staged, f"its model cannot run beside the live one: {e}")
        self._canary = canary
        while not canary.done.wait(0.2):
            if self._stop.is_set():
                break
        self._canary = None
        canary.close()
        verdict = canary.verdict()
        if verdict.promote and not self._stop.is_set():
            verdict = self._on_labelled_photos(canary, verdict)
        if not verdict.promote:
            return self._reject(staged, f"canary: {verdict.reason}")
        same_labels = self._labels_of(staged) == self.labels
        outcome = install(self.dev, staged)
        self.last = {**outcome.to_dict(), "canary": verdict.figures}
        if outcome.action != "installed":
            self.refused += 1
            self.log(f"edgecls: update refused: {outcome.reason}")
            return True
        if not same_labels:   # events, keep and the page were built for the running labels
            self.log(f"edgecls: update: version {version} has other labels: installed; the loop stops so that a "
                     "service manager starts it again on them")
            self.wants_restart = True
            return True
        try:
            self._ready = (self.open_net(self.dev.current_bundle()), version, verdict)
        except EdgeclsError as e:
            self.log(f"edgecls: update: version {version} installed but cannot be opened here ({e}): it runs "
                     "at the next start")
            return True
        while not self._swapped.wait(0.2) and not self._stop.is_set():
            pass
        self._swapped.clear()
        return True

    def _on_labelled_photos(self, canary: Canary, verdict):
        """Rule (c) after the live frames: the photos filed on this device (`--data`), candidate vs running."""
        from edgecls.device.model.classifier import Classifier
        from edgecls.fleet.canary import Verdict, labelled_verdict

        try:
            current = Classifier(self.dev.current_bundle(), self.family, "int8" if self.family else None, threads=1)
            labelled = labelled_verdict(canary.net, current, self.data_dir)
        except EdgeclsError as e:
            return Verdict(False, f"the labelled photos could not be judged: {e}", verdict.figures)
        if labelled is None:
            return verdict
        return Verdict(labelled.promote, labelled.reason if not labelled.promote else f"{verdict.reason}; "
                       f"{labelled.reason}", {**verdict.figures, **labelled.figures})

    @staticmethod
    def _labels_of(staged: Staged) -> list[str]:
        from edgecls.bundle import load_bundle

        return list(load_bundle(staged.folder).labels)

    def _reject(self, staged: Staged, reason: str) -> bool:
        if self._stop.is_set():
            staged.discard()
            return True
        self.refused += 1
        self.last = refuse(self.dev, staged.release, Refused(reason, final=True)).to_dict()
        staged.discard()
        self.log(f"edgecls: update refused: version {staged.release.version}: {reason}")
        return True


def open_updates(bundle: Path, url: str | None, open_net, labels, family, interval_s: float, canary_frames: int,
                 json_lines: bool, log, data_dir: Path | None = None) -> LiveUpdates | None:
    """`run`'s side of a device folder: with --updates, poll; with or without, confirm the current bundle once it has
    classified CONFIRM_AFTER_FRAMES frames (see `starting`). None outside a device folder; EdgeclsError for
    --updates there."""
    dev_path = device_dir_of(bundle)
    if dev_path is None:
        if url is not None:
            raise EdgeclsError(f"--updates installs into a device folder: run DEVICE_DIR/current (made by "
                               f"`edgecls update URL --device-dir DEVICE_DIR --root 1.root.json`), not {bundle}")
        return None
    if url is None:   # no polling; the loop still confirms the current bundle once it has classified
        return LiveUpdates(None, dev_path, open_net, labels, family, json_lines=json_lines, log=log)
    if not url.startswith(("http://", "https://", "file://")):
        raise EdgeclsError(f"--updates takes the repository's http(s):// or file:// URL (got {url!r})")
    if not (interval_s > 0 and canary_frames >= 1):
        raise EdgeclsError("--update-interval must be positive and --canary-frames at least 1")
    return LiveUpdates(url, dev_path, open_net, labels, family, interval_s, canary_frames, json_lines, log, data_dir)


def starting(bundle: Path, log) -> None:
    """Before `run` opens a bundle in a device folder: count this start; after MAX_UNCONFIRMED_STARTS starts that
    never classified (a crash loop) the previous slot runs instead, and the link `bundle` already names it."""
    dev_path = device_dir_of(bundle)
    if dev_path is None:
        return
    dev = DeviceDir(dev_path)
    dev.repair()
    reverted = dev.starting(MAX_UNCONFIRMED_STARTS)
    if reverted:
        log(f"edgecls: update: {reverted['last_result']}; running version {reverted['current']['version']}")


def exam_failed(bundle: Path, reason: str, log) -> bool:
    """The start-up exam of a device folder's current bundle failed: go back to the previous one. True when it did
    (the next start runs it)."""
    dev_path = device_dir_of(bundle)
    if dev_path is None:
        return False
    reverted = DeviceDir(dev_path).revert(f"it failed its start-up exam: {reason}")
    if reverted:
        log(f"edgecls: update: went back to version {reverted['current']['version']}: the current bundle failed "
            "its start-up exam")
    return reverted is not None


def start_failed(bundle: Path, reason: str, log) -> None:
    """A version `run` switched to (the page's "Run it now") could not start: in a device folder, its slot stops
    being current and the one before runs again (a no-op when its start-up exam already went back)."""
    dev_path = device_dir_of(bundle)
    if dev_path is None:
        return
    dev = DeviceDir(dev_path)
    with dev.locked():   # the check and the revert as one step: an update may install between them otherwise
        if (dev.state().get("current") or {}).get("confirmed"):
            return
        reverted = dev.revert(f"it could not start: {reason}")
    if reverted:
        log(f"edgecls: went back to slot {reverted['current']['slot']} of {dev_path}: the version switched to "
            "could not start")
