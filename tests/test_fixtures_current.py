"""A committed fixture is what today's code makes (issue 28).

tests/data/digits96/bundle is a bundle the tests and the Pi-stack figures rest on; made by an older `edgecls export`
(another bundle version, resampler, int8 recipe), every figure measured on it would describe a bundle no user gets.
Here its format and recipe are held to today's: the bundle version and the run's resampler from the code, the export
block's options equal to `edgecls export`'s defaults (convert/export.py: ExportOptions, the one place they are
written), and its shape equal to what export writes today (the session's tiny bundle, exported by this code). When
this fails, regenerate the fixture as tests/data/digits96/README.md says.
"""
from __future__ import annotations

import json
from dataclasses import fields

from edgecls.bundle import BUNDLE_VERSION, MANIFEST, load_bundle
from edgecls.preprocess import PreprocessSpec

from conftest import ROOT

FIXTURE = ROOT / "tests" / "data" / "digits96" / "bundle"
DEFAULT_CALIBRATION = "training split"   # what the export block records when no --calib folder was given


def manifest(bundle) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def recipe_options(meta: dict) -> dict:
    """The export block's options (how the int8 artifacts were made), without the calibration images' record."""
    return {k: v for k, v in meta.get("export", {}).items() if k != "calibration"}


def int8_shape(meta: dict) -> dict[str, set[str]]:
    """Which facts each int8 artifact records about how it was made (not the values, which are the model's)."""
    made = ("input", "quantization", "weight_rounding", "method", "output_kind")
    out = {}
    for key, art in meta["artifacts"].items():
        if key.endswith("-int8"):
            out[key] = {k for k in made if k in art} | {f"input.{k}" for k in art.get("input", {})}
    return out


def test_the_committed_bundle_has_todays_format():
    meta = manifest(FIXTURE)
    assert meta["version"] == BUNDLE_VERSION
    default_resampler = next(f.default for f in fields(PreprocessSpec) if f.name == "resampler")
    assert load_bundle(FIXTURE).spec.resampler == default_resampler
    assert "golden" in meta, "no exam: `edgecls verify` has nothing to check on a device"


def test_the_committed_bundle_was_exported_with_todays_defaults():
    from edgecls.convert.export import default

    meta = manifest(FIXTURE)
    options = recipe_options(meta)
    assert options, "no export block: made before export recorded its recipe"
    differ = {k: (v, default(k)) for k, v in options.items() if v != default(k)}
    assert not differ, f"exported with other options than today's defaults (fixture, default): {differ}"
    assert meta["export"]["calibration"]["source"] == DEFAULT_CALIBRATION
    for key, art in meta["artifacts"].items():
        if "weight_rounding" in art:
            assert art["weight_rounding"]["method"] == default("weight_rounding"), key


def test_the_committed_bundle_records_what_export_writes_today(digits_bundle):
    """Same top-level blocks, export options, preprocessing fields and per-artifact facts as a bundle this code just
    exported; and its TFLite file carries its labels (bound at load, device/model/runtime.py)."""
    from edgecls.device.model.runtime import load_model

    fixture, today = manifest(FIXTURE), manifest(digits_bundle)
    assert fixture.keys() == today.keys()
    assert recipe_options(fixture).keys() == recipe_options(today).keys()
    assert fixture["preprocessing"].keys() == today["preprocessing"].keys()
    assert fixture["golden"].keys() == today["golden"].keys()
    fixture_int8, today_int8 = int8_shape(fixture), int8_shape(today)
    assert fixture_int8.keys() == {"tflite-int8", "onnx-int8"}
    for key, facts in fixture_int8.items():
        assert facts == today_int8[key], key
    assert load_model(load_bundle(FIXTURE), "tflite", "int8").labels_bound

