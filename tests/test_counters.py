"""The counters of API.md section 14 on ``ConnectionStatus``: ``total_rejections``,
``total_ignored`` and ``transitions``, locally and through a client."""

from __future__ import annotations

import asyncio

import pytest

import brama_actors
from brama_actors import Brama, CircuitOpenError
from brama_actors.testing import ManualClock


def test_refusals_are_counted_also_when_a_fallback_answers(system: Brama) -> None:
    system.register("api", max_attempts=1)
    system.failure("api")

    @brama_actors.circuit_breaker("api", brama=system)
    def plain() -> None:
        pass

    @brama_actors.circuit_breaker("api", brama=system, fallback=lambda: "cached")
    def with_fallback() -> str:
        return "live"

    with pytest.raises(CircuitOpenError):
        plain()
    assert with_fallback() == "cached"
    with pytest.raises(CircuitOpenError), system.guard("api"):
        pass
    status = system.status("api")
    assert (status.total_rejections, status.total_failures, status.total_ignored) == (3, 1, 0)


def test_a_full_half_open_circuit_counts_its_refusals(system: Brama,
                                                      clock: ManualClock) -> None:
    system.register("api", max_attempts=1, expiry=100)
    system.failure("api")
    clock.advance(100)
    # The first block holds the only trial permit; the second is refused.
    with system.guard("api"), pytest.raises(CircuitOpenError), system.guard("api"):
        pass
    status = system.status("api")
    assert (status.state, status.total_rejections) == ("closed", 1)


def test_ignored_outcomes_are_counted_and_nothing_else(system: Brama) -> None:
    """"ignore" verdicts, excluded exceptions and exceptions `record` does not match
    count; a BaseException passing through and an outside cancellation do not."""
    ignore = brama_actors.circuit_breaker("api", brama=system,
                                          error_handler=lambda result: "ignore")(lambda: 1)
    ignore()
    with pytest.raises(KeyError), system.guard("api", exclude=KeyError):
        raise KeyError("x")
    with pytest.raises(ValueError), system.guard("api", record=OSError):
        raise ValueError("not recorded")
    with pytest.raises(KeyboardInterrupt), system.guard("api"):
        raise KeyboardInterrupt

    async def cancelled() -> None:
        async with system.guard("api"):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled())
    status = system.status("api")
    assert (status.total_ignored, status.total_successes, status.total_failures) == (3, 0, 0)


def test_transitions_are_counted_by_pair_in_order_of_first_occurrence(
        system: Brama, clock: ManualClock) -> None:
    system.register("api", max_attempts=1, expiry=100)
    system.failure("api")
    clock.advance(100)
    system.failure("api")  # half_open -> open
    clock.advance(100)
    system.success("api")
    system.open_circuit("api")
    system.open_circuit("api")  # already open: no transition
    system.reset_circuit("api")
    assert system.status("api").transitions == (
        ("closed", "open", 2), ("open", "half_open", 2), ("half_open", "open", 1),
        ("half_open", "closed", 1), ("open", "closed", 1))


def test_counters_through_a_client(node: tuple[Brama, brama_actors.Server],
                                   client: brama_actors.Client) -> None:
    """A client's refusals (by its replica) and ignored outcomes reach the node's
    counters; durations cross the wire for the slow-call rule."""
    system, _ = node
    client.register("api", max_attempts=1)
    with pytest.raises(KeyError), client.guard("api", exclude=KeyError):
        raise KeyError("x")
    client.failure("api")
    with pytest.raises(CircuitOpenError), client.guard("api"):
        pass
    status = client.status("api")  # after the one-way tallies on the same link
    assert (status.total_ignored, status.total_rejections) == (1, 1)
    assert system.status("api").total_rejections == 1
    client.register("db", max_attempts=0, slow_call_rate_threshold=1,
                    slow_call_duration=100, minimum_calls=1, window_size=3)
    client.success("db", duration=150)
    client.drain()
    status = client.status("db")
    assert (status.state, status.window_calls) == ("open", 0)
    with pytest.raises(TypeError, match="duration"):
        client.failure("db", duration="slow")
