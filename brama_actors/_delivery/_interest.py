"""Which events anybody subscribes to, so emitters skip what nobody wants."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from brama_actors._events import EventType

__all__ = ["ALL_TYPES", "Interest"]

ALL_TYPES = tuple(EventType)


class Interest:
    """A live, read-only view of the event manager's subscription indexes.

    Not a snapshot: it reads the very lists and dicts the event manager updates (one
    append or remove per subscribe or unsubscribe, so subscribing stays O(1) however
    many subscriptions exist). Only the event manager writes them; other threads only
    read, each read one dict or list lookup, atomic under the GIL. A reader racing a
    subscribe sees the table from before or after it, which is all an event emitted at
    the same moment as a subscription can expect anyway.
    """

    __slots__ = ("_by_connection", "_by_scope", "_by_type", "_counts", "successes")

    def __init__(self, by_type: Mapping[EventType, list[Any]],
                 by_connection: Mapping[str, list[Any]],
                 by_scope: Mapping[str, list[Any]]) -> None:
        self._by_type = by_type
        self._by_connection = by_connection
        self._by_scope = by_scope
        self._counts: dict[EventType, int] = dict.fromkeys(ALL_TYPES, 0)
        #: Anyone at all wants ``success`` events (the guarded-call fast path's test).
        self.successes = False

    def count(self, kinds: Iterable[EventType], delta: int) -> None:
        """Called by the event manager when a subscription for ``kinds`` comes or goes."""
        counts = self._counts
        for kind in kinds:
            counts[kind] += delta
        self.successes = counts[EventType.SUCCESS] > 0

    def wants(self, kind: EventType, connection: str | None, scope: str | None) -> bool:
        """True if some subscription may want ``kind`` for this connection."""
        if not self._counts[kind]:
            return False
        if self._by_type[kind]:
            return True
        if connection is not None:
            subs = self._by_connection.get(connection)
            if subs is not None and _any_wants(subs, kind):
                return True
        if scope is not None:
            subs = self._by_scope.get(scope)
            if subs is not None and _any_wants(subs, kind):
                return True
        return False

    NONE: Interest


Interest.NONE = Interest({kind: [] for kind in ALL_TYPES}, {}, {})


def _any_wants(subs: list[Any], kind: EventType) -> bool:
    return any(sub.events is None or kind in sub.events for sub in subs)
