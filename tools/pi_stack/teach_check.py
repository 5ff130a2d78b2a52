"""The `teach` check of check.py (issue 33): `edgecls teach` on the emulated Pi gives the host's new version.

The host and the Pi each teach a copy of the bundle a NEW label from the same 5 photos (the first of IMAGES'
class folders, taken in order: 5 photos the check already has, under a name the bundle does not know), with
`edgecls teach BUNDLE --label NEW --source PHOTOS --count 5 --out V2`. Then, per Pi environment:

- the new version's labels equal the host's;
- the 5 taught photos' embeddings (teach.npz, computed by the bundle's own int8 model) are compared: identical
  where the kernels are the same (LiteRT's XNNPACK on both sides), and then head.npz must equal the host's within
  HEAD_TOLERANCE, since only NumPy's float math is left to differ; with other kernels (tflite-runtime's reference
  ones) the embeddings differ by int8 steps and the head's difference is reported, not held to the tolerance;
- either way, the Pi's head must give the host's head's top-1 on the host's stored held-out embeddings
  (teach.npz calib_embeddings: the exported classes' and the 5 taught photos);
- `edgecls verify V2` passes on the Pi for the Pi's version and, with other kernels, for the host's (check.py
  builds those rows).

Used by check.py only (loaded from this folder); NumPy is imported when comparing: the host python has edgecls.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

TEACH = "teach"
TEACH_PHOTOS = 5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# head.npz's largest |Δ| allowed against the host's when the embeddings are identical. Measured 2026-12-05 on the
# tiny digits bundle: 0 on a Pi 4 (cortex-a72, litert), i.e. the same float32/float64 bits; the bound leaves room
# for a BLAS that sums in another order (weights are ~0.2 at most, so 1e-4 is far below anything that moves an answer).
HEAD_TOLERANCE = 1e-4


@dataclass
class HostTaught:
    """The host's side: the photos taught, the label, the host's new version (or why it could not be made)."""
    photos: Path
    label: str
    out: Path
    seconds: float = 0.0
    error: str = ""

    def cli(self, bundle: Path, out: Path) -> list[str]:
        return [TEACH, str(bundle), "--label", self.label, "--source", str(self.photos), "--count",
                str(TEACH_PHOTOS), "--out", str(out), "--json"]


def pick_photos(images: Path, dest: Path) -> Path:
    """The first TEACH_PHOTOS photos of IMAGES' class folders, in order, copied flat into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(f for f in images.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    for f in found[:TEACH_PHOTOS]:
        shutil.copyfile(f, dest / f"{f.parent.name}-{f.name}")
    return dest


def new_label(labels: list[str]) -> str:
    """A name the bundle does not have yet."""
    label, n = "taught", 2
    while label in labels:
        label, n = f"taught{n}", n + 1
    return label


def host_teach(call, host_python: str, bundle: Path, images: Path, tmp: Path) -> HostTaught:
    """`edgecls teach` on the host (call: check.py's subprocess runner), the reference for every Pi."""
    labels = json.loads((bundle / "edgecls.json").read_text())["labels"]
    taught = HostTaught(pick_photos(images, tmp / "teach-photos"), new_label(labels), tmp / "teach-host")
    p = call([host_python, "-m", "edgecls", *taught.cli(bundle, taught.out)])
    taught.seconds = p.seconds
    if p.rc != 0 or not (taught.out / "head.npz").is_file():
        taught.error = f"host teach: exit {p.rc}: {p.last_err()}"
    return taught


def read_version(v2: Path) -> tuple[list[str], dict, dict]:
    """(labels, head.npz, teach.npz) of a taught version."""
    import numpy as np

    labels = json.loads((v2 / "edgecls.json").read_text())["labels"]
    with np.load(v2 / "head.npz") as h, np.load(v2 / "teach.npz") as t:
        return labels, {k: h[k] for k in h.files}, {k: t[k] for k in t.files}


def top1(head: dict, embeddings):
    return (embeddings.astype("float32") @ head["kernel"] + head["bias"]).argmax(axis=1)


def compare_versions(host_v2: Path, pi_v2: Path, min_agreement: float) -> dict:
    """The Row fields (ok, agree, total, detail) of the Pi's taught version against the host's."""
    import numpy as np

    labels, head, arrays = read_version(host_v2)
    pi_labels, pi_head, pi_arrays = read_version(pi_v2)
    if pi_labels != labels:
        return dict(ok=False, detail=f"labels differ: host {labels}, pi {pi_labels}")
    taught = arrays["classes"] == len(labels) - 1   # the new class's rows of the stored set
    emb_diff = float(np.abs(arrays["embeddings"][taught].astype(np.float32)
                            - pi_arrays["embeddings"][taught].astype(np.float32)).max())
    head_diff = max(float(np.abs(head[k] - pi_head[k]).max()) for k in ("kernel", "bias"))
    held_out = arrays["calib_embeddings"]
    agree = int((top1(head, held_out) == top1(pi_head, held_out)).sum())
    ok = agree >= min_agreement * len(held_out) and (emb_diff > 0 or head_diff <= HEAD_TOLERANCE)
    kernels = ("identical embeddings of the taught photos, so head.npz is held to "
               f"{HEAD_TOLERANCE:g}" if emb_diff == 0 else
               f"embeddings of the taught photos differ (other kernels: max |Δ| {emb_diff:.3g}), head reported")
    return dict(ok=ok, agree=agree, total=len(held_out), same_embeddings=emb_diff == 0,
                detail=f"{len(labels)} labels as the host ({labels[-1]!r} new); {kernels}: head.npz max |Δ| "
                       f"{head_diff:.3g}; {agree}/{len(held_out)} held-out embeddings get the host head's top-1")
