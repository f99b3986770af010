"""Clocks and the scheduler: one heap, at most one thread, manual time in tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from brama_actors import Brama
from brama_actors._runtime._scheduler import Scheduler
from brama_actors.testing import ManualClock, SystemClock


def test_system_clock_is_epoch_ms_and_monotonic() -> None:
    """SystemClock.now() is integer epoch ms close to time.time() and never goes back."""
    clock = SystemClock()
    values = [clock.now() for _ in range(1000)]
    assert all(isinstance(v, int) for v in values)
    assert values == sorted(values)
    assert abs(values[0] - time.time() * 1000) < 1000


def test_manual_clock_moves_only_when_advanced() -> None:
    """ManualClock stays put until advance()."""
    clock = ManualClock(start_ms=5)
    assert clock.now() == 5
    clock.advance(10)
    assert clock.now() == 15


@pytest.mark.parametrize("bad", [-1, -1.0, float("nan"), float("inf"), 0.5, 1.25, 1e-3])
def test_manual_clock_rejects_bad_advance_values(bad: Any) -> None:
    """advance() refuses negative, non-finite and fractional values, naming the value."""
    clock = ManualClock(start_ms=0)
    with pytest.raises(ValueError, match=f"ms must be .*{bad!r}"):
        clock.advance(bad)
    assert clock.now() == 0


@pytest.mark.parametrize("bad", ["1", True, None, [1]])
def test_manual_clock_rejects_bad_advance_types(bad: Any) -> None:
    """advance() refuses what is not a number (bool included) with TypeError."""
    clock = ManualClock(start_ms=0)
    with pytest.raises(TypeError, match="ms must be an int"):
        clock.advance(bad)
    assert clock.now() == 0


def test_manual_clock_accepts_integral_floats() -> None:
    """advance(1e3) moves 1000 ms: a float with an integral value is whole milliseconds."""
    clock = ManualClock(start_ms=0)
    clock.advance(1e3)
    clock.advance(2.0)
    assert clock.now() == 1002


def test_manual_clock_rejects_bad_start() -> None:
    """start_ms must be a non-negative int."""
    with pytest.raises(ValueError, match="start_ms"):
        ManualClock(start_ms=-1)


def test_manual_scheduler_fires_in_deadline_order() -> None:
    """Due timers fire in deadline order during advance(); later ones wait."""
    clock = ManualClock(start_ms=0)
    scheduler = Scheduler(clock)
    fired: list[int] = []
    for deadline in (30, 10, 20, 40):
        scheduler.schedule(deadline, lambda d=deadline: fired.append(d))  # type: ignore[misc]
    clock.advance(30)
    assert fired == [10, 20, 30]
    clock.advance(10)
    assert fired == [10, 20, 30, 40]
    scheduler.stop()


def test_cancelled_timer_does_not_fire() -> None:
    """cancel() prevents the callback."""
    clock = ManualClock(start_ms=0)
    scheduler = Scheduler(clock)
    fired: list[str] = []
    timer = scheduler.schedule(10, lambda: fired.append("x"))
    timer.cancel()
    clock.advance(100)
    assert fired == []
    scheduler.stop()


def test_raising_callback_does_not_stop_others() -> None:
    """A timer callback that raises is logged; the others still fire."""
    clock = ManualClock(start_ms=0)
    scheduler = Scheduler(clock)
    fired: list[str] = []

    def bad() -> None:
        raise RuntimeError("timer bug")

    scheduler.schedule(1, bad)
    scheduler.schedule(2, lambda: fired.append("ok"))
    clock.advance(5)
    assert fired == ["ok"]
    scheduler.stop()


def test_system_scheduler_thread_fires_and_stops() -> None:
    """With the system clock, one daemon thread fires timers and stop() joins it."""
    clock = SystemClock()
    scheduler = Scheduler(clock, "brama-test-scheduler")
    fired = threading.Event()
    scheduler.schedule(clock.now() + 5, fired.set)
    assert fired.wait(5)
    scheduler.stop()
    assert not any(t.name == "brama-test-scheduler" for t in threading.enumerate())


def test_manual_clock_has_no_scheduler_thread() -> None:
    """A system on a ManualClock starts no timer thread."""
    with Brama.start(clock=ManualClock()):
        assert not any(t.name.endswith("-scheduler") for t in threading.enumerate())


def test_expiry_is_punctual_on_the_system_clock() -> None:
    """On the real clock an open circuit turns half_open within 50 ms of its deadline."""
    with Brama.start(max_attempts=1, expiry=30) as brama:
        sub = brama.subscribe(events=["circuit_half_opened"])
        brama.register("db")
        brama.failure("db")
        opened_at = brama.status("db").opened_at
        assert opened_at is not None
        event = sub.get(timeout=5)
        assert not isinstance(event, tuple)
        lateness = event.timestamp - (opened_at + 30)
        assert 0 <= lateness < 50


def test_one_clock_drives_two_systems() -> None:
    """Advancing a shared ManualClock fires the timers of every system on it."""
    clock = ManualClock()
    one = Brama.start(clock=clock, max_attempts=1, expiry=10)
    two = Brama.start(clock=clock, max_attempts=1, expiry=20)
    one.register("a")
    two.register("a")
    one.failure("a")
    two.failure("a")
    clock.advance(20)
    assert one.status("a").state == two.status("a").state == "half_open"
