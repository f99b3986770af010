"""Who wants the call durations guards measure (the OpenTelemetry histogram).

Guards time a call with ``time.perf_counter`` only when a rate window needs it
(``slow_call_duration``) or an observer is installed here, so a guarded call pays
nothing for metrics nobody asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["OBSERVERS", "Observer", "notify"]

logger = logging.getLogger("brama_actors")

#: ``observer(identifier, scope, outcome, seconds)``: outcome is ``"success"`` or
#: ``"failure"``, for calls that ran (never refusals). Observers must not raise.
Observer = Callable[[str, "str | None", str, float], None]

#: The installed observers; guards read it on every call (empty: no timing).
OBSERVERS: list[Observer] = []


def notify(identifier: str, scope: str | None, outcome: str, seconds: float) -> None:
    """Hand one call's duration to every observer; one that raises is logged, never
    the guarded call's problem."""
    for observer in tuple(OBSERVERS):
        try:
            observer(identifier, scope, outcome, seconds)
        except Exception:
            logger.exception("call-duration observer %r raised", observer)
