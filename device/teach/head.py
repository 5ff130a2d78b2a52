"""The classifier a taught bundle version uses instead of the model's own: `head.npz` (kernel, bias) applied in
NumPy to the model's embedding output (`HeadModel`), and how it is fitted (`fit_head`: imprinting, then a few
steps of L2-regularised softmax regression). No TensorFlow.

The embedding output and the stored embeddings come from export (convert/embeddings.py); the teach command is
device/teach/command.py. Measured against other fits (more steps, stronger anchor, flipped photos, more stored
embeddings, a centred imprint, nearest class mean) on cached embeddings of all five flowers folds: none moved the
new-class / old-class trade-off, and taught from 86 photos this fit matches a head fitted from zero on all train
photos (benchmarks/results/teach-offline.md).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgecls.bundle import verify_file
from edgecls.errors import EdgeclsError
from edgecls.fsutil import atomic_write_bytes

HEAD_FILE = "head.npz"
EMBED_BATCH = 32
FIT_STEPS = 300         # full-batch gradient steps: ~0.3 s for 11 classes × 300 embeddings of 1280 on one core
ANCHOR = 1e-3           # L2 pull of every weight towards its starting point (the old classifier, the imprint)
MAX_NPZ_BYTES = 64 << 20


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(root: Path, entry: dict, where: str) -> dict[str, np.ndarray]:
    """An npz a bundle lists ({"file", "sha256"}), checked against its sha256, arrays only (no pickles)."""
    path = root / entry["file"]
    if not path.is_file() or path.stat().st_size > MAX_NPZ_BYTES:
        raise EdgeclsError(f"bundle file missing or not one edgecls wrote: {path} ({where})")
    verify_file(path, entry["sha256"])
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:   # zipfile/ValueError for a file that is not an npz
        raise EdgeclsError(f"cannot read {path} ({where}): {type(e).__name__}: {e}") from None


def embed_all(model, pixels: np.ndarray) -> np.ndarray:
    """(N, D) float32 embeddings of prepared pixels through `model`'s embedding output."""
    if not model.has_embedding:
        raise EdgeclsError(f"{model.artifact.path.name} has no embedding output")
    parts = [model.predict_both(pixels[i:i + EMBED_BATCH])[1] for i in range(0, len(pixels), EMBED_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def imprint(kernel: np.ndarray, bias: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weight imprinting (Qi et al., Coral's ImprintingEngine), adapted to an unnormalised classifier: the new
    class's weight vector is the normalised mean of its normalised embeddings, scaled to the old weights' mean
    norm; its bias is the old biases' mean."""
    unit = new / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
    mean = unit.mean(axis=0)
    direction = mean / max(float(np.linalg.norm(mean)), 1e-12)
    scale = float(np.linalg.norm(kernel, axis=0).mean()) if kernel.shape[1] else 1.0
    return (np.concatenate([kernel, (direction * scale)[:, None]], axis=1).astype(np.float32),
            np.append(bias, bias.mean() if len(bias) else 0.0).astype(np.float32))


def fit_head(kernel: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray,
             steps: int = FIT_STEPS, anchor: float = ANCHOR) -> tuple[np.ndarray, np.ndarray]:
    """A few steps of softmax regression over (x, y), every class weighted equally, from (kernel, bias) and
    pulled back towards them (L2, `anchor`): the old classes keep what they learnt from all their photos, of
    which only a few are stored. Plain gradient descent with a step of 1 / (the largest curvature bound)."""
    w0, b0 = kernel.astype(np.float64), bias.astype(np.float64)
    w, b = w0.copy(), b0.copy()
    x = x.astype(np.float64)
    n_classes = w.shape[1]
    onehot = np.eye(n_classes)[y]
    counts = np.maximum(np.bincount(y, minlength=n_classes), 1)
    weight = (1.0 / counts[y]) / n_classes                      # each class counts as much as any other
    lr = 1.0 / (0.5 * float((x * x).sum(1).max()) + 1.0 + anchor)   # softmax Hessian ≤ ½·|x|² per sample
    for _ in range(steps):
        p = softmax(x @ w + b).astype(np.float64)
        g = (p - onehot) * weight[:, None]
        w -= lr * (x.T @ g + anchor * (w - w0))
        b -= lr * (g.sum(0) + anchor * (b - b0))
    return w.astype(np.float32), b.astype(np.float32)


class HeadModel:
    """A loaded artifact whose answers come from head.npz on its embedding output: `predict`, `predict_both`
    and every attribute the device reads (key, runtime, artifact, feed, input_io, ...) as the model's own."""

    def __init__(self, model, kernel: np.ndarray, bias: np.ndarray):
        if not model.has_embedding:
            raise EdgeclsError(f"{model.artifact.path.name} has no embedding output, so this taught bundle "
                               "cannot use it: run the model file it was taught with")
        self.model, self.kernel, self.bias = model, kernel, bias

    def __getattr__(self, name):   # everything but the answers is the model's own
        return getattr(self.model, name)

    def predict_both(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, emb = self.model.predict_both(pixels)
        return softmax(emb @ self.kernel + self.bias), emb

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.predict_both(pixels)[0]


def head_block(bundle) -> dict | None:
    return bundle.meta.get("head")


def base_labels(bundle) -> list[str]:
    """The labels the model file itself was exported with (a taught version's head answers for others)."""
    head = head_block(bundle)
    return list(head["base_labels"]) if head else bundle.labels


def with_head(bundle, model):
    """`model` answering through the bundle's head.npz, when the bundle version has one (else `model`)."""
    head = head_block(bundle)
    if head is None:
        return model
    arrays = load_npz(bundle.root, head, "head")
    kernel, bias = arrays.get("kernel"), arrays.get("bias")
    if kernel is None or bias is None or kernel.ndim != 2 or kernel.shape[1] != len(bundle.labels) \
            or bias.shape != (len(bundle.labels),):
        raise EdgeclsError(f"{bundle.root / head['file']}: its classifier does not answer for the bundle's "
                           f"{len(bundle.labels)} labels: edited by hand, or from another bundle")
    return HeadModel(model, kernel.astype(np.float32), bias.astype(np.float32))
