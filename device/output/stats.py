"""Live statistics: frames per second and capture-to-result latency percentiles, in constant memory."""
from __future__ import annotations

import time

import numpy as np

WINDOW = 4096  # latencies kept for the percentiles: the most recent frames, fixed memory for a 24/7 run
CPU_EVERY = 16  # frames between two readings of the process' CPU time


class LiveStats:
    def __init__(self, fps_window_s: float = 1.0):
        self.frames = 0
        self.t_start: float | None = None
        self.t_last: float | None = None
        self._lat = np.zeros(WINDOW, dtype=np.float64)
        self._inf = np.zeros(WINDOW, dtype=np.float64)
        self._fps_window = fps_window_s
        self._win_start, self._win_frames, self.fps_now = 0.0, 0, 0.0

    def update(self, t_capture: float, t_done: float, infer_ms: float) -> None:
        # CPU time of the whole process (all threads): what a frame costs even when other programs share the CPU.
        # Read every CPU_EVERY frames only: with the runtime's threads busy one read costs 0.1-0.2 ms (issue 29).
        if self.t_start is None:
            self.t_start = self._win_start = t_capture
            self.cpu_first = self.cpu_last = time.process_time()
            self._cpu_frames = 1
        elif (self.frames + 1) % CPU_EVERY == 0:
            self.cpu_last, self._cpu_frames = time.process_time(), self.frames + 1
        i = self.frames % WINDOW
        self._lat[i], self._inf[i] = (t_done - t_capture) * 1000.0, infer_ms
        self.frames += 1
        self.t_last = t_done
        self._win_frames += 1
        if t_done - self._win_start >= self._fps_window:
            self.fps_now = self._win_frames / (t_done - self._win_start)
            self._win_start, self._win_frames = t_done, 0
        elif self.fps_now == 0.0 and t_done > self._win_start:
            self.fps_now = self._win_frames / (t_done - self._win_start)

    @property
    def fps(self) -> float:
        """Mean rate over the whole run, first capture to last result."""
        if self.frames < 2 or self.t_last is None or self.t_last <= self.t_start:
            return 0.0
        return self.frames / (self.t_last - self.t_start)

    def _pct(self, arr: np.ndarray, q: float) -> float:
        n = min(self.frames, WINDOW)
        return float(np.percentile(arr[:n], q)) if n else 0.0

    @property
    def cpu_ms_per_frame(self) -> float:
        """Over the frames up to the last CPU reading (all but at most CPU_EVERY - 1 of the last ones)."""
        if self.frames < 2:
            return 0.0
        if self._cpu_frames < 2:   # fewer than CPU_EVERY frames: read it now
            self.cpu_last, self._cpu_frames = time.process_time(), self.frames
        return (self.cpu_last - self.cpu_first) * 1000.0 / (self._cpu_frames - 1)

    def summary(self) -> dict:
        return {"frames": self.frames, "fps": round(self.fps, 2), "cpu_ms_per_frame": round(self.cpu_ms_per_frame, 3),
                "latency_ms_p50": round(self._pct(self._lat, 50), 2),
                "latency_ms_p95": round(self._pct(self._lat, 95), 2),
                "infer_ms_p50": round(self._pct(self._inf, 50), 2),
                "infer_ms_p95": round(self._pct(self._inf, 95), 2),
                "percentiles_over_last": min(self.frames, WINDOW)}


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0

