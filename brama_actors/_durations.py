"""Who wants the call durations guards measure (the OpenTelemetry histogram).

Guards time a call with ``time.perf_counter`` only when a rate window needs it
(``slow_call_duration``) or an observer is installed here, so a guarded call pays
nothing for metrics nobody asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["OBSERVERS", "Observer", "Timing", "notify", "notify_failed"]

logger = logging.getLogger("brama_actors")

#: One timed call: ``(identifier, scope, outcome, seconds)``; outcome is ``"success"``
#: or ``"failure"``, for calls that ran (never refusals).
Timing = tuple[str, "str | None", str, float]

#: ``observer(timing)``: one argument, so that an observer can be a C-level callable
#: such as a ``deque``'s ``append`` and cost a guarded call no Python frame.
Observer = Callable[[Timing], None]

#: The installed observers; guards read it on every call (empty: no timing).
OBSERVERS: list[Observer] = []


def notify_failed() -> None:
    """Log an observer's exception (for a caller that inlined ``notify``'s loop)."""
    logger.exception("a call-duration observer raised")


def notify(timing: Timing) -> None:
    """Hand one call's duration to every observer; one that raises is logged, never
    the guarded call's problem."""
    for observer in tuple(OBSERVERS):
        try:
            observer(timing)
        except Exception:
            logger.exception("call-duration observer %r raised", observer)
