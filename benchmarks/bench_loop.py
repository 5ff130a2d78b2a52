"""The device loop end to end on the shared flowers: train, keep the uncertain frames, label them, retrain --init.

Per class (seeded shuffle of the 150 photos): `--train` photos are the first data folder; `--held-out` photos are
the fixed exam (never trained on, never selected); the rest is the "video" the device sees. Steps:

1. `edgecls train DATA` → run 1.
2. Run 1's model looks at every video frame; the `--keep` frames with the lowest top-1 probability are kept
   (`run --keep uncertain`'s rule); as a control, the same number of frames at random.
3. Each kept set is filed into a copy of DATA under its true labels (what the labelling page does with a click),
   and `edgecls train DATA2 --init RUN1` retrains from run 1 (same epochs); a third retrain adds nothing
   (--init on DATA itself: what the extra epochs alone give).
4. Every model is scored on the held-out photos: top-1 with its 95% Wilson interval, and the paired difference
   against run 1 (Agresti–Min interval, edgecls.metrics.paired_drop).

The frames are the photos themselves, scored by the float Keras model (no video encode, no int8 export): the
selection rule is the one `run --keep uncertain` applies to the bundle's probabilities.

    python benchmarks/bench_loop.py [--train 40] [--held-out 50] [--keep 50] [--img-size 128]
                                    [--epochs 4] [--fine-tune-epochs 2] [--retrain-epochs N]
                                    [--retrain-fine-tune-epochs N] [--seed 0] [--json OUT]
    python benchmarks/bench_loop.py --pool RESULT.json ...      (several seeds as one paired comparison)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = Path(os.environ.get("EDGECLS_SHARED", ROOT.parent / "shared")) / "data" / "flowers"


def partition(seed: int, n_train: int, n_held: int) -> tuple[list, list, list]:
    """([(rel, class)] for the first data folder, the held-out exam, the video), stratified, seeded."""
    from edgecls.dataset import scan

    s = scan(FLOWERS, check=False)
    rng = np.random.default_rng(seed)
    train, held, video = [], [], []
    for y, c in enumerate(s.classes):
        files = sorted(rel for rel, lab in s.items if lab == y)
        files = [files[i] for i in rng.permutation(len(files))]
        train += [(f, c) for f in files[:n_train]]
        held += [(f, c) for f in files[n_train:n_train + n_held]]
        video += [(f, c) for f in files[n_train + n_held:]]
    return train, held, video


def fill(folder: Path, items: list) -> Path:
    for rel, c in items:
        (folder / c).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FLOWERS / rel, folder / c / Path(rel).name)
    return folder


def train(data: Path, out: Path, args, init: Path | None = None) -> tuple[dict, float]:
    epochs, fine_tune = args.epochs, args.fine_tune_epochs
    if init is not None:
        epochs = epochs if args.retrain_epochs is None else args.retrain_epochs
        fine_tune = fine_tune if args.retrain_fine_tune_epochs is None else args.retrain_fine_tune_epochs
    cmd = [sys.executable, "-m", "edgecls", "train", str(data), "--out", str(out), "--json",
           "--epochs", str(epochs), "--fine-tune-epochs", str(fine_tune), "--seed", str(args.seed)]
    cmd += ["--init", str(init)] if init else ["--img-size", str(args.img_size)]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"train failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout), time.time() - t0


def probabilities(run: Path, items: list) -> np.ndarray:
    from edgecls.dataset import load_arrays
    from edgecls.rundir import load_run
    from edgecls.train.model_file import load_model_safely
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    info = load_run(run)
    index = {c: i for i, c in enumerate(info.labels)}
    x, _ = load_arrays(FLOWERS, [(rel, index[c]) for rel, c in items], info.spec)
    return load_model_safely(keras, run / "model.keras").predict(x.astype(np.float32), batch_size=32, verbose=0)


def pool(paths: list[Path]) -> None:
    """Several seeds' results (--json files) as one paired comparison per arm vs run 1: the held-out photos
    differ per seed, so the pairs simply add up (the interval depends only on n and the discordant counts)."""
    from edgecls.metrics import paired_drop, wilson_interval

    results = [json.loads(p.read_text()) for p in paths]
    print(f"{len(results)} seeds pooled; held-out photos {sum(r['held_out'] for r in results)}")
    print("| model | held-out top-1 (95% CI) | vs run 1, pp (95% CI, paired) |\n|---|---|---|")
    for i, name in enumerate(r["model"] for r in results[0]["rows"]):
        rows = [r["rows"][i] for r in results]
        k, n = sum(r["correct"] for r in rows), sum(r["n"] for r in rows)
        lo, hi = wilson_interval(k, n)
        vs = ""
        if "fixed_lost" in rows[0]:
            fixed, lost = sum(r["fixed_lost"][0] for r in rows), sum(r["fixed_lost"][1] for r in rows)
            ref = np.r_[np.zeros(fixed, bool), np.ones(lost, bool), np.ones(n - fixed - lost, bool)]
            new = np.r_[np.ones(fixed, bool), np.zeros(lost, bool), np.ones(n - fixed - lost, bool)]
            d = paired_drop(ref, new)
            vs = f"{-d['drop_pp']:+.1f} ({-d['ci95_pp'][1]:+.1f} to {-d['ci95_pp'][0]:+.1f}); fixed {fixed}, broke {lost}"
        print(f"| {name} | {k / n * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f}), {k}/{n} | {vs} |")


def main() -> None:
    if sys.argv[1:2] == ["--pool"]:
        return pool([Path(p) for p in sys.argv[2:]])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=40, help="photos per class in the first data folder")
    ap.add_argument("--held-out", type=int, default=50, help="photos per class in the fixed exam")
    ap.add_argument("--keep", type=int, default=50, help="frames kept from the video (all classes together)")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--fine-tune-epochs", type=int, default=2)
    ap.add_argument("--retrain-epochs", type=int, default=None, help="head epochs of the retrains [--epochs]")
    ap.add_argument("--retrain-fine-tune-epochs", type=int, default=None, help="[--fine-tune-epochs]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the data folders and runs here")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args()

    from edgecls.metrics import paired_drop, wilson_interval

    t_start = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgecls-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    first, held, video = partition(args.seed, args.train, args.held_out)
    labels_of = sorted({c for _, c in first})
    y_held = np.array([labels_of.index(c) for _, c in held])
    data = fill(work / "data", first)
    runs: dict[str, Path] = {"run 1": work / "run1"}
    seconds = {}
    _, seconds["run 1"] = train(data, runs["run 1"], args)

    p_video = probabilities(runs["run 1"], video)
    uncertain = [video[i] for i in np.argsort(p_video.max(1), kind="stable")[:args.keep]]
    rng = np.random.default_rng(args.seed + 1)
    random_pick = [video[i] for i in sorted(rng.choice(len(video), args.keep, replace=False))]
    kept = {"+ uncertain frames": uncertain, "+ random frames": random_pick, "+ nothing (more epochs)": []}
    for name, frames in kept.items():
        folder = data if not frames else fill(work / name.split()[1], first + frames)
        runs[name] = work / f"run-{name.split()[1]}"
        _, seconds[name] = train(folder, runs[name], args, init=runs["run 1"])

    correct = {name: probabilities(run, held).argmax(1) == y_held for name, run in runs.items()}
    rows = []
    for name, ok in correct.items():
        k, n = int(ok.sum()), len(ok)
        row = {"model": name, "correct": k, "n": n, "accuracy": k / n, "ci95": wilson_interval(k, n),
               "train_seconds": round(seconds[name], 1), "added": len(kept.get(name, []))}
        if name != "run 1":
            drop = paired_drop(correct["run 1"], ok)   # drop of `ok` vs run 1; its negative is the gain
            row["gain_pp_vs_run1"] = -drop["drop_pp"]
            row["gain_ci95_pp"] = [-drop["ci95_pp"][1], -drop["ci95_pp"][0]]
            row["fixed_lost"] = [drop["gained"], drop["lost"]]
        rows.append(row)
    per_class_kept = {c: sum(1 for _, k in uncertain if k == c) for c in labels_of}
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "held_out": len(held), "video": len(video),
              "first_data": len(first),
              # paired_drop(a, b): b's drop vs a (negative: b is better), pp with its 95% interval
              "uncertain_vs_random_paired": paired_drop(correct["+ random frames"], correct["+ uncertain frames"]),
              "uncertain_vs_more_epochs_paired": paired_drop(correct["+ nothing (more epochs)"],
                                                             correct["+ uncertain frames"]), "uncertain_kept_per_class": per_class_kept,
              "uncertain_top1_max": float(np.sort(p_video.max(1))[args.keep - 1]), "rows": rows,
              "total_seconds": round(time.time() - t_start, 1)}
    print(f"flowers: {len(first)} photos to start, {len(video)} video frames, {len(held)} held out; "
          f"kept {args.keep} (uncertain: top-1 <= {result['uncertain_top1_max']:.3f}; per class {per_class_kept})")
    print("| model | held-out top-1 (95% CI) | vs run 1, pp (95% CI, paired) | train s |")
    print("|---|---|---|---|")
    for r in rows:
        lo, hi = r["ci95"]
        vs = "" if "gain_pp_vs_run1" not in r else (f"{r['gain_pp_vs_run1']:+.1f} "
                                                   f"({r['gain_ci95_pp'][0]:+.1f} to {r['gain_ci95_pp'][1]:+.1f})")
        print(f"| {r['model']} | {r['accuracy'] * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f}), "
              f"{r['correct']}/{r['n']} | {vs} | {r['train_seconds']:.0f} |")
    print(f"total {result['total_seconds']:.0f} s; work folder {work}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
