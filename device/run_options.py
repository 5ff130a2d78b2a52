"""`edgecls run`'s options, in panels by concern, declared once: the command line (typer's `rich_help_panel`),
`--config FILE`'s sections and keys (device/run_config.py) and `--print-config` all read the table below.

Each option's default is read from the dataclass that owns it (SourceOptions, EventOptions, LabellingOptions and
the four small ones here), never written a second time. `collect` takes the source group too (`with_groups`).
Light imports only: this module is imported when the commands are registered.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from edgecls.device.sinks.events import EventOptions
from edgecls.device.capture.frame import Orientation
from edgecls.device.data.labelling import LabellingOptions
from edgecls.device.model.classifier import SMOOTH, THRESHOLD, TOP_K
from edgecls.device.model.shadow import PRIORITY
from edgecls.device.capture.sources import SourceOptions
from edgecls.errors import EdgeclsError
from edgecls.formats import FAMILIES, PRECISIONS
from edgecls.httpauth import DEFAULT_BIND


@dataclass
class ModelOptions:
    format: str | None = None        # None: the bundle's recommended artifact
    precision: str | None = None
    threads: int | None = None       # None: all cores
    top_k: int = TOP_K
    smooth: int = SMOOTH
    threshold: float = THRESHOLD
    no_verify: bool = False

    def check(self) -> None:
        check_choice(self.format, FAMILIES, "--format")
        check_choice(self.precision, PRECISIONS, "--precision")
        for flag, value in (("--threads", self.threads), ("--top-k", self.top_k)):
            if value is not None and value < 1:
                raise EdgeclsError(f"{flag} must be at least 1")


@dataclass
class OutputOptions:
    headless: bool = False
    json_lines: bool = False
    stream: int | None = None
    host: str = DEFAULT_BIND         # --stream, --ui and --metrics bind here
    save: Path | None = None
    max_frames: int | None = None

    def check(self) -> None:
        if self.max_frames is not None and self.max_frames < 1:
            raise EdgeclsError("--max-frames must be at least 1")


@dataclass
class ShadowOptions:
    shadow_every: str | None = None  # --shadow N (parsed by device/model/shadow.py: parse_every)
    shadow_priority: str = PRIORITY


@dataclass
class UpdateOptions:
    updates_url: str | None = None
    update_interval: float = 300.0
    canary_frames: int = 200
    update_topic: str = "edgecls/updates"


@dataclass(frozen=True)
class Opt:
    """One option: its parameter name (= its dataclass field), its flags, what it takes, its default."""
    name: str
    flags: tuple[str, ...]
    kind: type                  # int | float | str | bool | Path, on the command line and in the config file
    default: object
    help: str
    hidden: bool = False
    config_kinds: tuple = ()    # what the config file may give besides `kind` (converted to it)

    @property
    def key(self) -> str:
        """Its key in the config file: the long flag without the dashes."""
        return self.flags[0][2:]

    def typer_option(self):
        return typer.Option(self.default, *self.flags, help=self.help, hidden=self.hidden,
                            rich_help_panel=PANEL_OF[self.name])

    @property
    def annotation(self):
        return self.kind if self.default is not None else Optional[self.kind]


def _default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _opts(owner, *rows) -> tuple[Opt, ...]:
    """Rows (name, flags, kind, help[, extra]) whose default is the field `name` of `owner` (extra may name another
    owner; None: the option has no default)."""
    out = []
    for name, flags, kind, help, *extra in rows:
        extra = dict(extra[0]) if extra else {}
        cls = extra.pop("owner", owner)
        out.append(Opt(name, flags if isinstance(flags, tuple) else (flags,), kind,
                       None if cls is None else _default(cls, name), help, **extra))
    return tuple(out)


_LABELLING = LabellingOptions.DEFAULTS
SOURCE = _opts(
    SourceOptions,
    ("source", ("--source", "-s"), str, "picam:[N] | csi://N | /dev/videoN | usb:N | imx500[:PATH.rpk] | "
                                        "rtsp://… | http://… | video file | image file | folder | glob", {"owner": None}),
    ("resolution", "--resolution", str, "Camera capture size, e.g. 1280x720.", {"owner": None}),
    ("fps", "--fps", float, "Camera capture rate."),
    ("flip", "--flip", str, "none|h|v|both", {"owner": Orientation}),
    ("rotate", "--rotate", int, "0|90|180|270 (clockwise)", {"owner": Orientation}),
    ("loop", "--loop", bool, "Files, folders: start again when exhausted."),
    ("realtime", "--realtime", bool, "Files, folders: play at their own rate (a video's fps; a folder's --fps, "
                                     "else 30), as a camera would."))
MODEL = _opts(
    ModelOptions,
    ("format", "--format", str, f"Model family: {'|'.join(FAMILIES)} (default: the bundle's recommended artifact)."),
    ("precision", "--precision", str, "int8|float"),
    ("threads", "--threads", int, "Inference threads (default: all cores)."),
    ("top_k", "--top-k", int, "How many classes to report per frame."),
    ("smooth", "--smooth", int, "Average probabilities over the last N frames."),
    ("threshold", "--threshold", float, "Below this top-1 probability report 'uncertain'."),
    ("no_verify", "--no-verify", bool, "Skip the bundle's self-test at start-up."))
OUTPUTS = _opts(
    OutputOptions,
    ("headless", "--headless", bool, "No window: one console line per result."),
    ("json_lines", "--json", bool, "One JSON line per frame on stdout, then a summary line."),
    ("stream", "--stream", int, "Serve the annotated video as MJPEG on this port."),
    ("host", "--host", str, "Address for --stream/--ui/--metrics (0.0.0.0 = every interface; then only with the "
                            "token: EDGECLS_TOKEN, or the link printed)."),
    ("save", "--save", Path, "Write the annotated video to this file (.mp4/.avi)."),
    ("max_frames", "--max-frames", int, "Stop after this many results."))
EVENTS = _opts(
    EventOptions,
    ("on", "--on", float, f"A class enters at this probability or more (default {EventOptions.DEFAULT_ON})."),
    ("off", "--off", float, f"…and leaves below this one (default {EventOptions.DEFAULT_OFF}; < --on)."),
    ("min_dwell", "--min-dwell", float, "Seconds a change must hold before its event fires."),
    ("classes", "--classes", str, "Watch only these labels, e.g. a,b (or 'uncertain')."),
    ("events", "--events", bool, "Event lines in --json ({\"event\": \"enter\", …})."),
    ("mqtt", "--mqtt", str, "Publish events to mqtt://HOST[:PORT]/TOPIC (mqtts:// for TLS; USER@HOST to log in, the "
                            "password from the config file, EDGECLS_MQTT_PASSWORD or --mqtt-password-file)."),
    ("mqtt_password_file", "--mqtt-password-file", str, "File holding the broker password (chmod 600); never put "
                                                         "it in the URL."),
    ("mqtt_qos", "--mqtt-qos", int, "0|1|2"),
    ("mqtt_retain", "--mqtt-retain", bool, "Retain the event and state messages."),
    ("mqtt_ca", "--mqtt-ca", str, "CA certificate file for mqtts://."),
    ("mqtt_state_interval", "--mqtt-state-interval", float, "Also publish the state on TOPIC/state every N s "
                                                            "(0: off)."),
    ("webhook", "--webhook", str, "POST each event as JSON to this http(s) URL."),
    ("webhook_secret", "--webhook-secret", str, "Refused: the command line is readable by every user.",
     {"hidden": True}),
    ("webhook_secret_file", "--webhook-secret-file", str, "File holding the signing secret (chmod 600), or "
                                                          "EDGECLS_WEBHOOK_SECRET, or the config file."),
    ("webhook_timeout", "--webhook-timeout", float, "Seconds per webhook attempt."),
    ("gpio", "--gpio", str, "LABEL=PIN[,LABEL=PIN…]: pin HIGH while the class is in."),
    ("gpio_pulse", "--gpio-pulse", float, "Pulse the pin N s per enter instead."),
    ("metrics", "--metrics", int, "Serve Prometheus /metrics on this port (--host)."))
KEEP = _opts(
    LabellingOptions,
    ("keep", "--keep", Path, "Keep frames worth labelling here, with a sidecar each."),
    ("keep_policy", "--keep-policy", str, f"uncertain|random|disagree (default {_LABELLING['keep_policy']}; "
                                          "disagree needs --shadow)."),
    ("keep_rate", "--keep-rate", float, f"At most this many kept frames a second ({_LABELLING['keep_rate']})."),
    ("keep_max_mb", "--keep-max-mb", float, f"Disk budget of --keep in MB ({_LABELLING['keep_max_mb']})."),
    ("keep_below", "--keep-below", float, f"uncertain: top-1 below this ({_LABELLING['keep_below']})."),
    ("keep_chance", "--keep-chance", float, f"random: each frame with this probability "
                                            f"({_LABELLING['keep_chance']})."),
    ("ui", "--ui", int, "Serve the web page on this port (--host): stream, top-k, events, kept frames to label."),
    ("data", "--data", Path, "With --ui: the training folder the page files photos into (DATA_DIR/<class>/)."))
SHADOW = _opts(
    ShadowOptions,
    ("shadow_every", "--shadow", str, "Every Nth frame also through the float model, on a worker thread: live "
                                      "int8-vs-float agreement, drift.", {"config_kinds": (int,)}),
    ("shadow_priority", "--shadow-priority", str, "idle: the shadow only uses CPU nothing else wants (skips frames "
                                                  "on a busy CPU); normal: it takes its share."))
UPDATES = _opts(
    UpdateOptions,
    ("updates_url", "--updates", str, "Poll this signed update repository and swap in a newer bundle that passes "
                                      "its checks and a canary (docs/fleet.md; BUNDLE is DEVICE_DIR/current)."),
    ("update_interval", "--update-interval", float, "Seconds between polls (--updates)."),
    ("canary_frames", "--canary-frames", int, "Distinct live frames a new bundle is judged on (a repeat of a "
                                                        "view already judged does not count)."),
    ("update_topic", "--update-topic", str, "With --mqtt: a message here (`edgecls publish --notify`) polls at once."))

# panel title -> (its section in the config file, its options), in the order --help shows them
PANELS = {"Source": ("source", SOURCE), "Model": ("model", MODEL), "Outputs": ("outputs", OUTPUTS),
          "Events": ("events", EVENTS), "Keep & page": ("keep", KEEP), "Shadow": ("shadow", SHADOW),
          "Updates": ("updates", UPDATES)}
PANEL_OF = {o.name: title for title, (_, opts) in PANELS.items() for o in opts}


def with_groups(*groups: tuple[Opt, ...]):
    """Give a command the options of these groups (keyword-only parameters after its own): typer reads them from
    its signature, and the command receives them in its **kwargs."""
    def add(command):
        sig = inspect.signature(command, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        extra = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.typer_option(),
                                   annotation=o.annotation) for group in groups for o in group]
        command.__signature__ = sig.replace(parameters=own + extra)
        return command
    return add


def parse_size(text: str | None, flag: str = "--resolution") -> tuple[int, int] | None:
    """WIDTHxHEIGHT → (width, height); None for None or ''."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EdgeclsError(f"bad {flag} {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from None
    if w <= 0 or h <= 0:
        raise EdgeclsError(f"bad {flag} {text!r}")
    return w, h


def check_choice(value: str | None, choices, flag: str) -> None:
    if value is not None and value not in choices:
        raise EdgeclsError(f"{flag} must be one of {', '.join(choices)} (got {value!r})")


def source_options(values: dict) -> SourceOptions:
    """The source group's values (checked) as SourceOptions: `run` and `collect` build them here."""
    if values["fps"] is not None and values["fps"] <= 0:
        raise EdgeclsError("--fps must be positive")
    return SourceOptions(size=parse_size(values["resolution"]), fps=values["fps"],
                         orientation=Orientation(values["flip"], values["rotate"]), loop=values["loop"],
                         realtime=values["realtime"])


def pick(cls, values: dict):
    """The dataclass `cls` made of the values named like its fields."""
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})


@dataclass
class RunSettings:
    """Everything `run` was asked for, in the dataclasses that own each part."""
    bundle: Path
    source: str
    source_opts: SourceOptions
    model: ModelOptions
    outputs: OutputOptions
    events: EventOptions
    labelling: LabellingOptions
    shadow: ShadowOptions
    updates: UpdateOptions

    @classmethod
    def of(cls, bundle: Path, source: str, values: dict) -> "RunSettings":
        model, outputs = pick(ModelOptions, values), pick(OutputOptions, values)
        model.check()
        outputs.check()
        return cls(bundle, source, source_options(values), model, outputs, pick(EventOptions, values),
                   pick(LabellingOptions, values), pick(ShadowOptions, values), pick(UpdateOptions, values))
