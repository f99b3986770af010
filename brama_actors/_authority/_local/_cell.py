"""A cell: what the local authority publishes about one connection.

Readers (``available()``, ``status()``, guards, the sweep) use it without waiting: the
connection's actor replaces ``status``, ``available`` and ``quiet`` whole, never mutates
them in place.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from brama_actors._config import Settings
from brama_actors._keys import Key
from brama_actors._runtime import Clock
from brama_actors._status import ConnectionStatus, evolve

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

    ``lock`` also guards ``trials``, the half-open permits guards hold right now.
    """

    key: Key
    status: ConnectionStatus
    settings: Settings
    explicit: dict[str, Any]
    available: bool = True
    quiet: bool = True  # closed with failure_count 0
    ref: ActorRef[Any] | None = None
    inbox: _PooledInbox | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # One mark per quiet success not counted yet; appended without the lock.
    quiet_marks: list[None] = field(default_factory=list)
    quiet_count: int = 0  # marks moved out of quiet_marks, not folded yet, under lock
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

    def collect_marks(self) -> None:
        """Move the marks into ``quiet_count`` (by the reporting thread, every
        ``QUIET_BATCH`` marks; ``LocalAuthority.record_success`` appends them)."""
        with self.lock:
            self._take_marks()

    def _take_marks(self) -> int:
        """Move the marks into ``quiet_count`` (under ``lock``); the new count."""
        marks = self.quiet_marks
        n = len(marks)
        if n:
            del marks[:n]
            self.quiet_count += n
        return self.quiet_count

    def fold_quiet(self, clock: Clock) -> None:
        """Fold counted quiet successes into ``status`` (only the owning actor calls it)."""
        with self.lock:
            count = self._take_marks()
            if not count:
                return
            self.quiet_count = 0
            self.quiet_last = raw = self.quiet_raw
            self.status = _with_successes(self.status, count, clock.from_raw(raw))

    def last_activity(self, clock: Clock) -> int:
        """The latest activity, quiet successes included (ms since the epoch)."""
        raw = max(self.quiet_raw, self.quiet_last)
        quiet = clock.from_raw(raw) if raw else 0
        return max(self.status.last_activity, quiet)

    def current_status(self, clock: Clock) -> ConnectionStatus:
        """The published status with not yet folded quiet successes merged in."""
        with self.lock:
            status = self.status
            count = self.quiet_count + len(self.quiet_marks)
            raw = self.quiet_raw
        if not count:
            return status
        return _with_successes(status, count, clock.from_raw(raw))


def _with_successes(status: ConnectionStatus, count: int, last: int) -> ConnectionStatus:
    return evolve(
        status,
        total_successes=status.total_successes + count,
        last_success_time=max(last, status.last_success_time or 0),
    )
