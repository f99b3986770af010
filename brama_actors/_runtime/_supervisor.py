"""The supervisor actor: restarts what crashes, within OTP-style restart intensity.

Children report crashes as :class:`Crashed` messages carrying what the supervisor needs
to act (is the crash still current, how to restart, how to refuse the callers waiting
on it), so the supervisor knows no child's internals. A connection actor is restarted
from its cell's last published status with the messages its predecessor had not
processed yet; the event manager recovers in place and only reports the crash, to be
counted. More than ``max_restarts`` within ``restart_window`` ms and the supervisor gives
up and the whole system stops, telling the parent actor if there is one.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
from pykka import ActorDeadError, ActorRef

from brama_actors._errors import SystemStopped, describe
from brama_actors._runtime import PooledActor
from brama_actors._runtime._context import Context

__all__ = ["Crashed", "Supervisor", "Sync", "sync_with"]

logger = logging.getLogger("brama_actors")


@dataclass(frozen=True, slots=True)
class Crashed:
    """A child crashed.

    Attributes:
        child: ``"connection"`` or ``"event_manager"`` (telemetry metadata).
        identifier: the connection, if the child is a connection actor.
        scope: its scope.
        reason: ``repr`` of the exception.
        current: True if the crash still needs handling (a connection removed or
            already restarted meanwhile does not).
        restart: starts the replacement (None: the child recovered in place).
        refuse: answers the callers waiting on the crashed child (not restarted).
    """

    child: str
    identifier: str | None
    scope: str | None
    reason: str
    current: Callable[[], bool] = lambda: True
    restart: Callable[[], None] | None = None
    refuse: Callable[[], None] = lambda: None


class Sync:
    """Reply None once earlier messages (e.g. crash reports) were processed."""

    __slots__ = ()


def sync_with(supervisor: ActorRef[Any], context: Context, timeout: float) -> None:
    """Wait until ``supervisor`` processed the messages sent to it before this call.

    Raises:
        SystemStopped: the system stopped.
        TimeoutError: no answer within ``timeout`` s.
    """
    from brama_actors._runtime import _nowait

    _nowait.check()
    try:
        supervisor.ask(Sync(), timeout=timeout)
    except ActorDeadError:
        raise SystemStopped("this Brama system is stopped") from None
    except pykka.Timeout:
        if context.stopping:
            raise SystemStopped("this Brama system is stopped") from None
        raise TimeoutError(f"the supervisor did not answer within {timeout} s") from None


class Supervisor(PooledActor):
    """Owns the restarts of one system.

    Args:
        context: the system's shared runtime (clock, config, stopping).
        give_up: stops the system with a reason (called at most once).
        fire: runs telemetry on the telemetry thread.
    """

    def __init__(self, context: Context, give_up: Callable[[str], None],
                 fire: Callable[[tuple[str, ...], dict[str, Any], dict[str, Any]], None]) -> None:
        super().__init__(context.pool)
        self._context = context
        self._give_up_system = give_up
        self._fire = fire
        self._restarts: collections.deque[int] = collections.deque()
        self._gave_up = False

    def on_receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is Crashed:
            self._crashed(message)
            return None
        if kind is Sync:
            return None
        # Unknown messages are logged, not raised: a raise in a tell handler would stop
        # this actor, and nothing supervises the supervisor.
        logger.warning("%s ignored an unexpected message %r", type(self).__name__, message)
        return None

    def _crashed(self, message: Crashed) -> None:
        context = self._context
        if self._gave_up or context.stopping or not message.current():
            message.refuse()  # stopping, or removed or restarted meanwhile
            return
        what = ("event manager" if message.identifier is None
                else f"connection {describe(message.identifier, message.scope)}")
        if not self._within_intensity():
            self._gave_up = True
            config = context.config
            self._give_up_system(
                f"more than {config['max_restarts']} restarts within "
                f"{config['restart_window']} ms (last: {what}: {message.reason})")
            message.refuse()  # their callers get SystemStopped now
            return
        if message.restart is not None:
            message.restart()
            logger.warning("restarted the %s after %s", what, message.reason)
        else:
            logger.warning("the %s recovered after %s", what, message.reason)
        self._fire(("brama", "supervisor", "restart"),
                   {"system_time": context.clock.now()},
                   {"child": message.child, "connection": message.identifier,
                    "scope": message.scope, "reason": message.reason})

    def on_stop(self) -> None:
        if not self._context.stopping:
            # Someone stopped the supervisor directly (it is exposed as brama.supervisor):
            # without it nothing restarts, so the system goes down cleanly.
            self._give_up_system("the supervisor was stopped")

    def _within_intensity(self) -> bool:
        context = self._context
        now = context.clock.now()
        window = context.config["restart_window"]
        restarts = self._restarts
        restarts.append(now)
        while restarts and restarts[0] <= now - window:
            restarts.popleft()
        return len(restarts) <= int(context.config["max_restarts"])
