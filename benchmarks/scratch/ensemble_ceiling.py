"""How far a recipe could go: every trained model of one split on that split's test photos (issue 16).

    python benchmarks/scratch/ensemble_ceiling.py RUN [RUN ...] [-- RUN ...]

Runs separated by `--` are groups; each group holds runs of one seed (the same test split, checked). Per group:
each model's test top-1, the photos wrong in every model, the photos wrong in some, and the top-1 of the
averaged probabilities (an ensemble: what weight averaging or distillation could at best approach). The
SOURCE.txt of ../shared/data/flowers lists known off-topic photos; how many of the always-wrong are among them.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))   # benchmarks/: make_results
from make_results import SHARED  # noqa: E402


def group(runs: list[Path], noisy: set[str]) -> tuple[int, int]:
    from edgecls.convert.context import keras_predictor
    from edgecls.convert.export import load_keras_model
    from edgecls.dataset import load_arrays
    from edgecls.rundir import load_run

    items, wrong, total = None, {}, 0
    for path in runs:
        run = load_run(path)
        its = run.split_items("test")
        if items is not None and its != items:
            raise SystemExit(f"{path}: another test split than {runs[0]}")
        items = its
        x, y = load_arrays(run.data_root, items, run.spec)
        predict = keras_predictor(load_keras_model(run.model_path))
        probs = np.concatenate([predict(x[i:i + 32]) for i in range(0, len(x), 32)])
        total = total + probs
        for i in np.where(probs.argmax(1) != y)[0]:
            wrong[items[i][0]] = wrong.get(items[i][0], 0) + 1
        print(f"{path}: test top-1 {(probs.argmax(1) == y).mean():.3f} of {len(y)}")
    always = sorted(k for k, c in wrong.items() if c == len(runs))
    print(f"  wrong in every model: {len(always)} (in SOURCE.txt's list: {len(set(always) & noisy)}), "
          f"in some: {len(wrong) - len(always)}; ensemble of {len(runs)}: {(total.argmax(1) == y).mean():.3f}")
    return len(always), len(y)


def main(argv: list[str]) -> None:
    source = SHARED / "data" / "flowers" / "SOURCE.txt"
    noisy = set(re.findall(r"\w+/[\w-]+\.jpg", source.read_text())) if source.is_file() else set()
    groups, cur = [], []
    for a in argv:
        if a == "--":
            groups.append(cur)
            cur = []
        else:
            cur.append(Path(a))
    groups.append(cur)
    for g in filter(None, groups):
        group(g, noisy)


if __name__ == "__main__":
    main(sys.argv[1:])
