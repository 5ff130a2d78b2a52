"""Events to an MQTT broker (paho-mqtt ≥ 2): how a fleet of devices reports to one Mosquitto / EMQX / Home Assistant.

    --mqtt mqtt://[user@]HOST[:PORT]/TOPIC     (mqtts:// for TLS, --mqtt-ca CA.pem to trust a private CA)

The password is never in the URL (the command line is readable by every local user): EDGECLS_MQTT_PASSWORD or
--mqtt-password-file PATH. TOPIC is a name to publish to: no '+', '#', empty level, NUL or leading '$'.

TOPIC          each event as JSON (QoS --mqtt-qos, retained with --mqtt-retain)
TOPIC/state    the classes that are in, at most once per --mqtt-state-interval seconds (0: not sent)
TOPIC/status   "online" (retained) once connected; "offline" on a clean exit, and as the last will when the
               device vanishes
paho's network thread reconnects with backoff (1 s doubling to 30 s). Events wait in a bounded queue while the
broker is away; state messages are dropped then (a stale state is worth nothing); both are counted.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass

from edgecls.device.sinks.sink_queue import QueuedSink, checked_port, masked_url, wait_until
from edgecls.errors import EdgeclsError

RECONNECT_DELAY_S = (1, 30)
KEEPALIVE_S = 30


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    topic: str
    tls: bool = False
    ca: str | None = None
    username: str | None = None
    password: str | None = None

    @property
    def where(self) -> str:  # for messages: never the password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}/{self.topic}"


def parse_mqtt_url(url: str, ca: str | None = None, password: str | None = None) -> MqttTarget:
    """The broker and topic of --mqtt; the password comes from elsewhere (EDGECLS_MQTT_PASSWORD or
    --mqtt-password-file: a password in the URL would be on the command line, readable by every local user)."""
    bad = f"bad --mqtt {masked_url(url)!r}: expected mqtt://[user@]HOST[:PORT]/TOPIC (or mqtts://)"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise EdgeclsError(f"bad --mqtt {masked_url(url)!r}: a space or control character in it "
                           "(percent-encode it, e.g. a space as %20)")
    u = urllib.parse.urlsplit(url)
    if u.password is not None:
        raise EdgeclsError("bad --mqtt URL: no password in it (the command line is readable by every local user): "
                           "keep the user name there and put the password in EDGECLS_MQTT_PASSWORD or a file "
                           "readable only by you, --mqtt-password-file PATH")
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise EdgeclsError(bad)
    port = checked_port(u, f"{bad} (the port is not a number from 1 to 65535)")
    if "#" in url:  # (urlsplit would take it for a fragment: mqtt://h/a/# would publish to "a/")
        raise EdgeclsError(f"bad --mqtt topic in {masked_url(url)!r}: '+' and '#' are for subscribing, "
                           "not publishing")
    if u.query:
        raise EdgeclsError(bad)
    topic = check_topic(u.path[1:])
    username = urllib.parse.unquote(u.username) if u.username else None
    if password is not None and username is None:
        raise EdgeclsError("an MQTT password (EDGECLS_MQTT_PASSWORD or --mqtt-password-file) needs a user name in "
                           "--mqtt: mqtt://USER@HOST/TOPIC")
    if ca is not None:
        if u.scheme != "mqtts":
            raise EdgeclsError("--mqtt-ca needs an mqtts:// URL")
        if not os.path.isfile(ca):
            raise EdgeclsError(f"--mqtt-ca {ca}: file not found")
    port = port or (8883 if u.scheme == "mqtts" else 1883)
    return MqttTarget(u.hostname, port, topic, u.scheme == "mqtts", ca, username, password)


def check_topic(path: str) -> str:
    """The topic events are published on (percent-decoded): a name to publish to, not a filter."""
    try:
        topic = urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise EdgeclsError(f"bad --mqtt topic {path!r}: not UTF-8 once percent-decoded") from None
    bad = f"bad --mqtt topic {topic!r}"
    if not topic:
        raise EdgeclsError("bad --mqtt URL: no topic (expected mqtt://HOST/TOPIC, e.g. mqtt://broker/edgecls/cam1)")
    if "+" in topic or "#" in topic:
        raise EdgeclsError(f"{bad}: '+' and '#' are for subscribing, not publishing")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in topic):
        raise EdgeclsError(f"{bad}: no NUL or control characters")
    if topic.startswith("/") or topic.endswith("/") or "//" in topic:
        raise EdgeclsError(f"{bad}: an empty level (a leading, trailing or double '/'); "
                           "TOPIC/status and TOPIC/state are published beside it")
    if topic.startswith("$"):
        raise EdgeclsError(f"{bad}: topics starting with '$' belong to the broker ($SYS)")
    if len(topic.encode()) > 65535:
        raise EdgeclsError(f"bad --mqtt topic: {len(topic.encode())} bytes, more than MQTT's 65535")
    return topic


class MqttSink(QueuedSink):
    def __init__(self, target: MqttTarget, qos: int = 0, retain: bool = False, state_interval: float = 0.0,
                 log=None, reconnect_delay: tuple[int, int] = RECONNECT_DELAY_S):
        import paho.mqtt.client as mqtt

        self.target, self.qos, self.retain, self.state_interval = target, qos, retain, state_interval
        self.log = log or (lambda m: None)
        self.status_topic, self.state_topic = f"{target.topic}/status", f"{target.topic}/state"
        self.connected = threading.Event()
        self.connects = 0
        self._last_state = float("-inf")
        self._refused = None
        self._listening: list[str] = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"edgecls-{socket.gethostname()}-{os.getpid()}")
        if target.username is not None:
            client.username_pw_set(target.username, target.password)
        if target.tls:
            try:
                client.tls_set(ca_certs=target.ca)
            except (OSError, ValueError) as e:
                raise EdgeclsError(f"--mqtt-ca {target.ca}: {e}") from None
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(*reconnect_delay)
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        self.client = client
        super().__init__("mqtt")
        # Asynchronous: an absent broker is retried by paho's thread, the run starts anyway.
        client.connect_async(target.host, target.port, keepalive=KEEPALIVE_S)
        client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            if reason_code != self._refused:  # once, not at every retry
                self.log(f"edgecls: warning: MQTT broker {self.target.where} refused the connection: {reason_code}")
            self._refused = reason_code
            return
        self._refused = None
        self.connects += 1
        if self.connects > 1:
            self.log(f"edgecls: MQTT reconnected to {self.target.where}")
        client.publish(self.status_topic, "online", qos=1, retain=True)
        for topic in self._listening:   # subscriptions do not survive a reconnect with a clean session
            client.subscribe(topic, qos=1)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected.is_set() and not self.give_up.is_set():
            self.log(f"edgecls: warning: MQTT connection to {self.target.where} lost ({reason_code}); retrying")
        self.connected.clear()

    def listen(self, topic: str, on_message) -> None:
        """Also subscribe to `topic` (again after every reconnect); `on_message(payload)` runs on paho's thread
        (`run --updates`: the publisher's notify topic wakes the poll)."""
        self._listening.append(topic)
        self.client.message_callback_add(topic, lambda _c, _u, msg: on_message(msg.payload))
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)

    def announce(self, subtopic: str, record: dict) -> None:
        """A retained JSON message on TOPIC/subtopic (the fleet's update status), outside the event queue."""
        self.client.publish(f"{self.target.topic}/{subtopic}", json.dumps(record, allow_nan=False), qos=1,
                            retain=True)

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    def frame(self, frame, result, stats, state):
        if self.state_interval <= 0:
            return
        now = time.monotonic()
        if now - self._last_state < self.state_interval:
            return
        self._last_state = now
        self.put(("state", json.dumps({"in": state, "label": result.label, "confidence": round(result.confidence, 5),
                                       "frame": frame.index, "fps": round(stats.fps_now, 2)})))

    def send(self, event):
        self.put(("event", json.dumps(event, allow_nan=False)))

    def deliver(self, item) -> bool:
        kind, payload = item
        if kind == "state":
            if not self.connected.is_set():
                return False
            return self.client.publish(self.state_topic, payload, qos=0, retain=self.retain).rc == 0
        if not wait_until(self.connected, self.give_up):  # events wait for the broker (the queue is bounded)
            return False
        return self.client.publish(self.target.topic, payload, qos=self.qos, retain=self.retain).rc == 0

    def shutdown(self) -> None:
        self.give_up.set()  # (already set by close(): our own disconnect is not worth a warning)
        try:
            if self.connected.is_set():
                info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
                info.wait_for_publish(timeout=1.0)
            self.client.disconnect()
        except (RuntimeError, ValueError, OSError):
            pass
        self.client.loop_stop()

    def summary(self) -> dict:
        return {**super().summary(), "reconnects": self.reconnects}
