"""Configuration validation (docs/circuit-rules.md (configuration)): bad values are refused,
nothing changes."""

from __future__ import annotations

import math

import pytest

import brama_actors
from brama_actors import Brama, InvalidConfiguration
from brama_actors.testing import ManualClock

BAD_VALUES = [
    ("max_attempts", 0),
    ("max_attempts", -3),
    ("max_attempts", True),
    ("max_attempts", 2.5),
    ("max_attempts", "5"),
    ("expiry", 0),
    ("expiry", -1),
    ("expiry", False),
    ("expiry", 1.0),
    ("expiry_strategy", "linear"),
    ("expiry_strategy", 1),
    ("initial_expiry", 0),
    ("max_expiry", 0),
    ("backoff_factor", 0.5),
    ("backoff_factor", math.nan),
    ("backoff_factor", math.inf),
    ("backoff_factor", True),
    ("backoff_factor", "2"),
    ("half_open_max_calls", 0),
    ("cleanup_interval", 0),
    ("inactive_threshold", -5),
    ("max_restarts", -1),
    ("max_restarts", True),
    ("restart_window", 0),
    ("no_such_option", 1),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_start_rejects_bad_option(name: str, value: object) -> None:
    """Brama.start refuses a bad option with InvalidConfiguration naming option and value."""
    with pytest.raises(InvalidConfiguration) as info:
        Brama.start(clock=ManualClock(), **{name: value})
    assert name in str(info.value)
    assert repr(value) in str(info.value) or str(value) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, brama_actors.BramaError)


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_global_configure_rejects_and_changes_nothing(
    system: Brama, name: str, value: object
) -> None:
    """configure(**bad) raises and later registrations still get the old defaults."""
    system.configure(max_attempts=7)
    other = "half_open_max_calls" if name != "half_open_max_calls" else "max_attempts"
    with pytest.raises(InvalidConfiguration):
        system.configure(**{other: 3, name: value})
    status = system.register("a")
    assert (status.max_attempts, status.half_open_max_calls) == (7, 1)


def test_max_expiry_below_initial_is_refused(system: Brama) -> None:
    """max_expiry < initial_expiry is refused globally and per connection."""
    with pytest.raises(InvalidConfiguration, match="max_expiry"):
        Brama.start(clock=ManualClock(), initial_expiry=1000, max_expiry=10)
    with pytest.raises(InvalidConfiguration, match="max_expiry"):
        system.register("a", initial_expiry=1000, max_expiry=10)
    assert system.connections() == []


def test_defaults(system: Brama) -> None:
    """A connection registered with no options gets the table's defaults."""
    status = system.register("a")
    assert status.max_attempts == 5
    assert status.expiry == 60_000
    assert status.expiry_strategy == "fixed"
    assert status.initial_expiry == 60_000
    assert status.max_expiry == 600_000
    assert status.backoff_factor == 2.0
    assert status.half_open_max_calls == 1


def test_derived_expiries_follow_the_connection(system: Brama) -> None:
    """initial_expiry defaults to the connection's expiry, max_expiry to 10x initial."""
    status = system.register("a", expiry=300)
    assert (status.initial_expiry, status.max_expiry) == (300, 3000)
    status = system.register("b", initial_expiry=50)
    assert (status.expiry, status.initial_expiry, status.max_expiry) == (60_000, 50, 500)
    system.configure(initial_expiry=20)
    assert system.register("c", expiry=7).initial_expiry == 20


def test_global_configure_affects_later_registrations_only(system: Brama) -> None:
    """configure(**options) sets defaults for later registrations, not existing ones."""
    system.register("before")
    system.configure(max_attempts=2, expiry=100)
    after = system.register("after")
    assert (after.max_attempts, after.expiry) == (2, 100)
    assert system.status("before").max_attempts == 5


def test_register_rejects_bad_option(system: Brama) -> None:
    """A bad per-connection option raises and registers nothing."""
    with pytest.raises(InvalidConfiguration, match="max_attempts"):
        system.register("a", max_attempts=0)
    with pytest.raises(InvalidConfiguration, match="type"):
        system.register("a", type="")
    assert not system.available("a")
    assert system.connections() == []


def test_configure_connection(system: Brama) -> None:
    """configure(identifier, ...) changes that connection's settings only."""
    system.register("a")
    system.register("b")
    system.configure("a", max_attempts=2, expiry_strategy="progressive")
    assert system.status("a").max_attempts == 2
    assert system.status("a").expiry_strategy == "progressive"
    assert system.status("b").max_attempts == 5
    system.failure("a")
    system.failure("a")
    assert not system.available("a")


def test_configure_connection_rejects_and_changes_nothing(system: Brama) -> None:
    """A bad per-connection configure raises and leaves the settings as they were."""
    system.register("a", initial_expiry=100)
    before = system.status("a")
    with pytest.raises(InvalidConfiguration):
        system.configure("a", max_attempts=2, max_expiry=50)
    with pytest.raises(InvalidConfiguration, match="cleanup_interval"):
        system.configure("a", cleanup_interval=5)
    assert system.status("a") == before


def test_configure_unknown_connection(system: Brama) -> None:
    """configure on an unknown connection raises ConnectionNotFound."""
    with pytest.raises(brama_actors.ConnectionNotFound, match="'nope'"):
        system.configure("nope", max_attempts=2)


def test_configure_cleanup_interval_rearms_sweep(system: Brama, clock: ManualClock) -> None:
    """A new cleanup_interval takes effect for the sweep."""
    system.configure(cleanup_interval=100, inactive_threshold=50)
    system.register("a")
    clock.advance(100)
    assert system.connections() == []


def test_start_rejects_bad_clock_and_parent() -> None:
    """clock= must be a Clock and parent= an ActorRef."""
    with pytest.raises(InvalidConfiguration, match="clock"):
        Brama.start(clock=object())  # type: ignore[arg-type]
    with pytest.raises(InvalidConfiguration, match="parent"):
        Brama.start(parent="me")  # type: ignore[arg-type]
