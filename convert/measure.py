"""The export's final measurement: every artifact, through the device runtime, on every image of the run.

Held-out photos (written here once; docs/export.md says the same): the run's **test split**, photos that neither
training, nor calibration (training photos, or the --calib folder), nor GPTQ's weight rounding, nor QAT, nor the
mixed-precision search and the choice between candidates (both score on the validation split) ever saw. A run
without a test split is measured on its validation split instead, and every table and field says so: "val photos
(used by the search: not held out)", `agreement_heldout.heldout` false.

One reference per row, named in every table (`device/evaluate.py: agreement_reference`, which `eval` uses too):
an int8 artifact is compared with the float artifact of its own family (tflite-int8 with tflite-float, onnx-int8
with onnx-float), so `edgecls eval BUNDLE` on the held-out photos reprints the export's figures; a float artifact is
compared with the Keras model (`max_abs_diff`, and its agreement: the Keras-vs-float-file line).

- On the held-out split: top-1 with its 95% interval; for int8, the paired drop vs its float twin with its
  interval, top-1 agreement with it as a count (`agreement_heldout`: what the gate, the report and `--json` lead
  with), per-class deltas, confusion — the parity table `edgecls eval` prints too.
- On every image (train + val + test): agreement with the same twin (`agreement_all`) and the mean total-variation
  distance of the probabilities (`mean_tv_all`), labelled "incl. training photos": ~70% of them are photos that
  calibration and rounding were fitted on, which flatter int8 (benchmarks/NOTES.md). Shown, never judged.
- int8 vs float latency ratio, same runtime, one thread, interleaved (device/bench.py: interleaved_ratios).
- The float reference's top-1 margin (top-1 minus top-2 probability) on the held-out split, as quantiles: what
  `edgecls run --shadow` holds the float model's confidence on live frames to (device/model/drift.py).
Then convert/gate.py judges each artifact.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.dataset import SPLITS
from edgecls.device.evaluate import Measured, agreement_reference, flips_lines, measure, parity
from edgecls.progress import progress_bar
from edgecls.formats import BY_KEY
from edgecls.metrics import (agreement_count, agreement_text, delta_text, margin_quantiles, mean_tv, paired_drop,
                             top_margin, wilson_interval)

KERAS_KEY = "keras-float"        # the trained model itself: the reference every artifact is held to


def photos_label(split: str) -> str:
    """What the judged photos are, as every table and report says it (the module docstring defines held-out)."""
    return "held-out test photos" if split == "test" else f"{split} photos (used by the search: not held out)"


@dataclass
class Measurement:
    rows: dict[str, dict]     # per model (the Keras reference first): parity row + agreement_heldout/drop/verdict
    verdicts: dict            # key → gate.Verdict
    gate: dict                # gate.summary
    sizes: dict[str, int]
    split: str                # the judged photos: "test" (held out), else "val" (photos_label)
    images: int               # photos in the judged split
    all_images: int           # images agreement_all (incl. training photos) is counted on
    reference: str            # the float rows' reference (the Keras model); each row names its own: rows[k]["reference"]
    float_margin: dict | None = None   # the reference's top-1 margin on the judged split: metrics.margin_quantiles

    @property
    def photos(self) -> str:
        return photos_label(self.split)

    def flips_lines(self) -> list[str]:
        return flips_lines(self.rows)

    def table(self, run_name: str):
        """The parity table as a rich Table (printed by export; report.py writes the same numbers)."""
        from rich.table import Table

        t = Table(title=f"{run_name}: {self.images} {self.photos}; each row vs the model in \"vs\"")
        held = "held-out" if self.split == "test" else f"{self.split}, not held out"
        for col in ("model", "vs", "top-1 (95% CI)", "Δ top-1 pp (95% CI)", f"agreement, {held}",
                    "agreement incl. training photos", "float ops", "int8/float latency", "ms", "MB", "verdict"):
            named = col in ("model", "vs")   # the model names never fold nor shorten: they say what is compared
            t.add_column(col, justify="left" if named or col == "verdict" else "right", no_wrap=named,
                         min_width=len("tflite-float") if named else None)
        for key, r in self.rows.items():
            lo, hi = r["accuracy_ci95"]
            d, h, a, v = r.get("drop"), r.get("agreement_heldout"), r.get("agreement_all"), self.verdicts.get(key)
            t.add_row(key, r.get("reference") or "", f"{r['accuracy'] * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f})",
                      delta_text(d) if d else "", count_text(h), count_text(a),
                      "" if r.get("float_ops") is None else str(len(r["float_ops"])),
                      f"{r['latency_ratio']:.2f}" if r.get("latency_ratio") else "",
                      f"{r['latency_ms']:.2f}", f"{self.sizes[key] / 1e6:.2f}" if key in self.sizes else "",
                      "" if v is None else ("ok" if v.passed else "[red]FAIL[/red]"))
        return t


def count_text(agreement: dict | None) -> str:
    """An agreement_count as tables show it: "96.67% (58/60)"."""
    return agreement_text(agreement["agreed"], agreement["images"]) if agreement else ""


def references(keys: list[str]) -> dict[str, str | None]:
    """What each row is compared with: the Keras model for float artifacts (and for nothing, itself), the float
    twin for int8 ones (device/evaluate.py: agreement_reference, as `eval` does)."""
    refs = {KERAS_KEY: None}
    for key in keys:
        refs[key] = KERAS_KEY if BY_KEY[key].precision == "float" else agreement_reference(key, keys) or KERAS_KEY
    return refs


def artifacts(ctx, bundle_dir: Path, keys: list[str], entries: dict[str, dict], split: str, keras_predict,
              keras_bytes: int) -> Measurement:
    """Measure the artifacts written in `bundle_dir` (their edgecls.json entries in `entries`)."""
    from edgecls.convert import gate

    o, im = ctx.opts, ctx.images
    order = [s for s in SPLITS if len(im.x[s])]
    x_all = np.concatenate([im.x[s] for s in order])
    start = sum(len(im.x[s]) for s in order[:order.index(split)])
    part = slice(start, start + len(im.x[split]))
    y = im.y[split]

    with progress_bar(f"eval {KERAS_KEY}", quiet=not o.show_progress, total=len(y)) as adv:
        measured = {KERAS_KEY: measure(keras_predict, im.x[split], adv)}   # Keras' own latency, per image
    measured[KERAS_KEY].probs = im.keras[split]                             # the answers the float files are held to
    probs_all = {KERAS_KEY: np.concatenate([im.keras[s] for s in order])}
    for key in keys:
        model = ctx.model_for(key, bundle_dir / entries[key]["file"], entries[key])
        with progress_bar(f"eval {key} on {len(x_all)} images", quiet=not o.show_progress,
                          total=len(x_all)) as adv:
            m = measure(model.predict, x_all, adv)
        probs_all[key] = m.probs
        measured[key] = Measured(m.probs[part], m.latency_ms)
    refs = references(keys)
    rows = parity(measured, y, ctx.labels, refs)
    for r in rows.values():
        r["accuracy_ci95"] = [round(v, 4) for v in wilson_interval(int(round(r["accuracy"] * len(y))), len(y))]
    verdicts = {}
    for key in keys:
        r, p, ref = rows[key], probs_all[key], probs_all[refs[key]]
        finite = bool(np.isfinite(p).all())
        r["agreement_heldout"] = {**agreement_count(p[part].argmax(1), ref[part].argmax(1)), "reference": refs[key],
                                  "split": split, "heldout": split == "test"}
        if BY_KEY[key].precision == "float":
            r["max_abs_diff"] = float(np.abs(p - ref).max()) if finite else float("inf")
            ev = gate.Evidence(key, finite, max_abs_diff=r["max_abs_diff"], split=split)
        else:
            _int8_figures(ctx, r, p, ref, part, y, bundle_dir, entries, key, keys)
            ev = gate.Evidence(key, finite, r["drop"], r["agreement_heldout"], split=split)
        verdicts[key] = gate.judge(ev, o.max_drop, o.min_agreement)
        r["verdict"] = verdicts[key].to_dict()
    sizes = {k: (bundle_dir / entries[k]["file"]).stat().st_size for k in keys}
    sizes[KERAS_KEY] = keras_bytes
    summary = gate.summary({k: verdicts[k] for k in keys}, o.max_drop, o.min_agreement, o.allow_drop)
    float_margin = {"reference": KERAS_KEY, "split": split, **margin_quantiles(top_margin(im.keras[split]))}
    return Measurement(rows, verdicts, summary, sizes, split, len(y), len(x_all), KERAS_KEY, float_margin)


def _int8_figures(ctx, r: dict, p: np.ndarray, ref: np.ndarray, part: slice, y: np.ndarray, bundle_dir: Path,
                  entries: dict, key: str, keys: list[str]) -> None:
    """An int8 row's figures beyond parity's, all against the same reference (its float twin): the paired drop on
    the judged split, agreement and mean TV over every image (incl. training photos), the latency ratio."""
    finite = bool(np.isfinite(p).all())
    r["agreement_all"] = {**agreement_count(p.argmax(1), ref.argmax(1)), "reference": r["reference"],
                          "photos": "all images, incl. training photos"}
    r["mean_tv_all"] = round(mean_tv(p, ref), 5) if finite else None   # near-ties count too
    r["drop"] = paired_drop(ref[part].argmax(1) == y, p[part].argmax(1) == y)
    r["float_ops"] = entries[key].get("float_ops", [])
    float_key = key.replace("int8", "float")
    if float_key in keys:
        r["latency_ratio"] = round(ctx.latency_ratios(key, [bundle_dir / entries[key]["file"]],
                                                      bundle_dir / entries[float_key]["file"], entries[key])[0], 3)
