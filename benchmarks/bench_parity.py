"""int8 parity on real photos: every int8 method side by side, and the default export on three data sets.

    python benchmarks/bench_parity.py [--work DIR] [--fresh] [--only flowers,digits,flowers2]
                                      [--methods all|default|rounding]
                                      [--runs-from RECIPE_RUNS] [--out FILE.md]

Data sets (all real photos from ../shared): `flowers` (750 photos, 5 classes), `digits` (sign_language_digits,
2,062 photos, 10 classes) and `flowers2` (two classes of flowers, 300 photos: the small-data case whose test
split has ~45 photos). Each is trained once with `edgecls train` defaults (cached in --work), then exported:
flowers with every method (PTQ all-int8, guarded PTQ = the worst-ranked op float, PTQ + mixed-precision search,
QAT, auto = the default), the others with
the default only. Every number comes from the bundle's own edgecls.json: agreement with the float twin on the
held-out test photos (what the gate judges) and — labelled so — over all the run's images, training photos
included; test top-1 drop with its 95% interval, int8/float latency (1 thread, interleaved), wall time.
Writes benchmarks/results/parity.md, which make_results.py includes in RESULTS.md, and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_results import EDGECLS, ROOT, SHARED, Stages, last_json, publish  # noqa: E402

from edgecls.metrics import delta_text  # noqa: E402

DATA = {"flowers": SHARED / "data" / "flowers", "digits": SHARED / "data" / "sign_language_digits"}
TWO_CLASSES = ("daisy", "dandelion")
METHODS = {   # label → export arguments
    "ptq --full-int8 (every op int8)": ["--int8-method", "ptq", "--full-int8"],
    "guarded ptq (the worst op float: the previous default)": ["--int8-method", "ptq", "--max-float-ops", "1",
                                                               "--target-agreement", "100"],
    "ptq + mixed-precision search": ["--int8-method", "ptq"],
    "qat": ["--int8-method", "qat"],
    "auto (default)": [],
}
ROUNDING = {   # --methods rounding: the default export with each --weight-rounding, on every data set
    "auto (default: --weight-rounding gptq)": [],
    "auto, --weight-rounding nearest (the converters' rounding)": ["--weight-rounding", "nearest"],
}


def two_class_data(work: Path) -> Path:
    """flowers2: a folder with two of the flowers classes (links to the shared photos; nothing copied)."""
    root = work / "data" / "flowers2"
    for c in TWO_CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for photo in sorted((DATA["flowers"] / c).iterdir()):
            link = root / c / photo.name
            if not link.exists():
                link.symlink_to(photo)
    return root


def rows_for(name: str, label: str, m: dict | None, rec: dict) -> list[str]:
    if not m:
        return [f"| {name} | {label} | failed (exit {rec['rc']}): {rec['stderr_tail'][-160:]!r} | | | | | | | | | `{rec['cmd']}` |"]
    rep = m["report"]
    out = []
    for key in ("tflite-int8", "onnx-int8"):
        art = m["artifacts"].get(key)
        if not art:
            continue
        mt = art["metrics"]
        h, a, d = mt["agreement_heldout"], mt["agreement_all"], mt["drop"]
        ops = art.get("float_ops") or []
        kept = f"{art['method']}, {len(ops)} float op(s)"
        tv = f", TV {mt['mean_tv_all']:.4f}" if mt.get("mean_tv_all") is not None else ""
        out.append(f"| {name} | {label} | {key}: {kept} | {h['reference']} | **{h['rate'] * 100:.2f}%** "
                   f"({h['agreed']}/{h['images']}) | {a['rate'] * 100:.2f}% ({a['agreed']}/{a['images']}{tv}) | "
                   f"{rep['keras_accuracy'] * 100:.1f}% → {mt['accuracy'] * 100:.1f}% (n={rep['images']}) | "
                   f"{delta_text(d)} | "
                   f"{mt.get('latency_ratio', float('nan')):.2f} | {'passed' if mt['verdict']['passed'] else 'FAILED'} | "
                   f"{rec['seconds']:.0f} | `{rec['cmd']}` |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / ".edgecls-cache" / "parity")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--only", default="flowers,digits,flowers2")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "parity.md")
    ap.add_argument("--train-only", action="store_true", help="only the (cached) training runs")
    ap.add_argument("--methods", choices=("all", "default", "rounding"), default="all",
                    help="flowers: every --int8-method (all) or the default export only; rounding: the default "
                         "export with --weight-rounding gptq and nearest, on every data set")
    ap.add_argument("--runs-from", type=Path, default=None,
                    help="take the flowers/digits runs from bench_recipe.py's --runs (its new-default seed-1337 "
                         "runs: the same `edgecls train` defaults) instead of training them again")
    a = ap.parse_args()
    st = Stages(a.work, a.fresh)
    data = {**DATA, "flowers2": two_class_data(a.work)}
    args = " ".join(sys.argv[1:]).replace(str(ROOT) + "/", "")
    lines = [f"## int8 parity on real photos (`python benchmarks/bench_parity.py{' ' + args if args else ''}`)", "",
             "Agreement = top-1 of int8 equal to its float twin's (the vs column), on the held-out test photos "
             "(never seen by training, calibration, weight rounding or the search: what the gate judges), and over "
             "every image of the run, training photos included (they flatter int8); TV = mean total-variation "
             "distance of the int8 probabilities from float's over all images. Δ = test top-1 of int8 minus float, "
             "with its paired 95% interval. Latency = int8 / float of the same runtime, 1 thread, interleaved in one "
             "process (measured during the export).",
             "", "| data | --int8-method | artifact kept | vs | agreement, held-out | agreement incl. training photos | "
             "test top-1 float → int8 | Δ pp (95% CI) | int8/float latency | gate | export s | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    train_lines = []
    for name in a.only.split(","):
        run = a.work / "runs" / name
        if a.runs_from is not None and (a.runs_from / f"{name}-new-s1337" / "run.json").is_file():
            run = a.runs_from / f"{name}-new-s1337"
            meta = json.loads((run / "run.json").read_text())
            s = {"split_sizes": meta["dataset"]["split_sizes"], "test_accuracy": meta["metrics"]["test"]["accuracy"]}
            rec = {"seconds": meta["train_seconds"], "cmd": f"benchmarks/bench_recipe.py: {name} new, seed 1337 ({run})"}
        else:
            rec = st.run(f"train-{name}", [*EDGECLS, "train", data[name], "--out", run, "--force", "--json"])
            s = last_json(rec["stdout"]) or {}
        train_lines.append(f"| {name} | {s.get('split_sizes')} | {s.get('test_accuracy', float('nan')) * 100:.1f}% | "
                           f"{rec['seconds']:.0f} | `{rec['cmd']}` |")
        methods = ({} if a.train_only else ROUNDING if a.methods == "rounding"
                   else METHODS if name == "flowers" and a.methods == "all" else {"auto (default)": []})
        for label, extra in methods.items():
            tag = "-".join(x.strip("-") for x in extra) or "default"
            rec = st.run(f"export-{name}-{tag}", [*EDGECLS, "export", run, "--out", a.work / f"bundle-{name}-{tag}",
                                                  *extra, "--allow-drop", "--json"], ok_codes=(0, 3))
            lines += rows_for(name, label, last_json(rec["stdout"]), rec)
    lines += ["", "Training runs behind it (defaults: MobileNetV2 1.0, 160 px, ImageNet weights):", "",
              "| data | split sizes | float test top-1 | train s | command |", "|---|---|---|---|---|", *train_lines, ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    publish(a.out, lines)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
