"""Alert when a circuit opens: the seed spec's ``MyApp.ConnectionMonitor``, in Pykka.

Run: ``python examples/connection_monitor.py``. A monitor actor subscribes to
``state_change`` events and raises an alert for every circuit that opens.
"""

from __future__ import annotations

import threading

from brama_actors import Brama, ConnectionMonitor, Event
from brama_actors.testing import ManualClock


class AlertingMonitor(ConnectionMonitor):
    """Sends an alert (here: prints and records it) when a circuit opens."""

    subscribe = dict(events=["state_change"])

    def __init__(self, alerts: list[str], opened: threading.Event, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.alerts = alerts
        self.opened = opened

    def handle_event(self, event: Event) -> None:
        if event.data["new_state"] == "open":
            alert = f"ALERT: circuit opened for {event.connection} ({event.data['reason']})"
            print(alert)
            self.alerts.append(alert)
            self.opened.set()
        else:
            print(f"info: {event.connection} is now {event.data['new_state']}")


def main() -> int:
    clock = ManualClock()
    alerts: list[str] = []
    opened = threading.Event()
    with Brama.start(clock=clock, max_attempts=3, expiry=30_000) as brama:
        monitor = AlertingMonitor.start(alerts, opened, brama=brama)
        brama.register("payment_api")
        for attempt in range(3):
            brama.failure("payment_api", reason=f"timeout #{attempt + 1}")
        if not opened.wait(5):
            print("no alert arrived")
            return 1
        clock.advance(30_000)  # the circuit tries again: half_open
        brama.success("payment_api")  # and recovers
        brama.drain()
        monitor.stop()
    print(f"{len(alerts)} alert(s) sent")
    return 0 if alerts else 1


if __name__ == "__main__":
    raise SystemExit(main())
