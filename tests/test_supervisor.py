"""The supervisor restarts crashed connection actors from their last published status."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from brama_actors import Brama, ConnectionNotFound, SystemStopped
from brama_actors._delivery import _telemetry
from brama_actors._runtime._supervisor import Sync
from brama_actors.testing import ManualClock, inject_crash
from tests.conftest import collect, kinds


def test_crash_restarts_from_snapshot(system: Brama, clock: ManualClock) -> None:
    """A crashed connection actor resumes from its published status; the call is retried."""
    sub = system.subscribe(connection="db")
    system.register("db", max_attempts=3, expiry=100)
    system.failure("db")
    system.failure("db")
    before = system.status("db")
    inject_crash("db", brama=system)
    system.failure("db", reason="third")  # crashes once, then applied by the new actor
    after = system.status("db")
    assert after.failure_count == 3
    assert after.state == "open"
    assert after.registered_at == before.registered_at
    clock.advance(100)  # the restarted actor owns the expiry timer
    assert system.status("db").state == "half_open"
    system.drain()
    assert kinds(collect(sub)) == [
        "registration", "connection_registered",
        "failure", "failure",
        "failure", "circuit_opened", "state_change",
        "expiry", "circuit_half_opened", "state_change",
    ]


def test_crash_while_open_keeps_deadline(system: Brama, clock: ManualClock) -> None:
    """An actor restarted while open re-arms the deadline of the current opening."""
    system.register("db", max_attempts=1, expiry=500)
    system.failure("db")
    clock.advance(200)
    inject_crash("db", brama=system)
    system.success("db")  # the crash eats this fire-and-forget report
    system.drain()
    assert system.status("db").state == "open"
    clock.advance(299)
    assert system.status("db").state == "open"
    clock.advance(1)
    assert system.status("db").state == "half_open"


def test_other_connections_untouched(system: Brama) -> None:
    """A crash of one connection actor leaves the others' state and actors alone."""
    system.register("a", max_attempts=2)
    system.register("b", max_attempts=2)
    system.failure("b")
    refs_before = {c.key: c.ref for c in system._authority.cells.values()}
    inject_crash("a", brama=system)
    system.failure("a")
    refs_after = {c.key: c.ref for c in system._authority.cells.values()}
    assert refs_after["b"] is refs_before["b"]
    assert refs_after["a"] is not refs_before["a"]
    assert system.status("b").failure_count == 1
    assert system.status("a").failure_count == 1


def test_queued_messages_survive_a_crash(system: Brama) -> None:
    """Messages queued behind the crashing one are processed by the restarted actor."""
    system.register("db", max_attempts=1000)
    inject_crash("db", brama=system)
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def report() -> None:
        barrier.wait(5)
        for _ in range(50):
            system.failure("db")
        results.append("done")

    threads = [threading.Thread(target=report) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == ["done"] * 8
    assert system.status("db").failure_count == 400


def test_restart_emits_telemetry(system: Brama) -> None:
    """Each restart fires ("brama", "supervisor", "restart") with child/connection/scope/reason."""
    seen: list[Any] = []
    _telemetry.attach("t-restart", ("brama", "supervisor"),
                      lambda name, meas, meta: seen.append((name, dict(meta))))
    try:
        system.register("db", scope="eu")
        inject_crash("db", scope="eu", brama=system)
        system.failure("db", scope="eu")
        system.drain()
    finally:
        _telemetry.detach("t-restart")
    assert len(seen) == 1
    name, meta = seen[0]
    assert name == ("brama", "supervisor", "restart")
    assert meta["child"] == "connection"
    assert (meta["connection"], meta["scope"]) == ("db", "eu")
    assert "InjectedCrash" in meta["reason"]


def test_inject_crash_validates() -> None:
    """inject_crash rejects a bad count and an unknown connection."""
    with Brama.start(clock=ManualClock()) as brama:
        with pytest.raises(ValueError, match="times"):
            inject_crash("db", times=0, brama=brama)
        with pytest.raises(ConnectionNotFound):
            inject_crash("db", brama=brama)


class Parent(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, inbox: list[Any], got: threading.Event) -> None:
        super().__init__()
        self.inbox = inbox
        self.got = got

    def on_receive(self, message: Any) -> Any:
        self.inbox.append(message)
        self.got.set()


def test_intensity_exceeded_stops_system_and_tells_parent(clock: ManualClock) -> None:
    """More than max_restarts restarts within the window: the system stops, parent told."""
    inbox: list[Any] = []
    got = threading.Event()
    parent = Parent.start(inbox, got)
    brama = Brama.start(clock=clock, parent=parent, max_restarts=2, restart_window=1000)
    brama.register("db", max_attempts=100)
    for _ in range(2):
        inject_crash("db", brama=brama)
        brama.failure("db")
    assert not brama.stopped
    inject_crash("db", brama=brama)
    with pytest.raises(SystemStopped):
        brama.failure("db")
    assert got.wait(5)
    assert inbox[0][0] == "brama_down"
    assert inbox[0][1] is brama
    assert "restarts" in inbox[0][2]
    parent.stop()


def test_restarts_spread_beyond_window_are_fine(clock: ManualClock) -> None:
    """Restarts spread out beyond restart_window never reach the intensity limit."""
    brama = Brama.start(clock=clock, max_restarts=1, restart_window=1000)
    brama.register("db", max_attempts=100)
    for _ in range(5):
        inject_crash("db", brama=brama)
        brama.failure("db")
        clock.advance(1000)
    assert not brama.stopped
    assert brama.status("db").failure_count == 5


def test_normal_stop_tells_parent(clock: ManualClock) -> None:
    """stop() tells the parent ("brama_stopped", brama)."""
    inbox: list[Any] = []
    got = threading.Event()
    parent = Parent.start(inbox, got)
    brama = Brama.start(clock=clock, parent=parent)
    brama.stop()
    assert got.wait(5)
    assert inbox == [("brama_stopped", brama)]
    parent.stop()


def test_giving_up_leaves_no_thread(clock: ManualClock) -> None:
    """After the supervisor gives up, no thread of the system is left running."""
    import threading as _threading

    brama = Brama.start(clock=clock, max_restarts=0)
    brama.register("db")
    brama.subscribe(handler=lambda e: None)
    inject_crash("db", brama=brama)
    with pytest.raises(SystemStopped):
        brama.failure("db")
    name = brama._context.name
    brama.stop()  # waits for the supervisor's teardown to finish
    assert not [t.name for t in _threading.enumerate() if t.name.startswith(name + "-")]
    assert brama.stopped
    with pytest.raises(SystemStopped):
        brama.available("db")


def test_giving_up_without_parent_logs_error(clock: ManualClock,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Without a parent, giving up is logged at ERROR and the system stops."""
    brama = Brama.start(clock=clock, max_restarts=0)
    brama.register("db")
    inject_crash("db", brama=brama)
    with caplog.at_level("ERROR", logger="brama_actors"), pytest.raises(SystemStopped):
        brama.failure("db")
    brama.stop()
    assert any("gives up" in r.getMessage() for r in caplog.records)


def test_event_manager_restart_counts_and_reports(clock: ManualClock) -> None:
    """An event manager restart is telemetry with child="event_manager" and counts."""
    from brama_actors.testing import inject_event_manager_crash

    seen: list[Any] = []
    _telemetry.attach("t-em", ("brama", "supervisor", "restart"),
                      lambda name, meas, meta: seen.append(dict(meta)))
    try:
        brama = Brama.start(clock=clock, max_restarts=1)
        inject_event_manager_crash(brama=brama)
        brama.subscribe()
        assert not brama.stopped
        inject_event_manager_crash(brama=brama)
        with pytest.raises(SystemStopped):
            brama.subscribe()
    finally:
        _telemetry.detach("t-em")
    assert seen[0]["child"] == "event_manager"
    assert (seen[0]["connection"], seen[0]["scope"]) == (None, None)


def test_base_exception_in_connection_actor_restarts_it(
    system: Brama, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BaseException inside a connection actor restarts it like any crash."""
    from brama_actors._authority._local._actor import ConnectionActor

    system.register("db", max_attempts=5)
    cell = system._authority.cells["db"]
    old = cell.ref
    original = ConnectionActor._handle

    def explode(self: ConnectionActor, message: Any) -> Any:
        if message == "boom":
            raise KeyboardInterrupt
        return original(self, message)

    monkeypatch.setattr(ConnectionActor, "_handle", explode)
    assert old is not None
    old.ask("boom", timeout=5)
    system._authority.sync_supervisor()
    assert cell.ref is not old
    system.failure("db")
    assert system.status("db").failure_count == 1
    assert system.unregister("db") is True


def test_stopping_the_supervisor_stops_the_system(clock: ManualClock) -> None:
    """Stopping brama.supervisor by hand takes the system down cleanly (nothing restarts)."""
    brama = Brama.start(clock=clock)
    brama.register("db")
    brama.supervisor.tell("an unknown message is ignored, not fatal")
    brama.supervisor.ask(Sync(), timeout=5)
    assert not brama.stopped
    brama.supervisor.stop()
    brama.stop()  # waits for the give-up teardown
    assert brama.stopped
    with pytest.raises(SystemStopped):
        brama.status("db")
