"""Classification metrics shared by train, export and eval (NumPy only)."""
from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_report(y_true, y_pred, classes: list[str]) -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = confusion(y_true, y_pred, len(classes))
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "n": int(len(y_true)),
        "per_class": {c: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                          "f1": round(float(f1[i]), 4), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "macro_f1": float(f1.mean()),
        "confusion": cm.tolist(),
    }


def per_class_accuracy(y_true, y_pred, n: int) -> np.ndarray:
    cm = confusion(y_true, y_pred, n)
    support = cm.sum(1)
    return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def agreement(pred_a, pred_b) -> float:
    """Share of samples where two models give the same top-1 class."""
    a, b = np.asarray(pred_a), np.asarray(pred_b)
    return float((a == b).mean()) if len(a) else 0.0


Z95 = 1.959964   # two-sided 95% normal quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of a proportion k/n (Wilson score): honest at 0 or n successes, unlike k/n ± z·se."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def paired_drop(ref_correct, new_correct, z: float = Z95) -> dict:
    """Accuracy drop of `new` vs `ref` on the same photos, with its 95% interval, in percentage points.

    Paired, because both models answer the same photos: only the photos where exactly one of them is right
    (the discordant pairs) carry information. The interval is Agresti–Min's (2005): add 1/2 to each cell of
    the 2×2 table, then Wald — close to nominal coverage even with a handful of discordant photos, where
    the plain Wald interval collapses to a point. One photo is 100/n pp: `photo_pp`.
    """
    a, b = np.asarray(ref_correct, bool), np.asarray(new_correct, bool)
    n = len(a)
    lost, gained = int((a & ~b).sum()), int((~a & b).sum())
    if n == 0:
        return {"n": 0, "lost": 0, "gained": 0, "drop_pp": 0.0, "ci95_pp": [-100.0, 100.0], "photo_pp": 100.0}
    nn, bb, cc = n + 2, lost + 0.5, gained + 0.5
    d = (bb - cc) / nn
    se = np.sqrt(max(bb + cc - (bb - cc) ** 2 / nn, 0.0)) / nn
    return {"n": n, "lost": lost, "gained": gained, "drop_pp": round((lost - gained) / n * 100, 3),
            "ci95_pp": [round(float(max(-1.0, d - z * se)) * 100, 3), round(float(min(1.0, d + z * se)) * 100, 3)],
            "photo_pp": round(100 / n, 3)}


def difference_interval(k_a: int, n_a: int, k_b: int, n_b: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of p_b − p_a for two proportions on different photos (Newcombe 1998, method 10: the two
    Wilson intervals combined). For the same photos answered twice use paired_drop, which is tighter."""
    p_a, p_b = k_a / n_a, k_b / n_b
    (lo_a, hi_a), (lo_b, hi_b) = wilson_interval(k_a, n_a, z), wilson_interval(k_b, n_b, z)
    d = p_b - p_a
    return (float(d - np.sqrt((p_b - lo_b) ** 2 + (hi_a - p_a) ** 2)),
            float(d + np.sqrt((hi_b - p_b) ** 2 + (p_a - lo_a) ** 2)))


def delta_text(drop: dict) -> str:
    """A paired_drop as people read it in tables: the change of top-1 (int8 minus float) and its interval,
    "+0.91 (-2.6 to +4.4)"."""
    lo, hi = drop["ci95_pp"]
    return f"{0.0 - drop['drop_pp']:+.2f} ({0.0 - hi:+.1f} to {0.0 - lo:+.1f})"   # 0.0 - x: no "-0.00"


def agreement_text(agreed: int, images: int, interval: bool = False, decimals: int = 2) -> str:
    """An agreement as every table shows it: "96.67% (58/60)", with `interval` its Wilson 95% interval too,
    "98.18% (108/110; 93.6–99.5)"."""
    rate = f"{agreed / images * 100:.{decimals}f}%" if images else "–"
    if not interval:
        return f"{rate} ({agreed}/{images})"
    lo, hi = wilson_interval(agreed, images)
    return f"{rate} ({agreed}/{images}; {lo * 100:.1f}–{hi * 100:.1f})"


def agreement_count(pred_a, pred_b) -> dict:
    """Top-1 agreement as a count with its 95% interval: {"agreed", "images", "rate", "ci95"}."""
    a, b = np.asarray(pred_a), np.asarray(pred_b)
    k, n = int((a == b).sum()), len(a)
    lo, hi = wilson_interval(k, n)
    return {"agreed": k, "images": n, "rate": round(k / n, 5) if n else 0.0, "ci95": [round(lo, 5), round(hi, 5)]}


MARGIN_QUANTILES = (10, 25, 50, 75, 90)   # the percentiles edgecls.json records of the float model's top-1 margin


def top_margin(probs) -> np.ndarray:
    """Per row: top-1 minus top-2 probability, how sure a model is of its answer (1 sure, 0 a tie)."""
    p = np.asarray(probs, np.float64).reshape(-1, np.shape(probs)[-1])
    two = -np.partition(-p, 1, axis=1)[:, :2]
    return two[:, 0] - two[:, 1]


def margin_quantiles(margins) -> dict:
    """{"n", "p10", "p25", "p50", "p75", "p90"} of a set of top-1 margins (rounded; empty: n 0 only)."""
    m = np.asarray(margins, np.float64)
    if not len(m):
        return {"n": 0}
    return {"n": int(len(m)), **{f"p{q}": round(float(np.percentile(m, q)), 4) for q in MARGIN_QUANTILES}}


NEAR_TIE = 0.2   # a reference answer this close to its runner-up (top-1 minus top-2 probability) is a near-tie


def flips(ref_probs, probs, labels) -> dict:
    """The photos whose top-1 answer changed from the reference's (int8 against its float twin): how many, how many
    were near-ties of the reference (its margin < NEAR_TIE), on how many the reference was wrong and on how many the
    new answer is right, and the reference's margins there. Near-ties of the float model are what int8 flips, and
    a flip of a photo float got wrong costs nothing: what an agreement below 100% is made of. Described, not judged."""
    ref, new, y = np.asarray(ref_probs).argmax(1), np.asarray(probs).argmax(1), np.asarray(labels)
    changed = ref != new
    margins = top_margin(ref_probs)[changed] if changed.any() else np.zeros(0)
    return {"flips": int(changed.sum()), "near_ties": int((margins < NEAR_TIE).sum()), "near_tie": NEAR_TIE,
            "reference_wrong": int((ref[changed] != y[changed]).sum()), "now_right": int((new[changed] == y[changed]).sum()),
            "reference_margins": sorted(round(float(m), 3) for m in margins)}


def flips_text(f: dict) -> str:
    """"3 answers changed: 2 near-ties of the reference (margin < 0.2), the reference wrong on 2, now right on 1"."""
    if not f["flips"]:
        return "no answer changed"
    n = f["flips"]
    return (f"{n} answer{'s' if n != 1 else ''} changed: {f['near_ties']} near-tie{'s' if f['near_ties'] != 1 else ''} "
            f"of the reference (margin < {f['near_tie']:g}; margins {', '.join(f'{m:.2f}' for m in f['reference_margins'][:12])}"
            f"{', …' if n > 12 else ''}), the reference wrong on {f['reference_wrong']}, now right on {f['now_right']}")


def mean_tv(probs_a, probs_b) -> float:
    """Mean total variation distance between two models' probabilities, row by row (½·Σ|a − b|): how far
    apart their answers are, near-ties included, where top-1 agreement only counts the flips."""
    a, b = np.asarray(probs_a, np.float64), np.asarray(probs_b, np.float64)
    return float(0.5 * np.abs(a - b).sum(-1).mean()) if len(a) else 0.0


def _log_comb(a: int, b: int) -> float:
    """log C(a, b)."""
    from math import lgamma

    return lgamma(a + 1) - lgamma(b + 1) - lgamma(a - b + 1)


def _probability_of_log_terms(terms: list[float]) -> float:
    """Σ exp(terms), scaled by the largest so that no term underflows; capped at 1 (a tail probability)."""
    from math import exp

    top = max(terms)
    return float(min(1.0, exp(top) * sum(exp(t - top) for t in terms)))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p), summed exactly in log space (n up to ~10⁶)."""
    from math import log

    if k < 0:
        return 0.0
    if k >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    lp, lq = log(p), log(1 - p)
    return _probability_of_log_terms([_log_comb(n, i) + i * lp + (n - i) * lq for i in range(k + 1)])


def shown_below(k: int, n: int, rate: float, alpha: float = 0.025) -> bool:
    """Whether k successes of n show the true rate to be below `rate`: a model at exactly `rate` would do
    this badly or worse less than `alpha` of the time (one-sided exact binomial test, i.e. `rate` lies above
    the Clopper–Pearson 95% interval). Wilson's interval is too tight in this tail: it calls 108 of 110
    "below 99.5%", although a model at 99.5% does that or worse 10.5% of the time."""
    return n > 0 and binomial_cdf(k, n, rate) < alpha


def hypergeometric_sf(x: int, total: int, marked: int, drawn: int) -> float:
    """P(X ≥ x) for X the marked items among `drawn` taken without replacement from `total` holding `marked`."""
    hi = min(marked, drawn)
    if x <= max(0, drawn - (total - marked)):
        return 1.0
    if x > hi:
        return 0.0
    return _probability_of_log_terms([_log_comb(marked, i) + _log_comb(total - marked, drawn - i)
                                      - _log_comb(total, drawn) for i in range(x, hi + 1)])


def shown_below_measured(k: int, n: int, k_ref: int, n_ref: int, alpha: float = 0.025) -> bool:
    """Whether k successes of n show a lower rate than k_ref of n_ref, itself a measurement (one-sided Fisher exact
    test: given all the failures of both, so many falling among the n would happen less than `alpha` of the time
    if both rates were one). shown_below() against the measured rate as if it were exact refuses a faithful model
    whenever the reference was perfect on a small set: 39 of 40 against 90 of 90 is 'below 100%' there, while here
    the one failure lands among the 40 with chance 40/130."""
    failures, failures_ref = n - k, n_ref - k_ref
    if n <= 0 or n_ref <= 0 or failures <= 0:
        return False
    return hypergeometric_sf(failures, n + n_ref, failures + failures_ref, n) < alpha
