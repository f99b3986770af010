"""brama_actors.testing helpers and the pytest plugin (docs/testing.md)."""

from __future__ import annotations

import threading

import pytest

from brama_actors import Brama, ConnectionNotFound
from brama_actors.testing import (
    ManualClock,
    add_failures,
    set_state,
    simulate_failures,
    simulate_recovery,
    wait_for_event,
)
from tests.conftest import collect, kinds


def test_set_state_emits_real_transition_events(system: Brama) -> None:
    """set_state goes through real transitions and emits their events."""
    system.register("db")
    sub = system.subscribe(connection="db")
    set_state("db", "open", brama=system)
    assert system.status("db").state == "open"
    set_state("db", "half_open", brama=system)
    assert system.status("db").state == "half_open"
    set_state("db", "closed", brama=system)
    set_state("db", "closed", brama=system)  # already there: nothing
    set_state("db", "half_open", brama=system)
    system.drain()
    assert kinds(collect(sub)) == [
        "circuit_opened", "state_change",
        "expiry", "circuit_half_opened", "state_change",
        "circuit_closed", "state_change",
        "circuit_opened", "state_change", "expiry", "circuit_half_opened", "state_change",
    ]


def test_set_state_rejects_unknown_state(system: Brama) -> None:
    """set_state refuses a state that is not a circuit state."""
    system.register("db")
    with pytest.raises(ValueError, match="state"):
        set_state("db", "ajar", brama=system)
    with pytest.raises(ConnectionNotFound):
        set_state("nope", "open", brama=system)


def test_add_failures_and_alias(system: Brama) -> None:
    """add_failures reports failures; simulate_failures is the same function."""
    system.register("db", max_attempts=3)
    add_failures("db", 2, brama=system)
    assert system.status("db").failure_count == 2
    simulate_failures("db", 1, brama=system)
    assert not system.available("db")
    assert simulate_failures is add_failures
    with pytest.raises(ValueError, match="count"):
        add_failures("db", -1, brama=system)


@pytest.mark.parametrize("count", [0, 1])
def test_add_failures_on_unknown_connection_raises(system: Brama, count: int) -> None:
    """add_failures checks the connection first, whatever the count (0 included)."""
    with pytest.raises(ConnectionNotFound):
        add_failures("nope", count, brama=system)


def test_simulate_recovery(system: Brama) -> None:
    """simulate_recovery: open -> half_open -> success -> closed, with those events."""
    system.register("db", max_attempts=1)
    system.failure("db")
    sub = system.subscribe(events=["state_change"])
    simulate_recovery("db", brama=system)
    assert system.status("db").state == "closed"
    assert system.status("db").failure_count == 0
    system.drain()
    assert [(e.data["previous_state"], e.data["new_state"]) for e in collect(sub)] == [
        ("open", "half_open"), ("half_open", "closed")]


def test_wait_for_event(system: Brama, clock: ManualClock) -> None:
    """wait_for_event subscribes first, then returns the next matching event."""
    system.register("db", max_attempts=1, expiry=10)
    system.failure("db")
    ready = threading.Event()

    def advance_later() -> None:
        ready.wait(5)
        clock.advance(10)

    thread = threading.Thread(target=advance_later)
    thread.start()
    ready.set()
    event = wait_for_event("circuit_half_opened", connection="db", timeout=5, brama=system)
    thread.join(5)
    assert event.connection == "db"
    assert event.event == "circuit_half_opened"


def test_wait_for_event_times_out(system: Brama) -> None:
    """wait_for_event raises TimeoutError when nothing comes, and leaves no subscription."""
    with pytest.raises(TimeoutError, match="state_change"):
        wait_for_event("state_change", timeout=0.01, brama=system)
    assert system.unsubscribe() == 0
    with pytest.raises(ValueError, match="nope"):
        wait_for_event("nope", brama=system)


def test_pytest_plugin_fixture(pytester: pytest.Pytester) -> None:
    """The pytest11 plugin provides a `brama` fixture on a ManualClock, stopped after."""
    pytester.makepyfile(
        """
        import threading
        from brama_actors.testing import ManualClock

        SEEN = []

        def test_expiry_without_sleeping(brama):
            assert isinstance(brama.clock, ManualClock)
            brama.register("db", max_attempts=1, expiry=60_000)
            brama.failure("db")
            assert not brama.available("db")
            brama.clock.advance(60_000)
            assert brama.available("db")
            SEEN.append(brama)

        def test_previous_system_was_stopped(brama):
            assert SEEN[0].stopped
            assert SEEN[0] is not brama
            assert brama.connections() == []
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
