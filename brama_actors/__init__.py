"""brama_actors: circuit breakers as Pykka actors.

Layering, bottom up: ``_errors``, ``_status``, ``_events``, ``_config`` (values and
validation) -> ``_circuit`` (pure rules) -> ``_clock``, ``_scheduler``, ``_runtime``
(time and the pooled actor runtime) -> ``_connection``, ``_event_manager``,
``_supervisor`` (the actors) -> ``_system`` (``Brama``) -> ``_default`` (module-level
functions). This module only re-exports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from brama_actors import telemetry
from brama_actors._client import Client, connect
from brama_actors._delivery._monitor import ConnectionMonitor
from brama_actors._delivery._subscription import Subscription, SubscriptionStatistics
from brama_actors._errors import (
    AlreadyRegistered,
    AuthenticationFailed,
    BramaError,
    CircuitOpenError,
    ConnectionNotFound,
    InvalidConfiguration,
    InvalidIdentifier,
    NodeUnavailable,
    SystemStopped,
)
from brama_actors._events import Event, EventType
from brama_actors._guard import Guard, GuardBlock, circuit_breaker
from brama_actors._server import Server
from brama_actors._spawn import spawn
from brama_actors._status import CircuitState, ConnectionStatus, ExpiryStrategy
from brama_actors._system import _default
from brama_actors._system._brama import Brama

try:
    __version__ = version("brama-actors")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

logging.getLogger("brama_actors").addHandler(logging.NullHandler())

__all__ = [
    "AlreadyRegistered",
    "AuthenticationFailed",
    "Brama",
    "BramaError",
    "CircuitOpenError",
    "CircuitState",
    "Client",
    "ConnectionMonitor",
    "ConnectionNotFound",
    "ConnectionStatus",
    "Event",
    "EventType",
    "ExpiryStrategy",
    "Guard",
    "GuardBlock",
    "InvalidConfiguration",
    "InvalidIdentifier",
    "NodeUnavailable",
    "Server",
    "Subscription",
    "SubscriptionStatistics",
    "SystemStopped",
    "available",
    "circuit_breaker",
    "close_circuit",
    "configure",
    "connect",
    "connections",
    "drain",
    "failure",
    "guard",
    "open_circuit",
    "register",
    "reset_circuit",
    "serve",
    "spawn",
    "start",
    "status",
    "stop",
    "subscribe",
    "success",
    "telemetry",
    "unregister",
    "unsubscribe",
]


def start(**config: Any) -> Brama:
    """Start the default system explicitly (raises ``BramaError`` if it runs)."""
    return _default.start(**config)


def stop() -> None:
    """Stop the default system; the next module-level call starts a fresh one."""
    _default.stop()


def register(identifier: str, **options: Any) -> ConnectionStatus:
    """``Brama.register`` on the default system."""
    return _default.get().register(identifier, **options)


def unregister(identifier: str, *, scope: str | None = None) -> bool:
    """``Brama.unregister`` on the default system."""
    return _default.get().unregister(identifier, scope=scope)


def available(identifier: str, *, scope: str | None = None) -> bool:
    """``Brama.available`` on the default system."""
    # Inlined lookup: this is the hot path (benchmarked against a bare call).
    brama = _default._default
    if brama is not None:
        try:
            cell = brama._cells.get(identifier if scope is None else (scope, identifier))
        except (TypeError, SystemStopped):
            cell = None
        if cell is not None and type(identifier) is str:
            return cell.available
    return _default.get().available(identifier, scope=scope)


def success(identifier: str, *, scope: str | None = None,
            metadata: Mapping[str, Any] | None = None) -> None:
    """``Brama.success`` on the default system."""
    _default.get().success(identifier, scope=scope, metadata=metadata)


def failure(identifier: str, *, scope: str | None = None, reason: Any = None,
            metadata: Mapping[str, Any] | None = None) -> None:
    """``Brama.failure`` on the default system."""
    _default.get().failure(identifier, scope=scope, reason=reason, metadata=metadata)


def status(identifier: str, *, scope: str | None = None) -> ConnectionStatus:
    """``Brama.status`` on the default system."""
    return _default.get().status(identifier, scope=scope)


def connections(**kwargs: Any) -> list[ConnectionStatus]:
    """``Brama.connections`` on the default system (``scope=`` optional)."""
    return _default.get().connections(**kwargs)


def open_circuit(identifier: str, *, scope: str | None = None, reason: Any = None,
                 expiry: int | None = None) -> None:
    """``Brama.open_circuit`` on the default system."""
    _default.get().open_circuit(identifier, scope=scope, reason=reason, expiry=expiry)


def close_circuit(identifier: str, *, scope: str | None = None, reason: Any = None) -> None:
    """``Brama.close_circuit`` on the default system."""
    _default.get().close_circuit(identifier, scope=scope, reason=reason)


def reset_circuit(identifier: str, *, scope: str | None = None, reason: Any = None) -> None:
    """``Brama.reset_circuit`` on the default system."""
    _default.get().reset_circuit(identifier, scope=scope, reason=reason)


def configure(identifier: str | None = None, *, scope: str | None = None,
              **options: Any) -> None:
    """``Brama.configure`` on the default system."""
    _default.get().configure(identifier, scope=scope, **options)


def subscribe(*, events: Iterable[EventType | str] | None = None,
              connection: str | None = None, scope: str | None = None,
              filter: Callable[[Event], bool] | None = None,
              subscriber: Any = None, handler: Any = None, batch_size: int | None = None,
              batch_timeout: int | None = None, max_pending: int = 10_000) -> Subscription:
    """``Brama.subscribe`` on the default system."""
    return _default.get().subscribe(
        events=events, connection=connection, scope=scope, filter=filter,
        subscriber=subscriber, handler=handler, batch_size=batch_size,
        batch_timeout=batch_timeout, max_pending=max_pending)


def unsubscribe(subscription: Subscription | None = None, **filters: Any) -> Any:
    """``Brama.unsubscribe`` on the default system."""
    return _default.get().unsubscribe(subscription, **filters)


def guard(identifier: str, *, scope: str | None = None,
          error_handler: Callable[[Any], Any] | None = None, register: bool = True,
          exclude: Any = (), **register_options: Any) -> GuardBlock:
    """``Brama.guard`` on the default system (looked up when the block is entered)."""
    if error_handler is not None:
        raise TypeError("error_handler= applies to decorated functions: a guard block "
                        "has no result to judge")
    return GuardBlock(Guard(identifier, scope=scope, error_handler=error_handler,
                            register=register, exclude=exclude, **register_options))


def serve(address: Any = None, authkey: bytes | None = None,
          allow_remote: bool = False) -> Server:
    """``Brama.serve`` on the default system."""
    return _default.get().serve(address, authkey, allow_remote)


def drain(timeout: float = 1.0) -> None:
    """``Brama.drain`` on the default system."""
    _default.get().drain(timeout)
