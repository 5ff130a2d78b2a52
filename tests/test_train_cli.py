"""`edgecls train` bad input: one line on stderr, exit != 0, no traceback, nothing overwritten — before TF loads."""
import json
import os
import shutil
import sys
import subprocess

import pytest

from conftest import DIGITS, cli


def _one_line_error(r, needle):
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgecls: error:"), r.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr


@pytest.fixture
def two_classes(tmp_path, shared):
    d = tmp_path / "data"
    for c in ("0", "1"):
        (d / c).mkdir(parents=True)
        for f in sorted((DIGITS / c).iterdir())[:4]:
            shutil.copy(f, d / c / f.name)
    return d


@pytest.mark.parametrize("args, needle", [
    (("/no/such/folder",), "data folder not found"),
    ((str(DIGITS), "--backbone", "vgg99"), "unknown backbone 'vgg99'"),
    ((str(DIGITS), "--img-size", "321"), "out of range"),
    ((str(DIGITS), "--img-size", "64"), "out of range"),
    ((str(DIGITS), "--backbone", "resnet50", "--alpha", "0.5"), "not available for resnet50"),
    ((str(DIGITS), "--backbone", "mobilenet_v3_small", "--alpha", "1.4"), "not available for mobilenet_v3_small"),
    ((str(DIGITS), "--weights", "/no/such/weights.h5"), "weights file not found"),
    ((str(DIGITS), "--resize", "squash"), "--resize must be one of"),
    ((str(DIGITS), "--epochs", "0", "--fine-tune-epochs", "0"), "nothing to train"),
    ((str(DIGITS), "--preset", "turbo"), "--preset must be one of"),
    ((str(DIGITS), "--head", "pixels"), "--head must be one of"),
    ((str(DIGITS), "--schedule", "step"), "--schedule one of"),
    ((str(DIGITS), "--time-budget", "0"), "--time-budget must be a positive"),
    ((str(DIGITS), "--time-budget", "nan"), "must be a finite number"),
])
def test_bad_options(shared, args, needle, tmp_path):
    r = cli("train", *args, "--out", tmp_path / "run")
    _one_line_error(r, needle)
    assert not (tmp_path / "run").exists()


def test_bad_data_folders(tmp_path, two_classes):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(cli("train", empty, "--out", tmp_path / "r1"), "no class folders")
    shutil.rmtree(two_classes / "1")
    _one_line_error(cli("train", two_classes, "--out", tmp_path / "r2"), "only one class")
    (two_classes / "1").mkdir()
    (two_classes / "1" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    _one_line_error(cli("train", two_classes, "--out", tmp_path / "r3"), "no valid images: 1")


def test_existing_folder_is_never_overwritten_without_force(tmp_path, two_classes):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    _one_line_error(cli("train", two_classes, "--out", out), "is not an edgecls run")
    assert (out / "thesis.txt").read_text() == "precious"
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": "edgecls-run", "status": "complete"}))
    _one_line_error(cli("train", two_classes, "--out", run), "already holds a run")


def test_help_and_validation_never_import_tensorflow(shared):
    code = ("import sys; from edgecls.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit: pass\n"
            "try:\n    main(['train', sys.argv[1], '--backbone', 'nope'])\nexcept SystemExit: pass\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras')]\n"
            "print('TF-MODULES', bad)")
    r = subprocess.run([sys.executable, "-c", code, str(DIGITS)], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"})
    assert "TF-MODULES []" in r.stdout, r.stdout + r.stderr
    from edgecls.train.backbones import BACKBONES
    assert all(name in r.stdout for name in BACKBONES), r.stdout      # the help names every backbone (Lite0 too)
    assert "(96-320)" in r.stdout, r.stdout                             # and the sizes validate() takes


def test_the_largest_input_size_validates():
    from edgecls.train.config import TrainConfig

    TrainConfig(data_dir=str(DIGITS), backbone="efficientnet_lite0", img_size=320).validate()   # no error


def test_train_without_tensorflow_writes_nothing(device_venv, two_classes, tmp_path):
    """edgecls[device] has no TensorFlow: `train` says what to install and leaves no half run folder."""
    out = tmp_path / "run"
    r = subprocess.run([str(device_venv / "bin" / "edgecls"), "train", str(two_classes), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "needs TensorFlow" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
