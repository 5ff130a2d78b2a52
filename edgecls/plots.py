"""Figures train and export draw: learning curves, confusion matrices (and export's search plot draws on
`pyplot` and `save_figure`). matplotlib, no display needed, no TensorFlow; it comes with the train extra, the
only stages that draw."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on its file-only backend (imported here, lazily: seconds, and only train/export draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    import io

    from edgecls.fsutil import atomic_write_bytes

    buf = io.BytesIO()
    with warnings.catch_warnings():  # e.g. "Glyph missing from font" for CJK class names: the log is not the place
        warnings.simplefilter("ignore")
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_history(history: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(1, len(history) + 1)
    for ax, key, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "loss", "loss")):
        ax.plot(x, [h.get(key, np.nan) for h in history], "o-", label="train", ms=3)
        ax.plot(x, [h.get("val_" + key, np.nan) for h in history], "o-", label="val", ms=3)
        ft = [i + 1 for i, h in enumerate(history) if h["phase"] == "finetune"]
        if ft:
            ax.axvline(ft[0] - 0.5, color="grey", ls="--", lw=1)
            ax.text(ft[0] - 0.4, ax.get_ylim()[1], " fine-tune", va="top", fontsize=8, color="grey")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)
    plt.close(fig)


def plot_confusion(cm, classes: list[str], path: Path, title: str = "test confusion matrix") -> None:
    plt = pyplot()
    cm = np.asarray(cm)
    n = len(classes)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
        names = [c.replace("$", r"\$") for c in classes]  # a class name is text, not mathtext ("$\\frac$" crashed)
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save_figure(fig, path)
    plt.close(fig)
