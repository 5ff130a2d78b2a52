"""Prometheus metrics of the live loop: `--metrics PORT` serves http://HOST:PORT/metrics (HOST: --host, 127.0.0.1
unless told otherwise) on the project's bounded HTTP server (edgecls/httpserve.py), under its access rule
(edgecls/httpauth.py: a loopback Host header, or on any other bind the token: `Authorization: Bearer`).

Counters are updated in memory on the camera loop (a few increments per frame, no I/O); the figures of the
other outputs (messages sent/dropped, reconnects) and of the source are read when Prometheus scrapes.
"""
from __future__ import annotations

import threading

from edgecls.device.sinks.events import EventSink
from edgecls.errors import EdgeclsError
from edgecls.httpserve import BoundedHTTPServer, GuardedHandler

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class PrometheusSink(EventSink):
    name = "metrics"

    def __init__(self, host: str, port: int, labels: list[str], log=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        self.registry = reg = CollectorRegistry()
        self.frames = Counter("edgecls_frames", "Frames classified", registry=reg)
        self.fps = Gauge("edgecls_fps", "Frames per second over the last second", registry=reg)
        self.infer = Histogram("edgecls_inference_seconds", "Preprocess + invoke + postprocess time per frame",
                               buckets=LATENCY_BUCKETS_S, registry=reg)
        self.latency = Histogram("edgecls_latency_seconds", "Capture to result time per frame",
                                 buckets=LATENCY_BUCKETS_S, registry=reg)
        self.events = Counter("edgecls_events", "Events by label and kind", ["label", "event"], registry=reg)
        # `run --shadow N`: the live int8-vs-float figures (device/model/drift.py: ShadowFigures), once pairs exist.
        self.shadow_pairs = Gauge("edgecls_shadow_pairs", "Frames compared with the float model", registry=reg)
        self.shadow_agreement = Gauge("edgecls_shadow_agreement", "Live int8-vs-float top-1 agreement (0..1)",
                                      registry=reg)
        self.shadow_margin = Gauge("edgecls_shadow_float_margin_p50", "Median float top-1 margin, live",
                                   registry=reg)
        # `run --updates`: which bundle version runs, and what the polls found (fleet/live.py).
        self.bundle_info = Gauge("edgecls_bundle_info", "The running bundle (1 for the current version)",
                                 ["version", "bundle_id"], registry=reg)
        self.updates = Counter("edgecls_updates", "Update polls by outcome", ["outcome"], registry=reg)
        reg.register(_LiveFigures(self))
        self.source, self.peers, self.n_frames = None, [], 0
        body = lambda: generate_latest(reg)  # noqa: E731

        class Handler(GuardedHandler):
            def do_GET(self):
                if self.path.split("?")[0] != "/metrics":
                    data, code, ctype = b"see /metrics\n", 404, "text/plain"
                else:
                    data, code, ctype = body(), 200, CONTENT_TYPE_LATEST
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        try:
            self.httpd = BoundedHTTPServer((host, port), Handler, what="metrics", path="/metrics")
        except OSError as e:
            raise EdgeclsError(f"cannot serve --metrics on {host}:{port}: {e.strerror or e}") from None
        self.host, self.port = self.httpd.server_address[:2]
        threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True).start()
        (log or (lambda m: None))(f"edgecls: metrics on http://{self.host}:{self.port}/metrics")

    def attach_source(self, source) -> None:
        self.source = source

    def shadow(self, figures: dict) -> None:
        self.shadow_pairs.set(figures["pairs"])
        if figures.get("rate") is not None:
            self.shadow_agreement.set(figures["rate"])
        if (figures.get("float_margin") or {}).get("p50") is not None:
            self.shadow_margin.set(figures["float_margin"]["p50"])

    def update_status(self, outcome: str | None, current: dict | None) -> None:
        """A poll's outcome (installed, promoted, up-to-date, refused) and the bundle that runs now."""
        if outcome:
            self.updates.labels(outcome=outcome).inc()
        if current:
            self.bundle_info.clear()
            self.bundle_info.labels(version=str(current["version"]), bundle_id=current["bundle_id"]).set(1)

    def send(self, event):
        self.events.labels(event.get("label", ""), event["event"]).inc()   # drift events: label ""

    def frame(self, frame, result, stats, state):
        self.frames.inc()
        self.n_frames += 1
        self.fps.set(stats.fps_now)
        self.infer.observe(result.infer_ms / 1000.0)
        self.latency.observe(max(0.0, result.t_done - frame.t_capture))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def summary(self) -> dict:
        return {"port": self.port}


class _LiveFigures:
    """Figures owned by others (the source, the other outputs), read at scrape time."""

    def __init__(self, sink: PrometheusSink):
        self.sink = sink

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        src = self.sink.source
        dropped = CounterMetricFamily("edgecls_dropped_frames", "Live-source frames replaced by newer ones "
                                      "before the model saw them")
        reconnects = CounterMetricFamily("edgecls_reconnects", "Reconnections, by what reconnected", labels=["what"])
        captured = getattr(src, "captured", None) if src is not None and src.live else None
        dropped.add_metric([], max(0, captured - self.sink.n_frames) if captured else 0)
        reconnects.add_metric(["source"], getattr(src, "reconnects", 0) if src is not None else 0)
        sent = CounterMetricFamily("edgecls_output_messages_sent", "Messages delivered, by output", labels=["output"])
        lost = CounterMetricFamily("edgecls_output_messages_dropped", "Messages dropped (queue full, "
                                   "broker or server away past the retries), by output", labels=["output"])
        for peer in self.sink.peers:
            s = peer.summary()
            sent.add_metric([peer.name], s.get("sent", 0))
            lost.add_metric([peer.name], s.get("dropped", 0))
            if "reconnects" in s:
                reconnects.add_metric([peer.name], s["reconnects"])
        yield from (dropped, reconnects, sent, lost)
