"""A taught bundle version, written whole or not at all beside its parent (which is never touched): the parent's
files, the new classifier (head.npz) and teach set (teach.npz), the new labels, provenance marking it a
device-local derivative, and a regenerated exam, taken before the version is renamed into place. No TensorFlow.

The exam (golden/) keeps the parent's stored images and photos; its answers are recomputed here through the new
classifier for every artifact, and its float reference is the float artifact's answer through the same
classifier (the Keras model never saw the new class). So `edgecls verify` on the new version holds every other
device to what this device answered.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from edgecls.bundle import LABELS_TXT, MANIFEST, Bundle, load_bundle
from edgecls.convert.golden import entry, save_array
from edgecls.errors import EdgeclsError
from edgecls.formats import BY_KEY
from edgecls.fsutil import atomic_dir, atomic_write_json, atomic_write_text, sha256_file

FLOAT_REFERENCE = ("tflite-float", "onnx-float")


def next_version(root: Path) -> Path:
    """BUNDLE-v2, -v3, …: the first free name beside the bundle (a version's own -vN is replaced, not stacked)."""
    base = re.sub(r"-v\d+$", "", root.resolve().name)
    n = 2
    while (root.resolve().parent / f"{base}-v{n}").exists():
        n += 1
    return root.resolve().parent / f"{base}-v{n}"


def copy_parent(src: Path, dest: Path) -> None:
    """Every file of the parent (hidden ones aside: a killed writer's leftovers are not part of it)."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or path.is_symlink():
            continue
        if path.is_dir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
        else:
            shutil.copy2(path, dest / rel)


def provenance(bundle: Bundle, action: str, label: str, photos) -> dict:
    from edgecls import __version__
    from edgecls.device.data.photos import iso_utc

    parent = bundle.meta.get("derived", {})
    return {"device_local": True, "publisher": False, "action": action, "label": label, "time": iso_utc(),
            "edgecls": __version__,
            "parent": {"path": str(bundle.root.resolve()), "manifest_sha256": sha256_file(bundle.root / MANIFEST),
                       "labels": list(bundle.labels), "device_local": bool(parent)},
            "photos": photos.used if photos is not None else [],
            "note": "taught on a device, not the publisher's export: the report and every artifact's metrics are "
                    "the parent's, measured before this change"}


def runnable(key: str) -> bool:
    """Whether this device has the runtime of artifact `key` (its exam answers are computed here)."""
    import importlib.util

    module = {"litert": None, "onnxruntime": "onnxruntime"}.get(BY_KEY[key].runtime)
    return module is None or importlib.util.find_spec(module) is not None


def new_meta(bundle: Bundle, dest: Path, state, rule: dict, prov: dict) -> dict:
    """The new version's edgecls.json, less its exam: artifacts without an embedding output are left out."""
    from edgecls.device.teach.head import HEAD_FILE, save_npz

    save_npz(dest / bundle.meta["teach"]["file"], state.arrays)
    save_npz(dest / HEAD_FILE, {"kernel": state.kernel, "bias": state.bias})
    atomic_write_text(dest / LABELS_TXT, "\n".join(state.labels) + "\n")
    meta = json.loads((bundle.root / MANIFEST).read_text())
    kept = {k: a for k, a in meta["artifacts"].items() if "embedding" in (a.get("outputs") or {}) and runnable(k)}
    prov["left_out"] = sorted(set(meta["artifacts"]) - set(kept))   # no embedding output, or no runtime here
    meta["artifacts"] = kept
    if meta.get("default_artifact") not in meta["artifacts"]:
        meta["default_artifact"] = meta["teach"].get("source_artifact")
    meta.update(labels=list(state.labels), unknown=rule, derived=prov,
                teach={**meta["teach"], **entry(dest, dest / meta["teach"]["file"])},
                head={**entry(dest, dest / HEAD_FILE), "base_labels": list(state.base_labels)})
    return meta


def stand_in_error(stored, key: str) -> float:
    """An int8-only bundle has no float model to answer the exam: its int8 answers stand in, and the exam keeps what
    int8 moved the parent from float (mean |Δp|, its own stand-in's where the parent was taught too), so that another
    CPU's rounding is still judged against a real quantization error (device/model/verify.py: Golden)."""
    if key not in stored.outputs:
        return stored.stand_in_error
    return round(max(float(np.abs(stored.outputs[key] - stored.float).mean()), stored.stand_in_error), 6)


def regenerate_exam(dest: Path, meta: dict, parent: Bundle) -> dict:
    """The exam's answers through the new classifier, on the parent's stored images (`golden` block)."""
    from edgecls.device.model.runtime import load_model
    from edgecls.device.model.verify import load_golden

    stored = load_golden(parent)
    if stored is None:
        raise EdgeclsError(f"bundle {parent.root} has no golden exam to carry over: re-export it")
    bundle = load_bundle(dest)   # edgecls.json with the head, the parent's exam still
    golden = dict(meta["golden"])
    outputs, answers = {}, {}
    for key in [k for k in meta["artifacts"] if k in golden["outputs"]]:
        fmt = BY_KEY[key]
        model = load_model(bundle, fmt.family, fmt.precision)
        answers[key] = model.predict(stored.images).astype(np.float32)
        path = dest / golden["outputs"][key]["file"]
        save_array(path, answers[key])
        outputs[key] = entry(dest, path, runtime=model.runtime)
    reference = next((k for k in FLOAT_REFERENCE if k in answers), next(iter(answers)))
    save_array(dest / golden["float"]["file"], answers[reference])
    (dest / golden["labels"]["file"]).write_text(json.dumps(list(meta["labels"])))
    stand_in = {} if BY_KEY[reference].precision == "float" else {"stand_in_error": stand_in_error(stored, reference)}
    golden.update(outputs=outputs, float={**entry(dest, dest / golden["float"]["file"]), "source": f"{reference} "
                  "through head.npz (taught on the device)", **stand_in},
                  labels=entry(dest, dest / golden["labels"]["file"], count=len(meta["labels"])))
    return golden


def write_version(bundle: Bundle, out: Path, state, rule: dict, action: str, label: str, photos) -> dict:
    """Write the version into a hidden folder beside `out`, take its exam, then rename it into place."""
    from edgecls.device.model.verify import ExamFailed, verify

    prov = provenance(bundle, action, label, photos)
    with atomic_dir(out) as tmp:
        copy_parent(bundle.root, tmp)
        meta = new_meta(bundle, tmp, state, rule, prov)
        atomic_write_json(tmp / MANIFEST, meta)
        meta["golden"] = regenerate_exam(tmp, meta, bundle)
        atomic_write_json(tmp / MANIFEST, meta)
        written = load_bundle(tmp)
        exam = verify(written, list(written.artifacts))
        if not exam.passed:
            raise ExamFailed(f"the taught version failed its own exam, nothing written: {exam.reason}")
    return {"bundle": str(out), "parent": str(bundle.root), "action": action, "label": label,
            "labels": list(state.labels), "photos": len(prov["photos"]), "unknown": rule,
            "exam": f"passed ({len(written.artifacts)} artifacts)"}
