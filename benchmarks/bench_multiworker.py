"""One worker vs two on the same small run: `edgecls train --strategy multiworker`, each worker one CPU.

    python benchmarks/bench_multiworker.py [--seeds 1,2] [--per-class 30] [--out benchmarks/results/multiworker.md]

Each configuration is the same command (same global --batch-size, seed, data); only TF_CONFIG's worker list
differs. Workers run on 127.0.0.1, pinned to one CPU each (TF_NUM_INTRAOP_THREADS=OMP_NUM_THREADS=1), the
way tests/test_train_multiworker.py starts them. Prints the table and writes it to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EDGECLS_SHARED", HERE.parent.parent / "shared")).resolve()
DIGITS = SHARED / "data" / "sign_language_digits"


def run(workers: int, seed: int, per_class: int, base: Path) -> dict:
    from edgecls.metrics import wilson_interval

    socks = [socket.socket() for _ in range(workers)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    args = ["train", str(DIGITS), "--out", "run", "--img-size", "96", "--epochs", "10", "--fine-tune-epochs", "3",
            "--max-images-per-class", str(per_class), "--batch-size", "32", "--seed", str(seed), "--strategy",
            "multiworker", "--json"]
    cpus = sorted(os.sched_getaffinity(0))
    procs, t0 = [], time.time()
    for i in range(workers):
        cwd = base / f"{workers}w-s{seed}" / f"w{i}"
        cwd.mkdir(parents=True)
        env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", OMP_NUM_THREADS="1",
                   TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                         "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([sys.executable, "-m", "edgecls", *args], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                      preexec_fn=lambda c={cpus[i % len(cpus)]}: os.sched_setaffinity(0, c)))
    outs = [p.communicate()[0] for p in procs]
    wall = time.time() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"{workers} workers, seed {seed}: exit codes {[p.returncode for p in procs]}")
    meta = json.loads((base / f"{workers}w-s{seed}" / "w0" / "run" / "run.json").read_text())
    test = meta["metrics"]["test"]
    k = round(test["accuracy"] * test["n"])
    lo, hi = wilson_interval(k, test["n"])
    return {"workers": workers, "seed": seed, "accuracy": test["accuracy"], "k": k, "n": test["n"], "lo": lo,
            "hi": hi, "wall_s": wall, "train_s": json.loads(outs[0])["train_seconds"],
            "epochs": len(meta["history"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "multiworker.md")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-multiworker-") as tmp:
        for seed in map(int, a.seeds.split(",")):
            for workers in (1, 2):
                rows.append(run(workers, seed, a.per_class, Path(tmp)))
                print(rows[-1], flush=True)
    cmd = f"python benchmarks/bench_multiworker.py --seeds {a.seeds} --per-class {a.per_class}"
    lines = [f"## Multi-worker training: one worker vs two (`{cmd}`)", "",
             f"{time.strftime('%Y-%m-%d')}, this 2-core host (shared with other jobs). The same run — digits, "
             f"{a.per_class} photos per class, 96 px, 10 head epochs (on features) + 3 fine-tune epochs, global batch "
             "32 — trained by "
             "one `--strategy multiworker` worker and by two on 127.0.0.1 (TF_CONFIG), each worker pinned to one "
             "CPU. Test accuracy with its 95% interval (Wilson) on the run's own held-out split.", "",
             "| workers | seed | test accuracy | 95% interval | epochs | train s (chief) | wall s (all workers) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['seed']} | {r['accuracy']:.3f} ({r['k']}/{r['n']}) | "
                     f"{r['lo']:.3f}–{r['hi']:.3f} | {r['epochs']} | {r['train_s']:.0f} | {r['wall_s']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.write_text(text)


if __name__ == "__main__":
    main()
