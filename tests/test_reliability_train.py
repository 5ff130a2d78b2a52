"""Issue 17, the training side: hostile input and faults against `train` (and the run folder `export` reads).

Every test drives the real `edgecls` command in a subprocess, with real files, real signals and (where
root allows) a real tmpfs for a full or read-only disk. The fast ones fail before TensorFlow loads.
docs/guarantees.md lists the promise each test holds.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecls.train.config import TrainConfig

from conftest import DIGITS, cli, skip_or_fail


def one_line_error(r, needle, code=2):
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgecls: error:"), r.stderr[-3000:]
    assert needle in lines[0], lines[0]
    return lines[0]


def ends_with_error(r, needle, code):
    """A command that worked a while: its progress lines, then exactly one error line, and nothing else."""
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("edgecls: error:")]
    assert errors == lines[-1:] and "Traceback" not in r.stderr, r.stderr[-3000:]
    noise = [ln for ln in lines[:-1] if not re.match(r"\s*(head|finetune) epoch|warning: |built ", ln)]
    assert not noise, noise[:5]   # e.g. HDF5's own error stacks on a full disk
    assert needle in errors[0], errors[0]
    return errors[0]


def more_photos(dest: Path, per_class: int = 12, names=("0", "1")) -> Path:
    """Real digit photos of classes 0 and 1, in class folders called `names`."""
    for c, name in zip(("0", "1"), names):
        (dest / name).mkdir(parents=True)
        for f in sorted((DIGITS / c).iterdir())[:per_class]:
            shutil.copy(f, dest / name / f.name)
    return dest


@pytest.fixture
def photos(tmp_path, shared):
    """Two classes of four real photos each."""
    return more_photos(tmp_path / "photos", 4)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def tmpfs(where: Path, size: str, readonly: bool = False):
    """A real small filesystem at `where` (needs root and mount); else a skip (a failure under CI)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here ({r.stderr.strip()[:100]})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fake_complete_run(run: Path, data_root: Path, splits: dict, model_bytes: bytes = b"not a model") -> Path:
    """A run folder as `train` leaves it, with a model file of our choosing (export's checks come first)."""
    run.mkdir(parents=True)
    spec = TrainConfig(data_dir=str(data_root), img_size=96).preprocess_spec()
    (run / "run.json").write_text(json.dumps({"format": "edgecls-run", "version": 1, "status": "complete",
                                              "labels": ["0", "1"], "preprocessing": spec.to_dict()}))
    (run / "splits.json").write_text(json.dumps({"root": str(data_root), "classes": ["0", "1"], **splits}))
    (run / "labels.txt").write_text("0\n1\n")
    (run / "model.keras").write_bytes(model_bytes)
    return run


# ---------------------------------------------------------------- 5. non-finite options

@pytest.mark.parametrize("option,value", [("--lr", "nan"), ("--lr", "inf"), ("--label-smoothing", "inf"),
                                          ("--label-smoothing", "nan"), ("--alpha", "nan"),
                                          ("--val-split", "nan"), ("--test-split", "-inf")])
def test_train_refuses_non_finite_options(photos, tmp_path, option, value):
    out = tmp_path / "run"
    one_line_error(cli("train", photos, "--out", out, option, value), "must be a finite number")
    assert not out.exists()


@pytest.mark.parametrize("option", ["--max-drop", "--min-agreement"])
def test_export_refuses_non_finite_gate_options(tmp_path, option):
    """NaN > tolerance is False: a NaN gate option would let every artifact pass."""
    out = tmp_path / "bundle"
    one_line_error(cli("export", tmp_path / "any-run", "--out", out, option, "nan"), "must be a finite number")
    assert not out.exists()


# ---------------------------------------------------------------- 8 / 11. refused before anything is written

@pytest.mark.parametrize("seed", ["-5", str(2 ** 32)])
def test_seed_out_of_range_is_refused_before_writing(photos, tmp_path, seed):
    out = tmp_path / "run"
    one_line_error(cli("train", photos, "--out", out, "--seed", seed), "--seed must be in 0..")
    assert not out.exists()


def test_out_under_a_file_is_one_line(photos, tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(cli("train", photos, "--out", tmp_path / "afile" / "run"), "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "x"


def test_out_in_a_read_only_folder_is_one_line(photos, tmp_path):
    if os.geteuid() == 0:   # root ignores permission bits: use a read-only filesystem
        ctx = tmpfs(tmp_path / "ro", "1m", readonly=True)
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        ctx = contextlib.nullcontext(tmp_path / "ro")
    with ctx as ro:
        one_line_error(cli("train", photos, "--out", ro / "run"), "cannot write in")


@pytest.mark.slow
def test_options_only_tensorflow_can_check_leave_no_stub(photos, tmp_path):
    """--fine-tune-at beyond the backbone and a --weights file that is not weights are found once the model
    is built; nothing may be written before that, so the corrected command just runs."""
    out = tmp_path / "run"
    one_line_error(cli("train", photos, "--out", out, "--img-size", "96", "--weights", "none",
                       "--fine-tune-at", "99999"), "--fine-tune-at 99999 is outside")
    assert not out.exists()
    junk = tmp_path / "weights.h5"
    junk.write_text("these are not weights")
    one_line_error(cli("train", photos, "--out", out, "--img-size", "96", "--weights", junk), "cannot load weights")
    assert not out.exists()


def test_export_checks_every_split_image_not_only_the_first(photos, tmp_path):
    files = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.*"))
    splits = {"train": [[files[0], 0], [files[4], 1]], "val": [[files[1], 0], [files[5], 1]],
              "test": [[files[2], 0], [files[6], 1]]}
    run = fake_complete_run(tmp_path / "run", photos, splits)
    (photos / files[6]).unlink()   # the second test image: a check of the first file only misses it
    out = tmp_path / "bundle"
    line = one_line_error(cli("export", run, "--out", out), "missing")
    assert files[6] in line
    assert not out.exists()


# ---------------------------------------------------------------- 1. --force replaces only a run

@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_force_never_touches_the_data_folder(tmp_path, photos, where):
    before = tree(photos)
    out = {"same": photos, "inside": photos / "0", "parent": tmp_path}[where]
    one_line_error(cli("train", photos, "--out", out, "--force"), "must be outside the data folder")
    assert tree(photos) == before


def test_force_refuses_a_folder_that_is_not_a_run_and_does_not_suggest_it(tmp_path, photos):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    for extra in ((), ("--force",)):
        line = one_line_error(cli("train", photos, "--out", mine, *extra), "is not an edgecls run")
        assert "--force" not in line
    assert (mine / "thesis.txt").read_text() == "precious"


# ---------------------------------------------------------------- 12. labels

@pytest.mark.parametrize("names,needle", [
    (("ok", "bad\nname"), "control, line-break or undecodable character"),
    (("ok", "tab\there"), "control, line-break or undecodable character"),
    (("ok", "line\u2028separator"), "control, line-break or undecodable character"),
    (("ok", os.fsdecode(b"latin1-\xe9")), "control, line-break or undecodable character"),   # not UTF-8: undecodable
    (("caf\u00e9", "cafe\u0301"), "give the same label"),       # NFC and NFD spellings of one word
    (("cat", "cat "), "give the same label"),
])
def test_class_names_that_break_labels_are_refused(tmp_path, photos, names, needle, reference_bundle):
    data = tmp_path / "labels"
    for name, src in zip(names, ("0", "1")):
        shutil.copytree(photos / src, data / name)
    out = tmp_path / "run"
    one_line_error(cli("train", data, "--out", out), needle)
    assert not out.exists()
    # `eval` reads folders with the same scanner
    one_line_error(cli("eval", reference_bundle, data), needle)


def test_markup_in_folder_and_class_names_is_printed_not_rendered(tmp_path, reference_bundle, shared):
    from io import StringIO

    from rich.console import Console

    from edgecls.device.evaluate import table

    data = tmp_path / "[bold red]photos"
    (data / "macaw").mkdir(parents=True)
    shutil.copy(shared / "weights" / "reference" / "coral_test_data_extras" / "parrot.jpg", data / "macaw")
    r = cli("eval", reference_bundle, data)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[bold red]photos" in r.stdout
    # The per-class column of the same table: a class called "[blink]x" prints as written.
    row = {"accuracy": 0.5, "agreement": 0.5, "latency_ms": 1.0, "per_class_delta": {"[blink]x": -3.0}}
    buf = StringIO()
    Console(file=buf, width=200).print(table({"ref": {**row, "per_class_delta": None}, "int8": row}, "ref"))
    assert "([blink]x)" in buf.getvalue()


# ---------------------------------------------------------------- 2. no code from a run folder

LAMBDA_MODEL = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tf_keras as keras
marker, dest, fmt = sys.argv[1:4]
payload = eval(f"lambda t: (__import__('pathlib').Path({marker!r}).write_text('code ran'), t)[1]")
inp = keras.Input((96, 96, 3), name="pixels")
x = keras.layers.GlobalAveragePooling2D()(inp)
x = keras.layers.Lambda(payload)(x)
out = keras.layers.Dense(2, activation="softmax")(x)
keras.Model(inp, out).save(dest, save_format=fmt)
"""


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_a_model_with_code_in_it_is_refused_and_never_runs(tmp_path, photos, fmt):
    """A run folder from elsewhere: model.keras that is HDF5 (or a real .keras) with a Lambda whose code
    writes a marker file. Loading it must not run that code."""
    marker = tmp_path / "code-ran"
    made = tmp_path / f"evil.{fmt}"
    r = subprocess.run([sys.executable, "-c", LAMBDA_MODEL, str(marker), str(made), fmt], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert marker.is_file()   # building it ran the code once: the payload works
    marker.unlink()
    files = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.*"))
    splits = {s: [[files[i], 0], [files[i + 4], 1]] for i, s in enumerate(("train", "val", "test"))}
    run = fake_complete_run(tmp_path / "run", photos, splits, made.read_bytes())
    out = tmp_path / "bundle"
    r = cli("export", run, "--out", out, "--formats", "tflite", "--no-int8")
    assert not marker.exists(), "the model file's code ran"
    one_line_error(r, "refusing to load")
    assert not out.exists()


# ---------------------------------------------------------------- training runs (slow): 1, 5, 6, 17

TINY = ("--img-size", "96", "--weights", "none", "--alpha", "0.35", "--batch-size", "8", "--patience", "20")


def start(*args, cwd=None, ignore_sigint=False) -> subprocess.Popen:
    """`edgecls train` in the background. ignore_sigint: start it as a non-interactive shell starts `cmd &`
    (SIGINT ignored), the condition in which Ctrl-C used to be lost."""
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen([sys.executable, "-m", "edgecls", "train", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, preexec_fn=pre)


def wait_for(p: subprocess.Popen, condition, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert p.poll() is None, f"exited ({p.returncode}) before {what}: {p.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def checkpoint_state(run: Path) -> dict:
    try:
        return json.loads((run / ".checkpoint" / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def finish(p: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.mark.slow
def test_force_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, shared):
    # (Class names matplotlib stumbles on: a glyph DejaVu lacks, and mathtext that does not parse.)
    data = more_photos(tmp_path / "photos", names=("\u732b", "$\\frac$"))
    files = sorted(str(p.relative_to(data)) for p in data.rglob("*.*"))
    run = fake_complete_run(tmp_path / "run", data, {"train": [[files[0], 0]]}, b"THE OLD MODEL")
    old = tree(run)
    aside = tmp_path / ".run.replaced"
    args = (data, "--out", run, "--force", *TINY, "--epochs", "2", "--fine-tune-epochs", "0")

    # Ctrl-C before the new run's first checkpoint: the old run is back, untouched, and nothing else is left.
    p = start(*args)
    wait_for(p, aside.exists, "the old run was set aside")
    p.send_signal(signal.SIGINT)
    r = finish(p)
    ends_with_error(r, "nothing was kept", 130)
    assert tree(run) == old and not aside.exists()

    # Killed in the same window: the next `train` on that folder puts the old run back first.
    p = start(*args)
    wait_for(p, aside.exists, "the old run was set aside")
    p.kill()
    p.communicate()
    assert aside.exists() and tree(run) != old
    r = cli("train", data, "--out", run)
    assert r.returncode == 2 and "already holds a run" in r.stderr and "put back" in r.stderr, r.stderr
    assert tree(run) == old and not aside.exists()

    # Completed: the new run replaced the old one, and the old one is gone for good.
    r = cli("train", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr, r.stderr   # nothing leaks from matplotlib
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert (run / "model.keras").read_bytes() != b"THE OLD MODEL" and not aside.exists()


@pytest.mark.slow
def test_a_diverging_run_fails_in_one_line_and_leaves_nothing(tmp_path, shared):
    data = more_photos(tmp_path / "photos")
    out = tmp_path / "run"
    r = cli("train", data, "--out", out, *TINY, "--epochs", "3", "--fine-tune-epochs", "0", "--lr", "1e30")
    ends_with_error(r, "training diverged", 2)
    assert not out.exists()


@pytest.mark.slow
def test_signals_stop_at_a_safe_point_and_resume_survives_faults(tmp_path, shared):
    """SIGINT (even when started with SIGINT ignored, as `make test &` does) and SIGTERM stop training with a
    resumable checkpoint and a non-zero exit; resume works from another folder, says what is wrong with a
    corrupt state or a missing image, and falls back to the best checkpoint when last.h5 is truncated."""
    more_photos(tmp_path / "photos", 15)
    run = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    head_done = lambda n: (lambda: checkpoint_state(run).get("phase") == "head" and checkpoint_state(run)["epoch"] >= n)

    # The data folder given relative to cwd; SIGINT arrives while the process has it ignored since birth.
    p = start("photos", "--out", "run", *TINY, "--epochs", "5", "--fine-tune-epochs", "1", cwd=tmp_path,
              ignore_sigint=True)
    wait_for(p, head_done(1), "the first checkpoint")
    p.send_signal(signal.SIGINT)
    r = finish(p)
    ends_with_error(r, "--resume", code=130)
    assert json.loads((run / "run.json").read_text())["status"] == "running"

    # Resume from another working directory, then SIGTERM (a service manager's stop).
    p = start("--resume", run, cwd=elsewhere)
    wait_for(p, head_done(2), "a resumed epoch")
    p.send_signal(signal.SIGTERM)
    r = finish(p)
    ends_with_error(r, "--resume", code=143)
    saved = checkpoint_state(run)
    assert saved["epoch"] >= 2 and json.loads((run / "run.json").read_text())["status"] == "running"

    # Faults in what a resume reads: one line each, nothing changed.
    state = run / ".checkpoint" / "state.json"
    good = state.read_bytes()
    state.write_text('{"phase": "head", "epo')
    one_line_error(cli("train", "--resume", run, cwd=elsewhere), "is corrupt")
    state.write_bytes(good)
    split = json.loads((run / "splits.json").read_text())
    gone = tmp_path / "photos" / split["train"][3][0]
    kept = gone.read_bytes()
    gone.unlink()
    one_line_error(cli("train", "--resume", run, cwd=elsewhere), "missing from")
    gone.write_bytes(kept)
    last = run / ".checkpoint" / "last.h5"
    last.write_bytes(last.read_bytes()[:1000])

    r = cli("train", "--resume", run, cwd=elsewhere)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "best checkpoint" in r.stderr and "Traceback" not in r.stderr
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete"
    assert meta["history"][:len(saved["history"])] == saved["history"]
    assert [h["phase"] for h in meta["history"]] == ["head"] * 5 + ["finetune"]


@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_and_resumable(tmp_path, shared):
    """The disk (a real 64 MB tmpfs) fills up after the first checkpoint: one line, exit 2, the checkpoint
    is intact, and once there is space again the run resumes to the end."""
    data = more_photos(tmp_path / "photos")
    with tmpfs(tmp_path / "disk", "64m") as disk:
        run = disk / "run"
        p = start(data, "--out", run, *TINY, "--epochs", "4", "--fine-tune-epochs", "0")
        wait_for(p, lambda: checkpoint_state(run).get("epoch", 0) >= 1, "the first checkpoint")
        filler = disk / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
        r = finish(p)
        line = ends_with_error(r, "disk full", 2)
        assert f"--resume {run}" in line and "Traceback" not in r.stderr
        assert checkpoint_state(run)["epoch"] >= 1
        filler.unlink()
        r = cli("train", "--resume", run)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_messages_print_plain_numbers(tmp_path, reference_bundle, shared):
    """NumPy 2 writes a scalar inside a list as np.int32(1): messages must say 1."""
    bundle = tmp_path / "bundle"
    shutil.copytree(reference_bundle, bundle)
    meta = json.loads((bundle / "edgecls.json").read_text())
    meta["preprocessing"].update(height=200, width=200)
    (bundle / "edgecls.json").write_text(json.dumps(meta))
    data = tmp_path / "photos" / "macaw"
    data.mkdir(parents=True)
    shutil.copy(shared / "weights" / "reference" / "coral_test_data_extras" / "parrot.jpg", data)
    r = cli("eval", bundle, data.parent)
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]   # (LiteRT prints an INFO line of its own before it)
    assert "model input 1x224x224x3 does not match" in line and "np." not in line, line


def _maps_tensorflow(pid: int) -> bool:
    try:
        return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("ignore_sigint,sig", [(False, signal.SIGINT), (True, signal.SIGINT), (False, signal.SIGTERM)],
                         ids=["interactive", "started-with-sigint-ignored", "sigterm"])
def test_ctrl_c_in_export_says_interrupted(tiny_run, tmp_path, ignore_sigint, sig):
    """Ctrl-C during export: one line, exit 130, no bundle — also when the export was started as a script
    starts `cmd &` (SIGINT ignored), where Python's own handler is never installed and the signal was lost.
    SIGTERM (systemd, a CI runner): the same line, exit 143."""
    out = tmp_path / "bundle"
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    p = subprocess.Popen([sys.executable, "-m", "edgecls", "export", str(tiny_run), "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pre)
    wait_for(p, lambda: _maps_tensorflow(p.pid), "TensorFlow to load")   # Python's handler is in place by then
    p.send_signal(sig)
    ends_with_error(finish(p), "interrupted", 128 + sig)
    assert not out.exists()


def test_a_signal_inside_an_import_waits_for_the_import_to_finish(tmp_path, monkeypatch):
    """KeyboardInterrupt raised inside an import that C code started surfaced as a SystemError traceback
    (TensorFlow's nest.flatten, seen in CI); StopRequest retries the interrupt until the import is done."""
    from edgecls.stopping import StopRequest

    (tmp_path / "slow_import_probe.py").write_text(
        "import signal, time\n"
        "signal.raise_signal(signal.SIGINT)\n"
        "time.sleep(0.3)\n"
        "FINISHED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stop = StopRequest()
    started = time.monotonic()
    with stop.installed(), pytest.raises(KeyboardInterrupt):
        import slow_import_probe  # noqa: F401
        time.sleep(5)   # the interrupt lands here, after the import
    assert sys.modules["slow_import_probe"].FINISHED
    assert 0.3 <= time.monotonic() - started < 2, "raised after the import, without waiting long"
    assert stop.signum == signal.SIGINT and signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    del sys.modules["slow_import_probe"]


def test_a_signal_inside_tensorflow_code_waits_until_it_returns():
    """The same inside TensorFlow's Python code, which its C++ may have called (CI: AssertSameStructureForData):
    the interrupt is raised once the main thread is back in code that is not TensorFlow's."""
    from edgecls.stopping import StopRequest

    scope = {}
    exec(compile("import signal, time\n"
                 "def busy(log):\n"
                 "    signal.raise_signal(signal.SIGINT)\n"
                 "    time.sleep(0.3)\n"
                 "    log.append('returned')\n", "/venv/site-packages/tensorflow/python/fake_probe.py", "exec"), scope)
    log = []
    stop = StopRequest()
    with stop.installed(), pytest.raises(KeyboardInterrupt):
        scope["busy"](log)
        time.sleep(5)
    assert log == ["returned"] and stop.signum == signal.SIGINT


def test_only_installed_tensorflow_packages_count_as_tensorflow_code():
    """A user's own folder named keras/ or tensorflow/ is not TensorFlow: a signal there is raised at once."""
    from edgecls.stopping import StopRequest

    for where, deferred in (("/home/me/keras/train_flowers.py", False), ("/srv/tensorflow/job.py", False),
                            ("/venv/lib/python3.11/dist-packages/tf_keras/src/engine.py", True)):
        scope = {}
        exec(compile("import signal, time\n"
                     "def busy(log):\n"
                     "    signal.raise_signal(signal.SIGINT)\n"
                     "    log.append('returned')\n", where, "exec"), scope)
        log = []
        with StopRequest().installed(), pytest.raises(KeyboardInterrupt):
            scope["busy"](log)
            time.sleep(5)
        assert log == (["returned"] if deferred else []), where
