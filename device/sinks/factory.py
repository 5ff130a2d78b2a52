"""The event sinks built from the run flags, in one place: every flag checked first (no side effects), then each
sink opened (ports bound, pins claimed, connections started) — all before the camera opens.

This is the one module that imports every sink; the sinks import only the interface (`device/sinks/events.py:
EventSink`, `device/sinks/sink_queue.py: QueuedSink`), so adding a sink never makes an import cycle.
"""
from __future__ import annotations

import sys

from edgecls.device.model.classifier import UNCERTAIN
from edgecls.device.sinks.events import (MQTT_PASSWORD_ENV, WEBHOOK_SECRET_ENV, EventOptions, EventSink, EventsOutput,
                                   EventTracker, bundle_id, check_levels, check_orphans, read_secret, watched_labels)
from edgecls.errors import EdgeclsError


def plan_mqtt(opts: EventOptions, log):
    """Check the MQTT flags (no side effects); what opens the connection later."""
    from edgecls.device.sinks.mqtt_sink import MqttSink, parse_mqtt_url
    target = parse_mqtt_url(opts.mqtt, opts.mqtt_ca,
                            read_secret(MQTT_PASSWORD_ENV, "--mqtt-password-file", opts.mqtt_password_file))
    if opts.mqtt_qos not in (0, 1, 2):
        raise EdgeclsError(f"--mqtt-qos must be 0, 1 or 2 (got {opts.mqtt_qos})")
    if not 0 <= opts.mqtt_state_interval < 86400:  # (NaN fails this too)
        raise EdgeclsError("--mqtt-state-interval must be 0 (off) or more seconds")
    return lambda: MqttSink(target, qos=opts.mqtt_qos, retain=opts.mqtt_retain,
                            state_interval=opts.mqtt_state_interval, log=log)


def plan_webhook(opts: EventOptions, log):
    """Check the webhook flags (no side effects); what starts its thread later."""
    from edgecls.device.sinks.webhook import WebhookSink, check_url
    check_url(opts.webhook)
    if not 0 < opts.webhook_timeout <= 600:
        raise EdgeclsError("--webhook-timeout must be between 0 and 600 seconds")
    secret = read_secret(WEBHOOK_SECRET_ENV, "--webhook-secret-file", opts.webhook_secret_file)
    return lambda: WebhookSink(opts.webhook, secret=secret, timeout=opts.webhook_timeout, log=log)


def plan_gpio(opts: EventOptions, labels: list[str], watch: list[str]):
    """Check the GPIO flags (no side effects; may add "uncertain" to `watch`); what claims the pins later."""
    from edgecls.device.sinks.gpio import GpioSink, parse_pins
    pins = parse_pins(opts.gpio, labels)
    if UNCERTAIN in pins and UNCERTAIN not in watch:
        watch.append(UNCERTAIN)  # a pin for "uncertain" is asking to watch it
    unwatched = [lab for lab in pins if lab not in watch]
    if unwatched:  # its pin would never move
        raise EdgeclsError(f"--gpio: label {unwatched[0]!r} is not among --classes {opts.classes}")
    if opts.gpio_pulse is not None and not 0 < opts.gpio_pulse <= 3600:
        raise EdgeclsError("--gpio-pulse must be a positive number of seconds")
    return lambda: GpioSink(pins, pulse_s=opts.gpio_pulse)


def plan_prometheus(opts: EventOptions, labels: list[str], log):
    """Check --metrics (no side effects); what binds its port later."""
    from edgecls.device.sinks.prometheus import PrometheusSink
    if not 0 <= opts.metrics < 65536:
        raise EdgeclsError(f"bad --metrics port {opts.metrics}")
    return lambda: PrometheusSink(opts.host, opts.metrics, labels, log=log)


def plan_sinks(opts: EventOptions, labels: list[str], watch: list[str], log) -> list:
    """Every sink's flags checked, in a fixed order; one opener per sink asked for."""
    plans = []
    if opts.mqtt:
        plans.append(plan_mqtt(opts, log))
    if opts.webhook:
        plans.append(plan_webhook(opts, log))
    if opts.gpio:
        plans.append(plan_gpio(opts, labels, watch))
    if opts.metrics is not None:
        plans.append(plan_prometheus(opts, labels, log))
    return plans


def open_events(opts: EventOptions, net, json_lines: bool, log=None) -> EventsOutput | None:
    """Check every event flag and build the sinks (ports bound, pins claimed) — all before the camera opens,
    so bad input is one line and nothing was touched. None when no event flag was given."""
    check_orphans(opts)
    if not opts.active:
        return None
    log = log or (lambda m: print(m, file=sys.stderr))
    labels = net.labels
    check_levels(opts)
    watch = watched_labels(opts.classes, labels)
    plans = plan_sinks(opts, labels, watch, log)   # parse everything first (cheap, no side effects), then open
    sinks: list[EventSink] = []
    try:
        for make in plans:
            sinks.append(make())
    except BaseException:
        for s in sinks:
            s.close()
        raise
    tracker = EventTracker(labels, watch, *opts.levels, opts.min_dwell)
    return EventsOutput(tracker, sinks, bundle_id(net.bundle), sys.stdout if json_lines else None, log)
