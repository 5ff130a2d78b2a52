"""A taught class's own unknown threshold: the lowest leave-one-out score vs the normal prediction bound (issue 33).

    python benchmarks/bench_taught_threshold.py BUNDLE [BUNDLE ...] [--sets 300] [--shots 10]
        --out benchmarks/results/teach-threshold.md

Each bundle (a digits bundle, as the tests export it) computes the embeddings of the 150 shared daisies and of 50
photos of each other flower through the device runtime. Many teach sets of `--shots` daisies are drawn (seeded); for
each, the class mean and the leave-one-out scores are what `edgecls teach` computes (device/model/unknown.py), and
both rules set a threshold (never stricter than the bundle's shared one). Measured on the daisies not in the set:
the share the rule keeps (not unknown); on the other flowers (never taught): the share it lets through. Also the
tests' own teach set (device/teach/photos.py: 10 spaced over the first 12 files, consecutive shots of a few
flowers) against 40 held-out daisies. This isolates the threshold: the classifier's answer is not part of it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FLOWERS = ROOT.parent / "shared" / "data" / "flowers"


def embeddings(bundle, model, paths: list[Path]) -> np.ndarray:
    """Unit embeddings of the photos, as teach computes them (device/teach/head.py: embed_all)."""
    from edgecls.device.model.unknown import unit
    from edgecls.device.teach.head import embed_all
    from edgecls.images import load_rgb
    from edgecls.preprocess import prepare

    px = np.stack([prepare(load_rgb(p), bundle.spec, image_order="RGB") for p in paths])
    return unit(embed_all(model, px).astype(np.float32))


def thresholds(teach: np.ndarray, shared: float) -> tuple[np.ndarray, dict[str, float]]:
    from edgecls.device.model.unknown import leave_one_out, taught_threshold, threshold_keeping, unit

    mean, loo = unit(teach.mean(0)), leave_one_out(teach)
    return mean, {"lowest": min(shared, threshold_keeping(loo)[0]), "bound": min(shared, taught_threshold(loo))}


def measure(path: Path, sets: int, shots: int) -> list[str]:
    from edgecls.bundle import load_bundle
    from edgecls.device.model.runtime import load_model

    bundle = load_bundle(path)
    model = load_model(bundle, None, None, threads=2)
    daisy = embeddings(bundle, model, sorted((FLOWERS / "daisy").glob("*.jpg")))
    others = embeddings(bundle, model, [p for c in ("dandelion", "roses", "sunflowers", "tulips")
                                        for p in sorted((FLOWERS / c).glob("*.jpg"))[:50]])
    shared = float(bundle.meta["unknown"]["threshold"])
    rng = np.random.default_rng(0)
    kept, through = {"lowest": [], "bound": []}, {"lowest": [], "bound": []}
    for _ in range(sets):
        order = rng.permutation(len(daisy))
        mean, ts = thresholds(daisy[order[:shots]], shared)
        for rule, t in ts.items():
            kept[rule].append(float((daisy[order[shots:]] @ mean >= t).mean()))
            through[rule].append(float((others @ mean >= t).mean()))
    spaced = np.linspace(0, 11, 10).round().astype(int)
    mean, fixed = thresholds(daisy[spaced], shared)
    rows = []
    for rule in ("lowest", "bound"):
        k, o = np.array(kept[rule]), np.array(through[rule])
        named = int((daisy[100:140] @ mean >= fixed[rule]).sum())
        rows.append(f"| {path} | {rule} | {k.mean():.1%} | {np.percentile(k, 5):.1%} | {o.mean():.1%} | {named}/40 |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--sets", type=int, default=300)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    head = ["| bundle | rule | held-out daisies kept: mean | worst 5% of sets | other flowers let through: mean "
            "| the tests' teach set: 40 held-out daisies kept |", "|---|---|---|---|---|---|"]
    lines = head + [r for b in args.bundles for r in measure(b, args.sets, args.shots)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
