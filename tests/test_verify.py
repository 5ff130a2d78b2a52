"""The bundle's own exam (issue 13, part 1): `export` stores golden/ in the bundle; `edgecls verify` and `edgecls run`
refuse a bundle that does not compute on this machine what it computed on the host: edited preprocessing in
edgecls.json, or another run's int8 file with its sha256 recomputed, so that only the exam can catch it.
Real exports (the session's tiny digits run), real runtimes, real photos, the real command in a subprocess."""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgecls.bundle import MANIFEST, load_bundle
from edgecls.fsutil import sha256_file

from conftest import DIGITS, NEAREST, TINY_EXPORT_ARGS, cli
from test_device_run import edgecls as device_cli


def edited(src: Path, dest: Path, change) -> Path:
    shutil.copytree(src, dest)
    meta = json.loads((dest / MANIFEST).read_text())
    change(meta)
    (dest / MANIFEST).write_text(json.dumps(meta, indent=2))
    return dest


def refused(p, fragment: str) -> None:
    """Exit 1 (a failed exam), the reason as the one `edgecls: error:` line, last, naming `fragment`."""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("INFO:")]
    assert p.returncode == 1, p.stderr[-3000:]
    assert lines and lines[-1].startswith("edgecls: error: ") and fragment in lines[-1], p.stderr[-3000:]
    assert sum(ln.startswith("edgecls: error: ") for ln in lines) == 1 and "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two held-out-style photos for `run` to classify after its start-up exam."""
    d = tmp_path_factory.mktemp("photos")
    for c in ("0", "5"):
        shutil.copy(sorted((DIGITS / c).glob("*.JPG"))[0], d / f"{c}.jpg")
    return d


def test_export_writes_a_small_hashed_exam_and_verify_passes_it(digits_bundle, photos):
    from edgecls.bundle import golden_entries

    meta = json.loads((digits_bundle / MANIFEST).read_text())
    g = meta["golden"]
    assert set(g["outputs"]) == set(meta["artifacts"]) and g["images"]["count"] == 16 and len(g["photos"]) == 3
    for name, e in golden_entries(g).items():
        assert sha256_file(digits_bundle / e["file"]) == e["sha256"], name
    assert sum(f.stat().st_size for f in (digits_bundle / "golden").iterdir()) < 400_000
    with np.load(digits_bundle / g["images"]["file"]) as z:
        assert z["array"].shape == (16, 96, 96, 3) and z["array"].dtype == np.uint8

    p = device_cli("verify", digits_bundle, "--json", timeout=300)   # asserts no TensorFlow was imported
    assert p.returncode == 0, p.stderr[-3000:]
    exam = json.loads(p.stdout)
    assert exam["passed"] and exam["reason"] is None and exam["normalisation"] == "ok"
    assert meta["preprocessing"]["resampler"] == "exact"   # so the stored photos must prepare to the same bytes
    assert exam["photos"] == {"photos": 3, "values_off": 0, "max_diff": 0, "tolerance": 0, "passed": True}
    for key, a in exam["artifacts"].items():   # same host, same runtime: the same answers, to the bit
        assert a["verdict"] == "pass" and a["agree_host"] == 16 and a["max_abs_diff"] == 0.0, key
    one = cli("verify", digits_bundle, "--format", "onnx", "--precision", "int8", timeout=300)
    assert one.returncode == 0 and "onnx-int8" in one.stdout and "tflite" not in one.stdout, one.stderr

    r = device_cli("run", digits_bundle, photos, "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    test = json.loads(r.stdout.splitlines()[-1])["summary"]["self_test"]
    assert test["passed"] and test["artifact"] == "tflite-int8" and test["seconds"] < 2.0


# Each edit is a mix-up that happens: a BGR model's preprocessing pasted in, a [0, 1] normalisation believed, a
# different resize mode; and in_model turned off. In (b) the model computes the same (its normalisation is inside
# it), but the int8 file's input quantization — the folded normalisation — contradicts edgecls.json.
EDITS = {
    "color_order": ("color_order", "BGR", "prepare to other pixels"),
    "scale": ("scale", [1 / 255] * 3, "preprocessing (normalisation)"),
    "offset": ("offset", [0.0] * 3, "preprocessing (normalisation)"),
    "resize-crop": ("resize", "crop", "prepare to other pixels"),
    "resize-letterbox": ("resize", "letterbox", "prepare to other pixels"),
    "in_model": ("in_model", False, "preprocessing (normalisation)"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_verify_and_run_refuse_edited_preprocessing(digits_bundle, photos, tmp_path, edit):
    field, value, reason = EDITS[edit]
    bundle = edited(digits_bundle, tmp_path / "b", lambda m: m["preprocessing"].__setitem__(field, value))
    p = cli("verify", bundle, timeout=300)
    refused(p, reason)
    assert "verdict: FAIL" in p.stdout
    r = cli("run", bundle, photos, "--json", timeout=300)
    refused(r, "self-test failed, not starting")
    assert reason in r.stderr and r.stdout == ""   # no frame was classified


@pytest.fixture(scope="module")
def other_int8(tmp_path_factory, keras_home) -> Path:
    """The int8 TFLite of another tiny run (other seed, same data, labels and architecture), exported for real."""
    base = tmp_path_factory.mktemp("other")
    r = cli("train", DIGITS, "--out", base / "run", "--img-size", "96", "--epochs", "1", "--fine-tune-epochs", "1",
            "--max-images-per-class", "20", "--seed", "7")
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("export", base / "run", "--out", base / "bundle", "--formats", "tflite", "--full-int8", *TINY_EXPORT_ARGS, *NEAREST)
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "bundle" / "model_int8.tflite"


@pytest.mark.slow
def test_verify_and_run_refuse_another_runs_int8_file_with_its_hash_recomputed(digits_bundle, other_int8, photos,
                                                                                 tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    meta = json.loads((bundle / MANIFEST).read_text())
    art = meta["artifacts"]["tflite-int8"]
    shutil.copyfile(other_int8, bundle / art["file"])
    art["sha256"], art["bytes"] = sha256_file(bundle / art["file"]), (bundle / art["file"]).stat().st_size
    (bundle / MANIFEST).write_text(json.dumps(meta, indent=2))
    load_bundle(bundle).artifact("tflite", "int8")   # every hash and the schema check pass: only the exam is left

    p = cli("verify", bundle, "--json", timeout=300)
    refused(p, "wrong model file: tflite-int8")
    exam = json.loads(p.stdout)
    assert {k: a["verdict"] for k, a in exam["artifacts"].items()} == {
        "tflite-float": "pass", "tflite-int8": "fail", "onnx-float": "pass", "onnx-int8": "pass"}
    refused(cli("run", bundle, photos, "--json", timeout=300), "wrong model file")
    ok = cli("run", bundle, photos, "--json", "--no-verify", timeout=300)
    assert ok.returncode == 0 and json.loads(ok.stdout.splitlines()[-1])["summary"]["self_test"]["skipped"] == "--no-verify"


@pytest.mark.slow
def test_every_model_file_from_another_run_is_named_wrong_model_files(digits_bundle, other_int8, photos, tmp_path):
    """Issue 27, item 14: every file of a TFLite bundle from another run (hashes recomputed). Every artifact fails
    while the photos and the normalisation pass: with in_model true, edgecls.json's scale/offset reach no model,
    so the cause is the files, not the preprocessing."""
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    meta = json.loads((bundle / MANIFEST).read_text())
    meta["artifacts"] = {k: a for k, a in meta["artifacts"].items() if k.startswith("tflite")}
    meta["default_artifact"] = "tflite-int8"
    for art in meta["artifacts"].values():
        shutil.copyfile(other_int8.parent / art["file"], bundle / art["file"])
        art["sha256"], art["bytes"] = sha256_file(bundle / art["file"]), (bundle / art["file"]).stat().st_size
    (bundle / MANIFEST).write_text(json.dumps(meta, indent=2))
    assert meta["preprocessing"]["in_model"] is True

    p = cli("verify", bundle, "--json", timeout=300)
    refused(p, "wrong model files: every artifact (tflite-float, tflite-int8)")
    exam = json.loads(p.stdout)
    assert exam["photos"]["passed"] and exam["normalisation"] == "ok" and "preprocessing" not in exam["reason"]
    assert {k: a["verdict"] for k, a in exam["artifacts"].items()} == {"tflite-float": "fail", "tflite-int8": "fail"}
    refused(cli("run", bundle, photos, "--json", timeout=300), "self-test failed, not starting (--no-verify skips "
                                                                "it): wrong model files")


def test_other_correct_kernels_pass_within_the_measured_tolerance(digits_bundle):
    """TFLite's reference kernels (what tflite-runtime runs) round differently from XNNPACK: the exam must
    pass them, naming the difference, while holding them to the near-tie rule."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgecls.device.model.runtime import load_model
    from edgecls.device.model.verify import SAME_KERNELS, examine, load_golden

    b = load_bundle(digits_bundle)
    model = load_model(b, "tflite", "int8")
    model.interp = Interpreter(model_path=str(model.artifact.path),
                               experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    model.interp.allocate_tensors()
    ex = examine(model, load_golden(b))
    assert ex.passed, ex.why
    assert ex.max_abs_diff > SAME_KERNELS and ex.kernels == "other"   # really other arithmetic
    assert not ex.unrelated


def test_pixel_tolerance_follows_the_resampler():
    from edgecls.device.model.verify import pixel_tolerance
    from edgecls.preprocess import PreprocessSpec

    assert pixel_tolerance(PreprocessSpec(96, 96, resampler="exact")) == 0
    assert pixel_tolerance(PreprocessSpec(96, 96, resampler="opencv")) == 1
    assert pixel_tolerance(SimpleNamespace()) == 1   # a spec from before the field: OpenCV's


def test_bundle_without_exam_verify_says_so_and_run_continues(reference_bundle, photos):
    p = cli("verify", reference_bundle, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("INFO:")]
    assert p.returncode == 2 and lines == [lines[-1]] and "has no golden exam" in lines[-1], p.stderr
    r = cli("run", reference_bundle, photos, "--json", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.splitlines()[-1])["summary"]["self_test"]["skipped"] == "no golden exam"
    h = cli("run", reference_bundle, photos, "--headless", timeout=120)
    assert h.returncode == 0 and "note:" in h.stderr and "no golden exam" in h.stderr, h.stderr


def test_a_replaced_or_escaping_golden_file_is_a_broken_bundle(digits_bundle, photos, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(digits_bundle, b)
    meta = json.loads((b / MANIFEST).read_text())
    (b / meta["golden"]["outputs"]["tflite-int8"]["file"]).write_bytes(b"x")
    for p in (cli("verify", b, timeout=120), cli("run", b, photos, "--json", timeout=120)):
        assert p.returncode == 2 and "does not match its sha256" in p.stderr.splitlines()[-1], p.stderr
    out = edited(digits_bundle, tmp_path / "c", lambda m: m["golden"]["photos"][0].__setitem__("file", "../x.png"))
    p = cli("verify", out, timeout=120)
    assert p.returncode == 2 and "golden.photos[0].file '../x.png' points outside" in p.stderr, p.stderr

    # A 1 KB file whose array declares 10^12 values, its hash recomputed: refused from its header, never inflated.
    bomb = tmp_path / "d"
    shutil.copytree(digits_bundle, bomb)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(bomb / "golden" / "images.npz", "w") as z:
        z.writestr("array.npy", header.getvalue() + bytes(1000))
    edited_meta = json.loads((bomb / MANIFEST).read_text())
    edited_meta["golden"]["images"]["sha256"] = sha256_file(bomb / "golden" / "images.npz")
    (bomb / MANIFEST).write_text(json.dumps(edited_meta))
    p = cli("verify", bomb, timeout=120)
    assert p.returncode == 2 and "golden.images): ValueError: too large" in p.stderr.splitlines()[-1], p.stderr
