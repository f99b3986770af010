"""The fleet options of ``Brama.start`` (API.md section 16), checked before anything starts.

Nothing here imports ``redis`` at module level: ``Brama.start`` loads this module only
when ``fleet=`` is given, and loads ``redis`` through it only then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from brama_actors._errors import InvalidConfiguration

__all__ = ["FLEET_OPTIONS", "FleetOptions", "check_fleet_options"]

#: The keyword arguments of ``Brama.start`` that only mean something with ``fleet=``.
FLEET_OPTIONS = ("fleet_namespace", "fleet_timeout", "when_unreachable", "stale_after",
                 "when_stale")

_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """Checked fleet options.

    Attributes:
        client: the ``redis.Redis`` or ``redis.cluster.RedisCluster`` the application
            gave (only its settings are read; never used, never closed by us), or None.
        url: the URL given instead (None with a client).
        namespace: the hash tag every key lives under.
        timeout: ms any call may wait on Redis.
        when_unreachable: ``"local"`` or ``"hold"``.
        stale_after: ms the last fleet state answers in ``"hold"`` mode.
        when_stale: ``"allow"`` or ``"deny"`` afterwards.
    """

    client: Any
    url: str | None
    namespace: str
    timeout: int
    when_unreachable: str
    stale_after: int
    when_stale: str


#: The oldest redis-py the fleet runs on (major version).
MIN_REDIS_PY = 8


def _int_ms(name: str, value: Any) -> int:
    if type(value) is not int or value < 1:
        raise InvalidConfiguration(f"{name} must be an int >= 1 (ms), got {value!r}")
    return value


def check_fleet_options(fleet: Any, given: dict[str, Any]) -> FleetOptions:
    """Check ``fleet=`` and its options (``given``: those of ``FLEET_OPTIONS`` passed).

    Raises:
        InvalidConfiguration: a bad URL or client, or a bad option value.
    """
    import redis

    major = redis.__version__.split(".", 1)[0]
    if not major.isdigit() or int(major) < MIN_REDIS_PY:
        # Each call's deadline reads replies with read_response(timeout=...), new in 8.0.
        raise InvalidConfiguration(
            f"fleet= needs redis-py {MIN_REDIS_PY}.0 or later (pip install "
            f"'brama_actors[fleet]'), found redis-py {redis.__version__}")
    client: Any = None
    url: str | None = None
    if isinstance(fleet, (redis.Redis, redis.RedisCluster)):
        client = fleet
    elif isinstance(fleet, str):
        if not fleet.startswith(_SCHEMES):
            raise InvalidConfiguration(
                f"fleet must be a redis://, rediss:// or unix:// URL, a redis.Redis or a "
                f"redis.cluster.RedisCluster, got {fleet!r}")
        try:
            redis.connection.parse_url(fleet)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError) as exc:
            raise InvalidConfiguration(f"fleet URL {fleet!r} is not valid: {exc}") from None
        url = fleet
    else:
        raise InvalidConfiguration(
            f"fleet must be a Redis URL (str), a redis.Redis or a redis.cluster.RedisCluster, "
            f"got {type(fleet).__name__}")
    namespace = given.get("fleet_namespace", "brama")
    if (not isinstance(namespace, str) or not namespace or "{" in namespace
            or "}" in namespace):
        raise InvalidConfiguration(
            f"fleet_namespace must be a non-empty str without '{{' or '}}', got {namespace!r}")
    timeout = _int_ms("fleet_timeout", given.get("fleet_timeout", 200))
    mode = given.get("when_unreachable", "local")
    if mode not in ("local", "hold"):
        raise InvalidConfiguration(f"when_unreachable must be 'local' or 'hold', got {mode!r}")
    if mode != "hold" and ("stale_after" in given or "when_stale" in given):
        raise InvalidConfiguration(
            "stale_after and when_stale apply only with when_unreachable='hold'")
    stale_after = _int_ms("stale_after", given.get("stale_after", 5_000))
    when_stale = given.get("when_stale", "allow")
    if when_stale not in ("allow", "deny"):
        raise InvalidConfiguration(f"when_stale must be 'allow' or 'deny', got {when_stale!r}")
    return FleetOptions(client, url, namespace, timeout, mode, stale_after, when_stale)
