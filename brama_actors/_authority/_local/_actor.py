"""The connection actor: the only writer of one connection's circuit, and its messages.

It applies the pure rules of ``_rules``, publishes the new immutable status to its cell
(which ``available()`` and ``status()`` read without a round trip), arms the expiry timer
and hands the events to the system's event hub. It never runs user code and never asks
anyone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brama_actors import _rules as rules
from brama_actors._authority._local._cell import Cell
from brama_actors._config import Settings
from brama_actors._runtime import PooledActor, Timer
from brama_actors._runtime._crash import RESTARTED, ArmCrash, InjectedCrash
from brama_actors._status import CircuitState

if TYPE_CHECKING:
    from brama_actors._authority._local._authority import LocalAuthority

__all__ = ["GET_STATUS", "PING", "Apply", "ConnectionActor", "Reconfigure", "Retire"]

logger = logging.getLogger("brama_actors")


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply a circuit input; the reply is None (or RESTARTED)."""

    op: rules.Input


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """Replace a connection's explicit options and resolved settings."""

    explicit: Mapping[str, Any]
    settings: Settings


@dataclass(frozen=True, slots=True)
class Retire:
    """Remove the connection: by unregister, or by the sweep if still inactive."""

    inactive_threshold: int | None = None


class _GetStatus:
    """Reply with the current status."""

    __slots__ = ()


class _Ping:
    """Reply None once every earlier message has been processed."""

    __slots__ = ()


GET_STATUS = _GetStatus()
PING = _Ping()


class _Applied(Exception):
    """The message was applied and published, then something failed (``cause``)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class ConnectionActor(PooledActor):
    """Owns the circuit of one ``(identifier, scope)``.

    It has nothing to do on start, so it only takes a worker when a message arrives.

    Args:
        owner: the local authority it belongs to.
        cell: the connection's cell; the actor starts from its published status, which
            is how a restart resumes exactly where the crashed actor left off.
        leftovers: envelopes the crashed predecessor had not processed yet.
    """

    lazy_start = True
    registered = False  # a system may hold 100,000 of them (see PooledActor.registered)

    def __init__(self, owner: LocalAuthority, cell: Cell,
                 leftovers: list[Any] | None = None) -> None:
        super().__init__(owner.context.pool)
        self._owner = owner
        self._clock = owner.context.clock
        self._cell = cell
        self._status = cell.status
        self._settings = cell.settings
        self._timer: Timer | None = None
        self._retired = False
        for envelope in leftovers or ():
            self.actor_inbox.put(envelope)
        while cell.unsent:
            status, specs, at = cell.unsent[0]
            owner.delivery.emit(status.identifier, status.scope, specs, at)
            cell.unsent.pop(0)
        # A restarted actor owns the current opening's deadline from the start.
        status = self._status
        due = rules.deadline(status)
        if due is not None:
            assert status.opened_at is not None
            self._arm(due, status.opened_at)

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
        cell = self._cell
        if cell.quiet_count or cell.quiet_marks:
            cell.fold_quiet(self._clock)
            self._status = cell.status
        if cell.failures is not None:
            cell.fold_failures()
            self._status = cell.status
        kind = type(message)
        if kind is Apply:
            self._apply(message.op)
            return None
        if kind is _GetStatus:
            return self._status
        if kind is _Ping:
            return None
        if kind is Reconfigure:
            self._settings = message.settings
            cell.adopt(message.settings)
            cell.explicit = dict(message.explicit)
            self._apply(rules.Configure(message.settings))
            return None
        if kind is Retire:
            return self._retire(message.inactive_threshold)
        if kind is ArmCrash:
            cell.crashes_armed = message.times
            return None
        raise TypeError(f"unexpected message {message!r}")

    def _apply(self, op: rules.Input) -> None:
        now = self._clock.now()
        if type(op) is rules.Success and op.at is not None:
            now = op.at  # an asynchronous success counts when it was reported
        old = self._status
        cell = self._cell
        transition = rules.apply(old, self._settings, op, now, cell.window)
        new = transition.status
        if new is not old:
            self._status = new
            cell.publish(new, now)
            # A new opening or state has a new deadline; so has a half_open period
            # whose half_open_timeout was just reconfigured (it applies at once).
            if (new.opened_at != old.opened_at or new.state is not old.state
                    or type(op) is rules.Open
                    or (type(op) is rules.Configure and new.state is CircuitState.HALF_OPEN)):
                deadline = transition.deadline
                if deadline is not None:
                    assert new.opened_at is not None
                    self._arm(deadline, new.opened_at)
                elif self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
        if transition.events:
            try:
                self._owner.delivery.emit(new.identifier, new.scope, transition.events, now)
            except BaseException as exc:
                self._cell.unsent.append((new, transition.events, now))
                raise _Applied(exc) from exc

    def _arm(self, deadline: int, opened_at: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._owner.schedule_expiry(self._cell.key, deadline, opened_at)

    def _retire(self, inactive_threshold: int | None) -> bool:
        if self._retired:
            return False
        now = self._clock.now()
        idle = now - self._status.last_activity
        if inactive_threshold is not None and idle <= inactive_threshold:
            return False  # active again since the sweep looked
        self._retired = True
        self._cell.retired = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        status = self._status
        try:
            # Announced before the cell is forgotten: a register from another thread
            # succeeds only once it is, so its connection_registered comes after.
            self._owner.delivery.emit(
                status.identifier, status.scope,
                rules.removal_events(status, inactive_threshold is not None), now)
        finally:
            self._owner.remove_cell(self._cell)
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
        owner = self._owner
        me = self.actor_ref
        cell = self._cell

        def hand_over(leftovers: list[Any]) -> None:
            owner.crashed(cell, me, exc, leftovers)

        self.pooled_inbox.close(hand_over)
        self._stop_now()
        return RESTARTED
