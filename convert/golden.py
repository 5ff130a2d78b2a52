"""The bundle's own exam, written at export: `golden/` in the bundle and the `golden` block of edgecls.json.

- `images`: held-out photos (the judged split), already prepared to the model's input, picked round-robin
  over classes — what every artifact is run on;
- `outputs.<key>`: what this host's device runtime answered on them for each artifact, and `float`: what the
  Keras model answered — the answers the device is held to (device/model/verify.py);
- `photos`: three of those photos (the most colourful) as raw PNG files, with `photos_prepared`, what `prepare()` made of them
  here: the exam runs the device's decoding and resizing too, so a wrong resize mode or colour order fails.
  Photos are shrunk to at most 1.5 times the model's input side (a 3024 px photo would cost megabytes) and two of
  them cut to 4:3 and 3:4, so the three resize modes give different tensors even when every photo is square;
- `labels`: the labels as exported, in order (`labels.json`), so that edited labels are named by the exam.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np

from edgecls.fsutil import sha256_file

GOLDEN_DIR = "golden"
GOLDEN_IMAGES = 16     # 442 KB of pixels at 96 px, ~300 KB compressed; each artifact's run takes ~20 ms there
PHOTO_WINDOWS = (("full", None), ("landscape 4:3", 4 / 3), ("portrait 3:4", 3 / 4))


def save_array(path: Path, array: np.ndarray) -> None:
    """One array per .npz file (compressed; read back with np.load(allow_pickle=False))."""
    buf = io.BytesIO()
    np.savez_compressed(buf, array=array)
    path.write_bytes(buf.getvalue())


def entry(bundle_dir: Path, path: Path, **extra) -> dict:
    return {"file": path.relative_to(bundle_dir).as_posix(), "sha256": sha256_file(path),
            "bytes": path.stat().st_size, **extra}


def pick(labels: np.ndarray, n: int) -> list[int]:
    """Up to n indices, round-robin over classes in index order: every class is examined."""
    by_class = {c: list(np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()))}
    out, r = [], 0
    while len(out) < min(n, len(labels)):
        for c in by_class:
            if r < len(by_class[c]) and len(out) < n:
                out.append(int(by_class[c][r]))
        r += 1
    return out


def colourful(images: np.ndarray) -> list[int]:
    """Indices of `images`, most colourful first (mean |first − last channel|): a grey photo looks the same in
    either channel order, so it could not show a wrong colour_order."""
    spread = np.abs(images[..., 0].astype(np.int16) - images[..., 2]).mean(axis=(1, 2))
    return [int(i) for i in np.argsort(-spread, kind="stable")]


def window(img: np.ndarray, aspect: float | None) -> np.ndarray:
    """The centred window of `img` with width/height = aspect (None: all of it)."""
    if aspect is None:
        return img
    h, w = img.shape[:2]
    if w / h > aspect:
        cw = max(1, round(h * aspect))
        return img[:, (w - cw) // 2:(w - cw) // 2 + cw]
    ch = max(1, round(w / aspect))
    return img[(h - ch) // 2:(h - ch) // 2 + ch]


def raw_photo(path: Path, spec, aspect: float | None) -> np.ndarray:
    from edgecls.images import load_rgb

    img = window(load_rgb(path), aspect)
    cap = int(1.5 * max(spec.height, spec.width))   # still shrunk on both sides (INTER_AREA), a few 100 KB
    h, w = img.shape[:2]
    if max(h, w) > cap:
        s = cap / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def write(ctx, bundle_dir: Path, run, items: list[tuple[str, int]], split: str, keys: list[str],
          entries: dict[str, dict]) -> dict:
    """Write golden/ into `bundle_dir` and return edgecls.json's `golden` block."""
    from edgecls.device.model.verify import tolerances
    from edgecls.images import load_rgb
    from edgecls.preprocess import prepare

    im = ctx.images
    idx = pick(im.y[split], GOLDEN_IMAGES)
    folder = bundle_dir / GOLDEN_DIR
    folder.mkdir(exist_ok=True)
    images = im.x[split][idx]
    save_array(folder / "images.npz", images)
    save_array(folder / "outputs_keras-float.npz", im.keras[split][idx].astype(np.float32))
    outputs = {}
    for key in keys:
        model = ctx.model_for(key, bundle_dir / entries[key]["file"], entries[key])
        path = folder / f"outputs_{key}.npz"
        save_array(path, model.predict(images).astype(np.float32))
        outputs[key] = entry(bundle_dir, path, runtime=model.runtime)
    photos, prepared = [], []
    for i, (name, aspect) in zip(colourful(images), PHOTO_WINDOWS):
        rel = items[idx[i]][0]
        path = folder / f"photo_{i}.png"
        ok, png = cv2.imencode(".png", cv2.cvtColor(raw_photo(run.data_root / rel, ctx.spec, aspect),
                                                    cv2.COLOR_RGB2BGR))
        path.write_bytes(png.tobytes())
        # What the device must make of the file: decoded as the device decodes it, prepared here.
        prepared.append(prepare(load_rgb(path), ctx.spec, image_order="RGB"))
        photos.append(entry(bundle_dir, path, source=rel, window=name))
    save_array(folder / "photos_prepared.npz", np.stack(prepared))
    # The labels as exported, outside edgecls.json: a consistent edit of its labels and labels.txt (same
    # count, so every shape still fits) is named by the exam even where the model file carries no labels.
    (folder / "labels.json").write_text(json.dumps(list(ctx.labels)))
    return {"split": split, "sources": [items[i][0] for i in idx],
            "images": entry(bundle_dir, folder / "images.npz", count=len(idx)),
            "float": entry(bundle_dir, folder / "outputs_keras-float.npz"),
            "outputs": outputs, "photos": photos,
            "photos_prepared": entry(bundle_dir, folder / "photos_prepared.npz"),
            "labels": entry(bundle_dir, folder / "labels.json", count=len(ctx.labels)),
            "tolerances": tolerances()}
