"""The supervisor actor: starts connection actors and restarts the ones that crash.

A restarted connection actor resumes from its cell's last published status, with the
messages its predecessor had not processed yet, so nothing already published is emitted
twice and nothing queued is lost. Restarts follow OTP intensity: more than
``max_restarts`` within ``restart_window`` ms and the supervisor gives up and stops the
whole system, telling the parent actor if there is one.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brama_actors import _circuit as rules
from brama_actors._config import Settings
from brama_actors._connection import Cell, ConnectionActor
from brama_actors._errors import AlreadyRegistered, describe
from brama_actors._messages import Key
from brama_actors._runtime import Pool, PooledActor
from brama_actors._status import ConnectionStatus

if TYPE_CHECKING:
    from pykka import ActorRef

    from brama_actors._system import Core

__all__ = ["Crashed", "Register", "Supervisor", "Sync"]

logger = logging.getLogger("brama_actors")


@dataclass(frozen=True, slots=True)
class Register:
    key: Key
    kind: str
    settings: Settings
    explicit: Mapping[str, Any]
    metadata: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Crashed:
    cell: Cell
    ref: ActorRef[Any]
    reason: str
    leftovers: list[Any]


class Sync:
    """Reply None once earlier messages (e.g. crash reports) were processed."""

    __slots__ = ()


class Supervisor(PooledActor):
    """Owns the children of one system."""

    def __init__(self, pool: Pool, core: Core) -> None:
        super().__init__(pool)
        self._core = core
        self._restarts: collections.deque[int] = collections.deque()
        self._gave_up = False

    def on_receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is Register:
            return self._register(message)
        if kind is Crashed:
            self._restart(message)
            return None
        if kind is Sync:
            return None
        raise TypeError(f"unexpected message {message!r}")

    def _register(self, message: Register) -> ConnectionStatus:
        core = self._core
        scope, identifier = message.key
        if message.key in core.cells:
            raise AlreadyRegistered(
                f"connection {describe(identifier, scope)} is already registered"
            )
        now = core.clock.now()
        status = rules.initial_status(identifier, scope, message.kind, message.settings,
                                      message.metadata, now)
        cell = Cell(message.key, status, message.settings, dict(message.explicit))
        ref = ConnectionActor.start(core, cell)
        cell.inbox = ref.actor_inbox  # type: ignore[assignment]
        cell.ref = ref
        core.add_cell(cell)
        core.emit(status, rules.registration_events(status, message.settings), now)
        return status

    def _restart(self, message: Crashed) -> None:
        core = self._core
        cell = message.cell
        if self._gave_up or core.cells.get(cell.key) is not cell or cell.ref is not message.ref:
            return  # removed, stopping, or already restarted
        scope, identifier = cell.key
        if not self._within_intensity():
            self._gave_up = True
            reason = (f"more than {core.config['max_restarts']} restarts within "
                      f"{core.config['restart_window']} ms (last: connection "
                      f"{describe(identifier, scope)}: {message.reason})")
            core.give_up(reason)
            return
        ref = ConnectionActor.start(core, cell, message.leftovers)
        cell.inbox = ref.actor_inbox  # type: ignore[assignment]
        cell.ref = ref
        logger.warning("restarted connection actor for %s after %s",
                       describe(identifier, scope), message.reason)
        core.restarted("connection", identifier, scope, message.reason)

    def _within_intensity(self) -> bool:
        core = self._core
        now = core.clock.now()
        window = core.config["restart_window"]
        restarts = self._restarts
        restarts.append(now)
        while restarts and restarts[0] <= now - window:
            restarts.popleft()
        return len(restarts) <= int(core.config["max_restarts"])
