"""The way back from the device to the training folder: the `run` flags --keep … and --ui, built here (the
commands `edgecls collect` and `edgecls ui` are in device/commands.py). Nothing here imports TensorFlow.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.httpauth import DEFAULT_BIND


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
    host: str = DEFAULT_BIND

    # The keep settings' defaults, the only place they are written (--help and KeepOutput read them here).
    DEFAULTS = {"keep_policy": "uncertain", "keep_rate": 1.0, "keep_max_mb": 500.0, "keep_below": 0.6,
                "keep_chance": 0.05}

    def keep_settings(self) -> dict:
        """The keep settings, each given or its default, named as KeepOutput takes them (policy, rate, …)."""
        return {key.removeprefix("keep_"): self.DEFAULTS[key] if getattr(self, key) is None else getattr(self, key)
                for key in self.DEFAULTS}

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
    from edgecls.device.data.keep import KeepOutput
    from edgecls.device.data.webui import UiEventSink, UiOutput, WebUi
    from edgecls.device.teach.page import TeachPage

    opts.check()
    outs = []
    try:
        if opts.keep is not None:
            outs.append(KeepOutput(opts.keep, net, **opts.keep_settings(), log=log, shadow=shadow is not None))
        if opts.ui is not None:
            ui = WebUi(opts.host, opts.ui, net.labels, opts.data, opts.keep, live=True, log=log)
            ui.teacher = TeachPage(net.bundle.root, ui, log)   # "teach as a new class" (device/teach/page.py)
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
    temporary files and sidecars without photos (device/data/photos.py: clean_leftovers). The page's own folders
    only, after WebUi checked them (a class folder that is a symlink is not followed)."""
    from edgecls.device.data.photos import clean_at_start

    folders = [ui.keep_dir] if ui.keep_dir is not None else []
    if ui.data_dir is not None:
        folders += [d for d in (ui.data_dir / lab for lab in ui.labels) if d.is_dir() and not d.is_symlink()]
    clean_at_start(folders, log)
