"""The exceptions brama_actors raises.

The whole tree::

    BramaError
    ├── InvalidConfiguration      (also a ValueError)
    ├── InvalidIdentifier         (also a ValueError)
    ├── AlreadyRegistered
    ├── ConnectionNotFound        (also a LookupError)
    ├── SystemStopped
    ├── CircuitOpenError          (carries a frozen ``.status``)
    ├── NodeUnavailable
    └── AuthenticationFailed

Messages name the broken invariant and the value, and for connection errors the
connection and scope, so a log line alone tells what went wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brama_actors._status import ConnectionStatus

__all__ = [
    "AlreadyRegistered",
    "AuthenticationFailed",
    "BramaError",
    "CircuitOpenError",
    "ConnectionNotFound",
    "InvalidConfiguration",
    "InvalidIdentifier",
    "NodeUnavailable",
    "SystemStopped",
]


class BramaError(Exception):
    """Base class of every error raised by brama_actors."""


class InvalidConfiguration(BramaError, ValueError):
    """An option had the wrong type or an out-of-range value; nothing was changed."""


class InvalidIdentifier(BramaError, ValueError):
    """A connection identifier or scope is not a non-empty ``str`` (scope may be ``None``)."""


class AlreadyRegistered(BramaError):
    """``register`` was called for an ``(identifier, scope)`` that already exists."""


class ConnectionNotFound(BramaError, LookupError):
    """The operation names a connection that is not registered."""


class SystemStopped(BramaError):
    """The ``Brama`` system was stopped (or is stopping) and takes no more calls."""


class CircuitOpenError(BramaError):
    """A guarded call was refused because its circuit is open (or half-open and full).

    Attributes:
        status: the connection's frozen status at the moment of refusal, never a
            live object, so the error reads the same whenever it is printed; None when
            it could not be read (a client whose node is out of reach).
        retry_after: ms until the circuit may admit a trial call
            (``opened_at + expiry - now``, at least 0); 0 when it is half-open and
            every trial permit is taken (one may come back at any moment).
    """

    def __init__(self, message: str, status: ConnectionStatus | None,
                 retry_after: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[CircuitOpenError],
                                  tuple[str, ConnectionStatus | None, int]]:
        # Keeps the error picklable across processes despite the extra arguments.
        return (type(self), (str(self), self.status, self.retry_after))


class NodeUnavailable(BramaError):
    """The node a client talks to cannot be reached."""


class AuthenticationFailed(BramaError):
    """The node refused the client's authkey."""


def describe(identifier: str, scope: str | None) -> str:
    """Render a connection for messages: ``'db'`` or ``'db' (scope 'eu')``."""
    if scope is None:
        return repr(identifier)
    return f"{identifier!r} (scope {scope!r})"
