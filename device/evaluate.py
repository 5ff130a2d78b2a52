"""The parity table, and `evaluate()` behind `edgecls eval BUNDLE DATA_DIR` (the command is in device/commands.py):
how far each artifact is from the float model.

`export` builds its report with the same `measure()` / `parity()` / `table()` as `eval`, and compares each
artifact with the same reference (`agreement_reference`: an int8 artifact with its float twin), so the numbers
in a bundle's edgecls.json and the numbers `eval` prints on the Pi come from the same code: `eval` on the run's
held-out test photos gives the export's held-out agreement, photo for photo. No TensorFlow here: this module
runs on the device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgecls.metrics import agreement, agreement_text, confusion, flips, flips_text, per_class_accuracy
from edgecls.progress import progress_bar

Predict = Callable[[np.ndarray], np.ndarray]   # (N,H,W,3) uint8 → (N,classes) probabilities


@dataclass
class Measured:
    probs: np.ndarray
    latency_ms: float     # median over single images: what one camera frame costs on this host


def measure(predict: Predict, pixels: np.ndarray, progress=None) -> Measured:
    """Run `predict` one image at a time (batch 1, as on a camera) and time each call."""
    predict(pixels[:1])   # warm-up: first call allocates / JIT-compiles
    probs, times = [], []
    for i in range(len(pixels)):
        t0 = time.perf_counter()
        probs.append(np.asarray(predict(pixels[i:i + 1]), np.float32).reshape(1, -1))
        times.append(time.perf_counter() - t0)
        if progress:
            progress(i + 1, len(pixels))
    return Measured(np.concatenate(probs, 0), float(np.median(times) * 1000.0))


def parity(results: dict[str, Measured], y: np.ndarray, labels: list[str],
           reference: str | dict[str, str | None] | None) -> dict[str, dict]:
    """Per result: top-1 accuracy, agreement with its reference (with the count: `agreed` of `images`), per-class
    accuracy and its delta (pp) vs the reference. `reference` is one key for every row, or a key per row
    (`agreement_reference`: each int8 artifact against its float twin); each row names its own (`reference`)."""
    n = len(labels)
    refs = reference if isinstance(reference, dict) else {key: reference for key in results}
    rows = {}
    for key, m in results.items():
        pred = m.probs.argmax(1)
        pc = per_class_accuracy(y, pred, n)
        ref = refs.get(key)
        ref_pred = results[ref].probs.argmax(1) if ref in results else None
        ref_pc = per_class_accuracy(y, ref_pred, n) if ref_pred is not None else None
        rows[key] = {"accuracy": float((pred == y).mean()) if len(y) else 0.0,
                     "reference": ref if ref_pred is not None else None,
                     "agreement": agreement(pred, ref_pred) if ref_pred is not None else None,
                     "agreed": int((pred == ref_pred).sum()) if ref_pred is not None else None,
                     "images": int(len(pred)),
                     "latency_ms": round(m.latency_ms, 3),
                     "per_class_accuracy": {labels[i]: _num(pc[i]) for i in range(n)},
                     "per_class_delta": ({labels[i]: _num((pc[i] - ref_pc[i]) * 100.0) for i in range(n)}
                                         if ref_pc is not None else None),
                     "confusion": confusion(y, pred, n).tolist(),
                     "predictions": pred.tolist()}
        if ref_pred is not None and ref != key:   # what the answers that changed were (metrics.flips)
            rows[key]["flips"] = flips(results[ref].probs, m.probs, y)
    return rows


def flips_lines(rows: dict[str, dict]) -> list[str]:
    """"tflite-int8 vs tflite-float: 2 answers changed: …" per int8 row that changed any answer (metrics.flips):
    what export prints under its table and writes in report.md, and what `eval` prints."""
    from edgecls.formats import BY_KEY

    return [f"{key} vs {r['reference']}: {flips_text(r['flips'])}" for key, r in rows.items()
            if r.get("flips", {}).get("flips") and key in BY_KEY and BY_KEY[key].precision == "int8"]


def _num(v) -> float | None:
    return None if v is None or np.isnan(v) else round(float(v), 4)


def worst_class_delta(row: dict) -> tuple[str, float] | None:
    deltas = {k: v for k, v in (row.get("per_class_delta") or {}).items() if v is not None}
    if not deltas:
        return None
    k = min(deltas, key=deltas.get)
    return k, deltas[k]


def table(rows: dict[str, dict], reference: str | None, sizes: dict[str, int] | None = None, title: str = "",
          reference_accuracy: float | None = None):
    """The parity table as a rich Table (print it with a rich Console). Each row is compared with its own
    `reference` when it names one (int8 with its float twin), else with `reference`; the "vs" column names it."""
    from rich.markup import escape
    from rich.table import Table

    # Class names and folder names are data, not markup: "[red]x" must print as itself.
    t = Table(title=escape(title) if title else None)
    for col in ("model", "vs", "top-1", "Δ vs float (pp)", "agreement", "worst class Δ (pp)", "latency ms", "size"):
        named = col in ("model", "vs")   # the model names never fold nor shorten: they say what is compared
        t.add_column(col, justify="left" if named else "right", no_wrap=named,
                     min_width=len("tflite-float") if named else None)
    for key, r in rows.items():
        ref = r.get("reference") or reference
        ref_acc = rows[ref]["accuracy"] if ref in rows else r.get("reference_accuracy", reference_accuracy)
        own = key == ref
        drop = "" if ref_acc is None or own else f"{(r['accuracy'] - ref_acc) * 100:+.2f}"
        agree = "" if r.get("agreement") is None or own else _agreement_text(r)
        worst = worst_class_delta(r) if not own else None
        size = (sizes or {}).get(key)
        t.add_row(key, "" if own or ref is None else ref, f"{r['accuracy'] * 100:.2f}%", drop, agree,
                  f"{worst[1]:+.1f} ({escape(worst[0])})" if worst else "", f"{r['latency_ms']:.2f}",
                  f"{size / 1e6:.2f} MB" if size else "")
    return t


def _agreement_text(row: dict) -> str:
    """"96.7% (58/60)": the rate with its count when the row has it."""
    if row.get("agreed") is not None and row.get("images"):
        return agreement_text(row["agreed"], row["images"], decimals=1)
    return f"{row['agreement'] * 100:.1f}%"


def float_reference(keys: list[str]) -> str | None:
    """The float artifact float rows are compared with: TFLite float first, as the device runs it."""
    from edgecls.formats import FORMATS

    return next((f.key for f in FORMATS if f.precision == "float" and f.key in keys), None)


def agreement_reference(key: str, keys: list[str]) -> str | None:
    """What `key` is compared with (agreement, Δ top-1, per-class Δ), in export and eval alike: an int8 artifact
    with the float artifact of its own family (tflite-int8 vs tflite-float, onnx-int8 vs onnx-float: the twin
    `run --shadow` and `bench` pair it with), a float artifact (or an int8 one without a twin) with
    `float_reference`."""
    from edgecls.formats import float_twin

    twin = float_twin(key)   # onnx-int8-trt's is onnx-float (edgecls/formats.py: Format.twin)
    if twin is not None and twin in keys:
        return twin
    return float_reference(keys)


# ---------------------------------------------------------------- the `eval` command

def evaluate(bundle_dir: str, data_dir: str, family: str | None = None, precision: str | None = None,
             threads: int | None = None, show_progress: bool = True) -> dict:
    """Run the bundle's artifacts on every image of `data_dir` (classes must be the bundle's labels)."""
    from edgecls.bundle import load_bundle
    from edgecls.dataset import load_arrays, scan
    from edgecls.device.model.runtime import load_model
    from edgecls.errors import EdgeclsError

    bundle = load_bundle(bundle_dir)
    keys = bundle.select(family, precision)
    reference = float_reference(list(bundle.artifacts))
    # Each artifact against its reference (int8: its float twin), which runs too when not selected.
    references = {key: agreement_reference(key, list(bundle.artifacts)) for key in keys}
    run_keys = list(dict.fromkeys(keys + [r for r in references.values() if r]))
    with progress_bar("checking images", quiet=not show_progress, total=1) as advance:
        found = scan(data_dir, classes=bundle.labels, progress=advance)
    if not found.items:
        raise EdgeclsError(f"no images to evaluate in {data_dir}")
    # The models before the images: their input shapes check the bundle's preprocessing before an
    # N x height x width x 3 array is allocated for it.
    models = {key: load_model(bundle, bundle.artifacts[key].fmt.family, bundle.artifacts[key].fmt.precision,
                              threads=threads) for key in run_keys}
    with progress_bar("loading images", quiet=not show_progress, total=len(found.items)) as advance:
        x, y = load_arrays(found.root, found.items, bundle.spec, progress=advance)
    results, runtimes = {}, {}
    for key, model in models.items():
        runtimes[key] = model.runtime
        with progress_bar(f"eval {key}", quiet=not show_progress, total=len(x)) as advance:
            results[key] = measure(model.predict, x, advance)
    rows = parity(results, y, bundle.labels, references)
    artifacts = {}
    for key in keys:
        r, ref = rows[key], references[key]
        artifacts[key] = {"runtime": runtimes[key], "accuracy": r["accuracy"], "reference": ref,
                          "reference_accuracy": rows[ref]["accuracy"] if ref else None,
                          "agreement": r["agreement"], "agreed": r["agreed"], "images": r["images"],
                          "latency_ms": r["latency_ms"], "per_class_accuracy": r["per_class_accuracy"],
                          "per_class_delta": r["per_class_delta"], "confusion": r["confusion"],
                          "predictions": r["predictions"], "bytes": bundle.artifacts[key].path.stat().st_size,
                          **({"flips": r["flips"]} if "flips" in r else {})}
    return {"bundle": str(bundle.root), "data": str(found.root), "classes": bundle.labels,
            # the float rows' reference; every artifact names its own (artifacts.<key>.reference)
            "reference": reference if reference in rows else None,
            "reference_accuracy": rows[reference]["accuracy"] if reference in rows else None,
            "files": [rel for rel, _ in found.items], "labels": y.tolist(),
            "skipped": [{"file": f, "reason": r} for f, r in found.skipped], "artifacts": artifacts}
