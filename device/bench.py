"""`edgecls bench`: latency and throughput of every artifact in a bundle, per thread count.

Each row times `Model.predict` on one prepared image (batch 1, what a camera loop does): quantise, invoke,
dequantise. Median and p95 over `runs` calls after `warmup` calls, the rows taking turns (see bench_bundle);
an int8 row's `vs_float` is its latency over the float artifact's of its family at the same threads, the two
timed in turns with no other model loaded. The accuracy column is the bundle's own measurement (from `export`), not re-measured here.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from edgecls.bundle import Bundle
from edgecls.device.model.runtime import load_model
from edgecls.formats import BY_KEY, FORMATS, find


def artifact_accuracy(meta: dict) -> float | None:
    """The test-split accuracy `export` recorded for an artifact (metrics.accuracy), if any."""
    value = (meta.get("metrics") or {}).get("accuracy")
    return float(value) if isinstance(value, (int, float)) else None


def bench_input(bundle: Bundle, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random prepared image: latency does not depend on content, reproducibility does."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (1, bundle.spec.height, bundle.spec.width, 3), dtype=np.uint8)


def interleaved_times(predicts: list[Callable[[np.ndarray], np.ndarray]], x: np.ndarray, rounds: int = 200,
                      warmup: int = 5, progress=None) -> list[list[float]]:
    """Wall ms of every call of each predict, timed in turns (A B C A B C …) in this one process.

    Absolute latencies on a shared machine swing 2x from minute to minute; taking turns call by call
    makes every model see the same load, so the *ratios* between them hold (benchmarks/NOTES.md).
    """
    for predict in predicts:
        for _ in range(warmup):
            predict(x)
    times = [[] for _ in predicts]
    for i in range(rounds):
        for predict, ms in zip(predicts, times):
            t0 = time.perf_counter()
            predict(x)
            ms.append((time.perf_counter() - t0) * 1000.0)
        if progress and ((i + 1) % 10 == 0 or i + 1 == rounds):
            progress(i + 1, rounds)
    return times


def interleaved_ms(predicts: list[Callable[[np.ndarray], np.ndarray]], x: np.ndarray, rounds: int = 200,
                   warmup: int = 5) -> list[float]:
    """Median wall ms per call of each predict, timed in turns (`interleaved_times`)."""
    return [float(np.median(ms)) for ms in interleaved_times(predicts, x, rounds, warmup)]


def interleaved_ratios(baseline: Callable, others: list[Callable], x: np.ndarray, rounds: int = 200,
                       warmup: int = 5) -> list[float]:
    """Latency of each of `others` / `baseline`, all timed in turns in this process (base, o1, o2, …, base, …):
    the median over rounds of each call's time over the baseline call's of that round. Every model sees the same
    load, so this holds where other programs come and go (seen here: a ratio of medians read 0.22–0.67 for the
    same pair under a load of 7 on 2 cores)."""
    times = np.asarray(interleaved_times([baseline, *others], x, rounds, warmup))
    return [float(np.median(t / times[0])) for t in times[1:]]


def int8_vs_float_ms(bundle: Bundle, family: str, threads: int, x: np.ndarray, rounds: int,
                     warmup: int = 5) -> tuple[float, float]:
    """(float ms, int8 ms) of one family's two artifacts, the only models alive, timed in turns (`interleaved_ms`).

    Timed among all of a bench's rows, a row pays for the worker threads of the row before it, which spin a while
    after their own call (onnxruntime's 2-thread sessions on a 2-core host: onnx-int8 at 1 thread read 1.5x its float
    twin there, 0.8x CPU time): a ratio is measured on its pair alone."""
    pair = [load_model(bundle, family, precision, threads=threads) for precision in ("float", "int8")]
    float_ms, int8_ms = interleaved_ms([m.predict for m in pair], x, rounds, warmup)
    del pair
    return float_ms, int8_ms


CPU_CALLS = 20   # calls per artifact for cpu_ms, each artifact alone in the process


def cpu_ms_alone(bundle: Bundle, key: str, threads: int, x: np.ndarray, calls: int = CPU_CALLS,
                 warmup: int = 2) -> float:
    """Median process CPU ms per call with this artifact the only model alive.

    Measured while the others are loaded, the process's CPU time also counts their runtimes' worker
    threads, which spin for a while after each of their own calls (float TFLite at 1 thread read 8.6 ms
    CPU for 4.5 ms wall next to 2-thread interpreters)."""
    fmt = BY_KEY[key]
    model = load_model(bundle, fmt.family, fmt.precision, threads=threads)
    try:
        for _ in range(warmup):
            model.predict(x)
        cpu = []
        for _ in range(calls):
            c0 = time.process_time()
            model.predict(x)
            cpu.append((time.process_time() - c0) * 1000.0)
        return float(np.median(cpu))
    finally:
        del model


def bench_bundle(bundle: Bundle, threads: list[int], runs: int = 50, warmup: int = 5,
                 keys: list[str] | None = None, progress=None) -> list[dict]:
    """One row per (artifact present in the bundle, in FORMATS order) × thread count.

    All rows are loaded first and then timed in turns, one call each (`interleaved_times`), `runs` rounds:
    a machine whose load drifts during the benchmark (shared CPUs, thermal throttling on a Pi) then skews
    every row alike, so the rows stay comparable. After that, with those models gone: `vs_float`, an int8 row's
    latency over its float twin's (same family, same threads), each pair alone and in turns
    (`int8_vs_float_ms`), and `cpu_ms`, each artifact alone (`cpu_ms_alone`).
    """
    present = bundle.artifacts
    plan = [(f, t) for f in FORMATS if f.key in present and (not keys or f.key in keys) for t in threads]
    x = bench_input(bundle)
    models = [load_model(bundle, fmt.family, fmt.precision, threads=t) for fmt, t in plan]
    times = interleaved_times([m.predict for m in models], x, runs, warmup, progress) if plan else []
    described = [(model.runtime, list(model.providers)) for model in models]
    del models   # before cpu_ms: no other interpreter's threads may spin while it is measured
    pairs = {(fmt.family, t) for fmt, t in plan   # a family without its own float (onnx-int8-trt): no pair
             if fmt.precision == "int8" and fmt.twin is None and find(fmt.family, "float").key in present}
    ratio = {}
    for family, t in sorted(pairs):
        float_ms, int8_ms = int8_vs_float_ms(bundle, family, t, x, runs, warmup)
        ratio[(family, t)] = int8_ms / float_ms
    rows = []
    for (fmt, t), (runtime, providers), ms in zip(plan, described, times):
        art, ms = present[fmt.key], np.asarray(ms)
        rows.append({"artifact": fmt.key, "format": fmt.family, "precision": fmt.precision, "threads": t,
                     "runtime": runtime, "providers": providers,
                     "size_mb": round(art.path.stat().st_size / 1e6, 2),
                     "median_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
                     "vs_float": round(ratio[(fmt.family, t)], 3) if fmt.precision == "int8" and (fmt.family, t) in ratio
                     else None,
                     "cpu_ms": round(cpu_ms_alone(bundle, fmt.key, t, x), 3),
                     "fps": round(1000.0 / float(np.mean(ms)), 1), "accuracy": artifact_accuracy(art.meta),
                     "runs": runs})
    return rows


COLUMNS = [("artifact", "Artifact", "{}"), ("threads", "Threads", "{}"), ("size_mb", "Size MB", "{:.2f}"),
           ("accuracy", "Accuracy", "{:.4f}"), ("median_ms", "Median ms", "{:.2f}"), ("p95_ms", "p95 ms", "{:.2f}"),
           ("vs_float", "vs float", "{:.2f}x"), ("cpu_ms", "CPU ms", "{:.2f}"),
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
