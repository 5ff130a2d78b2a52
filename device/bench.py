"""`edgecls bench`: latency and throughput of every artifact in a bundle, per thread count.

Each row times `Model.predict` on one prepared image (batch 1, what a camera loop does): quantise, invoke,
dequantise. Median and p95 over `runs` calls after `warmup` calls, the rows taking turns (see bench_bundle). The accuracy column is the bundle's own
measurement (from `export`), not re-measured here.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from edgecls.bundle import Bundle
from edgecls.device.runtime import load_model
from edgecls.formats import FORMATS


def artifact_accuracy(meta: dict) -> float | None:
    """The accuracy `export` recorded for an artifact, wherever in its metrics block it sits."""
    m = meta.get("metrics") or {}
    for key in ("accuracy", "test_accuracy", "top1"):
        if isinstance(m.get(key), (int, float)):
            return float(m[key])
    for split in ("test", "val"):
        sub = m.get(split)
        if isinstance(sub, dict) and isinstance(sub.get("accuracy"), (int, float)):
            return float(sub["accuracy"])
    return None


def bench_input(bundle: Bundle, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random prepared image: latency does not depend on content, reproducibility does."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (1, bundle.spec.height, bundle.spec.width, 3), dtype=np.uint8)


def _interleaved(predicts, x, rounds: int, warmup: int) -> np.ndarray:
    """(rounds, len(predicts)) wall ms of each call, the predicts taking turns (A B C A B C …)."""
    for predict in predicts:
        for _ in range(warmup):
            predict(x)
    times = np.zeros((rounds, len(predicts)))
    for r in range(rounds):
        for i, predict in enumerate(predicts):
            t0 = time.perf_counter()
            predict(x)
            times[r, i] = (time.perf_counter() - t0) * 1000.0
    return times


def interleaved_ms(predicts: list[Callable[[np.ndarray], np.ndarray]], x: np.ndarray, rounds: int = 200,
                   warmup: int = 5) -> list[float]:
    """Median wall ms per call of each predict, timed in turns (A B C A B C …) in this one process.

    Absolute latencies on a shared machine swing 2x from minute to minute; taking turns call by call
    makes every model see the same load, so the *ratios* between them hold (benchmarks/NOTES.md).
    """
    return [float(v) for v in np.median(_interleaved(predicts, x, rounds, warmup), axis=0)]


def interleaved_ratio(baseline: Callable, other: Callable, x: np.ndarray, rounds: int = 200, warmup: int = 5) -> float:
    """Latency of `other` / `baseline`: the median over rounds of the ratio of two back-to-back calls.
    Each round's pair shares the machine's load of that moment, so this holds where other programs come and
    go (seen here: ratio of medians 0.22–0.67 for the same pair under a load of 7, on 2 cores)."""
    t = _interleaved([baseline, other], x, rounds, warmup)
    return float(np.median(t[:, 1] / t[:, 0]))


def bench_bundle(bundle: Bundle, threads: list[int], runs: int = 50, warmup: int = 5,
                 keys: list[str] | None = None, progress=None, block: int = 10) -> list[dict]:
    """One row per (artifact present in the bundle, in FORMATS order) × thread count.

    All rows are loaded first and then timed in turns, `block` calls each, until every row has `runs` calls:
    a machine whose load drifts during the benchmark (shared CPUs, thermal throttling on a Pi) then skews
    every row alike, so the rows stay comparable with each other.
    """
    present = bundle.artifacts
    plan = [(f, t) for f in FORMATS if f.key in present and (not keys or f.key in keys) for t in threads]
    x = bench_input(bundle)
    models = [load_model(bundle, fmt.family, fmt.precision, threads=t) for fmt, t in plan]
    for model in models:
        for _ in range(warmup):
            model.predict(x)
    times, cpu_times = [[] for _ in plan], [[] for _ in plan]
    while plan and len(times[-1]) < runs:
        for model, ms, cpu in zip(models, times, cpu_times):
            for _ in range(min(block, runs - len(ms))):
                t0, c0 = time.perf_counter(), time.process_time()
                model.predict(x)
                ms.append((time.perf_counter() - t0) * 1000.0)
                cpu.append((time.process_time() - c0) * 1000.0)
        if progress:
            progress(len(times[-1]), runs)
    rows = []
    for (fmt, t), model, ms, cpu in zip(plan, models, times, cpu_times):
        art, ms = present[fmt.key], np.asarray(ms)
        rows.append({"artifact": fmt.key, "format": fmt.family, "precision": fmt.precision, "threads": t,
                     "runtime": model.runtime, "providers": list(model.providers),
                     "size_mb": round(art.path.stat().st_size / 1e6, 2),
                     "median_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
                     # CPU time of all threads per call: unlike wall time, barely moved by other programs' load
                     "cpu_ms": round(float(np.median(cpu)), 3),
                     "fps": round(1000.0 / float(np.mean(ms)), 1), "accuracy": artifact_accuracy(art.meta),
                     "runs": runs})
    return rows


COLUMNS = [("artifact", "Artifact", "{}"), ("threads", "Threads", "{}"), ("size_mb", "Size MB", "{:.2f}"),
           ("accuracy", "Accuracy", "{:.4f}"), ("median_ms", "Median ms", "{:.2f}"), ("p95_ms", "p95 ms", "{:.2f}"), ("cpu_ms", "CPU ms", "{:.2f}"),
           ("fps", "FPS", "{:.1f}"), ("runtime", "Runtime", "{}")]


def format_table(rows: list[dict]) -> str:
    """A plain aligned table (like `yolo benchmark`'s), readable over ssh and in logs."""
    cells = [[title for _, title, _ in COLUMNS]]
    for r in rows:
        cells.append([("-" if r[k] is None else fmt.format(r[k])) for k, _, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
