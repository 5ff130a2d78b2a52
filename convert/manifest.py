"""edgecls.json as export writes it: each artifact placed in the bundle with its hash and I/O (`place`), then
the whole manifest written once, after the measurement and the gate (`write`)."""
from __future__ import annotations

import shutil
from pathlib import Path

from edgecls.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, LABELS_TXT, MANIFEST
from edgecls.formats import BY_KEY
from edgecls.fsutil import atomic_write_json, atomic_write_text, sha256_file
from edgecls.versions import library_versions

METRIC_KEYS = ("accuracy", "accuracy_ci95", "reference", "agreement", "agreement_heldout", "agreement_all",
               "mean_tv_all", "drop", "flips", "per_class_delta", "latency_ms", "latency_ratio", "max_abs_diff", "verdict")


def place(bundle_dir: Path, run, key: str, built) -> dict:
    """Copy a built artifact into the bundle with the labels embedded in the file (ONNX: and preprocessing) and
    return its edgecls.json entry: file, sha256 (of the final file), bytes, I/O, and what the builder records
    (method, float ops, …). The same entry is what the measurement loads the artifact with, so it is measured,
    and the golden answers computed, on the very file the device runs."""
    from edgecls.convert import onnx_export, tflite
    from edgecls.convert.context import entry_fields_of

    dest = bundle_dir / BY_KEY[key].filename
    if BY_KEY[key].runtime == "onnxruntime":   # onnx-int8-trt too: an ONNX file, labels embedded alike
        shutil.copyfile(built.source, dest)
        onnx_export.embed_metadata(dest, run.labels, run.spec.to_dict(), {"artifact": key, "method": built.method})
    else:   # metadata only: every tensor and buffer the runtime reads is unchanged (tflite.compact)
        dest.write_bytes(tflite.with_labels(Path(built.source).read_bytes(), list(run.labels)))
    io = entry_fields_of(key, dest, len(run.labels))
    return {"file": dest.name, "sha256": sha256_file(dest), "bytes": dest.stat().st_size, **io,
            "output_kind": "probabilities", "method": built.method, **built.meta}


def versions() -> dict:
    return library_versions("tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx", "onnx",
                            "onnxruntime", "ai-edge-litert")


def write(bundle_dir: Path, run, keys: list[str], entries: dict[str, dict], opts, result, golden: dict,
          calibration: dict | None = None, extra: dict | None = None) -> dict:
    """edgecls.json; `golden` is the bundle's exam (convert/golden.py); `extra`: more top-level blocks (the teach
    set and the unknown rule: convert/embeddings.py)."""
    from edgecls.convert import gate

    atomic_write_text(bundle_dir / LABELS_TXT, "\n".join(run.labels) + "\n")
    artifacts = {}
    for key in keys:
        row = result.rows[key]
        artifacts[key] = {**entries[key], "metrics": {k: row[k] for k in METRIC_KEYS if k in row}}
    agreement = {k: (result.rows[k].get("agreement_heldout") or {}).get("rate", 0.0) for k in keys}
    ref = result.rows[result.reference]
    meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "labels": run.labels,
            "preprocessing": run.spec.to_dict(),
            "default_artifact": gate.default_artifact(keys, result.verdicts, agreement),
            "artifacts": artifacts,
            "report": {"split": result.split, "images": result.images, "all_images": result.all_images,
                       "reference": result.reference, "keras_accuracy": ref["accuracy"], "gate": result.gate,
                       result.reference: {k: ref[k] for k in ("accuracy", "accuracy_ci95", "latency_ms")},
                       "sizes": result.sizes, "files": {"markdown": "report.md", "html": "report.html"},
                       **({"float_margin": result.float_margin} if result.float_margin else {})},  # run --shadow's drift reference
            "source_run": {"path": str(run.root.resolve()), "model_sha256": sha256_file(run.model_path),
                           "backbone": (run.meta.get("config") or {}).get("backbone")},
            "export": {k: getattr(opts, k) for k in ("int8_method", "weight_rounding", "io_dtype", "onnx_target",
                                                      "calib_samples", "full_int8",
                                                      "qat_epochs", "target_agreement", "max_latency_ratio",
                                                      "max_float_ops", "max_drop", "min_agreement")}
                      | {"calibration": calibration or {"source": "training split"}},
            "versions": versions(), "golden": golden, **(extra or {})}
    atomic_write_json(bundle_dir / MANIFEST, meta)
    return meta
