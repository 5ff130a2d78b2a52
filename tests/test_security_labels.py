"""Labels bound to what export wrote (issue 27, item 1): a consistent edit of a bundle's labels (two lines of
labels.txt and edgecls.json swapped) keeps every shape and every probability and names every answer wrong, so
it must be refused on every path — by the model file's own labels (TFLite metadata, as ONNX metadata_props)
and, independently, by the exam (golden/labels.json). Duplicate labels are refused for every format.
Real exports of the session's tiny digits run, the real command in a subprocess, the device runtime without
TensorFlow."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgecls.bundle import LABELS_META, MANIFEST, load_bundle, validate_manifest
from edgecls.errors import EdgeclsError
from edgecls.fsutil import sha256_file

from conftest import DIGITS, NEAREST, TINY_EXPORT_ARGS, cli
from test_device_run import edgecls as device_cli
from test_device_run import one_line_error
from test_verify import refused


@pytest.fixture(scope="module")
def bound_bundle(digits_bundle, tiny_run, tmp_path_factory) -> Path:
    """A bundle exported by this edgecls: the session's, unless EDGECLS_TEST_FIXTURES kept one from an export
    before labels were bound (then the tiny run is exported again, with the converters' rounding)."""
    if "labels" in json.loads((digits_bundle / MANIFEST).read_text())["golden"]:
        return digits_bundle
    out = tmp_path_factory.mktemp("bound") / "bundle"
    r = cli("export", tiny_run, "--out", out, *TINY_EXPORT_ARGS, *NEAREST)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    shutil.copy(sorted((DIGITS / "0").glob("*.JPG"))[0], d / "0.jpg")
    return d


def exam_failed(p: subprocess.CompletedProcess, fragment: str) -> None:
    """test_verify's `refused` (exit 1, one last error line) on a device_cli run (its TF_LOADED line left out)."""
    err = "\n".join(ln for ln in p.stderr.splitlines() if not ln.startswith("TF_LOADED"))
    refused(subprocess.CompletedProcess(p.args, p.returncode, p.stdout, err), fragment)


def rewrite(bundle: Path, change) -> dict:
    """Apply `change` to edgecls.json, then write labels.txt from it: a consistent edit."""
    meta = json.loads((bundle / MANIFEST).read_text())
    change(meta)
    (bundle / MANIFEST).write_text(json.dumps(meta, indent=2))
    (bundle / "labels.txt").write_text("\n".join(meta["labels"]) + "\n")
    return meta


def swap_two(meta: dict) -> None:
    labels = meta["labels"]
    labels[2], labels[3] = labels[3], labels[2]


def tflite_only(meta: dict) -> None:
    meta["artifacts"] = {k: a for k, a in meta["artifacts"].items() if k.startswith("tflite")}
    meta["default_artifact"] = "tflite-int8"


def strip_file_labels(bundle: Path) -> None:
    """Each TFLite file without its labels entry (as exported before this change), its sha256 recomputed."""
    from edgecls.convert.tflite import with_metadata

    meta = json.loads((bundle / MANIFEST).read_text())
    for a in meta["artifacts"].values():
        path = bundle / a["file"]
        path.write_bytes(with_metadata(path.read_bytes(), {LABELS_META: None}))
        a["sha256"], a["bytes"] = sha256_file(path), path.stat().st_size
    (bundle / MANIFEST).write_text(json.dumps(meta, indent=2))


def copy(src: Path, dest: Path, *changes) -> Path:
    shutil.copytree(src, dest)
    for change in changes:
        rewrite(dest, change)
    return dest


def test_export_writes_the_labels_into_every_model_file_and_the_exam(bound_bundle):
    from edgecls.bundle import Artifact
    from edgecls.convert.tflite import with_metadata
    from edgecls.device.model.runtime import TFLiteModel, load_model
    from edgecls.device.model.tflite_scan import metadata
    from edgecls.device.model.verify import load_golden

    b = load_bundle(bound_bundle)
    golden = load_golden(b)
    assert golden.labels == b.labels == [str(i) for i in range(10)]
    for key, art in b.artifacts.items():
        assert sha256_file(art.path) == art.meta["sha256"], key   # the hash is the final file's
        model = load_model(b, art.fmt.family, art.fmt.precision)
        assert model.labels_bound and model.embedded_labels() == b.labels, key
        if art.fmt.family != "tflite":
            continue
        assert json.loads(metadata(art.path.read_bytes())[LABELS_META]) == b.labels
        # The entry is metadata only: without it the file answers the golden images bit for bit as with it.
        bare = art.path.parent / f"bare_{art.path.name}"
        try:
            bare.write_bytes(with_metadata(art.path.read_bytes(), {LABELS_META: None}))
            without = TFLiteModel(Artifact(art.fmt, bare, art.meta), b.spec, len(b.labels)).predict(golden.images)
        finally:
            bare.unlink(missing_ok=True)
        assert np.array_equal(without, golden.outputs[key]) and np.array_equal(model.predict(golden.images), without)


def test_swapped_labels_are_refused_on_the_tflite_path(bound_bundle, photos, tmp_path):
    """The issue's probe: labels 2 and 3 swapped in labels.txt and edgecls.json alike."""
    both = copy(bound_bundle, tmp_path / "both", swap_two)
    one_line_error(device_cli("verify", both, "--format", "tflite"), "model_float.tflite carries the labels")
    r = device_cli("run", both, photos, "--format", "tflite", "--json")
    one_line_error(r, "model_int8.tflite carries the labels")
    assert r.stdout == "" and "(class 2: '2' there, '3' in edgecls.json)" in r.stderr
    only = copy(bound_bundle, tmp_path / "only", swap_two, tflite_only)
    one_line_error(device_cli("verify", only), "carries the labels")
    one_line_error(device_cli("run", only, photos, "--json"), "carries the labels")


def test_the_exam_names_edited_labels_where_the_file_carries_none(bound_bundle, photos, tmp_path):
    """golden/labels.json catches the edit on its own: here the TFLite files carry no labels."""
    bundle = copy(bound_bundle, tmp_path / "b", tflite_only)
    strip_file_labels(bundle)
    ok = device_cli("verify", bundle)
    assert ok.returncode == 0 and "labels        pass   as exported (golden/labels.json)" in ok.stdout, ok.stderr
    rewrite(bundle, swap_two)
    p = device_cli("verify", bundle)
    exam_failed(p, "labels edited since export")
    assert "class 2: '2' there, '3' in edgecls.json" in p.stderr and "labels        fail" in p.stdout
    r = device_cli("run", bundle, photos, "--json")
    exam_failed(r, "self-test failed, not starting (--no-verify skips it): labels edited since export")
    assert r.stdout == ""


def test_a_bundle_exported_before_labels_were_bound_runs_with_one_note(bound_bundle, photos, tmp_path):
    bundle = copy(bound_bundle, tmp_path / "b", tflite_only, lambda m: m["golden"].pop("labels"))
    strip_file_labels(bundle)
    p = device_cli("verify", bundle)
    assert p.returncode == 0 and "labels        unbound  model_float.tflite, model_int8.tflite" in p.stdout, p.stderr
    r = device_cli("run", bundle, photos, "--headless")
    notes = [ln for ln in r.stderr.splitlines() if "labels are unbound" in ln]
    assert r.returncode == 0 and len(notes) == 1 and notes[0].startswith("edgecls: note: "), r.stderr
    j = device_cli("run", bundle, photos, "--json")
    assert j.returncode == 0 and json.loads(j.stdout.splitlines()[-1])["summary"]["self_test"]["labels_bound"] is False
    bound = device_cli("run", bound_bundle, photos, "--headless")
    assert bound.returncode == 0 and "unbound" not in bound.stderr, bound.stderr


@pytest.mark.parametrize("family", ["tflite", "onnx"])
def test_duplicate_labels_are_refused_for_every_format(bound_bundle, photos, tmp_path, family):
    bundle = copy(bound_bundle, tmp_path / "b", lambda m: m["labels"].__setitem__(3, m["labels"][2]))
    for p in (device_cli("verify", bundle, "--format", family),
              device_cli("run", bundle, photos, "--format", family, "--json")):
        one_line_error(p, "labels name '2' more than once")


def test_validate_manifest_refuses_any_repeated_name(bound_bundle):
    meta = json.loads((bound_bundle / MANIFEST).read_text())
    validate_manifest(meta, bound_bundle, "edgecls.json")
    for labels in (["a", "b", "a"], ["crane", "crane"], meta["labels"] + meta["labels"][:1]):
        with pytest.raises(EdgeclsError, match="more than once"):
            validate_manifest({**meta, "labels": labels}, bound_bundle, "edgecls.json")
