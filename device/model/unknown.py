""""None of my classes": the unknown rule a bundle carries (edgecls.json `unknown`), calibrated at export and after
every teach, and applied by the classifier (`UnknownRule`). No TensorFlow.

The rule: an embedding is unknown when its cosine similarity to the nearest class mean falls below a threshold.
Class means are the normalised means of the normalised stored training embeddings (teach.npz). Not centred: on
flowers (4 classes, daisy left out) centring on the stored embeddings' mean flagged 76.5% of 200 digits photos
at the same 95% of known photos kept, uncentred 100% (benchmarks/RESULTS.md); max softmax flagged 3%. Over all
five flowers folds (benchmarks/results/teach-offline.md) no other rule tried (per-class thresholds, k-NN,
shared-covariance Mahalanobis, top probability, top logit) does clearly better: none flags more than 26% of a
never-seen flower at ~95% of known photos kept. The threshold is the highest that keeps at least KEEP of the
stored held-out (validation) photos of known classes — photos that played no part in training. A taught class
has no held-out photos: its own teach photos stand in (they flatter it; docs/teach.md).
"""
from __future__ import annotations

import math

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


def calibrate(arrays: dict[str, np.ndarray], keep: float = KEEP) -> dict:
    """edgecls.json's `unknown` block from a teach set (convert/embeddings.py's arrays)."""
    n_classes = int(arrays["kernel"].shape[1])
    means = class_means(arrays["embeddings"], arrays["classes"], n_classes)
    t, kept = threshold_keeping(scores(arrays["calib_embeddings"], means), keep)
    return {"rule": RULE, "threshold": round(t, 6), "keep": keep, "kept": kept,
            "images": int(len(arrays["calib_embeddings"])),
            "note": "unknown when the embedding's cosine to the nearest class mean (teach.npz) is below "
                    "threshold; threshold keeps >= keep of the held-out photos of known classes"}


class UnknownRule:
    """The bundle version's rule, ready to apply: `unknown(embedding)` → bool."""

    def __init__(self, threshold: float, means: np.ndarray):
        self.threshold, self.means = threshold, means

    @classmethod
    def from_bundle(cls, bundle) -> UnknownRule | None:
        """The rule edgecls.json records, with its class means from teach.npz; None for a bundle without one."""
        from edgecls.device.teach.head import load_npz

        block, teach = bundle.meta.get("unknown"), bundle.meta.get("teach")
        if not block or not teach:
            return None
        if block.get("rule") != RULE or not isinstance(block.get("threshold"), (int, float)):
            raise EdgeclsError(f"{bundle.root}: edgecls.json's unknown rule {block.get('rule')!r} is not one this "
                               f"edgecls knows ({RULE}) — upgrade edgecls")
        arrays = load_npz(bundle.root, teach, "teach")
        return cls(float(block["threshold"]), class_means(arrays["embeddings"], arrays["classes"], len(bundle.labels)))

    def unknown(self, embedding: np.ndarray) -> bool:
        return bool(scores(embedding[None], self.means)[0] < self.threshold)
