"""The transition log: every state change as one record on logger ``"brama_actors"``.

It is an ordinary handler subscription to ``state_change`` events that the system makes
for itself (``Brama.start(log_transitions=True)``, the default), so it inherits what
every subscription has: the event manager only queues the event, and the record is
written in the subscription's own handler thread. Logging handlers are user code (a
file, a socket, a structlog chain); they never run inside a connection actor or the
event manager, and a slow one delays only this log.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from brama_actors._events import Event, EventType
from brama_actors._status import CircuitState

__all__ = ["LOGGER_NAME", "TransitionLog", "level_of"]

LOGGER_NAME = "brama_actors"

logger = logging.getLogger(LOGGER_NAME)

#: An opening is what an operator must notice; recovering is routine.
_LEVELS: dict[str, int] = {
    CircuitState.OPEN: logging.WARNING,
    CircuitState.HALF_OPEN: logging.INFO,
    CircuitState.CLOSED: logging.INFO,
}

#: How many recent events are remembered to recognise a redelivery.
_RECENT = 64


def level_of(state: str) -> int:
    """The level a change into ``state`` is logged at (WARNING for open, else INFO)."""
    return _LEVELS.get(state, logging.INFO)


class TransitionLog:
    """Writes one log record per ``state_change`` event (the handler of the subscription).

    Critical events are delivered at least once: after an event-manager crash the events
    of the message it was handling are delivered again, as the same objects. The last
    few events are remembered by identity (a strong reference, so an identity cannot be
    reused meanwhile), which keeps the promise of one record per state change.
    """

    def __init__(self) -> None:
        self._recent: deque[Event] = deque(maxlen=_RECENT)

    def __call__(self, event: Event) -> None:
        if event.event is not EventType.STATE_CHANGE:
            return
        if any(seen is event for seen in self._recent):
            return
        self._write(event)
        # Only once written: if writing raised, the runner's retry must write it.
        self._recent.append(event)

    @staticmethod
    def _write(event: Event) -> None:
        data = event.data
        state = str(data.get("new_state", data.get("state")))
        previous = data.get("previous_state")
        previous = None if previous is None else str(previous)
        level = level_of(state)
        if not logger.isEnabledFor(level):
            return
        reason: Any = data.get("reason")
        where = event.connection if event.scope is None else f"{event.scope}/{event.connection}"
        logger.log(
            level,
            "circuit %s %s -> %s: %s",
            where,
            previous,
            state,
            reason,
            extra={
                "brama_connection": event.connection,
                "brama_scope": event.scope,
                "brama_state": state,
                "brama_previous_state": previous,
                "brama_reason": reason,
            },
        )
