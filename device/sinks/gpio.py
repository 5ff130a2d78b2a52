"""Events to GPIO pins (gpiozero): `--gpio LABEL=PIN[,LABEL=PIN…]` drives a pin HIGH while its class is in, or,
with `--gpio-pulse SECONDS`, pulses it once per enter (a feeder, a counter, a door strike).

Pins are gpiozero names: a number is the BCM GPIO number (17 = GPIO17 = physical pin 11), or "GPIO17",
"BOARD11". The pins are claimed before the camera opens (a pin in use is an error then, not mid-run), set LOW
and released at exit. Tests use gpiozero's MockFactory, as its documentation recommends.
"""
from __future__ import annotations

from edgecls.device.model.classifier import UNCERTAIN
from edgecls.device.sinks.sink_queue import QueuedSink
from edgecls.errors import EdgeclsError


def parse_pins(text: str, labels: list[str]) -> dict[str, str | int]:
    pins: dict[str, str | int] = {}
    for part in (p.strip() for p in text.split(",")):
        label, sep, pin = part.partition("=")
        label, pin = label.strip(), pin.strip()
        if not sep or not label or not pin:
            raise EdgeclsError(f"bad --gpio {text!r}: expected LABEL=PIN[,LABEL=PIN…], e.g. 3=17,7=27")
        if label not in labels and label != UNCERTAIN:
            raise EdgeclsError(f"--gpio: unknown label {label!r} (the bundle has: {', '.join(labels)})")
        if label in pins:
            raise EdgeclsError(f"--gpio: label {label!r} is given twice")
        pins[label] = int(pin) if pin.isdigit() else pin
    if len(set(map(str, pins.values()))) < len(pins):
        raise EdgeclsError(f"--gpio {text!r}: one pin for two labels")
    return pins


class GpioSink(QueuedSink):
    def __init__(self, pins: dict[str, str | int], pulse_s: float | None = None):
        from gpiozero import DigitalOutputDevice
        from gpiozero.exc import GPIOZeroError

        self.pulse_s, self.devices = pulse_s, {}
        try:
            for label, pin in pins.items():
                self.devices[label] = DigitalOutputDevice(pin, initial_value=False)
        except (GPIOZeroError, ValueError, OSError, RuntimeError) as e:
            self._release()
            raise EdgeclsError(f"--gpio: cannot use pin {pin} for {label!r}: {e or type(e).__name__}") from None
        self.pulses = 0
        super().__init__("gpio")

    def send(self, event):
        if event.get("label") in self.devices:   # (drift events have no label)
            self.put((event["event"], event["label"]))

    def deliver(self, item) -> bool:
        kind, label = item
        dev = self.devices[label]
        if self.pulse_s is not None:
            if kind == "enter":  # gpiozero times the pulse on its own thread
                dev.blink(on_time=self.pulse_s, off_time=0.0, n=1, background=True)
                self.pulses += 1
        elif kind == "enter":
            dev.on()
        else:
            dev.off()
        return True

    def _release(self) -> None:
        for dev in self.devices.values():
            try:
                dev.off()
                dev.close()
            except Exception:  # releasing every pin matters more than why one would not
                pass

    def shutdown(self) -> None:
        self._release()  # LOW and released: a relay must not stay on after the program ends

    def summary(self) -> dict:
        return {**super().summary(), "pins": {lab: str(d.pin) if not d.closed else None
                                              for lab, d in self.devices.items()}}
