"""CLI commands of this stage (registered by edgecls.cli): eval, run, bench, doctor, verify.

Heavy imports (OpenCV video, runtimes) happen inside the functions, and nothing here imports TensorFlow.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from edgecls.errors import EdgeclsError
from edgecls.formats import FAMILIES, PRECISIONS


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EdgeclsError(f"bad --resolution {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from None
    if w <= 0 or h <= 0:
        raise EdgeclsError(f"bad --resolution {text!r}")
    return w, h


def _check_choice(value: str | None, choices, flag: str) -> None:
    if value is not None and value not in choices:
        raise EdgeclsError(f"{flag} must be one of {', '.join(choices)} (got {value!r})")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(
    bundle: Path = typer.Argument(..., help="Bundle folder from `edgecls export` (holds edgecls.json)."),
    source_arg: Optional[str] = typer.Argument(None, metavar="[SOURCE]", help="Same as --source."),
    source_opt: Optional[str] = typer.Option(None, "--source", "-s", help="picam:[N] | csi://N | /dev/videoN | usb:N | "
                                             "rtsp://… | http://… | video file | image file | folder | glob"),
    format: Optional[str] = typer.Option(None, "--format", help=f"Model family: {'|'.join(FAMILIES)} "
                                                               "(default: the bundle's recommended artifact)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="int8|float"),
    threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads (default: all cores)."),
    top_k: int = typer.Option(3, "--top-k", help="How many classes to report per frame."),
    smooth: int = typer.Option(1, "--smooth", help="Average probabilities over the last N frames."),
    threshold: float = typer.Option(0.0, "--threshold", help="Below this top-1 probability report 'uncertain'."),
    headless: bool = typer.Option(False, "--headless", help="No window: one console line per result."),
    json_lines: bool = typer.Option(False, "--json", help="One JSON line per frame on stdout, then a summary line."),
    stream: Optional[int] = typer.Option(None, "--stream", help="Serve the annotated video as MJPEG on this port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address for --stream/--ui/--metrics (0.0.0.0 = every "
                                    "interface; then only with the token: EDGECLS_TOKEN, or the link printed)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write the annotated video to this file (.mp4/.avi)."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="Camera capture size, e.g. 1280x720."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Camera capture rate."),
    flip: str = typer.Option("none", "--flip", help="none|h|v|both"),
    rotate: int = typer.Option(0, "--rotate", help="0|90|180|270 (clockwise)"),
    loop: bool = typer.Option(False, "--loop", help="Files, folders: start again when exhausted."),
    realtime: bool = typer.Option(False, "--realtime", help="Files, folders: play at their own rate (a video's "
                                  "fps; a folder's --fps, else 30), as a camera would."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after this many results."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the bundle's self-test at start-up."),
    # Events (device/events.py) and where they go: any of these turns the event model on.
    on: Optional[float] = typer.Option(None, "--on", help="A class enters at this probability or more (default 0.8)."),
    off: Optional[float] = typer.Option(None, "--off", help="…and leaves below this one (default 0.6; < --on)."),
    min_dwell: float = typer.Option(0.0, "--min-dwell", help="Seconds a change must hold before its event fires."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Watch only these labels, e.g. a,b (or 'uncertain')."),
    events: bool = typer.Option(False, "--events", help="Event lines in --json ({\"event\": \"enter\", …})."),
    mqtt: Optional[str] = typer.Option(None, "--mqtt", help="Publish events to mqtt://HOST[:PORT]/TOPIC "
                                        "(mqtts:// for TLS; USER@HOST to log in, the password from "
                                        "EDGECLS_MQTT_PASSWORD or --mqtt-password-file)."),
    mqtt_password_file: Optional[str] = typer.Option(None, "--mqtt-password-file", help="File holding the broker "
                                                     "password (chmod 600); never put it in the URL."),
    mqtt_qos: int = typer.Option(0, "--mqtt-qos", help="0|1|2"),
    mqtt_retain: bool = typer.Option(False, "--mqtt-retain", help="Retain the event and state messages."),
    mqtt_ca: Optional[str] = typer.Option(None, "--mqtt-ca", help="CA certificate file for mqtts://."),
    mqtt_state_interval: float = typer.Option(0.0, "--mqtt-state-interval",
                                              help="Also publish the state on TOPIC/state every N s (0: off)."),
    webhook: Optional[str] = typer.Option(None, "--webhook", help="POST each event as JSON to this http(s) URL."),
    webhook_secret: Optional[str] = typer.Option(None, "--webhook-secret", hidden=True,
                                                 help="Refused: the command line is readable by every user."),
    webhook_secret_file: Optional[str] = typer.Option(None, "--webhook-secret-file", help="File holding the "
                                                      "signing secret (chmod 600), or EDGECLS_WEBHOOK_SECRET."),
    webhook_timeout: float = typer.Option(5.0, "--webhook-timeout", help="Seconds per webhook attempt."),
    gpio: Optional[str] = typer.Option(None, "--gpio", help="LABEL=PIN[,LABEL=PIN…]: pin HIGH while the class is in."),
    gpio_pulse: Optional[float] = typer.Option(None, "--gpio-pulse", help="Pulse the pin N s per enter instead."),
    metrics: Optional[int] = typer.Option(None, "--metrics", help="Serve Prometheus /metrics on this port (--host)."),
    # Keeping frames to label, and the web page (device/labelling.py).
    keep: Optional[Path] = typer.Option(None, "--keep", help="Keep frames worth labelling here, with a sidecar each."),
    keep_policy: Optional[str] = typer.Option(None, "--keep-policy", help="uncertain|random|disagree (default uncertain; disagree needs --shadow)."),
    keep_rate: Optional[float] = typer.Option(None, "--keep-rate", help="At most this many kept frames a second (1)."),
    keep_max_mb: Optional[float] = typer.Option(None, "--keep-max-mb", help="Disk budget of --keep in MB (500)."),
    keep_below: Optional[float] = typer.Option(None, "--keep-below", help="uncertain: top-1 below this (0.6)."),
    keep_chance: Optional[float] = typer.Option(None, "--keep-chance", help="random: each frame with this "
                                                "probability (0.05)."),
    ui: Optional[int] = typer.Option(None, "--ui", help="Serve the web page on this port (--host): stream, top-k, "
                                     "events, kept frames to label."),
    data: Optional[Path] = typer.Option(None, "--data", help="With --ui: the training folder the page files "
                                        "photos into (DATA_DIR/<class>/)."),
    shadow_every: Optional[str] = typer.Option(None, "--shadow", metavar="N", help="Every Nth frame also through the "
                                               "float model, on a worker thread: live int8-vs-float agreement, drift."),
    shadow_priority: str = typer.Option("idle", "--shadow-priority", help="idle: the shadow only uses CPU nothing else "
                                        "wants (skips frames on a busy CPU); normal: it takes its share."),
    # Fleet updates (docs/fleet.md): BUNDLE is DEVICE_DIR/current of `edgecls update --device-dir DEVICE_DIR`.
    updates_url: Optional[str] = typer.Option(None, "--updates", help="Poll this signed update repository and "
                                              "swap in a newer bundle that passes its checks and a canary."),
    update_interval: float = typer.Option(300.0, "--update-interval", help="Seconds between polls (--updates)."),
    canary_frames: int = typer.Option(200, "--canary-frames", help="Live frames a new bundle is judged on."),
    update_topic: str = typer.Option("edgecls/updates", "--update-topic", help="With --mqtt: a message here "
                                     "(`edgecls publish --notify`) polls at once."),
):
    """Classify a camera, stream, video or folder live: source → model → outputs."""
    from edgecls.device.classifier import Classifier
    from edgecls.device.events import EventOptions, open_events
    from edgecls.device.frame import Orientation
    from edgecls.device.labelling import LabellingOptions, open_labelling
    from edgecls.device.outputs import StreamOutput, open_output, parse_host_port
    from edgecls.device.pipeline import run_pipeline
    from edgecls.device.shadow import ShadowCheck, parse_every
    from edgecls.device.sources import SourceOptions, open_source
    from edgecls.httpauth import announce as announce_token

    if (source_arg is None) == (source_opt is None):
        raise EdgeclsError("give the source once: edgecls run BUNDLE --source SOURCE")
    source = source_opt or source_arg
    _check_choice(format, FAMILIES, "--format")
    _check_choice(precision, PRECISIONS, "--precision")
    for flag, value in (("--threads", threads), ("--max-frames", max_frames), ("--top-k", top_k)):
        if value is not None and value < 1:
            raise EdgeclsError(f"{flag} must be at least 1")
    if fps is not None and fps <= 0:
        raise EdgeclsError("--fps must be positive")
    every = None if shadow_every is None else parse_every(shadow_every)
    opts = SourceOptions(size=_parse_size(resolution), fps=fps, orientation=Orientation(flip, rotate), loop=loop,
                         realtime=realtime)
    from edgecls.fleet.live import exam_failed, open_updates, starting
    starting(bundle, _err)   # in a device folder: a crash loop goes back to the previous bundle

    def open_net(path):
        n = Classifier(path, format, precision, threads=threads, top_k=top_k, smooth=smooth, threshold=threshold)
        return n, None if every is None else ShadowCheck(n.bundle, n.artifact_key, every, shadow_priority)

    net, shadow = open_net(bundle)
    opts.model_input = (net.spec.width, net.spec.height)   # cameras that scale in hardware: a frame near it
    from edgecls.device.verify import ExamFailed, SelfTest, startup_exam   # before the source opens: a failing
                                                                         # bundle never touches the camera
    try:
        self_test = (SelfTest("", {"passed": None, "skipped": "--no-verify"}) if no_verify
                     else startup_exam(net.bundle, net.model, threads=threads))
    except ExamFailed as e:
        exam_failed(bundle, str(e), _err)
        raise
    updates = open_updates(bundle, updates_url, open_net, net.labels, format, update_interval, canary_frames,
                           json_lines, _err, data)
    for note in shadow.notes if shadow else ():
        _err(f"edgecls: note: {note}")
    # Checked and bound (ports, pins) before the camera opens: bad input never touches the source.
    event_out = open_events(EventOptions(
        on=on, off=off, min_dwell=min_dwell, classes=classes, events=events, mqtt=mqtt, mqtt_qos=mqtt_qos,
        mqtt_retain=mqtt_retain, mqtt_ca=mqtt_ca, mqtt_state_interval=mqtt_state_interval, webhook=webhook,
        webhook_secret=webhook_secret, webhook_timeout=webhook_timeout, mqtt_password_file=mqtt_password_file,
        webhook_secret_file=webhook_secret_file, gpio=gpio, gpio_pulse=gpio_pulse,
        metrics=metrics, host=host), net, json_lines, log=_err)
    extra = [event_out] if event_out else []
    if updates is not None and event_out is not None:
        updates.attach_sinks(event_out.sinks, update_topic)
    try:
        if stream is not None:   # its port too is bound before the camera opens
            extra.insert(0, StreamOutput(*parse_host_port(f"{host}:{stream}"), log=_err))
        extra += open_labelling(LabellingOptions(keep, keep_policy, keep_rate, keep_max_mb, keep_below, keep_chance,
                                                 ui, data, host), net, event_out, log=_err, shadow=shadow)
        src = open_source(source, opts)
        announce_token(_err)   # the servers are bound: the token line, once (edgecls/httpauth.py)
    except BaseException:
        for o in extra:
            o.close()
        raise
    try:
        for o in extra:
            o.attach_source(src, fps)
        output = open_output(json_lines=json_lines, headless=headless, every_frame=not src.live,
                             save=str(save) if save else None,
                             save_fps=getattr(src, "fps", None) or fps or 30.0, log=_err, extra=extra)
    except BaseException:
        src.close()
        raise
    if not json_lines:
        _err(f"edgecls: {src.name} → {net.artifact_key} ({net.model.runtime}, {', '.join(net.model.providers)})")
        if getattr(src, "delivers", ""):
            _err(f"edgecls: {src.delivers}")
        if self_test.line:
            _err(self_test.line)
    summary = run_pipeline(src, net, output, max_frames=max_frames, shadow=shadow, updates=updates)
    if shadow is not None and not json_lines:
        _err(f"edgecls: {shadow.summary_text()}")
    if json_lines:
        print(json.dumps({"summary": {**summary, "self_test": self_test.record}}, allow_nan=False), flush=True)
    else:
        _err(f"edgecls: {summary['frames']} frames, {summary['fps']:.1f} FPS, latency p50 "
             f"{summary['latency_ms_p50']:.1f} ms, p95 {summary['latency_ms_p95']:.1f} ms "
             f"(stopped: {summary['stopped_by']})")


def bench(
    bundle: Path = typer.Argument(..., help="Bundle folder from `edgecls export`."),
    threads: str = typer.Option("1,2", "--threads", help="Comma-separated thread counts to try."),
    runs: int = typer.Option(50, "--runs", help="Timed calls per row."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed calls first."),
    formats: Optional[str] = typer.Option(None, "--formats", help="Only these artifacts, e.g. tflite-int8,tflite-float."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
):
    """Latency (median, p95) and throughput of each artifact × thread count, with the bundle's accuracy."""
    from edgecls.bundle import load_bundle
    from edgecls.device.bench import bench_bundle, format_table
    from edgecls.formats import BY_KEY
    from edgecls.progress import progress_bar

    try:
        thread_list = [int(t) for t in threads.split(",") if t.strip()]
    except ValueError:
        raise EdgeclsError(f"bad --threads {threads!r}: expected e.g. 1,2,4") from None
    if not thread_list or min(thread_list) < 1:
        raise EdgeclsError("--threads needs positive numbers, e.g. 1,2")
    if runs < 1 or warmup < 0:
        raise EdgeclsError("--runs must be at least 1 and --warmup at least 0")
    keys = [k.strip() for k in formats.split(",")] if formats else None
    for k in keys or []:
        _check_choice(k, list(BY_KEY), "--formats")
    b = load_bundle(bundle)
    with progress_bar("benchmarking", quiet=json_out) as bar:
        rows = bench_bundle(b, thread_list, runs=runs, warmup=warmup, keys=keys, progress=bar.update)
    if not rows:
        raise EdgeclsError(f"bundle {bundle} has none of the requested artifacts")
    if json_out:
        print(json.dumps({"bundle": str(bundle), "rows": rows}, indent=2))
    else:
        print(format_table(rows))


def doctor(json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON.")):
    """What this machine has for running a bundle (runtimes, OpenCV, cameras) and what to install."""
    from edgecls.device.doctor import format_report, run_checks

    checks = run_checks()
    if json_out:
        print(json.dumps({"checks": checks}, indent=2))
    else:
        print(format_report(checks))


def eval_command(
    bundle: Path = typer.Argument(..., help="Bundle folder (written by `edgecls export`)."),
    data_dir: Path = typer.Argument(..., help="Image folder: DATA_DIR/<class>/<image>, classes = the bundle's labels."),
    format: Optional[str] = typer.Option(None, "--format", help="Only this family: tflite or onnx (default: all)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Only this precision: int8 or float (default: all)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads (default: all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable results (per-image predictions)."),
):
    """Rerun the float-vs-int8 parity table on any image folder, with the device runtime only (no TensorFlow)."""
    from edgecls.device.evaluate import evaluate, table
    from edgecls.progress import wide_console

    if format is not None and format not in FAMILIES:
        raise EdgeclsError(f"unknown --format {format!r}; expected one of {', '.join(FAMILIES)}")
    if precision is not None and precision not in PRECISIONS:
        raise EdgeclsError(f"unknown --precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    out = evaluate(str(bundle), str(data_dir), format, precision, threads, show_progress=not as_json)
    if as_json:
        typer.echo(json.dumps(out))
        return
    rows = out["artifacts"]
    sizes = {k: v["bytes"] for k, v in rows.items()}
    wide_console().print(table(rows, out["reference"], sizes, reference_accuracy=out["reference_accuracy"],
                               title=f"{len(out['files'])} images from {out['data']} — top-1 vs the bundle's float model"))
    if out["skipped"]:
        typer.echo(f"skipped {len(out['skipped'])} file(s) that are not readable images", err=True)


def verify(
    bundle: Path = typer.Argument(..., help="Bundle folder from `edgecls export`."),
    format: Optional[str] = typer.Option(None, "--format", help="Only this family: tflite or onnx (default: all)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Only this precision: int8 or float (default: all)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads (default: all cores)."),
    json_out: bool = typer.Option(False, "--json", help="Print the exam as JSON."),
):
    """Run the bundle's own exam with this machine's runtime: exit 0 pass, 1 fail, 2 unusable bundle."""
    from edgecls.bundle import load_bundle
    from edgecls.device.verify import ExamFailed, format_exam
    from edgecls.device.verify import verify as run_verify

    _check_choice(format, FAMILIES, "--format")
    _check_choice(precision, PRECISIONS, "--precision")
    if threads is not None and threads < 1:
        raise EdgeclsError("--threads must be at least 1")
    b = load_bundle(bundle)
    exam = run_verify(b, b.select(format, precision), threads)
    print(json.dumps(exam.to_dict(), indent=2, allow_nan=False) if json_out else format_exam(exam), flush=True)
    if not exam.passed:
        raise ExamFailed(exam.reason)


def register(app) -> None:
    app.command("verify")(verify)
    app.command("eval")(eval_command)
    app.command("run")(run)
    app.command("bench")(bench)
    app.command("doctor")(doctor)
    from edgecls.device.labelling import collect_command, ui_command
    app.command("collect")(collect_command)
    app.command("ui")(ui_command)
