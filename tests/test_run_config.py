"""Issue 30 item 1: `edgecls run`'s options in panels, from a config file (`--config FILE`, flags over it,
`--print-config`), bad config files as one line naming the file, line and key, and the documented systemd setup
(docs/device.md: the unit and its /etc/edgecls/run.toml) running with no secret on its command line.

Real parts: the real `edgecls` in subprocesses (test_device_run's wrapper: it fails if TensorFlow loads), real
config files, a real video of the committed digits bundle's held-out photos, a real Mosquitto with a password
file and a real webhook receiver on 127.0.0.1 (checking signatures with the code docs/device.md gives).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT
from test_device_events import BUNDLE, confident, free_port, segments, write_video  # noqa: F401
from test_device_run import ENV, WRAPPER, json_lines, one_line_error
from test_security_events import secret_sinks

PANELS = ("Source", "Model", "Outputs", "Events", "Keep & page", "Shadow", "Updates")


def start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, "COLUMNS": "200", **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    assert "TF_LOADED=False" in err, f"TensorFlow was imported by the device runtime:\n{err[-2000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """`edgecls run ARGS` through the real CLI entry point in this process (no interpreter start: fast)."""
    from edgecls.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", *map(str, args)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, e.value.code, out.out, out.err)


def config(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_run_help_shows_the_panels_and_collect_takes_the_same_source_group():
    procs = start("run", "--help"), start("collect", "--help")
    run_help, collect_help = (finish(p) for p in procs)
    assert run_help.returncode == 0 and collect_help.returncode == 0, run_help.stderr + collect_help.stderr
    text = run_help.stdout
    starts = [text.find(f"─ {title} ─") for title in PANELS]
    assert -1 not in starts and starts == sorted(starts), starts   # every panel, in the loop's order
    where = {flag: re.search(rf"│ {flag}\s", text).start() for flag in ("--source", "--threads", "--json", "--mqtt", "--keep-rate",
                                                        "--shadow", "--updates")}
    for flag, panel in zip(where, range(len(PANELS))):
        assert starts[panel] < where[flag] < (starts + [len(text)])[panel + 1], (flag, PANELS[panel])
    assert "--config" in text and "--print-config" in text and not re.search(r"│ --webhook-secret\s", text)
    # help strings read the defaults from the dataclasses
    assert "(default 0.8)" in text and "(default uncertain;" in text and "(500.0)" in text
    source_panel = collect_help.stdout[collect_help.stdout.find("─ Source ─"):]
    assert all(re.search(rf"│ {flag}\s", source_panel) for flag in ("--source", "--resolution", "--fps", "--flip", "--rotate",
                                                          "--loop"))


def test_a_flag_over_the_config_file_is_what_print_config_shows_and_what_runs(confident, tmp_path, capsys):
    video = write_video(tmp_path / "two.mkv", segments(confident, "A", each=2))   # 2 frames
    cfg = config(tmp_path / "run.toml", f"""
[model]
bundle = {json.dumps(str(BUNDLE))}
threads = 1

[source]
source = {json.dumps(str(video))}
loop = true            # only the file asks for this: 3 results from a 2-frame video need it

[outputs]
json = true
max-frames = 2         # the command line's --max-frames 3 wins
""")
    shown, ran = (finish(p) for p in (start("run", "--config", cfg, "--max-frames", "3", "--print-config"),
                                      start("run", "--config", cfg, "--max-frames", "3")))
    assert shown.returncode == 0 and ran.returncode == 0, shown.stderr + ran.stderr
    settings = tomllib.loads(shown.stdout)
    assert settings["outputs"]["max-frames"] == 3 and settings["outputs"]["json"] is True
    assert settings["source"] == {**settings["source"], "source": str(video), "loop": True}
    assert settings["model"]["bundle"] == str(BUNDLE) and settings["model"]["threads"] == 1
    assert settings["events"]["webhook-timeout"] == 5.0 and settings["keep"] == {}   # defaults; unset: comments
    again = in_process(capsys, "--config", config(tmp_path / "printed.toml", shown.stdout), "--print-config")
    assert again.returncode == 0 and again.stdout == shown.stdout   # what it prints reads back the same
    frames, summary = json_lines(ran.stdout)
    assert [f["frame"] for f in frames] == [0, 1, 2] and summary["frames"] == 3
    assert summary["stopped_by"] == "max frames" and summary["source"] == str(video)


BAD = {  # config text -> what its one line says (FILE:LINE: key K: …)
    "[outputs]\nmax_frames = 3\n": "run.toml:2: key max_frames: unknown key (did you mean 'max-frames'?)",
    "[model]\nthreads = 1\n\n[source]\nthreads = 2\n": "run.toml:5: key threads: belongs in [model], not [source]",
    "[model]\nthreads = \"four\"\n": "run.toml:2: key threads: expected a whole number, got text",
    "[modle]\nthreads = 4\n": "run.toml:1: key modle: unknown section (did you mean 'model'?)",
    "[model]\nthreads = 1\nsmooth = \n": "run.toml:3:",   # a TOML syntax error: tomllib's line and column
    "[events]\non = nan\n": "run.toml:2: key on: expected a finite number",
}


def test_each_bad_config_file_is_one_line_naming_the_file_line_and_key(tmp_path, capsys, monkeypatch):
    # a value out of range meets the check its flag meets (after the bundle loads): a real process, meanwhile
    good = f"[model]\nbundle = {json.dumps(str(BUNDLE))}\n[source]\nsource = 'unused.mkv'\n"
    out_of_range = start("run", "--config", config(tmp_path / "range.toml", good + "[events]\non = 1.5\n"))
    for i, (text, fragment) in enumerate(BAD.items()):
        (tmp_path / str(i)).mkdir()
        one_line_error(in_process(capsys, "--config", config(tmp_path / str(i) / "run.toml", text)), fragment)
    # a secret: in a file every user can read, or given twice
    p = in_process(capsys, "--config", config(tmp_path / "open.toml", "[events]\nmqtt-password = 'pw'\n", 0o644),
                   "--print-config")
    one_line_error(p, "open.toml:2: key mqtt-password: a secret in a file every user can read (mode 644)")
    monkeypatch.setenv("EDGECLS_MQTT_PASSWORD", "pw")
    p = in_process(capsys, "--config", config(tmp_path / "twice.toml", good + "[events]\nmqtt-password = 'pw'\n"))
    one_line_error(p, "twice.toml:6: key mqtt-password: give the secret once: here or EDGECLS_MQTT_PASSWORD")
    assert "pw" not in p.stderr
    p = finish(out_of_range)
    one_line_error(p, "range.toml:6: key on: --on must be a probability between 0 and 1 (got 1.5)")
    assert p.stdout == ""


def documented_setup() -> tuple[list[str], str]:
    """docs/device.md's systemd unit: the arguments of its ExecStart, and its /etc/edgecls/run.toml."""
    text = (ROOT / "docs" / "device.md").read_text()
    boot = text[text.index("## Start on boot: systemd"):]
    unit = re.findall(r"```ini\n(.*?)```", boot, re.S)[0]
    exec_start = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.M).group(1))
    run_toml = next(b for b in re.findall(r"```toml\n(.*?)```", boot, re.S) if "mqtt-password" in b)
    return exec_start[1:], run_toml


def with_values(text: str, changes: dict[tuple[str, str], object]) -> str:
    """`text` (TOML) with these (section, key) set (None: removed), line by line: the doc's own layout kept."""
    out, section, todo = [], None, dict(changes)
    for line in text.splitlines():
        header = re.match(r"\[(\w+)\]", line)
        if header:
            out += [f"{k} = {json.dumps(v)}" for (s, k), v in list(todo.items()) if s == section and v is not None]
            todo = {sk: v for sk, v in todo.items() if sk[0] != section}
            section = header.group(1)
        key = re.match(r"([\w-]+)\s*=", line)
        if key and (section, key.group(1)) in todo:
            value = todo.pop((section, key.group(1)))
            line = None if value is None else f"{key.group(1)} = {json.dumps(value)}"
        if line is not None:
            out.append(line)
    out += [f"{k} = {json.dumps(v)}" for (s, k), v in todo.items() if s == section and v is not None]
    return "\n".join(out) + "\n"


def test_a_run_from_the_documented_systemd_config_has_no_secret_in_ps(confident, tmp_path):
    args, run_toml = documented_setup()
    assert args == ["run", "--config", "/etc/edgecls/run.toml"]   # nothing else on the command line
    assert {"mqtt-password", "webhook-secret"} <= set(tomllib.loads(run_toml)["events"])
    proc = None
    with secret_sinks(confident, tmp_path) as s:
        # this machine's bundle, video, broker and receiver; no pins, TLS CA or bird labels here
        local = {("model", "bundle"): str(BUNDLE), ("model", "smooth"): 1, ("source", "source"): str(s.video),
                 ("source", "loop"): True, ("outputs", "host"): "127.0.0.1", ("events", "min-dwell"): 0,
                 ("events", "classes"): None, ("events", "gpio"): None, ("events", "mqtt-ca"): None,
                 ("events", "mqtt"): s.mqtt_url, ("events", "mqtt-password"): s.password,
                 ("events", "webhook"): s.webhook_url, ("events", "webhook-secret"): s.key,
                 ("events", "metrics"): free_port()}
        cfg = config(tmp_path / "run.toml", with_values(run_toml, local), 0o640)
        try:
            proc = start(*[str(cfg) if a == "/etc/edgecls/run.toml" else a for a in args])
            s.wait_until_used()
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert b"--config" in cmdline and str(cfg).encode() in cmdline   # (the live process, read right)
            ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
            assert str(cfg) in ps
            for secret in (s.password, s.key):
                assert secret.encode() not in cmdline and secret not in ps
                assert secret.encode() not in Path(f"/proc/{proc.pid}/environ").read_bytes()
            proc.send_signal(signal.SIGTERM)
            p = finish(proc, timeout=30)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert p.returncode == 0, p.stderr
    assert s.password not in p.stderr + p.stdout and s.key not in p.stderr + p.stdout
    assert os.stat(cfg).st_mode & 0o777 == 0o640   # group-readable (the service's group) is allowed
