"""The supervisor actor: restarts the connection actors that crash.

(Connection actors are started in the registering thread under the registry lock, see
``Core.register``: an ask to the supervisor cost three times the work itself.)

A restarted connection actor resumes from its cell's last published status, with the
messages its predecessor had not processed yet, so nothing already published is emitted
twice and nothing queued is lost. Restarts follow OTP intensity: more than
``max_restarts`` within ``restart_window`` ms and the supervisor gives up and stops the
whole system, telling the parent actor if there is one.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brama_actors._errors import describe
from brama_actors._runtime._pool import Pool, PooledActor, reject
from brama_actors._system._connection import Cell, ConnectionActor
from brama_actors._system._messages import split_key

if TYPE_CHECKING:
    from pykka import ActorRef

    from brama_actors._system._brama import Core

__all__ = ["Crashed", "EventManagerCrashed", "Supervisor", "Sync"]

logger = logging.getLogger("brama_actors")


@dataclass(frozen=True, slots=True)
class Crashed:
    cell: Cell
    ref: ActorRef[Any]
    reason: str
    leftovers: list[Any]


@dataclass(frozen=True, slots=True)
class EventManagerCrashed:
    """The event manager crashed and recovered in place; count it as a restart."""

    reason: str


class Sync:
    """Reply None once earlier messages (e.g. crash reports) were processed."""

    __slots__ = ()


def _refuse(envelopes: list[Any], ref: ActorRef[Any]) -> None:
    """Answer the askers among ``envelopes`` at once (ActorDeadError), instead of never."""
    for envelope in envelopes:
        reject(envelope, ref)


class Supervisor(PooledActor):
    """Owns the children of one system."""

    def __init__(self, pool: Pool, core: Core) -> None:
        super().__init__(pool)
        self._core = core
        self._restarts: collections.deque[int] = collections.deque()
        self._gave_up = False

    def on_receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is Crashed:
            self._restart(message)
            return None
        if kind is EventManagerCrashed:
            self._restart_event_manager(message)
            return None
        if kind is Sync:
            return None
        # Unknown messages are logged, not raised: a raise in a tell handler would stop
        # this actor, and nothing restarts the supervisor or a manager stopped that way.
        logger.warning("%s ignored an unexpected message %r", type(self).__name__, message)
        return None

    def _restart(self, message: Crashed) -> None:
        core = self._core
        cell = message.cell
        if (self._gave_up or core.stopping or core.cells.get(cell.key) is not cell
                or cell.ref is not message.ref):
            _refuse(message.leftovers, message.ref)  # removed, stopping, or restarted
            return
        identifier, scope = split_key(cell.key)
        if not self._within_intensity():
            self._gave_up = True
            reason = (f"more than {core.config['max_restarts']} restarts within "
                      f"{core.config['restart_window']} ms (last: connection "
                      f"{describe(identifier, scope)}: {message.reason})")
            core.give_up(reason)
            _refuse(message.leftovers, message.ref)  # their callers get SystemStopped now
            return
        ref = ConnectionActor.start(core, cell, message.leftovers)
        cell.inbox = ref.actor_inbox  # type: ignore[assignment]
        cell.ref = ref
        logger.warning("restarted connection actor for %s after %s",
                       describe(identifier, scope), message.reason)
        core.restarted("connection", identifier, scope, message.reason)

    def _restart_event_manager(self, message: EventManagerCrashed) -> None:
        core = self._core
        if self._gave_up:
            return
        if not self._within_intensity():
            self._gave_up = True
            core.give_up(f"more than {core.config['max_restarts']} restarts within "
                         f"{core.config['restart_window']} ms (last: event manager: "
                         f"{message.reason})")
            return
        logger.warning("the event manager restarted after %s", message.reason)
        core.restarted("event_manager", None, None, message.reason)

    def on_stop(self) -> None:
        core = self._core
        if not core.stopping:
            # Someone stopped the supervisor directly (it is exposed as brama.supervisor):
            # without it nothing restarts, so the system goes down cleanly.
            core.give_up("the supervisor was stopped")

    def _within_intensity(self) -> bool:
        core = self._core
        now = core.clock.now()
        window = core.config["restart_window"]
        restarts = self._restarts
        restarts.append(now)
        while restarts and restarts[0] <= now - window:
            restarts.popleft()
        return len(restarts) <= int(core.config["max_restarts"])
