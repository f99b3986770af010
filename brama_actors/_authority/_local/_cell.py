"""A cell: what the local authority publishes about one connection.

Readers (``available()``, ``status()``, guards, the sweep) use it without waiting: the
connection's actor replaces ``status``, ``available`` and ``quiet`` whole, never mutates
them in place.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from brama_actors import _rules as rules
from brama_actors._config import Settings
from brama_actors._keys import Key
from brama_actors._runtime import Clock
from brama_actors._status import CircuitState, ConnectionStatus, evolve
from brama_actors._window import Window, window_for

if TYPE_CHECKING:
    from pykka import ActorRef

    from brama_actors._runtime._pool import _PooledInbox

__all__ = ["QUIET_BATCH", "Cell"]

#: Quiet-success marks a cell collects before the reporting thread moves them into the
#: count (bounds the list: 8 bytes a mark).
QUIET_BATCH = 1024


@dataclass(eq=False, slots=True)
class Cell:
    """One connection's published state, and the handles of the actor that owns it.

    Quiet successes: a success on a closed circuit with no failures changes nothing but
    two counters, and when nobody listens for ``success`` events it needs no actor. The
    reporting thread then only sets ``quiet_raw`` and appends a mark to ``quiet_marks``
    (``list.append`` is atomic, ~25 ns, where a lock round costs ~100 ns on the hot
    path); every ``QUIET_BATCH`` marks it moves them into ``quiet_count`` under
    ``lock``, so the list stays small. The actor folds both into its status before its
    next message, and readers merge them in (``current_status``). Moving marks is
    ``n = len(marks); del marks[:n]``: appends racing with it land after the first ``n``
    and are kept.
    This is what keeps a guarded call cheaper than a Pykka tell.

    With a rate window a success is quiet only while the window holds no failure and no
    slow call (then no success can trip a rate rule) and the success is not slow
    itself (``slow``); a mark is the success's ``clock.raw()`` time, which a time
    window needs. Moving marks then also bins them by the window's buckets
    (``quiet_runs``), so the count of marks waiting stays bounded.

    Counted failures: a failure that only counts (``rules.counts_only``: closed, no
    rate window, below ``max_attempts``) is added to ``failures`` by the reporting
    thread while it holds the idle actor (``_PooledInbox.claim``), with its event
    emitted there; the actor folds them in like quiet successes. Such a failure makes
    the cell not quiet, so the next success goes to the actor and resets the count.

    ``lock`` also guards ``trials``, the half-open permits guards hold right now, and
    the counters of refused calls and ignored outcomes (``rejected``, ``ignored``),
    counted here by the calling threads, never by the actor.
    """

    key: Key
    status: ConnectionStatus
    settings: Settings
    explicit: dict[str, Any]
    available: bool = True
    quiet: bool = True  # closed with failure_count 0 and a clean window
    # The connection's rate window (None: no rate rule); only the actor records into it.
    window: Window | None = None
    # Ms from which a success is slow when a window records it (None: never slow).
    slow: int | None = None
    ref: ActorRef[Any] | None = None
    inbox: _PooledInbox | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # One mark per quiet success not counted yet (its clock.raw() time); appended
    # without the lock.
    quiet_marks: list[float] = field(default_factory=list)
    quiet_count: int = 0  # marks moved out of quiet_marks, not folded yet, under lock
    # For a time window: [ms, count] per bucket of the marks in quiet_count, under lock.
    quiet_runs: list[list[int]] = field(default_factory=list)
    # Failures that only count (``rules.counts_only``), not in ``status`` yet: (how many,
    # ms of the last). Written by a reporting thread that claimed the idle actor,
    # replaced whole; the actor folds it in (under lock) before its next message.
    failures: tuple[int, int] | None = None
    rejected: int = 0  # guarded calls refused, under lock
    ignored: int = 0  # outcomes recorded as nothing, under lock
    quiet_raw: float = 0.0  # clock.raw() of the latest quiet success
    quiet_last: float = 0.0  # the same, kept across folds (for the sweep)
    trials: int = 0  # guarded half-open trials running now, under lock
    # The half_open period (its opening's opened_at) that ``trials`` counts: permits of
    # an earlier period are void and never counted against a later one. Under lock.
    trial_period: int | None = None
    # Set by the actor when the connection is removed (unregister or the sweep), before
    # the actor stops: a caller whose message is refused then knows the connection is
    # gone, rather than taking the refusal for a crash and retrying.
    retired: bool = False
    # Events of a published status that a crashing actor could not hand over; its
    # successor emits them first (so they are neither lost nor emitted twice).
    unsent: list[tuple[ConnectionStatus, Any, int]] = field(default_factory=list)
    crashes_armed: int = 0  # test seam: crash this many messages, across restarts

    @property
    def state(self) -> str:
        """The circuit's state (the published status's)."""
        return self.status.state

    def adopt(self, settings: Settings) -> None:
        """Take new settings: the window they need, and what the fast path reads."""
        self.settings = settings
        self.window = window_for(settings, self.window)
        self.slow = settings.slow_call_duration if self.window is not None else None

    def publish(self, status: ConnectionStatus, now: int) -> None:
        """Publish the actor's new status (and what the fast path derives from it)."""
        quiet = status.state is CircuitState.CLOSED and status.failure_count == 0
        window = self.window
        if quiet and window is not None:
            _, failures, slow = window.figures(now)
            quiet = not failures and not slow
        if not quiet:
            self.quiet = False  # before the status that makes it so
        self.status = status
        self.available = status.state is not CircuitState.OPEN
        self.quiet = quiet

    def count(self, what: str) -> None:
        """Count a refused call (``"rejected"``) or an ignored outcome (``"ignored"``)."""
        with self.lock:
            if what == "rejected":
                self.rejected += 1
            else:
                self.ignored += 1

    def collect_marks(self, clock: Clock) -> None:
        """Move the marks into ``quiet_count`` (by the reporting thread, every
        ``QUIET_BATCH`` marks; ``LocalAuthority.record_success`` appends them)."""
        with self.lock:
            self._take_marks(clock)

    def _take_marks(self, clock: Clock) -> int:
        """Move the marks into ``quiet_count`` (under ``lock``); the new count."""
        marks = self.quiet_marks
        n = len(marks)
        if n:
            window = self.window
            if window is not None and window.timed:
                self._bin(window.width, window.size, marks[:n], clock)
            del marks[:n]
            self.quiet_count += n
        return self.quiet_count

    def _bin(self, width: int, size: int, raws: list[float], clock: Clock) -> None:
        """Add marks (``clock.raw()`` times, in order) to ``quiet_runs`` by bucket.

        A bisection per bucket, not a conversion per mark: a thousand marks usually
        fall in one or two buckets.
        """
        runs = self.quiet_runs

        def bucket(raw: float) -> int:
            return clock.from_raw(raw) // width

        i, n = 0, len(raws)
        while i < n:
            ms = clock.from_raw(raws[i])
            end = bisect.bisect_right(raws, ms // width, lo=i, key=bucket)
            end = max(end, i + 1)  # a mark out of order: count it here
            if runs and runs[-1][0] // width >= ms // width:
                runs[-1][1] += end - i
            else:
                runs.append([ms, end - i])
            i = end
        cutoff = clock.from_raw(raws[-1]) - size
        while runs and (runs[0][0] // width) * width <= cutoff:
            runs.pop(0)  # already out of the window: nothing to fold in

    def fold_quiet(self, clock: Clock) -> None:
        """Fold counted quiet successes into ``status`` and the window (only the owning
        actor calls it)."""
        with self.lock:
            count = self._take_marks(clock)
            if not count:
                return
            runs = self.quiet_runs
            self.quiet_runs = []
            self.quiet_count = 0
            self.quiet_last = raw = self.quiet_raw
            last = clock.from_raw(raw)
            window = self.window
            status = _with_successes(self.status, count, last)
            if window is not None:
                if window.timed:
                    for ms, n in runs:
                        window.add_successes(n, ms)
                else:
                    window.add_successes(count, last)
                status = evolve(status, **rules.window_fields(self.settings, window,
                                                              clock.now()))
            self.status = status

    def fold_failures(self) -> None:
        """Fold the counted failures into ``status`` (only the owning actor calls it)."""
        with self.lock:
            failures = self.failures
            if failures is not None:
                self.status = rules.with_failures(self.status, *failures)
                self.failures = None

    def last_activity(self, clock: Clock) -> int:
        """The latest activity, quiet successes and counted failures included (ms since
        the epoch)."""
        raw = max(self.quiet_raw, self.quiet_last)
        quiet = clock.from_raw(raw) if raw else 0
        failures = self.failures
        failed = failures[1] if failures is not None else 0
        return max(self.status.last_activity, quiet, failed)

    def current_status(self, clock: Clock) -> ConnectionStatus:
        """The published status with what the actor has not folded in yet merged in:
        counted failures, quiet successes, the counters of refusals and ignored outcomes,
        and a time window's figures as of now."""
        with self.lock:
            status = self.status
            failures = self.failures
            marks = list(self.quiet_marks)
            count = self.quiet_count + len(marks)
            runs = [(run[0], run[1]) for run in self.quiet_runs]
            raw = self.quiet_raw
            rejected, ignored = self.rejected, self.ignored
        if failures is not None:
            status = rules.with_failures(status, *failures)
        if rejected or ignored:
            status = evolve(status, total_rejections=rejected, total_ignored=ignored)
        window = self.window
        if window is not None and (count or window.timed):
            status = evolve(status, **self._window_now(window, clock, status, count, runs,
                                                       marks))
        if not count:
            return status
        return _with_successes(status, count, clock.from_raw(raw))

    def _window_now(self, window: Window, clock: Clock, status: ConnectionStatus, count: int,
                    runs: list[tuple[int, int]], marks: list[float]) -> dict[str, Any]:
        """The window's figures now, with pending quiet successes (fast, so only
        ``window_calls`` and the denominators grow)."""
        now = clock.now()
        if window.timed:  # its buckets are one tuple, replaced whole: safe to read here
            calls, failures, slow = window.figures(now)
            cutoff = now - window.size
            width = window.width
            calls += sum(n for ms, n in runs if (ms // width) * width > cutoff)
            calls += sum(1 for r in marks if (clock.from_raw(r) // width) * width > cutoff)
        else:  # marks wait only while the window is clean (no failure, no slow call)
            calls, failures, slow = min(window.size, status.window_calls + count), 0, 0
        return rules.figures_fields(self.settings.minimum_calls, calls, failures, slow)


def _with_successes(status: ConnectionStatus, count: int, last: int) -> ConnectionStatus:
    return evolve(
        status,
        total_successes=status.total_successes + count,
        last_success_time=max(last, status.last_success_time or 0),
    )
