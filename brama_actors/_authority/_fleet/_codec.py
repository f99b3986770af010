"""JSON in and out of Redis: circuit keys, statuses and stream entries.

Only JSON goes into Redis, never pickle (API.md section 16). Metadata and explicit
options travel as raw JSON strings the Lua script stores and forwards without decoding
them, so they come back exactly as sent; statuses and event data pass through the
script's cjson, which writes no null (a missing key reads as ``None`` here) and writes
a whole float such as ``2.0`` as ``2`` (floats are restored by field name here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from brama_actors._config import Settings
from brama_actors._events import Event, EventType
from brama_actors._keys import Key, make_key, split_key
from brama_actors._status import CircuitState, ConnectionStatus, ExpiryStrategy, freeze_mapping

__all__ = ["decode_events", "decode_status", "dump_json", "encode_status", "member",
           "member_key", "settings_args"]

#: Status fields the script reads and writes (window fields stay at their defaults:
#: rate rules are refused on a fleet in phase 1).
_FIELDS = ("identifier", "scope", "type", "state", "failure_count", "max_attempts", "expiry",
           "expiry_strategy", "initial_expiry", "max_expiry", "backoff_factor",
           "half_open_max_calls", "opened_at", "last_success_time", "last_failure_time",
           "state_changed_at", "registered_at", "total_successes", "total_failures",
           "success_threshold", "half_open_timeout", "half_open_successes",
           "slow_call_duration", "window_type", "window_size", "minimum_calls")

#: The settings the script applies (``configure``); None ones are sent as ``unset``.
_SETTINGS = ("max_attempts", "expiry", "expiry_strategy", "initial_expiry", "max_expiry",
             "backoff_factor", "half_open_max_calls", "success_threshold",
             "half_open_timeout", "slow_call_duration", "window_type", "window_size",
             "minimum_calls")


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
    data["transitions"] = [list(t) for t in status.transitions]
    data["setting_expiry"] = settings.expiry
    return data


def settings_args(settings: Settings) -> dict[str, Any]:
    """The ``configure`` op's arguments: the settings to set and those to unset."""
    values = {name: getattr(settings, name) for name in _SETTINGS}
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
    return ConnectionStatus(metadata=metadata, **fields)


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
    return {
        "max_attempts": status.max_attempts, "expiry": status.expiry,
        "expiry_strategy": status.expiry_strategy, "initial_expiry": status.initial_expiry,
        "max_expiry": status.max_expiry, "backoff_factor": status.backoff_factor,
        "half_open_max_calls": status.half_open_max_calls,
        "success_threshold": status.success_threshold,
        "half_open_timeout": status.half_open_timeout,
        "failure_rate_threshold": None, "slow_call_rate_threshold": None,
        "slow_call_duration": status.slow_call_duration, "window_type": status.window_type,
        "window_size": status.window_size, "minimum_calls": status.minimum_calls,
    }
