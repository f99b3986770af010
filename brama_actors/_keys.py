"""Connection keys: how ``(identifier, scope)`` is checked, built and named, in one place.

A key is the identifier alone when unscoped (the common case, and the cheapest to look
up on the hot path: a ``str`` hashes once and is cached) and ``(scope, identifier)``
otherwise. Hot paths build it inline as ``identifier if scope is None else (scope,
identifier)`` and fall back to :func:`check_key` when the lookup misses, so validation
costs nothing on a hit.
"""

from __future__ import annotations

from typing import Any

from brama_actors._errors import ConnectionNotFound, InvalidIdentifier, describe

__all__ = ["Key", "check_key", "check_scope", "describe_key", "make_key", "not_found",
           "split_key"]

Key = str | tuple[str, str]


def make_key(identifier: str, scope: str | None) -> Key:
    """The key of an (already checked) identifier and scope."""
    return identifier if scope is None else (scope, identifier)


def split_key(key: Key) -> tuple[str, str | None]:
    """``(identifier, scope)`` of a key."""
    if isinstance(key, str):
        return key, None
    return key[1], key[0]


def check_scope(scope: Any) -> str | None:
    """``scope`` as a plain ``str`` (or None).

    Raises:
        InvalidIdentifier: not None and not a non-empty ``str``.
    """
    if scope is None:
        return None
    if not isinstance(scope, str) or not scope:
        raise InvalidIdentifier(f"scope must be None or a non-empty str, got {scope!r}")
    return str(scope)


def check_key(identifier: Any, scope: Any) -> Key:
    """The key of ``(identifier, scope)``, checked.

    ``str`` subclasses are turned into plain ``str``, so a key never carries a foreign
    ``__hash__`` or ``__eq__`` into the tables.

    Raises:
        InvalidIdentifier: ``identifier`` is not a non-empty ``str``, or ``scope`` is
            neither None nor a non-empty ``str``.
    """
    if type(identifier) is not str or not identifier:
        if not isinstance(identifier, str) or not identifier:
            raise InvalidIdentifier(f"identifier must be a non-empty str, got {identifier!r}")
        identifier = str(identifier)
    return make_key(identifier, check_scope(scope))


def describe_key(key: Key) -> str:
    """A key for messages: ``'db'`` or ``'db' (scope 'eu')``."""
    return describe(*split_key(key))


def not_found(key: Key, note: str = "") -> ConnectionNotFound:
    """The error for an unknown connection, naming it (and ``note``, if given)."""
    suffix = f" ({note})" if note else ""
    return ConnectionNotFound(f"connection {describe_key(key)} is not registered{suffix}")
