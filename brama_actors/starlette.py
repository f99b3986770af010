"""Starlette and FastAPI: refused calls become HTTP 503 with ``Retry-After`` (extra ``starlette``).

::

    from fastapi import Depends, FastAPI
    from brama_actors.starlette import install, requires

    app = FastAPI()
    install(app)        # CircuitOpenError -> 503, Retry-After: ceil(retry_after / 1000)

    @app.get("/orders", dependencies=[Depends(requires("orders_db"))])
    async def orders(): ...

``requires`` answers early, before the endpoint runs, while a circuit is open. It checks
``available()`` only: it takes no half-open trial permit, records nothing, registers
nothing and does not count in ``total_rejections`` — the guarded calls inside the
endpoint do all of that.

Importing this module imports ``starlette``; ``import brama_actors`` does not.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from brama_actors._errors import CircuitOpenError, NodeUnavailable, describe
from brama_actors._guard import check_system
from brama_actors._keys import check_key
from brama_actors._runtime import _nowait

__all__ = ["install", "requires"]


def _retry_after_seconds(error: CircuitOpenError) -> int:
    """``Retry-After`` in whole seconds, rounded up so a client never retries too early."""
    return math.ceil(error.retry_after / 1000)


async def _circuit_open(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CircuitOpenError)
    # The body names no connection: identifiers are the server's internals.
    return JSONResponse({"detail": "Service Unavailable"}, status_code=503,
                        headers={"Retry-After": str(_retry_after_seconds(exc))})


def install(app: Starlette) -> None:
    """Answer every ``CircuitOpenError`` an endpoint or dependency raises with HTTP 503.

    The response carries ``Retry-After`` (seconds, ``ceil(retry_after / 1000)``; ``0``
    when the circuit is half-open with every trial permit taken) and the JSON body
    ``{"detail": "Service Unavailable"}``.

    Args:
        app: a Starlette or FastAPI application.

    Raises:
        TypeError: ``app`` is not a Starlette application.
    """
    if not isinstance(app, Starlette):
        raise TypeError(f"app must be a Starlette or FastAPI application, got {app!r}")
    app.add_exception_handler(CircuitOpenError, _circuit_open)


def _refusal(system: Any, identifier: str, scope: str | None) -> CircuitOpenError | None:
    """The error to raise while the circuit is not available (None once it is).

    The authority builds it as it does for a refused guarded call (its ``retry_after``
    included). Not available yet not open (a client whose node is out of reach, with
    ``when_stale="deny"``) or a node that does not answer: refused, ``retry_after`` 0.
    """
    try:
        error: CircuitOpenError | None = system._authority.refusal(check_key(identifier,
                                                                             scope))
    except NodeUnavailable as exc:
        return CircuitOpenError(f"circuit for {describe(identifier, scope)} is not "
                                f"available: {exc}", None, 0)
    if error is None and not system.available(identifier, scope=scope):
        return CircuitOpenError(f"circuit for {describe(identifier, scope)} is not "
                                "available", None, 0)
    return error


def requires(identifier: str, *, scope: str | None = None,
             brama: Any = None) -> Callable[[], Awaitable[None]]:
    """A FastAPI dependency that refuses requests while a circuit is open.

    Use it as ``Depends(requires("db"))``. With :func:`install`, a refused request is
    answered 503 with ``Retry-After``.

    Args:
        identifier: the connection.
        scope: its scope.
        brama: the system (``None``: the default system, looked up per request).

    Returns:
        An ``async`` callable taking no arguments. It raises ``CircuitOpenError`` while
        ``available()`` is false and ``ConnectionNotFound`` for an unknown connection;
        it takes no trial permit.

    Raises:
        InvalidIdentifier: bad identifier or scope.
        TypeError: ``brama`` is not a system.
    """
    check_key(identifier, scope)
    check_system(brama)

    async def circuit_available() -> None:
        if brama is None:
            from brama_actors._system._default import get

            system: Any = get()
        else:
            system = brama
        if system.available(identifier, scope=scope):  # never waits: the hot path
            return
        # Refused (or unknown): status() may wait on an actor or a node, so off the loop.
        error = await _nowait.run(_refusal, system, identifier, scope)
        if error is not None:
            raise error

    return circuit_available
