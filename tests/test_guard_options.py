"""Guard options (docs/guarding.md): exclude/record with predicates, fallback, timeout,
and ``CircuitOpenError.retry_after``."""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import brama_actors
from brama_actors import Brama, CircuitOpenError, ConnectionNotFound, circuit_breaker
from brama_actors.testing import ManualClock
from tests.conftest import collect


class ServiceError(Exception):
    pass


class NotFound(Exception):
    pass


def _half_open(system: Brama, clock: ManualClock) -> None:
    system.register("api", max_attempts=1, expiry=100, half_open_max_calls=1)
    system.failure("api")
    clock.advance(100)
    assert system.status("api").state == "half_open"


def _failures(system: Brama, identifier: str = "api") -> int:
    return system.status(identifier).total_failures


# -- exclude and record ------------------------------------------------------------------


def test_exclude_predicate_matching_records_nothing(system: Brama) -> None:
    """A predicate in exclude: a matching exception propagates and is not a failure."""
    system.register("api", max_attempts=5)

    @circuit_breaker("api", brama=system,
                     exclude=(NotFound, lambda exc: "4" in str(exc)))
    def call(error: Exception) -> None:
        raise error

    for error in (NotFound("gone"), ServiceError("404 from the service")):
        with pytest.raises(type(error)):
            call(error)
    assert _failures(system) == 0
    with pytest.raises(ServiceError):
        call(ServiceError("500"))
    assert _failures(system) == 1


def test_a_raising_predicate_is_no_match_and_is_logged(
        system: Brama, caplog: pytest.LogCaptureFixture) -> None:
    """A predicate that raises counts as no match (so a failure here) and is logged."""
    system.register("api", max_attempts=5)

    def broken(exc: BaseException) -> bool:
        raise KeyError("oops")

    @circuit_breaker("api", brama=system, exclude=broken)
    def call() -> None:
        raise ServiceError("boom")

    with caplog.at_level(logging.WARNING, logger="brama_actors"), \
            pytest.raises(ServiceError):
        call()
    assert _failures(system) == 1
    assert any("exclude predicate" in r.getMessage() for r in caplog.records)


def test_record_counts_only_matching_exceptions(system: Brama) -> None:
    """With record=, only a match is a failure; others propagate unrecorded."""
    system.register("api", max_attempts=5)

    @circuit_breaker("api", brama=system,
                     record=(ServiceError, lambda exc: isinstance(exc, OSError)))
    def call(error: Exception) -> None:
        raise error

    with pytest.raises(ValueError):
        call(ValueError("a bug of ours, not the service"))
    assert _failures(system) == 0
    with pytest.raises(ServiceError):
        call(ServiceError("down"))
    with pytest.raises(ConnectionResetError):
        call(ConnectionResetError("reset"))
    assert _failures(system) == 2


def test_exclude_wins_over_record(system: Brama) -> None:
    """An exception both excluded and recorded records nothing."""
    system.register("api", max_attempts=5)

    @circuit_breaker("api", brama=system, record=ServiceError, exclude=NotFound)
    def call() -> None:
        raise type("Both", (ServiceError, NotFound), {})("both")

    with pytest.raises(ServiceError):
        call()
    assert _failures(system) == 0


def test_an_unrecorded_outcome_gives_the_trial_permit_back(system: Brama,
                                                           clock: ManualClock) -> None:
    """A half-open trial that ends in an excluded exception frees its permit."""
    _half_open(system, clock)

    @circuit_breaker("api", brama=system, exclude=NotFound)
    def call(error: Exception | None) -> str:
        if error is not None:
            raise error
        return "ok"

    with pytest.raises(NotFound):
        call(NotFound("no such order"))
    assert system.status("api").state == "half_open"  # nothing recorded
    assert call(None) == "ok"  # the permit came back: this trial runs and closes it
    assert system.status("api").state == "closed"


def test_record_in_a_guard_block(system: Brama) -> None:
    """guard(record=...) applies the same rule to a block."""
    system.register("api", max_attempts=5)
    with pytest.raises(ValueError), system.guard("api", record=ServiceError):
        raise ValueError("not the service")
    with pytest.raises(ServiceError), system.guard("api", record=ServiceError):
        raise ServiceError("the service")
    assert _failures(system) == 1


@pytest.mark.parametrize("bad", [
    [1], "NotFound", 3, (ServiceError, "x"), int, (int,), object(),
])
@pytest.mark.parametrize("option", ["exclude", "record"])
def test_bad_exclude_or_record_is_a_type_error(system: Brama, option: str,
                                               bad: Any) -> None:
    """Neither an exception type nor a callable: TypeError at decoration, nothing made."""
    with pytest.raises(TypeError, match=option):
        circuit_breaker("api", brama=system, **{option: bad})
    with pytest.raises(TypeError, match=option):
        system.guard("api", **{option: bad})
    assert system.connections() == []


# -- fallback ------------------------------------------------------------------------------


def test_fallback_answers_a_refused_call_with_its_arguments(system: Brama) -> None:
    """An open circuit calls fallback(*args, **kwargs) and returns its result."""
    system.register("api", max_attempts=1)
    seen: list[Any] = []

    def cached(order: int, *, currency: str = "EUR") -> str:
        seen.append((order, currency))
        return f"cached {order} {currency}"

    @circuit_breaker("api", brama=system, fallback=cached)
    def fetch(order: int, *, currency: str = "EUR") -> str:
        raise ServiceError("down")

    with pytest.raises(ServiceError):  # the call's own failure: no fallback
        fetch(1)
    assert system.status("api").state == "open"
    assert fetch(2, currency="USD") == "cached 2 USD"
    assert seen == [(2, "USD")]
    assert _failures(system) == 1  # a refusal records nothing


def test_fallback_is_not_used_for_other_errors(system: Brama) -> None:
    """Unknown connection (register=False) and a raising fallback propagate."""
    @circuit_breaker("ghost", brama=system, register=False, fallback=lambda: "fb")
    def ghost() -> str:
        return "real"

    with pytest.raises(ConnectionNotFound):
        ghost()

    system.register("api", max_attempts=1)
    system.open_circuit("api")

    def failing_fallback() -> str:
        raise LookupError("no cache either")

    @circuit_breaker("api", brama=system, fallback=failing_fallback)
    def call() -> str:
        return "real"

    with pytest.raises(LookupError, match="no cache"):
        call()


def test_async_fallback_is_awaited(system: Brama) -> None:
    """For async def, a fallback returning an awaitable is awaited; a plain value is
    returned as is."""
    system.register("api", max_attempts=1)
    system.open_circuit("api")

    async def coroutine_fallback(order: int) -> str:
        return f"async cached {order}"

    @circuit_breaker("api", brama=system, fallback=coroutine_fallback)
    async def fetch(order: int) -> str:
        return "real"

    @circuit_breaker("api", brama=system, fallback=lambda order: f"cached {order}")
    async def fetch_plain(order: int) -> str:
        return "real"

    assert asyncio.run(fetch(7)) == "async cached 7"
    assert asyncio.run(fetch_plain(8)) == "cached 8"


def test_fallback_bad_forms(system: Brama) -> None:
    """A non-callable fallback, or fallback on a block, is a TypeError."""
    with pytest.raises(TypeError, match="fallback must be callable"):
        circuit_breaker("api", brama=system, fallback="cached")
    with pytest.raises(TypeError, match="fallback= applies to decorated functions"):
        system.guard("api", fallback=lambda: None)
    with pytest.raises(TypeError, match="fallback= applies to decorated functions"):
        brama_actors.guard("api", fallback=lambda: None)


# -- timeout -------------------------------------------------------------------------------


@pytest.fixture
def failures(system: Brama) -> Iterator[brama_actors.Subscription]:
    sub = system.subscribe(events=["failure"])
    yield sub
    sub.unsubscribe()


def test_timeout_cancels_and_records_a_failure(system: Brama,
                                               failures: brama_actors.Subscription) -> None:
    """A call running past timeout= is cancelled, recorded as "Timeout", TimeoutError."""
    system.register("api", max_attempts=5)
    cancelled = threading.Event()

    @circuit_breaker("api", brama=system, timeout=20)
    async def hang() -> None:
        try:
            await asyncio.Event().wait()  # never set: the service does not answer
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match="longer than 20 ms"):
        asyncio.run(hang())
    assert cancelled.is_set()
    system.drain()
    assert [e.data["reason"] for e in collect(failures)] == ["Timeout"]


def test_the_calls_own_timeout_error_is_an_ordinary_failure(
        system: Brama, failures: brama_actors.Subscription) -> None:
    """A TimeoutError raised by the call itself keeps its own reason."""
    system.register("api", max_attempts=5)

    @circuit_breaker("api", brama=system, timeout=10_000)
    async def call() -> None:
        raise TimeoutError("upstream said 504")

    with pytest.raises(TimeoutError, match="504"):
        asyncio.run(call())
    system.drain()
    assert [e.data["reason"] for e in collect(failures)] == [
        "TimeoutError('upstream said 504')"]


def test_outside_cancellation_records_nothing_and_frees_the_permit(
        system: Brama, clock: ManualClock) -> None:
    """Cancelled by the caller: CancelledError propagates, nothing recorded, permit back."""
    _half_open(system, clock)

    @circuit_breaker("api", brama=system, timeout=60_000)
    async def slow(ready: asyncio.Event) -> str:
        ready.set()
        await asyncio.Event().wait()
        return "never"

    @circuit_breaker("api", brama=system)
    async def quick() -> str:
        return "ok"

    async def scenario() -> str:
        ready = asyncio.Event()
        task = asyncio.create_task(slow(ready))
        await ready.wait()
        with pytest.raises(CircuitOpenError):  # the one permit is taken
            await quick()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert system.status("api").state == "half_open"  # nothing recorded
        return await quick()  # the permit came back

    assert asyncio.run(scenario()) == "ok"
    assert system.status("api").state == "closed"
    assert _failures(system) == 1  # only the failure that opened it


def test_async_with_block_timeout(system: Brama,
                                  failures: brama_actors.Subscription) -> None:
    """async with guard(timeout=...) cancels the block and records "Timeout"."""
    system.register("api", max_attempts=5)

    async def scenario() -> None:
        async with system.guard("api", timeout=20):
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError, match="longer than 20 ms"):
        asyncio.run(scenario())

    async def fast() -> str:
        async with system.guard("api", timeout=10_000):
            return "done"

    assert asyncio.run(fast()) == "done"
    system.drain()
    assert [e.data["reason"] for e in collect(failures)] == ["Timeout"]
    assert system.status("api").total_successes == 1


@pytest.mark.parametrize(("bad", "error"), [
    (0, ValueError), (-5, ValueError), (True, TypeError), (1.5, TypeError), ("10", TypeError),
])
def test_bad_timeout(system: Brama, bad: Any, error: type[Exception]) -> None:
    """timeout must be an int >= 1 (ms)."""
    with pytest.raises(error, match="timeout"):
        circuit_breaker("api", brama=system, timeout=bad)


def test_timeout_on_sync_code_is_a_type_error(system: Brama) -> None:
    """Sync functions and sync blocks cannot be cancelled: TypeError, nothing admitted."""
    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        circuit_breaker("api", brama=system, timeout=100)(sync)
    block = system.guard("api", timeout=100)
    with pytest.raises(TypeError, match="async with"), block:
        pass
    assert system.connections() == []  # nothing registered, nothing admitted


# -- retry_after ---------------------------------------------------------------------------


def test_retry_after_counts_down_to_the_trial(system: Brama, clock: ManualClock) -> None:
    """retry_after = opened_at + expiry - now (ms), and 0 when half-open and full."""
    system.register("api", max_attempts=1, expiry=1_000, half_open_max_calls=1)
    system.failure("api")

    @circuit_breaker("api", brama=system)
    def call() -> str:
        return "ok"

    with pytest.raises(CircuitOpenError) as refused:
        call()
    assert refused.value.retry_after == 1_000
    clock.advance(300)
    with pytest.raises(CircuitOpenError) as refused:
        call()
    assert refused.value.retry_after == 700
    copy = pickle.loads(pickle.dumps(refused.value))
    assert (copy.retry_after, copy.status) == (700, refused.value.status)
    clock.advance(700)
    with system.guard("api"):  # takes the one trial permit
        with pytest.raises(CircuitOpenError) as full:
            call()
        assert full.value.retry_after == 0


def test_retry_after_on_a_client(node: tuple[Brama, Any]) -> None:
    """A client's refusal carries retry_after too (from the wall clock)."""
    brama, server = node
    brama.register("api")
    brama.open_circuit("api", expiry=60_000)  # before connecting: the snapshot has it
    with brama_actors.connect(server.address, authkey=server.authkey) as client:
        with pytest.raises(CircuitOpenError) as refused, client.guard("api"):
            pass
        assert 0 < refused.value.retry_after <= 60_000
