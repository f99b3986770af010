"""The circuit rules as a pure function: (status, settings, input, now) -> (status, events).

No actors, no clock, no I/O: the connection actor applies these rules and publishes the
result. Keeping them pure is what lets tests/test_circuit.py check them exhaustively with
a hypothesis state machine against a simple model of the contract in docs/circuit-rules.md and
docs/events.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from brama_actors._config import Settings
from brama_actors._events import EventType
from brama_actors._status import (
    CircuitState,
    ConnectionStatus,
    ExpiryStrategy,
    evolve,
    freeze_mapping,
)
from brama_actors._window import FAILED, SLOW, Window

__all__ = [
    "Close",
    "Configure",
    "Expire",
    "Failure",
    "Input",
    "Open",
    "Reset",
    "Success",
    "Transition",
    "apply",
    "counts_only",
    "deadline",
    "failure_event",
    "figures_fields",
    "initial_status",
    "opening_expiry",
    "rate_trip",
    "registration_events",
    "retry_after",
    "with_failures",
]

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

THRESHOLD_EXCEEDED = "Threshold exceeded"
HALF_OPEN_FAILED = "Failure in half_open"
TRIAL_SUCCEEDED = "Success in half_open"
EXPIRY_REACHED = "Expiry reached"
MANUALLY_OPENED = "Manually opened"
MANUALLY_CLOSED = "Manually closed"
MANUALLY_RESET = "Manually reset"
HALF_OPEN_TIMEOUT = "Half-open timeout"
FAILURE_RATE_EXCEEDED = "Failure rate exceeded"
SLOW_CALL_RATE_EXCEEDED = "Slow call rate exceeded"


@dataclass(frozen=True, slots=True)
class Success:
    """A reported success.

    ``trial``: for a guarded half-open trial, the ``opened_at`` of the opening whose
    half_open period admitted it; once that period is over (a half-open timeout, a
    manual change) the outcome is void and changes nothing.
    ``duration``: how long the call took, ms (None: unknown, never slow).
    ``at``: when it was reported, for a success applied after the call returned (the
    actor then applies it at that time, not at the later time it got to it).
    """

    metadata: Mapping[str, Any] | None = None
    trial: int | None = None
    duration: float | None = None
    at: int | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A reported failure (``trial``, ``duration``: as for :class:`Success`)."""

    reason: Any = None
    metadata: Mapping[str, Any] | None = None
    trial: int | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class Open:
    """``open_circuit``: open now, for ``expiry`` ms if given, else by strategy."""

    reason: Any = None
    expiry: int | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """``close_circuit``: close, keeping failure_count."""

    reason: Any = None


@dataclass(frozen=True, slots=True)
class Reset:
    """``reset_circuit``: close with failure_count 0; always emits ``circuit_reset``."""

    reason: Any = None


@dataclass(frozen=True, slots=True)
class Expire:
    """A deadline of the opening that started at ``opened_at`` was reached: its expiry
    (open -> half_open) or, in its half_open period, ``half_open_timeout``."""

    opened_at: int


@dataclass(frozen=True, slots=True)
class Configure:
    """New settings for the connection; they apply from the next transition on."""

    settings: Settings


Input = Success | Failure | Open | Close | Reset | Expire | Configure

#: (event type, data) pairs; the actor adds timestamp, connection and scope.
EventSpec = tuple[EventType, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome of one input: the new status and the events, in order."""

    status: ConnectionStatus
    events: tuple[EventSpec, ...]

    @property
    def deadline(self) -> int | None:
        """The new status's next deadline (see :func:`deadline`)."""
        return deadline(self.status)


def deadline(status: ConnectionStatus) -> int | None:
    """When ``Expire(status.opened_at)`` is due: an open circuit's expiry, or the end of
    a half_open period with ``half_open_timeout``; None when nothing is due."""
    if status.opened_at is None:
        return None
    if status.state is OPEN:
        return status.opened_at + status.expiry
    if status.state is HALF_OPEN and status.half_open_timeout is not None:
        return status.state_changed_at + status.half_open_timeout
    return None


def opening_expiry(settings: Settings, failure_count: int) -> int:
    """The length in ms of an opening that starts with ``failure_count`` failures."""
    if settings.expiry_strategy == ExpiryStrategy.FIXED:
        return settings.expiry
    if settings.backoff_factor == 1.0:
        return min(settings.initial_expiry, settings.max_expiry)
    try:
        # float() first: an int factor to a huge power would be exact and very slow.
        length = settings.initial_expiry * float(settings.backoff_factor) ** failure_count
    except OverflowError:
        return settings.max_expiry
    if length >= settings.max_expiry:
        return settings.max_expiry
    return int(length)


def retry_after(status: ConnectionStatus | None, now: int) -> int:
    """Ms until an open circuit may admit a trial (``CircuitOpenError.retry_after``).

    0 when the circuit is not open (half-open and full: a permit may come back at any
    moment) or its status is unknown.
    """
    if status is None or status.state is not OPEN or status.opened_at is None:
        return 0
    return max(0, status.opened_at + status.expiry - now)


def initial_status(
    identifier: str,
    scope: str | None,
    kind: str,
    settings: Settings,
    metadata: Mapping[str, Any] | None,
    now: int,
) -> ConnectionStatus:
    """The status of a freshly registered connection: closed, no reports."""
    return ConnectionStatus(
        identifier=identifier,
        scope=scope,
        type=kind,
        state=CLOSED,
        failure_count=0,
        max_attempts=settings.max_attempts,
        expiry=settings.expiry,
        expiry_strategy=settings.expiry_strategy,
        initial_expiry=settings.initial_expiry,
        max_expiry=settings.max_expiry,
        backoff_factor=settings.backoff_factor,
        half_open_max_calls=settings.half_open_max_calls,
        **_rule_fields(settings),
        opened_at=None,
        last_success_time=None,
        last_failure_time=None,
        state_changed_at=now,
        registered_at=now,
        metadata=freeze_mapping(metadata),
    )


def registration_events(status: ConnectionStatus, settings: Settings) -> tuple[EventSpec, ...]:
    """``registration`` and ``connection_registered`` for a new connection."""
    data = {
        "state": status.state,
        "failure_count": status.failure_count,
        "type": status.type,
        **settings.as_dict(),
        "metadata": status.metadata,
    }
    return (
        (EventType.REGISTRATION, data),
        (EventType.CONNECTION_REGISTERED, dict(data)),
    )


def removal_events(status: ConnectionStatus, inactive: bool) -> tuple[EventSpec, ...]:
    """Events of a removal: by ``unregister`` or by the cleanup sweep."""
    base = {"state": status.state, "failure_count": status.failure_count}
    if inactive:
        first = (EventType.CLEANUP, {**base, "reason": "inactive"})
        reason = "inactive"
    else:
        first = (EventType.CONNECTION_UNREGISTERED, dict(base))
        reason = "unregistered"
    return (first, (EventType.CONNECTION_REMOVED, {**base, "reason": reason}))


def counts_only(status: ConnectionStatus, settings: Settings, pending: int) -> bool:
    """True when a failure reported after ``pending`` failures not yet in ``status``
    changes nothing but the failure counters (``with_failures``).

    That is a closed circuit without a rate window, still below ``max_attempts`` after
    it: no state changes, no window records it, its one event is ``failure_event``.
    Why it is a rule of its own: such failures are the busy path of an outage, and the
    local authority counts them in the reporting thread instead of building a status
    per failure (``LocalAuthority.report``).
    """
    return (status.state is CLOSED and not settings.windowed
            and status.failure_count + pending + 1 < settings.max_attempts)


def with_failures(status: ConnectionStatus, count: int, last: int) -> ConnectionStatus:
    """``status`` after ``count`` failures that only count (the last at ``last``)."""
    return evolve(status, failure_count=status.failure_count + count,
                  last_failure_time=last, total_failures=status.total_failures + count)


def failure_event(state: CircuitState, failure_count: int, reason: Any,
                  **extra: Any) -> EventSpec:
    """The ``failure`` event of a failure that left the circuit in ``state``."""
    return (EventType.FAILURE,
            {"state": state, "failure_count": failure_count, "reason": reason, **extra})


def _state_change(
    previous: CircuitState, status: ConnectionStatus, reason: Any
) -> EventSpec:
    return (
        EventType.STATE_CHANGE,
        {
            "state": status.state,
            "failure_count": status.failure_count,
            "previous_state": previous,
            "new_state": status.state,
            "reason": reason,
        },
    )


def _opened(status: ConnectionStatus, reason: Any,
            rates: tuple[float, float] | None = None) -> EventSpec:
    data = {
        "state": status.state,
        "failure_count": status.failure_count,
        "reason": reason,
        "opened_at": status.opened_at,
        "expiry": status.expiry,
    }
    if rates is not None:
        data["failure_rate"], data["slow_call_rate"] = rates
    return (EventType.CIRCUIT_OPENED, data)


def _simple(kind: EventType, status: ConnectionStatus, **extra: Any) -> EventSpec:
    return (kind, {"state": status.state, "failure_count": status.failure_count, **extra})


def _open(status: ConnectionStatus, settings: Settings, now: int, expiry: int | None,
          **changes: Any) -> ConnectionStatus:
    failure_count = changes.get("failure_count", status.failure_count)
    length = expiry if expiry is not None else opening_expiry(settings, failure_count)
    return evolve(status, state=OPEN, opened_at=now, expiry=length, half_open_successes=0,
                  **changes)


def _void(status: ConnectionStatus, trial: int) -> bool:
    """True if a trial admitted in the half_open period of the opening at ``trial`` is
    over (a half-open timeout or a manual change ended it): its outcome changes nothing."""
    return status.state is not HALF_OPEN or status.opened_at != trial


def _rule_fields(settings: Settings) -> dict[str, Any]:
    """The status fields that show a connection's rule settings."""
    return {
        "success_threshold": settings.success_threshold,
        "half_open_timeout": settings.half_open_timeout,
        "failure_rate_threshold": settings.failure_rate_threshold,
        "slow_call_rate_threshold": settings.slow_call_rate_threshold,
        "slow_call_duration": settings.slow_call_duration,
        "window_type": settings.window_type,
        "window_size": settings.window_size,
        "minimum_calls": settings.minimum_calls,
    }


def window_fields(settings: Settings, window: Window | None, now: int) -> dict[str, Any]:
    """``failure_rate``, ``slow_call_rate`` and ``window_calls`` of ``window`` at ``now``
    (rates None below ``minimum_calls``; all empty without a window)."""
    if window is None:
        return {"failure_rate": None, "slow_call_rate": None, "window_calls": 0}
    return figures_fields(settings.minimum_calls, *window.figures(now))


def figures_fields(minimum_calls: int, calls: int, failures: int,
                   slow: int) -> dict[str, Any]:
    """The status fields of a window holding these figures (rates None below
    ``minimum_calls``): also for windows kept elsewhere (a fleet's, in Redis)."""
    if calls < minimum_calls or not calls:
        return {"failure_rate": None, "slow_call_rate": None, "window_calls": calls}
    return {"failure_rate": failures / calls, "slow_call_rate": slow / calls,
            "window_calls": calls}


def _code(settings: Settings, failed: int, duration: float | None) -> int:
    """The window code of an outcome: ``FAILED`` and/or ``SLOW``."""
    slow = settings.slow_call_duration
    if duration is not None and slow is not None and duration >= slow:
        return failed | SLOW
    return failed


def _rate_trip(settings: Settings, window: Window,
               now: int) -> tuple[str, tuple[float, float]] | None:
    """The rate rule the window trips at ``now`` (reason, (failure rate, slow rate))."""
    return rate_trip(settings, *window.figures(now))


def rate_trip(rule: Settings | ConnectionStatus, calls: int, failures: int,
              slow: int) -> tuple[str, tuple[float, float]] | None:
    """The rate rule of ``rule`` (a connection's settings, or a status showing them)
    that a window holding these figures trips: (reason, (failure rate, slow rate))."""
    if calls < rule.minimum_calls or not calls:
        return None
    rates = (failures / calls, slow / calls)
    threshold = rule.failure_rate_threshold
    if threshold is not None and rates[0] >= threshold:
        return FAILURE_RATE_EXCEEDED, rates
    threshold = rule.slow_call_rate_threshold
    if threshold is not None and rates[1] >= threshold:
        return SLOW_CALL_RATE_EXCEEDED, rates
    return None


def _transitions(status: ConnectionStatus, to: CircuitState) -> tuple[tuple[str, str, int], ...]:
    """``status.transitions`` with one more ``status.state -> to``."""
    pairs = list(status.transitions)
    for i, (old, new, count) in enumerate(pairs):
        if old == status.state and new == to:
            pairs[i] = (old, new, count + 1)
            return tuple(pairs)
    pairs.append((status.state.value, to.value, 1))
    return tuple(pairs)


def apply(status: ConnectionStatus, settings: Settings, op: Input, now: int,
          window: Window | None = None) -> Transition:
    """Apply one input to a circuit.

    Args:
        status: the current status.
        settings: the connection's resolved settings.
        op: what happened.
        now: the time it happened, ms since the epoch.
        window: the connection's rate window (``_window.window_for(settings, ...)``): the
            one input that is not a value. It records the outcome (closed only) and is
            cleared on opening and on a reset, in place; its owner (the connection's
            actor, or a test's model) passes the same window each time.

    Returns:
        The new status and the events to emit, in the order of docs/events.md.
    """
    transition = _decide(status, settings, op, now, window)
    new = transition.status
    if new is status:
        return transition
    changes: dict[str, Any] = {}
    if new.state is not status.state:
        changes["transitions"] = _transitions(status, new.state)
    if window is not None:
        # An open circuit's window is empty: cleared on every opening (also one in the
        # millisecond of an earlier opening, when opened_at does not change) and reset.
        if new.state is OPEN or type(op) is Reset:
            window.clear()
        changes.update(window_fields(settings, window, now))
    elif status.window_calls or status.failure_rate is not None:
        changes.update(window_fields(settings, None, now))
    if not changes:
        return transition
    return Transition(evolve(new, **changes), transition.events)


def _decide(status: ConnectionStatus, settings: Settings, op: Input, now: int,
            window: Window | None) -> Transition:
    """``apply`` without the bookkeeping every change shares."""
    state = status.state
    if type(op) is Success:
        if op.trial is not None and _void(status, op.trial):
            return Transition(status, ())
        extra = {} if op.metadata is None else {"metadata": freeze_mapping(op.metadata)}
        if state is HALF_OPEN and status.half_open_successes + 1 < status.success_threshold:
            new = evolve(
                status, failure_count=0, half_open_successes=status.half_open_successes + 1,
                last_success_time=now, total_successes=status.total_successes + 1,
            )
            return Transition(new, (_simple(EventType.SUCCESS, new, **extra),))
        if state is HALF_OPEN:
            new = evolve(
                status, state=CLOSED, failure_count=0, state_changed_at=now,
                last_success_time=now, total_successes=status.total_successes + 1,
                half_open_successes=0,
            )
            return Transition(new, (
                _simple(EventType.SUCCESS, new, **extra),
                _simple(EventType.CIRCUIT_CLOSED, new, reason=TRIAL_SUCCEEDED),
                _state_change(state, new, TRIAL_SUCCEEDED),
            ))
        if window is not None and state is CLOSED:
            window.record(_code(settings, 0, op.duration), now)
            trip = _rate_trip(settings, window, now)
            if trip is not None:
                why, figures = trip
                new = _open(status, settings, now, None, state_changed_at=now,
                            failure_count=0, last_success_time=now,
                            total_successes=status.total_successes + 1)
                return Transition(new, (
                    _simple(EventType.SUCCESS, new, **extra),
                    _opened(new, why, figures),
                    _state_change(state, new, why),
                ))
        new = evolve(
            status, failure_count=0, last_success_time=now,
            total_successes=status.total_successes + 1,
        )
        return Transition(new, (_simple(EventType.SUCCESS, new, **extra),))

    if type(op) is Failure:
        if op.trial is not None and _void(status, op.trial):
            return Transition(status, ())
        count = status.failure_count + 1
        counters: dict[str, Any] = {
            "failure_count": count,
            "last_failure_time": now,
            "total_failures": status.total_failures + 1,
        }
        extra = {} if op.metadata is None else {"metadata": freeze_mapping(op.metadata)}
        reason: Any = None
        rates: tuple[float, float] | None = None
        if state is HALF_OPEN:
            reason = op.reason if op.reason is not None else HALF_OPEN_FAILED
        elif state is CLOSED:
            if window is not None:
                window.record(_code(settings, FAILED, op.duration), now)
            if settings.max_attempts and count >= settings.max_attempts:
                reason = THRESHOLD_EXCEEDED
            elif window is not None:
                trip = _rate_trip(settings, window, now)
                if trip is not None:
                    reason, rates = trip
        if reason is not None:
            new = _open(status, settings, now, None, state_changed_at=now, **counters)
            return Transition(new, (
                failure_event(new.state, new.failure_count, op.reason, **extra),
                _opened(new, reason, rates),
                _state_change(state, new, reason),
            ))
        new = with_failures(status, 1, now)
        return Transition(new, (failure_event(new.state, new.failure_count, op.reason,
                                              **extra),))

    if type(op) is Expire:
        if status.opened_at != op.opened_at or state is CLOSED:
            return Transition(status, ())  # a stale timer: that opening is over
        if state is HALF_OPEN:
            due = deadline(status)
            if due is None or now < due:
                return Transition(status, ())  # the timeout was lifted or moved on
            new = _open(status, settings, now, None, state_changed_at=now)
            return Transition(new, (
                _opened(new, HALF_OPEN_TIMEOUT),
                _state_change(state, new, HALF_OPEN_TIMEOUT),
            ))
        new = evolve(status, state=HALF_OPEN, state_changed_at=now, half_open_successes=0)
        return Transition(new, (
            _simple(EventType.EXPIRY, new, opened_at=status.opened_at, expiry=status.expiry),
            _simple(EventType.CIRCUIT_HALF_OPENED, new),
            _state_change(state, new, EXPIRY_REACHED),
        ))

    if type(op) is Open:
        reason = op.reason if op.reason is not None else MANUALLY_OPENED
        if state is OPEN:
            new = _open(status, settings, now, op.expiry)
            return Transition(new, (_opened(new, reason),))
        new = _open(status, settings, now, op.expiry, state_changed_at=now)
        return Transition(new, (_opened(new, reason), _state_change(state, new, reason)))

    if type(op) is Close:
        if state is CLOSED:
            return Transition(status, ())
        reason = op.reason if op.reason is not None else MANUALLY_CLOSED
        new = evolve(status, state=CLOSED, state_changed_at=now, half_open_successes=0)
        return Transition(new, (
            _simple(EventType.CIRCUIT_CLOSED, new, reason=reason),
            _state_change(state, new, reason),
        ))

    if type(op) is Reset:
        reason = op.reason if op.reason is not None else MANUALLY_RESET
        if state is CLOSED:
            new = evolve(status, failure_count=0)
            return Transition(new, (_simple(EventType.CIRCUIT_RESET, new, reason=reason),))
        new = evolve(status, state=CLOSED, failure_count=0, state_changed_at=now,
                     half_open_successes=0)
        return Transition(new, (
            _simple(EventType.CIRCUIT_RESET, new, reason=reason),
            _state_change(state, new, reason),
        ))

    if type(op) is Configure:
        s = op.settings
        changes: dict[str, Any] = {
            "max_attempts": s.max_attempts,
            "expiry_strategy": s.expiry_strategy,
            "initial_expiry": s.initial_expiry,
            "max_expiry": s.max_expiry,
            "backoff_factor": s.backoff_factor,
            "half_open_max_calls": s.half_open_max_calls,
            **_rule_fields(s),
        }
        if status.opened_at is None:
            # status.expiry is the current or last opening's length; before any
            # opening it shows the configured expiry.
            changes["expiry"] = s.expiry
        return Transition(evolve(status, **changes), ())

    raise TypeError(f"unknown circuit input {op!r}")
