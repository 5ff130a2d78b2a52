"""Teaching a class on the device (issue 33): flowers, leave one class out.

    python benchmarks/bench_teach.py --work .edgecls-cache/teach [--classes daisy,roses] [--shots 5,10,20]
        [--train-args "--fine-tune-epochs 0"] [--export-args "--formats tflite"] --out benchmarks/results/teach-flowers.md

For each left-out class: `edgecls train` + `edgecls export` on the other four (a folder of symlinks), then
`edgecls teach` on that bundle — the real command, in a subprocess — from 5, 10 and 20 photos of the left-out
class (its first 20 in a seeded shuffle are the teaching pool; the rest of it is held out). On held-out photos
(the 4-class run's test split, the left-out class's held-out photos) through the device runtime: the new class's
top-1 after teaching, the old classes' top-1 before and after; the untaught bundle's unknown rate on the
left-out class and on sign-language digits photos, and the share of held-out known photos it keeps (not unknown).
Teach time: `taskset -c 0 edgecls teach` from 20 photos, wall clock of the whole command. A full `edgecls train`
on all five (same --train-args) is the reference. Every rate with its Wilson 95% interval.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
POOL = 20


def edgecls(*args, cpu: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    cmd = (["taskset", "-c", cpu] if cpu else []) + [sys.executable, "-m", "edgecls", *map(str, args)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    if p.returncode != 0:
        sys.exit(f"failed: {shlex.join(cmd)}\n{p.stderr[-3000:]}")
    return p, time.perf_counter() - t0


def interval(k: int, n: int) -> str:
    from edgecls.metrics import wilson_interval

    lo, hi = wilson_interval(k, n)
    return f"{k / max(n, 1):.1%} ({k}/{n}; {lo:.1%}–{hi:.1%})"


def folder_of(dest: Path, classes: dict[str, list[Path]]) -> Path:
    for name, files in classes.items():
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = dest / name / f.name
            if not link.exists():
                link.symlink_to(f)
    return dest


def trained_bundle(work: Path, name: str, data: Path, train_args: list[str], export_args: list[str]) -> Path:
    run, bundle = work / "runs" / name, work / "bundles" / name
    if not (run / "model.keras").is_file():
        edgecls("train", data, "--out", run, "--force", *train_args)
    if not (bundle / "edgecls.json").is_file():
        edgecls("export", run, "--out", bundle, "--allow-drop", *export_args)
    return bundle


def answers(bundle: Path, files: list[Path], shared: bool = False):
    """(label, unknown?) per photo through the device runtime: the bundle's default artifact, its unknown rule.
    With `shared`, also whether the rule's shared threshold alone (every class held to it, as before a taught
    class had its own) calls it unknown."""
    from edgecls.bundle import load_bundle
    from edgecls.device.model.runtime import load_model
    from edgecls.device.model.unknown import UnknownRule
    from edgecls.images import load_rgb
    from edgecls.preprocess import prepare

    b = load_bundle(bundle)
    model, rule = load_model(b), UnknownRule.from_bundle(b)
    one = rule and UnknownRule(np.full(len(b.labels), b.meta["unknown"]["threshold"], np.float32), rule.means)
    labels, unknown, unknown_shared = [], [], []
    for f in files:
        probs, emb = model.predict_both(prepare(load_rgb(f), b.spec, image_order="RGB")[None])
        labels.append(b.labels[int(probs[0].argmax())])
        unknown.append(bool(rule and rule.unknown(emb[0])))
        unknown_shared.append(bool(one and one.unknown(emb[0])))
    return (labels, unknown, unknown_shared) if shared else (labels, unknown)


def test_split(run_dir: Path) -> list[tuple[Path, str]]:
    from edgecls.rundir import load_run

    run = load_run(run_dir)
    return [(run.data_root / rel, run.labels[y]) for rel, y in run.split_items("test")]


def leave_one_out(work: Path, left: str, photos: dict[str, list[Path]], shots: list[int], args) -> dict:
    others = {c: f for c, f in photos.items() if c != left}
    data = folder_of(work / "data" / f"no-{left}", others)
    bundle = trained_bundle(work, f"no-{left}", data, args.train_args, args.export_args)
    shuffled = sorted(photos[left])
    random.Random(1337).shuffle(shuffled)
    pool, held = shuffled[:POOL], shuffled[POOL:]
    old = test_split(work / "runs" / f"no-{left}")
    old_files, old_truth = [f for f, _ in old], [c for _, c in old]
    before, before_unknown = answers(bundle, old_files)
    row = {"left_out": left, "old_images": len(old), "held_images": len(held),
           "old_before": sum(a == t for a, t in zip(before, old_truth)),
           "known_kept": sum(not u for u in before_unknown),
           "unknown_left_out": sum(answers(bundle, held)[1]), "shots": {}}
    for n in shots:
        out = work / "taught" / f"no-{left}-{n}"
        timing = work / "taught" / f"no-{left}-{n}.seconds"
        if not out.exists():
            folder = folder_of(work / "pools" / f"{left}-{n}" / left, {"": pool[:n]})
            _, seconds = edgecls("teach", bundle, "--label", left, "--source", folder, "--count", n, "--out", out,
                                 cpu="0")
            timing.write_text(f"{seconds:.2f}")
        if timing.is_file():
            row.setdefault("teach_seconds", {})[n] = float(timing.read_text())
        new_labels, new_unknown, new_unknown_shared = answers(out, held, shared=True)
        old_after, old_unknown, old_unknown_shared = answers(out, old_files, shared=True)
        row["shots"][n] = {"new": sum(a == left for a in new_labels),
                           "old_after": sum(a == t for a, t in zip(old_after, old_truth)),
                           # the new class's photos it answers right and does not call unknown: own / shared threshold
                           "new_named": sum(a == left and not u for a, u in zip(new_labels, new_unknown)),
                           "new_named_shared": sum(a == left and not u for a, u in zip(new_labels, new_unknown_shared)),
                           "old_kept": sum(not u for u in old_unknown),
                           "old_kept_shared": sum(not u for u in old_unknown_shared)}
        if n == max(shots):
            k, m = digits_unknown(work, left, bundle=out)
            row["shots"][n]["digits_unknown"], row["shots"][n]["digits"] = k, m
    return row


def digits_unknown(work: Path, left: str, n: int = 200, bundle: Path | None = None) -> tuple[int, int]:
    files = sorted(f for f in (SHARED / "sign_language_digits").rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    return sum(answers(bundle or work / "bundles" / f"no-{left}", files)[1]), len(files)


def table(rows: list[dict], shots: list[int], reference: dict, digits: dict) -> str:
    lines = ["| left out | n held (new / old) | old top-1 before | " + " | ".join(
        f"{n} photos: new class top-1 | {n} photos: old top-1 after" for n in shots) + " | teach s (1 core) |",
        "|---|---|---|" + "---|---|" * len(shots) + "---|"]
    for r in rows:
        cells = [interval(r["shots"][n]["new"], r["held_images"]) + " | " +
                 interval(r["shots"][n]["old_after"], r["old_images"]) for n in shots]
        lines.append(f"| {r['left_out']} | {r['held_images']} / {r['old_images']} | "
                     f"{interval(r['old_before'], r['old_images'])} | " + " | ".join(cells) +
                     f" | {r.get('teach_seconds', {})} |")
    lines += ["", "| left out | unknown: left-out class (never trained) | unknown: digits photos | known kept |",
              "|---|---|---|---|"]
    for r in rows:
        k, n = digits[r["left_out"]]
        lines.append(f"| {r['left_out']} | {interval(r['unknown_left_out'], r['held_images'])} | {interval(k, n)} | "
                     f"{interval(r['known_kept'], r['old_images'])} |")
    lines += ["", "After teaching (the taught version): the new class's held-out photos it names — answered right and "
              "not called unknown — with the taught class's own threshold (leave-one-out over its teach photos) and "
              "with the shared one alone; the old classes' test photos kept (not unknown), own / shared; digits "
              "photos still called unknown.", "",
              "| left out | photos | new class named: own threshold | new class named: shared only | old kept: own | "
              "old kept: shared only | digits unknown |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for n in shots:
            s = r["shots"][n]
            dig = interval(s["digits_unknown"], s["digits"]) if "digits" in s else ""
            lines.append(f"| {r['left_out']} | {n} | {interval(s['new_named'], r['held_images'])} | "
                         f"{interval(s['new_named_shared'], r['held_images'])} | "
                         f"{interval(s['old_kept'], r['old_images'])} | "
                         f"{interval(s['old_kept_shared'], r['old_images'])} | {dig} |")
    if not reference["images"]:
        return "\n".join(lines)
    lines += ["", f"Reference, `edgecls train` on all five (same recipe), its own test split: "
                  f"{interval(reference['correct'], reference['images'])}; per class: "
                  + ", ".join(f"{c} {interval(k, n)}" for c, (k, n) in reference["per_class"].items())]
    return "\n".join(lines)


def reference_row(work: Path, photos: dict, args) -> dict:
    data = folder_of(work / "data" / "all", photos)
    bundle = trained_bundle(work, "all", data, args.train_args, args.export_args)
    test = test_split(work / "runs" / "all")
    got, _ = answers(bundle, [f for f, _ in test])
    per = {c: (sum(g == t for g, (_, t) in zip(got, test) if t == c), sum(t == c for _, t in test)) for c in photos}
    return {"correct": sum(g == t for g, (_, t) in zip(got, test)), "images": len(test), "per_class": per}


def embedding_cost(old: Path, new: Path, run_dir: Path, rounds: int = 200) -> dict:
    """What the second output costs: the int8 TFLite of a bundle exported with it (`new`) against one exported
    from the same run before it (`old`): top-1 agreement on the run's test split and on all its photos, and
    latency (1 thread, calls interleaved old/new, median of the per-round ratio)."""
    from edgecls.bundle import load_bundle
    from edgecls.dataset import load_arrays
    from edgecls.device.bench import interleaved_ratios
    from edgecls.device.model.runtime import load_model
    from edgecls.rundir import load_run

    run = load_run(run_dir)
    a, b = (load_model(load_bundle(x), "tflite", "int8", threads=1) for x in (old, new))
    out = {}
    for split in ("test", "all"):
        items = run.split_items("test") if split == "test" else [i for s in ("train", "val", "test")
                                                                  for i in run.split_items(s)]
        x, _ = load_arrays(run.data_root, items, run.spec)
        agree = int((a.predict(x).argmax(1) == b.predict(x).argmax(1)).sum())
        out[split] = {"agree": agree, "images": len(x), "text": interval(agree, len(x))}
    ratios = interleaved_ratios(a.predict, [b.predict], x[:1], rounds=rounds)
    out["latency_ratio_new_over_old"] = round(float(ratios[0]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--classes", default=None, help="left-out classes (default: all five)")
    ap.add_argument("--shots", default="5,10,20")
    ap.add_argument("--train-args", type=shlex.split, default=[])
    ap.add_argument("--export-args", type=shlex.split, default=[])
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cost", nargs=3, type=Path, metavar=("OLD_BUNDLE", "NEW_BUNDLE", "RUN"),
                    help="only measure what the embedding output costs (embedding_cost)")
    args = ap.parse_args()
    if args.cost:
        print(json.dumps(embedding_cost(*args.cost)))
        return
    flowers = SHARED / "flowers"
    photos = {d.name: sorted(d.glob("*.jpg")) for d in sorted(flowers.iterdir()) if d.is_dir()}
    shots = [int(s) for s in args.shots.split(",")]
    left = args.classes.split(",") if args.classes else list(photos)
    rows, digits = [], {}
    none = {"correct": 0, "images": 0, "per_class": {}}
    for c in left:   # the table is rewritten after each class: a run cut short still leaves its rows
        rows.append(leave_one_out(args.work, c, photos, shots, args))
        digits[c] = digits_unknown(args.work, c)
        print(json.dumps({**rows[-1], "digits_unknown": digits[c]}), flush=True)
        write(args.out, table(rows, shots, none, digits))
    reference = none if args.no_reference else reference_row(args.work, photos, args)
    print(json.dumps({"reference": reference}), flush=True)
    write(args.out, table(rows, shots, reference, digits))


def write(out: Path | None, text: str) -> None:
    print(text, flush=True)
    if out:
        out.write_text(f"# Teaching a class on the device: flowers, leave one out\n\n`python {shlex.join(sys.argv)}`"
                       f"\n\n{text}\n")


if __name__ == "__main__":
    main()
