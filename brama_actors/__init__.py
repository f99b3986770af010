"""brama_actors: circuit breakers as Pykka actors.

This module only re-exports. Layers, bottom up (docs/actor-design.md draws them):

* values and pure rules: ``_errors``, ``_status``, ``_events``, ``_config``, ``_keys``,
  ``_rules``;
* ``_runtime/``: pooled actors, the scheduler, clocks;
* ``_delivery/``: the event manager, subscriptions, targets, telemetry;
* the wire (``_remote/_wire``, ``_ops``, ``_frames``, ``_link``): frames between processes;
* ``_authority/``: where circuits are decided (local actors, a node);
* ``_guard``, then ``_system/``: the ``Brama`` facade, its supervisor, the default system
  and the module-level functions;
* the rest of ``_remote/`` (serve, connect, spawn) and ``_cli/``: loaded only when used.
"""

import logging as _logging
import typing as _typing

from brama_actors import telemetry
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
from brama_actors._status import CircuitState, ConnectionStatus, ExpiryStrategy, FleetStatus
from brama_actors._system._brama import Brama
from brama_actors._system._default import (
    available,
    close_circuit,
    configure,
    connections,
    drain,
    failure,
    guard,
    open_circuit,
    register,
    reset_circuit,
    serve,
    start,
    status,
    stop,
    subscribe,
    success,
    unregister,
    unsubscribe,
)
from brama_actors._system._monitor import ConnectionMonitor

if _typing.TYPE_CHECKING:
    from brama_actors._remote._client import Client, connect
    from brama_actors._remote._server import Server
    from brama_actors._remote._spawn import spawn

_logging.getLogger("brama_actors").addHandler(_logging.NullHandler())

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
    "FleetStatus",
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

# Re-exported on first access, so `import brama_actors` loads neither the socket layer
# nor cloudpickle, nor the installed metadata (PEP 562).
_LAZY = {
    "Client": "brama_actors._remote._client",
    "connect": "brama_actors._remote._client",
    "Server": "brama_actors._remote._server",
    "spawn": "brama_actors._remote._spawn",
}


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("brama-actors")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0+unknown"
    else:
        raise AttributeError(f"module 'brama_actors' has no attribute {name!r}")
    globals()[name] = value
    return value
