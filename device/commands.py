"""CLI commands of this stage (registered by edgecls.cli): eval, run, bench, doctor, verify, collect, ui.

Heavy imports (OpenCV video, runtimes) happen inside the functions, and nothing here imports TensorFlow.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from edgecls.device.data.collect import CollectOptions
from edgecls.device.run_options import (EVENTS, KEEP, MODEL, OUTPUTS, SHADOW, SOURCE, UPDATES, check_choice,
                                        source_options, with_groups)
from edgecls.errors import EdgeclsError
from edgecls.formats import FAMILIES, PRECISIONS
from edgecls.httpauth import DEFAULT_BIND


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@with_groups(SOURCE, MODEL, OUTPUTS, EVENTS, KEEP, SHADOW, UPDATES)
def run(
    ctx: typer.Context,
    bundle: Optional[Path] = typer.Argument(None, help="Bundle folder from `edgecls export` (holds edgecls.json), "
                                            "or `bundle` in the config file's model section."),
    source_arg: Optional[str] = typer.Argument(None, metavar="[SOURCE]", help="Same as --source."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of these options: a section per panel "
                                          "below, keys the flags without -- (docs/device.md); flags given win."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the effective settings (the config "
                                      "file, then the flags over it; secrets redacted) and exit."),
    **given,
):
    """Classify a camera, stream, video or folder live: source → model → outputs."""
    from edgecls.device import run_config
    from edgecls.device.live import run_live
    from edgecls.device.run_options import RunSettings

    cfg = run_config.load(config)
    taken = run_config.merge(ctx, cfg, given)
    if source_arg is not None:   # the positional SOURCE is a flag given here: it wins over the file
        if given["source"] is not None and "source" not in taken:
            raise EdgeclsError("give the source once: edgecls run BUNDLE --source SOURCE")
        given["source"], taken = source_arg, taken - {"source"}
    bundle = bundle if bundle is not None else cfg.values.get("bundle")
    if print_config:
        print(run_config.to_toml({**given, "bundle": bundle}, cfg), end="", flush=True)
        return
    for what, value in (("bundle", bundle), ("source once", given["source"])):
        if value is None:
            raise EdgeclsError(f"give the {what}: edgecls run BUNDLE --source SOURCE (or in --config FILE)")
    try:
        run_config.hand_over_secrets(cfg, given)
        run_live(RunSettings.of(bundle, given["source"], given))
    except EdgeclsError as e:
        run_config.attribute(e, cfg, taken)
        raise


@with_groups(SOURCE)
def collect_command(
    data_dir: Path = typer.Argument(..., help="Training folder: photos go to DATA_DIR/LABEL/."),
    label: str = typer.Option(..., "--label", "-l", help="The class of what the camera sees (a folder name)."),
    every: float = typer.Option(CollectOptions.every, "--every", help="Seconds between photos (files: their own "
                                "time). 0: every frame."),
    count: Optional[int] = typer.Option(CollectOptions.count, "--count", "-n", help="Stop after this many photos."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    **source_values,
):
    """Save photos from the device's camera (or any source) into DATA_DIR/LABEL/, with a JSON sidecar each."""
    from edgecls.device.data.collect import check_collect, collect, made_only_if_used
    from edgecls.device.data.photos import check_label
    from edgecls.device.capture.sources import open_source

    opts = CollectOptions(every=every, count=count)
    check_label(label)   # before any path is built from it (a name too long fails even Path.exists())
    if source_values["source"] is None:
        raise EdgeclsError("give the source: edgecls collect DATA_DIR --source SOURCE --label CLASS")
    src_opts = source_options(source_values)
    with made_only_if_used(data_dir, label):
        folder = check_collect(data_dir, label, opts)
        src = open_source(source_values["source"], src_opts)
    summary = collect(src, folder, label, opts, src_opts, log=(lambda m: None) if json_out else _err)
    if json_out:
        print(json.dumps({"summary": summary}), flush=True)
    else:
        _err(f"edgecls: {summary['saved']} photos in {folder} (stopped: {summary['stopped_by']})")


def ui_command(
    data_dir: Path = typer.Argument(..., help="Training folder: labelled photos go to DATA_DIR/<class>/."),
    keep: Optional[Path] = typer.Option(None, "--keep", help="Folder of kept frames (from `run --keep`) to label."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Classes besides DATA_DIR's folders, e.g. a,b."),
    port: int = typer.Option(8090, "--port", help="Port of the page."),
    host: str = typer.Option(DEFAULT_BIND, "--host", help="Address (0.0.0.0 = every interface, e.g. for a phone: "
                             "then only with the token, EDGECLS_TOKEN or the link printed at start-up)."),
):
    """The labelling page alone: file kept frames into DATA_DIR/<class>/ with one click."""
    import signal
    import threading

    from edgecls.device.data.labelling import clean_page_folders
    from edgecls.device.data.webui import WebUi, labels_of_data_dir
    from edgecls.httpauth import announce as announce_token

    if not 0 <= port < 65536:
        raise EdgeclsError(f"bad --port {port}")
    ui = WebUi(host, port, labels_of_data_dir(data_dir, labels), data_dir, keep, live=False, log=_err)
    clean_page_folders(ui, _err)
    announce_token(_err)   # on a bind other than loopback: the link with the token, once
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        ui.close()


def bench(
    bundle: Path = typer.Argument(..., help="Bundle folder from `edgecls export`."),
    threads: str = typer.Option("1,2", "--threads", help="Comma-separated thread counts to try."),
    runs: int = typer.Option(50, "--runs", help="Timed calls per row."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed calls first."),
    artifacts: Optional[str] = typer.Option(None, "--artifacts", help="Only these artifacts, e.g. "
                                            "tflite-int8,tflite-float."),
    old_formats: Optional[str] = typer.Option(None, "--formats", hidden=True),   # the old name, one release
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
    if old_formats is not None:   # --formats means families everywhere else (export): bench's is --artifacts
        if artifacts is not None:
            raise EdgeclsError("give --artifacts only (--formats is its old name)")
        _err("edgecls: warning: bench --formats is now --artifacts (the old name goes in the next release)")
        artifacts = old_formats
    keys = [k.strip() for k in artifacts.split(",")] if artifacts else None
    for k in keys or []:
        check_choice(k, list(BY_KEY), "--artifacts")
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
    from edgecls.device.evaluate import evaluate, flips_lines, table
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
    for line in flips_lines(rows):   # what the disagreements are (near-ties of the reference cost little)
        typer.echo(line)
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
    from edgecls.device.model.verify import ExamFailed, format_exam
    from edgecls.device.model.verify import verify as run_verify

    check_choice(format, FAMILIES, "--format")
    check_choice(precision, PRECISIONS, "--precision")
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
    app.command("collect")(collect_command)
    app.command("ui")(ui_command)
