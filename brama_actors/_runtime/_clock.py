"""Clocks: the only source of time in brama_actors.

Every timestamp, expiry deadline and cleanup decision reads ``clock.now()``. The system
clock anchors the epoch once and then advances with ``time.monotonic()``, so timestamps
are epoch milliseconds that never jump backwards when the wall clock is adjusted, and
durations measured between them are monotonic.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brama_actors._runtime._scheduler import Scheduler

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock:
    """Base class of clocks: ``now()`` in integer milliseconds since the Unix epoch."""

    def now(self) -> int:
        """Return the current time in ms since the Unix epoch."""
        raise NotImplementedError

    def raw(self) -> float:
        """A cheaper reading for hot paths; convert it later with ``from_raw``."""
        return self.now()

    def from_raw(self, raw: float) -> int:
        """Convert a ``raw()`` reading to ms since the Unix epoch."""
        return int(raw)

    def attach(self, scheduler: Scheduler) -> bool:
        """Offer to drive ``scheduler``'s timers.

        Returns:
            True if this clock fires the scheduler's timers itself (a manual clock), False
            if the scheduler must run its own timer thread.
        """
        return False

    def detach(self, scheduler: Scheduler) -> None:
        """Stop driving ``scheduler`` (no-op for clocks that never drive one)."""


class SystemClock(Clock):
    """Epoch milliseconds that advance monotonically from the moment of creation."""

    __slots__ = ("_anchor", "raw")

    def __init__(self) -> None:
        # One wall-clock read anchors the epoch; everything after is monotonic.
        self._anchor = time.time() - time.monotonic()
        # The hot path stores monotonic seconds (~20 ns) and converts them later.
        self.raw = time.monotonic  # type: ignore[method-assign]

    def now(self) -> int:
        """Return the current time in ms since the Unix epoch."""
        return int((self._anchor + time.monotonic()) * 1000)

    def from_raw(self, raw: float) -> int:
        """Convert a ``time.monotonic()`` reading to ms since the Unix epoch."""
        return int((self._anchor + raw) * 1000)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock(Clock):
    """A clock that only moves when a test moves it.

    ``advance(ms)`` fires every timer that became due (expiries, cleanup sweeps) and
    returns after their events have been handed to the event manager, so a test of expiry
    or cleanup never sleeps.

    Args:
        start_ms: the initial time, ms since the Unix epoch.
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        if type(start_ms) is bool or not isinstance(start_ms, int) or start_ms < 0:
            raise ValueError(f"start_ms must be an int >= 0, got {start_ms!r}")
        self._now = start_ms
        self._lock = threading.RLock()
        self._schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()

    def now(self) -> int:
        """Return the current (manual) time in ms since the Unix epoch."""
        return self._now

    def attach(self, scheduler: Scheduler) -> bool:
        """Drive ``scheduler`` from ``advance``; always True."""
        with self._lock:
            self._schedulers.add(scheduler)
        return True

    def detach(self, scheduler: Scheduler) -> None:
        """Stop driving ``scheduler``."""
        with self._lock:
            self._schedulers.discard(scheduler)

    def advance(self, ms: int | float, *, timeout: float = 10.0) -> None:
        """Move time forward by ``ms`` and fire every timer that became due.

        Args:
            ms: whole milliseconds to move forward (>= 0): an int, or a float with an
                integral value such as ``1e3``. Time is kept in integer ms, so a
                fraction could only be dropped, silently.
            timeout: seconds to wait for the fired timers' work to complete.

        Raises:
            TypeError: ``ms`` is not a number (or is a bool).
            ValueError: ``ms`` is negative, not finite, or has a fractional part.
            TimeoutError: the timers' work did not complete within ``timeout``.
        """
        if type(ms) is bool or not isinstance(ms, int | float):
            raise TypeError(f"ms must be an int (milliseconds), got {ms!r}")
        if isinstance(ms, float) and not (math.isfinite(ms) and ms.is_integer()):
            raise ValueError(f"ms must be a whole number of milliseconds, got {ms!r}")
        if ms < 0:
            raise ValueError(f"ms must be >= 0, got {ms!r}")
        with self._lock:
            self._now += int(ms)
            now = self._now
            schedulers = list(self._schedulers)
        deadline = time.monotonic() + timeout
        for scheduler in schedulers:
            scheduler.run_due(now, deadline)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"
