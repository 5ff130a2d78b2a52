"""The taught class's own unknown threshold (issue 33): a class far from the bundle's, taught from a few photos.

    python benchmarks/bench_teach_far.py --work .edgecls-cache/teach-far [--seeds 1337,1] [--shots 5,10,20]
        [--train-args "..."] [--export-args "..."] --out benchmarks/results/teach-unknown-far.md

A digits bundle (`edgecls train` + `edgecls export` on the sign-language digits, one per seed) is taught daisies
(`edgecls teach`, the real command) from 5, 10 and 20 photos (the first of a seeded shuffle of the 150). Through
the device runtime, on photos the teach never saw: the held-out daisies it names (answered "daisy" and not called
unknown), with the taught class's own threshold (device/model/unknown.py: leave-one-out over its teach photos) and
with the shared threshold alone (every class held to it, as before); the other four flowers (never taught: 50 of
each) called unknown, own / shared; the digits run's test photos kept (not unknown), own / shared. Wilson 95%.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
from pathlib import Path

from bench_teach import SHARED, answers, edgecls, folder_of, interval, test_split, trained_bundle

DAISY, OTHERS_PER_CLASS = "daisy", 50


def flower_photos() -> dict[str, list[Path]]:
    flowers = SHARED / "flowers"
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(flowers.iterdir()) if d.is_dir()}


def one_seed(work: Path, seed: int, shots: list[int], args) -> dict:
    run_name = f"digits-s{seed}"
    bundle = trained_bundle(work, run_name, SHARED / "sign_language_digits", [*args.train_args, "--seed", str(seed)],
                            args.export_args)
    photos = flower_photos()
    daisies = sorted(photos.pop(DAISY))
    random.Random(seed).shuffle(daisies)
    pool, held = daisies[:max(shots)], daisies[max(shots):]
    others = [f for files in photos.values() for f in files[:OTHERS_PER_CLASS]]
    known = [f for f, _ in test_split(work / "runs" / run_name)]
    row = {"seed": seed, "held": len(held), "others": len(others), "known": len(known), "shots": {}}
    for n in shots:
        out = work / "taught" / f"{run_name}-{n}"
        if not out.exists():
            folder = folder_of(work / "pools" / f"s{seed}-{n}" / DAISY, {"": pool[:n]})
            edgecls("teach", bundle, "--label", DAISY, "--source", folder, "--count", n, "--out", out)
        meta = json.loads((out / "edgecls.json").read_text())["unknown"]
        labels, unknown, unknown_shared = answers(out, held, shared=True)
        _, other_unknown, other_unknown_shared = answers(out, others, shared=True)
        _, known_unknown, known_unknown_shared = answers(out, known, shared=True)
        row["shots"][n] = {
            "threshold": meta["threshold"], "own": meta["class_thresholds"][-1],
            "right": sum(a == DAISY for a in labels),
            "named": sum(a == DAISY and not u for a, u in zip(labels, unknown)),
            "named_shared": sum(a == DAISY and not u for a, u in zip(labels, unknown_shared)),
            "others_unknown": sum(other_unknown), "others_unknown_shared": sum(other_unknown_shared),
            "known_kept": sum(not u for u in known_unknown),
            "known_kept_shared": sum(not u for u in known_unknown_shared)}
        print(json.dumps({"seed": seed, "shots": n, **row["shots"][n]}), flush=True)
    return row


def table(rows: list[dict], shots: list[int]) -> str:
    lines = ["| seed | photos | thresholds: shared / daisy's own | daisies answered right | named: own threshold | "
             "named: shared only | other flowers unknown: own / shared | digits kept: own / shared |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for n in shots:
            s = r["shots"][n]
            lines.append(f"| {r['seed']} | {n} | {s['threshold']:.3f} / {s['own']:.3f} | "
                         f"{interval(s['right'], r['held'])} | **{interval(s['named'], r['held'])}** | "
                         f"{interval(s['named_shared'], r['held'])} | "
                         f"{interval(s['others_unknown'], r['others'])} / "
                         f"{interval(s['others_unknown_shared'], r['others'])} | "
                         f"{interval(s['known_kept'], r['known'])} / {interval(s['known_kept_shared'], r['known'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seeds", default="1337")
    ap.add_argument("--shots", default="5,10,20")
    ap.add_argument("--train-args", type=shlex.split, default=[])
    ap.add_argument("--export-args", type=shlex.split, default=[])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    shots = [int(s) for s in args.shots.split(",")]
    rows = [one_seed(args.work, int(seed), shots, args) for seed in args.seeds.split(",")]
    text = table(rows, shots)
    print(text)
    if args.out:
        args.out.write_text(f"# The taught class's own unknown threshold: daisies taught to a digits bundle\n\n"
                            f"`python {shlex.join(sys.argv)}`\n\n{text}\n")


if __name__ == "__main__":
    main()
