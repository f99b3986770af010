"""How an application tests its fallback and its recovery with brama_actors.

Run with ``pytest examples/testing_fallbacks_test.py``. The ``brama`` fixture comes from
brama_actors' pytest plugin: a fresh system on a ManualClock per test, so the tests
below never sleep, even though the circuit stays open for a whole minute.
"""

from __future__ import annotations

import pytest

from brama_actors import Brama, CircuitOpenError
from brama_actors.testing import set_state, simulate_recovery


class PriceService:
    """The application code under test: live prices, or a cached fallback."""

    def __init__(self, brama: Brama, fetch: object) -> None:
        self.brama = brama
        self.fetch = fetch
        self.cache = {"EURUSD": 1.08}
        self.live_calls = 0

    def price(self, pair: str) -> tuple[float, str]:
        try:
            with self.brama.guard("prices", max_attempts=3, expiry=60_000):
                self.live_calls += 1
                value = self.fetch(pair)  # type: ignore[operator]
                self.cache[pair] = value
                return value, "live"
        except CircuitOpenError:
            return self.cache[pair], "cached"


def failing_fetch(pair: str) -> float:
    raise ConnectionError("prices API unreachable")


def test_fallback_when_circuit_is_open(brama: Brama) -> None:
    """With the circuit forced open, the service answers from cache and never calls out."""
    service = PriceService(brama, failing_fetch)
    brama.register("prices")
    set_state("prices", "open", brama=brama)
    assert service.price("EURUSD") == (1.08, "cached")
    assert service.live_calls == 0


def test_circuit_trips_after_failures(brama: Brama) -> None:
    """Three real failures open the circuit; the fourth call is served from cache."""
    service = PriceService(brama, failing_fetch)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            service.price("EURUSD")
    assert service.price("EURUSD") == (1.08, "cached")
    assert service.live_calls == 3


def test_recovery_by_advancing_the_clock(brama: Brama) -> None:
    """After the expiry passes (moved by the test, not slept), one trial call closes it."""
    service = PriceService(brama, failing_fetch)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            service.price("EURUSD")
    service.fetch = lambda pair: 1.10
    brama.clock.advance(59_999)  # type: ignore[attr-defined]
    assert service.price("EURUSD") == (1.08, "cached")
    brama.clock.advance(1)  # type: ignore[attr-defined]
    assert service.price("EURUSD") == (1.10, "live")
    assert brama.status("prices").state == "closed"


def test_recovery_helper(brama: Brama) -> None:
    """simulate_recovery closes an open circuit through half_open in one call."""
    brama.register("prices")
    set_state("prices", "open", brama=brama)
    simulate_recovery("prices", brama=brama)
    service = PriceService(brama, lambda pair: 1.2)
    assert service.price("EURUSD") == (1.2, "live")
