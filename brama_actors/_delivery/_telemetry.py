"""Process-wide telemetry handlers, in the manner of Erlang's ``:telemetry``.

A handler is attached under an id for a name prefix and receives
``(name, measurements, metadata)`` for every matching name. A handler that raises is
detached (so one bug cannot flood the logs or slow every event) and reported as
``("brama", "telemetry", "handler_failure")``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach", "detach", "execute", "handlers"]

logger = logging.getLogger("brama_actors")

Name = tuple[str, ...]
Handler = Callable[[Name, Mapping[str, Any], Mapping[str, Any]], Any]

_lock = threading.Lock()
#: handler id -> (prefix, function). Mutated in place, never rebound, so hot paths may
#: test its truthiness directly.
HANDLERS: dict[str, tuple[Name, Handler]] = {}


def _check_name(prefix: Any) -> Name:
    if isinstance(prefix, str):
        prefix = (prefix,)
    if not isinstance(prefix, tuple | list) or not all(isinstance(p, str) for p in prefix):
        raise TypeError(f"prefix must be a tuple of str, got {prefix!r}")
    return tuple(prefix)


def attach(handler_id: str, prefix: tuple[str, ...] | list[str] | str, function: Handler) -> None:
    """Call ``function(name, measurements, metadata)`` for every name under ``prefix``.

    Raises:
        ValueError: ``handler_id`` is already attached.
        TypeError: ``function`` is not callable or ``prefix`` is not a tuple of str.
    """
    if not isinstance(handler_id, str) or not handler_id:
        raise TypeError(f"handler_id must be a non-empty str, got {handler_id!r}")
    if not callable(function):
        raise TypeError(f"function must be callable, got {function!r}")
    name = _check_name(prefix)
    with _lock:
        if handler_id in HANDLERS:
            raise ValueError(f"telemetry handler {handler_id!r} is already attached")
        HANDLERS[handler_id] = (name, function)


def detach(handler_id: str) -> bool:
    """Detach a handler; True if it was attached."""
    with _lock:
        return HANDLERS.pop(handler_id, None) is not None


def handlers() -> dict[str, tuple[Name, Handler]]:
    """A copy of the attached handlers: id -> (prefix, function)."""
    with _lock:
        return dict(HANDLERS)


def execute(name: Name, measurements: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """Run every handler whose prefix matches ``name``, in the calling thread."""
    if not HANDLERS:
        return
    with _lock:
        matching = [(hid, fn) for hid, (prefix, fn) in HANDLERS.items()
                    if name[: len(prefix)] == prefix]
    for handler_id, function in matching:
        try:
            function(name, measurements, metadata)
        except BaseException as exc:
            # Even SystemExit or KeyboardInterrupt: it would end the telemetry runner's
            # thread, and with it every later telemetry call and drain().
            detach(handler_id)
            logger.exception("telemetry handler %r raised on %r; detached", handler_id, name)
            if name != ("brama", "telemetry", "handler_failure"):
                execute(("brama", "telemetry", "handler_failure"), {},
                        {"handler_id": handler_id, "name": name, "error": exc})
