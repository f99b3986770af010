"""What the HTTP client integrations share: one guard per connection, response verdicts.

``brama_actors.httpx`` and ``brama_actors.requests`` differ only in how they hand a
request to their library. Which connection a request belongs to, when its circuit is
registered, what a response means and how an outcome is recorded are decided here, once,
by the same :class:`~brama_actors._guard.Guard` a decorated function uses: an integration
admits and records exactly as a guard does (trial permits, ``exclude``-free exception
recording, the counters the authority keeps).

Nothing here imports an HTTP library: the callers pass in how to read a request's host and
a response's status code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from brama_actors._guard import Guard, _registration, check_system

__all__ = ["DEFAULT_FAILURE_STATUSES", "HostGuards", "check_failure_statuses"]

#: Answers that say the server (not the request) is in trouble: rate limited, erroring,
#: or a gateway in front of it that cannot reach it.
DEFAULT_FAILURE_STATUSES = frozenset({429, 500, 502, 503, 504})

Request = TypeVar("Request")
Response = TypeVar("Response")


def check_failure_statuses(statuses: Any) -> frozenset[int]:
    """A frozen copy of ``failure_statuses``, checked at construction.

    Checked here rather than per response so a typo (``{"503"}``) fails the program at
    start-up instead of silently never opening the circuit.

    Raises:
        TypeError: not an iterable of ints (``bool`` is not accepted as an int).
        ValueError: an int outside the HTTP status range 100..599.
    """
    if isinstance(statuses, str | bytes) or not isinstance(statuses, Iterable):
        raise TypeError(f"failure_statuses must be a collection of ints, got {statuses!r}")
    checked = frozenset(statuses)
    for status in checked:
        if not isinstance(status, int) or isinstance(status, bool):
            raise TypeError(f"failure_statuses must contain ints (HTTP status codes), "
                            f"got {status!r}")
        if not 100 <= status <= 599:
            raise ValueError(f"failure_statuses must contain HTTP status codes 100..599, "
                             f"got {status}")
    return checked


class HostGuards(Generic[Request]):
    """One :class:`Guard` per connection a request maps to, made on first use.

    Args:
        brama: the system (``None``: the default system, looked up at each request).
        connection: ``request -> identifier``; user code, run in the caller's thread
            before anything is admitted, so if it raises nothing is recorded.
        failure_statuses: status codes recorded as failures.
        register_options: ``type``, ``metadata`` and connection options each
            connection is registered with on first use.

    Raises:
        TypeError: a bad ``brama``, a non-callable ``connection``, bad
            ``failure_statuses``.
        ValueError: a status code out of range.
        InvalidConfiguration: a bad registration option.
    """

    __slots__ = ("_brama", "_connection", "_guards", "_lock", "_options", "failure_statuses")

    def __init__(self, *, brama: Any, connection: Callable[[Request], str],
                 failure_statuses: Any, register_options: Mapping[str, Any]) -> None:
        check_system(brama)
        if not callable(connection):
            raise TypeError(f"connection must be a callable request -> str, "
                            f"got {connection!r}")
        self.failure_statuses = check_failure_statuses(failure_statuses)
        # Checked now, not at the first request to each host (the Guard checks again).
        _registration(register_options)
        self._brama = brama
        self._connection = connection
        self._options = dict(register_options)
        self._guards: dict[str, Guard] = {}
        self._lock = threading.Lock()

    def guard(self, request: Request) -> Guard:
        """The guard of ``request``'s connection.

        Raises:
            Exception: whatever ``connection(request)`` raises (nothing is recorded).
            InvalidIdentifier: ``connection`` returned something that is not a
                non-empty ``str``.
        """
        identifier = self._connection(request)
        try:
            guard = self._guards.get(identifier)
        except TypeError:  # unhashable: Guard() below names the bad identifier
            guard = None
        if guard is not None:
            return guard
        made = Guard(identifier, brama=self._brama, error_handler=self.verdict,
                     **self._options)
        with self._lock:  # two threads racing on a new host share one guard
            return self._guards.setdefault(identifier, made)

    def send(self, request: Request, send: Callable[[], Response],
             close: Callable[[Response], None]) -> Response:
        """Send ``request`` through its connection's circuit (sync transports).

        Admitted as a guard admits (a half-open trial permit included); an exception
        from ``send`` is recorded and re-raised as the same object; a response is
        judged by ``failure_statuses`` and returned unchanged. If recording the
        response fails, ``close(response)`` frees its connection before the error
        propagates.

        Raises:
            CircuitOpenError: the circuit refused the request (nothing was sent).
        """
        guard = self.guard(request)
        entered = guard.enter()
        try:
            response = send()
        except BaseException as exc:
            guard.exit(entered, exc)
            raise
        try:
            guard.judge(entered, response)
        except BaseException:
            close(response)
            raise
        return response

    def verdict(self, response: Any) -> str | tuple[str, str]:
        """``error_handler`` of every guard: a failure for ``failure_statuses``.

        Reads the status code only: the body is never touched, so a streamed response
        reaches the caller unread.
        """
        code = response.status_code
        if code in self.failure_statuses:
            return ("failure", f"HTTP {code}")
        return "success"
