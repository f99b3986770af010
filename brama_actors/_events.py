"""Event types and the frozen ``Event`` delivered to subscribers."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["CRITICAL_EVENTS", "Event", "EventType", "parse_event_types"]


class EventType(enum.StrEnum):
    """The 13 event types; ``EventType.STATE_CHANGE == "state_change"`` holds."""

    STATE_CHANGE = "state_change"
    REGISTRATION = "registration"
    FAILURE = "failure"
    SUCCESS = "success"
    EXPIRY = "expiry"
    CLEANUP = "cleanup"
    CIRCUIT_OPENED = "circuit_opened"
    CIRCUIT_CLOSED = "circuit_closed"
    CIRCUIT_RESET = "circuit_reset"
    CONNECTION_REGISTERED = "connection_registered"
    CONNECTION_UNREGISTERED = "connection_unregistered"
    CIRCUIT_HALF_OPENED = "circuit_half_opened"
    CONNECTION_REMOVED = "connection_removed"


#: Events delivered at least once (docs/events.md).
CRITICAL_EVENTS: frozenset[EventType] = frozenset(
    {
        EventType.STATE_CHANGE,
        EventType.CIRCUIT_OPENED,
        EventType.CIRCUIT_CLOSED,
        EventType.CIRCUIT_RESET,
        EventType.CIRCUIT_HALF_OPENED,
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a connection.

    Attributes:
        event: the event type.
        timestamp: milliseconds since the Unix epoch, from the system's clock.
        connection: the connection's identifier (``None`` only for system-wide events).
        scope: the connection's scope.
        data: read-only details; always ``state`` and ``failure_count``.
        id: unique per event: ``"<system name>-<12 random hex>:<n>"`` on a local system
            (the random part keeps ids unique across processes and restarts),
            ``"<stream id>:<n>"`` (the same on every system) for a fleet's events
            (API.md section 16).
    """

    event: EventType
    timestamp: int
    connection: str | None
    scope: str | None
    data: Mapping[str, Any]
    id: str = ""

    @property
    def critical(self) -> bool:
        """True for events delivered at least once (``state_change``, ``circuit_*``)."""
        return self.event in CRITICAL_EVENTS

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType does not pickle: ship data (and read-only values inside it,
        # such as registration metadata) as plain dicts, and note which to re-freeze.
        data = dict(self.data)
        frozen = tuple(k for k, v in data.items() if isinstance(v, MappingProxyType))
        for key in frozen:
            data[key] = dict(data[key])
        return (_rebuild_event, (self.event, self.timestamp, self.connection, self.scope,
                                 data, frozen, self.id))


def _rebuild_event(
    event: EventType, timestamp: int, connection: str | None, scope: str | None,
    data: dict[str, Any], frozen: tuple[str, ...] = (), id: str = "",
) -> Event:
    for key in frozen:
        data[key] = MappingProxyType(data[key])
    return Event(event, timestamp, connection, scope, MappingProxyType(data), id)


def parse_event_types(events: Any) -> frozenset[EventType] | None:
    """Validate a subscription's ``events`` filter.

    Raises:
        ValueError: an unknown event name.
        TypeError: not an iterable of names.
    """
    if events is None:
        return None
    if isinstance(events, str | EventType):
        events = (events,)
    try:
        items = list(events)
    except TypeError:
        raise TypeError(f"events must be an iterable of event names, got {events!r}") from None
    parsed = set()
    for item in items:
        if isinstance(item, EventType):
            parsed.add(item)
            continue
        if not isinstance(item, str):
            raise TypeError(f"events must contain event names (str), got {item!r}")
        try:
            parsed.add(EventType(item))
        except ValueError:
            valid = ", ".join(e.value for e in EventType)
            raise ValueError(f"unknown event type {item!r}; valid: {valid}") from None
    if not parsed:
        raise ValueError("events must name at least one event type, got an empty collection")
    return frozenset(parsed)
