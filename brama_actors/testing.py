"""Helpers for testing code that uses brama_actors, without sleeping.

``ManualClock`` moves only when the test moves it; ``inject_crash`` is the seam through
which tests (and the reliability suite) make a connection actor crash.
"""

from __future__ import annotations

from brama_actors import _default
from brama_actors._clock import Clock, ManualClock, SystemClock
from brama_actors._system import Brama

__all__ = ["Clock", "ManualClock", "SystemClock", "inject_crash"]


def _system(brama: Brama | None) -> Brama:
    return _default.get() if brama is None else brama


def inject_crash(identifier: str, *, scope: str | None = None, times: int = 1,
                 brama: Brama | None = None) -> None:
    """Make the connection's actor crash at the start of its next ``times`` messages.

    Each crash is handled like a real one: the supervisor restarts the actor from its
    last published status, and the message it crashed on is retried by its caller
    (``ask``-style calls) or lost (a ``success()`` report, which is fire-and-forget).

    Raises:
        ValueError: ``times`` is not an int >= 1.
        ConnectionNotFound: the connection is not registered.
    """
    if type(times) is bool or not isinstance(times, int) or times < 1:
        raise ValueError(f"times must be an int >= 1, got {times!r}")
    _system(brama)._inject_crash(identifier, scope=scope, times=times)
