"""`edgecls eval BUNDLE DATA_DIR`: the parity table with the device runtime only (no TensorFlow)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgecls.bundle import MANIFEST
from edgecls.rundir import load_run

from conftest import cli
from test_export import one_line_error


@pytest.fixture(scope="session")
def bundle(digits_bundle) -> Path:
    return digits_bundle


@pytest.fixture(scope="session")
def test_folder(tiny_run, tmp_path_factory) -> Path:
    """The run's held-out test split as an ordinary DATA_DIR/<class>/<image> folder."""
    run = load_run(tiny_run)
    root = tmp_path_factory.mktemp("testsplit")
    for rel, y in run.split_items("test"):
        dest = root / run.labels[y] / Path(rel).name
        dest.parent.mkdir(exist_ok=True)
        dest.symlink_to(run.data_root / rel)
    return root


def eval_without_tf(*args) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `edgecls eval` in a fresh interpreter; also report which TensorFlow modules it imported."""
    code = ("import sys\nfrom edgecls.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'tf2onnx')]\n"
            "sys.stderr.write('\\nTF-MODULES ' + ','.join(bad) + '\\n'); sys.exit(code)")
    r = subprocess.run([sys.executable, "-c", code, "eval", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    marker = [ln for ln in r.stderr.splitlines() if ln.startswith("TF-MODULES")]
    assert marker, r.stderr[-2000:]
    r.stderr = "\n".join(ln for ln in r.stderr.splitlines() if not ln.startswith("TF-MODULES"))
    return r, [m for m in marker[-1][len("TF-MODULES "):].split(",") if m]


def test_eval_json_reproduces_the_export_numbers_without_tensorflow(bundle, test_folder):
    r, tf_modules = eval_without_tf(bundle, test_folder, "--json", "--threads", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert tf_modules == []
    doc = json.loads(r.stdout)
    meta = json.loads((bundle / MANIFEST).read_text())
    assert set(doc["artifacts"]) == set(meta["artifacts"]) and doc["reference"] == "tflite-float"
    # One reference per artifact, the export's: int8 against its own family's float artifact
    assert {k: a["reference"] for k, a in doc["artifacts"].items()} == {
        "tflite-float": "tflite-float", "tflite-int8": "tflite-float", "onnx-float": "tflite-float",
        "onnx-int8": "onnx-float"}
    assert len(doc["files"]) == len(doc["labels"]) == meta["report"]["images"]
    assert doc["classes"] == meta["labels"]
    for key, a in doc["artifacts"].items():
        assert len(a["predictions"]) == len(doc["files"])
        acc = sum(p == t for p, t in zip(a["predictions"], doc["labels"])) / len(doc["labels"])
        assert a["accuracy"] == pytest.approx(acc)
        # Same images, same runtime, same code: eval and export agree exactly on accuracy.
        assert a["accuracy"] == pytest.approx(meta["artifacts"][key]["metrics"]["accuracy"]), key
        ref = doc["artifacts"][a["reference"]]["predictions"]
        assert a["agreed"] == sum(p == q for p, q in zip(a["predictions"], ref)) and a["images"] == len(ref)
        assert a["agreement"] == pytest.approx(a["agreed"] / len(ref))
        assert a["latency_ms"] > 0 and a["runtime"]


def test_eval_filters_and_still_measures_agreement(bundle, test_folder):
    r, tf_modules = eval_without_tf(bundle, test_folder, "--json", "--format", "onnx", "--precision", "int8")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert list(doc["artifacts"]) == ["onnx-int8"] and tf_modules == []
    a = doc["artifacts"]["onnx-int8"]
    assert a["agreement"] is not None and a["reference"] == "onnx-float"   # against its float twin, also run


def test_export_reports_the_heldout_agreement_eval_gives_on_the_test_photos(bundle, test_folder, tiny_run):
    """issue 28: `edgecls export` leads with agreement on the held-out photos (the run's test split, which training,
    calibration, weight rounding and the search never saw), and `edgecls eval` on a folder of exactly those photos
    gives the same figure: the same reference, the same count of photos, the same count agreeing."""
    meta = json.loads((bundle / MANIFEST).read_text())
    run = load_run(tiny_run)
    assert meta["report"]["split"] == "test" and meta["report"]["images"] == len(run.split_items("test"))
    r, _ = eval_without_tf(bundle, test_folder, "--json", "--threads", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    for key in ("tflite-int8", "onnx-int8"):
        held = meta["artifacts"][key]["metrics"]["agreement_heldout"]
        ev = doc["artifacts"][key]
        assert held["heldout"] is True and held["split"] == "test", held
        assert (held["reference"], held["images"], held["agreed"]) == (ev["reference"], ev["images"], ev["agreed"]), key
        assert held["rate"] == pytest.approx(ev["agreement"], abs=1e-5)
        # and what the disagreements were, photo for photo the same (metrics.flips)
        flips = meta["artifacts"][key]["metrics"]["flips"]
        assert flips == ev["flips"] and flips["flips"] == held["images"] - held["agreed"], key
        assert flips["near_ties"] <= flips["flips"] and len(flips["reference_margins"]) == flips["flips"]
        # not the figure over every image: that one is labelled as including training photos
        every = meta["artifacts"][key]["metrics"]["agreement_all"]
        assert every["images"] > held["images"] and "training" in every["photos"]
    # The printed tables name the reference and the photos
    assert meta["artifacts"]["tflite-int8"]["search"]["scored_on"] == "val"
    md = (bundle / "report.md").read_text()
    assert "held-out test photos" in md and "agreement, held-out" in md and "incl. training photos" in md
    changed = [k for k in ("tflite-int8", "onnx-int8") if meta["artifacts"][k]["metrics"]["flips"]["flips"]]
    assert ("## The answers int8 changed (held-out test photos)" in md) == bool(changed)
    assert all(f"- {k} vs {k.replace('int8', 'float')}: " in md for k in changed), md


def test_eval_prints_the_table(bundle, test_folder):
    r = cli("eval", bundle, test_folder, "--precision", "int8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tflite-int8" in r.stdout and "onnx-int8" in r.stdout and "agreement" in r.stdout
    assert "tflite-float" in r.stdout and "onnx-float" in r.stdout   # the "vs" column names each reference
    # under the table, a line per int8 artifact that changed answers on these (held-out) photos: export's count
    meta = json.loads((bundle / MANIFEST).read_text())
    for key in ("tflite-int8", "onnx-int8"):
        n = meta["artifacts"][key]["metrics"]["flips"]["flips"]
        line = f"{key} vs {key.replace('int8', 'float')}: {n} answer{'s' if n != 1 else ''} changed"
        assert (line in r.stdout) == bool(n), (key, n, r.stdout[-1500:])
    assert "no answer changed" not in r.stdout


def test_eval_rejects_classes_the_bundle_does_not_know(bundle, test_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(test_folder, data, symlinks=True)
    (data / "0").rename(data / "zero")
    r, _ = eval_without_tf(bundle, data)
    one_line_error(r, "classes in")
    assert "zero" in r.stderr


def test_eval_rejects_a_tampered_bundle(bundle, test_folder, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    with open(b / "model_int8.tflite", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    r, _ = eval_without_tf(b, test_folder, "--format", "tflite", "--precision", "int8")
    one_line_error(r, "does not match its sha256")


def test_eval_rejects_unknown_options_and_missing_bundles(bundle, test_folder, tmp_path):
    one_line_error(eval_without_tf(bundle, test_folder, "--format", "pt")[0], "unknown --format")
    one_line_error(eval_without_tf(tmp_path / "nope", test_folder)[0], "bundle not found")
