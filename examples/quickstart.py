"""Quickstart: trip a circuit, let it expire, close it again, and read the events.

The system runs on a ``ManualClock``, so the 30 s expiry passes the moment we call
``clock.advance`` and the script finishes at once, with the same output every run.
Run it with ``python examples/quickstart.py``.
"""

from __future__ import annotations

import itertools

import brama_actors
from brama_actors import CircuitState, Event, Subscription
from brama_actors.testing import ManualClock

MAX_ATTEMPTS = 3
EXPIRY_MS = 30_000
#: The event data keys worth printing here (``data`` always holds state and failure_count).
SHOWN = ("failure_count", "reason", "previous_state", "new_state", "expiry")


def show_events(subscription: Subscription) -> list[Event]:
    """Take every event waiting in an inbox subscription, printing each one."""
    # After drain() every event is already in the inbox: read exactly that many.
    waiting = subscription.statistics().pending
    events: list[Event] = []
    for item in itertools.islice(subscription, waiting):
        # One event per item here; a batched subscription would yield tuples of events.
        events.extend(item if isinstance(item, tuple) else (item,))
    for event in events:
        details = " ".join(f"{key}={event.data[key]}" for key in SHOWN if key in event.data)
        print(f"  {event.event.value:<22} state={event.data['state']:<9} {details}")
    return events


def main() -> None:
    """Run the quickstart scenario and check each step as it goes."""
    clock = ManualClock(start_ms=1_700_000_000_000)
    with brama_actors.Brama.start(clock=clock, max_attempts=MAX_ATTEMPTS,
                                  expiry=EXPIRY_MS) as brama:
        # An inbox subscription: no subscriber= or handler=, outside an actor.
        inbox = brama.subscribe(connection="payment_api")

        brama.register("payment_api", type="http")
        print("registered:", brama.status("payment_api").state)

        # failure() returns once applied, so available() already reflects it.
        for attempt in range(1, MAX_ATTEMPTS + 1):
            brama.failure("payment_api", reason=f"timeout #{attempt}")
        status = brama.status("payment_api")
        print(f"after {status.failure_count} failures:", status.state,
              "available:", brama.available("payment_api"))
        # The example checks itself, so tests/test_examples.py catches a regression.
        assert status.state == CircuitState.OPEN
        assert not brama.available("payment_api")

        # The deadline is opened_at + expiry; advance() returns after the timer fired.
        clock.advance(EXPIRY_MS)
        status = brama.status("payment_api")
        print(f"after {EXPIRY_MS} ms:", status.state,
              "available:", brama.available("payment_api"))
        assert status.state == "half_open"
        assert brama.available("payment_api")

        # The first success in half_open closes the circuit and zeroes the count.
        brama.success("payment_api")
        status = brama.status("payment_api")  # same thread: reflects the success
        print("after a success:", status.state, "failure_count:", status.failure_count,
              f"success_rate: {status.success_rate:.2f}")
        assert status.state == CircuitState.CLOSED
        assert status.failure_count == 0

        # Delivery is asynchronous; drain() waits until the inbox holds every event.
        brama.drain()
        print("events:")
        events = show_events(inbox)
        assert [e.event for e in events][:2] == ["registration", "connection_registered"]
        assert events[-1].event == "state_change"
        assert events[-1].data["new_state"] == "closed"


if __name__ == "__main__":
    main()
