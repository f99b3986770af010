"""Embedding brama_actors in an application's own actor tree.

Run: ``python examples/embedded_supervision.py``. An application supervisor (a plain
Pykka actor) starts a Brama system with itself as ``parent`` and a ConnectionMonitor
child. We then inject repeated crashes through the test seam: past ``max_restarts``
within ``restart_window`` the Brama supervisor gives up, stops its system and tells the
parent ``("brama_down", brama, reason)``. The application supervisor then starts a fresh
system, re-registers its connections and restarts its monitor.
"""

from __future__ import annotations

import threading
from typing import Any

import pykka

from brama_actors import Brama, ConnectionMonitor, Event, SystemStopped
from brama_actors.testing import inject_crash

CONNECTIONS = {"payment_api": {"max_attempts": 3}, "inventory_db": {"max_attempts": 5}}
#: Set once a monitor has printed an opening: main() waits for it, so the monitor's line
#: (printed on the monitor's thread) always comes before what main() does next.
OPENED = threading.Event()


class Monitor(ConnectionMonitor):
    subscribe = dict(events=["state_change"])

    def handle_event(self, event: Event) -> None:
        print(f"  monitor: {event.connection} {event.data['previous_state']} -> "
              f"{event.data['new_state']}")
        if event.data["new_state"] == "open":
            OPENED.set()


class AppSupervisor(pykka.ThreadingActor):
    """The application's supervisor: owns a Brama system and a monitor, restarts both."""

    use_daemon_thread = True

    def __init__(self, restarted: threading.Event) -> None:
        super().__init__()
        self.restarted = restarted
        self.brama: Brama | None = None
        self.monitor: pykka.ActorRef[Any] | None = None
        self.generation = 0

    def on_start(self) -> None:
        self._start_brama()

    def _start_brama(self) -> None:
        self.generation += 1
        self.brama = Brama.start(parent=self.actor_ref, max_restarts=2, restart_window=60_000)
        for name, options in CONNECTIONS.items():
            self.brama.register(name, **options)
        self.monitor = Monitor.start(brama=self.brama)
        print(f"app: brama generation {self.generation} started")

    def on_receive(self, message: Any) -> Any:
        if message == "current":
            return self.brama
        if isinstance(message, tuple) and message[0] == "brama_down":
            _, _brama, reason = message
            print(f"app: brama down ({reason}); starting a fresh system")
            if self.monitor is not None:
                self.monitor.stop()
            self._start_brama()
            self.restarted.set()
        elif isinstance(message, tuple) and message[0] == "brama_stopped":
            print("app: brama stopped normally")
        return None

    def on_stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        if self.brama is not None:
            self.brama.stop()


def main() -> int:
    restarted = threading.Event()
    app = AppSupervisor.start(restarted)
    first: Brama = app.ask("current", timeout=5)
    first.failure("payment_api", reason="timeout")
    # Three crashes in a row: the third one exceeds max_restarts=2.
    stopped_at = None
    for crash in range(3):
        try:
            inject_crash("payment_api", brama=first)
            first.failure("payment_api", reason=f"crash #{crash + 1}")
        except SystemStopped:
            stopped_at = crash + 1
            break
        if not first.available("payment_api") and not OPENED.wait(5):
            print("the monitor never saw payment_api open")
            return 1
    if not restarted.wait(10):
        print("the application supervisor was never told")
        return 1
    # Printed only now: the application supervisor prints from its own thread as soon as
    # it is told brama_down, so a line printed at the SystemStopped could come before or
    # after its lines.
    print(f"app: the first system had stopped itself at crash #{stopped_at}")
    second: Brama = app.ask("current", timeout=5)
    print(f"app: new system has {[s.identifier for s in second.connections()]}")
    for _ in range(3):
        second.failure("payment_api")  # the new system and monitor work
    second.drain()
    ok = (stopped_at == 3 and first.stopped and not second.stopped
          and not second.available("payment_api"))
    app.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
