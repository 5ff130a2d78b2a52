"""The contracts every stage shares hold one fact in one place, and the device refuses to guess one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgecls.bundle import MANIFEST, load_bundle
from edgecls.errors import EdgeclsError

from conftest import ROOT, cli

BUNDLE = ROOT / "tests" / "data" / "digits96" / "bundle"


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(BUNDLE, dest)
    return dest


@pytest.mark.parametrize("field", ["scale", "offset", "resize", "color_order", "in_model"])
def test_a_bundle_without_a_preprocessing_fact_is_refused_not_guessed(tmp_path, field):
    b = _copy(tmp_path)
    meta = json.loads((b / MANIFEST).read_text())
    del meta["preprocessing"][field]
    (b / MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(EdgeclsError, match=f"missing {field}"):
        load_bundle(b)
    r = cli("bench", b, "--runs", "1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("edgecls: error:") and field in lines[0]


def test_labels_txt_must_agree_with_the_manifest(tmp_path):
    b = _copy(tmp_path)
    assert load_bundle(b).labels == (b / "labels.txt").read_text().splitlines()
    labels = (b / "labels.txt").read_text().splitlines()
    (b / "labels.txt").write_text("\n".join(labels[1:] + labels[:1]) + "\n")
    with pytest.raises(EdgeclsError, match="labels.txt does not list the labels"):
        load_bundle(b)


@pytest.mark.parametrize("family", ["onnx", "tflite"])
def test_a_model_file_with_other_labels_is_refused(tmp_path, family):
    """The labels export embeds in the ONNX and TFLite files must be the bundle's: swapped labels (same count,
    consistent edgecls.json and labels.txt) would otherwise name every answer wrong."""
    from edgecls.device.model.runtime import load_model

    b = _copy(tmp_path)
    meta = json.loads((b / MANIFEST).read_text())
    meta["labels"] = meta["labels"][1:] + meta["labels"][:1]
    (b / MANIFEST).write_text(json.dumps(meta))
    (b / "labels.txt").write_text("\n".join(meta["labels"]) + "\n")
    with pytest.raises(EdgeclsError, match="carries the labels"):
        load_model(load_bundle(b), family, "int8")
    assert load_model(load_bundle(BUNDLE), family, "int8").labels_bound
