"""The training recipe, old default vs new, over seeds, on real photos (issue 16).

    python benchmarks/bench_recipe.py [--runs DIR] [--data flowers,digits,flowers2] [--seeds 1337,1,2]
                                      [--recipes old,new] [--out FILE.md]

Each (data, recipe, seed) is one `edgecls train` run in its own process, kept in --runs (a finished run is
reused, so an interrupted benchmark resumes). The seed also draws the split, so three seeds are three
different test splits. Reported per data set and recipe: mean test top-1 over the seeds, the pooled test
accuracy with its 95% interval (all seeds' test photos together), mean wall time, and the time per phase.
`flowers2` is a 2-class subset of flowers (roses and tulips, 300 photos; a folder of links under --runs).
Writes benchmarks/results/train-recipe.md (included in RESULTS.md by make_results.py) and prints it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_results import EDGECLS, ROOT, SHARED, WEIGHTS, publish, shown  # noqa: E402

from edgecls.metrics import delta_text, difference_interval, paired_drop, wilson_interval  # noqa: E402

DATA = {"flowers": SHARED / "data" / "flowers", "digits": SHARED / "data" / "sign_language_digits"}
# the 2-class subset (~300 photos): roses and tulips, the pair the flowers models confuse most
SUBSETS = {"flowers2": ("flowers", ["roses", "tulips"])}

RECIPES = {   # label → train arguments
    # the default before issue 16: 5 head epochs through the backbone, then 12 at a constant lr/10, 160 px
    "old": ["--head", "images", "--schedule", "constant", "--epochs", "5", "--fine-tune-epochs", "12",
            "--img-size", "160"],
    "new": [],   # today's defaults (--preset balanced)
}


def data_dir(runs: Path, data: str) -> Path:
    """The photo folder of a data set; a subset is a folder of links to some of a set's class folders."""
    if data not in SUBSETS:
        return DATA[data]
    parent, classes = SUBSETS[data]
    folder = runs / "data" / data
    folder.mkdir(parents=True, exist_ok=True)
    for c in classes:
        if not (folder / c).exists():
            (folder / c).symlink_to(DATA[parent] / c)
    return folder


def train(runs: Path, data: str, recipe: str, seed: int) -> tuple[dict, str]:
    out = runs / f"{data}-{recipe}-s{seed}"
    cmd = [*EDGECLS, "train", data_dir(runs, data), "--out", out, "--force", "--json", "--seed", seed,
           "--weights", WEIGHTS, *RECIPES[recipe]]
    meta_path = out / "run.json"
    done = meta_path.is_file() and json.loads(meta_path.read_text()).get("status") == "complete"
    if not done:
        print(f"[{out.name}] {shown(cmd)}", file=sys.stderr, flush=True)
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    return json.loads(meta_path.read_text()), shown(cmd).replace(str(runs), "RUNS")


def row(data: str, recipe: str, metas: list[dict]) -> str:
    tests = [m["metrics"]["test"] for m in metas]
    k = sum(round(t["accuracy"] * t["n"]) for t in tests)
    n = sum(t["n"] for t in tests)
    lo, hi = wilson_interval(k, n)
    mean = sum(t["accuracy"] for t in tests) / len(tests)
    per_seed = ", ".join(f"{t['accuracy'] * 100:.1f}" for t in tests)
    secs = sum(m["train_seconds"] for m in metas) / len(metas)
    timing = metas[0].get("timing", {})
    phases = ", ".join(f"{key[:-2]} {v:.0f}" for key, v in timing.items() if key.endswith("_s") and "per_s" not in key)
    cfg = metas[0]["config"]
    return (f"| {data} | {recipe} ({cfg['img_size']} px, head {cfg.get('head', 'images')} {cfg['epochs']}, "
            f"fine-tune {cfg['fine_tune_epochs']} {cfg.get('schedule', 'constant')}) | **{mean * 100:.1f}%** "
            f"({per_seed}) | {k}/{n} = {k / n * 100:.1f}% ({lo * 100:.1f}–{hi * 100:.1f}) | {secs:.0f} | {phases} |")


def test_correct(run_dir: Path):
    """Per test photo, is the run's Keras model right? (cached beside it: test_correct.npy)"""
    import numpy as np

    cached = run_dir / "test_correct.npy"
    if not cached.is_file():
        from edgecls.convert.export import load_keras_model
        from edgecls.dataset import load_arrays
        from edgecls.rundir import load_run

        run = load_run(run_dir)
        x, y = load_arrays(run.data_root, run.split_items("test"), run.spec)
        model = load_keras_model(run_dir / "model.keras")
        np.save(cached, model.predict(x, batch_size=32, verbose=0).argmax(1) == y)
    return np.load(cached)


def comparison(runs: Path, data: str, seeds: list[int]) -> str:
    """new − old on one data set: paired over the same test photos (each seed's split is shared by the two
    recipes), and unpaired from the pooled counts alone (Newcombe)."""
    import numpy as np

    old = np.concatenate([test_correct(runs / f"{data}-old-s{s}") for s in seeds])
    new = np.concatenate([test_correct(runs / f"{data}-new-s{s}") for s in seeds])
    lo, hi = difference_interval(int(old.sum()), len(old), int(new.sum()), len(new))
    d = paired_drop(old, new)
    return (f"| {data} | {len(old)} | {old.sum()} | {new.sum()} | {delta_text(d)} (−{d['lost']} +{d['gained']}) | "
            f"{(new.mean() - old.mean()) * 100:+.2f} ({lo * 100:+.1f} to {hi * 100:+.1f}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=ROOT / ".edgecls-cache" / "recipe")
    ap.add_argument("--data", default="flowers,digits")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--recipes", default="old,new")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train-recipe.md")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    lines = [f"## Training recipe: old default vs new (`python benchmarks/bench_recipe.py "
             f"{' '.join(sys.argv[1:]).replace(str(ROOT) + '/', '')}`)", "",
             "Mean test top-1 over seeds (each seed is another split and init), pooled test accuracy with its 95% "
             "interval, mean wall time of `edgecls train` on the 2-core CPU (shared with other jobs), and where the "
             "time went (s) in the first seed's run.", "",
             "| data | recipe | mean test top-1 (per seed) | pooled test, 95% interval | train s | phases (s) |",
             "|---|---|---|---|---|---|"]
    commands, compared = [], []
    t0 = time.time()
    for data in a.data.split(","):
        for recipe in a.recipes.split(","):
            results = [train(a.runs, data, recipe, s) for s in seeds]
            lines.append(row(data, recipe, [m for m, _ in results]))
            commands.append(f"- {data} {recipe}: `{results[0][1]}` (seeds {a.seeds})")
        if set(a.recipes.split(",")) >= {"old", "new"}:
            compared.append(comparison(a.runs, data, seeds))
    if compared:
        lines += ["", "New minus old on the same test photos (all seeds together): Δ top-1 in pp with its paired 95% "
                  "interval (photos lost, gained), and the unpaired difference of the pooled rates (Newcombe).", "",
                  "| data | test photos | old right | new right | Δ pp, paired (95% CI) | Δ pp, unpaired (95% CI) |",
                  "|---|---|---|---|---|---|", *compared]
    lines += ["", "Commands (RUNS = --runs):", *commands, "",
              f"_{len(seeds)} seeds; benchmark wall time {time.time() - t0:.0f} s (finished runs are reused)._"]
    publish(a.out, lines)


if __name__ == "__main__":
    main()
