"""The status value: ``evolve`` is ``dataclasses.replace`` for every field, only faster."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brama_actors import CircuitState, ConnectionStatus, ExpiryStrategy
from brama_actors._status import evolve, freeze_mapping

BASE = ConnectionStatus("db", "eu", "database", CircuitState.CLOSED, 2, 5, 1_000,
                        ExpiryStrategy.FIXED, 1_000, 60_000, 2.0, 1, None, 10, 20, 30, 40,
                        total_successes=3, total_failures=4,
                        metadata=freeze_mapping({"team": "core"}))

#: A value of the right type per field, different from BASE's.
OTHER: dict[str, Any] = {
    "identifier": "api", "scope": None, "type": "http", "state": CircuitState.OPEN,
    "failure_count": 9, "max_attempts": 7, "expiry": 5, "expiry_strategy":
    ExpiryStrategy.PROGRESSIVE, "initial_expiry": 6, "max_expiry": 8, "backoff_factor": 3.0,
    "half_open_max_calls": 2, "opened_at": 50, "last_success_time": None,
    "last_failure_time": 60, "state_changed_at": 70, "registered_at": 80,
    "total_successes": 11, "total_failures": 12, "metadata": freeze_mapping({"a": 1}),
    "success_threshold": 3, "half_open_timeout": 500, "half_open_successes": 2,
    "failure_rate": 0.5, "slow_call_rate": 0.25, "window_calls": 8, "total_rejections": 4,
    "total_ignored": 5, "transitions": (("closed", "open", 1),),
    "failure_rate_threshold": 0.5, "slow_call_rate_threshold": 0.75, "slow_call_duration": 9,
    "window_type": "time", "window_size": 60, "minimum_calls": 4,
}


def test_other_names_every_field() -> None:
    """The table below covers every field (a new field must be added to it)."""
    assert set(OTHER) == {f.name for f in dataclasses.fields(ConnectionStatus)}


@given(st.sets(st.sampled_from(sorted(OTHER))))
def test_evolve_equals_replace(changed: set[str]) -> None:
    """For any subset of fields, evolve gives what dataclasses.replace gives."""
    changes = {name: OTHER[name] for name in changed}
    new = evolve(BASE, **changes)
    assert type(new) is ConnectionStatus
    assert new == dataclasses.replace(BASE, **changes)
    assert new is not BASE
    for name in OTHER:
        assert getattr(new, name) is (changes[name] if name in changes
                                      else getattr(BASE, name))


def test_evolve_result_is_frozen_and_unknown_fields_are_refused() -> None:
    """The copy is as immutable as any status; a misspelt field is a TypeError."""
    new = evolve(BASE, failure_count=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.failure_count = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        evolve(BASE, failures=1)


def test_make_constructor_equals_the_dataclass_init() -> None:
    """The generated constructor (used for every reported event) builds what __init__
    builds, with every slot set."""
    from types import MappingProxyType

    from brama_actors import Event, EventType
    from brama_actors._frozen import make_constructor

    new_event = make_constructor(Event)
    data = MappingProxyType({"state": "closed", "failure_count": 1})
    args = (EventType.FAILURE, 5, "db", "eu", data, "x:1")
    built = new_event(*args)
    assert built == Event(*args)
    assert type(built) is Event
    with pytest.raises(AttributeError):
        built.timestamp = 6  # type: ignore[misc]
