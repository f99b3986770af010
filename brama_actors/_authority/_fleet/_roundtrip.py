"""One call's round trip to the fleet's Redis, bounded by one deadline.

redis-py bounds each socket operation by the connection's ``socket_timeout``, not a
call: a call that has to (re)connect runs the connect and then the handshake (``HELLO``,
and ``AUTH``, ``SELECT`` with a password or a database), each waiting up to a
timeout, and a script Redis forgot (``NOSCRIPT``) costs ``EVALSHA`` and then ``EVAL``:
on a slow Redis a call could wait several ``fleet_timeout``. Here every
call has one deadline (``fleet_timeout`` after it began, or the caller's):

* Connected connections wait in a list of this link's own, last used first. Taking one
  costs an uncontended lock and no I/O but the non-blocking check redis-py's pool makes (is
  anything left to read, the server's close included). A broken one goes back to the pool.
* A connection is (re)connected by the pool (``get_connection``, with its timeouts,
  credentials and TLS) on a short-lived thread, and the call waits for it only until its
  deadline. The handshake cannot be bounded from outside (it is several commands inside
  one redis-py call); a connection that comes too late is kept for the next call, or
  closed if the link was closed meanwhile. This costs a thread start per connect, never
  on a call that finds a connected connection.
* Each reply is read with the time left (``read_response(timeout=...)``); no time left,
  no read.
* A connection error on the script's round trip (reset, broken pipe, EOF: the server or a
  proxy closed the connection, perhaps after running the script) with time left is
  retried once on another connection, with the same request: a step that changes a
  circuit carries a request id the script applies once (``_lua_once``), the other ops
  are idempotent. A timeout spent the deadline: never retried.

Not bounded here: ``sendall`` of a command waits on a full socket buffer (a step is a few
KB; a buffer holds hundreds), and a reply read in several ``recv`` waits the time left
for each (a reply is a few KB, read in one).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

__all__ = ["RoundTrip"]

logger = logging.getLogger("brama_actors")

#: Connection errors that say nothing about the script having run or not, so a retry
#: with the same request id is safe and may succeed; not those where Redis answered
#: (LOADING) or refused us (authentication), which a retry would meet again.
_RETRIED = redis.ConnectionError
_NOT_RETRIED = (redis.exceptions.BusyLoadingError, redis.exceptions.AuthenticationError,
                redis.exceptions.AuthorizationError)


class _Handoff:
    """A connection (or the error) passed from a connecting thread to the caller, who
    may have left by then (``put`` returns False)."""

    __slots__ = ("_cond", "_conn", "_error", "_left")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._conn: Any = None
        self._error: BaseException | None = None
        self._left = False

    def put(self, conn: Any) -> bool:
        with self._cond:
            if self._left:
                return False
            self._conn = conn
            self._cond.notify()
            return True

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify()

    def take(self, timeout: float) -> Any:
        """The connection; raises the connecting error, or ``redis.TimeoutError``."""
        with self._cond:
            self._cond.wait_for(lambda: self._conn is not None or self._error is not None,
                                timeout)
            if self._conn is not None:
                return self._conn
            if self._error is not None:
                raise self._error
            self._left = True
        raise redis.TimeoutError("connecting to Redis took longer than the call's deadline")


class RoundTrip:
    """Script calls on a client's pool, each within one deadline.

    Args:
        client: the link's command client (its pool makes and connects connections).
        sha: the script's SHA-1 (``EVALSHA``).
        script: the script itself (``EVAL`` after ``NOSCRIPT``).
        name: names the connecting threads (``brama-fleet-connect-<name>``).
    """

    def __init__(self, client: redis.Redis, sha: str, script: str, name: str) -> None:
        self._pool = client.connection_pool
        self._sha = sha
        self._script = script
        self._name = f"brama-fleet-connect-{name}"
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    def call(self, keys: list[str], argv: list[str], deadline: float) -> Any:
        """Run the script with ``keys``/``argv`` by ``deadline`` (monotonic s), once more
        on another connection after a connection error (so the step must be idempotent,
        or carry a request id).

        Raises:
            redis.ConnectionError, redis.TimeoutError, OSError: Redis did not answer.
            redis.ResponseError: Redis refused (the connection stays usable).
        """
        conn = self._take(deadline)
        try:
            return self._run(conn, keys, argv, deadline)
        except _RETRIED as exc:
            if isinstance(exc, _NOT_RETRIED) or time.monotonic() >= deadline:
                raise
            logger.debug("the fleet's Redis connection broke (%s); retrying the request once",
                         exc)
        return self._run(self._connect(deadline), keys, argv, deadline)

    def close(self) -> None:
        """Disconnect the idle connections; later ones are disconnected when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)

    # -- one attempt --------------------------------------------------------------------
    def _run(self, conn: Any, keys: list[str], argv: list[str], deadline: float) -> Any:
        """EVALSHA (EVAL after NOSCRIPT) on ``conn``, which is given back or dropped."""
        try:
            conn.send_command("EVALSHA", self._sha, len(keys), *keys, *argv)
            try:
                reply = _read(conn, deadline)
            except redis.exceptions.NoScriptError:
                # A restarted or failed-over Redis: EVAL runs the script and caches it,
                # one command where SCRIPT LOAD and EVALSHA again would be two.
                conn.send_command("EVAL", self._script, len(keys), *keys, *argv)
                reply = _read(conn, deadline)
        except redis.ResponseError:
            self._give_back(conn)  # the whole reply was read: the connection is clean
            raise
        except BaseException:
            self._drop(conn)
            raise
        self._give_back(conn)
        return reply

    # -- connections --------------------------------------------------------------------
    def _take(self, deadline: float) -> Any:
        """A connected connection: an idle one that is clean, else a new one."""
        while True:
            with self._lock:  # uncontended; a close() meanwhile must not share it
                conn = None if self._closed or not self._idle else self._idle.pop()
            if conn is None:
                return self._connect(deadline)
            try:
                if conn.is_connected and not conn.can_read():
                    return conn
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass  # closed by the server while idle: the pool reconnects it later
            self._drop(conn)

    def _connect(self, deadline: float) -> Any:
        """A connection from the pool, connected on a thread of its own, by ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise redis.TimeoutError("no time left to connect to Redis")
        handoff = _Handoff()
        threading.Thread(target=self._connecting, args=(handoff,), name=self._name,
                         daemon=True).start()
        return handoff.take(left)

    def _connecting(self, handoff: _Handoff) -> None:
        try:
            conn = self._pool.get_connection()
        except BaseException as exc:  # handed to the caller, who raises it
            handoff.fail(exc)
            return
        if not handoff.put(conn):
            self._give_back(conn)  # the caller left: the next call takes it

    def _give_back(self, conn: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        self._drop(conn)

    def _drop(self, conn: Any) -> None:
        conn.disconnect()
        self._pool.release(conn)


def _read(conn: Any, deadline: float) -> Any:
    """The reply to the command sent on ``conn``, waiting until ``deadline`` at most."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise redis.TimeoutError("no time left to read Redis's reply")
    return conn.read_response(timeout=left)
