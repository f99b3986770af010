"""The connection actor: the only writer of one connection's circuit.

It applies the pure rules of ``_circuit``, publishes the new immutable status to its cell
(which ``available()`` and ``status()`` read without a round trip), arms the expiry timer
and tells the event manager the events. It never runs user code and never asks anyone.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pykka import ActorRef

from brama_actors import _rules as rules
from brama_actors._config import Settings
from brama_actors._runtime._clock import Clock
from brama_actors._runtime._pool import PooledActor, _PooledInbox
from brama_actors._runtime._scheduler import Timer
from brama_actors._status import CircuitState, ConnectionStatus
from brama_actors._system._messages import (
    RESTARTED,
    Apply,
    ArmCrash,
    GetStatus,
    InjectedCrash,
    Key,
    Ping,
    Reconfigure,
    Retire,
)

if TYPE_CHECKING:
    from brama_actors._system._brama import Core

__all__ = ["Cell", "ConnectionActor"]

logger = logging.getLogger("brama_actors")


@dataclass(eq=False, slots=True)
class Cell:
    """What the system publishes about one connection.

    Readers (``available()``, ``status()``, the sweep) use it without locks: ``status``,
    ``available`` and ``quiet`` are replaced whole by the connection's actor, never
    mutated in place.

    Quiet successes: a success on a closed circuit with no failures changes nothing but
    two counters, and when nobody listens for ``success`` events it needs no actor. The
    caller then only bumps ``quiet_successes`` under ``lock``; the actor folds the
    counters into its status before its next message, and readers merge them in
    (``current_status``). This is what keeps a guarded call cheaper than a Pykka tell.
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
    # next() on an itertools.count is atomic in CPython and costs ~20 ns, a third of a
    # lock round; the actor (sole writer of quiet_folded) reads it through its repr.
    quiet_counter: itertools.count[int] = field(default_factory=itertools.count)
    quiet_folded: int = 0
    quiet_raw: float = 0.0  # clock.raw() of the latest quiet success
    trials: int = 0  # guarded half-open trials running now, under lock
    # Set by the actor when the connection is removed (unregister or the sweep), before
    # the actor stops: a caller whose message is refused then knows the connection is
    # gone, rather than taking the refusal for a crash and retrying.
    retired: bool = False
    # Events of a published status that a crashing actor could not hand over; its
    # successor emits them first (so they are neither lost nor emitted twice).
    unsent: list[tuple[ConnectionStatus, Any, int]] = field(default_factory=list)
    crashes_armed: int = 0  # test seam: crash this many messages, across restarts

    def add_quiet_success(self, raw: float) -> None:
        """Count a success that changes no state (called from the reporting thread)."""
        next(self.quiet_counter)
        self.quiet_raw = raw

    def quiet_pending(self) -> int:
        """Quiet successes not yet folded into ``status``."""
        return int(repr(self.quiet_counter)[6:-1]) - self.quiet_folded

    def take_quiet(self) -> tuple[int, float]:
        """Fold: the number of quiet successes since the last fold and the latest raw time.

        Only the connection's actor calls this.
        """
        total = int(repr(self.quiet_counter)[6:-1])
        count = total - self.quiet_folded
        self.quiet_folded = total
        return count, self.quiet_raw

    def quiet_last(self, clock: Clock) -> int:
        """The time of the latest quiet success (0 if none), ms since the epoch."""
        return clock.from_raw(self.quiet_raw) if self.quiet_raw else 0

    def current_status(self, clock: Clock) -> ConnectionStatus:
        """The published status with not yet folded quiet successes merged in."""
        status = self.status
        count = self.quiet_pending()
        if count <= 0:
            return status
        return dataclasses.replace(
            status,
            total_successes=status.total_successes + count,
            last_success_time=max(self.quiet_last(clock), status.last_success_time or 0),
        )


class _Applied(Exception):
    """The message was applied and published, then something failed (``cause``)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class ConnectionActor(PooledActor):
    """Owns the circuit of one ``(identifier, scope)``.

    It has nothing to do on start, so it only takes a worker when a message arrives.

    Args:
        core: the system's shared internals.
        cell: the connection's cell; the actor starts from its published status, which
            is how a restart resumes exactly where the crashed actor left off.
        leftovers: envelopes the crashed predecessor had not processed yet.
    """

    lazy_start = True
    registered = False  # a system may hold 100,000 of them (see PooledActor.registered)

    def __init__(self, core: Core, cell: Cell, leftovers: list[Any] = ()) -> None:  # type: ignore[assignment]
        super().__init__(core.pool)
        self._core = core
        self._cell = cell
        self._status = cell.status
        self._settings = cell.settings
        self._timer: Timer | None = None
        self._retired = False
        for envelope in leftovers:
            self.actor_inbox.put(envelope)
        while cell.unsent:
            status, specs, at = cell.unsent[0]
            core.emit(status, specs, at)
            cell.unsent.pop(0)
        # A restarted actor owns the current opening's deadline from the start.
        status = self._status
        if status.state is CircuitState.OPEN and status.opened_at is not None:
            self._arm(status.opened_at + status.expiry, status.opened_at)

    def on_receive(self, message: Any) -> Any:
        cell = self._cell
        if cell.crashes_armed and type(message) is not ArmCrash:
            cell.crashes_armed -= 1
            return self._crash(InjectedCrash("crash injected through the test seam"))
        try:
            return self._handle(message)
        except _Applied as applied:
            # The message took effect (its status is published): restart, but the caller
            # must not retry it.
            self._crash(applied.cause)
            return None
        except BaseException as exc:  # even KeyboardInterrupt: restart, never strand it
            return self._crash(exc)

    # -- message handling --------------------------------------------------------------
    def _handle(self, message: Any) -> Any:
        if self._cell.quiet_pending():
            self._fold_quiet()
        kind = type(message)
        if kind is Apply:
            self._apply(message.op)
            return None
        if kind is GetStatus:
            return self._status
        if kind is Ping:
            return None
        if kind is Reconfigure:
            self._settings = message.settings
            self._cell.settings = message.settings
            self._cell.explicit = dict(message.explicit)
            self._apply(rules.Configure(message.settings))
            return None
        if kind is Retire:
            return self._retire(message.inactive_threshold)
        if kind is ArmCrash:
            self._cell.crashes_armed = message.times
            return None
        raise TypeError(f"unexpected message {message!r}")

    def _fold_quiet(self) -> None:
        count, raw = self._cell.take_quiet()
        if count:
            status = self._status
            last = self._core.clock.from_raw(raw)
            self._status = self._cell.status = dataclasses.replace(
                status,
                total_successes=status.total_successes + count,
                last_success_time=max(last, status.last_success_time or 0),
            )

    def _apply(self, op: rules.Input) -> None:
        core = self._core
        now = core.clock.now()
        old = self._status
        transition = rules.apply(old, self._settings, op, now)
        new = transition.status
        if new is not old:
            self._status = new
            cell = self._cell
            cell.status = new
            cell.available = new.state is not CircuitState.OPEN
            cell.quiet = new.state is CircuitState.CLOSED and new.failure_count == 0
            if (new.opened_at != old.opened_at or new.state is not old.state
                    or type(op) is rules.Open):
                deadline = transition.deadline
                if deadline is not None:
                    assert new.opened_at is not None
                    self._arm(deadline, new.opened_at)
                elif self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
        if transition.events:
            try:
                core.emit(new, transition.events, now)
            except BaseException as exc:
                self._cell.unsent.append((new, transition.events, now))
                raise _Applied(exc) from exc

    def _arm(self, deadline: int, opened_at: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._core.schedule_expiry(self._cell.key, deadline, opened_at)

    def _retire(self, inactive_threshold: int | None) -> bool:
        if self._retired:
            return False
        core = self._core
        now = core.clock.now()
        idle = now - self._status.last_activity
        if inactive_threshold is not None and idle <= inactive_threshold:
            return False  # active again since the sweep looked
        self._retired = True
        self._cell.retired = True
        core.remove_cell(self._cell)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        core.emit(self._status, rules.removal_events(self._status, inactive_threshold is not None),
                  now)
        self._stop_now()
        return True

    # -- failure -----------------------------------------------------------------------
    def _stop_now(self) -> None:
        """Stop after this message; later messages are refused (callers re-resolve)."""
        self.actor_stopped.set()  # not in Pykka's registry: nothing to unregister

    def _crash(self, exc: BaseException) -> object:
        """Hand the connection to the supervisor for a restart from its snapshot."""
        logger.error(
            "connection actor for %r crashed: %r; restarting from its last published status",
            self._cell.key, exc, exc_info=not isinstance(exc, InjectedCrash),
        )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        core = self._core
        me = self.actor_ref

        def hand_over(leftovers: list[Any]) -> None:
            core.child_crashed(self._cell, me, exc, leftovers)

        self.pooled_inbox.close(hand_over)
        self._stop_now()
        return RESTARTED
