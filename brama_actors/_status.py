"""Circuit states and the frozen status snapshot each connection publishes."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from brama_actors._frozen import make_evolve

__all__ = ["CircuitState", "ConnectionStatus", "ExpiryStrategy", "FleetStatus", "evolve",
           "freeze_mapping"]


class CircuitState(enum.StrEnum):
    """The state of one connection's circuit; compares equal to its string value."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ExpiryStrategy(enum.StrEnum):
    """How long an open circuit stays open (docs/circuit-rules.md (expiry))."""

    FIXED = "fixed"
    PROGRESSIVE = "progressive"


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def freeze_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Return a read-only copy of ``value`` (a shared empty one for ``None``)."""
    if not value:
        return _EMPTY
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """An immutable snapshot of one connection, as published by its actor.

    Times are integers, milliseconds since the Unix epoch, read from the system's
    clock. ``expiry`` is the length of the current or last opening (section 4).
    """

    identifier: str
    scope: str | None
    type: str
    state: CircuitState
    failure_count: int
    max_attempts: int
    expiry: int
    expiry_strategy: ExpiryStrategy
    initial_expiry: int
    max_expiry: int
    backoff_factor: float
    half_open_max_calls: int
    opened_at: int | None
    last_success_time: int | None
    last_failure_time: int | None
    state_changed_at: int
    registered_at: int
    total_successes: int = 0
    total_failures: int = 0
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: Successes in half_open needed to close (the first failure re-opens).
    success_threshold: int = 1
    #: Ms a circuit may stay half_open before it opens again (None: no limit).
    half_open_timeout: int | None = None
    #: Successes counted in the current half_open period.
    half_open_successes: int = 0
    #: Rate rules (API.md section 12): thresholds in (0, 1] or None (rule off).
    failure_rate_threshold: float | None = None
    slow_call_rate_threshold: float | None = None
    #: Ms from which a call is slow (None: no call is slow).
    slow_call_duration: int | None = None
    #: ``"count"`` (the last ``window_size`` outcomes) or ``"time"`` (of the last
    #: ``window_size`` ms).
    window_type: str = "count"
    window_size: int = 100
    #: Outcomes the window must hold before a rate rule applies.
    minimum_calls: int = 10
    #: Failures / calls in the rate window (None: no rate rule, or below minimum_calls).
    failure_rate: float | None = None
    #: Slow calls / calls in the rate window (None: as for ``failure_rate``).
    slow_call_rate: float | None = None
    #: Outcomes in the rate window (0 when no rate rule applies).
    window_calls: int = 0
    #: Guarded calls refused (also those answered by a fallback or an integration).
    total_rejections: int = 0
    #: Outcomes recorded as nothing ("ignore" verdicts, excluded or unmatched exceptions).
    total_ignored: int = 0
    #: State changes since registration: ``(from_state, to_state, count)``, one per pair
    #: that happened, in the order each pair first happened (the exporters read it).
    transitions: tuple[tuple[str, str, int], ...] = ()

    @property
    def success_rate(self) -> float | None:
        """Successes / (successes + failures); ``None`` before any report."""
        total = self.total_successes + self.total_failures
        if total == 0:
            return None
        return self.total_successes / total

    @property
    def last_activity(self) -> int:
        """The latest of registration, last success, last failure and state change."""
        return max(
            self.registered_at,
            self.state_changed_at,
            self.last_success_time or 0,
            self.last_failure_time or 0,
        )

    @property
    def available(self) -> bool:
        """True in ``closed`` and ``half_open``, False in ``open``."""
        return self.state is not CircuitState.OPEN

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType does not pickle; ship metadata as a plain dict.
        values = [dict(self.metadata) if f == "metadata" else getattr(self, f)
                  for f in _FIELDS]
        return (_rebuild_status, tuple(values))


_FIELDS = tuple(ConnectionStatus.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The link of a fleet system to its Redis (``Brama.fleet_status()``).

    Attributes:
        connected: Redis answers and this system's replica is in sync with the fleet.
        since: when ``connected`` last changed (or the system started), ms since the epoch.
        namespace: the fleet's namespace (``fleet_namespace``).
    """

    connected: bool
    since: int
    namespace: str


#: ``evolve(status, **changes)``: ``dataclasses.replace`` without its cost (``_frozen``).
evolve: Callable[..., ConnectionStatus] = make_evolve(ConnectionStatus)


def _rebuild_status(*values: Any) -> ConnectionStatus:
    fields = dict(zip(_FIELDS, values, strict=True))
    fields["metadata"] = freeze_mapping(fields["metadata"])
    return ConnectionStatus(**fields)
