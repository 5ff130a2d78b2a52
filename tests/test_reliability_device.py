"""Issue 17, the device and bundle half: hostile bundles, hostile images, broken streams, full disks, FIFOs,
leftovers after SIGKILL, permissions, and the MJPEG server's bounds. Real files, processes and sockets.

Most tests use the committed 96 px digits bundle (tests/data/digits96/bundle), copied before editing.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecls.bundle import MANIFEST
from edgecls.fsutil import sha256_file

from conftest import ROOT, cli

DIGITS96 = ROOT / "tests" / "data" / "digits96" / "bundle"


def one_line_error(p, fragment: str, code: int = 2) -> None:
    """Exit `code`, exactly one stderr line `edgecls: error: …` containing `fragment`, no traceback."""
    err = [line for line in p.stderr.splitlines() if line.strip() and not line.startswith("INFO:")]
    assert p.returncode == code, p.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("edgecls: error: ") and fragment in err[0], p.stderr[-3000:]


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
    """The digits96 bundle whose onnx-int8 artifact is replaced by `onnx_model(**model_kw)` (hash updated)."""
    bundle = bundle_copy(dest)
    onnx_model(bundle / "model_int8.onnx", **model_kw)
    edit_manifest(bundle, _set("artifacts.onnx-int8.sha256", sha256_file(bundle / "model_int8.onnx")))
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
    one_line_error(cli("run", bundle, one_photo, "--format", family, "--json", timeout=120),
                   "model has 10 outputs but the bundle has 3 labels")


def test_external_data_is_found_in_initializers_and_constant_attributes(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecls.device.onnx_scan import external_tensors

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
    text = (bundle / MANIFEST).read_text().replace('"version": 1', '"version": NaN')
    (bundle / MANIFEST).write_text(text)
    with pytest.raises(EdgeclsError, match="NaN is not valid JSON"):
        load_bundle(bundle)
