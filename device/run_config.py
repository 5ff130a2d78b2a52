"""`edgecls run --config FILE`: the run's options from a TOML file, one section per --help panel, its keys the long
flags without the dashes; flags given on the command line win. `--print-config` writes the effective settings.

    [model]
    bundle = "/var/lib/edgecls/current"
    threads = 4
    [source]
    source = "picam:0"
    [events]
    mqtt = "mqtts://edgecls@broker.lan/edgecls/cam1"
    mqtt-password = "…"        # secrets: only here, in the environment or in a --*-file, never in argv

A key the run does not know, a key in the wrong section, a value of the wrong type and a TOML syntax error are one
line, `FILE:LINE: key K: …`, before anything starts; a value out of range is caught by the check that owns it (the
same one a flag meets) and that error is given the file, line and key too (`attribute`). A file holding a secret
must not be readable by every user (like --mqtt-password-file: its secret would be anyone's).
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.device.sinks.events import MQTT_PASSWORD_ENV, WEBHOOK_SECRET_ENV
from edgecls.device.run_options import PANELS, Opt
from edgecls.errors import EdgeclsError

CONFIG_MAX_BYTES = 1 << 20
BUNDLE = Opt("bundle", ("--bundle",), Path, None, "The bundle folder (BUNDLE).")   # the argument, as a key
SECTION_OF = {o.name: section for section, opts in PANELS.values() for o in opts} | {"bundle": "model"}
BY_KEY = {o.key: o for _, opts in PANELS.values() for o in opts if not o.hidden} | {"bundle": BUNDLE}
# secret key -> (its environment variable, the option naming a file for it); in [events]
SECRETS = {"mqtt-password": (MQTT_PASSWORD_ENV, "mqtt_password_file"),
           "webhook-secret": (WEBHOOK_SECRET_ENV, "webhook_secret_file")}
KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path (text)"}


@dataclass
class RunConfig:
    path: Path | None = None
    values: dict = field(default_factory=dict)    # option name -> value (typed as the option)
    lines: dict = field(default_factory=dict)     # option name or secret key -> its line in the file
    secrets: dict = field(default_factory=dict)   # secret key -> value

    def where(self, name: str, key: str) -> str:
        return f"{self.path}:{self.lines.get(name, 1)}: key {key}"


def load(path: Path | None) -> RunConfig:
    """The config file read and checked (types, sections, names, a secret's file mode); empty for None."""
    if path is None:
        return RunConfig()
    text = _read(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        at = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at [^)]*\)$", "", str(e))
        raise EdgeclsError(f"{path}:{at.group(1)}:{at.group(2)}: TOML syntax: {msg}" if at
                           else f"{path}: TOML syntax: {msg}") from None
    cfg = RunConfig(path)
    for section, table in doc.items():
        if not isinstance(table, dict) or section not in {s for s, _ in PANELS.values()}:
            line = key_line(text, None, section)
            raise EdgeclsError(f"{path}:{line}: key {section}: {_misplaced(section, None)}")
        for key, value in table.items():
            _take(cfg, section, key, value, key_line(text, section, key))
    if cfg.secrets:
        _check_mode(cfg)
    return cfg


def _read(path: Path) -> str:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):   # (a FIFO would block the start for ever)
            raise EdgeclsError(f"--config {path}: not a regular file")
        with open(path, "rb") as f:
            data = f.read(CONFIG_MAX_BYTES + 1)
    except OSError as e:
        raise EdgeclsError(f"--config {path}: {e.strerror}") from None
    if len(data) > CONFIG_MAX_BYTES:
        raise EdgeclsError(f"--config {path}: larger than {CONFIG_MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgeclsError(f"--config {path}: not UTF-8 text") from None


def key_line(text: str, section: str | None, key: str) -> int:
    """The line of `key` in `[section]` (None: before any section; tomllib gives no line numbers for keys): the
    section's header line when the key is not found as `key =` (e.g. a dotted key), else 1."""
    current, fallback = None, 1
    pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*[=.\[]""")
    for n, line in enumerate(text.splitlines(), 1):
        header = re.match(r"""^\s*\[\s*["']?([^\]"']+)["']?\s*\]""", line)
        if header:
            current = header.group(1).strip()
            if section is None and current == key:
                return n
            fallback = n if current == section else fallback
        elif current == section and pattern.match(line):
            return n
    return fallback


def _take(cfg: RunConfig, section: str, key: str, value, line: int) -> None:
    if key in SECRETS and section == "events":
        cfg.lines[key] = line
        if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
            raise EdgeclsError(f"{cfg.path}:{line}: key {key}: expected the secret as one line of text")
        cfg.secrets[key] = value
        return
    opt = BY_KEY.get(key)
    if opt is None or SECTION_OF[opt.name] != section:
        raise EdgeclsError(f"{cfg.path}:{line}: key {key}: {_misplaced(key, section)}")
    cfg.lines[opt.name] = line
    cfg.values[opt.name] = _typed(opt, value, f"{cfg.path}:{line}: key {key}")


def _misplaced(key: str, section: str | None) -> str:
    """Why `key` cannot be in `[section]` (None: at the top): it belongs in another section, or nothing has it."""
    sections = [s for s, _ in PANELS.values()]
    if key in BY_KEY or key in SECRETS:
        home = SECTION_OF[BY_KEY[key].name] if key in BY_KEY else "events"
        return f"belongs in [{home}]" + ("" if section is None else f", not [{section}]")
    if section is None and key in sections:
        return f"must be a section, [{key}]"
    guess = difflib.get_close_matches(key.replace("_", "-"), sorted(BY_KEY) + sorted(SECRETS)
                                      + ([] if section else sections), n=1)
    return ("unknown key" if section else "unknown section") + (f" (did you mean {guess[0]!r}?)" if guess else "")


def _typed(opt: Opt, value, where: str):
    """`value` as the option's type, or one line saying what it should have been."""
    kind = opt.kind
    ok = {bool: kind is bool, int: kind in (int, float) or int in opt.config_kinds, float: kind is float,
          str: kind in (str, Path)}.get(type(value), False)
    if not ok:
        got = {bool: "true/false", int: "a whole number", float: "a number", str: "text"}.get(type(value),
                                                                                              type(value).__name__)
        raise EdgeclsError(f"{where}: expected {KINDS[kind]}, got {got} ({json.dumps(value, default=str)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise EdgeclsError(f"{where}: expected a finite number, got {value}")
    return value if kind is bool else kind(value)


def _check_mode(cfg: RunConfig) -> None:
    """Refused, not warned: a warning goes to a journal nobody reads while the secret stays readable."""
    mode = os.stat(cfg.path).st_mode
    if mode & stat.S_IROTH:
        key = min(cfg.secrets, key=lambda k: cfg.lines[k])
        raise EdgeclsError(f"{cfg.where(key, key)}: a secret in a file every user can read (mode {mode & 0o777:03o}); "
                           f"chmod 640 {cfg.path} (owner root, group the service's) or 600")


def merge(ctx, cfg: RunConfig, given: dict) -> set[str]:
    """The config's values into `given` wherever the command line left an option at its default; returns the
    names that came from the file (their errors are given its file and line: `attribute`)."""
    taken = set()
    for name, value in cfg.values.items():
        if name in given and ctx.get_parameter_source(name).name in ("DEFAULT", "DEFAULT_MAP"):
            given[name] = value
            taken.add(name)
    return taken


def hand_over_secrets(cfg: RunConfig, values: dict) -> None:
    """The file's secrets go where the sinks read them (device/sinks/events.py: read_secret), the environment of this
    process — not its /proc/PID/environ, which keeps the start-up environment and is its owner's only anyway.
    Given twice (here and the environment or a --*-file) is an error, as it is between those two."""
    for key, secret in cfg.secrets.items():
        env, file_option = SECRETS[key]
        if os.environ.get(env) is not None or values.get(file_option) is not None:
            other = env if os.environ.get(env) is not None else "--" + file_option.replace("_", "-")
            raise EdgeclsError(f"{cfg.where(key, key)}: give the secret once: here or {other}, not both")
        os.environ[env] = secret


def attribute(error: EdgeclsError, cfg: RunConfig, taken: set[str]) -> None:
    """A check's error about a flag whose value came from the file: prefixed with the file, line and key."""
    for flag in re.findall(r"--([a-z][a-z0-9-]*)", str(error)):
        opt = BY_KEY.get(flag)
        if opt is not None and opt.name in taken:
            error.args = (f"{cfg.where(opt.name, flag)}: {error}",)
            return


def to_toml(values: dict, cfg: RunConfig) -> str:
    """The effective settings as a config file: every option under its section, unset ones as comments, the
    secrets never (a comment says which the file gave)."""
    out = ["# edgecls run: the effective settings (--config, then the command line over it)"]
    for section, opts in PANELS.values():
        out.append(f"\n[{section}]")
        if section == "model":
            out.append(_toml_line("bundle", values.get("bundle")))
        out += [_toml_line(o.key, values[o.name]) for o in opts if not o.hidden]
        if section == "events":
            out += [f"# {key} = <redacted> (given in {cfg.path})" for key in sorted(cfg.secrets)]
    return "\n".join(out) + "\n"


def _toml_line(key: str, value) -> str:
    if value is None:
        return f"# {key} = (not set)"
    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    if isinstance(value, (int, float)):
        return f"{key} = {value!r}"
    text = json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")   # (TOML wants DEL escaped)
    return f"{key} = {text}"
