"""The way back from the device to the training folder: `edgecls collect`, `edgecls ui`, and the `run` flags
--keep … and --ui (built here, so device/commands.py only passes them on). Nothing here imports TensorFlow.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from edgecls.errors import EdgeclsError


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class LabellingOptions:
    """The `run` flags of this module."""
    keep: Path | None = None
    keep_policy: str | None = None     # None: the defaults below (given without --keep is an error)
    keep_rate: float | None = None
    keep_max_mb: float | None = None
    keep_below: float | None = None
    keep_chance: float | None = None
    ui: int | None = None
    data: Path | None = None
    host: str = "127.0.0.1"

    DEFAULTS = {"keep_policy": "uncertain", "keep_rate": 1.0, "keep_max_mb": 500.0, "keep_below": 0.6,
                "keep_chance": 0.05}

    def check(self) -> None:
        for key in self.DEFAULTS:
            if getattr(self, key) is not None and self.keep is None:  # a flag that would silently do nothing
                raise EdgeclsError(f"--{key.replace('_', '-')} needs --keep DIR")
        if self.data is not None and self.ui is None:
            raise EdgeclsError("--data needs --ui PORT (it is where the page files photos)")
        if self.ui is not None and not 0 <= self.ui < 65536:
            raise EdgeclsError(f"bad --ui port {self.ui}")


def open_labelling(opts: LabellingOptions, net, event_out=None, log=_err, shadow=None) -> list:
    """The keep and web-page outputs the flags ask for (checked, folders made, port bound: before the camera
    opens). The page shows the recent events when `event_out` (the event model) is on."""
    from edgecls.device.keep import KeepOutput
    from edgecls.device.webui import UiEventSink, UiOutput, WebUi

    opts.check()
    outs = []
    try:
        if opts.keep is not None:
            k = {key: opts.DEFAULTS[key] if getattr(opts, key) is None else getattr(opts, key) for key in opts.DEFAULTS}
            outs.append(KeepOutput(opts.keep, k["keep_policy"], net, rate=k["keep_rate"], max_mb=k["keep_max_mb"],
                                   below=k["keep_below"], chance=k["keep_chance"], log=log,
                                   shadow=shadow is not None))
        if opts.ui is not None:
            ui = WebUi(opts.host, opts.ui, net.labels, opts.data, opts.keep, live=True, log=log)
            clean_page_folders(ui, log)
            if outs:
                ui.extra_status = lambda: outs[0].summary()["keep"]
            if event_out is not None:
                event_out.sinks.append(UiEventSink(ui))
            outs.append(UiOutput(ui))
    except BaseException:
        for o in outs:
            o.close()
        raise
    return outs


def clean_page_folders(ui, log) -> None:
    """What killed processes left where the page files photos (the keep folder, each DATA_DIR/<class>): their
    temporary files and sidecars without photos (device/photos.py: clean_leftovers). The page's own folders
    only, after WebUi checked them (a class folder that is a symlink is not followed)."""
    from edgecls.device.photos import clean_at_start

    folders = [ui.keep_dir] if ui.keep_dir is not None else []
    if ui.data_dir is not None:
        folders += [d for d in (ui.data_dir / lab for lab in ui.labels) if d.is_dir() and not d.is_symlink()]
    clean_at_start(folders, log)


def collect_command(
    data_dir: Path = typer.Argument(..., help="Training folder: photos go to DATA_DIR/LABEL/."),
    source: str = typer.Option(..., "--source", "-s", help="Any source `edgecls run` accepts (camera, stream, "
                                                            "video file, folder)."),
    label: str = typer.Option(..., "--label", "-l", help="The class of what the camera sees (a folder name)."),
    every: float = typer.Option(0.0, "--every", help="Seconds between photos (files: their own time). 0: every frame."),
    count: Optional[int] = typer.Option(None, "--count", "-n", help="Stop after this many photos."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="Camera capture size, e.g. 1920x1080."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Camera capture rate."),
    flip: str = typer.Option("none", "--flip", help="none|h|v|both"),
    rotate: int = typer.Option(0, "--rotate", help="0|90|180|270 (clockwise)"),
    loop: bool = typer.Option(False, "--loop", help="Files, folders: start again when exhausted."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Save photos from the device's camera (or any source) into DATA_DIR/LABEL/, with a JSON sidecar each."""
    from edgecls.device.collect import CollectOptions, check_collect, collect
    from edgecls.device.commands import _parse_size
    from edgecls.device.photos import check_label
    from edgecls.device.frame import Orientation
    from edgecls.device.sources import SourceOptions, open_source

    opts = CollectOptions(every=every, count=count)
    check_label(label)   # before any path is built from it (a name too long fails even Path.exists())
    if fps is not None and fps <= 0:
        raise EdgeclsError("--fps must be positive")
    src_opts = SourceOptions(size=_parse_size(resolution), fps=fps, orientation=Orientation(flip, rotate), loop=loop)
    with made_only_if_used(data_dir, label):
        folder = check_collect(data_dir, label, opts)
        src = open_source(source, src_opts)
    summary = collect(src, folder, label, opts, src_opts, log=(lambda m: None) if json_out else _err)
    if json_out:
        print(json.dumps({"summary": summary}), flush=True)
    else:
        _err(f"edgecls: {summary['saved']} photos in {folder} (stopped: {summary['stopped_by']})")


@contextlib.contextmanager
def made_only_if_used(data_dir: Path, label: str):
    """The folders `collect` makes before the source opens are removed again if it fails to open (a bad source
    leaves nothing behind); never a folder that was there before, never one with anything in it."""
    fresh = [d for d in (data_dir / label, data_dir) if not d.exists()]
    try:
        yield
    except BaseException:
        for d in fresh:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def ui_command(
    data_dir: Path = typer.Argument(..., help="Training folder: labelled photos go to DATA_DIR/<class>/."),
    keep: Optional[Path] = typer.Option(None, "--keep", help="Folder of kept frames (from `run --keep`) to label."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Classes besides DATA_DIR's folders, e.g. a,b."),
    port: int = typer.Option(8090, "--port", help="Port of the page."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address (0.0.0.0 = every interface, e.g. for a phone: "
                                "then only with the token, EDGECLS_TOKEN or the link printed at start-up)."),
):
    """The labelling page alone: file kept frames into DATA_DIR/<class>/ with one click."""
    from edgecls.device.webui import WebUi, labels_of_data_dir
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
