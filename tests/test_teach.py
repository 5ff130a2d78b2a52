"""`edgecls teach` (issue 33) end to end, as the device runs it: the real CLI in a subprocess (no TensorFlow may
load), the real digits bundle exported with its embedding output, real photos of a class it never saw (daisies).

The bundle is shared by the session: every teach here writes its version into tmp_path (--out), and each test
checks that the bundle it taught from is byte-identical afterwards.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED
from edgecls.bundle import MANIFEST
from edgecls.fsutil import sha256_file
from edgecls.metrics import shown_below
from test_device_run import ENV, WRAPPER, edgecls, json_lines, one_line_error

DAISY = SHARED / "data" / "flowers" / "daisy"


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def daisies(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of 12 daisy photos to teach from, and one of 40 others of the same class to test on (ten were too few
    to judge a rate on: 6 of 10 named is within chance of 80%, and the bundle, trained afresh in CI, varies)."""
    photos = sorted(DAISY.glob("*.jpg"))
    base = tmp_path_factory.mktemp("teach")
    for name, chosen in (("daisy", photos[:12]), ("unseen", photos[100:140])):
        (base / name).mkdir()
        for p in chosen:
            (base / name / p.name).symlink_to(p)
    return base / "daisy", base / "unseen"


def test_export_gives_every_model_its_embedding_output_and_the_teach_set(digits_bundle):
    """Each artifact's second output is the classifier's input: the stored Dense weights applied to the float
    model's embeddings give its probabilities; the int8 ones stay within int8's reach of them."""
    from edgecls.bundle import load_bundle
    from edgecls.device.model.runtime import load_model
    from edgecls.device.teach.head import load_npz, softmax
    from edgecls.device.model.verify import load_golden

    bundle = load_bundle(digits_bundle)
    teach = load_npz(bundle.root, bundle.meta["teach"], "teach")
    assert teach["embeddings"].dtype == np.float16 and teach["kernel"].shape == (1280, len(bundle.labels))
    assert np.bincount(teach["classes"]).tolist() == [20] * len(bundle.labels)
    images = load_golden(bundle).images
    for key, art in bundle.artifacts.items():
        assert sorted(art.meta["outputs"].values()) == [0, 1] and art.meta["embedding"]["shape"][-1] == 1280
        model = load_model(bundle, art.fmt.family, art.fmt.precision)
        probs, emb = model.predict_both(images)
        rebuilt = softmax(emb @ teach["kernel"] + teach["bias"])
        limit = 1e-4 if art.fmt.precision == "float" else 0.25
        assert np.abs(rebuilt - probs).max() < limit, key


@pytest.fixture(scope="module")
def taught(digits_bundle, daisies, tmp_path_factory) -> tuple[Path, dict, dict]:
    """(the taught version, what teach reported, the parent's file hashes before teaching)."""
    before = tree_hashes(digits_bundle)
    out = tmp_path_factory.mktemp("versions") / "bundle-v2"
    p = edgecls("teach", digits_bundle, "--label", "daisy", "--source", daisies[0], "--count", "10", "--out", out,
                "--json")
    assert p.returncode == 0, p.stderr
    return out, json.loads(p.stdout), before


def test_teach_writes_a_verified_device_local_version_and_keeps_the_old_one(taught, digits_bundle, daisies):
    out, report, before = taught
    meta = json.loads((out / MANIFEST).read_text())
    parent = json.loads((digits_bundle / MANIFEST).read_text())
    assert meta["labels"] == parent["labels"] + ["daisy"] and report["labels"] == meta["labels"]
    assert (out / "labels.txt").read_text().splitlines() == meta["labels"]
    derived = meta["derived"]
    assert derived["device_local"] is True and derived["publisher"] is False and derived["action"] == "teach"
    assert derived["parent"]["manifest_sha256"] == sha256_file(digits_bundle / MANIFEST)
    used = {Path(u["file"]).name: u["sha256"] for u in derived["photos"]}
    assert len(used) == 10 and all(sha256_file(daisies[0] / n) == h for n, h in used.items())
    assert meta["head"]["base_labels"] == parent["labels"] and meta["unknown"]["kept"] >= 0.95 * meta["unknown"]["images"]
    assert tree_hashes(digits_bundle) == before   # the parent is untouched, kept for going back
    p = edgecls("verify", out)
    assert p.returncode == 0 and "verdict: PASS" in p.stdout, p.stdout + p.stderr
    # Daisies it was not taught with: the new class is the model's answer, and its label — not unknown, though the
    # digits classes are far tighter than ten daisy photos: the taught class has its own threshold, from its teach
    # photos scored leave-one-out (device/model/unknown.py; with the shared one alone most of these read unknown).
    # Judged as the export gate judges a rate (metrics.shown_below): the classifier's answer on 40 unseen daisies is
    # not shown below 90%, its label (not unknown) not below 80%.
    recs = run_records(out, daisies[1])
    top, named = sum(r["top"][0]["label"] == "daisy" for r in recs), sum(r["label"] == "daisy" for r in recs)
    assert not shown_below(top, len(recs), 0.9) and not shown_below(named, len(recs), 0.8), (top, named, len(recs))
    assert {r["label"] for r in recs} <= {"daisy", "unknown"}
    taught_rule = meta["unknown"]["taught"][str(len(parent["labels"]))]
    assert meta["unknown"]["class_thresholds"][-1] < meta["unknown"]["threshold"] and taught_rule["photos"] == 10


def run_records(bundle: Path, folder: Path, *flags) -> list[dict]:
    p = edgecls("run", bundle, "--source", folder, "--json", "--headless", *flags)
    assert p.returncode == 0, p.stderr
    recs, _ = json_lines(p.stdout)
    assert len(recs) == len(list(folder.iterdir()))
    return recs


def run_labels(bundle: Path, folder: Path, *flags) -> list[str]:
    return [r["label"] for r in run_records(bundle, folder, *flags)]


def test_run_answers_unknown_to_what_it_never_saw_and_threshold_overrides(digits_bundle, daisies):
    meta = json.loads((digits_bundle / MANIFEST).read_text())
    rule = meta["unknown"]
    assert rule["rule"] == "class-mean-cosine" and rule["kept"] >= 0.95 * rule["images"]
    unknown = run_labels(digits_bundle, daisies[1]).count("unknown")     # digits model, daisy photos
    assert not shown_below(unknown, 40, 0.8), unknown
    assert "unknown" not in run_labels(digits_bundle, daisies[1], "--threshold", "0.05")


def test_more_photos_and_forget_make_further_versions(taught, daisies, tmp_path):
    out, _, before_v2 = taught
    v2_hashes = tree_hashes(out)
    more = edgecls("teach", out, "--more", "daisy", "--source", daisies[0], "--count", "4", "--out", tmp_path / "v3",
                   "--json")
    assert more.returncode == 0, more.stderr
    v3 = json.loads((tmp_path / "v3" / MANIFEST).read_text())
    assert v3["derived"]["action"] == "more" and v3["labels"][-1] == "daisy"
    forget = edgecls("teach", tmp_path / "v3", "--forget", "daisy", "--out", tmp_path / "v4", "--json")
    assert forget.returncode == 0, forget.stderr
    v4 = json.loads((tmp_path / "v4" / MANIFEST).read_text())
    assert "daisy" not in v4["labels"] and len(v4["labels"]) == len(v3["labels"]) - 1
    assert edgecls("verify", tmp_path / "v4").returncode == 0
    assert tree_hashes(out) == v2_hashes


def test_bad_requests_fail_in_one_line_and_write_nothing(digits_bundle, reference_bundle, daisies, tmp_path):
    before = tree_hashes(digits_bundle)
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.jpg").symlink_to(next(daisies[0].iterdir()))
    (corrupt / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "v2"
    cases = [
        ((digits_bundle, "--label", "3", "--source", daisies[0]), "already has a class '3'"),
        ((digits_bundle, "--label", "new", "--source", empty), "no image files"),
        ((digits_bundle, "--label", "../up", "--source", daisies[0]), "is not a class name"),
        ((digits_bundle, "--label", "a/b", "--source", daisies[0]), "is not a class name"),
        ((digits_bundle, "--label", "new", "--source", corrupt), "cannot read"),
        ((digits_bundle, "--forget", "nope"), "is not one of the bundle's classes"),
        ((reference_bundle, "--label", "new", "--source", daisies[0]), "re-export it"),
    ]
    for args, fragment in cases:
        one_line_error(edgecls("teach", *args, "--out", out), fragment)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")], args
    assert tree_hashes(digits_bundle) == before


def test_sigkill_mid_teach_leaves_the_old_bundle_running(digits_bundle, daisies, tmp_path):
    """SIGKILL while the new version is being written: no version appears, the bundle still verifies and runs,
    and the next teach clears the killed one's hidden folder and succeeds."""
    before = tree_hashes(digits_bundle)
    out = tmp_path / "v2"
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "teach", str(digits_bundle), "--label", "daisy",
                             "--source", str(daisies[0]), "--count", "10", "--out", str(out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".v2.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "teach finished before its version was being written: nothing to kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists() and list(tmp_path.glob(".v2.*"))
    assert tree_hashes(digits_bundle) == before
    assert edgecls("verify", digits_bundle).returncode == 0
    run = edgecls("run", digits_bundle, "--source", next(daisies[0].iterdir()), "--json", "--headless")
    assert run.returncode == 0, run.stderr
    again = edgecls("teach", digits_bundle, "--label", "daisy", "--source", daisies[0], "--count", "10", "--out", out)
    assert again.returncode == 0, again.stderr
    assert out.is_dir() and not list(tmp_path.glob(".v2.*"))


def int8_only_copy(bundle: Path, dest: Path) -> Path:
    """The bundle as a Pi carries it: its int8 artifacts only (their files and the exam unchanged)."""
    import shutil

    shutil.copytree(bundle, dest)
    meta = json.loads((dest / MANIFEST).read_text())
    for key in [k for k in meta["artifacts"] if "float" in k]:
        (dest / meta["artifacts"].pop(key)["file"]).unlink()
    if meta.get("default_artifact") not in meta["artifacts"]:
        meta["default_artifact"] = next(iter(meta["artifacts"]))
    (dest / MANIFEST).write_text(json.dumps(meta, indent=2))
    return dest


def other_kernels(version: Path, key: str, step: float) -> None:
    """The exam as another CPU's int8 kernels see it: its stored answers (the host's, and the float stand-in, which
    are the same int8 answers) a few 1/256 steps away on the least likely class of each image (the top-1 never
    moves); the files and their sha256 rewritten."""
    from edgecls.convert.golden import save_array

    meta = json.loads((version / MANIFEST).read_text())
    for e in (meta["golden"]["outputs"][key], meta["golden"]["float"]):
        with np.load(version / e["file"], allow_pickle=False) as z:
            probs = z["array"].copy()
        probs[np.arange(len(probs)), probs.argmin(1)] += step
        save_array(version / e["file"], probs)
        e["sha256"] = sha256_file(version / e["file"])
    (version / MANIFEST).write_text(json.dumps(meta, indent=2))


def test_a_version_taught_on_an_int8_only_bundle_still_tells_other_kernels_from_another_model(
        digits_bundle, daisies, tmp_path):
    """A Pi carries int8 files only, so a version taught there has no float model to answer its exam: its int8
    answers stand in, and the exam keeps what int8 moved the parent from its real float model. Without that, the
    host's own quantization error read 0 and another CPU's rounding looked like another model (a version taught on
    x86 failed `verify` under tflite-runtime on the emulated Pi 4: mean |Δp| 0.004 vs 2 × 0.000)."""
    from edgecls.bundle import load_bundle
    from edgecls.device.model.verify import load_golden

    parent = int8_only_copy(digits_bundle, tmp_path / "parent")
    out = tmp_path / "parent-v2"
    p = edgecls("teach", parent, "--label", "daisy", "--source", daisies[0], "--count", "5", "--out", out)
    assert p.returncode == 0, p.stderr
    stored = load_golden(load_bundle(parent))
    key = next(iter(json.loads((out / MANIFEST).read_text())["artifacts"]))
    want = float(np.abs(stored.outputs[key] - stored.float).mean())
    meta = json.loads((out / MANIFEST).read_text())
    assert want > 0.001 and meta["golden"]["float"]["stand_in_error"] == pytest.approx(want, abs=1e-6)
    assert meta["golden"]["float"]["source"].startswith(key)   # the stand-in: this artifact's own answers
    other_kernels(out, key, 8 / 256)   # mean |Δp| 8/256/11 ≈ 0.003: the Pi's tflite-runtime moved 0.004
    p = edgecls("verify", out)
    assert p.returncode == 0 and "verdict: PASS" in p.stdout, p.stdout + p.stderr
    meta = json.loads((out / MANIFEST).read_text())
    del meta["golden"]["float"]["stand_in_error"]   # the exam as it was written before: the same rounding fails
    (out / MANIFEST).write_text(json.dumps(meta, indent=2))
    p = edgecls("verify", out)
    assert p.returncode != 0 and "not a rounding difference" in p.stdout + p.stderr, p.stdout + p.stderr
