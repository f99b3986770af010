"""What the exporters read from a system at collection time (API.md section 14).

``brama_actors.prometheus`` and ``brama_actors.opentelemetry`` are thin: they turn one
:class:`Reading` into their library's metric types. Reading here means no callback on
the call path: a scrape costs the scraper, never a guarded call or an actor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from brama_actors._errors import NodeUnavailable, SystemStopped
from brama_actors._guard import check_system as guard_check_system
from brama_actors._status import CircuitState, ConnectionStatus
from brama_actors._system import _default
from brama_actors._system._brama import Brama
from brama_actors._system._facade import Facade

__all__ = ["OUTCOMES", "STATES", "Reading", "check_system", "labels", "read"]

logger = logging.getLogger("brama_actors")

#: Every state, in the order the state gauges list them.
STATES: tuple[str, ...] = tuple(state.value for state in CircuitState)

#: Outcome label -> the ``ConnectionStatus`` counter it reads.
OUTCOMES: tuple[tuple[str, str], ...] = (
    ("success", "total_successes"),
    ("failure", "total_failures"),
    ("rejected", "total_rejections"),
    ("ignored", "total_ignored"),
)


@dataclass(frozen=True, slots=True)
class Reading:
    """One system read once, for one collection.

    Attributes:
        connections: every connection's status, whatever its scope.
        dropped: ``(str(subscription id), dropped count)`` for each of the users'
            subscriptions that dropped something.
    """

    connections: tuple[ConnectionStatus, ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()


_EMPTY = Reading()


def check_system(brama: Any) -> Facade | None:
    """``brama`` if it is a system (a ``Brama`` or a ``Client``) or ``None``.

    Raises:
        TypeError: anything else (checked when the exporter is made, not at the first
            scrape, where the error would land in the scraper's log).
    """
    system: Facade | None = guard_check_system(brama)  # every Guardable is a Facade
    return system


def read(brama: Facade | None) -> Reading:
    """Read ``brama`` (``None``: the default system, if one is running).

    A scrape never starts the default system: with none running, or with a stopped
    system, the reading is empty, so its connections disappear from the export. So it
    is for a client whose node cannot be reached (closed, or the link down or slow):
    a scrape of an application's whole registry must not fail for brama's part; a
    warning is logged at most once a minute.
    """
    system = brama if brama is not None else _default._default
    if system is None:
        return _EMPTY
    try:
        connections = tuple(system.connections())
    except SystemStopped:
        return _EMPTY
    except (NodeUnavailable, TimeoutError) as exc:
        _warn_unreachable(exc)
        return _EMPTY
    dropped: tuple[tuple[str, int], ...] = ()
    if isinstance(system, Brama):
        # A client's subscriptions are fed by its node; their drops are the node's.
        subs = system._delivery.subscriptions()
        counts = ((str(sub.id), sub.target.stats.dropped) for sub in subs)
        dropped = tuple((name, count) for name, count in counts if count)
    return Reading(connections, dropped)


_last_warning = [0.0]


def _warn_unreachable(exc: BaseException) -> None:
    now = time.monotonic()
    if now - _last_warning[0] >= 60.0:
        _last_warning[0] = now
        logger.warning("brama_actors metrics: the system could not be read (%r); "
                       "exporting no connection for now", exc)


def labels(status: ConnectionStatus) -> tuple[str, str]:
    """``(connection, scope)`` label values; an unscoped connection has scope ``""``."""
    return status.identifier, status.scope or ""
