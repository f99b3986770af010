"""The event system (docs/events.md): subscriptions, targets, guarantees, telemetry."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

import pykka
import pytest

import brama_actors
from brama_actors import Brama, ConnectionMonitor, Event, telemetry
from brama_actors._delivery._manager import DRAIN
from brama_actors._runtime import _pool
from brama_actors.testing import ManualClock, inject_event_manager_crash
from tests.conftest import collect, kinds, subscriptions


class Collector(pykka.ThreadingActor):
    """A plain Pykka actor that records what it is told."""

    use_daemon_thread = True

    def __init__(self, got: list[Any], signal: threading.Event | None = None) -> None:
        super().__init__()
        self.got = got
        self.signal = signal

    def on_receive(self, message: Any) -> Any:
        if message == "subscribe-me":
            return self.brama.subscribe(events=["failure"])  # type: ignore[attr-defined]
        self.got.append(message)
        if self.signal is not None:
            self.signal.set()
        return None


# -- subscribing and unsubscribing -------------------------------------------------------


def test_unsubscribe_by_filters_removes_callers_matching(system: Brama) -> None:
    """unsubscribe(**filters) removes the caller's subscriptions with those values."""
    a = system.subscribe(events=["failure", "success"], connection="db")
    b = system.subscribe(events=["success", "failure"], connection="api")
    c = system.subscribe(connection="db")
    other: list[Any] = []
    thread = threading.Thread(target=lambda: other.append(system.subscribe(connection="db")))
    thread.start()
    thread.join(5)
    assert system.unsubscribe(events=["success", "failure"]) == 2  # a and b: set equality
    assert system.unsubscribe(connection="db") == 1  # c only: the thread's is not ours
    assert system.unsubscribe() == 0
    assert system.unsubscribe(other[0]) is True
    system.register("db")
    system.drain()
    assert collect(a) == collect(b) == collect(c) == []


def test_unsubscribe_all_of_callers(system: Brama) -> None:
    """unsubscribe() with no arguments removes every subscription of the caller."""
    for _ in range(3):
        system.subscribe()
    assert system.unsubscribe() == 3


def test_subscription_context_manager(system: Brama) -> None:
    """A Subscription used in `with` unsubscribes on exit."""
    with system.subscribe() as sub:
        system.register("db")
        system.drain()
        assert kinds(collect(sub)) == ["registration", "connection_registered"]
    assert system.unsubscribe(sub) is False
    assert sub.id > 0


def test_bad_subscribe_arguments(system: Brama) -> None:
    """Bad subscribe arguments raise and subscribe nothing."""
    with pytest.raises(ValueError, match="not both"):
        system.subscribe(subscriber=Collector.start([]), handler=print)
    with pytest.raises(TypeError, match="filter"):
        system.subscribe(filter=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="subscriber"):
        system.subscribe(subscriber="me")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler"):
        system.subscribe(handler=3)
    with pytest.raises(ValueError, match="max_pending"):
        system.subscribe(max_pending=0)
    with pytest.raises(ValueError, match="batch_size"):
        system.subscribe(batch_size=0)
    with pytest.raises(ValueError, match="batch_timeout"):
        system.subscribe(batch_timeout=True)  # type: ignore[arg-type]
    assert system.unsubscribe() == 0


# -- targets ------------------------------------------------------------------------------


def test_actor_subscriber(system: Brama) -> None:
    """subscriber=actor_ref: the actor is told ("brama_event", event)."""
    got: list[Any] = []
    ref = Collector.start(got)
    system.subscribe(subscriber=ref, events=["registration"])
    system.register("db")
    system.drain()
    ref.ask("sync", timeout=5)
    assert got[0][0] == "brama_event"
    assert got[0][1].event == "registration"


def test_calling_actor_is_the_subscriber(system: Brama) -> None:
    """subscribe() inside a Pykka actor makes that actor the subscriber."""
    got: list[Any] = []
    ref = Collector.start(got)
    ref.proxy().brama = system
    sub = ref.ask("subscribe-me", timeout=5)
    assert sub.subscriber == ref
    system.register("db")
    system.failure("db")
    system.drain()
    ref.ask("sync", timeout=5)
    assert [m[1].event for m in got if m != "sync"] == ["failure"]


def test_stopped_subscriber_actor_is_dropped(system: Brama) -> None:
    """A subscriber actor that stopped is removed from the table."""
    ref = Collector.start([])
    sub = system.subscribe(subscriber=ref)
    ref.stop()
    system.register("db")
    system.drain()
    assert system.unsubscribe(sub) is False


def test_handler_object_and_callable(system: Brama) -> None:
    """Handlers: objects with handle_event and plain callables, run in their own thread."""
    threads: set[str] = set()
    seen: list[str] = []

    class Handler:
        def handle_event(self, event: Event) -> None:
            threads.add(threading.current_thread().name)
            seen.append("object:" + event.event.value)

    def function(event: Event) -> None:
        threads.add(threading.current_thread().name)
        seen.append("function:" + event.event.value)

    system.subscribe(handler=Handler(), events=["registration"])
    system.subscribe(handler=function, events=["registration"])
    system.register("db")
    system.drain()
    assert sorted(seen) == ["function:registration", "object:registration"]
    assert all("handler" in name for name in threads)


def test_inbox_iteration(system: Brama) -> None:
    """Iterating an inbox yields events."""
    sub = system.subscribe(events=["failure"])
    system.register("db")
    for _ in range(3):
        system.failure("db")
    received = []
    for event in sub:
        received.append(event)
        if len(received) == 3:
            break
    assert [e.data["failure_count"] for e in received] == [1, 2, 3]  # type: ignore[union-attr]


def test_get_timeout_raises_empty(system: Brama) -> None:
    """get(timeout) raises queue.Empty when nothing arrives."""
    sub = system.subscribe()
    with pytest.raises(queue.Empty):
        sub.get(timeout=0.01)


def test_handler_subscription_is_not_readable(system: Brama) -> None:
    """get() on a handler subscription raises TypeError."""
    sub = system.subscribe(handler=lambda e: None)
    with pytest.raises(TypeError, match="inbox"):
        sub.get(timeout=0)


def test_asyncio_consumption_does_not_block_the_loop(system: Brama) -> None:
    """aget and async for wait without blocking the event loop."""
    sub = system.subscribe(events=["failure"])
    system.register("db", max_attempts=100)

    async def main() -> list[int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        waiter = asyncio.create_task(sub.aget(timeout=5))
        await asyncio.sleep(0)
        before = ticks
        for _ in range(5):
            await asyncio.sleep(0)
        assert ticks > before  # the loop kept running while aget waited
        await loop.run_in_executor(None, lambda: system.failure("db"))
        first = await waiter
        counts = [first.data["failure_count"]]  # type: ignore[union-attr]
        await loop.run_in_executor(None, lambda: [system.failure("db") for _ in range(2)])
        async for event in sub:
            counts.append(event.data["failure_count"])  # type: ignore[union-attr]
            if len(counts) == 3:
                break
        with pytest.raises(queue.Empty):
            await sub.aget(timeout=0.01)
        stop.set()
        await tick_task
        return counts

    assert asyncio.run(main()) == [1, 2, 3]


# -- filtering ------------------------------------------------------------------------------


def test_filter_predicate(system: Brama) -> None:
    """filter= is applied with the other filters."""
    sub = system.subscribe(events=["failure"], filter=lambda e: e.data["failure_count"] % 2 == 0)
    system.register("db", max_attempts=100)
    for _ in range(4):
        system.failure("db")
    system.drain()
    assert [e.data["failure_count"] for e in collect(sub)] == [2, 4]


def test_raising_filter_is_no_match_logged_once(system: Brama,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A raising filter counts as no match, is logged once, and breaks no other delivery."""

    def bad(event: Event) -> bool:
        raise RuntimeError("filter bug")

    broken = system.subscribe(filter=bad)
    healthy = system.subscribe()
    with caplog.at_level(logging.ERROR, logger="brama_actors"):
        system.register("db")
        system.failure("db")
        system.drain()
    assert collect(broken) == []
    assert kinds(collect(healthy)) == ["registration", "connection_registered", "failure"]
    assert sum("filter of" in r.getMessage() for r in caplog.records) == 1


# -- delivery guarantees ----------------------------------------------------------------


def test_blocked_handler_does_not_slow_reporting(system: Brama) -> None:
    """A handler blocked forever delays nobody: failure() returns, others get events."""
    gate = threading.Event()
    system.subscribe(handler=lambda e: gate.wait(30))
    inbox = system.subscribe(events=["failure"])
    system.register("db", max_attempts=1000)
    for _ in range(200):
        system.failure("db")
    assert inbox.get(timeout=5).data["failure_count"] == 1  # type: ignore[union-attr]
    gate.set()


def test_per_connection_order_under_concurrency(system: Brama) -> None:
    """Events of one connection reach each subscriber in the order they happened."""
    inbox = system.subscribe(events=["failure"])
    got: list[Event] = []
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            got.append(event)

    system.subscribe(handler=record, events=["failure"])
    names = [f"c{i}" for i in range(4)]
    for name in names:
        system.register(name, max_attempts=10_000)

    def report(name: str) -> None:
        for _ in range(100):
            system.failure(name)

    threads = [threading.Thread(target=report, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    system.drain(timeout=10)
    for events in (collect(inbox), got):
        for name in names:
            counts = [e.data["failure_count"] for e in events if e.connection == name]
            assert counts == list(range(1, 101))


def test_critical_events_are_retried(system: Brama) -> None:
    """A handler that raises on a critical event gets it again; others are not retried."""
    calls: list[str] = []

    def flaky(event: Event) -> None:
        calls.append(event.event.value)
        if calls.count(event.event.value) == 1:
            raise RuntimeError("first attempt fails")

    sub = system.subscribe(handler=flaky, events=["failure", "state_change"])
    system.register("db", max_attempts=1)
    system.failure("db")
    system.drain(timeout=5)
    assert calls == ["failure", "state_change", "state_change"]
    stats = sub.statistics()
    assert (stats.delivered, stats.failed, stats.pending) == (1, 1, 0)


def test_always_failing_handler_counted_and_reported(system: Brama) -> None:
    """After bounded retries a critical event counts as failed and fires telemetry."""
    attempts: list[int] = []
    reports: list[Any] = []
    telemetry.attach("t-sub", ("brama", "subscriber"),
                     lambda name, m, meta: reports.append((name, meta)))
    try:
        sub = system.subscribe(handler=lambda e: attempts.append(1) or 1 / 0,
                               events=["state_change"])
        system.register("db", max_attempts=1)
        system.failure("db")
        system.drain(timeout=5)
    finally:
        telemetry.detach("t-sub")
    assert len(attempts) == 4  # 1 + CRITICAL_RETRIES
    assert sub.statistics().failed == 1
    assert reports[0][0] == ("brama", "subscriber", "failure")
    assert isinstance(reports[0][1]["error"], ZeroDivisionError)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_handler_keeps_system_running(
    system: Brama, exc_type: type[BaseException]
) -> None:
    """A handler raising KeyboardInterrupt/SystemExit stops nothing."""

    def hostile(event: Event) -> None:
        raise exc_type()

    sub = system.subscribe(handler=hostile, events=["failure"])
    inbox = system.subscribe(events=["failure"])
    system.register("db", max_attempts=100)
    system.failure("db")
    system.drain(timeout=5)
    system.failure("db")
    system.drain(timeout=5)
    assert sub.statistics().failed == 2
    assert len(collect(inbox)) == 2
    assert system.supervisor.is_alive()


def test_max_pending_drops_oldest_non_critical(system: Brama) -> None:
    """A full queue drops its oldest non-critical events, never critical ones."""
    sub = system.subscribe(events=["failure", "state_change", "circuit_reset"], max_pending=3)
    system.register("db", max_attempts=2)
    system.failure("db")
    system.failure("db")  # failure, state_change (critical)
    for _ in range(5):
        system.failure("db")  # non-critical failures while open
    system.reset_circuit("db")  # circuit_reset + state_change, critical
    system.drain()
    events = collect(sub)
    assert [e.event.value for e in events if e.critical] == [
        "state_change", "circuit_reset", "state_change"]
    assert len(events) == 3
    stats = sub.statistics()
    assert (stats.delivered, stats.dropped, stats.pending, stats.failed) == (3, 7, 0, 0)


def test_statistics_add_up(system: Brama) -> None:
    """delivered + dropped + failed + pending equals the events that matched."""
    sub = system.subscribe(events=["failure"], max_pending=5)
    system.register("db", max_attempts=1000)
    for _ in range(12):
        system.failure("db")
    system.drain()
    sub.get(timeout=0)
    stats = sub.statistics()
    assert (stats.delivered, stats.dropped, stats.pending) == (1, 7, 4)


# -- batching ---------------------------------------------------------------------------------


def test_batch_size(system: Brama) -> None:
    """batch_size: the inbox receives tuples of at most batch_size events."""
    sub = system.subscribe(events=["failure"], batch_size=3)
    system.register("db", max_attempts=100)
    for _ in range(7):
        system.failure("db")
    system.drain()  # flushes the partial last batch
    batches = [sub.get(timeout=0) for _ in range(3)]
    assert [len(b) for b in batches] == [3, 3, 1]  # type: ignore[arg-type]
    counts = [e.data["failure_count"] for b in batches for e in b]  # type: ignore[union-attr]
    assert counts == list(range(1, 8))


def test_batch_timeout_on_manual_clock(system: Brama, clock: ManualClock) -> None:
    """batch_timeout flushes when the system clock passes it (advance, no sleeping)."""
    sub = system.subscribe(events=["failure"], batch_size=100, batch_timeout=50)
    system.register("db", max_attempts=100)
    system.failure("db")
    system.failure("db")
    with pytest.raises(queue.Empty):
        sub.get(timeout=0.01)
    clock.advance(50)
    batch = sub.get(timeout=1)
    assert isinstance(batch, tuple) and len(batch) == 2


def test_batches_to_actors_and_handlers(system: Brama) -> None:
    """Actors get ("brama_events", batch); handlers get the tuple."""
    got: list[Any] = []
    ref = Collector.start(got)
    handled: list[Any] = []
    system.subscribe(subscriber=ref, events=["failure"], batch_size=2)
    system.subscribe(handler=handled.append, events=["failure"], batch_size=2)
    system.register("db", max_attempts=100)
    for _ in range(4):
        system.failure("db")
    system.drain()
    ref.ask("sync", timeout=5)
    assert [m[0] for m in got if m != "sync"] == ["brama_events", "brama_events"]
    assert [len(b) for b in handled] == [2, 2]


# -- crash safety -------------------------------------------------------------------------


def test_event_manager_crash_keeps_table_and_critical_events(system: Brama) -> None:
    """After an event manager crash, subscriptions survive and critical events arrive."""
    sub = system.subscribe(connection="db")
    system.register("db", max_attempts=1)
    system.drain()
    collect(sub)
    old = system._delivery.ref
    inject_event_manager_crash(brama=system)
    system.failure("db")  # its events are the message the manager crashes on
    system.drain(timeout=5)
    assert system._delivery.ref is old  # recovered in place: same actor, ref and inbox
    assert kinds(collect(sub)) == ["circuit_opened", "state_change"]
    system.reset_circuit("db")
    system.drain()
    assert kinds(collect(sub)) == ["circuit_reset", "state_change"]
    assert system.unsubscribe(sub) is True


def test_event_manager_crash_on_subscribe_is_retried(system: Brama) -> None:
    """A subscribe that hits the crash is retried on the restarted manager."""
    before = system.subscribe(events=["registration"])
    inject_event_manager_crash(brama=system)
    after = system.subscribe(events=["registration"])
    system.register("db")
    system.drain()
    assert len(collect(before)) == len(collect(after)) == 1


# -- telemetry ----------------------------------------------------------------------------


def test_telemetry_for_every_event(system: Brama, clock: ManualClock) -> None:
    """Every event fires ("brama", "connection", type); state_change carries duration."""
    seen: list[Any] = []
    telemetry.attach("t-all", ("brama", "connection"),
                     lambda name, m, meta: seen.append((name, dict(m), dict(meta))))
    try:
        system.register("db", max_attempts=1, expiry=100)
        clock.advance(30)
        system.failure("db")
        clock.advance(100)
        system.drain()
    finally:
        assert telemetry.detach("t-all") is True
    names = [name[2] for name, _, _ in seen]
    assert names == ["registration", "connection_registered", "failure", "circuit_opened",
                     "state_change", "expiry", "circuit_half_opened", "state_change"]
    changes = [(m, meta) for name, m, meta in seen if name[2] == "state_change"]
    assert changes[0][0]["duration"] == 30
    assert changes[1][0]["duration"] == 100
    assert changes[0][1]["connection"] == "db"
    assert changes[0][1]["data"]["new_state"] == "open"
    assert all("system_time" in m for _, m, _ in seen)


def test_raising_telemetry_handler_is_detached_and_reported(system: Brama) -> None:
    """A raising telemetry handler is detached and reported as handler_failure."""
    failures: list[Any] = []
    telemetry.attach("t-bad", ("brama", "connection"), lambda *a: 1 / 0)
    telemetry.attach("t-watch", ("brama", "telemetry"),
                     lambda name, m, meta: failures.append(meta["handler_id"]))
    try:
        system.register("db")
        system.drain()
        assert "t-bad" not in telemetry.handlers()
        assert failures == ["t-bad"]
    finally:
        telemetry.detach("t-watch")


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_base_exception_in_telemetry_handler_is_contained(
        system: Brama, error: type[BaseException]) -> None:
    """A telemetry handler raising a BaseException is detached; later telemetry still runs."""
    def bad(*args: Any) -> None:
        raise error("from a telemetry handler")

    failures: list[Any] = []
    later: list[Any] = []
    telemetry.attach("t-bad", ("brama", "connection", "registration"), bad)
    telemetry.attach("t-watch", ("brama", "telemetry"),
                     lambda name, m, meta: failures.append(meta["handler_id"]))
    telemetry.attach("t-later", ("brama", "connection", "failure"),
                     lambda name, m, meta: later.append(meta["connection"]))
    try:
        system.register("db")
        system.drain()
        assert "t-bad" not in telemetry.handlers()
        assert failures == ["t-bad"]
        system.failure("db")
        system.drain()  # the runner thread is alive: this does not time out
        assert later == ["db"]
    finally:
        telemetry.detach("t-watch")
        telemetry.detach("t-later")
        telemetry.detach("t-bad")


def test_telemetry_attach_validation() -> None:
    """attach refuses duplicate ids, bad prefixes and non-callables."""
    telemetry.attach("t-dup", ("brama",), print)
    try:
        with pytest.raises(ValueError, match="already"):
            telemetry.attach("t-dup", ("brama",), print)
    finally:
        telemetry.detach("t-dup")
    with pytest.raises(TypeError):
        telemetry.attach("t-x", ("brama", 1), print)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        telemetry.attach("t-x", ("brama",), 3)  # type: ignore[arg-type]
    assert telemetry.detach("never") is False


# -- ConnectionMonitor ----------------------------------------------------------------------


class OpenAlerts(ConnectionMonitor):
    subscribe = {"events": ["state_change"]}

    def __init__(self, alerts: list[str], done: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alerts = alerts
        self.done = done

    def handle_event(self, event: Event) -> None:
        if event.data["new_state"] == "open":
            self.alerts.append(f"Circuit opened for {event.connection}")
            self.done.set()
        if event.data["new_state"] == "half_open":
            raise RuntimeError("a bug in the monitor must not stop it")


def test_connection_monitor(system: Brama, clock: ManualClock) -> None:
    """A ConnectionMonitor subclass subscribes on start and handles events."""
    alerts: list[str] = []
    done = threading.Event()
    ref = OpenAlerts.start(alerts, done, brama=system)
    system.register("payment_api", max_attempts=1, expiry=10)
    system.failure("payment_api")
    assert done.wait(5)
    clock.advance(10)  # half_open: handle_event raises; the monitor lives on
    system.drain()
    done.clear()
    system.failure("payment_api")
    assert done.wait(5)
    assert alerts == ["Circuit opened for payment_api"] * 2
    ref.stop()
    assert system.unsubscribe(subscriber=ref) == 0


def test_connection_monitor_constructor_filters(system: Brama) -> None:
    """subscribe= given to start() overrides the class attribute; bad keys are refused."""
    alerts: list[str] = []
    done = threading.Event()
    ref = OpenAlerts.start(alerts, done, brama=system,
                           subscribe={"events": ["state_change"], "connection": "other"})
    system.register("db", max_attempts=1)
    system.register("other", max_attempts=1)
    system.failure("db")
    system.failure("other")
    assert done.wait(5)
    system.drain()
    assert alerts == ["Circuit opened for other"]
    ref.stop()
    with pytest.raises(TypeError, match="subscribe"):
        OpenAlerts([], threading.Event(), subscribe={"handler": print})


def test_connection_monitor_default_system() -> None:
    """Without brama= the monitor watches the default system."""
    alerts: list[str] = []
    done = threading.Event()
    ref = OpenAlerts.start(alerts, done)
    brama_actors.register("db", max_attempts=1)
    brama_actors.failure("db")
    assert done.wait(5)
    ref.stop()


def test_statistics_count_batched_events_as_pending(system: Brama) -> None:
    """Events held in an unflushed batch count as pending; actor targets hold none."""
    sub = system.subscribe(events=["failure"], batch_size=10)
    ref = Collector.start([])
    actor_sub = system.subscribe(subscriber=ref, events=["failure"])
    system.register("db", max_attempts=100)
    for _ in range(3):
        system.failure("db")
    subscriptions(system)  # the manager has batched them
    assert sub.statistics().pending == 3
    with pytest.raises(queue.Empty):
        sub.get(timeout=0)
    system.drain()  # flushes the batch into the inbox: still pending, now there
    assert sub.statistics().pending == 3
    assert len(sub.get(timeout=0)) == 3  # type: ignore[arg-type]
    assert sub.statistics().delivered == 3
    stats = actor_sub.statistics()
    assert (stats.delivered, stats.pending) == (3, 0)


def test_unsubscribe_by_subscriber_removes_that_actors_subscriptions(system: Brama) -> None:
    """unsubscribe(subscriber=ref) removes every subscription of that actor, whoever made it."""
    ref = Collector.start([])
    other = Collector.start([])
    system.subscribe(subscriber=ref)
    system.subscribe(subscriber=other)
    theirs: list[Any] = []
    thread = threading.Thread(
        target=lambda: theirs.append(system.subscribe(subscriber=ref)))
    thread.start()
    thread.join(5)
    assert system.unsubscribe(subscriber=ref) == 2
    assert system.unsubscribe(theirs[0]) is False
    assert system.unsubscribe(subscriber=other) == 1


class SelfSubscriber(pykka.ThreadingActor):
    """Subscribes itself from on_start (no subscriber= given)."""

    use_daemon_thread = True

    def __init__(self, brama: Brama, seen: list[str]) -> None:
        super().__init__()
        self.brama = brama
        self.seen = seen

    def on_start(self) -> None:
        self.brama.subscribe(events=["failure"])

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and message[0] == "brama_event":
            self.seen.append(message[1].event.value)
        return None


def test_actor_that_subscribed_itself_can_be_detached_from_outside(system: Brama) -> None:
    """An actor that subscribed itself is detached by unsubscribe(subscriber=ref) elsewhere."""
    seen: list[str] = []
    ref = SelfSubscriber.start(system, seen)
    assert ref.ask("sync", timeout=5) is None  # on_start (and its subscribe) ran first
    system.register("db")
    system.failure("db")
    system.drain()
    assert ref.ask("sync", timeout=5) is None  # the actor handled what was told before
    assert seen == ["failure"]
    assert system.unsubscribe(subscriber=ref) == 1
    system.failure("db")
    system.drain()
    assert ref.ask("sync", timeout=5) is None
    assert seen == ["failure"]


def test_event_manager_crash_returns_batches_in_order(system: Brama) -> None:
    """Unflushed batches go back to their own subscription, before later events."""
    batched = system.subscribe(events=["failure", "state_change"], batch_size=100)
    plain = system.subscribe(events=["failure"])
    system.register("db", max_attempts=3)
    system.failure("db")
    system.failure("db")
    inject_event_manager_crash(brama=system)
    system.failure("db")  # crashes the manager: failure, circuit_opened, state_change
    system.drain(timeout=5)
    items: list[Event] = []
    while True:
        try:
            got = batched.get(timeout=0)
        except queue.Empty:
            break
        items.extend(got if isinstance(got, tuple) else (got,))
    counts = [e.data["failure_count"] for e in items if e.event == "failure"]
    assert counts == [1, 2]  # the crashed message's non-critical failure is not replayed
    assert [e.event.value for e in items][-1] == "state_change"
    assert [e.data["failure_count"] for e in collect(plain)] == [1, 2]  # no duplicates


# -- fan-out cost ---------------------------------------------------------------------------


def test_readers_are_woken_once_per_event_manager_run(
        system: Brama, monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst fanned out in one run wakes each inbox reader once, not once per event."""
    from brama_actors._delivery._targets import InboxTarget

    wakes: dict[int, int] = {}
    original = InboxTarget.wake

    def counting_wake(self: InboxTarget) -> None:
        wakes[id(self)] = wakes.get(id(self), 0) + 1
        original(self)

    monkeypatch.setattr(InboxTarget, "wake", counting_wake)
    entered, gate = threading.Event(), threading.Event()

    def hold(event: Event) -> bool:  # filters run in the event manager: this holds it
        entered.set()
        return gate.wait(5) and False

    system.subscribe(connection="gate", filter=hold)
    inboxes = [system.subscribe(connection="db") for _ in range(3)]
    system.register("gate")
    assert entered.wait(5)
    system.register("db", max_attempts=100)
    for _ in range(20):
        system.failure("db")  # applied now; its event waits behind the held manager
    gate.set()
    system.drain()
    for inbox in inboxes:
        assert kinds(collect(inbox)).count("failure") == 20
        assert wakes[id(inbox.target)] == 1


def test_connection_filtered_index_entries_go_with_their_subscriptions(system: Brama) -> None:
    """Unsubscribing the last subscription of a connection or scope leaves no entry behind."""
    subs = [system.subscribe(connection=f"c{i}", events=["failure"]) for i in range(50)]
    subs += [system.subscribe(scope=f"s{i}") for i in range(50)]
    system.drain()
    interest = system._delivery.interest
    assert interest.wants(brama_actors.EventType.FAILURE, "c7", None)
    assert not interest.wants(brama_actors.EventType.SUCCESS, "c7", None)
    assert interest.wants(brama_actors.EventType.SUCCESS, "x", "s3")
    for sub in subs:
        assert sub.unsubscribe()
    # The interest view shares the manager's indexes; unsubscribe() asked the manager.
    assert interest._by_connection == {}
    assert interest._by_scope == {}
    assert not system._delivery.interest.wants(brama_actors.EventType.FAILURE, "c7", None)


def _hold_event_manager(system: Brama) -> tuple[threading.Event, threading.Event]:
    """Hold the event manager in a filter (they run there) until the gate opens."""
    entered, gate = threading.Event(), threading.Event()

    def hold(event: Event) -> bool:
        entered.set()
        return gate.wait(10) and False

    system.subscribe(connection="gate", filter=hold)
    system.register("gate")
    assert entered.wait(5)
    return entered, gate


def test_reporters_wait_for_an_event_manager_that_falls_behind(
        system: Brama, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the high-water mark reporting threads wait for the manager; nothing is lost."""
    from brama_actors._delivery import _hub as _system

    monkeypatch.setattr(_system, "EM_HIGH_WATER", 50)
    monkeypatch.setattr(_system, "EM_LOW_WATER", 10)
    monkeypatch.setattr(_system, "EM_WAIT", 30.0)
    inbox = system.subscribe(connection="db", max_pending=10_000)
    system.register("db", max_attempts=10**6)
    _, gate = _hold_event_manager(system)
    done = [0]
    progress = threading.Condition()

    def report() -> None:
        for _ in range(200):
            system.failure("db")
            with progress:
                done[0] += 1
                progress.notify_all()

    reporter = threading.Thread(target=report)
    reporter.start()
    hub = system._delivery
    try:
        with progress:  # it stops once the backlog passes the mark, and waits there
            assert progress.wait_for(lambda: hub._waiting == 1, 5)
        # 50 reports queued plus the one Drain message on its way (> 50): it waits
        # before its 51st report.
        assert done[0] == 50
        assert hub.backlog() == 51
    finally:
        gate.set()
    reporter.join(10)
    assert not reporter.is_alive()
    system.drain()
    assert kinds(collect(inbox)).count("failure") == 200


def test_events_queued_while_the_manager_is_busy_travel_in_one_message(
        system: Brama) -> None:
    """Reports made while the manager is busy queue their events behind one Drain
    message (not a message each); they are delivered in order once it is free."""
    inbox = system.subscribe(connection="db", max_pending=10_000)
    system.register("db", max_attempts=10**6)
    _, gate = _hold_event_manager(system)
    hub = system._delivery
    try:
        for i in range(100):
            system.failure("db", reason=i)
        assert hub.ref.actor_inbox.backlog() == 1  # type: ignore[attr-defined]
        assert hub.backlog() == 101
    finally:
        gate.set()
    system.drain()
    failures = [e for e in collect(inbox) if e.event == "failure"]
    assert [e.data["reason"] for e in failures] == list(range(100))


def test_a_stuck_event_manager_delays_reporters_once(
        system: Brama, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A manager that makes no progress costs one wait of EM_WAIT, not one per report."""
    from brama_actors._delivery import _hub as _system

    monkeypatch.setattr(_system, "EM_HIGH_WATER", 20)
    monkeypatch.setattr(_system, "EM_LOW_WATER", 5)
    monkeypatch.setattr(_system, "EM_WAIT", 0.2)
    system.register("db", max_attempts=10**6)
    system.subscribe(connection="db")
    _, gate = _hold_event_manager(system)
    waits: list[bool] = []
    original = system._delivery._space.wait_for

    def counting(predicate: Any, timeout: float | None = None) -> bool:
        waits.append(result := original(predicate, timeout))
        return result

    monkeypatch.setattr(system._delivery._space, "wait_for", counting)
    try:
        with caplog.at_level(logging.WARNING, logger="brama_actors"):
            for _ in range(300):
                system.failure("db")
    finally:
        gate.set()
    assert waits == [False]  # one wait, timed out; the other reports went straight on
    assert "made no progress" in caplog.text
    system.drain()
    assert system.status("db").failure_count == 300


# -- coroutine handlers ---------------------------------------------------------------------


def test_coroutine_handler_runs_on_the_subscribing_loop_in_order(system: Brama) -> None:
    """An async def handler runs on the loop running at subscribe, one event at a time."""
    system.register("db", max_attempts=100)

    async def main() -> tuple[list[int], set[int], int]:
        loop_thread = threading.get_ident()
        seen: list[int] = []
        threads: set[int] = set()
        running = 0
        overlap = 0

        async def handler(event: Event) -> None:
            nonlocal running, overlap
            running += 1
            overlap = max(overlap, running)
            threads.add(threading.get_ident())
            await asyncio.sleep(0)  # yields: a concurrent second call would overlap here
            seen.append(event.data["failure_count"])
            running -= 1

        system.subscribe(events=["failure"], handler=handler)
        for _ in range(20):
            system.failure("db")
        await asyncio.to_thread(system.drain)  # drain from another thread: the loop runs
        assert threads == {loop_thread}
        return seen, threads, overlap

    seen, _, overlap = asyncio.run(main())
    assert seen == list(range(1, 21))
    assert overlap == 1


def test_handle_event_coroutine_method_is_awaited(system: Brama) -> None:
    """An object whose handle_event is async def runs on the loop like a coroutine handler."""
    class Handler:
        def __init__(self) -> None:
            self.seen: list[str] = []

        async def handle_event(self, event: Event) -> None:
            self.seen.append(event.event.value)

    async def main() -> list[str]:
        handler = Handler()
        system.subscribe(events=["registration"], handler=handler)
        system.register("db")
        await asyncio.to_thread(system.drain)
        return handler.seen

    assert asyncio.run(main()) == ["registration"]


def test_coroutine_handler_outside_a_loop_is_refused(system: Brama) -> None:
    """subscribe(handler=<async def>) outside a running loop raises TypeError naming aget."""
    async def handler(event: Event) -> None:
        return None

    with pytest.raises(TypeError, match=r"aget\(\)"):
        system.subscribe(handler=handler)


def test_coroutine_handler_failures_follow_handler_rules(system: Brama) -> None:
    """A raising coroutine handler is retried on critical events, then counted as failed."""
    system.register("db", max_attempts=1)
    calls: list[str] = []

    async def handler(event: Event) -> None:
        calls.append(event.event.value)
        raise RuntimeError("handler bug")

    async def main() -> Any:
        sub = system.subscribe(events=["failure", "state_change"], handler=handler)
        system.failure("db")
        await asyncio.to_thread(system.drain)
        return sub.statistics()

    stats = asyncio.run(main())
    assert calls == ["failure"] + ["state_change"] * 4  # critical: 1 + 3 retries
    assert (stats.delivered, stats.failed) == (0, 2)


def test_drain_on_the_handlers_own_loop_is_refused(system: Brama) -> None:
    """drain() on the loop running a coroutine handler raises instead of deadlocking."""
    async def handler(event: Event) -> None:
        return None

    async def main() -> None:
        system.subscribe(handler=handler)
        with pytest.raises(RuntimeError, match="to_thread"):
            system.drain()
        await asyncio.to_thread(system.drain)

    asyncio.run(main())


def test_stop_abandons_a_blocked_coroutine_handler(clock: ManualClock) -> None:
    """stop() from another thread cancels a coroutine handler still blocked after its wait."""
    brama = Brama.start(clock=clock)
    handled: list[str] = []

    async def main() -> bool:
        forever = asyncio.Event()
        entered = asyncio.Event()

        async def handler(event: Event) -> None:
            handled.append(event.event.value)
            entered.set()
            await forever.wait()

        sub = brama.subscribe(events=["registration", "connection_registered"],
                              handler=handler)
        brama.register("db")
        await entered.wait()
        await asyncio.to_thread(brama.stop, 0.3)
        target = sub.target
        for _ in range(10):  # the cancellation runs on this loop
            await asyncio.sleep(0)
        return target.running

    assert asyncio.run(main()) is False
    assert handled == ["registration"]


def test_local_events_have_unique_ids_that_survive_pickling() -> None:
    """Every event of a local system carries an id of its own (API.md section 5), and
    pickling keeps it (events cross processes that way)."""
    import pickle

    with Brama.start(max_attempts=2) as brama:
        sub = brama.subscribe()
        brama.register("db")
        brama.failure("db")
        brama.failure("db")
        brama.drain()
        events = collect(sub)
    ids = [e.id for e in events]
    assert len(events) == 6  # 2 of registration, 2 failures, opened, state_change
    assert all(ids) and len(set(ids)) == len(ids)
    assert pickle.loads(pickle.dumps(events[-1])).id == events[-1].id

# -- the queue to the event manager and counted failures (review findings) ----------------


def _break_first_drain_tell(hub: Any, exc: BaseException) -> threading.Event:
    """Make the first tell(DRAIN) of ``Delivery.publish`` raise ``exc``; the returned
    event is set when it did."""
    original = hub.ref.tell
    broke = threading.Event()

    def tell(message: Any) -> None:
        if message is DRAIN and not broke.is_set():
            broke.set()
            raise exc
        original(message)

    hub.ref.tell = tell
    return broke


def test_an_exception_while_telling_the_manager_does_not_stop_delivery(system: Brama) -> None:
    """An exception while a reporter tells the manager (KeyboardInterrupt, MemoryError)
    does not leave the queue marked as signalled: later reports still reach subscribers
    without anybody calling drain()."""
    sub = system.subscribe(events=["failure"], max_pending=100)
    system.register("db", max_attempts=100)
    system.failure("db")
    system.drain()
    collect(sub)
    hub = system._delivery
    broke = _break_first_drain_tell(hub, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        system.failure("db", reason="interrupted")
    assert broke.is_set()
    # Later reports by other threads, no drain(): their events should still arrive.
    t = threading.Thread(target=lambda: [system.failure("db", reason=i) for i in range(3)])
    t.start()
    t.join(5)
    try:
        got = sub.get(timeout=2)
    except queue.Empty:
        got = None
    assert got is not None, (hub._signalled, len(hub._queued))


def test_a_failure_counted_after_subscribe_returned_emits_its_event(
        system: Brama, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subscription that became active between a reporter's first interest check and
    its count gets the failure event (interest is checked again under the claim)."""
    system.register("db", max_attempts=100)
    system.failure("db")  # starts the lazy actor
    reporter_at_claim, go = threading.Event(), threading.Event()
    original = _pool._PooledInbox.claim
    reporter: list[threading.Thread] = []

    def claim(self: Any) -> Any:
        if reporter and threading.current_thread() is reporter[0] and not go.is_set():
            reporter_at_claim.set()
            assert go.wait(10)
        return original(self)

    monkeypatch.setattr(_pool._PooledInbox, "claim", claim)
    t = threading.Thread(target=lambda: system.failure("db", reason="late"))
    reporter.append(t)
    t.start()
    assert reporter_at_claim.wait(5)
    sub = system.subscribe(events=["failure"], connection="db")  # active on return
    go.set()
    t.join(5)
    assert system.status("db").failure_count == 2
    system.drain()
    assert [e.data["reason"] for e in collect(sub)] == ["late"]
