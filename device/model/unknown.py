""""None of my classes": the unknown rule a bundle carries (edgecls.json `unknown`), calibrated at export and after
every teach, and applied by the classifier (`UnknownRule`). No TensorFlow.

The rule: an embedding is unknown when its cosine similarity to every class mean falls below that class's
threshold. Class means are the normalised means of the normalised stored training embeddings (teach.npz). Not
centred: on flowers (4 classes, daisy left out) centring on the stored embeddings' mean flagged 76.5% of 200 digits
photos at the same 95% of known photos kept, uncentred 100% (benchmarks/RESULTS.md); max softmax flagged 3%. Over
all five flowers folds (benchmarks/results/teach-offline.md) no other rule tried (per-class thresholds, k-NN,
shared-covariance Mahalanobis, top probability, top logit) does clearly better: none flags more than 26% of a
never-seen flower at ~95% of known photos kept.

Exported classes share one threshold: the highest that keeps at least KEEP of the stored held-out (validation)
photos of known classes — photos that played no part in training. A taught class has no held-out photos, and its
few teach photos are looser than classes learnt from hundreds (ten daisies beside the tight digits classes): it gets
its own threshold, from its teach photos scored leave-one-out (each against the mean of the others: a photo never
counts towards the mean it is judged by), never stricter than the shared one. Without it most unseen photos of a
taught class read unknown although the classifier answers them right (benchmarks/results/teach-unknown.md).
From three photos on, the threshold is the normal prediction bound for one more photo at KEEP (mean − t·sd·√(1+1/n)
of the leave-one-out scores), not the lowest score: with ten photos the lowest is one photo's luck and keeps 91% of
new photos on average, the bound 95% (benchmarks/results/teach-threshold.md: 300 teach sets of 10 daisies on four
digits bundles, kept 92.1–92.9% → 92.5–95.2%, worst 5% of sets 72.8–77.1% → 78.6–85.7%).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from edgecls.errors import EdgeclsError

UNKNOWN = "unknown"
KEEP = 0.95
RULE = "class-mean-cosine"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_means(emb: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Unit class means (C, D) of the normalised embeddings. A class without stored embeddings gets a zero mean
    (never the nearest)."""
    rows = unit(emb.astype(np.float32))
    means = np.zeros((n_classes, emb.shape[1]), np.float32)
    for c in range(n_classes):
        if (classes == c).any():
            means[c] = unit(rows[classes == c].mean(axis=0))
    return means


def scores(emb: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Each embedding's cosine similarity to its nearest class mean."""
    return (unit(emb.astype(np.float32)) @ means.T).max(axis=1)


def threshold_keeping(known: np.ndarray, keep: float = KEEP) -> tuple[float, int]:
    """(the highest threshold under which at least `keep` of `known` scores stay known, how many do)."""
    if not len(known):
        raise EdgeclsError("no held-out embeddings to calibrate the unknown rule on")
    ranked = np.sort(known)
    drop = math.floor(round((1 - keep) * len(ranked), 9))
    t = float(ranked[drop])
    return t, int((known >= t).sum())


def taught_rows(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Which held-out rows are teach photos: device/teach/command.py stores a taught photo in both sets, so its
    held-out row is also a training row."""
    training = {row.tobytes() for row in arrays["embeddings"]}
    return np.array([row.tobytes() in training for row in arrays["calib_embeddings"]], bool)


def leave_one_out(emb: np.ndarray) -> np.ndarray:
    """Each embedding's cosine to the unit mean of the others' normalised embeddings (needs 2 or more)."""
    rows = unit(emb.astype(np.float32))
    others = rows.sum(axis=0)[None] - rows
    return (rows * unit(others)).sum(axis=1)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (Cornish–Fisher to the ν⁻⁴ term: within 0.01 of the exact one from 2 degrees of freedom
    on, 1e-4 from 4; no SciPy on the device)."""
    z = NormalDist().inv_cdf(p)
    v = float(df)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / (92160 * v ** 4))


PREDICTION_MIN = 3   # photos from which a taught class's threshold is the prediction bound (2: the lowest score)


def taught_threshold(loo: np.ndarray, keep: float = KEEP) -> float:
    """A taught class's own threshold from its teach photos' leave-one-out scores: the normal prediction bound below
    which one more photo of the class falls with chance 1 − keep (the lowest score for fewer than PREDICTION_MIN)."""
    n = len(loo)
    if n < PREDICTION_MIN:
        return threshold_keeping(loo, keep)[0]
    return float(loo.mean() - t_quantile(keep, n - 1) * loo.std(ddof=1) * math.sqrt(1 + 1 / n))


def floor6(t: float) -> float:
    """Rounded down for edgecls.json: rounded to nearest, the photo a threshold was set on could fall below it (the
    kept count recorded would overstate by one)."""
    return math.floor(t * 1e6) / 1e6


def calibrate(arrays: dict[str, np.ndarray], keep: float = KEEP) -> dict:
    """edgecls.json's `unknown` block from a teach set (convert/embeddings.py's arrays; a taught version's too)."""
    n_classes = int(arrays["kernel"].shape[1])
    means = class_means(arrays["embeddings"], arrays["classes"], n_classes)
    taught = taught_rows(arrays)
    held = ~taught if (~taught).any() else taught   # every exported class forgotten: the teach photos only
    t, kept = threshold_keeping(scores(arrays["calib_embeddings"][held], means), keep)
    per_class, own = [t] * n_classes, {}
    for c in range(n_classes):
        rows = arrays["calib_classes"] == c
        if rows.any() and taught[rows].all() and rows.sum() >= 2:   # a taught class with nothing held out
            loo = leave_one_out(arrays["calib_embeddings"][rows])
            per_class[c] = min(t, taught_threshold(loo, keep))
            own[c] = {"photos": int(rows.sum()), "kept_leave_one_out": int((loo >= floor6(per_class[c])).sum())}
    return {"rule": RULE, "threshold": floor6(t), "class_thresholds": [floor6(v) for v in per_class],
            "keep": keep, "kept": kept, "images": int(held.sum()),
            "taught": {str(c): v for c, v in own.items()},
            "note": "unknown when the embedding's cosine to every class mean (teach.npz) is below that class's "
                    "threshold; threshold keeps >= keep of the held-out photos of known classes; a taught class's "
                    "own is the normal prediction bound at keep of its teach photos scored leave-one-out"}


class UnknownRule:
    """The bundle version's rule, ready to apply: `unknown(embedding)` → bool."""

    def __init__(self, thresholds: np.ndarray, means: np.ndarray):
        # A class without stored embeddings has a zero mean: it never vouches for an embedding.
        empty = ~np.linalg.norm(means, axis=1).astype(bool)
        self.thresholds, self.means = np.where(empty, np.inf, thresholds).astype(np.float32), means

    @classmethod
    def from_bundle(cls, bundle) -> UnknownRule | None:
        """The rule edgecls.json records, with its class means from teach.npz; None for a bundle without one. A
        bundle from before per-class thresholds has the shared one only."""
        from edgecls.device.teach.head import load_npz

        block, teach = bundle.meta.get("unknown"), bundle.meta.get("teach")
        if not block or not teach:
            return None
        shared = block.get("threshold")
        per_class = block.get("class_thresholds", [shared] * len(bundle.labels))
        if block.get("rule") != RULE or not isinstance(shared, (int, float)) or not isinstance(per_class, list) \
                or len(per_class) != len(bundle.labels) or not all(isinstance(v, (int, float)) for v in per_class):
            raise EdgeclsError(f"{bundle.root}: edgecls.json's unknown rule {block.get('rule')!r} is not one this "
                               f"edgecls knows ({RULE}, a threshold per label) — upgrade edgecls")
        arrays = load_npz(bundle.root, teach, "teach")
        means = class_means(arrays["embeddings"], arrays["classes"], len(bundle.labels))
        return cls(np.asarray(per_class, np.float32), means)

    def unknown(self, embedding: np.ndarray) -> bool:
        return not bool(((unit(embedding.astype(np.float32)) @ self.means.T) >= self.thresholds).any())
