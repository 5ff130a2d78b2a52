#!/usr/bin/env python3
"""Are the model's input pixels, and the int8 outputs on the same pixels, the host's on a Pi?

Two checks that `check.py` runs on the host (`--save`) and then in each Pi environment (`--compare`), each
printing one JSON object:

    python tools/pi_stack/pixels.py identity IMAGES --save /tmp/host.npz
    ~/.cache/edgecls-pi-stack/pi-python litert tools/pi_stack/pixels.py identity IMAGES --compare /tmp/host.npz

`identity`: every image under IMAGES through `edgecls.preprocess.prepare` in every resize mode, shrinking,
enlarging and both at once, with each resampler; per resampler, how many tensors are byte-identical to the
host's (sha256) and how many values differ. "exact" must be identical; "opencv" shows why it is not the default.

    python tools/pi_stack/pixels.py outputs BUNDLE IMAGES --save /tmp/host.npz
    ~/.cache/edgecls-pi-stack/pi-python litert tools/pi_stack/pixels.py outputs BUNDLE IMAGES --compare /tmp/host.npz

`outputs`: the host prepares IMAGES (class sub-folders, as `edgecls eval` reads them) with the bundle's own
preprocessing and saves those tensors with its int8 artifacts' probabilities; the Pi runs its runtimes on the
host's tensors. What differs then is the kernels alone, not the preprocessing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

# (name, PreprocessSpec fields): every resize mode; 224 enlarges the 100 px digits and shrinks the rest,
# "wide" enlarges one axis and shrinks the other; one BGR case for the channel swap. Between them the three ways
# edgecls.resample computes (phase sums when both axes shrink with a short period — block sums for whole ratios —,
# prefix sums otherwise, direct taps past 8.4 MP).
CASES = {
    "stretch 224": dict(height=224, width=224, resize="stretch"),
    "crop 224": dict(height=224, width=224, resize="crop"),
    "letterbox 224": dict(height=224, width=224, resize="letterbox", pad_value=114),
    "stretch 96 BGR": dict(height=96, width=96, resize="stretch", color_order="BGR"),
    "crop 120x160": dict(height=120, width=160, resize="crop"),
    "letterbox 96x128": dict(height=96, width=128, resize="letterbox"),
    "wide 64x320": dict(height=64, width=320, resize="stretch"),
    # whole ratios (issue 29's block sums): 100 px digits halved, 3024 px photos by 16 and 12
    "blocks 50": dict(height=50, width=50, resize="stretch"),
    "blocks 189x252": dict(height=189, width=252, resize="stretch"),
    # prime sides: more phases than the phase sums take, so prefix sums (flowers) and direct taps (3024 px photos)
    "primes 97x101": dict(height=97, width=101, resize="stretch"),
}
RESAMPLERS = ("exact", "opencv")
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def image_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)


def identity_tensors(root: Path) -> dict[str, np.ndarray]:
    """{"resampler|case|file": tensor} for every image, case and resampler."""
    from edgecls.images import load_rgb
    from edgecls.preprocess import PreprocessSpec, prepare

    out = {}
    for rel in image_files(root):
        img = load_rgb(root / rel)
        for resampler in RESAMPLERS:
            for case, fields in CASES.items():
                out[f"{resampler}|{case}|{rel}"] = prepare(img, PreprocessSpec(**fields, resampler=resampler))
    return out


def compare_identity(mine: dict[str, np.ndarray], host: dict[str, np.ndarray]) -> dict:
    if sorted(mine) != sorted(host):
        raise SystemExit("pixels.py: --compare file was made on other images or cases")
    report = {}
    for resampler in RESAMPLERS:
        keys = [k for k in host if k.startswith(resampler + "|")]
        differ = [k for k in keys if sha256(mine[k]) != sha256(host[k])]
        deltas = [np.abs(mine[k].astype(np.int16) - host[k]) for k in differ]
        report[resampler] = {
            "tensors": len(keys), "identical": len(keys) - len(differ),
            "values": int(sum(host[k].size for k in keys)),
            "values_differ": int(sum((d > 0).sum() for d in deltas)),
            "max_abs": int(max((d.max() for d in deltas), default=0)),
            "images_differ": len({k.split("|", 2)[2] for k in differ}),
            "images": len({k.split("|", 2)[2] for k in keys}),
            "examples": differ[:3]}
    return report


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def probabilities(bundle, x: np.ndarray, keys: list[str]) -> dict[str, np.ndarray]:
    """Each artifact's probabilities on the prepared uint8 tensors x, through the device runtime."""
    from edgecls.device.model.runtime import load_model

    return {k: load_model(bundle, *k.split("-"), threads=2).predict(x) for k in keys if k in bundle.artifacts}


def compare_outputs(bundle, saved, keys: list[str]) -> dict:
    files, x = [str(f) for f in saved["files"]], saved["tensors"]
    labels = bundle.labels
    report = {}
    for key, probs in probabilities(bundle, x, keys).items():
        host = saved[f"probs|{key}"]
        host_top1, top1 = host.argmax(1), probs.argmax(1)
        flips = []
        for i in np.flatnonzero(host_top1 != top1):
            order = np.argsort(-host[i])[:5]   # the host's top-5, to tell near-ties from confident answers
            flips.append([files[i], labels[host_top1[i]], labels[top1[i]],
                          [[labels[j], float(host[i, j])] for j in order]])
        report[key] = {"total": len(files), "same": int((host_top1 == top1).sum()),
                       "max_dp": float(np.abs(probs - host).max()), "flips": flips}
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="check", required=True)
    ident = sub.add_parser("identity", help="prepare() on this CPU against the host's, per resampler")
    ident.add_argument("images", type=Path)
    outs = sub.add_parser("outputs", help="int8 outputs on the host's prepared tensors")
    outs.add_argument("bundle")
    outs.add_argument("images", type=Path)
    outs.add_argument("--artifacts", default="tflite-int8,onnx-int8", help="bundle artifact keys, comma-separated")
    for p in (ident, outs):
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--save", type=Path, help="host: write the tensors (and probabilities) here (.npz)")
        group.add_argument("--compare", type=Path, help="Pi: compare with a file the host saved")
    args = ap.parse_args(argv)

    if args.check == "identity":
        mine = identity_tensors(args.images)
        if args.save:
            np.savez(args.save, **mine)
            print(json.dumps({"tensors": len(mine)}))
        else:
            with np.load(args.compare) as f:
                print(json.dumps(compare_identity(mine, {k: f[k] for k in f.files})))
        return 0

    from edgecls.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    if args.save:
        from edgecls.dataset import load_arrays, scan

        found = scan(args.images, classes=bundle.labels)
        x, _ = load_arrays(found.root, found.items, bundle.spec)
        probs = probabilities(bundle, x, args.artifacts.split(","))
        np.savez(args.save, files=np.array([rel for rel, _ in found.items]), tensors=x,
                 **{f"probs|{k}": v for k, v in probs.items()})
        print(json.dumps({"tensors": len(x), "artifacts": list(probs)}))
    else:
        with np.load(args.compare) as f:
            print(json.dumps(compare_outputs(bundle, {k: f[k] for k in f.files}, args.artifacts.split(","))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
