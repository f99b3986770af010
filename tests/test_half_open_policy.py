"""Half-open policy (docs/circuit-rules.md): ``success_threshold`` and
``half_open_timeout``, on a real system with the manual clock."""

from __future__ import annotations

from typing import Any

import pytest

import brama_actors
from brama_actors import Brama, CircuitOpenError, InvalidConfiguration
from brama_actors.testing import ManualClock, inject_crash
from tests.conftest import collect, kinds


def _to_half_open(system: Brama, clock: ManualClock, **options: Any) -> None:
    system.register("api", max_attempts=1, expiry=1_000, **options)
    system.failure("api")
    clock.advance(1_000)
    assert system.status("api").state == "half_open"


def test_success_threshold_closes_after_that_many_successes(system: Brama,
                                                            clock: ManualClock) -> None:
    """success_threshold=3: two successes keep half_open (counted), the third closes."""
    _to_half_open(system, clock, success_threshold=3)
    events = system.subscribe(connection="api")
    system.success("api")
    system.success("api")
    status = system.status("api")
    assert (status.state, status.half_open_successes) == ("half_open", 2)
    system.success("api")
    status = system.status("api")
    assert (status.state, status.half_open_successes, status.failure_count) == (
        "closed", 0, 0)
    system.drain()
    got = collect(events)
    assert kinds(got) == ["success", "success", "success", "circuit_closed", "state_change"]
    assert got[-1].data["reason"] == "Success in half_open"


def test_the_first_failure_in_half_open_reopens_whatever_the_successes(
        system: Brama, clock: ManualClock) -> None:
    """A failure after some half-open successes opens again; the count starts over."""
    _to_half_open(system, clock, success_threshold=2)
    system.success("api")
    system.failure("api", reason="still down")
    status = system.status("api")
    assert (status.state, status.half_open_successes) == ("open", 0)
    clock.advance(1_000)
    system.success("api")
    assert system.status("api").state == "half_open"  # one of two again
    system.success("api")
    assert system.status("api").state == "closed"


def test_guarded_trials_need_the_threshold_too(system: Brama, clock: ManualClock) -> None:
    """With half_open_max_calls=1 and success_threshold=2, two trials in turn close it."""
    _to_half_open(system, clock, success_threshold=2, half_open_max_calls=1)

    @brama_actors.circuit_breaker("api", brama=system)
    def call() -> str:
        return "ok"

    assert call() == "ok"
    assert system.status("api").state == "half_open"
    assert call() == "ok"  # the first trial's permit came back
    assert system.status("api").state == "closed"


def test_half_open_timeout_opens_again(system: Brama, clock: ManualClock) -> None:
    """Still half_open half_open_timeout ms after entering it: open, "Half-open timeout"."""
    _to_half_open(system, clock, half_open_timeout=500)
    events = system.subscribe(connection="api")
    entered = system.status("api").state_changed_at
    clock.advance(499)
    assert system.status("api").state == "half_open"
    clock.advance(1)
    status = system.status("api")
    assert (status.state, status.opened_at, status.expiry) == ("open", entered + 500, 1_000)
    system.drain()
    got = collect(events)
    assert kinds(got) == ["circuit_opened", "state_change"]
    assert [e.data["reason"] for e in got] == ["Half-open timeout"] * 2
    assert got[1].data["previous_state"] == "half_open"
    assert status.failure_count == 1  # a timeout is not a failure
    clock.advance(1_000)
    assert system.status("api").state == "half_open"  # the next opening expires as usual


def test_a_closed_half_open_period_cancels_its_timeout(system: Brama,
                                                       clock: ManualClock) -> None:
    """Closing before the timeout: the timer of that period does nothing later."""
    _to_half_open(system, clock, half_open_timeout=500)
    system.success("api")
    clock.advance(10_000)
    assert system.status("api").state == "closed"


def test_a_permit_held_past_the_timeout_is_void(system: Brama, clock: ManualClock) -> None:
    """A trial running when half_open times out: its late outcome is ignored, and its
    permit does not count against the next half_open period."""
    _to_half_open(system, clock, half_open_timeout=500, half_open_max_calls=1)
    block = system.guard("api")
    with block:  # holds the one permit
        with pytest.raises(CircuitOpenError), system.guard("api"):
            pass
        clock.advance(500)  # half_open timed out while the call runs
        assert system.status("api").state == "open"
        opened_at = system.status("api").opened_at
    status = system.status("api")  # the late success changed nothing
    assert (status.state, status.opened_at, status.total_successes) == ("open", opened_at, 0)
    clock.advance(1_000)
    assert system.status("api").state == "half_open"
    with system.guard("api"):  # a fresh period: its permit is free
        pass
    assert system.status("api").state == "closed"


def test_a_late_failure_of_a_void_trial_is_ignored(system: Brama,
                                                   clock: ManualClock) -> None:
    """A trial failing after its period timed out does not reopen or count."""
    _to_half_open(system, clock, half_open_timeout=500)
    with pytest.raises(ConnectionError), system.guard("api"):
        clock.advance(500)
        raise ConnectionError("late")
    status = system.status("api")
    assert (status.state, status.failure_count, status.total_failures) == ("open", 1, 1)


def test_a_restarted_actor_keeps_the_half_open_deadline(system: Brama,
                                                        clock: ManualClock) -> None:
    """After a crash and restart in half_open, the timeout still fires."""
    _to_half_open(system, clock, half_open_timeout=500, success_threshold=5)
    inject_crash("api", brama=system)
    system.success("api")  # crashes; the restarted actor re-arms from the status
    system.drain()
    clock.advance(500)
    assert system.status("api").state == "open"


def test_status_and_registration_data_show_the_new_settings(system: Brama) -> None:
    """The settings appear on the status and as registration data keys."""
    events = system.subscribe(events=["registration"])
    status = system.register("api", success_threshold=2, half_open_timeout=250)
    assert (status.success_threshold, status.half_open_timeout,
            status.half_open_successes) == (2, 250, 0)
    default = system.register("db")
    assert (default.success_threshold, default.half_open_timeout) == (1, None)
    system.drain()
    data = [e.data for e in collect(events)]
    assert (data[0]["success_threshold"], data[0]["half_open_timeout"]) == (2, 250)
    assert (data[1]["success_threshold"], data[1]["half_open_timeout"]) == (1, None)


def test_configure_changes_them(system: Brama, clock: ManualClock) -> None:
    """configure() globally and per connection; a connection's own value wins."""
    system.configure(success_threshold=3)
    system.register("api")
    system.register("db", success_threshold=1)
    assert system.status("api").success_threshold == 3
    assert system.status("db").success_threshold == 1
    system.configure("api", half_open_timeout=100)
    assert system.status("api").half_open_timeout == 100


@pytest.mark.parametrize(("option", "bad"), [
    ("success_threshold", 0), ("success_threshold", True), ("success_threshold", 1.5),
    ("success_threshold", "2"), ("half_open_timeout", 0), ("half_open_timeout", -1),
    ("half_open_timeout", False), ("half_open_timeout", float("nan")),
])
def test_bad_values_are_refused_and_change_nothing(system: Brama, option: str,
                                                   bad: Any) -> None:
    """Each bad value: InvalidConfiguration naming option and value; nothing changed."""
    with pytest.raises(InvalidConfiguration, match=option):
        system.register("api", **{option: bad})
    assert system.connections() == []
    system.register("db")
    before = system.status("db")
    with pytest.raises(InvalidConfiguration, match=option):
        system.configure("db", **{option: bad})
    with pytest.raises(InvalidConfiguration, match=option):
        system.configure(**{option: bad})
    assert system.status("db") == before
    with pytest.raises(InvalidConfiguration, match=option):
        Brama.start(**{option: bad})


def test_a_client_registers_with_them(node: tuple[Brama, Any],
                                      client: brama_actors.Client) -> None:
    """The options cross the wire (the operation table lists them)."""
    brama, _ = node
    status = client.register("api", success_threshold=2, half_open_timeout=300)
    assert (status.success_threshold, status.half_open_timeout) == (2, 300)
    assert brama.status("api").success_threshold == 2


def test_a_new_half_open_timeout_applies_to_the_period_in_progress(
        system: Brama, clock: ManualClock) -> None:
    """configure() during half_open: the shorter timeout counts from the period's start."""
    _to_half_open(system, clock, half_open_timeout=1_000)
    clock.advance(50)
    system.configure("api", half_open_timeout=100)
    clock.advance(49)
    assert system.status("api").state == "half_open"
    clock.advance(1)  # 100 ms after entering half_open, not 1,000
    assert system.status("api").state == "open"
