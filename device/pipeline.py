"""The live loop, jetson-inference style: source → net → output, until the source ends or we are told to stop.

    source = open_source(uri); net = Classifier(bundle); output = open_output(...)
    for frame in source:
        result = net.classify(frame)
        output.render(frame, result, stats)

SIGINT/SIGTERM end the loop after the current frame; the camera and outputs are always released.
With `--shadow N` a `ShadowCheck` (device/model/shadow.py) takes each result beside the outputs: every Nth frame's
tensor goes to the float model on its worker thread, and what it reports travels to the outputs with the frame.
"""
from __future__ import annotations

import contextlib
import signal
import threading

from edgecls.device.model.classifier import Classifier
from edgecls.device.output.outputs import Outputs
from edgecls.device.model.shadow import ShadowCheck
from edgecls.device.capture.sources import Source
from edgecls.device.output.stats import LiveStats, rss_mb

SWITCH = "switch to a taught version"


@contextlib.contextmanager
def stop_on_signals(source: Source):
    """SIGINT/SIGTERM → source.stop(): the loop finishes its frame and exits through the normal cleanup."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    got: list[int] = []

    def handler(signum, _frame):
        got.append(signum)
        source.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_pipeline(source: Source, net: Classifier, output: Outputs, max_frames: int | None = None,
                 shadow: ShadowCheck | None = None, updates=None) -> dict:
    """Run until the source is exhausted, max_frames are done, a signal arrives or an output asks to stop.
    `updates` (edgecls/fleet/live.py: LiveUpdates) may hand over a promoted model between two frames.
    Returns the run summary (also what `--json` prints last)."""
    stats = LiveStats()
    rss_start = rss_mb()
    stopped_by = "end of source"
    try:
        with stop_on_signals(source) as signals:
            for frame in source:
                if updates is not None:
                    net, shadow = updates.swap(net, shadow, output)
                result = net.classify(frame)
                if updates is not None:
                    updates.offer(frame, result)
                stats.update(frame.t_capture, result.t_done, result.infer_ms)
                output.render(frame, result, stats, shadow.step(frame, result) if shadow else None)
                if max_frames and stats.frames >= max_frames:
                    stopped_by = "max frames"
                    break
                if output.wants_stop:
                    stopped_by = "window closed"
                    break
                if output.switch_to is not None:   # run starts again on it (device/live.py)
                    stopped_by = SWITCH
                    break
                if updates is not None and updates.wants_restart:
                    stopped_by = "restart for an update"
                    break
            if signals:
                stopped_by = signal.Signals(signals[0]).name
    finally:
        source.close()
        if updates is not None:
            updates.close()
        try:
            if shadow is not None:   # the frame the worker still holds: its pair and events count too
                output.finish_shadow(shadow.close())
        finally:
            output.close()
    summary = {"source": source.name, "artifact": net.artifact_key, "stopped_by": stopped_by, **stats.summary()}
    if stopped_by == SWITCH:
        summary["switch_to"] = str(output.switch_to)
    if shadow is not None:
        summary["shadow"] = shadow.summary()
    if updates is not None:
        summary["updates"] = updates.status()
    if source.live:
        summary["captured"] = source.captured
        summary["dropped"] = max(0, source.captured - stats.frames)  # older frames replaced by newer ones
        summary["reconnects"] = source.reconnects
        if getattr(source, "frame_size", None):
            summary["frame_size"] = list(source.frame_size)   # what the camera delivered (device/capture/cameras.py)
    if getattr(source, "skipped", None):
        summary["skipped_files"] = source.skipped
    summary.update(output.summary())
    summary["rss_mb_start"], summary["rss_mb_end"] = round(rss_start, 1), round(rss_mb(), 1)
    return summary
