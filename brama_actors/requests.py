"""A requests adapter that sends every request through its host's circuit (extra ``requests``).

::

    import requests
    from brama_actors.requests import CircuitBreakerAdapter

    session = requests.Session()
    session.mount("https://", CircuitBreakerAdapter(register_options={"max_attempts": 3}))

The rules are those of ``brama_actors.httpx``: one unscoped connection per
``connection(prepared_request)`` (default: the URL's host), registered on first use with
``register_options``; a refused request raises :class:`~brama_actors.CircuitOpenError`
without reaching the network; an exception from sending is recorded as a failure and
re-raised (the same object); a response whose status is in ``failure_statuses`` is a
failure, any other a success, and the response is returned unchanged.

``register_options`` is a mapping here (not ``**kwargs`` as for httpx) because the
keyword arguments belong to ``HTTPAdapter`` (``pool_connections``, ``max_retries``...).

Importing this module imports ``requests``; ``import brama_actors`` does not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter

from brama_actors._http import DEFAULT_FAILURE_STATUSES, HostGuards

__all__ = ["CircuitBreakerAdapter"]


def _host(request: PreparedRequest) -> str:
    """The default connection of a prepared request: its URL's host (no port)."""
    return urlsplit(request.url or "").hostname or ""


class CircuitBreakerAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose ``send`` goes through one circuit per host.

    Args:
        brama: the system (``None``: the default system, looked up per request).
        connection: ``prepared_request -> identifier`` (default: the URL's host).
        failure_statuses: status codes recorded as failures.
        register_options: ``type``, ``metadata`` and connection options each
            connection is registered with on first use.
        **kwargs: ``HTTPAdapter`` arguments (``pool_connections``, ``max_retries``...).

    Raises:
        TypeError: ``brama`` is not a system, ``connection`` is not callable,
            ``failure_statuses`` holds a non-int (or a bool), ``register_options`` is
            not a mapping.
        ValueError: a status code outside 100..599.
        InvalidConfiguration: a bad registration option.
    """

    def __init__(self, *, brama: Any = None,
                 connection: Callable[[PreparedRequest], str] = _host,
                 failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
                 register_options: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        if register_options is None:
            register_options = {}
        elif not isinstance(register_options, Mapping):
            raise TypeError(f"register_options must be a mapping or None, "
                            f"got {register_options!r}")
        # Checked before HTTPAdapter builds its pool manager.
        self._guards: HostGuards[PreparedRequest] = HostGuards(
            brama=brama, connection=connection, failure_statuses=failure_statuses,
            register_options=register_options)
        super().__init__(**kwargs)

    def send(self, request: PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None,
             proxies: Any = None) -> Response:
        """Send ``request`` through its connection's circuit.

        Raises:
            CircuitOpenError: the circuit refused the request (nothing was sent).
            Exception: what sending raised (``requests.ConnectionError``...: recorded
                as a failure), or what ``connection`` raised (nothing recorded).
        """
        send = functools.partial(super().send, request, stream=stream, timeout=timeout,
                                 verify=verify, cert=cert, proxies=proxies)
        # If recording fails, the pooled connection is freed first.
        response: Response = self._guards.send(request, send, Response.close)
        return response
