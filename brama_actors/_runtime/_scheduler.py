"""One scheduler per system: a heap of deadlines and at most one thread.

Why not a ``threading.Timer`` per circuit: measured before this was built (figures in
docs/actor-design.md), 10k timers took 2.2k threads and a median lateness of 1.1 s; one heap and
one thread fired them 0.09 ms late.
With a ``ManualClock`` there is no thread at all: the clock's ``advance`` runs due timers
in the caller's thread and waits for the work they started.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from brama_actors._runtime._clock import Clock

__all__ = ["Scheduler", "Timer"]

logger = logging.getLogger("brama_actors")

#: A timer's callback may return futures (or anything with ``get(timeout=)``) that a
#: manual clock waits for; the timer thread ignores them.
Callback = Callable[[], Iterable[Any] | None]


class Timer:
    """A handle to one scheduled callback; ``cancel()`` is cheap and idempotent."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: int, callback: Callback) -> None:
        self.deadline = deadline
        self.callback: Callback | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Prevent the callback from running (it may already have run)."""
        self.cancelled = True
        self.callback = None


class Scheduler:
    """Fires callbacks at clock deadlines (ms since the epoch)."""

    def __init__(self, clock: Clock, name: str = "brama-scheduler") -> None:
        self._clock = clock
        self._heap: list[tuple[int, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._stopped = False
        self._thread: threading.Thread | None = None
        if not clock.attach(self):
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def schedule(self, deadline: int, callback: Callback) -> Timer:
        """Run ``callback`` at ``deadline`` (ms since the epoch) or soon after."""
        timer = Timer(deadline, callback)
        with self._cond:
            if self._stopped:
                timer.cancel()
                return timer
            heapq.heappush(self._heap, (deadline, next(self._seq), timer))
            if self._heap[0][2] is timer:
                self._cond.notify()
        return timer

    def _pop_due(self, now: int) -> list[Timer]:
        due: list[Timer] = []
        while self._heap and self._heap[0][0] <= now:
            timer = heapq.heappop(self._heap)[2]
            if not timer.cancelled:
                due.append(timer)
        return due

    @staticmethod
    def _fire(timer: Timer) -> Iterable[Any] | None:
        callback = timer.callback
        timer.callback = None
        if callback is None:
            return None
        try:
            return callback()
        except Exception:
            logger.exception("brama_actors timer callback failed")
            return None

    def run_due(self, now: int, deadline: float) -> None:
        """Fire every timer due at ``now`` and wait for the work they return.

        Used by a manual clock. Loops until nothing is due, since a fired timer may
        schedule another one that is already due.

        Raises:
            TimeoutError: the work did not complete before ``deadline`` (monotonic s).
        """
        while True:
            with self._cond:
                if self._stopped:
                    return
                due = self._pop_due(now)
            if not due:
                return
            waits: list[Any] = []
            for timer in due:
                result = self._fire(timer)
                if result is not None:
                    waits.extend(result)
            for future in waits:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timers fired by ManualClock.advance did not complete")
                try:
                    future.get(timeout=remaining)
                except Exception as exc:
                    if type(exc).__name__ == "Timeout":
                        raise TimeoutError(
                            "timers fired by ManualClock.advance did not complete"
                        ) from exc
                    # A connection removed meanwhile answers ActorDeadError: nothing to wait.

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - self._clock.now()
                    if delay <= 0:
                        break
                    # Capped: Condition.wait refuses more than threading.TIMEOUT_MAX.
                    self._cond.wait(min(delay / 1000, 3600.0))
                if self._stopped:
                    return
                due = self._pop_due(self._clock.now())
            for timer in due:
                self._fire(timer)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every timer and end the timer thread (joined within ``timeout``)."""
        with self._cond:
            self._stopped = True
            for _, _, timer in self._heap:
                timer.cancel()
            self._heap.clear()
            self._cond.notify_all()
        self._clock.detach(self)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
