"""A handler object that writes circuit events to ``logging``.

Run: ``python examples/alerting_handler.py``. Handlers run in their own thread, never in
the event manager: a slow or failing handler delays nobody else.
"""

from __future__ import annotations

import logging

from brama_actors import Brama, Event

log = logging.getLogger("myapp.circuits")


class LoggingHandler:
    """Logs openings at WARNING and recoveries at INFO."""

    def __init__(self) -> None:
        self.handled = 0

    def handle_event(self, event: Event) -> None:
        self.handled += 1
        if event.event == "circuit_opened":
            log.warning("%s opened: %s (for %d ms)", event.connection, event.data["reason"],
                        event.data["expiry"])
        elif event.event == "circuit_closed":
            log.info("%s closed again", event.connection)
        else:
            log.info("%s: %s", event.connection, event.event.value)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler = LoggingHandler()
    with Brama.start(max_attempts=2, expiry=50) as brama:
        sub = brama.subscribe(
            handler=handler,
            events=["circuit_opened", "circuit_half_opened", "circuit_closed"],
        )
        half_open = brama.subscribe(events=["circuit_half_opened"])
        brama.register("search_api")
        brama.failure("search_api", reason="HTTP 503")
        brama.failure("search_api", reason="HTTP 503")
        # The circuit half-opens by itself 50 ms later; wait for that event.
        half_open.get(timeout=5)
        brama.success("search_api")
        brama.drain()
        print(sub.statistics())
    return 0 if handler.handled == 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
