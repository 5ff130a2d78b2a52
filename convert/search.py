"""Accuracy-aware mixed precision: keep the fewest ops float until int8 agrees with float often enough.

Real photos have near-ties, and an int8 model flips them: MobileNetV2 on flowers changed ~3% of answers with
every op int8. The QuantizationDebugger ranks ops by their own int8 error (`tflite.op_errors`, in quantization
steps); step k keeps the k worst float. Each step is built, scored (top-1 agreement with the Keras model on
the validation split: apart from training and calibration, but seen by the search, so not held out — the test
split stays untouched for the verdict, convert/measure.py; edgecls.json records it as `scored_on`) and timed against the float artifact (interleaved, one thread). The search stops at the first step that reaches
`target`; a step slower than the latency budget is recorded but never kept.

The loop takes its build/score/time functions as arguments, so the rule is one small function that the
tests can hold to its contract.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

RATIO_SLACK = 0.03   # the interleaved ratio's run-to-run noise here (benchmarks/NOTES.md): not a real cost


@dataclass
class Step:
    float_ops: list[str]
    added: str | None          # the op this step added to the float set
    error_steps: float | None  # that op's int8 error in its quantization steps
    agreed: int
    images: int
    latency_ratio: float       # int8 / float, same runtime, 1 thread, interleaved

    @property
    def agreement(self) -> float:
        return self.agreed / self.images if self.images else 0.0


def choose_float_ops(ranked: list[tuple[str, float]], build: Callable[[list[str]], Path],
        score: Callable[[Path], tuple[int, int]], ratios: Callable[[list[Path]], list[float]],
        target: float, max_ratio: float, max_float_ops: int, progress=None) -> dict:
    """Steps k = 0, 1, … keep the k worst-ranked ops float. Returns {"steps", "chosen", "path", "reached",
    "budget"}: `chosen` is the index of the step kept, `path` its file.

    Steps are built and scored until one reaches `target` (or --max-float-ops); then all of them are timed
    together, in turns with the float model (`ratios`), so that every step sees the same load: timed one at a
    time, the all-int8 step read 0.37 in one export and 0.67 in the next on this shared machine, and the budget
    decided differently. The budget is max(max_ratio, the all-int8 step's ratio) + RATIO_SLACK: where even the
    all-int8 model misses max_ratio on this machine, ops kept float may not make it slower still.
    """
    built: list[tuple[list[str], tuple, int, int, Path]] = []
    last = min(max_float_ops, len(ranked))
    for k in range(last + 1):
        ops = [name for name, _ in ranked[:k]]
        path = build(ops)
        agreed, images = score(path)
        built.append((ops, ranked[k - 1] if k else (None, None), agreed, images, path))
        if progress:
            progress(k + 1, last + 1)
        if images and agreed >= target * images:
            break
    timed = ratios([b[4] for b in built])
    steps = [Step(ops, added[0], None if added[1] is None else round(added[1], 3), agreed, images, round(r, 3))
             for (ops, added, agreed, images, _), r in zip(built, timed)]
    budget = max(max_ratio, steps[0].latency_ratio) + RATIO_SLACK
    allowed = [i for i, s in enumerate(steps) if s.latency_ratio <= budget] or [0]
    reached = [i for i in allowed if steps[i].agreement >= target]
    # The first step that reaches the target; else the best agreement within budget (fewest ops on a tie).
    chosen = reached[0] if reached else max(allowed, key=lambda i: (steps[i].agreed, -i))
    return {"steps": steps, "chosen": chosen, "path": built[chosen][4], "reached": bool(reached), "budget": budget}


def record(result: dict, target: float, max_ratio: float, scored_on: str = "val",
           reference: str = "keras-float") -> dict:
    """The search as edgecls.json keeps it: every step's float ops, agreement and latency, and the choice; which
    photos the agreement was scored on (`scored_on`: val, or train for a run without a val split — never test)
    and against which model."""
    return {"target_agreement": target, "scored_on": scored_on, "reference": reference, "heldout": False,
            "max_latency_ratio": max_ratio, "budget": round(result["budget"], 3),
            "reached": result["reached"], "chosen": result["chosen"],
            "steps": [{**asdict(s), "agreement": round(s.agreement, 5)} for s in result["steps"]]}


def plot(search: dict, title: str, dest: Path) -> None:
    """Agreement vs latency ratio, one point per step, the kept step ringed: where people would rather look."""
    from edgecls.plots import pyplot, save_figure

    plt = pyplot()
    steps = search["steps"]
    xs = [s["latency_ratio"] for s in steps]
    ys = [s["agreement"] * 100 for s in steps]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(xs, ys, "o-", color="tab:blue")
    for i, (x, y) in enumerate(zip(xs, ys)):
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    c = search["chosen"]
    ax.plot([xs[c]], [ys[c]], "o", ms=14, mfc="none", mec="tab:red", label=f"kept: {c} float op(s)")
    ax.axhline(search["target_agreement"] * 100, ls="--", color="gray", lw=1, label="target agreement")
    ax.axvline(search["budget"], ls=":", color="gray", lw=1, label="latency budget")
    ax.set_xlabel("latency int8 / float (1 thread, interleaved)")
    ax.set_ylabel(f"agreement with float, % of {steps[0]['images']} {search.get('scored_on', 'val')} photos")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, dest)
    plt.close(fig)
