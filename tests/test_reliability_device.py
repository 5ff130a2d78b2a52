"""Issue 17, the device and bundle half: hostile bundles, hostile images, broken streams, full disks, FIFOs,
leftovers after SIGKILL, permissions, and the MJPEG server's bounds. Real files, processes and sockets.

Most tests use the committed 96 px digits bundle (tests/data/digits96/bundle), copied before editing.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecls.bundle import MANIFEST
from edgecls.fsutil import sha256_file

from conftest import ROOT, cli, skip_or_fail

DIGITS96 = ROOT / "tests" / "data" / "digits96" / "bundle"


def one_line_error(p, fragment: str, code: int = 2) -> None:
    """Exit `code`, one `edgecls: error: …` line (the last) containing `fragment`, no traceback.
    (A run may have printed its progress lines before it.)"""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("edgecls: error: ")]
    assert p.returncode == code, p.stderr[-3000:]
    assert errors == lines[-1:] and fragment in errors[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


def bundle_copy(dest: Path, **edits) -> Path:
    """The digits96 bundle copied to `dest`, with top-level manifest keys replaced by `edits`."""
    shutil.copytree(DIGITS96, dest)
    if edits:
        edit_manifest(dest, lambda m: m.update(edits))
    return dest


def edit_manifest(bundle: Path, change) -> dict:
    meta = json.loads((bundle / MANIFEST).read_text())
    change(meta)
    (bundle / MANIFEST).write_text(json.dumps(meta))
    return meta


@pytest.fixture(scope="module")
def digit_photos(shared) -> list[Path]:
    digits = shared / "data" / "sign_language_digits"
    return [sorted((digits / c).glob("*.JPG"))[0] for c in ("0", "1", "2")]


@pytest.fixture(scope="module")
def one_photo(digit_photos) -> Path:
    return digit_photos[0]


def onnx_model(path: Path, classes: int = 10, side: int = 96, external: bool = False, nan: bool = False) -> Path:
    """A real ONNX classifier (mean colour → MatMul → Softmax) for a side x side x 3 float input.

    external: its weights go to a separate `weights.bin` (ONNX external data); nan: it outputs 0/0.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 3 * classes, dtype=np.float32).reshape(3, classes), "W")
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["m", "W"], ["logits"])]
    inits = [w]
    if nan:
        inits.append(numpy_helper.from_array(np.zeros((1, classes), np.float32), "zero"))
        nodes += [helper.make_node("Mul", ["logits", "zero"], ["z"]), helper.make_node("Div", ["z", "zero"], ["y"])]
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=-1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", side, side, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.bin", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def onnx_bundle(dest: Path, **model_kw) -> Path:
    """The digits96 bundle whose onnx-int8 artifact is replaced by `onnx_model(**model_kw)` (hash updated), without
    its exam (golden/ holds the exported model's answers, which this stand-in cannot give: test_verify.py's part)."""
    bundle = bundle_copy(dest)
    onnx_model(bundle / "model_int8.onnx", **model_kw)
    edit_manifest(bundle, _set("artifacts.onnx-int8.sha256", sha256_file(bundle / "model_int8.onnx")))
    edit_manifest(bundle, lambda meta: meta.pop("golden"))
    # the stand-in has one output, the probabilities (the exported file also gives the embedding: outputs names both)
    edit_manifest(bundle, lambda meta: meta["artifacts"]["onnx-int8"].pop("outputs", None))
    return bundle


# --- 8. one schema for edgecls.json, checked on load ----------------------------------------------------

def _set(path: str, value):
    """A manifest edit: set the dotted `path` (e.g. "preprocessing.height") to `value`."""
    def change(meta):
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value
    return change


BAD_MANIFESTS = [
    ("version", "abc", "version must be a whole number"),
    ("version", True, "version must be a whole number"),
    ("artifacts", [], "artifacts must name at least one"),
    ("artifacts", {}, "artifacts must name at least one"),
    ("labels", ["a", "", "b", "c", "d", "e", "f", "g", "h", "i"], "no valid labels list"),
    ("labels", ["a", 7, "b", "c", "d", "e", "f", "g", "h", "i"], "no valid labels list"),
    ("preprocessing.pad_value", 300, "pad_value must be a whole number from 0 to 255"),
    ("preprocessing.scale", [1, 2, 3, 4, 5], "scale must be 3 finite numbers"),
    ("preprocessing.height", 0, "height must be a whole number from 1 to 4096"),
    ("preprocessing.height", -5, "height must be a whole number from 1 to 4096"),
    ("preprocessing.height", 100000, "height must be a whole number from 1 to 4096"),
    ("preprocessing.width", "96", "width must be a whole number"),
    ("preprocessing.in_model", "yes", "in_model must be true or false"),
    ("preprocessing.resampler", "lanczos", "unknown resampler 'lanczos'"),
    ("default_artifact", "onnx-float", "default_artifact 'onnx-float' is not one of its artifacts"),
    ("artifacts.tflite-int8.output_kind", "votes", "output_kind must be one of"),
    ("artifacts.tflite-int8.output.scale", -1, "output.scale must be a finite number"),
]


@pytest.mark.parametrize("field, value, message", BAD_MANIFESTS, ids=[f"{f}={v!r}" for f, v, _ in BAD_MANIFESTS])
def test_bad_manifest_values_are_refused_on_load(tmp_path, field, value, message):
    from edgecls.bundle import load_bundle
    from edgecls.errors import EdgeclsError

    bundle = bundle_copy(tmp_path / "b")
    edit_manifest(bundle, _set(field, value))
    with pytest.raises(EdgeclsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_bundle(bundle)


@pytest.mark.parametrize("command", ["run", "eval"])
def test_huge_input_size_fails_in_one_line_before_allocating(tmp_path, digit_photos, command):
    """height 100000: eval used to allocate N x 100000 x 96 x 3 bytes before looking at the model (671 GiB)."""
    bundle = bundle_copy(tmp_path / "b")
    edit_manifest(bundle, _set("preprocessing.height", 100000))
    data = tmp_path / "data" / "0"
    data.mkdir(parents=True)
    shutil.copy(digit_photos[0], data)
    args = (bundle, digit_photos[0], "--json") if command == "run" else (bundle, tmp_path / "data", "--json")
    one_line_error(cli(command, *args, timeout=120), "preprocessing.height must be a whole number from 1 to 4096")


# --- 16. artifact files confined to the bundle, hashed, no external data ---------------------------------

def test_artifact_paths_outside_the_bundle_are_refused(tmp_path, one_photo):
    other = bundle_copy(tmp_path / "other")
    for name, file in (("dotdot", "../other/model_int8.tflite"), ("absolute", str(other / "model_int8.tflite"))):
        bundle = bundle_copy(tmp_path / name)
        edit_manifest(bundle, _set("artifacts.tflite-int8.file", file))
        one_line_error(cli("run", bundle, one_photo, "--json", timeout=120), "points outside the bundle folder")
    # a symlink inside the bundle that leads out of it
    linked = bundle_copy(tmp_path / "symlink")
    (linked / "model_int8.tflite").unlink()
    (linked / "model_int8.tflite").symlink_to(other / "model_int8.tflite")
    one_line_error(cli("run", linked, one_photo, "--json", timeout=120), "points outside the bundle folder")


def test_sha256_is_required(tmp_path, one_photo):
    bundle = bundle_copy(tmp_path / "b")
    edit_manifest(bundle, lambda m: m["artifacts"]["tflite-int8"].pop("sha256"))
    one_line_error(cli("run", bundle, one_photo, "--json", timeout=120), "sha256 must be")


def test_onnx_with_external_data_is_refused(tmp_path, one_photo):
    """The .onnx is hashed but its weights.bin is not: a model that reads other files cannot be verified."""
    bundle = onnx_bundle(tmp_path / "b", external=True)
    assert (bundle / "weights.bin").is_file()
    one_line_error(cli("run", bundle, one_photo, "--format", "onnx", "--json", timeout=120), "external data")
    # the same model with its weights inside runs
    ok = onnx_bundle(tmp_path / "ok")
    p = cli("run", ok, one_photo, "--format", "onnx", "--json", timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


# --- 9. ONNX output count checked against the labels ------------------------------------------------------

@pytest.mark.parametrize("family", ["tflite", "onnx"])
def test_output_count_must_match_the_labels(tmp_path, one_photo, family):
    bundle = bundle_copy(tmp_path / "b")
    edit_manifest(bundle, lambda m: m.update(labels=m["labels"][:3]))   # 3 labels, 10 outputs
    labels = json.loads((bundle / "edgecls.json").read_text())["labels"]   # a consistent bundle, a wrong model
    (bundle / "labels.txt").write_text("\n".join(labels) + "\n")
    one_line_error(cli("run", bundle, one_photo, "--format", family, "--json", timeout=120),
                   "model has 10 outputs but the bundle has 3 labels")


def test_external_data_is_found_in_initializers_and_constant_attributes(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecls.device.model.onnx_scan import external_tensors

    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((4, 4), np.float32), "C"))
    graph = helper.make_graph([const, helper.make_node("Add", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save_model(model, str(tmp_path / "inline.onnx"))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="c.bin",
                    size_threshold=0, convert_attribute=True)
    assert external_tensors((tmp_path / "inline.onnx").read_bytes()) == []
    assert external_tensors((tmp_path / "ext.onnx").read_bytes()) == ["C"]
    assert external_tensors(onnx_model(tmp_path / "w.onnx", external=True).read_bytes()) == ["W"]
    assert external_tensors((DIGITS96 / "model_int8.onnx").read_bytes()) == []


# --- 5. never invalid JSON: no bare NaN on stdout or in edgecls.json -----------------------------------

def _strict_json(line: str):
    def refuse(name):
        raise ValueError(f"bare {name} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_run_json_never_prints_nan(tmp_path, one_photo):
    """A model whose outputs are 0/0: `run --json` must fail in one line, not print `"confidence": NaN`."""
    bundle = onnx_bundle(tmp_path / "b", nan=True)
    p = cli("run", bundle, one_photo, "--format", "onnx", "--json", timeout=120)
    for line in p.stdout.splitlines():
        _strict_json(line)
    one_line_error(p, "gave non-finite outputs")


def test_manifest_with_nan_is_never_written_and_never_read(tmp_path):
    from edgecls.bundle import load_bundle
    from edgecls.errors import EdgeclsError
    from edgecls.fsutil import atomic_write_json

    target = tmp_path / "edgecls.json"
    target.write_text('{"old": true}\n')
    with pytest.raises(EdgeclsError, match=r"report\.rows\.1\.accuracy is not a finite number"):
        atomic_write_json(target, {"report": {"rows": [{"accuracy": 1.0}, {"accuracy": float("nan")}]}})
    assert target.read_text() == '{"old": true}\n' and [p.name for p in tmp_path.iterdir()] == ["edgecls.json"]

    bundle = bundle_copy(tmp_path / "b")
    text = (bundle / MANIFEST).read_text()
    text = text.replace(f'"version": {json.loads(text)["version"]}', '"version": NaN')
    (bundle / MANIFEST).write_text(text)
    with pytest.raises(EdgeclsError, match="NaN is not valid JSON"):
        load_bundle(bundle)


# --- 14. leftovers of a SIGKILLed process are cleaned by the next start, a live one's never ------------------

HOLDER = ("import sys, time\n"
          "from edgecls.fsutil import atomic_dir, scratch_dir\n"
          "with atomic_dir(sys.argv[1], overwrite=True) as tmp, scratch_dir('edgecls-export-', sys.argv[2]) as w:\n"
          "    (tmp / 'model.tflite').write_bytes(b'x' * 1000)\n"
          "    print('ready', flush=True)\n"
          "    time.sleep(600)\n")


def _hold(final: Path, scratch: Path):
    import subprocess
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(final), str(scratch)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_leftovers_of_a_killed_process_are_cleaned_but_not_a_live_ones(tmp_path):
    import os
    import signal
    import time

    from edgecls.fsutil import atomic_dir, scratch_dir

    run, scratch = tmp_path / "run", tmp_path / "tmp"
    run.mkdir(), scratch.mkdir()
    killed = _hold(run / "bundle", scratch)
    killed.send_signal(signal.SIGKILL)
    killed.wait()

    def leftovers():
        return sorted(p.name for p in run.iterdir()) + sorted(p.name for p in scratch.iterdir())
    before = leftovers()
    assert sum(f".{killed.pid}." in n for n in before) == 1 and sum(f"-{killed.pid}." in n for n in before) == 1
    live = _hold(run / "bundle", scratch)   # a concurrent export, still working
    try:
        # pid-less leftovers of older versions: one a day old (stale), one fresh (maybe someone's: kept)
        for name in (".bundle.old00000.partial", ".bundle.new00000.partial"):
            (run / name).mkdir()
        os.utime(run / ".bundle.old00000.partial", (time.time() - 86400,) * 2)
        # a leftover from a day ago whose pid now belongs to a process started since (pid reuse): stale
        reused = run / f".bundle.{live.pid}.reused00.partial"
        reused.mkdir()
        os.utime(reused, (time.time() - 86400,) * 2)
        with atomic_dir(run / "bundle", overwrite=True) as tmp, scratch_dir("edgecls-export-", scratch):
            (tmp / "model.tflite").write_bytes(b"y")
        after = leftovers()
        assert not any(str(killed.pid) in n for n in after), after                       # the dead one's: gone
        assert sum(f".{live.pid}." in n for n in after) == 1 and sum(f"-{live.pid}." in n for n in after) == 1
        assert ".bundle.old00000.partial" not in after and ".bundle.new00000.partial" in after
        assert not reused.exists()
        assert (run / "bundle" / "model.tflite").read_bytes() == b"y"
    finally:
        live.kill()
        live.wait()


def test_a_killed_recording_leaves_no_hidden_video_behind(tmp_path, one_photo):
    import signal
    import subprocess
    import time

    bundle = bundle_copy(tmp_path / "b")
    out = tmp_path / "videos" / "clip.avi"
    out.parent.mkdir()
    args = [sys.executable, "-m", "edgecls", "run", str(bundle), str(one_photo), "--loop", "--headless",
            "--save", str(out)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(f.stat().st_size > 0 for f in out.parent.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    hidden = [f.name for f in out.parent.iterdir()]
    assert len(hidden) == 1 and hidden[0].startswith(".clip.") and not out.exists(), hidden
    r = cli("run", bundle, one_photo, "--headless", "--save", out, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [f.name for f in out.parent.iterdir()] == ["clip.avi"]


# --- 15. bundles and videos follow the umask, like any other file ----------------------------------------

def test_bundles_and_videos_follow_the_umask(tmp_path, one_photo):
    import os
    import stat
    import subprocess

    from edgecls.fsutil import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "bundle") as tmp:
            (tmp / "edgecls.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o755

    bundle = bundle_copy(tmp_path / "b")
    out = tmp_path / "clip.avi"
    code = "import os, sys; os.umask(0o022); from edgecls.cli import main; main(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, "run", str(bundle), str(one_photo), "--headless", "--save",
                        str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


# --- 3. a full disk during --save keeps the previous recording; 8. --save checked before the run -----------

def mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a real tmpfs on `folder` ("size=96k": a disk that fills up; "ro,size=64k": a read-only one, which
    root cannot get from permission bits); False where that is not possible (not root, no mount)."""
    import os
    import subprocess

    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                                capture_output=True).returncode == 0


def unmount(folder: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(folder)], check=False)


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """mount_tmpfs for a with-block (the folder made first); skip_or_fail where it cannot be mounted: tests run
    as root in CI, so a test guarding a promise never skips there."""
    folder.mkdir(parents=True, exist_ok=True)
    if not mount_tmpfs(folder, options):
        skip_or_fail(f"cannot mount a tmpfs on {folder} (needs root and mount)")
    try:
        yield folder
    finally:
        unmount(folder)


@pytest.fixture
def small_disk(tmp_path):
    """(folder, preexec_fn, how): a folder where writing more than ~96 KiB fails with a full disk.

    As root, a real 96 KiB tmpfs mounted for the test (ENOSPC); elsewhere RLIMIT_FSIZE in the child, with
    SIGXFSZ ignored so writes past the limit fail with EFBIG instead of killing it.
    """
    import resource
    import signal

    disk = tmp_path / "disk"
    disk.mkdir()
    if mount_tmpfs(disk, "size=96k"):
        try:
            yield disk, None, "tmpfs"
        finally:
            unmount(disk)
        return

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))

    yield disk, limit, "rlimit"


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_full_disk_during_save_keeps_the_previous_recording(tmp_path, digit_photos, small_disk, ext):
    import subprocess

    import cv2

    disk, preexec, how = small_disk
    bundle = bundle_copy(tmp_path / "b")
    out = disk / f"clip{ext}"

    def record(frames: int):
        args = [sys.executable, "-m", "edgecls", "run", str(bundle), str(digit_photos[0].parent), "--loop",
                "--headless", "--max-frames", str(frames), "--save", str(out)]
        return subprocess.run(args, capture_output=True, text=True, timeout=120, preexec_fn=preexec)

    good = record(2)
    assert good.returncode == 0 and out.stat().st_size < 40 * 1024, (how, good.stderr[-2000:])
    before = out.read_bytes()
    full = record(60)   # ~60 x 10 KiB frames: the disk fills part-way
    one_line_error(full, "the recording could not be written")
    assert "previous file is kept" in full.stderr
    assert out.read_bytes() == before and [p.name for p in disk.iterdir()] == [out.name], how
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 2 and cap.read()[0]


def test_save_onto_a_folder_or_into_a_read_only_one_fails_before_the_run(tmp_path, one_photo):
    import os
    import subprocess
    import time

    bundle = bundle_copy(tmp_path / "b")
    folder = tmp_path / "already_a_folder.mp4"
    folder.mkdir()
    t0 = time.monotonic()
    p = cli("run", bundle, one_photo, "--loop", "--max-frames", "100000", "--headless", "--save", folder, timeout=120)
    one_line_error(p, "is a folder")
    assert time.monotonic() - t0 < 60 and "frames," not in p.stderr   # refused before the run, not after it

    read_only = tmp_path / "ro"
    read_only.mkdir()
    if os.geteuid() == 0:   # root ignores permission bits: make it a read-only mount instead
        if not mount_tmpfs(read_only, "ro,size=64k"):
            skip_or_fail("root without mount: cannot make a read-only folder")
    else:
        read_only.chmod(0o555)
    try:
        p = cli("run", bundle, one_photo, "--loop", "--max-frames", "100000", "--headless", "--save",
                read_only / "clip.mp4", timeout=120)
        one_line_error(p, "cannot write in")
    finally:
        if os.geteuid() == 0:
            unmount(read_only)
        read_only.chmod(0o755)


# --- 4. decompression bombs refused before decoding, in one place for train, eval and run --------------------

def bomb_png(path: Path, side: int = 20000) -> Path:
    """A real, valid 1-bit PNG of side x side black pixels: ~50 KB on disk, gigabytes once decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)   # filter byte + packed bits
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


PEAK = ("import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(p.stdout)\n"
        "sys.stderr.write(p.stderr)\n"
        "print('PEAK_KB=%d' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(p.returncode)\n")


def peak_run(*args) -> tuple:
    """Run `edgecls ARGS` as the only child of a fresh process: (completed process, the child's peak RSS in MB)."""
    import re
    import subprocess

    p = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "edgecls", *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    return p, int(re.search(r"PEAK_KB=(\d+)", p.stderr).group(1)) / 1024


def test_decompression_bomb_is_skipped_and_named_without_decoding(tmp_path, one_photo):
    (tmp_path / "photos" / "0").mkdir(parents=True)
    bomb = bomb_png(tmp_path / "photos" / "0" / "bomb.png")
    assert bomb.stat().st_size < 100_000
    shutil.copy(one_photo, tmp_path / "photos" / "0" / "photo.jpg")
    bundle = bundle_copy(tmp_path / "b")

    base, base_mb = peak_run("run", bundle, one_photo, "--json")
    assert base.returncode == 0, base.stderr[-2000:]
    run, run_mb = peak_run("run", bundle, tmp_path / "photos", "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [Path(r["file"]).name for r in records[:-1]] == ["photo.jpg"]
    assert records[-1]["summary"]["skipped_files"] == [str(bomb)]
    assert "bomb.png: image is 20000x20000 = 400 MP, above the 50 MP limit" in run.stderr
    # decoding it would cost ~4 GB; refused from its header, the run costs what a one-photo run costs
    assert run_mb < base_mb + 100, (run_mb, base_mb)

    ev, ev_mb = peak_run("eval", bundle, tmp_path / "photos", "--json", "--format", "tflite")
    assert ev.returncode == 0, ev.stderr[-2000:]
    out = json.loads(ev.stdout)
    assert out["files"] == ["0/photo.jpg"] and out["skipped"][0]["file"] == "0/bomb.png"
    assert "400 MP, above the 50 MP limit" in out["skipped"][0]["reason"] and ev_mb < base_mb + 200, ev_mb


def test_training_scan_skips_a_bomb_by_name(tmp_path, digit_photos):
    """train's dataset scan and eval's are the same function, and it names the bomb (no TensorFlow needed)."""
    from edgecls.dataset import scan

    for i, photo in enumerate(digit_photos[:2]):
        (tmp_path / str(i)).mkdir()
        shutil.copy(photo, tmp_path / str(i) / photo.name)
    bomb_png(tmp_path / "1" / "bomb.png")
    found = scan(tmp_path)
    assert len(found.items) == 2
    assert [(f, "400 MP" in r) for f, r in found.skipped] == [("1/bomb.png", True)]


def test_video_frames_above_the_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    import cv2

    from edgecls import images
    from edgecls.device.capture.sources import open_source
    from edgecls.errors import EdgeclsError

    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    w.write(np.zeros((240, 320, 3), np.uint8))
    w.release()
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 320 * 240 - 1)   # a device with a smaller limit
    with pytest.raises(EdgeclsError, match="a frame is 320x240"):
        open_source(str(path))


# --- 13. FIFOs (and other files that block on open) are refused, never waited on --------------------------

def test_fifo_source_is_refused_at_once(tmp_path, one_photo):
    import os

    bundle = bundle_copy(tmp_path / "b")
    os.mkfifo(tmp_path / "camera.mp4")
    one_line_error(cli("run", bundle, tmp_path / "camera.mp4", "--json", timeout=60), "is a named pipe (FIFO)")
    os.mkfifo(tmp_path / "frame.jpg")
    one_line_error(cli("run", bundle, tmp_path / "frame.jpg", "--json", timeout=60), "is a named pipe (FIFO)")
    # inside a folder (and so in eval and train's scan): skipped and named, the other images still run
    (tmp_path / "photos").mkdir()
    shutil.copy(one_photo, tmp_path / "photos" / "a.jpg")
    os.mkfifo(tmp_path / "photos" / "b.jpg")
    p = cli("run", bundle, tmp_path / "photos", "--json", timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout.splitlines()[-1])["summary"]
    assert summary["frames"] == 1 and summary["skipped_files"] == [str(tmp_path / "photos" / "b.jpg")]
    assert "not a regular file (a named pipe (FIFO))" in p.stderr


# --- 7. a stream that opens but never gives a frame: backoff grows, then a clear error -----------------------

class EmptyVideoServer:
    """A real HTTP server on 127.0.0.1 serving a valid AVI with no frames: OpenCV opens it, reads nothing."""

    def __init__(self, folder: Path):
        import threading
        import time
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        import cv2

        cv2.VideoWriter(str(folder / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64)).release()
        self.requests: list[float] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(folder), **kw)

            def do_GET(self):
                server.requests.append(time.monotonic())
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/empty.avi"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_stream_without_frames_backs_off_then_gives_up(tmp_path):
    import threading
    import time

    from edgecls.device.capture.sources import SourceOptions, open_source
    from edgecls.errors import EdgeclsError

    srv = EmptyVideoServer(tmp_path)
    outcome: list = []
    try:
        src = open_source(srv.url, SourceOptions(backoff=(0.1, 10.0), give_up_after=5))

        def consume():
            try:
                outcome.append(sum(1 for _ in src))
            except EdgeclsError as e:
                outcome.append(e)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        t.join(timeout=20)
        src.close()
    finally:
        srv.close()
    assert outcome and isinstance(outcome[0], EdgeclsError), f"still looping after 20 s: {len(srv.requests)} opens"
    assert "opened 5 times but never gave a frame" in str(outcome[0])
    # The waits before the 4 reopens doubled (0.1, 0.2, 0.4, 0.8 s): a successful open that gives no frame does
    # not reset the backoff. (Measured on the server's request times; one open may make several requests.)
    gaps = np.diff(srv.requests)
    assert srv.requests[-1] - srv.requests[0] >= 1.4 and gaps.max() >= 0.75, gaps


def test_run_on_a_stream_without_frames_fails_in_one_line(tmp_path):
    srv = EmptyVideoServer(tmp_path)
    try:
        p = cli("run", bundle_copy(tmp_path / "b"), srv.url, "--json", timeout=90)
    finally:
        srv.close()
    one_line_error(p, "never gave a frame")
    assert p.stdout.strip() == ""


# --- 10. the MJPEG server: resets are quiet, connections are capped and time out ------------------------------

def _connect(port: int):
    import socket
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_client_that_resets_mid_reply_prints_nothing(capfd):
    import socket
    import struct
    import time

    from edgecls.device.output.mjpeg import MjpegServer

    server = MjpegServer("127.0.0.1", 0)
    try:
        for path in ("/frame.jpg", "/stream"):
            s = _connect(server.port)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            time.sleep(0.2)                      # the server is waiting for a frame to send
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()                            # RST: the viewer's browser tab was closed
            for _ in range(5):                   # frames arrive; the reply goes to a reset connection
                server.publish(np.zeros((48, 64, 3), np.uint8))
                time.sleep(0.1)
        time.sleep(0.3)
        s = _connect(server.port)                # and the server still serves the next viewer
        s.sendall(b"GET /frame.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.0 200")
        s.close()
    finally:
        server.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


def test_connections_are_capped_with_503_and_idle_ones_time_out():
    import time

    from edgecls.device.output.mjpeg import MjpegServer
    from edgecls.httpserve import MAX_CONNECTIONS

    server = MjpegServer("127.0.0.1", 0)          # the defaults `run --stream` uses
    idle = []
    try:
        server.publish(np.zeros((48, 64, 3), np.uint8))
        idle = [_connect(server.port) for _ in range(MAX_CONNECTIONS)]   # each would hold a thread for ever
        time.sleep(0.5)
        extra = _connect(server.port)
        extra.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert extra.recv(64).startswith(b"HTTP/1.1 503"), "no cap on concurrent connections"
        extra.close()
    finally:
        for s in idle:
            s.close()
        server.close()

    quick = MjpegServer("127.0.0.1", 0, max_clients=2, timeout_s=0.5)
    try:
        a, b = _connect(quick.port), _connect(quick.port)
        time.sleep(1.0)                            # both idle past the timeout: the server closed them
        assert a.recv(1) == b"" and b.recv(1) == b""
        c = _connect(quick.port)                   # and their slots are free again
        c.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert c.recv(64).startswith(b"HTTP/1.0 200")
        c.close()
    finally:
        quick.close()
