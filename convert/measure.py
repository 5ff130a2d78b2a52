"""The export's final measurement: every artifact, through the device runtime, on every image of the run.

- On the held-out split (test, else val): top-1 with its 95% interval, the paired drop vs float with its
  interval, per-class deltas, confusion — the parity table `edgecls eval` prints too (device/evaluate.py).
- On every image (train + val + test): top-1 agreement with the Keras model, with its count. Agreement needs
  no labels, so it rests on hundreds or thousands of images where accuracy rests on the test split's few.
  And the mean total-variation distance of the probabilities (`mean_tv_all`): it moves with the near-ties
  that flip on the next photo set, where agreement moves only with the flips.
- int8 vs float latency ratio, same runtime, one thread, interleaved (device/bench.py: interleaved_ratios).
- The float reference's top-1 margin (top-1 minus top-2 probability) on the held-out split, as quantiles: what
  `edgecls run --shadow` holds the float model's confidence on live frames to (device/drift.py).
Then convert/gate.py judges each artifact.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.dataset import SPLITS
from edgecls.device.evaluate import Measured, measure, parity
from edgecls.progress import progress_bar
from edgecls.formats import BY_KEY
from edgecls.metrics import (agreement_count, delta_text, margin_quantiles, mean_tv, paired_drop, top_margin,
                             wilson_interval)


@dataclass
class Result:
    rows: dict[str, dict]     # per model (the Keras reference first): parity row + agreement_all/drop/verdict
    verdicts: dict            # key → gate.Verdict
    gate: dict                # gate.summary
    sizes: dict[str, int]
    split: str
    images: int               # photos in the judged split
    all_images: int           # images agreement is counted on
    reference: str
    float_margin: dict | None = None   # the reference's top-1 margin on the judged split: metrics.margin_quantiles

    def table(self, run_name: str):
        """The parity table as a rich Table (printed by export; report.py writes the same numbers)."""
        from rich.table import Table

        t = Table(title=f"{run_name}: {self.images} {self.split} photos, agreement over all {self.all_images} images")
        for col in ("model", "top-1 (95% CI)", "Δ vs float pp (95% CI)", "agreement, all images", "float ops",
                    "int8/float latency", "ms", "MB", "verdict"):
            t.add_column(col, justify="left" if col in ("model", "verdict") else "right", no_wrap=col == "model")
        for key, r in self.rows.items():
            lo, hi = r["accuracy_ci95"]
            d, a, v = r.get("drop"), r.get("agreement_all"), self.verdicts.get(key)
            t.add_row(key, f"{r['accuracy'] * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f})",
                      delta_text(d) if d else "",
                      f"{a['rate'] * 100:.1f}% of {a['images']}" if a else "",
                      "" if r.get("float_ops") is None else str(len(r["float_ops"])),
                      f"{r['latency_ratio']:.2f}" if r.get("latency_ratio") else "",
                      f"{r['latency_ms']:.2f}", f"{self.sizes[key] / 1e6:.2f}" if key in self.sizes else "",
                      "" if v is None else ("ok" if v.passed else "[red]FAIL[/red]"))
        return t


def artifacts(ctx, bundle_dir: Path, keys: list[str], entries: dict[str, dict], split: str, keras_predict,
              keras_bytes: int) -> Result:
    """Measure the artifacts written in `bundle_dir` (their edgecls.json entries in `entries`)."""
    from edgecls.convert import gate
    from edgecls.convert.export import KERAS_KEY

    o, im = ctx.opts, ctx.images
    order = [s for s in SPLITS if len(im.x[s])]
    x_all = np.concatenate([im.x[s] for s in order])
    keras_all = np.concatenate([im.keras[s] for s in order])
    start = sum(len(im.x[s]) for s in order[:order.index(split)])
    part = slice(start, start + len(im.x[split]))
    y = im.y[split]

    with progress_bar(f"eval {KERAS_KEY}", quiet=not o.show_progress, total=len(y)) as adv:
        measured = {KERAS_KEY: measure(keras_predict, im.x[split], adv)}   # Keras' own latency, per image
    measured[KERAS_KEY].probs = im.keras[split]                             # the answers all artifacts are held to
    probs_all = {}
    for key in keys:
        model = ctx.model_for(key, bundle_dir / entries[key]["file"], entries[key])
        with progress_bar(f"eval {key} on {len(x_all)} images", quiet=not o.show_progress,
                          total=len(x_all)) as adv:
            m = measure(model.predict, x_all, adv)
        probs_all[key] = m.probs
        measured[key] = Measured(m.probs[part], m.latency_ms)
    rows = parity(measured, y, ctx.labels, KERAS_KEY)
    ref_pred = keras_all.argmax(1)
    verdicts = {}
    for key in [KERAS_KEY, *keys]:
        r = rows[key]
        r["accuracy_ci95"] = [round(v, 4) for v in wilson_interval(int(round(r["accuracy"] * len(y))), len(y))]
    for key in keys:
        r, p = rows[key], probs_all[key]
        finite = bool(np.isfinite(p).all())
        if BY_KEY[key].precision == "float":
            r["max_abs_diff"] = float(np.abs(p - keras_all).max()) if finite else float("inf")
            ev = gate.Evidence(key, finite, max_abs_diff=r["max_abs_diff"], split=split)
        else:
            r["agreement_all"] = agreement_count(p.argmax(1), ref_pred)
            r["mean_tv_all"] = round(mean_tv(p, keras_all), 5) if finite else None   # near-ties count too
            r["drop"] = paired_drop(im.keras[split].argmax(1) == y, p[part].argmax(1) == y)
            r["float_ops"] = entries[key].get("float_ops", [])
            float_key = key.replace("int8", "float")
            if float_key in keys:
                r["latency_ratio"] = round(ctx.latency_ratios(key, [bundle_dir / entries[key]["file"]],
                                                              bundle_dir / entries[float_key]["file"],
                                                              entries[key])[0], 3)
            ev = gate.Evidence(key, finite, r["drop"], r["agreement_all"], split=split)
        verdicts[key] = gate.judge(ev, o.max_drop, o.min_agreement)
        r["verdict"] = verdicts[key].to_dict()
    sizes = {k: (bundle_dir / entries[k]["file"]).stat().st_size for k in keys}
    sizes[KERAS_KEY] = keras_bytes
    summary = gate.summary({k: verdicts[k] for k in keys}, o.max_drop, o.min_agreement, o.allow_drop)
    float_margin = {"reference": KERAS_KEY, "split": split, **margin_quantiles(top_margin(im.keras[split]))}
    return Result(rows, verdicts, summary, sizes, split, len(y), len(x_all), KERAS_KEY, float_margin)
