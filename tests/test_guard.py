"""Guarding calls (docs/guarding.md): the decorator and the context manager."""

from __future__ import annotations

import asyncio
import inspect
import threading
import traceback
from typing import Any

import pytest

import brama_actors
from brama_actors import (
    Brama,
    CircuitOpenError,
    ConnectionNotFound,
    InvalidConfiguration,
    InvalidIdentifier,
    circuit_breaker,
)
from brama_actors.testing import ManualClock, set_state
from tests.conftest import collect, kinds


class ServiceError(Exception):
    pass


class NotFound(Exception):
    pass


# -- the decorator ---------------------------------------------------------------------


def test_wraps_preserve_identity(system: Brama) -> None:
    """The decorator keeps the function's name, docstring and signature."""

    def original(amount: int, *, currency: str = "EUR") -> str:
        """Charge a card."""
        return f"{amount} {currency}"

    charge = circuit_breaker("api", brama=system)(original)
    assert charge.__name__ == "original"
    assert charge.__doc__ == "Charge a card."
    assert inspect.signature(charge) == inspect.signature(original)
    assert list(inspect.signature(charge).parameters) == ["amount", "currency"]
    assert charge.__wrapped__ is original  # type: ignore[attr-defined]
    assert charge(3, currency="USD") == "3 USD"


def test_async_is_detected(system: Brama) -> None:
    """An async def stays a coroutine function and is awaited inside the guard."""

    @circuit_breaker("api", brama=system)
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(21)) == 42
    assert system.status("api").total_successes == 1


def test_success_is_recorded(system: Brama) -> None:
    """A normal return records a success."""
    f = circuit_breaker("api", brama=system)(lambda: "ok")
    for _ in range(5):
        assert f() == "ok"
    assert system.status("api").total_successes == 5


def test_exception_records_failure_and_propagates_unchanged(system: Brama) -> None:
    """An Exception records a failure with reason=repr(exc); the same object propagates."""
    raised = ServiceError("down")

    @circuit_breaker("api", brama=system, max_attempts=2)
    def call() -> None:
        raise raised

    with pytest.raises(ServiceError) as info:
        call()
    assert info.value is raised
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "call"
    status = system.status("api")
    assert status.failure_count == 1
    assert status.max_attempts == 2
    sub = system.subscribe(events=["failure"])
    with pytest.raises(ServiceError):
        call()
    system.drain()
    assert [e.data["reason"] for e in collect(sub)] == [repr(raised)]
    assert not system.available("api")


def test_open_circuit_refuses_without_calling(system: Brama) -> None:
    """Open: CircuitOpenError with a frozen status; the function is not called."""
    calls: list[int] = []

    @circuit_breaker("api", brama=system)
    def call() -> None:
        calls.append(1)

    call()
    system.open_circuit("api")
    with pytest.raises(CircuitOpenError) as info:
        call()
    assert calls == [1]
    assert info.value.status.state == "open"
    assert "'api'" in str(info.value)
    system.close_circuit("api")
    assert info.value.status.state == "open"  # a snapshot, not a live view


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exceptions_pass_through(system: Brama, exc_type: type[BaseException]) -> None:
    """BaseException passes through untouched and records nothing."""

    @circuit_breaker("api", brama=system, max_attempts=1)
    def call() -> None:
        raise exc_type()

    with pytest.raises(exc_type):
        call()
    status = system.status("api")
    assert (status.total_failures, status.total_successes) == (0, 0)
    assert system.available("api")


def test_cancellation_records_nothing(system: Brama) -> None:
    """asyncio.CancelledError passes through and records nothing."""
    @circuit_breaker("api", brama=system, max_attempts=1)
    async def slow() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(slow())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert system.status("api").total_failures == 0


def test_exclude(system: Brama) -> None:
    """Excluded exception types propagate without counting as failures."""

    @circuit_breaker("api", brama=system, exclude=(NotFound,), max_attempts=1)
    def call(kind: type[Exception]) -> None:
        raise kind("x")

    with pytest.raises(NotFound):
        call(NotFound)
    assert system.available("api")
    assert system.status("api").total_failures == 0
    with pytest.raises(ServiceError):
        call(ServiceError)
    assert not system.available("api")


@pytest.mark.parametrize(
    ("verdict", "failures", "successes", "reason"),
    [
        ("success", 0, 1, None),
        ("failure", 1, 0, None),
        (("failure", "bad payload"), 1, 0, "bad payload"),
        ("ignore", 0, 0, None),
    ],
)
def test_error_handler_verdicts(system: Brama, verdict: Any, failures: int, successes: int,
                                reason: Any) -> None:
    """error_handler(result) decides success, failure, (failure, reason) or ignore."""
    seen: list[Any] = []

    def judge(result: Any) -> Any:
        seen.append(result)
        return verdict

    sub = system.subscribe(events=["failure"])

    @circuit_breaker("api", brama=system, error_handler=judge)
    def call() -> dict[str, int]:
        return {"status": 500}

    assert call() == {"status": 500}
    assert seen == [{"status": 500}]
    status = system.status("api")
    assert (status.total_failures, status.total_successes) == (failures, successes)
    system.drain()
    assert [e.data["reason"] for e in collect(sub)] == ([reason] if failures else [])


@pytest.mark.parametrize("verdict", ["ok", None, ("failure",), ("success", "x"), 1, "FAILURE"])
def test_invalid_error_handler_verdict(system: Brama, verdict: Any) -> None:
    """An invalid verdict raises TypeError naming it, and records nothing."""
    f = circuit_breaker("api", brama=system, error_handler=lambda r: verdict)(lambda: 1)
    with pytest.raises(TypeError, match="error_handler") as info:
        f()
    assert repr(verdict) in str(info.value)
    status = system.status("api")
    assert (status.total_failures, status.total_successes) == (0, 0)


def test_register_true_registers_with_options(system: Brama) -> None:
    """register=True registers on first use with the given options."""
    f = circuit_breaker("api", brama=system, max_attempts=7, type="http",
                        metadata={"team": "pay"})(lambda: 1)
    assert not system.available("api")
    f()
    status = system.status("api")
    assert (status.max_attempts, status.type, dict(status.metadata)) == (7, "http",
                                                                        {"team": "pay"})


def test_register_false_raises_for_unknown(system: Brama) -> None:
    """register=False: an unknown connection raises ConnectionNotFound; nothing runs."""
    calls: list[int] = []
    f = circuit_breaker("api", brama=system, register=False)(lambda: calls.append(1))
    with pytest.raises(ConnectionNotFound):
        f()
    assert calls == []
    system.register("api")
    f()
    assert calls == [1]


def test_bad_decorator_arguments() -> None:
    """Bad arguments fail at decoration time."""
    with pytest.raises(InvalidIdentifier):
        circuit_breaker("")
    with pytest.raises(InvalidConfiguration, match="max_attempts"):
        circuit_breaker("api", max_attempts=-1)
    with pytest.raises(InvalidConfiguration, match="bogus"):
        circuit_breaker("api", bogus=1)
    with pytest.raises(TypeError, match="exclude"):
        circuit_breaker("api", exclude=("nope",))
    with pytest.raises(TypeError, match="error_handler"):
        circuit_breaker("api", error_handler="nope")  # type: ignore[arg-type]


def test_default_system() -> None:
    """brama=None uses the default system, looked up at call time."""
    f = circuit_breaker("api")(lambda: 1)
    f()
    assert brama_actors.status("api").total_successes == 1
    brama_actors.stop()
    f()  # a fresh default system: registered again on first use
    assert brama_actors.status("api").total_successes == 1


def test_success_events_emitted_when_subscribed(system: Brama) -> None:
    """With a success subscriber, guarded successes emit success events."""
    sub = system.subscribe(events=["success"])
    f = circuit_breaker("api", brama=system)(lambda: 1)
    f()
    f()
    system.drain()
    assert kinds(collect(sub)) == ["success", "success"]


def test_success_in_closed_with_failures_resets(system: Brama) -> None:
    """A guarded success after failures resets failure_count (the slow path)."""
    system.register("api", max_attempts=3)
    system.failure("api")
    system.failure("api")
    circuit_breaker("api", brama=system)(lambda: 1)()
    assert system.status("api").failure_count == 0


# -- the context manager ----------------------------------------------------------------


def test_guard_block_success_and_failure(system: Brama) -> None:
    """`with brama.guard(...)` records success, failure, and refuses when open."""
    with system.guard("api", max_attempts=1):
        pass
    assert system.status("api").total_successes == 1
    error = ServiceError("x")
    with pytest.raises(ServiceError) as info, system.guard("api"):
        raise error
    assert info.value is error
    assert not system.available("api")
    ran = []
    with pytest.raises(CircuitOpenError), system.guard("api"):
        ran.append(1)
    assert ran == []


def test_guard_block_async(system: Brama) -> None:
    """`async with brama.guard(...)` works the same way."""

    async def main() -> None:
        async with system.guard("api"):
            await asyncio.sleep(0)
        with pytest.raises(ServiceError):
            async with system.guard("api"):
                raise ServiceError("x")

    asyncio.run(main())
    status = system.status("api")
    assert (status.total_successes, status.total_failures) == (1, 1)


def test_guard_block_base_exception_and_exclude(system: Brama) -> None:
    """BaseException and excluded types record nothing in a guard block."""
    with pytest.raises(KeyboardInterrupt), system.guard("api"):
        raise KeyboardInterrupt
    with pytest.raises(NotFound), system.guard("api", exclude=NotFound):
        raise NotFound
    status = system.status("api")
    assert (status.total_successes, status.total_failures) == (0, 0)


def test_guard_block_is_single_use_at_a_time(system: Brama) -> None:
    """Entering the same block object twice at once is refused clearly."""
    block = system.guard("api")
    with block, pytest.raises(RuntimeError, match="already in use"):
        block.__enter__()
    with block:  # reusable once exited
        pass


def test_module_level_guard() -> None:
    """brama_actors.guard uses the default system."""
    with brama_actors.guard("api"):
        pass
    assert brama_actors.status("api").total_successes == 1


# -- half-open admission -----------------------------------------------------------------


def _half_open(system: Brama, clock: ManualClock, max_calls: int = 1) -> None:
    system.register("api", max_attempts=1, expiry=100, half_open_max_calls=max_calls)
    system.failure("api")
    clock.advance(100)
    assert system.status("api").state == "half_open"


def test_half_open_admits_limited_trials(system: Brama, clock: ManualClock) -> None:
    """While one trial runs, other callers get CircuitOpenError at once."""
    _half_open(system, clock)
    inside = threading.Event()
    release = threading.Event()

    @circuit_breaker("api", brama=system)
    def call() -> str:
        inside.set()
        assert release.wait(5)
        return "ok"

    results: list[Any] = []
    trial = threading.Thread(target=lambda: results.append(call()))
    trial.start()
    assert inside.wait(5)
    assert system.available("api")  # available() stays a pure check
    for _ in range(20):
        with pytest.raises(CircuitOpenError, match="half-open"):
            call()
    release.set()
    trial.join(5)
    assert results == ["ok"]
    assert system.status("api").state == "closed"


def test_half_open_max_calls_two(system: Brama, clock: ManualClock) -> None:
    """half_open_max_calls=2 admits two concurrent trials, refuses the third."""
    _half_open(system, clock, max_calls=2)
    blocks = [system.guard("api"), system.guard("api")]
    for block in blocks:
        block.__enter__()
    with pytest.raises(CircuitOpenError), system.guard("api"):
        pass
    for block in blocks:
        block.__exit__(None, None, None)
    assert system.status("api").state == "closed"


def test_permit_released_on_exception(system: Brama, clock: ManualClock) -> None:
    """A failing trial releases its permit (the circuit reopens, never stuck)."""
    _half_open(system, clock)
    with pytest.raises(ServiceError), system.guard("api"):
        raise ServiceError("still down")
    assert system.status("api").state == "open"
    clock.advance(100)
    with system.guard("api"):
        pass
    assert system.status("api").state == "closed"


def test_permit_released_on_base_exception(system: Brama, clock: ManualClock) -> None:
    """A trial ended by KeyboardInterrupt releases its permit and records nothing."""
    _half_open(system, clock)
    with pytest.raises(KeyboardInterrupt), system.guard("api"):
        raise KeyboardInterrupt
    assert system.status("api").state == "half_open"
    with system.guard("api"):
        pass
    assert system.status("api").state == "closed"


def test_permit_released_on_cancellation(system: Brama, clock: ManualClock) -> None:
    """A cancelled async trial releases its permit."""
    _half_open(system, clock)

    @circuit_breaker("api", brama=system)
    async def slow() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(slow())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert system.status("api").state == "half_open"
    circuit_breaker("api", brama=system)(lambda: 1)()
    assert system.status("api").state == "closed"


def test_permit_released_when_error_handler_ignores(system: Brama, clock: ManualClock) -> None:
    """An ignored trial result releases the permit; the circuit stays half_open."""
    _half_open(system, clock)
    f = circuit_breaker("api", brama=system, error_handler=lambda r: "ignore")(lambda: 1)
    f()
    f()
    assert system.status("api").state == "half_open"


def test_many_threads_hammering_half_open(system: Brama, clock: ManualClock) -> None:
    """Under concurrent trials that succeed, the circuit closes and no permit leaks."""
    _half_open(system, clock, max_calls=3)
    f = circuit_breaker("api", brama=system)(lambda: 1)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait(5)
        for _ in range(50):
            try:
                f()
                result = "ok"
            except CircuitOpenError:
                result = "refused"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(outcomes) == 400
    assert system.status("api").state == "closed"
    assert system._authority.cells["api"].trials == 0


def test_set_state_then_guard(system: Brama) -> None:
    """A guard respects a state forced by the testing helpers."""
    system.register("api")
    set_state("api", "open", brama=system)
    with pytest.raises(CircuitOpenError):
        circuit_breaker("api", brama=system)(lambda: 1)()


def test_guard_block_refuses_error_handler(system: Brama) -> None:
    """A guard block has no result: error_handler= there is a TypeError, not ignored."""
    with pytest.raises(TypeError, match="error_handler"):
        system.guard("api", error_handler=lambda r: "success")
    with pytest.raises(TypeError, match="error_handler"):
        brama_actors.guard("api", error_handler=lambda r: "success")


def test_register_type_and_metadata_checked_at_decoration() -> None:
    """type= and metadata= for the registration are validated when decorating."""
    with pytest.raises(InvalidConfiguration, match="type"):
        circuit_breaker("api", type="")
    with pytest.raises(TypeError, match="metadata"):
        circuit_breaker("api", metadata=[1])


# -- asyncio code never blocks its event loop ------------------------------------------------

_HOLD = object()


@pytest.fixture
def held_actor(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Telling a connection actor _HOLD keeps it busy until the returned event is set."""
    from brama_actors._authority._local._actor import ConnectionActor

    gate = threading.Event()
    original = ConnectionActor._handle

    def handle(self: Any, message: Any) -> Any:
        if message is _HOLD:
            gate.wait(10)
            return None
        return original(self, message)

    monkeypatch.setattr(ConnectionActor, "_handle", handle)
    yield gate
    gate.set()


@pytest.mark.parametrize("form", ["decorator", "block"])
def test_async_failure_waits_for_a_busy_actor_without_blocking_the_loop(
        system: Brama, held_actor: threading.Event, form: str) -> None:
    """A failure recorded while its actor is busy is awaited: the event loop keeps running."""
    system.register("db")

    @brama_actors.circuit_breaker("db", brama=system)
    async def call() -> None:
        raise ConnectionError("down")

    async def block() -> None:
        async with system.guard("db"):
            raise ConnectionError("down")

    async def main() -> int:
        system._authority.cells["db"].ref.tell(_HOLD)  # the actor is busy until the gate opens
        ticks = 0
        task = asyncio.create_task(call() if form == "decorator" else block())
        while not task.done() and ticks < 50:
            await asyncio.sleep(0)
            ticks += 1          # the loop runs while the failure waits for the actor
        held_actor.set()
        with pytest.raises(ConnectionError):
            await task
        return ticks

    assert asyncio.run(main()) == 50
    assert system.status("db").failure_count == 1


def test_async_trial_success_on_a_busy_actor_releases_its_permit_once(
        system: Brama, held_actor: threading.Event) -> None:
    """A half-open trial whose success must wait is recorded once and releases one permit."""
    system.register("db", half_open_max_calls=2)
    set_state("db", "half_open", brama=system)

    @brama_actors.circuit_breaker("db", brama=system)
    async def call() -> str:
        return "ok"

    cell = system._authority.cells["db"]
    with cell.lock:
        cell.trial_period = cell.status.opened_at  # this half_open period's permits:
        cell.trials += 1  # another caller's trial, still running throughout

    async def main() -> str:
        cell.ref.tell(_HOLD)
        task = asyncio.create_task(call())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()
        held_actor.set()
        return await task

    assert asyncio.run(main()) == "ok"
    assert system.status("db").state == "closed"
    assert system.status("db").total_successes == 1
    assert cell.trials == 1  # ours went back, exactly once; the other caller's is kept


def test_quiet_successes_from_many_threads_are_all_counted(system: Brama) -> None:
    """Guarded successes counted in place (lock-free marks, moved in batches) lose none,
    and the marks a cell holds stay bounded."""
    from brama_actors._authority._local._cell import QUIET_BATCH

    system.register("db")

    @circuit_breaker("db", brama=system)
    def call() -> None:
        return None

    per_thread, threads = 3 * QUIET_BATCH + 7, 4
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait(10)
        for _ in range(per_thread):
            call()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    cell = system._authority.cells["db"]
    assert len(cell.quiet_marks) < QUIET_BATCH
    assert system.status("db").total_successes == per_thread * threads
    system.failure("db")  # the actor folds the count into its own status
    assert system.status("db").total_successes == per_thread * threads
    assert (cell.quiet_count, cell.quiet_marks) == (0, [])
