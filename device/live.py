"""`edgecls run`'s start-up and live loop, from its settings (device/run_options.py: RunSettings): the model and
its exam first, then every output and sink checked and bound, and only then the source — bad input or a failing
bundle never touches the camera. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from edgecls.device.run_options import RunSettings
from edgecls.errors import EdgeclsError


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_live(s: RunSettings) -> None:
    """Open everything in order, run the loop until the source ends (or --max-frames, SIGINT, SIGTERM), report.
    When the page asks to run a version it taught (POST /api/teach/use), the loop ends after its frame and all of
    it starts again on that version, as a restart would; if that version cannot start, the one before goes on."""
    previous = None
    while True:
        try:
            started = _start(s)
        except EdgeclsError as e:
            if previous is None:
                raise
            from edgecls.fleet.live import start_failed

            start_failed(s.bundle, str(e), _err)   # in a device folder: its slot goes back to the one before
            _err(f"edgecls: warning: the taught version {s.bundle} could not start ({e}); going on with {previous}")
            s, previous = dataclasses.replace(s, bundle=previous), None
            continue
        summary = _loop(*started)
        if "switch_to" not in summary:
            return
        previous, s = s.bundle, dataclasses.replace(s, bundle=Path(summary["switch_to"]))
        if s.outputs.json_lines:
            print(json.dumps({"switch": {"from": str(previous), "to": str(s.bundle), "after_frames": summary["frames"]}}),
                  flush=True)
        _err(f"edgecls: switching to the taught version {s.bundle} (asked on the web page) after "
             f"{summary['frames']} frames")


def _start(s: RunSettings):
    """(settings, classifier, shadow, exam, source, outputs, updates): everything opened, in order."""
    from edgecls.device.model.shadow import parse_every
    from edgecls.fleet.live import starting

    every = None if s.shadow.shadow_every is None else parse_every(s.shadow.shadow_every)
    starting(s.bundle, _err)   # in a device folder: a crash loop goes back to the previous bundle
    open_net = _net_opener(s, every)
    net, shadow = open_net(s.bundle)
    if _on_sensor(s):   # the AI Camera: its source is the network file the classifier checked
        s = dataclasses.replace(s, source=net.source_uri)
    s.source_opts.model_input = (net.spec.width, net.spec.height)   # cameras that scale in hardware: near it
    self_test = _startup_exam(s, net)
    src, output, updates = _open_outputs_and_source(s, net, shadow, open_net)
    return s, net, shadow, self_test, src, output, updates


def _loop(s: RunSettings, net, shadow, self_test, src, output, updates) -> dict:
    from edgecls.device.pipeline import run_pipeline

    if not s.outputs.json_lines:
        _err(f"edgecls: {src.name} → {net.artifact_key} ({net.model.runtime}, {', '.join(net.model.providers)})")
        if getattr(src, "delivers", ""):
            _err(f"edgecls: {src.delivers}")
        if self_test.line:
            _err(self_test.line)
    summary = run_pipeline(src, net, output, max_frames=s.outputs.max_frames, shadow=shadow, updates=updates)
    _report(summary, self_test, shadow, s.outputs.json_lines)
    return summary


def _net_opener(s: RunSettings, every: int | None):
    """path -> (Classifier, ShadowCheck or None): the start-up's, and a fleet update's for its new bundle."""
    from edgecls.device.model.classifier import Classifier
    from edgecls.device.model.shadow import ShadowCheck

    m = s.model
    if _on_sensor(s):
        return _sensor_opener(s)

    def open_net(path):
        n = Classifier(path, m.format, m.precision, threads=m.threads, top_k=m.top_k, smooth=m.smooth,
                       threshold=m.threshold)
        return n, None if every is None else ShadowCheck(n.bundle, n.artifact_key, every, s.shadow.shadow_priority)
    return open_net


def _on_sensor(s: RunSettings) -> bool:
    """--source imx500: the network runs on the AI Camera's sensor, and the source says so (never guessed)."""
    from edgecls.device.capture.imx500_camera import is_imx500

    return is_imx500(s.source)


def _sensor_opener(s: RunSettings):
    """path -> (SensorClassifier, None); what needs a model on this CPU is refused first, in one line."""
    from edgecls.device.model.sensor_classifier import SensorClassifier
    from edgecls.errors import EdgeclsError

    cpu_only = [flag for flag, given in (("--format", s.model.format), ("--precision", s.model.precision),
                                         ("--shadow", s.shadow.shadow_every), ("--updates-url", s.updates.updates_url))
                if given is not None]
    if cpu_only:
        raise EdgeclsError(f"{', '.join(cpu_only)} cannot be used with --source imx500: the network runs on the "
                           "camera's sensor, not on this CPU (docs/imx500.md)")
    m = s.model
    return lambda path: (SensorClassifier(path, s.source, top_k=m.top_k, smooth=m.smooth, threshold=m.threshold), None)


def _startup_exam(s: RunSettings, net):
    """The bundle's exam with this machine's runtime, before the source opens (a failed one in a device folder is
    recorded, for going back). On the AI Camera's sensor no exam can be taken: say which one applied instead."""
    from edgecls.device.model.verify import ExamFailed, SelfTest, startup_exam
    from edgecls.fleet.live import exam_failed

    if _on_sensor(s):
        from edgecls.device.capture.imx500_camera import startup_note

        _err(f"edgecls: note: {startup_note(net.bundle.meta)}")
        return SelfTest("", {"passed": None, "skipped": "imx500: the network runs on the camera's sensor"})
    if s.model.no_verify:
        return SelfTest("", {"passed": None, "skipped": "--no-verify"})
    try:
        return startup_exam(net.bundle, net.model, threads=s.model.threads)
    except ExamFailed as e:
        exam_failed(s.bundle, str(e), _err)
        raise


def _open_outputs_and_source(s: RunSettings, net, shadow, open_net):
    """Updates, events, stream, keep and page checked and bound (ports, pins) — then the source, then the outputs
    joined. Whatever was opened is closed again when a later step fails."""
    from edgecls.device.data.labelling import open_labelling
    from edgecls.device.output.outputs import StreamOutput, open_output, parse_host_port
    from edgecls.device.sinks.factory import open_events
    from edgecls.device.capture.sources import open_source
    from edgecls.fleet.live import open_updates
    from edgecls.httpauth import announce as announce_token

    o, u, fps = s.outputs, s.updates, s.source_opts.fps
    updates = open_updates(s.bundle, u.updates_url, open_net, net.labels, s.model.format, u.update_interval,
                           u.canary_frames, o.json_lines, _err, s.labelling.data)
    for note in shadow.notes if shadow else ():
        _err(f"edgecls: note: {note}")
    event_out = open_events(s.events, net, o.json_lines, log=_err)
    extra = [event_out] if event_out else []
    if updates is not None and event_out is not None:
        updates.attach_sinks(event_out.sinks, u.update_topic)
    try:
        if o.stream is not None:   # its port too is bound before the camera opens
            extra.insert(0, StreamOutput(*parse_host_port(f"{o.host}:{o.stream}"), log=_err))
        extra += open_labelling(s.labelling, net, event_out, log=_err, shadow=shadow)
        src = open_source(s.source, s.source_opts)
        announce_token(_err)   # the servers are bound: the token line, once (edgecls/httpauth.py)
    except BaseException:
        for out in extra:
            out.close()
        raise
    try:
        for out in extra:
            out.attach_source(src, fps)
        output = open_output(json_lines=o.json_lines, headless=o.headless, every_frame=not src.live,
                             save=str(o.save) if o.save else None,
                             save_fps=getattr(src, "fps", None) or fps or 30.0, log=_err, extra=extra)
    except BaseException:
        src.close()
        raise
    return src, output, updates


def _report(summary: dict, self_test, shadow, json_lines: bool) -> None:
    if shadow is not None and not json_lines:
        _err(f"edgecls: {shadow.summary_text()}")
    if json_lines:
        print(json.dumps({"summary": {**summary, "self_test": self_test.record}}, allow_nan=False), flush=True)
    else:
        _err(f"edgecls: {summary['frames']} frames, {summary['fps']:.1f} FPS, latency p50 "
             f"{summary['latency_ms_p50']:.1f} ms, p95 {summary['latency_ms_p95']:.1f} ms "
             f"(stopped: {summary['stopped_by']})")
