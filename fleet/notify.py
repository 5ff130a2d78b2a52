"""`edgecls publish --notify mqtt://BROKER/TOPIC`: tell the devices that run with `--updates` and `--mqtt` on that
broker to poll now instead of at their next interval. The message carries nothing a device trusts: it only
wakes the poll, which then checks everything through TUF as always."""
from __future__ import annotations

import json

from edgecls.errors import EdgeclsError

DEFAULT_TOPIC = "edgecls/updates"
TIMEOUT_S = 10.0


def notify(url: str, version: int, ca: str | None = None) -> None:
    """Publish {"version": N} on the URL's topic (QoS 1) and wait until the broker has it."""
    import paho.mqtt.client as mqtt

    from edgecls.device.sinks.events import read_secret
    from edgecls.device.sinks.mqtt_sink import parse_mqtt_url

    target = parse_mqtt_url(url, ca, read_secret("EDGECLS_MQTT_PASSWORD", "--mqtt-password-file", None))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgecls-publish-{version}")
    if target.username is not None:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set(ca_certs=target.ca)
    try:
        client.connect(target.host, target.port, keepalive=30)
        client.loop_start()
        info = client.publish(target.topic, json.dumps({"version": version}), qos=1)
        info.wait_for_publish(TIMEOUT_S)
        if not info.is_published():
            raise EdgeclsError(f"--notify: the broker {target.where} did not take the message in {TIMEOUT_S:g} s "
                               "(the release is published; devices find it at their next poll)")
    except OSError as e:
        raise EdgeclsError(f"--notify: cannot reach {target.where}: {e.strerror or e} (the release is published; "
                           "devices find it at their next poll)") from None
    finally:
        client.loop_stop()
        client.disconnect()
