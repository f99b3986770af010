"""httpx transports that send every request through its host's circuit (extra ``httpx``).

::

    import httpx
    from brama_actors.httpx import CircuitBreakerTransport

    client = httpx.Client(transport=CircuitBreakerTransport(max_attempts=3, expiry=30_000))

Each request belongs to the connection ``connection(request)`` names (default: the URL's
host), registered unscoped on first use with the transport's ``register_options``. A
refused request raises :class:`~brama_actors.CircuitOpenError` without reaching the
network; an exception from the wrapped transport is recorded as a failure and re-raised
(the same object); a response whose status is in ``failure_statuses`` is a failure, any
other a success, and the response is returned unchanged, its body unread.

Importing this module imports ``httpx``; ``import brama_actors`` does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx

from brama_actors._http import DEFAULT_FAILURE_STATUSES, HostGuards
from brama_actors._runtime import _nowait

__all__ = ["AsyncCircuitBreakerTransport", "CircuitBreakerTransport"]


def _host(request: httpx.Request) -> str:
    """The default connection of a request: its URL's host (no port)."""
    return request.url.host


def _close_quietly(response: httpx.Response) -> None:
    # Recording failed after the response arrived: free its connection before raising.
    try:
        response.close()
    except Exception:
        pass


class CircuitBreakerTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that guards another one, one circuit per host.

    Args:
        transport: the transport that sends (default: a new ``httpx.HTTPTransport()``).
        brama: the system (``None``: the default system, looked up per request).
        connection: ``request -> identifier`` (default: the URL's host).
        failure_statuses: status codes recorded as failures.
        **register_options: ``type``, ``metadata`` and connection options each
            connection is registered with on first use (``max_attempts``, ``expiry``...).

    Raises:
        TypeError: ``transport`` is not an ``httpx.BaseTransport``, ``brama`` is not a
            system, ``connection`` is not callable, ``failure_statuses`` holds a
            non-int (or a bool).
        ValueError: a status code outside 100..599.
        InvalidConfiguration: a bad registration option.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None, *, brama: Any = None,
                 connection: Callable[[httpx.Request], str] = _host,
                 failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
                 **register_options: Any) -> None:
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"transport must be an httpx.BaseTransport, got {transport!r}")
        # Checked before a default transport (and its pool) is made.
        self._guards: HostGuards[httpx.Request] = HostGuards(
            brama=brama, connection=connection, failure_statuses=failure_statuses,
            register_options=register_options)
        self._transport = httpx.HTTPTransport() if transport is None else transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through its connection's circuit.

        Raises:
            CircuitOpenError: the circuit refused the request (nothing was sent).
            Exception: what the wrapped transport raised (recorded as a failure), or
                what ``connection`` raised (nothing recorded).
        """
        return self._guards.send(request, lambda: self._transport.handle_request(request),
                                 _close_quietly)

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()


class AsyncCircuitBreakerTransport(httpx.AsyncBaseTransport):
    """:class:`CircuitBreakerTransport` for ``httpx.AsyncClient``.

    Wraps an ``httpx.AsyncBaseTransport`` (default ``httpx.AsyncHTTPTransport()``). The
    event loop never blocks on brama_actors: a step that would wait (a busy connection
    actor, a node's reply) runs on the loop's executor, as in a guarded ``async def``.

    Args:
        transport: the transport that sends.
        brama: the system (``None``: the default system, looked up per request).
        connection: ``request -> identifier`` (default: the URL's host).
        failure_statuses: status codes recorded as failures.
        **register_options: options each connection is registered with on first use.

    Raises:
        TypeError: see :class:`CircuitBreakerTransport`.
        ValueError: a status code outside 100..599.
        InvalidConfiguration: a bad registration option.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *,
                 brama: Any = None,
                 connection: Callable[[httpx.Request], str] = _host,
                 failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
                 **register_options: Any) -> None:
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(f"transport must be an httpx.AsyncBaseTransport, "
                            f"got {transport!r}")
        self._guards: HostGuards[httpx.Request] = HostGuards(
            brama=brama, connection=connection, failure_statuses=failure_statuses,
            register_options=register_options)
        self._transport = httpx.AsyncHTTPTransport() if transport is None else transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through its connection's circuit.

        Raises:
            CircuitOpenError: the circuit refused the request (nothing was sent).
            Exception: what the wrapped transport raised (recorded as a failure), or
                what ``connection`` raised (nothing recorded).
        """
        guard = self._guards.guard(request)
        entered = await _nowait.run(guard.enter)
        try:
            response = await self._transport.handle_async_request(request)
        except BaseException as exc:
            # A cancellation is a BaseException: it records nothing and gives a
            # half-open trial permit back, as in a guarded async def.
            await guard.aexit(entered, exc)
            raise
        try:
            await guard.ajudge(entered, response)
        except BaseException:
            try:
                await response.aclose()
            except Exception:
                pass
            raise
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()
