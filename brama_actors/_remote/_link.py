"""A client's link to a node: connecting, requests and replies, reconnecting.

One reader thread takes every frame the node sends: replies wake the thread that made
the request, pushes and events go to the owner's callbacks. If the node goes away,
waiting requests fail with ``NodeUnavailable`` at once and a thread reconnects with
backoff, calling the owner back when the link is up again.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing.connection as mpc
import threading
from collections.abc import Callable
from multiprocessing import AuthenticationError
from typing import Any

from brama_actors._errors import AuthenticationFailed, BramaError, NodeUnavailable
from brama_actors._remote._frames import EventFrame, Push, Reply, Request, from_wire, to_wire
from brama_actors._remote._ops import OPS
from brama_actors._remote._wire import Address, encode, hang_up
from brama_actors._runtime import _nowait

__all__ = ["REQUEST_TIMEOUT", "Link"]

logger = logging.getLogger("brama_actors")

#: Seconds a request waits for the node's reply.
REQUEST_TIMEOUT = 10.0


class _Pending:
    __slots__ = ("error", "event", "ok", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False
        self.value: Any = None
        self.error: BaseException | None = None


class Link:
    """The authenticated connection of one client to its node.

    Args:
        address: the node's address.
        authkey: the shared secret.
        name: the client's name (its threads' prefix).
        on_push: called (reader thread) with each replica push.
        on_event: called (reader thread) with each event frame.
        on_up: called after every (re)connection, before requests flow again; it may
            make requests itself (the replica's snapshot, renewed subscriptions).
        on_down: called when the link is lost.
    """

    def __init__(self, address: Address, authkey: bytes, name: str,
                 on_push: Callable[[Push], None], on_event: Callable[[EventFrame], None],
                 on_up: Callable[[bool], None], on_down: Callable[[], None]) -> None:
        self.address = address
        self._authkey = authkey
        self.name = name
        self._on_push = on_push
        self._on_event = on_event
        self._on_up = on_up
        self._on_down = on_down
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._conn: mpc.Connection | None = None
        self.closed = False
        self._reader: threading.Thread | None = None
        self._reconnector: threading.Thread | None = None
        self._wake = threading.Event()

    @property
    def up(self) -> bool:
        """True while connected (the replica may still be loading)."""
        return self._conn is not None

    # -- connecting ----------------------------------------------------------------------
    def connect(self, again: bool = False) -> None:
        """Connect and authenticate, then run ``on_up``.

        Raises:
            AuthenticationFailed: the node refused the authkey.
            NodeUnavailable: nothing answers at the address.
        """
        try:
            conn = mpc.Client(self.address, authkey=self._authkey)
        except AuthenticationError as exc:
            raise AuthenticationFailed(f"the node at {self.address!r} refused the authkey") \
                from exc
        except (OSError, EOFError) as exc:
            raise NodeUnavailable(f"no node at {self.address!r}: {exc}") from exc
        # Threads are created and started under the lock, where close() sets ``closed``:
        # close() then joins every thread the link has (one it saw created but not
        # started yet could not be joined), and none appears after it.
        with self._lock:
            if self.closed:
                hang_up(conn)
                raise NodeUnavailable("this client is closed")
            self._conn = conn
            self._reader = threading.Thread(target=self._read, args=(conn,),
                                            name=f"{self.name}-reader", daemon=True)
            self._reader.start()
        self._on_up(again)

    def _read(self, conn: mpc.Connection) -> None:
        try:
            while True:
                frame = from_wire(conn.recv())
                kind = type(frame)
                if kind is Reply:
                    pending = self._pending.pop(frame.id, None)  # type: ignore[union-attr]
                    if pending is not None:
                        pending.ok = frame.ok  # type: ignore[union-attr]
                        pending.value = frame.value  # type: ignore[union-attr]
                        pending.event.set()
                elif kind is Push:
                    self._on_push(frame)  # type: ignore[arg-type]
                elif kind is EventFrame:
                    self._on_event(frame)  # type: ignore[arg-type]
        except (EOFError, OSError):
            pass
        except Exception:
            logger.exception("%s: bad message from the node; reconnecting", self.name)
        self._lost(conn)

    def _lost(self, conn: mpc.Connection) -> None:
        with self._lock:
            if self._conn is not conn:
                return
            self._conn = None
            pending, self._pending = self._pending, {}
        try:
            conn.close()
        except OSError:
            pass
        for entry in pending.values():
            entry.error = NodeUnavailable(f"lost the node at {self.address!r}")
            entry.event.set()
        self._on_down()
        with self._lock:
            if not self.closed:
                self._reconnector = threading.Thread(
                    target=self._reconnect, name=f"{self.name}-reconnect", daemon=True)
                self._reconnector.start()

    def _reconnect(self) -> None:
        delay = 0.05
        while not self.closed:
            try:
                self.connect(again=True)
            except AuthenticationFailed:
                logger.error("%s: the node refused the authkey; not reconnecting", self.name)
                return
            except BramaError:
                if self._wake.wait(delay):
                    return
                delay = min(delay * 2, 2.0)
                continue
            logger.info("%s: reconnected to %r", self.name, self.address)
            return

    # -- requests ------------------------------------------------------------------------
    def call(self, op: str, _timeout: float = REQUEST_TIMEOUT, **args: Any) -> Any:
        """Run operation ``op`` on the node; its result (None for a one-way operation).

        Raises:
            NodeUnavailable: not connected, the link broke, or no reply in time.
            TypeError: an operation or argument the table does not know (a bug here).
            Exception: whatever the operation raised on the node.
        """
        spec = OPS[op]
        unknown = set(args) - set(spec.params)
        if unknown:
            raise TypeError(f"{op} takes no argument(s) {sorted(unknown)}")
        if self.closed:
            raise NodeUnavailable("this client is closed")
        if not spec.oneway:
            _nowait.check()  # a round trip: an asyncio caller makes it off its loop
        request_id = next(self._ids)
        pending = None if spec.oneway else _Pending()
        data = encode(to_wire(Request(request_id, op, args)))
        with self._lock:
            conn = self._conn
            if conn is None:
                raise NodeUnavailable(f"not connected to the node at {self.address!r}")
            if pending is not None:
                self._pending[request_id] = pending
        try:
            with self._send_lock:
                conn.send_bytes(data)
        except (OSError, ValueError, TypeError) as exc:  # TypeError: closed under us
            self._pending.pop(request_id, None)
            raise NodeUnavailable(f"lost the node at {self.address!r}") from exc
        if pending is None:
            return None
        if not pending.event.wait(_timeout):
            self._pending.pop(request_id, None)
            raise NodeUnavailable(
                f"the node at {self.address!r} did not answer in {_timeout} s")
        if pending.error is not None:
            raise pending.error
        if not pending.ok:
            raise pending.value
        return pending.value

    # -- closing -------------------------------------------------------------------------
    def close(self, timeout: float) -> None:
        """Disconnect for good and join the link's threads."""
        with self._lock:
            self.closed = True
            conn, self._conn = self._conn, None
            pending, self._pending = self._pending, {}
            threads = (self._reader, self._reconnector)
        self._wake.set()
        for entry in pending.values():
            entry.error = NodeUnavailable("this client is closed")
            entry.event.set()
        if conn is not None:
            hang_up(conn)
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
