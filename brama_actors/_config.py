"""Validation and resolution of configuration options (docs/circuit-rules.md (configuration)).

Every option is checked on its own (type and range) before anything changes, and the
combined settings are checked together (``max_expiry >= initial_expiry``), so a bad call
leaves the system exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from brama_actors._errors import InvalidConfiguration
from brama_actors._status import ExpiryStrategy

__all__ = [
    "CONNECTION_OPTIONS",
    "DEFAULTS",
    "GLOBAL_OPTIONS",
    "Settings",
    "check_duration",
    "check_optional_int",
    "resolve_settings",
    "validate_options",
]

# (minimum) for int options; bool is refused explicitly since bool is an int subclass.
_INT_MINIMUM: dict[str, int] = {
    "max_attempts": 1,
    "expiry": 1,
    "initial_expiry": 1,
    "max_expiry": 1,
    "half_open_max_calls": 1,
    "success_threshold": 1,
    "half_open_timeout": 1,
    "slow_call_duration": 1,
    "window_size": 1,
    "minimum_calls": 1,
    "cleanup_interval": 1,
    "inactive_threshold": 1,
    "max_restarts": 0,
    "restart_window": 1,
}

#: Options a single connection can set (register / configure(identifier, ...)).
CONNECTION_OPTIONS: frozenset[str] = frozenset(
    {
        "max_attempts",
        "expiry",
        "expiry_strategy",
        "initial_expiry",
        "max_expiry",
        "backoff_factor",
        "half_open_max_calls",
        "success_threshold",
        "half_open_timeout",
        "failure_rate_threshold",
        "slow_call_rate_threshold",
        "slow_call_duration",
        "window_type",
        "window_size",
        "minimum_calls",
    }
)

#: Options whose value may be ``None`` (the rule they set is off).
_NULLABLE: frozenset[str] = frozenset(
    {"half_open_timeout", "failure_rate_threshold", "slow_call_rate_threshold",
     "slow_call_duration"})

#: The two kinds of rate window (API.md section 12).
WINDOW_TYPES: tuple[str, ...] = ("count", "time")

#: Options of the system (Brama.start / configure(**options)).
GLOBAL_OPTIONS: frozenset[str] = CONNECTION_OPTIONS | {
    "cleanup_interval",
    "inactive_threshold",
    "max_restarts",
    "restart_window",
    "log_transitions",
}

#: Defaults of the configuration table (docs/circuit-rules.md); initial_expiry and max_expiry are
#: derived when unset.
DEFAULTS: Mapping[str, Any] = {
    "max_attempts": 5,
    "expiry": 60_000,
    "expiry_strategy": ExpiryStrategy.FIXED,
    "initial_expiry": None,
    "max_expiry": None,
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
    "log_transitions": True,
}


def _check_one(name: str, value: Any) -> Any:
    """Return the normalised value of one option or raise InvalidConfiguration."""
    if value is None and name in _NULLABLE:
        return None
    if name == "max_attempts" and type(value) is int and value == 0:
        return 0  # the consecutive rule off: checked against the rate rules on resolving
    if name in _INT_MINIMUM:
        minimum = _INT_MINIMUM[name]
        if type(value) is bool or not isinstance(value, int):
            raise InvalidConfiguration(
                f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})"
            )
        if value < minimum:
            raise InvalidConfiguration(f"{name} must be an int >= {minimum}, got {value!r}")
        return int(value)
    if name == "backoff_factor":
        if type(value) is bool or not isinstance(value, int | float):
            raise InvalidConfiguration(
                f"backoff_factor must be a finite number >= 1.0, got {value!r} "
                f"({type(value).__name__})"
            )
        if not math.isfinite(value) or value < 1.0:
            raise InvalidConfiguration(
                f"backoff_factor must be a finite number >= 1.0, got {value!r}"
            )
        return float(value)
    if name in ("failure_rate_threshold", "slow_call_rate_threshold"):
        if (type(value) is bool or not isinstance(value, int | float)
                or not math.isfinite(value) or not 0 < value <= 1):
            raise InvalidConfiguration(
                f"{name} must be a number in (0, 1] or None, got {value!r} "
                f"({type(value).__name__})")
        return float(value)
    if name == "window_type":
        if not isinstance(value, str) or value not in WINDOW_TYPES:
            raise InvalidConfiguration(f"window_type must be 'count' or 'time', got {value!r}")
        return str(value)
    if name == "log_transitions":
        if type(value) is not bool:
            raise InvalidConfiguration(f"log_transitions must be a bool, got {value!r}")
        return value
    if name == "expiry_strategy":
        if not isinstance(value, str):
            raise InvalidConfiguration(
                f"expiry_strategy must be 'fixed' or 'progressive', got {value!r}"
            )
        try:
            return ExpiryStrategy(value)
        except ValueError:
            raise InvalidConfiguration(
                f"expiry_strategy must be 'fixed' or 'progressive', got {value!r}"
            ) from None
    raise InvalidConfiguration(f"unknown option {name!r} (value {value!r})")


def check_optional_int(name: str, value: Any, minimum: int = 1) -> int | None:
    """An argument that is ``None`` or an int >= ``minimum`` (not a configuration
    option: a bad one is a plain ``TypeError``/``ValueError`` naming it).

    Raises:
        TypeError: not an int (a bool included) and not None.
        ValueError: below ``minimum``.
    """
    if value is None:
        return None
    if type(value) is bool or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_duration(value: Any) -> float | None:
    """A reported call's ``duration=`` in ms: ``None`` or a finite number >= 0.

    Raises:
        TypeError: not a number (a bool included).
        ValueError: negative, NaN or infinite.
    """
    if value is None:
        return None
    if type(value) is bool or not isinstance(value, int | float):
        raise TypeError(f"duration must be a number of ms or None, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"duration must be a finite number of ms >= 0, got {value!r}")
    return float(value)


def validate_options(
    options: Mapping[str, Any], allowed: frozenset[str], *, skip_none: bool = False
) -> dict[str, Any]:
    """Check every option's name, type and range; return the normalised values.

    Args:
        options: option name to value.
        allowed: the names accepted in this context.
        skip_none: leave out options whose value is ``None`` (meaning "not given").

    Raises:
        InvalidConfiguration: an unknown name or a bad value; the message names both.
    """
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name not in allowed:
            valid = ", ".join(sorted(allowed))
            raise InvalidConfiguration(f"unknown option {name!r} (value {value!r}); valid: {valid}")
        if value is None and skip_none:
            continue
        checked[name] = _check_one(name, value)
    return checked


@dataclass(frozen=True, slots=True)
class Settings:
    """A connection's resolved circuit settings."""

    max_attempts: int
    expiry: int
    expiry_strategy: ExpiryStrategy
    initial_expiry: int
    max_expiry: int
    backoff_factor: float
    half_open_max_calls: int
    success_threshold: int = 1
    half_open_timeout: int | None = None
    failure_rate_threshold: float | None = None
    slow_call_rate_threshold: float | None = None
    slow_call_duration: int | None = None
    window_type: str = "count"
    window_size: int = 100
    minimum_calls: int = 10

    @property
    def windowed(self) -> bool:
        """True if a rate rule applies (only then is there a window)."""
        return self.failure_rate_threshold is not None or self.slow_call_rate_threshold is not None

    def as_dict(self) -> dict[str, Any]:
        """The settings as event data keys (docs/events.md, registration)."""
        return {
            "max_attempts": self.max_attempts,
            "expiry": self.expiry,
            "expiry_strategy": self.expiry_strategy,
            "initial_expiry": self.initial_expiry,
            "max_expiry": self.max_expiry,
            "backoff_factor": self.backoff_factor,
            "half_open_max_calls": self.half_open_max_calls,
            "success_threshold": self.success_threshold,
            "half_open_timeout": self.half_open_timeout,
            "failure_rate_threshold": self.failure_rate_threshold,
            "slow_call_rate_threshold": self.slow_call_rate_threshold,
            "slow_call_duration": self.slow_call_duration,
            "window_type": self.window_type,
            "window_size": self.window_size,
            "minimum_calls": self.minimum_calls,
        }


def resolve_settings(explicit: Mapping[str, Any]) -> Settings:
    """Resolve a connection's settings from the explicitly set options.

    ``initial_expiry`` defaults to the connection's own ``expiry`` and ``max_expiry`` to
    10 x its own ``initial_expiry`` when neither the system nor the connection set them.

    Raises:
        InvalidConfiguration: a combination that cannot work: ``max_expiry <
            initial_expiry``; ``slow_call_rate_threshold`` without
            ``slow_call_duration``; ``max_attempts=0`` without a rate rule (the circuit
            could never open by itself); ``minimum_calls`` above a count window.
    """
    def get(name: str) -> Any:
        value = explicit.get(name)
        return DEFAULTS[name] if value is None else value

    expiry = explicit.get("expiry") or DEFAULTS["expiry"]
    initial = explicit.get("initial_expiry") or expiry
    maximum = explicit.get("max_expiry") or 10 * initial
    if maximum < initial:
        raise InvalidConfiguration(
            f"max_expiry must be >= initial_expiry ({initial}), got {maximum!r}"
        )
    settings = Settings(
        max_attempts=get("max_attempts"),
        expiry=expiry,
        expiry_strategy=get("expiry_strategy"),
        initial_expiry=initial,
        max_expiry=maximum,
        backoff_factor=get("backoff_factor"),
        half_open_max_calls=get("half_open_max_calls"),
        success_threshold=get("success_threshold"),
        half_open_timeout=get("half_open_timeout"),
        failure_rate_threshold=get("failure_rate_threshold"),
        slow_call_rate_threshold=get("slow_call_rate_threshold"),
        slow_call_duration=get("slow_call_duration"),
        window_type=get("window_type"),
        window_size=get("window_size"),
        minimum_calls=get("minimum_calls"),
    )
    if settings.slow_call_rate_threshold is not None and settings.slow_call_duration is None:
        raise InvalidConfiguration(
            "slow_call_rate_threshold needs slow_call_duration (what a slow call is), got "
            f"slow_call_rate_threshold={settings.slow_call_rate_threshold!r} and "
            "slow_call_duration=None")
    if settings.max_attempts == 0 and not settings.windowed:
        raise InvalidConfiguration(
            "max_attempts=0 turns the consecutive-failure rule off and needs "
            "failure_rate_threshold or slow_call_rate_threshold, got max_attempts=0 with "
            "neither (the circuit could never open by itself)")
    if settings.window_type == "count" and settings.minimum_calls > settings.window_size:
        raise InvalidConfiguration(
            f"minimum_calls must be <= window_size ({settings.window_size}) for a count "
            f"window, got minimum_calls={settings.minimum_calls!r}")
    return settings


def check_global(explicit: Mapping[str, Any]) -> None:
    """Check the cross-option rule on the system's explicit options.

    Raises:
        InvalidConfiguration: ``max_expiry < initial_expiry`` (both derived as for a
            connection when unset).
    """
    resolve_settings({k: v for k, v in explicit.items() if k in CONNECTION_OPTIONS})
