"""Quickstart: guard a call, watch its circuit trip, expire and close, and read the events.

Then report an outcome by hand, as for work a guard cannot wrap.

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


class PaymentService:
    """A stand-in for a remote service that can be switched off and on."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    def charge(self, amount: int) -> str:
        self.calls += 1
        if not self.up:
            raise ConnectionError("payment service unreachable")
        return f"charged {amount}"


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
    service = PaymentService()
    clock = ManualClock(start_ms=1_700_000_000_000)
    with brama_actors.Brama.start(clock=clock, max_attempts=MAX_ATTEMPTS,
                                  expiry=EXPIRY_MS) as brama:
        # An inbox subscription: no subscriber= or handler=, outside an actor.
        inbox = brama.subscribe(connection="payment_api")

        # The guard registers payment_api on the first call (type="http" for the events).
        @brama_actors.circuit_breaker("payment_api", brama=brama, type="http")
        def charge(amount: int) -> str:
            return service.charge(amount)

        # Each exception is recorded as a failure (applied before it reaches us), then
        # re-raised unchanged; the third one opens the circuit.
        for _ in range(MAX_ATTEMPTS):
            try:
                charge(10)
            except ConnectionError as exc:
                print("failed:", exc)
        status = brama.status("payment_api")
        print(f"after {status.failure_count} failures:", status.state,
              "available:", brama.available("payment_api"))
        # The example checks itself, so tests/test_examples.py catches a regression.
        assert status.state == CircuitState.OPEN

        # Open: the guard refuses the call without running it.
        try:
            charge(10)
        except brama_actors.CircuitOpenError as exc:
            print("refused:", exc)
        assert service.calls == MAX_ATTEMPTS

        # The deadline is opened_at + expiry; advance() returns after the timer fired.
        service.up = True
        clock.advance(EXPIRY_MS)
        print(f"after {EXPIRY_MS} ms:", brama.status("payment_api").state)
        assert brama.status("payment_api").state == "half_open"

        # In half_open the guard lets one trial call through; its success closes the
        # circuit before charge() returns.
        print(charge(10))
        status = brama.status("payment_api")
        print("after the trial call:", status.state, "failure_count:", status.failure_count,
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

        # Manual reporting, for work a guard cannot wrap: here the outcome arrives later,
        # in a callback. available() is a pure check that admits every caller in
        # half_open (no trial limit), so use a guard wherever one fits.
        def on_delivery_report(error: Exception | None) -> None:
            if error is None:
                brama.success("payment_api")
            else:
                brama.failure("payment_api", reason=repr(error))

        if brama.available("payment_api"):
            on_delivery_report(TimeoutError("no receipt within 5 s"))
        status = brama.status("payment_api")
        print("reported by a callback:", status.state, "failure_count:", status.failure_count)
        assert status.failure_count == 1


if __name__ == "__main__":
    main()
