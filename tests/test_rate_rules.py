"""Rate and slow-call rules (API.md section 12) on a real system with the manual clock,
and the window on its own (``brama_actors._window``)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

import brama_actors
from brama_actors import Brama, InvalidConfiguration
from brama_actors._window import BUCKETS, CountWindow, TimeWindow
from brama_actors.testing import ManualClock
from tests.conftest import collect, kinds


def _busy(ms: float) -> None:
    """Be a call that takes ``ms`` ms (the guard times calls with perf_counter)."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


# -- the windows on their own ---------------------------------------------------------------

def test_count_window_keeps_the_last_n_outcomes() -> None:
    window = CountWindow(3)
    for code in (1, 0, 2, 3):  # the first failure is evicted by the fourth outcome
        window.record(code, 0)
    assert window.figures(0) == (3, 1, 2)
    window.add_successes(10, 0)
    assert window.figures(0) == (3, 0, 0)
    window.clear()
    assert window.figures(0) == (0, 0, 0)


def test_time_window_counts_an_outcome_only_while_its_bucket_is_young() -> None:
    """size 100 ms, 20 buckets of 5 ms: an outcome at 1000 counts while now < 1100."""
    window = TimeWindow(100)
    assert window.width == 5
    window.record(1, 1_000)
    window.record(0, 1_004)  # same bucket
    window.record(2, 1_050)
    assert window.figures(1_099) == (3, 1, 1)
    assert window.figures(1_100) == (1, 0, 1)  # the bucket at 1000 is size old: gone
    assert window.figures(1_150) == (0, 0, 0)
    assert len(window.buckets) <= BUCKETS + 1


def test_time_window_memory_is_bounded_whatever_the_rate() -> None:
    window = TimeWindow(1_000)
    for ms in range(0, 10_000):
        for _ in range(10):
            window.record(ms % 2, ms)
    assert len(window.buckets) <= BUCKETS + 1
    calls, failures, _ = window.figures(9_999)
    assert calls == 10 * 1_000 and failures == 5_000


def test_a_window_up_to_20_ms_is_exact() -> None:
    window = TimeWindow(7)
    window.record(1, 10)
    assert window.figures(16) == (1, 1, 0)
    assert window.figures(17) == (0, 0, 0)


# -- failure rate ---------------------------------------------------------------------------

def test_failure_rate_opens_once_minimum_calls_are_in(system: Brama) -> None:
    """50% over a count window of 4, minimum 4, consecutive rule off."""
    system.register("api", max_attempts=0, failure_rate_threshold=0.5, window_size=4,
                    minimum_calls=4)
    events = system.subscribe(connection="api")
    system.failure("api")
    system.success("api")
    system.failure("api")
    status = system.status("api")
    assert (status.state, status.window_calls, status.failure_rate) == ("closed", 3, None)
    system.success("api")  # the fourth outcome: 2 of 4 failed -> opens, on a success
    status = system.status("api")
    assert status.state == "open"
    assert (status.window_calls, status.failure_rate, status.slow_call_rate) == (0, None, None)
    system.drain()
    got = collect(events)
    assert kinds(got)[-3:] == ["success", "circuit_opened", "state_change"]
    opened = got[-2].data
    assert opened["reason"] == "Failure rate exceeded"
    assert (opened["failure_rate"], opened["slow_call_rate"]) == (0.5, 0.0)
    assert got[-1].data["reason"] == "Failure rate exceeded"


def test_status_shows_the_rates_over_the_window(system: Brama) -> None:
    system.register("api", failure_rate_threshold=0.9, window_size=10, minimum_calls=2)
    system.success("api")
    assert (system.status("api").window_calls, system.status("api").failure_rate) == (1, None)
    system.failure("api")
    status = system.status("api")
    assert (status.window_calls, status.failure_rate, status.slow_call_rate) == (2, 0.5, 0.0)


def test_without_a_rate_rule_there_is_no_window(system: Brama) -> None:
    status = system.register("api", slow_call_duration=10)
    system.failure("api", duration=50)
    status = system.status("api")
    assert (status.window_calls, status.failure_rate, status.slow_call_rate) == (0, None, None)
    assert status.slow_call_duration == 10 and status.window_type == "count"


def test_both_rules_the_consecutive_one_names_the_reason(system: Brama) -> None:
    """Both trip on the same failure: "Threshold exceeded" wins, no rates in the data."""
    system.register("api", max_attempts=2, failure_rate_threshold=1, minimum_calls=2,
                    window_size=2)
    events = system.subscribe(events=["circuit_opened"])
    system.failure("api")
    system.failure("api")
    system.drain()
    opened = collect(events)[0].data
    assert opened["reason"] == "Threshold exceeded"
    assert "failure_rate" not in opened


def test_rate_rule_opens_before_the_consecutive_rule(system: Brama) -> None:
    """Failures between successes never reach max_attempts, the rate does."""
    system.register("api", max_attempts=5, failure_rate_threshold=0.5, minimum_calls=4,
                    window_size=4)
    for report in ("failure", "success", "failure", "failure"):
        getattr(system, report)("api")
    status = system.status("api")
    assert (status.state, status.failure_count) == ("open", 2)


def test_progressive_expiry_counts_the_failures_an_opening_starts_with(
        system: Brama) -> None:
    system.register("api", max_attempts=0, failure_rate_threshold=1, minimum_calls=3,
                    window_size=3, expiry_strategy="progressive", initial_expiry=100,
                    backoff_factor=2)
    for _ in range(3):
        system.failure("api")
    assert system.status("api").expiry == 100 * 2 ** 3


def test_window_is_recorded_only_while_closed_and_starts_empty_after(
        system: Brama, clock: ManualClock) -> None:
    system.register("api", max_attempts=0, failure_rate_threshold=0.5, minimum_calls=2,
                    window_size=10, expiry=1_000)
    system.failure("api")
    system.failure("api")
    assert system.status("api").state == "open"
    system.failure("api")  # while open: counted, not in the window
    clock.advance(1_000)
    system.success("api")  # the half-open trial: closes, not in the window
    status = system.status("api")
    assert (status.state, status.window_calls, status.total_failures) == ("closed", 0, 3)
    system.failure("api")
    assert system.status("api").state == "closed"  # 1 outcome: below minimum_calls


def test_reset_starts_the_window_over(system: Brama) -> None:
    system.register("api", failure_rate_threshold=0.5, minimum_calls=2, window_size=10)
    system.failure("api")
    assert system.status("api").window_calls == 1
    system.reset_circuit("api")
    assert system.status("api").window_calls == 0
    system.failure("api")
    assert system.status("api").state == "closed"  # one failure in a fresh window


def test_time_window_forgets_old_failures(system: Brama, clock: ManualClock) -> None:
    system.register("api", max_attempts=0, failure_rate_threshold=0.5, minimum_calls=2,
                    window_type="time", window_size=1_000)
    system.failure("api")
    assert system.status("api").window_calls == 1
    clock.advance(1_000)
    status = system.status("api")
    assert (status.window_calls, status.failure_rate) == (0, None)  # read now: gone
    system.success("api")
    system.success("api")
    system.failure("api")  # 1 of 3
    assert system.status("api").state == "closed"
    system.failure("api")  # 2 of 4
    assert system.status("api").state == "open"


def test_quiet_successes_count_in_the_window(system: Brama, clock: ManualClock) -> None:
    """Successes on a clean window take the fast path (no actor message) and are folded
    in, at their own time for a time window."""
    system.register("api", max_attempts=0, failure_rate_threshold=0.5, minimum_calls=4,
                    window_type="time", window_size=100)
    for _ in range(3):
        system.success("api")
    assert system.status("api").window_calls == 3
    clock.advance(100)  # those three are out of the window now
    assert system.status("api").window_calls == 0
    system.failure("api")  # folds the three in, at their time: 1 call in the window
    status = system.status("api")
    assert (status.window_calls, status.total_successes) == (1, 3)
    system.success("api")
    system.failure("api")
    system.failure("api")  # 3 of 4 failed
    assert system.status("api").state == "open"


def test_configure_keeps_the_window_unless_its_kind_or_size_changes(system: Brama) -> None:
    system.register("api", failure_rate_threshold=0.9, window_size=10, minimum_calls=2)
    system.failure("api")
    system.configure("api", failure_rate_threshold=0.8)
    assert system.status("api").window_calls == 1
    system.configure("api", window_size=20)
    assert system.status("api").window_calls == 0
    system.failure("api")
    system.configure("api", window_type="time")
    assert system.status("api").window_calls == 0


# -- slow calls -------------------------------------------------------------------------------

def test_slow_call_rate_opens_on_slow_successes(system: Brama) -> None:
    system.register("api", max_attempts=0, slow_call_rate_threshold=0.5,
                    slow_call_duration=100, minimum_calls=2, window_size=2)
    events = system.subscribe(events=["circuit_opened"])
    system.success("api", duration=99.9)
    system.success("api", duration=100)  # exactly the duration: slow
    status = system.status("api")
    assert status.state == "open"
    system.drain()
    opened = collect(events)[0].data
    assert opened["reason"] == "Slow call rate exceeded"
    assert (opened["failure_rate"], opened["slow_call_rate"]) == (0.0, 0.5)


def test_a_failure_that_is_slow_counts_in_both_rates(system: Brama) -> None:
    system.register("api", slow_call_rate_threshold=1, slow_call_duration=10,
                    failure_rate_threshold=1, minimum_calls=2, window_size=10)
    system.success("api")
    system.failure("api", duration=10)
    status = system.status("api")
    assert (status.failure_rate, status.slow_call_rate) == (0.5, 0.5)


def test_without_a_duration_a_call_is_never_slow(system: Brama) -> None:
    system.register("api", slow_call_rate_threshold=0.5, slow_call_duration=1,
                    minimum_calls=1, window_size=5)
    system.success("api")
    assert system.status("api").slow_call_rate == 0.0


def test_guard_times_calls_for_the_slow_call_rule(system: Brama) -> None:
    """The guard measures with perf_counter, whatever the system's (manual) clock."""
    system.register("api", max_attempts=0, slow_call_rate_threshold=0.5,
                    slow_call_duration=5, minimum_calls=2, window_size=2)

    @brama_actors.circuit_breaker("api", brama=system)
    def call(ms: float) -> None:
        _busy(ms)

    call(0)
    assert (system.status("api").window_calls, system.status("api").state) == (1, "closed")
    call(6)
    assert system.status("api").state == "open"


def test_async_guard_times_calls_too(system: Brama) -> None:
    system.register("api", max_attempts=0, slow_call_rate_threshold=1,
                    slow_call_duration=5, minimum_calls=1, window_size=2)

    @brama_actors.circuit_breaker("api", brama=system)
    async def call() -> None:
        _busy(6)

    asyncio.run(call())
    assert system.status("api").state == "open"


def test_guard_block_times_its_block(system: Brama) -> None:
    system.register("api", max_attempts=0, slow_call_rate_threshold=1,
                    slow_call_duration=5, minimum_calls=1, window_size=2)
    with pytest.raises(ValueError), system.guard("api"):
        _busy(6)
        raise ValueError("slow and failed")
    status = system.status("api")
    assert (status.state, status.total_failures) == ("open", 1)


def test_duration_observers_get_calls_that_ran(system: Brama) -> None:
    """The seam the OpenTelemetry histogram uses: successes and failures, seconds."""
    from brama_actors import _durations

    seen: list[tuple[str, str | None, str, float]] = []
    _durations.OBSERVERS.append(seen.append)
    try:
        guarded = brama_actors.circuit_breaker("api", brama=system, max_attempts=1)(
            lambda fail: (_ for _ in ()).throw(OSError()) if fail else None)
        guarded(False)
        with pytest.raises(OSError):
            guarded(True)
        with pytest.raises(brama_actors.CircuitOpenError):
            guarded(False)  # refused: not observed
    finally:
        _durations.OBSERVERS.clear()
    assert [(c[0], c[1], c[2]) for c in seen] == [("api", None, "success"),
                                                   ("api", None, "failure")]
    assert all(0 <= c[3] < 5 for c in seen)


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "named"), [
    ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
    ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
    ({"failure_rate_threshold": True}, "failure_rate_threshold"),
    ({"failure_rate_threshold": math.nan}, "failure_rate_threshold"),
    ({"failure_rate_threshold": math.inf}, "failure_rate_threshold"),
    ({"failure_rate_threshold": "0.5"}, "failure_rate_threshold"),
    ({"slow_call_rate_threshold": 0.5}, "slow_call_duration"),
    ({"slow_call_duration": 0}, "slow_call_duration"),
    ({"slow_call_duration": 1.5}, "slow_call_duration"),
    ({"window_type": "sliding"}, "window_type"),
    ({"window_size": 0}, "window_size"),
    ({"window_size": True}, "window_size"),
    ({"minimum_calls": 0}, "minimum_calls"),
    ({"failure_rate_threshold": 0.5, "window_size": 5, "minimum_calls": 6}, "minimum_calls"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": -1}, "max_attempts"),
])
def test_bad_rate_options_are_refused_with_nothing_changed(
        system: Brama, options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidConfiguration, match=named):
        system.register("api", **options)
    assert system.connections() == []
    system.register("ok")
    with pytest.raises(InvalidConfiguration, match=named):
        system.configure("ok", **options)
    assert system.status("ok").failure_rate_threshold is None
    with pytest.raises(InvalidConfiguration, match=named):
        system.configure(**options)
    with pytest.raises(InvalidConfiguration, match=named):
        Brama.start(**options)


def test_a_time_window_may_be_smaller_than_minimum_calls(system: Brama) -> None:
    """minimum_calls bounds only a count window (a time window holds any number)."""
    status = system.register("api", failure_rate_threshold=0.5, window_type="time",
                             window_size=5, minimum_calls=50)
    assert (status.window_type, status.window_size, status.minimum_calls) == ("time", 5, 50)


def test_max_attempts_zero_with_a_system_wide_rate_rule() -> None:
    """Per-connection options left unset mean the system's: its rate rule applies."""
    with Brama.start(failure_rate_threshold=0.5) as brama:
        assert brama.register("api", max_attempts=0).max_attempts == 0
    with Brama.start(max_attempts=0, slow_call_rate_threshold=0.5,
                     slow_call_duration=10) as brama:
        assert brama.register("api").max_attempts == 0


@pytest.mark.parametrize(("duration", "error"), [
    ("5", TypeError), (True, TypeError), ([1], TypeError),
    (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
])
def test_bad_durations_record_nothing(system: Brama, duration: Any,
                                      error: type[Exception]) -> None:
    system.register("api")
    with pytest.raises(error, match="duration"):
        system.success("api", duration=duration)
    with pytest.raises(error, match="duration"):
        system.failure("api", duration=duration)
    status = system.status("api")
    assert (status.total_successes, status.total_failures) == (0, 0)


def test_new_settings_are_in_registration_data(system: Brama) -> None:
    events = system.subscribe(events=["registration"])
    system.register("api", failure_rate_threshold=0.25, window_type="time", window_size=500,
                    minimum_calls=3)
    system.drain()
    data = collect(events)[0].data
    assert (data["failure_rate_threshold"], data["slow_call_rate_threshold"],
            data["slow_call_duration"], data["window_type"], data["window_size"],
            data["minimum_calls"]) == (0.25, None, None, "time", 500, 3)


def test_a_success_after_a_failure_is_checked_at_once(system: Brama) -> None:
    """With a failure in the window a success is not quiet: it goes to the actor, which
    checks the rules on it (here it brings the window to minimum_calls)."""
    system.register("api", max_attempts=0, failure_rate_threshold=0.3, minimum_calls=3,
                    window_size=10)
    system.failure("api")
    system.success("api")  # failure_count is 0 again, but the window is not clean
    assert system.status("api").state == "closed"
    system.success("api")  # 1 of 3 failed >= 0.3
    assert system.status("api").state == "open"


def test_thousands_of_quiet_successes_keep_their_buckets(system: Brama,
                                                          clock: ManualClock) -> None:
    """Marks are moved out every 1024 and binned by bucket: each batch still counts at
    its own time (20 of 40 batches are younger than the window at the end)."""
    system.register("api", failure_rate_threshold=0.5, window_type="time", window_size=100)
    for step in range(40):
        if step:
            clock.advance(5)
        for _ in range(100):
            system.success("api")
    assert system.status("api").window_calls == 2_000
    system.failure("api")  # folds every mark in
    status = system.status("api")
    assert (status.window_calls, status.total_successes, status.state) == (
        2_001, 4_000, "closed")
    assert status.failure_rate == 1 / 2_001


def test_time_window_files_a_late_outcome_under_its_own_time() -> None:
    """Outcomes can reach the actor out of order (quiet successes are folded in before
    the message that follows them); each still goes to its own bucket."""
    window = TimeWindow(100)
    window.record(0, 1_050)
    window.record(1, 1_000)  # earlier: a bucket of its own, before the newest
    window.record(0, 1_051)
    assert [b[:2] for b in window.buckets] == [(200, 1), (210, 2)]
    assert window.figures(1_100) == (2, 0, 0)  # the failure's bucket left the window


def test_an_opening_in_the_millisecond_of_an_earlier_one_clears_the_window(
        system: Brama) -> None:
    """Found by the model-based suite on another seed: opened, closed and opened again by
    the rate rule within one millisecond (opened_at unchanged), the window was kept."""
    system.register("api", max_attempts=0, failure_rate_threshold=1, minimum_calls=1,
                    window_size=5)
    system.failure("api")  # opens (same ms as everything below: a ManualClock)
    system.close_circuit("api")
    system.failure("api")  # opens again, opened_at the same
    status = system.status("api")
    assert (status.state, status.window_calls, status.failure_rate) == ("open", 0, None)
