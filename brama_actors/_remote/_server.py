"""Serving a system to other processes: ``Brama.serve()`` returns a :class:`Server`.

The server listens, authenticates each peer (the HMAC challenge both ways, on a
short-lived thread with a deadline, a bounded number at a time, so a peer that connects
and says nothing cannot stall the accept loop) and hands it to a ``Session``
(``_session``), whose operations are the ``NodeService``'s (``_service``). The publisher
pushes every state change to every client's replica. A client that disconnects loses
its subscriptions and its half-open trial permits; nothing else changes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import TYPE_CHECKING, Any

from brama_actors._delivery._subscription import Subscription
from brama_actors._delivery._targets import Item, Target
from brama_actors._errors import BramaError
from brama_actors._events import Event, EventType
from brama_actors._remote._frames import Push, Reply, to_wire
from brama_actors._remote._session import Session
from brama_actors._remote._wire import Address, check_address, family
from brama_actors._runtime import Scheduler, SystemClock

if TYPE_CHECKING:
    from brama_actors._authority import Authority
    from brama_actors._system._brama import Brama

__all__ = ["Server"]

logger = logging.getLogger("brama_actors")

#: Seconds a peer has to complete the HMAC handshake.
HANDSHAKE_TIMEOUT = 5.0
#: Handshakes in progress at once; further peers wait in the listen backlog.
MAX_HANDSHAKES = 32
#: Authenticated clients at once.
MAX_CLIENTS = 128

_REPLICA_EVENTS = frozenset({EventType.CONNECTION_REGISTERED, EventType.STATE_CHANGE,
                             EventType.CONNECTION_REMOVED})


@dataclass(frozen=True, slots=True)
class Node:
    """What the sessions of one server share: the served system and its authority.

    Attributes:
        name: the node's name (its threads' prefix).
        brama: the served system (its public methods check what clients send).
        authority: its authority (admission, settling, subscriptions to clients).
        publisher: pushes state changes to clients' replicas.
        forget: called by a session once it has closed.
    """

    name: str
    brama: Brama
    authority: Authority
    publisher: _Publisher
    forget: Callable[[Session], None]


class _Publisher(Target):
    """Pushes every state change to every client's replica, with sequence numbers."""

    def __init__(self, brama: Brama) -> None:
        super().__init__(1_000_000)
        self._brama = brama
        self.lock = threading.Lock()
        self.seq = 0
        self.sessions: set[Session] = set()

    def add_session(self, session: Session, request_id: int) -> None:
        brama = self._brama
        with self.lock:
            states = {(s.identifier, s.scope): s.state.value for s in brama.connections()}
            self.sessions.add(session)
            session.enqueue(to_wire(Reply(request_id, True, (self.seq, states))))

    def leave(self, session: Session) -> None:
        with self.lock:
            self.sessions.discard(session)

    def deliver(self, item: Item) -> bool:
        events = (item,) if isinstance(item, Event) else item
        changes: list[tuple[str, str | None, str | None]] = []
        for event in events:
            assert event.connection is not None  # every replica event names one
            if event.event is EventType.CONNECTION_REMOVED:
                state = None
            elif event.event is EventType.STATE_CHANGE:
                state = event.data["new_state"].value
            else:
                state = event.data["state"].value
            changes.append((event.connection, event.scope, state))
        with self.lock:
            self.seq += 1
            message = to_wire(Push(self.seq, changes))
            for session in list(self.sessions):
                session.enqueue(message)
        return True

    def marker(self) -> None:
        return None


class Server:
    """A node: a system served to other processes. Create it with ``brama.serve()``.

    Attributes:
        address: where clients connect (a socket path or ``(host, port)``).
        authkey: the key clients must present (32 random bytes unless given).
    """

    def __init__(self, brama: Brama, authority: Authority, name: str, address: Any = None,
                 authkey: bytes | None = None, allow_remote: bool = False) -> None:
        if authkey is None:
            authkey = os.urandom(32)
        elif not isinstance(authkey, bytes) or not authkey:
            raise TypeError(f"authkey must be non-empty bytes, got {type(authkey).__name__}")
        self._tempdir: str | None = None
        if address is None:
            # A fresh private directory: only this user can reach the socket.
            self._tempdir = tempfile.mkdtemp(prefix="brama-")
            os.chmod(self._tempdir, 0o700)
            address = os.path.join(self._tempdir, "node.sock")
        self.address: Address = check_address(address, allow_remote)
        self.authkey = authkey
        self.name = f"{name}-node"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sessions: set[Session] = set()
        self._count = 0
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._closed = False
        self._socket = socket.socket(family(self.address))
        try:
            if isinstance(self.address, str):
                try:
                    self._socket.bind(self.address)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or not _stale_socket(self.address):
                        raise
                    os.unlink(self.address)  # left by a node that died: nobody listens
                    self._socket.bind(self.address)
                os.chmod(self.address, 0o600)
            else:
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._socket.bind(self.address)
                self.address = self._socket.getsockname()[:2]
            self._socket.listen(64)
        except OSError:
            self._socket.close()
            self._remove_files()
            raise
        self._clock = SystemClock()
        self._reaper = Scheduler(self._clock, f"{self.name}-reaper")
        publisher = _Publisher(brama)
        self._node = Node(self.name, brama, authority, publisher, self._forget)
        self._authority = authority
        self._publisher_sub = Subscription(
            brama, publisher, events=frozenset(_REPLICA_EVENTS), connection=None, scope=None,
            filter=None, subscriber=None, owner=("node", self.name))
        authority.subscribe(self._publisher_sub)
        self._accepter = threading.Thread(target=self._accept, name=f"{self.name}-accept",
                                          daemon=True)
        self._accepter.start()

    def __repr__(self) -> str:
        return f"<Server {self.address!r} clients={len(self._sessions)}>"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def clients(self) -> int:
        """How many authenticated clients are connected."""
        return len(self._sessions)

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._socket.accept()
            except OSError:
                return
            # Bounded: at most MAX_HANDSHAKES threads; a flood of silent peers makes
            # later ones wait (each silent peer is cut off after HANDSHAKE_TIMEOUT).
            while not self._handshakes.acquire(timeout=0.5):
                if self._closed:
                    sock.close()
                    return
            threading.Thread(target=self._handshake, args=(sock,),
                             name=f"{self.name}-handshake", daemon=True).start()

    def _handshake(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(True)
            # A dup to wake the blocked handshake if the peer stalls.
            waker = socket.socket(fileno=os.dup(sock.fileno()))
            conn = Connection(sock.detach())
            # One shared timer thread cuts off peers that stall the handshake.
            timer = self._reaper.schedule(
                self._clock.now() + int(HANDSHAKE_TIMEOUT * 1000),
                lambda: _shutdown(waker))
            try:
                deliver_challenge(conn, self.authkey)
                answer_challenge(conn, self.authkey)
            except Exception as exc:
                logger.warning("%s: dropped a peer that failed the handshake: %r",
                               self.name, exc)
                conn.close()
                return
            finally:
                timer.cancel()
                waker.close()
            with self._lock:
                if self._closed or len(self._sessions) >= MAX_CLIENTS:
                    logger.warning("%s: refusing a client (closed or %d clients)",
                                   self.name, MAX_CLIENTS)
                    conn.close()
                    return
                self._count += 1
                session = Session(self._node, conn, self._count)
                self._sessions.add(session)
                self._changed.notify_all()
            session.start()
        finally:
            self._handshakes.release()

    def _forget(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)
            self._changed.notify_all()
        self._node.publisher.leave(session)

    def wait_for_clients(self, count: int, timeout: float | None = None) -> bool:
        """Wait until exactly ``count`` clients are connected; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._sessions) == count, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving: disconnect every client (their subscriptions end)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sessions = list(self._sessions)
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._socket.close()
        self._accepter.join(timeout)
        self._reaper.stop(timeout)
        for session in sessions:
            session.close()
        for session in sessions:
            session.join(timeout)
        self._node.publisher.close()
        try:
            self._authority.unsubscribe(self._publisher_sub)
        except BramaError:
            pass  # the system is stopping
        self._remove_files()

    def _remove_files(self) -> None:
        if isinstance(self.address, str):
            try:
                os.unlink(self.address)
            except OSError:
                pass
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _stale_socket(path: str) -> bool:
    """True if ``path`` is a Unix socket that nobody listens on any more."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False
