"""`edgecls export RUN --calib DIR`: int8 calibrated on a folder of device frames, and the bundle says so."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from edgecls.bundle import MANIFEST

from conftest import DIGITS, SHARED, TINY_EXPORT_ARGS, cli


def _frames(dest):
    """Frames as a device saves them: flat and in a sub-folder, plus what must be ignored (hidden, not images)."""
    flowers = sorted((SHARED / "data" / "flowers" / "daisy").iterdir())[:6]
    digits = sorted((DIGITS / "4").iterdir())[:6]
    (dest / "kept" / "4").mkdir(parents=True)
    for p in flowers:
        shutil.copyfile(p, dest / p.name)
    for p in digits:
        shutil.copyfile(p, dest / "kept" / "4" / p.name)
    (dest / ".partial.jpg").write_bytes(b"half a frame")
    (dest / "frame.json").write_text("{}")
    return dest


def _list_sha256(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png") and not p.name.startswith(".")):
        h.update(f"{p.relative_to(folder).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


@pytest.mark.slow
def test_export_calibrates_on_a_folder_of_frames_and_says_so(tiny_run, digits_bundle, tmp_path):
    frames = _frames(tmp_path / "frames")
    out = tmp_path / "bundle"
    r = cli("export", tiny_run, "--out", out, "--formats", "tflite", *TINY_EXPORT_ARGS, "--calib", frames)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / MANIFEST).read_text())
    calib = meta["export"]["calibration"]
    assert calib == {"source": "folder", "path": str(frames.resolve()), "images": 12, "found": 12,
                     "list_sha256": _list_sha256(frames)}
    report = (out / "report.md").read_text()
    assert f"int8 calibrated on 12 of the 12 images in {frames.resolve()}" in report
    assert str(frames.resolve()) in (out / "report.html").read_text()
    # The session bundle (same options, calibrated on the training split) says so, and its int8 file differs.
    default = json.loads((digits_bundle / MANIFEST).read_text())
    assert default["export"]["calibration"] == {"source": "training split", "images": 20}
    assert "int8 calibrated on 20 training-split images" in (digits_bundle / "report.md").read_text()
    assert meta["artifacts"]["tflite-int8"]["sha256"] != default["artifacts"]["tflite-int8"]["sha256"]


@pytest.mark.parametrize("case, needle", [
    ("missing", "folder not found"),
    ("file", "not a folder"),
    ("empty", "no images in it"),
    ("unreadable", "cannot read kept/broken.jpg"),
])
def test_bad_calib_folder_is_one_line_and_writes_nothing(tiny_run, tmp_path, case, needle):
    calib = tmp_path / "calib"
    if case == "file":
        calib.write_text("not a folder")
    elif case == "empty":
        (calib / "sub").mkdir(parents=True)
        (calib / "notes.txt").write_text("no frames")
    elif case == "unreadable":
        _frames(calib)
        (calib / "kept" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    r = cli("export", tiny_run, "--out", out, "--calib", calib)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgecls: error: --calib") and needle in lines[0], r.stderr
    assert not out.exists()
