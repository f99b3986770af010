"""The system and its connections (docs/circuit-rules.md and docs/events.md) on a real actor
system."""

from __future__ import annotations

import pickle
import sys
import threading
from typing import Any

import pytest

import brama_actors
from brama_actors import (
    AlreadyRegistered,
    Brama,
    CircuitState,
    ConnectionNotFound,
    InvalidIdentifier,
    SystemStopped,
)
from brama_actors.testing import ManualClock
from tests.conftest import collect, kinds

T0 = 1_700_000_000_000


# -- lifecycle ---------------------------------------------------------------------------


def test_context_manager_stops() -> None:
    """`with Brama.start()` stops the system on exit and leaves no brama thread."""
    with Brama.start() as brama:
        brama.register("a")
        assert any(t.name.startswith("brama-") for t in threading.enumerate())
    assert brama.stopped
    assert not [t for t in threading.enumerate() if t.name.startswith("brama-")]


def test_stop_is_idempotent_and_calls_raise() -> None:
    """stop() twice is fine; every call afterwards raises SystemStopped."""
    brama = Brama.start(clock=ManualClock())
    brama.register("a")
    brama.stop()
    brama.stop()
    for call in (
        lambda: brama.register("b"),
        lambda: brama.available("a"),
        lambda: brama.success("a"),
        lambda: brama.failure("a"),
        lambda: brama.status("a"),
        brama.connections,
        lambda: brama.open_circuit("a"),
        lambda: brama.close_circuit("a"),
        lambda: brama.reset_circuit("a"),
        lambda: brama.unregister("a"),
        lambda: brama.configure(max_attempts=2),
        lambda: brama.configure("a", max_attempts=2),
        brama.subscribe,
        brama.drain,
    ):
        with pytest.raises(SystemStopped):
            call()


def test_all_threads_are_daemon_threads() -> None:
    """Every thread a system starts is a daemon thread, so it cannot hang interpreter exit."""
    with Brama.start() as brama:
        brama.register("a")
        brama.subscribe(handler=lambda event: None)
        ours = [t for t in threading.enumerate() if t.name.startswith("brama-")]
        assert ours
        assert all(t.daemon for t in ours)


def test_systems_are_isolated(clock: ManualClock) -> None:
    """Two systems never see each other's connections, subscriptions or events."""
    one = Brama.start(clock=clock)
    two = Brama.start(clock=clock)
    sub_two = two.subscribe()
    one.register("db")
    assert not two.available("db")
    with pytest.raises(ConnectionNotFound):
        two.status("db")
    two.register("db", max_attempts=1)
    one.failure("db")
    assert two.available("db")
    one.drain()
    two.drain()
    assert kinds(collect(sub_two)) == ["registration", "connection_registered"]


def test_brama_cannot_be_constructed_directly() -> None:
    """Brama() must go through Brama.start()."""
    with pytest.raises(TypeError, match=r"Brama\.start"):
        Brama()


def test_clock_and_supervisor_properties(system: Brama, clock: ManualClock) -> None:
    """brama.clock is the injected clock; brama.supervisor a live ActorRef."""
    assert system.clock is clock
    assert system.supervisor.is_alive()


# -- connections ---------------------------------------------------------------------------


def test_register_returns_status(system: Brama) -> None:
    """register returns the new connection's closed status with the given settings."""
    status = system.register("db", scope="eu", type="database", max_attempts=3,
                             metadata={"host": "x"})
    assert status.identifier == "db"
    assert status.scope == "eu"
    assert status.type == "database"
    assert status.state is CircuitState.CLOSED
    assert status.state == "closed"
    assert status.failure_count == 0
    assert status.max_attempts == 3
    assert status.registered_at == T0
    assert status.state_changed_at == T0
    assert status.opened_at is None
    assert status.success_rate is None
    assert dict(status.metadata) == {"host": "x"}
    with pytest.raises(TypeError):
        status.metadata["y"] = 1  # type: ignore[index]


def test_register_twice_raises(system: Brama) -> None:
    """Registering an existing (identifier, scope) raises AlreadyRegistered."""
    system.register("db")
    with pytest.raises(AlreadyRegistered, match="'db'"):
        system.register("db")
    system.register("db", scope="eu")
    with pytest.raises(AlreadyRegistered, match="'eu'"):
        system.register("db", scope="eu")


@pytest.mark.parametrize("identifier", ["", None, 3, b"db", ["db"], ("db",)])
def test_bad_identifier(system: Brama, identifier: object) -> None:
    """Identifiers must be non-empty str: anything else raises InvalidIdentifier."""
    for call in (
        lambda: system.register(identifier),  # type: ignore[arg-type]
        lambda: system.available(identifier),  # type: ignore[arg-type]
        lambda: system.failure(identifier),  # type: ignore[arg-type]
        lambda: system.success(identifier),  # type: ignore[arg-type]
        lambda: system.status(identifier),  # type: ignore[arg-type]
        lambda: system.unregister(identifier),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidIdentifier):
            call()


@pytest.mark.parametrize("scope", ["", 3, b"eu", ["eu"]])
def test_bad_scope(system: Brama, scope: object) -> None:
    """Scopes must be None or non-empty str."""
    with pytest.raises(InvalidIdentifier):
        system.register("db", scope=scope)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifier):
        system.available("db", scope=scope)  # type: ignore[arg-type]


def test_same_identifier_two_scopes(system: Brama) -> None:
    """The same identifier in two scopes is two independent connections."""
    system.register("db", scope="eu", max_attempts=1)
    system.register("db", scope="us", max_attempts=1)
    system.failure("db", scope="eu")
    assert not system.available("db", scope="eu")
    assert system.available("db", scope="us")
    assert not system.available("db")


def test_unknown_connection_errors(system: Brama) -> None:
    """Operations on an unknown connection raise ConnectionNotFound (a LookupError)."""
    for call in (
        lambda: system.success("x"),
        lambda: system.failure("x"),
        lambda: system.status("x", scope="s"),
        lambda: system.open_circuit("x"),
        lambda: system.close_circuit("x"),
        lambda: system.reset_circuit("x"),
        lambda: system.configure("x", max_attempts=1),
    ):
        with pytest.raises(ConnectionNotFound) as info:
            call()
        assert isinstance(info.value, LookupError)
        assert "'x'" in str(info.value)
    assert system.available("x") is False
    assert system.unregister("x") is False


def test_unregister(system: Brama) -> None:
    """unregister returns True once, removes the connection and allows re-registration."""
    system.register("db")
    assert system.unregister("db") is True
    assert system.unregister("db") is False
    assert system.available("db") is False
    with pytest.raises(ConnectionNotFound):
        system.failure("db")
    assert system.register("db").failure_count == 0


def test_connections_listing(system: Brama) -> None:
    """connections() lists all, or those of one scope (None = unscoped)."""
    system.register("a")
    system.register("b", scope="eu")
    system.register("c", scope="eu")
    assert {s.identifier for s in system.connections()} == {"a", "b", "c"}
    assert [s.identifier for s in system.connections(scope=None)] == ["a"]
    assert sorted(s.identifier for s in system.connections(scope="eu")) == ["b", "c"]
    assert system.connections(scope="us") == []


def test_status_is_frozen_and_picklable(system: Brama) -> None:
    """ConnectionStatus is a frozen, picklable snapshot."""
    status = system.register("db", metadata={"k": [1]})
    with pytest.raises(AttributeError):
        status.failure_count = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(status)) == status


def test_bad_metadata(system: Brama) -> None:
    """metadata must be a mapping."""
    with pytest.raises(TypeError, match="metadata"):
        system.register("db", metadata=[1, 2])  # type: ignore[arg-type]
    system.register("db")
    with pytest.raises(TypeError, match="metadata"):
        system.failure("db", metadata="x")  # type: ignore[arg-type]


# -- circuit behaviour through the actors ---------------------------------------------


def test_failures_open_the_circuit(system: Brama) -> None:
    """max_attempts consecutive failures open the circuit; available() turns False."""
    system.register("db", max_attempts=3)
    for _ in range(2):
        system.failure("db")
        assert system.available("db")
    system.failure("db", reason="timeout")
    assert not system.available("db")
    status = system.status("db")
    assert status.state == "open"
    assert status.failure_count == 3
    assert status.total_failures == 3
    assert status.opened_at == T0


def test_success_resets_count(system: Brama) -> None:
    """A success in closed resets failure_count, so failures must be consecutive."""
    system.register("db", max_attempts=2)
    system.failure("db")
    system.success("db")
    assert system.status("db").failure_count == 0
    system.failure("db")
    assert system.available("db")
    assert system.status("db").success_rate == pytest.approx(1 / 3)


def test_expiry_moves_to_half_open_then_success_closes(system: Brama, clock: ManualClock) -> None:
    """An open circuit goes half_open at its deadline by itself; a success closes it."""
    system.register("db", max_attempts=1, expiry=1000)
    system.failure("db")
    clock.advance(999)
    assert system.status("db").state == "open"
    clock.advance(1)
    assert system.status("db").state == "half_open"
    assert system.available("db")
    system.success("db")
    assert system.status("db").state == "closed"


def test_half_open_failure_reopens_with_fresh_expiry(system: Brama, clock: ManualClock) -> None:
    """A failure in half_open opens again with a fresh deadline."""
    system.register("db", max_attempts=1, expiry=1000)
    system.failure("db")
    clock.advance(1000)
    system.failure("db", reason="still down")
    status = system.status("db")
    assert status.state == "open"
    assert status.opened_at == T0 + 1000
    clock.advance(999)
    assert system.status("db").state == "open"
    clock.advance(1)
    assert system.status("db").state == "half_open"


def test_progressive_expiry(system: Brama, clock: ManualClock) -> None:
    """Progressive strategy: initial 100, factor 2, max 1000; two failures -> 400 ms."""
    system.register("db", expiry_strategy="progressive", initial_expiry=100,
                    backoff_factor=2.0, max_expiry=1000, max_attempts=10)
    system.failure("db")
    system.failure("db")
    system.open_circuit("db")
    assert system.status("db").expiry == 400
    clock.advance(399)
    assert not system.available("db")
    clock.advance(1)
    assert system.available("db")


def test_manual_open_with_expiry(system: Brama, clock: ManualClock) -> None:
    """open_circuit(expiry=...) opens for that long and shows it in status.expiry."""
    system.register("db")
    system.open_circuit("db", expiry=50, reason="maintenance")
    assert system.status("db").expiry == 50
    clock.advance(50)
    assert system.status("db").state == "half_open"


def test_open_on_open_restarts_opening(system: Brama, clock: ManualClock) -> None:
    """open_circuit on an open circuit moves opened_at and the deadline."""
    system.register("db", expiry=100)
    system.open_circuit("db")
    clock.advance(60)
    system.open_circuit("db")
    assert system.status("db").opened_at == T0 + 60
    clock.advance(60)
    assert system.status("db").state == "open"
    clock.advance(40)
    assert system.status("db").state == "half_open"


def test_manual_close_cancels_expiry(system: Brama, clock: ManualClock) -> None:
    """close_circuit closes now; the old deadline does nothing later."""
    sub = system.subscribe()
    system.register("db", max_attempts=1, expiry=100)
    system.failure("db")
    system.close_circuit("db")
    assert system.status("db").failure_count == 1
    clock.advance(1000)
    system.drain()
    assert "expiry" not in kinds(collect(sub))
    assert system.status("db").state == "closed"


def test_reset(system: Brama) -> None:
    """reset_circuit closes and zeroes failure_count."""
    system.register("db", max_attempts=1)
    system.failure("db")
    system.reset_circuit("db")
    status = system.status("db")
    assert (status.state, status.failure_count) == ("closed", 0)


def test_open_circuit_rejects_bad_expiry(system: Brama) -> None:
    """open_circuit(expiry=0) raises InvalidConfiguration and leaves the circuit closed."""
    system.register("db")
    with pytest.raises(brama_actors.InvalidConfiguration, match="expiry"):
        system.open_circuit("db", expiry=0)
    assert system.available("db")


# -- read-your-writes ---------------------------------------------------------------------


def test_failure_visible_from_other_thread(system: Brama) -> None:
    """After failure() returns, available() in another thread reflects it."""
    system.register("db", max_attempts=1)
    system.failure("db")
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(system.available("db")))
    thread.start()
    thread.join(5)
    assert seen == [False]


def test_success_visible_to_same_thread(system: Brama) -> None:
    """After success() returns, status() from the same thread reflects it."""
    system.register("db")
    for i in range(1, 200):
        system.success("db")
        assert system.status("db").total_successes == i


# -- events --------------------------------------------------------------------------------


def test_event_sequence_for_a_full_cycle(system: Brama, clock: ManualClock) -> None:
    """Each operation emits the events of docs/events.md, in order."""
    sub = system.subscribe(connection="db")
    system.register("db", max_attempts=2, expiry=100)
    system.failure("db", reason="a")
    system.failure("db", reason="b")
    system.failure("db", reason="c")
    system.success("db")
    clock.advance(100)
    system.success("db")
    system.open_circuit("db")
    system.open_circuit("db")
    system.close_circuit("db")
    system.close_circuit("db")
    system.reset_circuit("db")
    system.open_circuit("db")
    system.reset_circuit("db")
    system.unregister("db")
    system.drain()
    assert kinds(collect(sub)) == [
        "registration", "connection_registered",
        "failure",
        "failure", "circuit_opened", "state_change",
        "failure",
        "success",
        "expiry", "circuit_half_opened", "state_change",
        "success", "circuit_closed", "state_change",
        "circuit_opened", "state_change",
        "circuit_opened",
        "circuit_closed", "state_change",
        "circuit_reset",
        "circuit_opened", "state_change",
        "circuit_reset", "state_change",
        "connection_unregistered", "connection_removed",
    ]


def test_event_fields_and_data(system: Brama, clock: ManualClock) -> None:
    """Events carry timestamp, connection, scope and the documented data keys."""
    sub = system.subscribe()
    system.register("db", scope="eu", max_attempts=1, expiry=100, metadata={"m": 1})
    clock.advance(5)
    system.failure("db", scope="eu", reason="boom")
    system.drain()
    events = collect(sub)
    registration = events[0]
    assert registration.connection == "db"
    assert registration.scope == "eu"
    assert registration.timestamp == T0
    for key in ("type", "max_attempts", "expiry", "expiry_strategy", "initial_expiry",
                "max_expiry", "backoff_factor", "half_open_max_calls", "metadata",
                "state", "failure_count"):
        assert key in registration.data
    failure, opened, change = events[2:]
    assert failure.timestamp == T0 + 5
    assert failure.data["state"] == "open"
    assert failure.data["reason"] == "boom"
    assert opened.data["reason"] == "Threshold exceeded"
    assert opened.data["opened_at"] == T0 + 5
    assert opened.data["expiry"] == 100
    assert change.data["previous_state"] == "closed"
    assert change.data["new_state"] == "open"
    assert change.event == "state_change"
    with pytest.raises(TypeError):
        change.data["x"] = 1  # type: ignore[index]


def test_manual_reasons(system: Brama) -> None:
    """Manual calls carry the given reason, else 'Manually opened/closed/reset'."""
    sub = system.subscribe(events=["state_change"])
    system.register("db")
    system.open_circuit("db")
    system.close_circuit("db")
    system.open_circuit("db", reason="deploy")
    system.reset_circuit("db")
    system.drain()
    assert [e.data["reason"] for e in collect(sub)] == [
        "Manually opened", "Manually closed", "deploy", "Manually reset"]


def test_subscription_filters(system: Brama) -> None:
    """events, connection and scope filters combine."""
    by_type = system.subscribe(events=["failure"])
    by_conn = system.subscribe(connection="a")
    by_scope = system.subscribe(scope="eu")
    combined = system.subscribe(events=["failure"], connection="a", scope="eu")
    system.register("a")
    system.register("a", scope="eu")
    system.register("b", scope="eu")
    system.failure("a")
    system.failure("a", scope="eu")
    system.failure("b", scope="eu")
    system.drain()
    assert [(e.connection, e.scope) for e in collect(by_type)] == [
        ("a", None), ("a", "eu"), ("b", "eu")]
    assert {e.scope for e in collect(by_conn)} == {None, "eu"}
    assert {e.connection for e in collect(by_scope)} == {"a", "b"}
    assert [(e.event, e.connection, e.scope) for e in collect(combined)] == [
        ("failure", "a", "eu")]


def test_unknown_event_name_rejected(system: Brama) -> None:
    """subscribe(events=[unknown]) raises ValueError at subscribe time."""
    with pytest.raises(ValueError, match="nope"):
        system.subscribe(events=["state_change", "nope"])


def test_unsubscribe_stops_delivery(system: Brama) -> None:
    """After unsubscribe(sub) no more events arrive; a second unsubscribe is False."""
    sub = system.subscribe()
    assert system.unsubscribe(sub) is True
    assert system.unsubscribe(sub) is False
    system.register("a")
    system.drain()
    assert collect(sub) == []


# -- cleanup -------------------------------------------------------------------------------


def test_cleanup_removes_inactive(clock: ManualClock) -> None:
    """The sweep removes connections inactive longer than inactive_threshold."""
    brama = Brama.start(clock=clock, cleanup_interval=1000, inactive_threshold=3500)
    sub = brama.subscribe(events=["cleanup", "connection_removed"])
    brama.register("idle")
    brama.register("busy")
    clock.advance(1000)
    clock.advance(1000)
    brama.success("busy")
    clock.advance(1000)
    assert {s.identifier for s in brama.connections()} == {"idle", "busy"}
    clock.advance(1000)  # idle: 4000 ms since registration
    assert [s.identifier for s in brama.connections()] == ["busy"]
    brama.drain()
    events = collect(sub)
    assert kinds(events) == ["cleanup", "connection_removed"]
    assert all(e.connection == "idle" and e.data["reason"] == "inactive" for e in events)


def test_fresh_registration_is_active(clock: ManualClock) -> None:
    """A connection registered just before the sweep is not removed."""
    brama = Brama.start(clock=clock, cleanup_interval=1000, inactive_threshold=500)
    clock.advance(999)
    brama.register("new")
    clock.advance(1)
    assert [s.identifier for s in brama.connections()] == ["new"]


# -- stop while reporting -------------------------------------------------------------------


def test_stop_while_threads_report() -> None:
    """stop() during reporting from 8 threads returns; reporters get SystemStopped."""
    brama = Brama.start(max_attempts=1_000_000)
    for i in range(8):
        brama.register(f"c{i}")
    started = threading.Barrier(9)
    outcomes: list[str] = []
    lock = threading.Lock()

    def report(i: int) -> None:
        started.wait(5)
        try:
            while True:
                brama.failure(f"c{i}")
                brama.success(f"c{i}")
                brama.available(f"c{i}")
        except SystemStopped:
            with lock:
                outcomes.append("stopped")
        except Exception as exc:  # pragma: no cover - reported by the assertion
            with lock:
                outcomes.append(repr(exc))

    threads = [threading.Thread(target=report, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    started.wait(5)
    brama.status("c0")
    brama.stop(timeout=10)
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)
    assert outcomes == ["stopped"] * 8


# -- quiet successes and the interest table -----------------------------------------------


def test_quiet_successes_are_counted(system: Brama, clock: ManualClock) -> None:
    """Successes on a healthy circuit nobody listens to still count and time-stamp."""
    system.register("db")
    cell = system._authority.cells["db"]
    for _ in range(100):
        system.success("db")
    assert cell.inbox is not None and cell.inbox.idle()  # no actor message was needed
    clock.advance(7)
    system.success("db")
    status = system.status("db")
    assert status.total_successes == 101
    assert status.last_success_time == T0 + 7
    assert system.connections()[0].total_successes == 101
    system.failure("db")  # the actor folds the counters in before applying the failure
    status = system.status("db")
    assert (status.total_successes, status.total_failures) == (101, 1)


def test_success_events_when_someone_listens(system: Brama) -> None:
    """Once a success subscription exists, every success is emitted again."""
    system.register("db")
    system.success("db")
    sub = system.subscribe(events=["success"], connection="db")
    system.success("db")
    system.success("db", metadata={"latency_ms": 3})
    system.drain()
    events = collect(sub)
    assert kinds(events) == ["success", "success"]
    assert events[1].data["metadata"] == {"latency_ms": 3}
    assert system.status("db").total_successes == 3


def test_quiet_successes_count_as_activity(clock: ManualClock) -> None:
    """The cleanup sweep sees quiet successes as activity."""
    brama = Brama.start(clock=clock, cleanup_interval=1000, inactive_threshold=1500)
    brama.register("db")
    clock.advance(1000)
    brama.success("db")
    clock.advance(1000)
    assert [s.identifier for s in brama.connections()] == ["db"]


def test_success_after_failure_resets_count_from_any_thread(system: Brama) -> None:
    """After a failure the next success goes to the actor and resets failure_count."""
    system.register("db", max_attempts=3)
    system.failure("db")
    system.failure("db")
    system.success("db")
    assert system.status("db").failure_count == 0
    system.failure("db")
    system.failure("db")
    assert system.available("db")


def test_failures_that_only_count_need_no_actor_message(
        system: Brama, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failures below max_attempts on a closed circuit are counted by the reporting
    thread; readers see them at once, the actor folds them in before its next message,
    and the failure that reaches max_attempts still opens the circuit."""
    from brama_actors._authority._local._actor import ConnectionActor

    system.register("db", max_attempts=5)
    system.failure("db")  # the first message starts the (lazily started) actor
    handled: list[object] = []
    original = ConnectionActor._handle

    def spy(self: ConnectionActor, message: Any) -> Any:
        handled.append(message)
        return original(self, message)

    monkeypatch.setattr(ConnectionActor, "_handle", spy)
    clock.advance(5)
    system.failure("db")
    clock.advance(5)
    system.failure("db")
    assert handled == []
    cell = system._authority.cells["db"]
    assert cell.failures == (2, T0 + 10)
    status = system.status("db")
    assert (status.failure_count, status.total_failures) == (3, 3)
    assert status.last_failure_time == T0 + 10
    assert system.connections()[0].failure_count == 3
    system.failure("db")
    assert handled == []
    sub = system.subscribe(events=["failure", "circuit_opened"], connection="db")
    system.failure("db")  # the fifth: the actor applies it after folding the count in
    assert len(handled) == 1 and cell.failures is None
    assert not system.available("db")
    system.drain()
    assert [(e.event, e.data["failure_count"]) for e in collect(sub)] == [
        ("failure", 5), ("circuit_opened", 5)]
    assert system.status("db").total_failures == 5


def test_counted_failures_keep_their_events_in_order(system: Brama) -> None:
    """Failures from many threads, counted in place or applied by the actor when it is
    busy, emit one failure event each, in the order their counts were taken."""
    system.register("db", max_attempts=10**9)
    sub = system.subscribe(events=["failure"], connection="db", max_pending=10_000)
    system.failure("db")
    per_thread, threads = 500, 4
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait(10)
        for _ in range(per_thread):
            system.failure("db")

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    system.drain()
    counts = [event.data["failure_count"] for event in collect(sub)]
    total = 1 + per_thread * threads
    assert counts == list(range(1, total + 1))
    assert system.status("db").failure_count == total


def test_counted_failures_count_as_activity(clock: ManualClock) -> None:
    """The cleanup sweep sees failures counted in place as activity."""
    brama = Brama.start(clock=clock, cleanup_interval=1000, inactive_threshold=1500)
    try:
        brama.register("db")
        brama.failure("db")
        clock.advance(1000)
        brama.failure("db")  # counted in place
        assert brama._authority.cells["db"].failures is not None
        clock.advance(1000)
        assert [s.identifier for s in brama.connections()] == ["db"]
    finally:
        brama.stop()


def test_events_nobody_wants_are_not_built(system: Brama) -> None:
    """With no subscription the event manager receives nothing; with one, only its kinds."""
    system.configure(log_transitions=False)  # the transition log subscribes to state_change
    published: list[int] = []
    hub = system._delivery
    original = hub.publish

    def spy(events: tuple[object, ...]) -> None:
        published.append(len(events))
        original(events)  # type: ignore[arg-type]

    hub.publish = spy  # type: ignore[method-assign]
    system.register("db", max_attempts=1)
    system.failure("db")
    assert published == []
    sub = system.subscribe(events=["state_change"])
    system.reset_circuit("db")
    system.drain()
    assert published == [1]
    assert kinds(collect(sub)) == ["state_change"]


def test_reopen_in_the_same_millisecond_moves_the_deadline(system: Brama,
                                                           clock: ManualClock) -> None:
    """open_circuit twice in one ms: the second opening's expiry decides the deadline."""
    system.register("db", expiry=1000)
    system.open_circuit("db")
    system.open_circuit("db", expiry=500)
    assert system.status("db").expiry == 500
    clock.advance(500)
    assert system.status("db").state == "half_open"


def test_actors_see_a_complete_system_from_their_first_message(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Brama.start assigns everything actors read before the first actor runs."""
    import logging

    from brama_actors._runtime._pool import Pool

    # The fastest possible worker: an actor runs inside submit(), before start() returns.
    monkeypatch.setattr(Pool, "submit", lambda self, inbox: inbox.run())
    with caplog.at_level(logging.ERROR, logger="brama_actors"):
        brama = Brama.start(clock=ManualClock())
        brama.register("a")
        brama.failure("a")
        assert brama.status("a").failure_count == 1
        brama.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_call_racing_unregister_raises_not_found_not_crashed(system: Brama) -> None:
    """A call whose actor was stopped by unregister raises ConnectionNotFound at once."""
    authority = system._authority
    racing = {"on": False}

    class RacingCells(dict):  # type: ignore[type-arg]
        """Unregisters and re-registers the connection right after each lookup."""

        def get(self, key: Any, default: Any = None) -> Any:
            cell = super().get(key, default)
            if racing["on"] and key == "same" and cell is not None:
                racing["on"] = False
                system.unregister("same")
                system.register("same")
                racing["on"] = True
            return cell

    authority.cells = authority.views = RacingCells(authority.cells)
    system.register("same")
    racing["on"] = True
    with pytest.raises(ConnectionNotFound):
        system.failure("same")
    racing["on"] = False
    assert system.status("same").failure_count == 0  # the new connection is untouched


def test_handler_blocked_at_stop_runs_nothing_after_it_returns() -> None:
    """stop() leaves a blocked handler's thread; once it returns, nothing more runs there."""
    from brama_actors import telemetry

    brama = Brama.start(clock=ManualClock(), max_attempts=1)
    gate = threading.Event()
    entered = threading.Event()
    handled: list[str] = []
    reported: list[Any] = []

    def handler(event: Any) -> None:
        handled.append(event.event.value)
        entered.set()
        gate.wait(10)
        raise RuntimeError("after stop")  # a critical event: would be retried and reported

    telemetry.attach("t-after-stop", ("brama", "subscriber"),
                     lambda name, m, meta: reported.append(name))
    try:
        sub = brama.subscribe(events=["state_change", "circuit_closed"], handler=handler)
        brama.register("db")
        brama.failure("db")          # state_change: the handler blocks on it
        assert entered.wait(5)
        brama.close_circuit("db")    # circuit_closed, state_change: queued behind it
        runner = sub.target._thread  # type: ignore[attr-defined]
        brama.stop(timeout=0.5)
        assert runner.is_alive()     # blocked in user code: it cannot be killed
        gate.set()
        runner.join(5)
        assert not runner.is_alive()
        assert handled == ["state_change"]  # no retry, no queued event
        assert reported == []               # no failure telemetry from that thread
    finally:
        gate.set()
        telemetry.detach("t-after-stop")


def test_many_connections_stay_out_of_pykkas_registry_and_stop_leaves_no_thread() -> None:
    """20,000 connections add nothing to ActorRegistry; stop() ends every system thread."""
    import pykka

    listed = len(pykka.ActorRegistry.get_all())
    brama = Brama.start(clock=ManualClock())
    for i in range(20_000):
        brama.register(f"svc-{i}")
    brama.failure("svc-7")
    # The registry is one process-wide list whose unregister scans it: listing every
    # connection made stopping n of them O(n^2) (~7 s for 100,000).
    assert len(pykka.ActorRegistry.get_all()) == listed + 2  # supervisor, event manager
    workers = brama._context.pool.threads
    brama.stop()
    assert not any(t.is_alive() for t in workers)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("brama-")]
    with pytest.raises(SystemStopped):
        brama.failure("svc-7")


def test_a_registration_racing_an_unregister_is_announced_after_the_removal(
        system: Brama) -> None:
    """The removal's events are emitted before the connection is forgotten: a register
    from another thread that succeeds as soon as it is forgotten announces the new
    connection after the old one's removal, never before it."""
    sub = system.subscribe(
        events=["connection_registered", "connection_unregistered", "connection_removed"])
    rounds = 300
    system.register("svc")
    done = threading.Event()
    registered = threading.Semaphore(0)

    def re_register() -> None:
        for _ in range(rounds):
            while not done.is_set():
                try:
                    system.register("svc")
                except brama_actors.AlreadyRegistered:
                    continue
                registered.release()
                break

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=re_register)
    thread.start()
    try:
        for _ in range(rounds):
            assert system.unregister("svc")
            assert registered.acquire(timeout=10)
    finally:
        done.set()
        sys.setswitchinterval(old)
        thread.join(10)
    system.drain()
    seen = kinds(collect(sub))
    assert len(seen) == 1 + 3 * rounds
    expected = ["connection_registered"] + [
        "connection_unregistered", "connection_removed", "connection_registered"] * rounds
    assert seen == expected
