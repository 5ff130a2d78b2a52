"""Teaching's trade-off between the new class and the old ones, and where the issue's target lies on it (issue 33).

    python benchmarks/bench_teach_frontier.py --work "Lite0=.edgecls-cache/teach-lite0,MobileNetV2=.edgecls-cache/teach" \
        [--stored 20,50,80,106] [--shift 0,0.25,0.5,0.75] [--out FILE.md] [--plot FILE.png]

Each --work is a leave-one-out set of 4-class flowers bundles with its embeddings cached (bench_teach.py, then
`teach_offline.py embed`). For every fit — the stored embeddings per old class (20: what export stores; more:
the first N of the run's train split) and a bias added to the taught class after device/teach/head.py's fit
(imprint + 300 steps) — the new class is taught from 20 photos, and measured on two halves, so a choice made on
one can be read on the other: **A** = the even-numbered held-out photos of the new class and the 4-class run's
val split (old classes), **B** = the odd-numbered ones and its test split. Old-class change = right answers after
minus before, pp. Also, per backbone: a softmax head fitted from zero on all train photos and the same 20
(classes balanced, as `edgecls train --class-weights`), i.e. what a workstation retrain on these features gets.
Target (issue 33): new class ≥ 86% with the old classes losing ≤ 2 pp.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teach_offline import fitted, load_folds, reference_fit  # noqa: E402

from edgecls.metrics import wilson_interval  # noqa: E402

SHOTS = 20
TARGET_NEW, TARGET_OLD = 0.86, -0.02


def halves(z: dict) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{half: (new-class held-out embeddings, old-class embeddings, their classes)}."""
    return {"A": (z["held_emb"][0::2], z["val_emb"], z["val_y"]),
            "B": (z["held_emb"][1::2], z["test_emb"], z["test_y"])}


def score(folds: dict, fit) -> dict[str, dict]:
    """Per half: new-class right / photos and the old classes' right after − before / photos, summed over folds."""
    out = {h: {"new": 0, "held": 0, "change": 0, "old": 0} for h in ("A", "B")}
    for z in folds.values():
        kernel, bias = fit(z)
        for h, (new, old, y) in halves(z).items():
            before = ((old @ z["kernel"] + z["bias"]).argmax(1) == y).sum()
            out[h]["new"] += int(((new @ kernel + bias).argmax(1) == 4).sum())
            out[h]["held"] += len(new)
            out[h]["change"] += int(((old @ kernel + bias).argmax(1) == y).sum() - before)
            out[h]["old"] += len(y)
    return out


def rows_for(spec: str, stored: list[int], shifts: list[float]) -> list[dict]:
    """Rows of one `--work` item, LABEL=FOLDER (or FOLDER, labelled by its name)."""
    label, _, folder = spec.rpartition("=")
    work = Path(folder)
    label = label or work.name
    folds = load_folds(work)
    rows = [{"work": label, "fit": "reference: from zero, all train photos + the 20", "stored": None,
             "shift": None,
             **score(folds, lambda z: reference_fit(z, z["pool_emb"][:SHOTS], balanced=True))}]
    for n in stored:
        for shift in shifts:
            v = {"shift": shift, **({} if n == 20 else {"stored": n})}
            rows.append({"work": label, "fit": f"{n} stored/class, taught class bias {shift:+g}", "stored": n,
                         "shift": shift, **score(folds, lambda z, v=v: fitted(z, SHOTS, v))})
            print(label, rows[-1]["fit"], {h: rows[-1][h] for h in "AB"}, flush=True)
    return rows


def cell(s: dict) -> str:
    lo, hi = wilson_interval(s["new"], s["held"])
    meets = s["new"] / s["held"] >= TARGET_NEW and s["change"] / s["old"] >= TARGET_OLD
    return (f"{s['new'] / s['held']:.1%} ({s['new']}/{s['held']}; {lo:.1%}–{hi:.1%}) | "
            f"{s['change'] / s['old'] * 100:+.1f} ({s['change']:+d}/{s['old']}){' ✓' if meets else ''}")


def table(rows: list[dict]) -> list[str]:
    lines = ["| bundles | fit | A: new class top-1 | A: old change, pp | B: new class top-1 | B: old change, pp |",
             "|---|---|---|---|---|---|"]
    return lines + [f"| {r['work']} | {r['fit']} | {cell(r['A'])} | {cell(r['B'])} |" for r in rows]


def plot(rows: list[dict], path: Path) -> None:
    from edgecls.plots import pyplot, save_figure

    plt = pyplot()
    works = list(dict.fromkeys(r["work"] for r in rows))
    fig, axes = plt.subplots(1, len(works), figsize=(6 * len(works), 4.6), squeeze=False)
    for ax, work in zip(axes[0], works):
        mine = [r for r in rows if r["work"] == work]
        for n in sorted({r["stored"] for r in mine if r["stored"]}):
            for h, style in (("A", "o-"), ("B", "s--")):
                pts = [r[h] for r in mine if r["stored"] == n]
                ax.plot([p["change"] / p["old"] * 100 for p in pts], [p["new"] / p["held"] * 100 for p in pts],
                        style, ms=4, label=f"{n} stored/class, half {h}")
        ref = next(r for r in mine if r["stored"] is None)
        for h in "AB":
            ax.plot(ref[h]["change"] / ref[h]["old"] * 100, ref[h]["new"] / ref[h]["held"] * 100, "k*", ms=10,
                    label="retrain from zero (20 photos)" if h == "A" else None)
        right = max(ax.get_xlim()[1], 0.5)
        ax.fill_between([TARGET_OLD * 100, right], TARGET_NEW * 100, 100, color="tab:green", alpha=0.15,
                        label="issue 33's target")
        ax.set_xlim(right=right)
        ax.set(title=f"{work}, taught from {SHOTS} photos",
               xlabel="old classes: right answers after − before, pp", ylabel="new class top-1, %", ylim=(50, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Each line: the taught class's bias shift 0 → 0.75 (bottom right → top left); "
                 "A and B: the two halves of the held-out photos", fontsize=9)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="comma-separated bench_teach.py work folders, each LABEL=FOLDER or FOLDER")
    ap.add_argument("--stored", default="20,50,80,106")
    ap.add_argument("--shift", default="0,0.25,0.5,0.75")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "teach-frontier.md")
    ap.add_argument("--plot", type=Path, default=Path(__file__).parent / "results" / "teach-frontier.png")
    a = ap.parse_args()
    rows = [r for w in a.work.split(",") for r in rows_for(w, [int(s) for s in a.stored.split(",")],
                                                          [float(s) for s in a.shift.split(",")])]
    command = shlex.join(["python", "benchmarks/bench_teach_frontier.py", *sys.argv[1:]])
    lines = [f"## Teaching's trade-off: new class vs old classes (`{command}`)", "", *table(rows), "",
             f"✓ = meets the target (new ≥ {TARGET_NEW:.0%}, old ≥ {TARGET_OLD * 100:+.0f} pp) on that half.", "",
             f"![The trade-off per backbone, with the target corner](results/{a.plot.name})"]
    a.out.write_text("\n".join(lines) + "\n")
    plot(rows, a.plot)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
