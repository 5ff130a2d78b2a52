"""What the float shadow's pairs say: live int8-vs-float agreement, the float model's confidence, and drift.

`ShadowFigures` keeps the figures (over the run and over the last WINDOW shadowed frames, in constant memory);
`DriftMonitor` holds them to the export's own figures from edgecls.json and raises one event per episode.

The drift rule (docs/device.md, "Drift without labels"), checked on each new pair once WINDOW pairs exist:
- agreement: the window's int8-vs-float agreement is clearly below the export's: the upper end of its 95% Wilson
  interval is below the lower end of the export's interval on its held-out photos (`artifacts.<live>.metrics.
  agreement_heldout`; a bundle from before it: `agreement` over `report.images`; `agreement_all.ci95` for a bundle
  without either), AND at least MIN_DISAGREEMENTS of the window disagree. Held-out, not all images: training
  images flatter int8 (tiny digits run: 90.3% over all 400 images, 86.7% on the 60 test photos; flowers 99.5% on
  train+val, 97.3% on val), a camera never shows a training image, and held to the all-images rate the rule
  fired on undarkened held-out photos. The lower end, not the rate: 60 test photos do not pin a rate to a point.
  The minimum count keeps a near-perfect export (310/310) from turning one or two flipped near-ties into an alarm:
  40 frames cannot tell 99.9% from 97%.
- confidence: the median of the float model's top-1 margin over the window is below the 25th percentile of its
  margins on the export's held-out photos (`report.float_margin.p25`). On frames like the test photos each
  margin falls below that percentile with probability 1/4, so 20 or more of 40 do so with probability 6e-4
  (binomial tail): a window that does is not the test photos' kind of picture (dark, out of focus, a new object).
An episode starts when a rule first holds (one `drift` event) and ends after WINDOW consecutive checks without
it (one `drift_cleared` event): a flickering rule at the edge does not warn on every frame.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from edgecls.metrics import wilson_interval

WINDOW = 40                # recent shadowed frames the rules look at: ~4 s of a 100 FPS loop at --shadow 10
MIN_DISAGREEMENTS = 4      # agreement rule: a tenth of the window at least
MARGIN_PERCENTILE = "p25"  # confidence rule: the window's median margin below this percentile of the test photos'
HIST_BINS = 1000           # the run's margin distribution, in steps of 0.001 (constant memory for a 24/7 run)


@dataclass
class Pair:
    """One shadowed frame: the live int8 answer and the float model's on the same tensor."""
    frame: int            # Frame.index
    int8_class: int       # top-1 of the live artifact (argmax of this frame's own probabilities)
    float_class: int      # top-1 of the float twin
    float_margin: float   # float top-1 minus top-2 probability: how sure float was

    @property
    def agree(self) -> bool:
        return self.int8_class == self.float_class


class ShadowFigures:
    """Running agreement (with its Wilson 95% interval) and float-margin quantiles, over the run and the window."""

    def __init__(self, window: int = WINDOW):
        self.pairs = self.agreed = 0
        self.recent: deque[Pair] = deque(maxlen=window)
        self._hist = np.zeros(HIST_BINS, np.int64)
        self._cum, self._cum_at = self._hist, 0

    def add(self, pair: Pair) -> None:
        self.pairs += 1
        self.agreed += pair.agree
        self.recent.append(pair)
        self._hist[min(HIST_BINS - 1, int(pair.float_margin * HIST_BINS))] += 1

    @property
    def window_full(self) -> bool:
        return len(self.recent) == self.recent.maxlen

    @property
    def window_agreed(self) -> int:
        return sum(p.agree for p in self.recent)

    def window_margin(self, q: float) -> float:
        """The q-th percentile of the window's margins (linear interpolation, as np.percentile; in plain Python,
        which is 50x faster on 40 numbers and this runs in the live loop)."""
        m = sorted(p.float_margin for p in self.recent)
        if not m:
            return 0.0
        pos = q / 100.0 * (len(m) - 1)
        i = int(pos)
        return m[i] if i + 1 == len(m) else m[i] + (m[i + 1] - m[i]) * (pos - i)

    def run_margin(self, q: float) -> float:
        """The q-th percentile of every margin this run, to the histogram's 0.001 (lower edge of its bin)."""
        if not self.pairs:
            return 0.0
        if self._cum_at != self.pairs:   # one cumulative sum per new pair, however many percentiles are read
            self._cum, self._cum_at = np.cumsum(self._hist), self.pairs
        return float(np.searchsorted(self._cum, q / 100.0 * self.pairs) / HIST_BINS)

    def histogram(self, bins: int = 10) -> list[int]:
        """Counts of the run's float margins in `bins` equal steps of 0..1."""
        return self._hist.reshape(bins, -1).sum(1).tolist()

    def to_dict(self) -> dict:
        lo, hi = wilson_interval(self.agreed, self.pairs)
        k, n = self.window_agreed, len(self.recent)
        wlo, whi = wilson_interval(k, n)
        return {"pairs": self.pairs, "agreed": self.agreed, "rate": round(self.agreed / self.pairs, 5) if self.pairs else None,
                "ci95": [round(lo, 5), round(hi, 5)],
                "float_margin": {"p10": round(self.run_margin(10), 3), "p50": round(self.run_margin(50), 3)},
                "window": {"pairs": n, "agreed": k, "ci95": [round(wlo, 5), round(whi, 5)],
                           "float_margin_p50": round(self.window_margin(50), 4)}}

    def lines(self) -> list[str]:
        """Two short lines for the overlay and the MJPEG page: agreement with its count and interval, then the
        float model's margin (short enough for a small frame)."""
        if not self.pairs:
            return ["float shadow: waiting"]
        lo, hi = wilson_interval(self.agreed, self.pairs)
        return [f"int8=float {self.agreed}/{self.pairs} {self.agreed / self.pairs * 100:.1f}% ({lo * 100:.0f}-{hi * 100:.0f})",
                f"float margin p50 {self.run_margin(50):.2f} p10 {self.run_margin(10):.2f}"]


def heldout_count(meta: dict, metrics: dict) -> tuple[int, int] | None:
    """(agreed, images) of an artifact's agreement with its float twin on the held-out photos: the field that says
    so (`metrics.agreement_heldout`); a bundle exported before it: the bare rate (`metrics.agreement`) over
    `report.images`. None when neither is there."""
    heldout = metrics.get("agreement_heldout")
    heldout = heldout if isinstance(heldout, dict) else {}
    agreed, images = heldout.get("agreed"), heldout.get("images")
    if isinstance(agreed, int) and isinstance(images, int):
        return (agreed, images) if images > 0 else None
    rate, n = metrics.get("agreement"), (meta.get("report") or {}).get("images")
    if isinstance(rate, (int, float)) and isinstance(n, int) and n > 0:
        return int(round(rate * n)), n
    return None


def agreement_floor(meta: dict, key: str) -> float | None:
    """The lower end of the 95% interval of the export's int8-vs-float agreement on its held-out photos (falling
    back to all images), from edgecls.json; None when the bundle records neither (a bundle not made by export)."""
    metrics = (meta.get("artifacts", {}).get(key) or {}).get("metrics") or {}
    count = heldout_count(meta, metrics)
    if count is not None:
        return round(wilson_interval(*count)[0], 5)
    ci95 = (metrics.get("agreement_all") or {}).get("ci95")
    return float(ci95[0]) if isinstance(ci95, list) and len(ci95) == 2 else None


class DriftMonitor:
    """The two drift rules (module docstring) against the export's figures; `notes` says which rule is off and why."""

    def __init__(self, agreement_floor: float | None, export_margin: dict | None, window: int = WINDOW):
        self.agreement_floor = agreement_floor   # agreement_floor(): the lower end of the export's held-out interval
        self.margin_floor = (export_margin or {}).get(MARGIN_PERCENTILE)
        self.window = window
        self.notes = []
        if agreement_floor is None:
            self.notes.append("the bundle records no int8-vs-float agreement for the live artifact: the agreement "
                              "drift check is off")
        if self.margin_floor is None:
            self.notes.append("the bundle records no float margin on its test photos (report.float_margin; exported "
                              "before edgecls recorded it): the confidence drift check is off — re-export to turn it on")
        self.active = {"agreement": False, "confidence": False}
        self.episodes = {"agreement": 0, "confidence": 0}
        self._clear_streak = {"agreement": 0, "confidence": 0}

    def reasons(self, fig: ShadowFigures) -> dict[str, str | None]:
        """Per rule: why it holds on the current window (a sentence), or None."""
        out = {"agreement": None, "confidence": None}
        if not fig.window_full:
            return out
        k, n = fig.window_agreed, len(fig.recent)
        if self.agreement_floor is not None:
            hi = wilson_interval(k, n)[1]
            if hi < self.agreement_floor and n - k >= MIN_DISAGREEMENTS:
                out["agreement"] = (f"int8 agrees with float on {k}/{n} recent frames (95% interval up to "
                                    f"{hi * 100:.1f}%), below the {self.agreement_floor * 100:.1f}% the export's "
                                    "held-out photos support")
        if self.margin_floor is not None:
            median = fig.window_margin(50)
            if median < self.margin_floor:
                out["confidence"] = (f"the float model's median top-1 margin on the last {n} frames is {median:.3f}, "
                                     f"below {self.margin_floor:.3f}, the lowest quarter of its margins on the test photos")
        return out

    def check(self, fig: ShadowFigures, frame: int) -> list[dict]:
        """Events raised by the window as it stands after the pair of `frame`: drift starts and ends."""
        events = []
        for kind, why in self.reasons(fig).items():
            if why and not self.active[kind]:
                self.active[kind], self._clear_streak[kind] = True, 0
                self.episodes[kind] += 1
                events.append({"event": "drift", "kind": kind, "frame": frame, "window": len(fig.recent),
                               "window_agreed": fig.window_agreed,
                               "window_float_margin_p50": round(fig.window_margin(50), 4),
                               "export_agreement_floor": self.agreement_floor, "export_float_margin_p25": self.margin_floor,
                               "message": f"{why}: the camera may be seeing something the training photos did not "
                                          "(lighting, framing, a new object)"})
            elif self.active[kind]:
                self._clear_streak[kind] = 0 if why else self._clear_streak[kind] + 1
                if self._clear_streak[kind] >= self.window:
                    self.active[kind] = False
                    events.append({"event": "drift_cleared", "kind": kind, "frame": frame,
                                   "message": f"{kind} back in line with the export for {self.window} shadowed frames"})
        return events

    def summary(self) -> dict:
        return {"episodes": dict(self.episodes), "active": [k for k, v in self.active.items() if v],
                "export_agreement_floor": self.agreement_floor, "export_float_margin_p25": self.margin_floor,
                "window": self.window, "notes": self.notes}
