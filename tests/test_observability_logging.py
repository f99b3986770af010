"""The transition log (API.md section 14): one record per state change on logger
``"brama_actors"``, written by the system's own subscription in a handler thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import brama_actors
from brama_actors import Brama, InvalidConfiguration
from brama_actors._runtime import current_actor
from brama_actors._system import _brama as _system
from brama_actors.testing import ManualClock
from tests.conftest import collect, kinds, subscriptions

EXTRA = ("brama_connection", "brama_scope", "brama_state", "brama_previous_state",
         "brama_reason")


def x(record: logging.LogRecord, name: str) -> Any:
    """An ``extra`` field of a record."""
    return record.__dict__[name]


def _transitions(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "brama_actors" and hasattr(r, "brama_state")]


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog capturing ``brama_actors`` from INFO up."""
    caplog.set_level(logging.INFO, logger="brama_actors")
    yield caplog


def test_opened_is_warning_half_opened_and_closed_are_info(
        system: Brama, clock: ManualClock, logged: pytest.LogCaptureFixture) -> None:
    """open -> WARNING, half_open and closed -> INFO, each with the five extra fields."""
    system.register("db", max_attempts=1, expiry=1000)
    system.failure("db", reason="timeout")
    clock.advance(1000)
    system.success("db")
    system.drain()
    records = _transitions(logged)
    assert [(r.levelno, x(r, "brama_previous_state"), x(r, "brama_state")) for r in records] == [
        (logging.WARNING, "closed", "open"),
        (logging.INFO, "open", "half_open"),
        (logging.INFO, "half_open", "closed"),
    ]
    assert [x(r, "brama_reason") for r in records] == [
        "Threshold exceeded", "Expiry reached", x(records[2], "brama_reason")]
    for record in records:
        assert all(hasattr(record, name) for name in EXTRA)
        assert x(record, "brama_connection") == "db"
        assert x(record, "brama_scope") is None
        assert type(x(record, "brama_state")) is str
        assert type(x(record, "brama_previous_state")) is str


def test_manual_transitions_carry_their_reason_and_scope(
        system: Brama, logged: pytest.LogCaptureFixture) -> None:
    """A scoped connection logs its scope; manual calls log their reason."""
    system.register("db", scope="eu")
    system.open_circuit("db", scope="eu", reason="maintenance")
    system.close_circuit("db", scope="eu")
    system.drain()
    records = _transitions(logged)
    fields = ("brama_scope", "brama_connection", "brama_reason")
    assert [tuple(x(r, f) for f in fields) for r in records] == [
        ("eu", "db", "maintenance"), ("eu", "db", "Manually closed")]
    assert "eu/db" in records[0].getMessage()
    assert "maintenance" in records[0].getMessage()


def test_one_record_per_state_change(system: Brama, logged: pytest.LogCaptureFixture) -> None:
    """As many records as state_change events, no more (open on open logs nothing)."""
    sub = system.subscribe(events=["state_change"])
    for name in ("a", "b", "c"):
        system.register(name, max_attempts=2)
    for _ in range(3):
        for name in ("a", "b", "c"):
            system.failure(name)
    system.open_circuit("a")  # already open: circuit_opened only
    system.reset_circuit("b")
    system.reset_circuit("b")  # already closed: no state change
    system.drain()
    changes = collect(sub)
    records = _transitions(logged)
    assert kinds(changes) == ["state_change"] * 4
    assert [(x(r, "brama_connection"), x(r, "brama_state")) for r in records] == [
        (e.connection, e.data["new_state"]) for e in changes]


def test_records_are_written_in_a_handler_thread(
        system: Brama, logged: pytest.LogCaptureFixture) -> None:
    """The record is written by the log's handler runner, never inside an actor."""
    seen: list[tuple[str, object]] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((threading.current_thread().name, current_actor()))

    probe = Probe()
    logging.getLogger("brama_actors").addHandler(probe)
    try:
        system.register("db")
        system.open_circuit("db")
        system.drain()
    finally:
        logging.getLogger("brama_actors").removeHandler(probe)
    assert len(seen) == 1
    thread, actor = seen[0]
    assert thread.endswith("-log")
    assert actor is None


def test_log_transitions_false_logs_nothing(
        clock: ManualClock, logged: pytest.LogCaptureFixture) -> None:
    """Brama.start(log_transitions=False): state changes are not logged."""
    with Brama.start(clock=clock, log_transitions=False) as brama:
        brama.register("db", max_attempts=1)
        brama.failure("db")
        brama.close_circuit("db")
        brama.drain()
        assert subscriptions(brama) == []
    assert _transitions(logged) == []


@pytest.mark.parametrize("value", [0, 1, "false", None, "yes"])
def test_log_transitions_must_be_a_bool(value: object) -> None:
    """A non-bool log_transitions is InvalidConfiguration naming it, nothing started."""
    before = set(_system.running)
    threads = set(threading.enumerate())
    with pytest.raises(InvalidConfiguration, match="log_transitions") as info:
        Brama.start(clock=ManualClock(), log_transitions=value)
    assert repr(value) in str(info.value)
    assert set(_system.running) == before
    assert set(threading.enumerate()) <= threads


def test_configure_turns_the_log_off_and_on(
        system: Brama, logged: pytest.LogCaptureFixture) -> None:
    """configure(log_transitions=...) switches the log at run time; a bad value changes
    nothing."""
    system.register("db")
    with pytest.raises(InvalidConfiguration, match="log_transitions"):
        system.configure(log_transitions="off")
    system.configure(log_transitions=False)
    system.open_circuit("db")
    system.drain()
    assert _transitions(logged) == []
    system.configure(log_transitions=True)
    system.configure(log_transitions=True)  # already on: still one record per change
    system.close_circuit("db")
    system.drain()
    assert [x(r, "brama_state") for r in _transitions(logged)] == ["closed"]


def test_users_unsubscribe_does_not_remove_the_log(
        system: Brama, logged: pytest.LogCaptureFixture) -> None:
    """The log belongs to the system: ``unsubscribe()`` from the starting thread and the
    list of the users' subscriptions leave it alone."""
    mine = system.subscribe(events=["state_change"])
    assert system.unsubscribe() == 1
    assert system._delivery.subscriptions() == []
    assert mine not in subscriptions(system)
    system.register("db")
    system.open_circuit("db")
    system.drain()
    assert [x(r, "brama_state") for r in _transitions(logged)] == ["open"]


def test_a_blocked_logging_handler_does_not_stop_a_system_from_stopping(
        clock: ManualClock) -> None:
    """A logging handler blocked in user code: stop() still returns, and the log thread
    runs nothing of the system once released."""
    entered, gate = threading.Event(), threading.Event()

    class Blocking(logging.Handler):
        # handle(), not emit(): emit runs under the handler's lock, which would block
        # stop()'s own warning record too, and that is not what this test is about.
        def handle(self, record: logging.LogRecord) -> bool:
            if hasattr(record, "brama_state"):
                entered.set()
                gate.wait(30)
            return True

    handler = Blocking()
    log = logging.getLogger("brama_actors")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        brama = Brama.start(clock=clock)
        brama.register("db")
        brama.open_circuit("db")
        assert entered.wait(10)
        runner = brama._delivery.log_targets[0]
        brama.stop()
        assert brama.stopped
        assert runner.running  # abandoned, still blocked in the handler
    finally:
        gate.set()
        log.removeHandler(handler)
        log.setLevel(old_level)
    runner.join(10)
    assert not runner.running


def test_the_default_system_logs_too(logged: pytest.LogCaptureFixture) -> None:
    """The module-level default system logs its transitions as any other."""
    brama_actors.register("api")
    brama_actors.open_circuit("api", reason="drill")
    brama_actors.drain()
    assert [(x(r, "brama_connection"), x(r, "brama_reason")) for r in _transitions(logged)] == [
        ("api", "drill")]


def test_a_start_that_cannot_subscribe_its_log_leaves_nothing_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If the log's subscription fails at start, start() raises and stops what it had
    started (before the suite's own cleanup could hide a leak)."""
    import threading

    from brama_actors._delivery._hub import Delivery

    real = Delivery.log_transitions

    def refuse(self: Delivery, on: bool) -> None:
        if on:
            raise RuntimeError("no log today")
        real(self, on)

    monkeypatch.setattr(Delivery, "log_transitions", refuse)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="no log today"):
        Brama.start()
    started = [t for t in threading.enumerate() if t not in before]
    for thread in started:
        thread.join(5)
    assert [t.name for t in started if t.is_alive()] == []
