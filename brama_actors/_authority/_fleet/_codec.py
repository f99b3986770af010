"""JSON in and out of Redis: circuit keys, statuses and stream entries.

Only JSON goes into Redis, never pickle (API.md section 16). Metadata and explicit
options travel as raw JSON strings the Lua script stores and forwards without decoding
them, so they come back exactly as sent; statuses and event data pass through the
script's cjson, which writes no null (a missing key reads as ``None`` here) and writes
a whole float such as ``2.0`` as ``2`` (floats are restored by field name here), and
numbers with 14 digits only: rate thresholds therefore travel as strings and rates as
integer counts (see ``_lua_window``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from brama_actors._config import Settings
from brama_actors._events import Event, EventType
from brama_actors._keys import Key, make_key, split_key
from brama_actors._status import CircuitState, ConnectionStatus, ExpiryStrategy, freeze_mapping

__all__ = ["RAW_REASON", "FleetWindow", "WindowedStatus", "args_reason", "decode_events",
           "decode_status", "dump_json", "encode_status", "member", "member_key",
           "reason_args", "settings_args"]

#: Status fields the script reads and writes (``failure_rate``, ``slow_call_rate`` and
#: ``window_calls`` are not among them: they are read from the window when asked).
_FIELDS = ("identifier", "scope", "type", "state", "failure_count", "max_attempts", "expiry",
           "expiry_strategy", "initial_expiry", "max_expiry", "backoff_factor",
           "half_open_max_calls", "opened_at", "last_success_time", "last_failure_time",
           "state_changed_at", "registered_at", "total_successes", "total_failures",
           "success_threshold", "half_open_timeout", "half_open_successes",
           "slow_call_duration", "window_type", "window_size", "minimum_calls",
           "failure_rate_threshold", "slow_call_rate_threshold")
#: Fields sent as ``repr(float)`` strings: exact through cjson.
_THRESHOLDS = ("failure_rate_threshold", "slow_call_rate_threshold")

#: The settings the script applies (``configure``; None ones are sent as ``unset``), and
#: those a registration event carries: every field of ``Settings``.
_SETTINGS = tuple(Settings.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class FleetWindow:
    """A circuit's rate window as the script last wrote it (see ``_lua_window``).

    Attributes:
        epoch: bumped each time the window was cleared.
        outcomes: a count window's codes, oldest first ("0" a success, "1" failed,
            "2" slow, "3" both); "" for a time window.
        failures: failed outcomes in ``outcomes``.
        slow: slow outcomes in ``outcomes``.
        buckets: a time window's ``(index, calls, failures, slow)``, oldest first.
    """

    epoch: int = 0
    outcomes: str = ""
    failures: int = 0
    slow: int = 0
    buckets: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class WindowedStatus(ConnectionStatus):
    """A status with the window it was written with: what the replica keeps for a
    circuit with a rate rule. It never leaves the replica (``Pending.overlay`` turns it
    into a plain ``ConnectionStatus`` with the window's figures as of the read)."""

    window: FleetWindow = field(default_factory=FleetWindow, compare=False, repr=False)


def _threshold(value: Any) -> str | None:
    return None if value is None else repr(float(value))


def _plain(value: Any) -> Any:
    """``json.dumps`` default: read-only mappings as dicts; anything else is refused."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable (a fleet keeps "
                    "only JSON in Redis)")


def dump_json(name: str, value: Any) -> str:
    """``value`` as JSON, or ``TypeError`` naming the argument (nothing is recorded).

    NaN and infinities are refused too: they are not JSON.
    """
    try:
        return json.dumps(value, default=_plain, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be JSON-serializable for a fleet, got {value!r}: "
                        f"{exc}") from None


#: A step's ``reason`` when the reason itself travels as raw JSON (``rr``): the script
#: decodes a step's args with cjson, which keeps 14 significant digits (123456789012345
#: becomes 1.2345678901234e+14) and turns ``[]`` into ``{}``, so only ``None`` and strings
#: go through it. The script writes ``rr`` in place of this marker in the step's events.
RAW_REASON = "\x00r"


def reason_args(reason: Any) -> dict[str, Any]:
    """A step's args for ``reason`` (``TypeError`` if it is not JSON)."""
    if reason is None or type(reason) is str:
        return {"reason": reason}
    return {"reason": RAW_REASON, "rr": dump_json("reason", reason)}


def args_reason(args: Mapping[str, Any]) -> Any:
    """The reason of a step's args (``reason_args`` undone)."""
    raw = args.get("rr")
    return args.get("reason") if raw is None else json.loads(raw)


def member(key: Key) -> str:
    """The circuit's name in Redis: ``["identifier", scope]`` as JSON."""
    identifier, scope = split_key(key)
    return json.dumps([identifier, scope], separators=(",", ":"))


def member_key(name: str) -> Key:
    """The key of a circuit named ``name`` (see :func:`member`)."""
    identifier, scope = json.loads(name)
    return make_key(identifier, scope)


def encode_status(status: ConnectionStatus, settings: Settings) -> dict[str, Any]:
    """A fresh status as the script's JSON (no None, no metadata)."""
    data = {name: getattr(status, name) for name in _FIELDS}
    data = {k: (v.value if isinstance(v, ExpiryStrategy | CircuitState) else v)
            for k, v in data.items() if v is not None}
    for name in _THRESHOLDS:
        if name in data:
            data[name] = _threshold(data[name])
    data["transitions"] = [list(t) for t in status.transitions]
    data["setting_expiry"] = settings.expiry
    return data


def settings_args(settings: Settings) -> dict[str, Any]:
    """The ``configure`` op's arguments: the settings to set and those to unset."""
    values = {name: getattr(settings, name) for name in _SETTINGS}
    for name in _THRESHOLDS:
        values[name] = _threshold(values[name])
    return {
        "settings": {k: (v.value if isinstance(v, ExpiryStrategy) else v)
                     for k, v in values.items() if v is not None},
        "unset": [k for k, v in values.items() if v is None],
    }


def decode_status(raw: str, metadata: Mapping[str, Any]) -> ConnectionStatus:
    """A status from the script's JSON and the connection's metadata."""
    data = json.loads(raw)
    fields = {name: data.get(name) for name in _FIELDS}
    fields["state"] = CircuitState(fields["state"])
    fields["expiry_strategy"] = ExpiryStrategy(fields["expiry_strategy"])
    fields["backoff_factor"] = float(fields["backoff_factor"])
    transitions = data.get("transitions")
    fields["transitions"] = tuple(
        (str(a), str(b), int(n)) for a, b, n in transitions) if transitions else ()
    windowed = False
    for name in _THRESHOLDS:
        if fields[name] is not None:
            fields[name] = float(fields[name])
            windowed = True
    if not windowed:
        return ConnectionStatus(metadata=metadata, **fields)
    buckets = data.get("wb") or ()  # cjson writes an empty list as {}
    flat = [int(x) for x in buckets]
    window = FleetWindow(
        int(data.get("we", 0)), str(data.get("wo", "")), int(data.get("wf", 0)),
        int(data.get("ws", 0)),
        tuple((flat[i], flat[i + 1], flat[i + 2], flat[i + 3]) for i in range(0, len(flat), 4)))
    return WindowedStatus(metadata=metadata, window=window, **fields)


def load_metadata(raw: str | None) -> Mapping[str, Any]:
    """Connection or event metadata from its raw JSON ("" or None: none)."""
    if not raw:
        return freeze_mapping(None)
    value: Any = json.loads(raw)
    return freeze_mapping(value) if isinstance(value, dict) else value


def decode_events(stream_id: str, fields: Mapping[str, str], key: Key,
                  status: ConnectionStatus | None, wanted: Any) -> tuple[Event, ...]:
    """The events of one stream entry that ``wanted(kind, identifier, scope)`` accepts.

    Each gets ``id = "<stream id>:<n>"`` (n its position in the step) and the step's
    Redis time as ``timestamp``: the same on every system.
    """
    specs = json.loads(fields["e"])
    if not specs:
        return ()
    identifier, scope = split_key(key)
    now = int(fields["t"])
    events = []
    for n, (kind, data) in enumerate(specs):
        event_type = EventType(kind)
        if not wanted(event_type, identifier, scope):
            continue
        if event_type in (EventType.REGISTRATION, EventType.CONNECTION_REGISTERED):
            assert status is not None
            data.update(type=status.type, **_registration_settings(status),
                        metadata=status.metadata)
        if data.pop("_m", None):
            data["metadata"] = load_metadata(fields.get("m"))
        rates = data.pop("_r", None)
        if rates:  # {failures, slow, calls}: divided here, as _rules does
            data["failure_rate"] = rates[0] / rates[2]
            data["slow_call_rate"] = rates[1] / rates[2]
        if "reason" not in data and event_type in (EventType.FAILURE,
                                                    EventType.STATE_CHANGE,
                                                    EventType.CIRCUIT_OPENED):
            data["reason"] = None
        for name in ("state", "previous_state", "new_state"):
            if name in data:
                data[name] = CircuitState(data[name])
        events.append(Event(event_type, now, identifier, scope, MappingProxyType(data),
                            f"{stream_id}:{n}"))
    return tuple(events)


def _registration_settings(status: ConnectionStatus) -> dict[str, Any]:
    return {name: getattr(status, name) for name in _SETTINGS}
