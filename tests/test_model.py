"""A real system against a reference model of the contract in docs/circuit-rules.md and
docs/events.md (hypothesis stateful).

The machine drives one ``Brama`` on a ``ManualClock`` with random sequences of every
connection call, global and per-connection ``configure``, clock advances that fire
expiries and the cleanup sweep, and subscribe/unsubscribe, across several identifiers and
two scopes (one of them ``None``). After every step it drains the system and checks:

* every connection's full ``ConnectionStatus`` (and ``available``, ``connections()``)
  equals the model's;
* every live inbox subscription received exactly the model's events, in order per
  connection (events of different connections fired by one ``advance`` may interleave;
  nothing else may), with the data keys docs/events.md and docs/circuit-rules.md fix.

The model below is written from the contract (docs/circuit-rules.md, docs/events.md where the
contract is silent), not from ``brama_actors._rules``: plain dicts and integers.

A permanent all-events subscriber is created from a helper thread (so that the machine's
``unsubscribe(**filters)`` calls, which only remove the caller's subscriptions, never
touch it). In half the runs it leaves out ``success`` so that the "quiet success" fast
path (no actor message when nobody listens) is exercised too; the machine's own
subscriptions switch that interest on and off.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from brama_actors import (
    AlreadyRegistered,
    Brama,
    ConnectionNotFound,
    Event,
    EventType,
    InvalidConfiguration,
    Subscription,
)
from brama_actors.testing import ManualClock

START = 1_700_000_000_000
IDENTIFIERS = ("alpha", "beta", "gamma")
SCOPES: tuple[str | None, ...] = (None, "eu")
KEYS = tuple((i, s) for s in SCOPES for i in IDENTIFIERS)
ALL_TYPES = tuple(e.value for e in EventType)
CRITICAL = {"state_change", "circuit_opened", "circuit_closed", "circuit_reset",
            "circuit_half_opened"}

Key = tuple[str, str | None]

# -- the reference model --------------------------------------------------------------------

DEFAULT = {
    "max_attempts": 5,
    "expiry": 60_000,
    "expiry_strategy": "fixed",
    "backoff_factor": 2.0,
    "half_open_max_calls": 1,
    "success_threshold": 1,
    "half_open_timeout": None,
    "failure_rate_threshold": None,
    "slow_call_rate_threshold": None,
    "slow_call_duration": None,
    "window_type": "count",
    "window_size": 100,
    "minimum_calls": 10,
    "cleanup_interval": 10_000,
    "inactive_threshold": 86_400_000,
    "max_restarts": 10,
    "restart_window": 60_000,
}
CONNECTION_KEYS = ("max_attempts", "expiry", "expiry_strategy", "initial_expiry", "max_expiry",
                   "backoff_factor", "half_open_max_calls", "success_threshold",
                   "half_open_timeout", "failure_rate_threshold", "slow_call_rate_threshold",
                   "slow_call_duration", "window_type", "window_size", "minimum_calls")
NULLABLE = ("half_open_timeout", "failure_rate_threshold", "slow_call_rate_threshold",
            "slow_call_duration")
#: A time window's buckets: an outcome counts while its bucket started < size ms ago.
BUCKETS = 20
GLOBAL_KEYS = (*CONNECTION_KEYS, "cleanup_interval", "inactive_threshold", "max_restarts",
               "restart_window")
MINIMUM = {"max_attempts": 1, "expiry": 1, "initial_expiry": 1, "max_expiry": 1,
           "half_open_max_calls": 1, "success_threshold": 1, "half_open_timeout": 1,
           "slow_call_duration": 1, "window_size": 1, "minimum_calls": 1,
           "cleanup_interval": 1, "inactive_threshold": 1,
           "max_restarts": 0, "restart_window": 1}


class Invalid(Exception):
    """The model predicts InvalidConfiguration."""


def check_value(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """docs/circuit-rules.md (configuration)'s table, as the model reads it."""
    if name not in allowed:
        raise Invalid(name)
    if value is None and name in NULLABLE:
        return
    if name == "max_attempts" and type(value) is int and value == 0:
        return  # the consecutive rule off: resolve() checks a rate rule applies
    if name in ("failure_rate_threshold", "slow_call_rate_threshold"):
        if not (type(value) in (int, float) and math.isfinite(value) and 0 < value <= 1):
            raise Invalid(name)
    elif name == "window_type":
        if value not in ("count", "time"):
            raise Invalid(name)
    elif name in MINIMUM:
        if not (type(value) is int and value >= MINIMUM[name]):
            raise Invalid(name)
    elif name == "backoff_factor":
        if not (type(value) in (int, float) and math.isfinite(value) and value >= 1.0):
            raise Invalid(name)
    elif name == "expiry_strategy" and value not in ("fixed", "progressive"):
        raise Invalid(name)


def resolve(explicit: dict[str, Any]) -> dict[str, Any]:
    """A connection's settings from the options set explicitly (globally or for it)."""
    expiry = explicit.get("expiry", DEFAULT["expiry"])
    initial = explicit.get("initial_expiry", expiry)
    maximum = explicit.get("max_expiry", 10 * initial)
    if maximum < initial:
        raise Invalid("max_expiry")

    def get(name: str) -> Any:
        value = explicit.get(name)
        return DEFAULT[name] if value is None else value

    rated = get("failure_rate_threshold") is not None or \
        get("slow_call_rate_threshold") is not None
    if get("slow_call_rate_threshold") is not None and get("slow_call_duration") is None:
        raise Invalid("slow_call_rate_threshold")
    if get("max_attempts") == 0 and not rated:
        raise Invalid("max_attempts")
    if get("window_type") == "count" and get("minimum_calls") > get("window_size"):
        raise Invalid("minimum_calls")
    threshold = get("failure_rate_threshold")
    slow_threshold = get("slow_call_rate_threshold")
    return {
        "failure_rate_threshold": None if threshold is None else float(threshold),
        "slow_call_rate_threshold": None if slow_threshold is None else float(slow_threshold),
        "slow_call_duration": get("slow_call_duration"),
        "window_type": get("window_type"),
        "window_size": get("window_size"),
        "minimum_calls": get("minimum_calls"),
        "max_attempts": explicit.get("max_attempts", DEFAULT["max_attempts"]),
        "expiry": expiry,
        "expiry_strategy": explicit.get("expiry_strategy", DEFAULT["expiry_strategy"]),
        "initial_expiry": initial,
        "max_expiry": maximum,
        "backoff_factor": float(explicit.get("backoff_factor", DEFAULT["backoff_factor"])),
        "half_open_max_calls": explicit.get("half_open_max_calls",
                                            DEFAULT["half_open_max_calls"]),
        "success_threshold": explicit.get("success_threshold", DEFAULT["success_threshold"]),
        "half_open_timeout": explicit.get("half_open_timeout", DEFAULT["half_open_timeout"]),
    }


def opening_length(settings: dict[str, Any], failure_count: int) -> int:
    """docs/circuit-rules.md (expiry), truncated to whole ms (docs/circuit-rules.md)."""
    if settings["expiry_strategy"] == "fixed":
        return int(settings["expiry"])
    factor = settings["backoff_factor"]
    if float(factor).is_integer():  # exact integer arithmetic, no float rounding
        length = settings["initial_expiry"] * int(factor) ** failure_count
    else:
        try:
            length = settings["initial_expiry"] * factor ** failure_count
        except OverflowError:
            return int(settings["max_expiry"])
    return int(min(settings["max_expiry"], length))


@dataclass
class MConn:
    identifier: str
    scope: str | None
    type: str
    metadata: dict[str, Any]
    explicit: dict[str, Any]
    settings: dict[str, Any]
    registered_at: int
    state: str = "closed"
    failure_count: int = 0
    opened_at: int | None = None
    expiry: int = 0  # status.expiry: the current or last opening's length
    ever_opened: bool = False
    last_success: int | None = None
    last_failure: int | None = None
    state_changed_at: int = 0
    successes: int = 0
    failures: int = 0
    deadline: int | None = None  # open: the expiry; half_open: half_open_timeout's end
    timer_seq: int = -1
    half_open_successes: int = 0
    # The rate window: (time, code) per outcome, code 1 failed | 2 slow; None: no rate rule.
    window: list[tuple[int, int]] | None = None
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def rated(self) -> bool:
        return (self.settings["failure_rate_threshold"] is not None
                or self.settings["slow_call_rate_threshold"] is not None)

    def window_figures(self, now: int) -> tuple[int, int, int]:
        """(calls, failures, slow) in the window at ``now``, as API.md section 12 says."""
        if self.window is None:
            return 0, 0, 0
        size = self.settings["window_size"]
        if self.settings["window_type"] == "count":
            items = self.window[-size:]
        else:
            width = -(-size // BUCKETS)
            items = [(t, c) for t, c in self.window if (t // width) * width > now - size]
        return len(items), sum(c & 1 for _, c in items), sum(c >> 1 for _, c in items)

    def rates(self, now: int) -> tuple[float, float] | None:
        calls, failures, slow = self.window_figures(now)
        if calls == 0 or calls < self.settings["minimum_calls"]:
            return None
        return failures / calls, slow / calls

    def last_activity(self) -> int:
        return max(self.registered_at, self.state_changed_at, self.last_success or 0,
                   self.last_failure or 0)

    def expected_status(self, now: int) -> dict[str, Any]:
        total = self.successes + self.failures
        rates = self.rates(now)
        return {
            "identifier": self.identifier,
            "scope": self.scope,
            "type": self.type,
            "state": self.state,
            "failure_count": self.failure_count,
            **{k: self.settings[k] for k in CONNECTION_KEYS if k != "expiry"},
            "expiry": self.expiry,
            "opened_at": self.opened_at,
            "last_success_time": self.last_success,
            "last_failure_time": self.last_failure,
            "state_changed_at": self.state_changed_at,
            "registered_at": self.registered_at,
            "total_successes": self.successes,
            "total_failures": self.failures,
            "metadata": self.metadata,
            "success_rate": None if total == 0 else self.successes / total,
            "half_open_successes": self.half_open_successes,
            "window_calls": self.window_figures(now)[0],
            "failure_rate": None if rates is None else rates[0],
            "slow_call_rate": None if rates is None else rates[1],
            "total_rejections": 0,
            "total_ignored": 0,
            "transitions": tuple((a, b, n) for (a, b), n in self.transitions.items()),
        }


@dataclass
class MEvent:
    """An expected event; ``data`` holds the keys the contract fixes for its type."""

    kind: str
    connection: str
    scope: str | None
    timestamp: int
    data: dict[str, Any]


@dataclass
class MSub:
    sub: Subscription
    events: frozenset[str] | None
    connection: str | None
    scope: str | None
    predicate: str  # "none", "even", "raises"
    mine: bool  # subscribed from the machine's thread (unsubscribe(**filters) sees it)
    expected: list[MEvent] = field(default_factory=list)

    def matches(self, event: MEvent) -> bool:
        if self.events is not None and event.kind not in self.events:
            return False
        if self.connection is not None and event.connection != self.connection:
            return False
        if self.scope is not None and event.scope != self.scope:
            return False
        if self.predicate == "raises":
            return False  # a raising filter counts as no match
        return not (self.predicate == "even" and event.data["failure_count"] % 2)


def even_failures(event: Event) -> bool:
    return bool(event.data["failure_count"] % 2 == 0)


def raising_filter(event: Event) -> bool:
    raise RuntimeError("hostile filter")


PREDICATES = {"none": None, "even": even_failures, "raises": raising_filter}


class Model:
    """The whole system as the docs describe it."""

    def __init__(self, now: int, explicit: dict[str, Any]) -> None:
        self.now = now
        self.explicit = dict(explicit)  # options given to start/configure, validated
        self.conns: dict[Key, MConn] = {}
        self.subs: list[MSub] = []
        self.seq = 0
        self.sweep_at = now + self.config("cleanup_interval")
        self.sweep_seq = self.next_seq()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def config(self, name: str) -> Any:
        return self.explicit.get(name, DEFAULT.get(name))

    # -- events ---------------------------------------------------------------------------
    def emit(self, conn: MConn, kind: str, **extra: Any) -> None:
        data = {"state": conn.state, "failure_count": conn.failure_count, **extra}
        event = MEvent(kind, conn.identifier, conn.scope, self.now, data)
        for sub in self.subs:
            if sub.matches(event):
                sub.expected.append(event)

    def _settings_data(self, conn: MConn) -> dict[str, Any]:
        return {"type": conn.type, **conn.settings, "metadata": conn.metadata}

    # -- operations -----------------------------------------------------------------------
    def register(self, key: Key, kind: str, metadata: dict[str, Any] | None,
                 given: dict[str, Any]) -> MConn:
        explicit = {k: v for k, v in self.explicit.items() if k in CONNECTION_KEYS}
        explicit.update(given)
        conn = MConn(identifier=key[0], scope=key[1], type=kind, metadata=dict(metadata or {}),
                     explicit=explicit, settings=resolve(explicit), registered_at=self.now,
                     state_changed_at=self.now)
        conn.expiry = conn.settings["expiry"]
        conn.window = [] if conn.rated else None
        self.conns[key] = conn
        self.emit(conn, "registration", **self._settings_data(conn))
        self.emit(conn, "connection_registered", **self._settings_data(conn))
        return conn

    def remove(self, key: Key, why: str) -> None:
        conn = self.conns.pop(key)
        first = "connection_unregistered" if why == "unregistered" else "cleanup"
        extra = {"reason": why} if why == "inactive" else {}
        self.emit(conn, first, **extra)
        self.emit(conn, "connection_removed", reason=why)

    def _open(self, conn: MConn, length: int) -> None:
        if conn.window is not None:
            conn.window = []  # opening clears the window
        conn.opened_at = self.now
        conn.expiry = length
        conn.ever_opened = True
        conn.deadline = self.now + length
        conn.timer_seq = self.next_seq()

    def _change(self, conn: MConn, new: str) -> str:
        previous, conn.state = conn.state, new
        conn.transitions[(previous, new)] = conn.transitions.get((previous, new), 0) + 1
        conn.state_changed_at = self.now
        conn.half_open_successes = 0
        conn.deadline = None
        if new == "half_open":
            self._arm_half_open(conn)
        return previous

    def _arm_half_open(self, conn: MConn) -> None:
        """A half_open period ends half_open_timeout ms after it began (if set)."""
        timeout = conn.settings["half_open_timeout"]
        conn.deadline = None if timeout is None else conn.state_changed_at + timeout
        conn.timer_seq = self.next_seq()

    def _state_change(self, conn: MConn, previous: str, reason: Any) -> None:
        self.emit(conn, "state_change", previous_state=previous, new_state=conn.state,
                  reason=reason)

    def _record(self, conn: MConn, failed: int, duration: float | None) -> str | None:
        """Record an outcome in a closed circuit's window; the rate rule it trips."""
        if conn.window is None or conn.state != "closed":
            return None
        slow = conn.settings["slow_call_duration"]
        code = failed | (2 if duration is not None and slow is not None and duration >= slow
                         else 0)
        conn.window.append((self.now, code))
        if conn.settings["window_type"] == "count":
            del conn.window[:-conn.settings["window_size"]]
        rates = conn.rates(self.now)
        if rates is None:
            return None
        threshold = conn.settings["failure_rate_threshold"]
        if threshold is not None and rates[0] >= threshold:
            return "Failure rate exceeded"
        threshold = conn.settings["slow_call_rate_threshold"]
        if threshold is not None and rates[1] >= threshold:
            return "Slow call rate exceeded"
        return None

    def _opens(self, conn: MConn, why: str, rates: tuple[float, float] | None,
               kind: str, **data: Any) -> None:
        """Open on an outcome: its own event first (showing the new state), then
        circuit_opened (with the rates when a rate rule opened it) and state_change."""
        previous = self._change(conn, "open")
        self._open(conn, opening_length(conn.settings, conn.failure_count))
        self.emit(conn, kind, **data)
        extra = {} if rates is None else {"failure_rate": rates[0], "slow_call_rate": rates[1]}
        self.emit(conn, "circuit_opened", reason=why, opened_at=conn.opened_at,
                  expiry=conn.expiry, **extra)
        self._state_change(conn, previous, why)

    def success(self, key: Key, metadata: dict[str, Any] | None,
                duration: float | None = None) -> None:
        conn = self.conns[key]
        tripped = self._record(conn, 0, duration)
        rates = conn.rates(self.now)
        conn.successes += 1
        conn.last_success = self.now
        conn.failure_count = 0
        extra = {} if metadata is None else {"metadata": metadata}
        if (conn.state == "half_open"
                and conn.half_open_successes + 1 < conn.settings["success_threshold"]):
            conn.half_open_successes += 1
            self.emit(conn, "success", **extra)
        elif conn.state == "half_open":
            previous = self._change(conn, "closed")
            self.emit(conn, "success", **extra)
            reason = "Success in half_open"
            self.emit(conn, "circuit_closed", reason=reason)
            self._state_change(conn, previous, reason)
        elif tripped is not None:
            self._opens(conn, tripped, rates, "success", **extra)
        else:
            self.emit(conn, "success", **extra)

    def failure(self, key: Key, reason: Any, metadata: dict[str, Any] | None,
                duration: float | None = None) -> None:
        conn = self.conns[key]
        conn.failures += 1
        conn.last_failure = self.now
        conn.failure_count += 1
        extra = {} if metadata is None else {"metadata": metadata}
        tripped = self._record(conn, 1, duration)
        rates = conn.rates(self.now)
        attempts = conn.settings["max_attempts"]
        if conn.state == "half_open":
            why = reason if reason is not None else "Failure in half_open"
            rates = None
        elif conn.state == "closed" and attempts and conn.failure_count >= attempts:
            why = "Threshold exceeded"
            rates = None
        elif tripped is not None:
            why = tripped
        else:
            self.emit(conn, "failure", reason=reason, **extra)
            return
        self._opens(conn, why, rates, "failure", reason=reason, **extra)

    def open_circuit(self, key: Key, reason: Any, expiry: int | None) -> None:
        conn = self.conns[key]
        why = reason if reason is not None else "Manually opened"
        length = expiry if expiry is not None else opening_length(conn.settings,
                                                                 conn.failure_count)
        was_open = conn.state == "open"
        previous = conn.state if was_open else self._change(conn, "open")
        self._open(conn, length)
        self.emit(conn, "circuit_opened", reason=why, opened_at=conn.opened_at,
                  expiry=conn.expiry)
        if not was_open:
            self._state_change(conn, previous, why)

    def close_circuit(self, key: Key, reason: Any) -> None:
        conn = self.conns[key]
        if conn.state == "closed":
            return
        why = reason if reason is not None else "Manually closed"
        previous = self._change(conn, "closed")
        self.emit(conn, "circuit_closed", reason=why)
        self._state_change(conn, previous, why)

    def reset_circuit(self, key: Key, reason: Any) -> None:
        conn = self.conns[key]
        why = reason if reason is not None else "Manually reset"
        conn.failure_count = 0
        if conn.window is not None:
            conn.window = []  # a reset starts the window over
        if conn.state == "closed":
            self.emit(conn, "circuit_reset", reason=why)
            return
        previous = self._change(conn, "closed")
        self.emit(conn, "circuit_reset", reason=why)
        self._state_change(conn, previous, why)

    def configure_connection(self, key: Key, options: dict[str, Any]) -> None:
        conn = self.conns[key]
        explicit = {**conn.explicit, **options}
        settings = resolve(explicit)  # may raise Invalid: nothing changed
        old = conn.settings
        conn.explicit = explicit
        conn.settings = settings
        if not conn.rated:
            conn.window = None
        elif (conn.window is None or old["window_type"] != settings["window_type"]
              or old["window_size"] != settings["window_size"]):
            conn.window = []  # a new kind or size of window starts empty
        if not conn.ever_opened:
            conn.expiry = settings["expiry"]
        if conn.state == "half_open":  # a new half_open_timeout applies at once
            self._arm_half_open(conn)

    def configure_global(self, options: dict[str, Any]) -> None:
        merged = {**self.explicit, **options}
        resolve({k: v for k, v in merged.items() if k in CONNECTION_KEYS})
        self.explicit = merged
        if "cleanup_interval" in options:
            self.sweep_at = self.now + options["cleanup_interval"]
            self.sweep_seq = self.next_seq()

    def advance(self, dt: int) -> None:
        """Move time; every due timer fires at the new time, in deadline order."""
        self.now += dt
        due: list[tuple[int, int, Key | None]] = [
            (c.deadline, c.timer_seq, key) for key, c in self.conns.items()
            if c.state != "closed" and c.deadline is not None and c.deadline <= self.now
        ]
        if self.sweep_at <= self.now:
            due.append((self.sweep_at, self.sweep_seq, None))
        for _, _, key in sorted(due, key=lambda d: (d[0], d[1])):
            if key is None:
                self._sweep()
                continue
            conn = self.conns.get(key)
            if conn is None or conn.state == "closed":
                continue  # removed by a sweep that came first
            if conn.state == "half_open":
                why = "Half-open timeout"
                previous = self._change(conn, "open")
                self._open(conn, opening_length(conn.settings, conn.failure_count))
                self.emit(conn, "circuit_opened", reason=why, opened_at=conn.opened_at,
                          expiry=conn.expiry)
                self._state_change(conn, previous, why)
                continue
            ended_at, ended_expiry = conn.opened_at, conn.expiry
            previous = self._change(conn, "half_open")
            self.emit(conn, "expiry", opened_at=ended_at, expiry=ended_expiry)
            self.emit(conn, "circuit_half_opened")
            self._state_change(conn, previous, "Expiry reached")

    def _sweep(self) -> None:
        threshold = self.config("inactive_threshold")
        for key, conn in list(self.conns.items()):
            if self.now - conn.last_activity() > threshold:
                self.remove(key, "inactive")
        # One advance runs at most one sweep; the next is an interval after it ran.
        self.sweep_at = self.now + self.config("cleanup_interval")
        self.sweep_seq = self.next_seq()


# -- strategies -------------------------------------------------------------------------------

keys = st.sampled_from(KEYS)
reasons = st.sampled_from([None, "boom", "timeout", 42])
metadatas = st.sampled_from([None, {}, {"region": "eu"}, {"nested": {"ids": [1, 2]}}])
good_values: dict[str, st.SearchStrategy[Any]] = {
    "max_attempts": st.integers(0, 4),
    "expiry": st.sampled_from([40, 100, 250]),
    "expiry_strategy": st.sampled_from(["fixed", "progressive"]),
    "initial_expiry": st.sampled_from([20, 50, 100]),
    "max_expiry": st.sampled_from([30, 200, 1000]),
    "backoff_factor": st.sampled_from([1.0, 2.0, 3]),
    "half_open_max_calls": st.integers(1, 3),
    "success_threshold": st.integers(1, 3),
    "half_open_timeout": st.sampled_from([30, 100, 300]),
    "failure_rate_threshold": st.sampled_from([0.25, 0.5, 1]),
    "slow_call_rate_threshold": st.sampled_from([0.5, 1.0]),
    "slow_call_duration": st.sampled_from([10, 100]),
    "window_type": st.sampled_from(["count", "time"]),
    "window_size": st.sampled_from([3, 5, 100, 400]),
    "minimum_calls": st.sampled_from([1, 2, 4]),
    "cleanup_interval": st.sampled_from([200, 500, 1000]),
    "inactive_threshold": st.sampled_from([300, 1000, 2500]),
    "max_restarts": st.integers(0, 5),
    "restart_window": st.sampled_from([1000, 60_000]),
}
bad_values = st.sampled_from([0, -5, 2.5, True, "fixed2", None, float("nan"), float("inf"),
                              "3", [1]])
#: Reported durations (ms): mostly none or valid, sometimes bad (refused, nothing recorded).
durations = st.sampled_from([None, None, 5, 50, 150, 2.5, -1, float("nan"), True, "5"])


def duration_error(duration: Any) -> type[Exception] | None:
    """What ``success``/``failure`` raise for a bad ``duration`` (None: accepted)."""
    if duration is None:
        return None
    if type(duration) is bool or not isinstance(duration, int | float):
        return TypeError
    if not math.isfinite(duration) or duration < 0:
        return ValueError
    return None


@st.composite
def rate_options(draw: st.DrawFn) -> dict[str, Any]:
    """A complete rate-rule configuration (the machine reaches windows often)."""
    options: dict[str, Any] = {
        "window_type": draw(st.sampled_from(["count", "time"])),
        "window_size": draw(st.sampled_from([4, 6, 100, 400])),
        "minimum_calls": draw(st.sampled_from([1, 2, 3])),
        "max_attempts": draw(st.sampled_from([0, 0, 3])),
    }
    if draw(st.booleans()):
        options["failure_rate_threshold"] = draw(st.sampled_from([0.5, 0.75, 1]))
    if draw(st.booleans()) or "failure_rate_threshold" not in options:
        options["slow_call_rate_threshold"] = draw(st.sampled_from([0.5, 1]))
        options["slow_call_duration"] = draw(st.sampled_from([10, 100]))
    return options


def option_sets(names: tuple[str, ...], extra: tuple[str, ...] = ()) -> Any:
    """Dicts of options: mostly valid values, sometimes a bad value or a foreign name."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        chosen = draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
        options = {name: draw(good_values[name]) for name in chosen}
        if draw(st.integers(0, 9)) == 0 and names:
            options[draw(st.sampled_from(names))] = draw(bad_values)
        if extra and draw(st.integers(0, 14)) == 0:
            options[draw(st.sampled_from(extra))] = 1000
        return options

    return build()


def predict(options: dict[str, Any], allowed: tuple[str, ...], *,
            skip_none: bool = False) -> dict[str, Any]:
    """The options the model accepts; raises Invalid like the contract."""
    accepted = {}
    for name, value in options.items():
        if value is None and skip_none and name in allowed:
            continue
        check_value(name, value, allowed)
        accepted[name] = value
    return accepted


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return actual is not None and dict(actual) == expected
    return bool(actual == expected)


# -- the machine ------------------------------------------------------------------------------


class BramaMachine(RuleBasedStateMachine):
    """Random call sequences on a real system, checked against ``Model`` after each step."""

    subscriptions = Bundle("subscriptions")
    registered = Bundle("registered")
    known = st.one_of(registered, registered, registered, keys)

    def __init__(self) -> None:
        super().__init__()
        self.brama: Brama | None = None
        self.clock = ManualClock(start_ms=START)
        self.model: Model
        self.removed: list[Subscription] = []

    @initialize(config=option_sets(GLOBAL_KEYS), watch_success=st.booleans())
    def start(self, config: dict[str, Any], watch_success: bool) -> None:
        # Small defaults, so that openings expire and connections go idle within a run.
        config.setdefault("cleanup_interval", 500)
        config.setdefault("inactive_threshold", 1000)
        config.setdefault("expiry", 100)
        config.setdefault("max_attempts", 2)
        try:
            explicit = predict(config, GLOBAL_KEYS)
            resolve({k: v for k, v in explicit.items() if k in CONNECTION_KEYS})
        except Invalid:
            try:
                Brama.start(clock=self.clock, **config).stop()
            except InvalidConfiguration:
                pass
            else:
                raise AssertionError(f"Brama.start({config!r}) should have been refused")
            config = {"cleanup_interval": 500, "inactive_threshold": 1000, "expiry": 100,
                      "max_attempts": 2}
            explicit = dict(config)
        self.brama = Brama.start(clock=self.clock, **config)
        self.model = Model(START, explicit)
        # The permanent oracle subscription, owned by another thread.
        events = None if watch_success else [t for t in ALL_TYPES if t != "success"]
        holder: list[Subscription] = []
        brama = self.brama
        thread = threading.Thread(target=lambda: holder.append(brama.subscribe(events=events)))
        thread.start()
        thread.join(10)
        self.model.subs.append(MSub(holder[0], None if events is None else frozenset(events),
                                    None, None, "none", mine=False))

    def teardown(self) -> None:
        if self.brama is not None:
            self.brama.stop()

    # -- helpers ---------------------------------------------------------------------------
    def expect_error(self, errors: tuple[type[BaseException], ...],
                     call: Callable[[], Any]) -> None:
        try:
            call()
        except errors:
            return
        raise AssertionError(f"expected one of {errors}")

    def exists(self, key: Key) -> bool:
        return key in self.model.conns

    # -- connection rules --------------------------------------------------------------
    # Keys come mostly from what was registered (maybe removed since), else from all keys.
    @rule(target=registered, key=keys, kind=st.sampled_from(["general", "db"]),
          metadata=metadatas, options=option_sets(CONNECTION_KEYS))
    def register(self, key: Key, kind: str, metadata: dict[str, Any] | None,
                 options: dict[str, Any]) -> Any:
        assert self.brama is not None
        brama = self.brama
        errors: list[type[BaseException]] = []
        try:
            given = predict(options, CONNECTION_KEYS, skip_none=True)
            explicit = {k: v for k, v in self.model.explicit.items() if k in CONNECTION_KEYS}
            resolve({**explicit, **given})
        except Invalid:
            errors.append(InvalidConfiguration)
        if self.exists(key):
            errors.append(AlreadyRegistered)
        call: Callable[[], Any] = lambda: brama.register(  # noqa: E731
            key[0], scope=key[1], type=kind, metadata=metadata, **options)
        if errors:
            self.expect_error(tuple(errors), call)
            return multiple()
        status = call()
        conn = self.model.register(key, kind, metadata, given)
        self.check_status(status, conn)
        return key

    @rule(key=keys, options=rate_options())
    def register_rated(self, key: Key, options: dict[str, Any]) -> None:
        """Register (or reconfigure) a connection with rate rules."""
        if self.exists(key):
            self.configure_connection(key, options)
        else:
            self.register(key, "general", None, options)

    @rule(key=known)
    def unregister(self, key: Key) -> None:
        assert self.brama is not None
        brama = self.brama
        existed = self.exists(key)
        assert brama.unregister(key[0], scope=key[1]) is existed
        if existed:
            self.model.remove(key, "unregistered")

    @rule(key=known, metadata=metadatas, duration=durations)
    def success(self, key: Key, metadata: dict[str, Any] | None,
                duration: Any = None) -> None:
        assert self.brama is not None
        brama = self.brama
        error = duration_error(duration)
        if error is not None:
            self.expect_error((error,), lambda: brama.success(
                key[0], scope=key[1], duration=duration))
            return
        if not self.exists(key):
            self.expect_error((ConnectionNotFound,),
                              lambda: brama.success(key[0], scope=key[1]))
            return
        brama.success(key[0], scope=key[1], metadata=metadata, duration=duration)
        self.model.success(key, metadata, duration)
        # Same-thread read-your-writes, before any drain.
        assert brama.status(key[0], scope=key[1]).total_successes == \
            self.model.conns[key].successes

    @rule(data=st.data())
    def success_in_half_open(self, data: st.DataObject) -> None:
        """A success to a half_open connection: the rare state success_threshold acts in."""
        half_open = sorted((k for k, c in self.model.conns.items() if c.state == "half_open"),
                           key=repr)
        if half_open:
            self.success(data.draw(st.sampled_from(half_open)), None)

    @rule(key=known, reason=reasons, metadata=metadatas, duration=durations)
    def failure(self, key: Key, reason: Any, metadata: dict[str, Any] | None,
                duration: Any = None) -> None:
        assert self.brama is not None
        brama = self.brama
        error = duration_error(duration)
        if error is not None:
            self.expect_error((error,), lambda: brama.failure(
                key[0], scope=key[1], duration=duration))
            return
        if not self.exists(key):
            self.expect_error((ConnectionNotFound,),
                              lambda: brama.failure(key[0], scope=key[1]))
            return
        brama.failure(key[0], scope=key[1], reason=reason, metadata=metadata,
                      duration=duration)
        self.model.failure(key, reason, metadata, duration)

    @rule(key=known, count=st.integers(2, 4), reason=reasons)
    def failures(self, key: Key, count: int, reason: Any) -> None:
        for _ in range(count):
            self.failure(key, reason, None)

    @rule(key=known, outcomes=st.lists(st.tuples(st.booleans(),
                                                 st.sampled_from([None, 5, 50, 150])),
                                       min_size=2, max_size=8),
          dt=st.sampled_from([0, 0, 1, 7, 40]))
    def mixed(self, key: Key, outcomes: list[tuple[bool, float | None]], dt: int) -> None:
        """A run of successes and failures, some slow, ``dt`` ms apart: fills windows."""
        for ok, duration in outcomes:
            if ok:
                self.success(key, None, duration)
            else:
                self.failure(key, None, None, duration)
            if dt:
                self.advance(dt)

    @rule(key=known, reason=reasons,
          expiry=st.one_of(st.none(), st.sampled_from([30, 120, 700]), bad_values))
    def open_circuit(self, key: Key, reason: Any, expiry: Any) -> None:
        assert self.brama is not None
        brama = self.brama
        errors: list[type[BaseException]] = []
        if expiry is not None and not (type(expiry) is int and expiry >= 1):
            errors.append(InvalidConfiguration)
        if not self.exists(key):
            errors.append(ConnectionNotFound)
        call: Callable[[], Any] = lambda: brama.open_circuit(  # noqa: E731
            key[0], scope=key[1], reason=reason, expiry=expiry)
        if errors:
            self.expect_error(tuple(errors), call)
            return
        call()
        self.model.open_circuit(key, reason, expiry)

    @rule(key=known, reason=reasons)
    def close_circuit(self, key: Key, reason: Any) -> None:
        assert self.brama is not None
        brama = self.brama
        if not self.exists(key):
            self.expect_error((ConnectionNotFound,),
                              lambda: brama.close_circuit(key[0], scope=key[1]))
            return
        brama.close_circuit(key[0], scope=key[1], reason=reason)
        self.model.close_circuit(key, reason)

    @rule(key=known, reason=reasons)
    def reset_circuit(self, key: Key, reason: Any) -> None:
        assert self.brama is not None
        brama = self.brama
        if not self.exists(key):
            self.expect_error((ConnectionNotFound,),
                              lambda: brama.reset_circuit(key[0], scope=key[1]))
            return
        brama.reset_circuit(key[0], scope=key[1], reason=reason)
        self.model.reset_circuit(key, reason)

    @rule(key=known, options=option_sets(CONNECTION_KEYS, ("cleanup_interval",
                                                          "inactive_threshold")))
    def configure_connection(self, key: Key, options: dict[str, Any]) -> None:
        assert self.brama is not None
        brama = self.brama
        errors: list[type[BaseException]] = []
        try:
            accepted = predict(options, CONNECTION_KEYS)
            if self.exists(key):
                resolve({**self.model.conns[key].explicit, **accepted})
        except Invalid:
            errors.append(InvalidConfiguration)
        if not self.exists(key):
            errors.append(ConnectionNotFound)
        call: Callable[[], Any] = lambda: brama.configure(key[0], scope=key[1], **options)  # noqa: E731
        if errors:
            self.expect_error(tuple(errors), call)
            return
        call()
        self.model.configure_connection(key, accepted)

    @rule(options=option_sets(GLOBAL_KEYS))
    def configure_global(self, options: dict[str, Any]) -> None:
        assert self.brama is not None
        brama = self.brama
        try:
            accepted = predict(options, GLOBAL_KEYS)
            merged = {**self.model.explicit, **accepted}
            resolve({k: v for k, v in merged.items() if k in CONNECTION_KEYS})
        except Invalid:
            self.expect_error((InvalidConfiguration,),
                              lambda: brama.configure(**options))
            return
        brama.configure(**options)
        self.model.configure_global(accepted)

    @rule(dt=st.sampled_from([0, 1, 19, 30, 50, 100, 250, 600, 1500, 4000]))
    def advance(self, dt: int) -> None:
        """Move the clock; due expiries and the sweep fire inside advance()."""
        self.clock.advance(dt)
        self.model.advance(dt)

    @rule(which=st.sampled_from(["expiry", "sweep"]), offset=st.sampled_from([-1, 0, 0, 1]))
    def advance_to_deadline(self, which: str, offset: int) -> None:
        """Advance to just before, at or after the next expiry deadline or sweep."""
        model = self.model
        if which == "sweep":
            deadline = model.sweep_at
        else:
            deadlines = [c.deadline for c in model.conns.values()
                         if c.state != "closed" and c.deadline is not None]
            deadline = min(deadlines, default=model.sweep_at)
        self.advance(max(0, deadline - model.now + offset))

    @rule(target=subscriptions,
          events=st.one_of(st.none(), st.sets(st.sampled_from(ALL_TYPES), min_size=1,
                                              max_size=4)),
          connection=st.one_of(st.none(), st.sampled_from(IDENTIFIERS)),
          scope=st.one_of(st.none(), st.just("eu")),
          predicate=st.sampled_from(["none", "none", "even", "raises"]))
    def subscribe(self, events: set[str] | None, connection: str | None, scope: str | None,
                  predicate: str) -> Any:
        assert self.brama is not None
        brama = self.brama
        sub = brama.subscribe(events=events, connection=connection, scope=scope,
                                   filter=PREDICATES[predicate])
        msub = MSub(sub, None if events is None else frozenset(events), connection, scope,
                    predicate, mine=True)
        self.model.subs.append(msub)
        return multiple(msub)

    @rule(msub=consumes(subscriptions))
    def unsubscribe(self, msub: MSub) -> None:
        assert self.brama is not None
        brama = self.brama
        live = msub in self.model.subs
        assert brama.unsubscribe(msub.sub) is live
        # A second unsubscribe of the same handle says False.
        assert brama.unsubscribe(msub.sub) is False
        if live:
            self.model.subs.remove(msub)
            self.removed.append(msub.sub)

    @rule(connection=st.one_of(st.none(), st.sampled_from(IDENTIFIERS)),
          scope=st.one_of(st.none(), st.just("eu")),
          events=st.one_of(st.none(), st.sets(st.sampled_from(ALL_TYPES), min_size=1,
                                              max_size=4)))
    def unsubscribe_where(self, connection: str | None, scope: str | None,
                          events: set[str] | None) -> None:
        assert self.brama is not None
        brama = self.brama
        doomed = [
            s for s in self.model.subs
            if s.mine
            and (connection is None or s.connection == connection)
            and (scope is None or s.scope == scope)
            and (events is None or s.events == frozenset(events))
        ]
        removed = brama.unsubscribe(connection=connection, scope=scope, events=events)
        assert removed == len(doomed)
        for s in doomed:
            self.model.subs.remove(s)
            self.removed.append(s.sub)

    # -- the check after every step ----------------------------------------------------
    def check_status(self, status: Any, conn: MConn) -> None:
        expected = conn.expected_status(self.model.now)
        actual = {name: getattr(status, name) for name in expected}
        actual["metadata"] = dict(actual["metadata"])
        assert actual == expected, (
            f"status of {(conn.identifier, conn.scope)} differs: "
            f"{ {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]} }")

    @invariant()
    def matches_model(self) -> None:
        brama = self.brama
        if brama is None:
            return
        brama.drain(timeout=5)
        model = self.model
        assert brama.clock.now() == model.now
        for key in KEYS:
            conn = model.conns.get(key)
            if conn is None:
                assert brama.available(key[0], scope=key[1]) is False
                try:
                    brama.status(key[0], scope=key[1])
                except ConnectionNotFound:
                    pass
                else:
                    raise AssertionError(f"{key} should not be registered")
                continue
            self.check_status(brama.status(key[0], scope=key[1]), conn)
            assert brama.available(key[0], scope=key[1]) is (conn.state != "open")
        listed = {(s.identifier, s.scope): s for s in brama.connections()}
        assert set(listed) == set(model.conns)
        for key, status in listed.items():
            self.check_status(status, model.conns[key])
        for scope in SCOPES:
            scoped = {(s.identifier, s.scope) for s in brama.connections(scope=scope)}
            assert scoped == {k for k in model.conns if k[1] == scope}
        for msub in model.subs:
            self.check_events(msub)
        for sub in self.removed:
            try:
                item = sub.get(timeout=0)
            except queue.Empty:
                continue
            raise AssertionError(f"an unsubscribed inbox still received {item!r}")

    def check_events(self, msub: MSub) -> None:
        got: list[Event] = []
        while True:
            try:
                item = msub.sub.get(timeout=0)
            except queue.Empty:
                break
            assert isinstance(item, Event)
            got.append(item)
        expected, msub.expected = msub.expected, []
        per_key_got: dict[Key, list[Event]] = defaultdict(list)
        per_key_expected: dict[Key, list[MEvent]] = defaultdict(list)
        for event in got:
            per_key_got[(event.connection, event.scope)].append(event)  # type: ignore[index]
        for mevent in expected:
            per_key_expected[(mevent.connection, mevent.scope)].append(mevent)
        summary = (f"subscription {msub.sub!r} (predicate {msub.predicate}): got "
                   f"{[(e.event.value, e.connection, e.scope) for e in got]}, expected "
                   f"{[(e.kind, e.connection, e.scope) for e in expected]}")
        assert set(per_key_got) == set(per_key_expected), summary
        for key, events in per_key_got.items():
            wanted = per_key_expected[key]
            assert [e.event.value for e in events] == [m.kind for m in wanted], summary
            for event, mevent in zip(events, wanted, strict=True):
                assert event.timestamp == mevent.timestamp, (summary, event)
                for name, value in mevent.data.items():
                    assert name in event.data, (summary, event, name)
                    assert _same(event.data[name], value), (
                        f"{event.event.value} of {key}: data[{name!r}] is "
                        f"{event.data[name]!r}, expected {value!r}")
                for name in ("state", "failure_count"):
                    assert name in event.data
                assert isinstance(event.event, EventType)
                assert event.critical is (mevent.kind in CRITICAL)


def examples(default: int) -> dict[str, Any]:
    """The machines' example settings: ``default`` examples, the same at every run;
    with the environment variable ``BRAMA_MODEL_EXAMPLES=N``, N new random ones per
    run instead (a longer hunt: give it a larger ``--timeout`` too)."""
    wanted = os.environ.get("BRAMA_MODEL_EXAMPLES")
    if not wanted:
        return {"max_examples": default, "derandomize": True}
    return {"max_examples": int(wanted), "derandomize": False}


TestBramaMachine = BramaMachine.TestCase
TestBramaMachine.settings = settings(
    **examples(200),
    stateful_step_count=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_reopening_in_the_same_millisecond_moves_the_deadline() -> None:
    """open_circuit on a circuit opened in the same ms re-arms the deadline (machine-found)."""
    clock = ManualClock(start_ms=START)
    with Brama.start(clock=clock) as brama:
        brama.register("short", max_attempts=1, expiry=100)
        brama.register("long", max_attempts=1, expiry=100)
        brama.failure("short")
        brama.failure("long")
        brama.open_circuit("short", expiry=30)  # same ms: the new deadline is 30 ms away
        brama.open_circuit("long", expiry=700)  # and 700 ms away
        clock.advance(30)
        assert brama.status("short").state == "half_open"
        clock.advance(70)
        assert brama.status("long").state == "open"
        clock.advance(600)
        assert brama.status("long").state == "half_open"
