"""Internal messages between the facade and the actors (not part of the public API)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from brama_actors._config import Settings
from brama_actors._rules import Input

#: A connection's key: the identifier alone when unscoped (the common case, and the
#: cheapest to look up on the hot path), else ``(scope, identifier)``.
Key = str | tuple[str, str]


def make_key(identifier: str, scope: str | None) -> Key:
    """The key of an (already validated) identifier and scope."""
    return identifier if scope is None else (scope, identifier)


def split_key(key: Key) -> tuple[str, str | None]:
    """``(identifier, scope)`` of a key."""
    if isinstance(key, str):
        return key, None
    return key[1], key[0]


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply a circuit input; the reply is None (or RESTARTED)."""

    op: Input


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """Replace a connection's explicit options and resolved settings."""

    explicit: Mapping[str, Any]
    settings: Settings


@dataclass(frozen=True, slots=True)
class Retire:
    """Remove the connection: by unregister, or by the sweep if still inactive."""

    inactive_threshold: int | None = None


class GetStatus:
    """Reply with the current status."""

    __slots__ = ()


class Ping:
    """Reply None once every earlier message has been processed."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ArmCrash:
    """Test seam: raise an injected crash at the start of the next ``times`` messages."""

    times: int


class _Restarted:
    """Reply of a connection actor that crashed on the caller's message."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RESTARTED"


RESTARTED = _Restarted()
GET_STATUS = GetStatus()
PING = Ping()


class InjectedCrash(RuntimeError):
    """The crash raised through the test seam."""
