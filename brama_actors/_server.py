"""Serving a system to other processes: ``Brama.serve()`` returns a :class:`Server`.

Per client the node runs two threads: a reader that decodes and executes requests in
order and sends each reply itself when nothing is queued before it (one thread hand-off
less per round trip), and a writer that sends replica pushes, events and the replies
queued behind them from a bounded queue, so a slow client never blocks the event
manager. Handshakes run on short-lived threads
with a deadline, a bounded number at a time, so a peer that connects and says nothing
cannot stall the accept loop. A client that disconnects loses its subscriptions and
its half-open trial permits; nothing else changes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import TYPE_CHECKING, Any

import cloudpickle
from pykka import ThreadingFuture

from brama_actors._delivery._subscription import Subscription
from brama_actors._delivery._targets import Item, Target
from brama_actors._errors import BramaError, SystemStopped
from brama_actors._events import Event, EventType
from brama_actors._runtime._clock import SystemClock
from brama_actors._runtime._scheduler import Scheduler
from brama_actors._wire import (
    MAX_FRAME,
    Address,
    check_address,
    decode_request,
    encode,
    family,
    hang_up,
)

if TYPE_CHECKING:
    from brama_actors._system._brama import Brama
    from brama_actors._system._connection import Cell

__all__ = ["Server"]

logger = logging.getLogger("brama_actors")

#: Seconds a peer has to complete the HMAC handshake.
HANDSHAKE_TIMEOUT = 5.0
#: Handshakes in progress at once; further peers wait in the listen backlog.
MAX_HANDSHAKES = 32
#: Authenticated clients at once.
MAX_CLIENTS = 128
#: Messages queued for one client before it is dropped as too slow.
MAX_QUEUE = 200_000

_REPLICA_EVENTS = frozenset({EventType.CONNECTION_REGISTERED, EventType.STATE_CHANGE,
                             EventType.CONNECTION_REMOVED})
_NO_REPLY = object()


class _Session:
    """One authenticated client connection on the node."""

    def __init__(self, server: Server, conn: Connection, number: int) -> None:
        self.server = server
        self.conn = conn
        self.name = f"{server.name}-client-{number}"
        self.closed = False
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Any] = collections.deque()
        self._sending = False  # the writer (or an inline reply) is sending
        self._send_lock = threading.Lock()
        self.subscriptions: dict[int, Subscription] = {}
        self.trials: collections.Counter[Any] = collections.Counter()
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-reader",
                                        daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"{self.name}-writer",
                                        daemon=True)

    def start(self) -> None:
        self._writer.start()
        self._reader.start()

    # -- outgoing ------------------------------------------------------------------------
    def enqueue(self, message: Any) -> bool:
        with self._cond:
            if self.closed:
                return False
            if len(self._queue) >= MAX_QUEUE:
                too_slow = True
            else:
                self._queue.append(message)
                self._cond.notify()
                too_slow = False
        if too_slow:
            logger.warning("%s fell %d messages behind; dropping it", self.name, MAX_QUEUE)
            self.close()
            return False
        return True

    def marker(self) -> ThreadingFuture[None]:
        future: ThreadingFuture[None] = ThreadingFuture()
        if not self.enqueue(future):
            future.set(None)
        return future

    def reply(self, data: bytes) -> None:
        """Send an encoded reply from the reader thread, inline when nothing is queued.

        Saves the hand-off to the writer thread on the request/reply path, while a reply
        still never overtakes events queued before it (``drain`` relies on that).
        """
        with self._cond:
            if self.closed:
                return
            if self._queue or self._sending:
                # Behind other messages: the same bound as everything else queued.
                if len(self._queue) < MAX_QUEUE:
                    self._queue.append(data)
                    self._cond.notify()
                    return
                too_slow = True
            else:
                too_slow = False
                self._sending = True
        if too_slow:
            logger.warning("%s fell %d messages behind; dropping it", self.name, MAX_QUEUE)
            self.close()
            return
        try:
            with self._send_lock:
                self.conn.send_bytes(data)
        except (OSError, ValueError, TypeError):  # TypeError: closed under us
            self.close()
        finally:
            with self._cond:
                self._sending = False
                if self._queue:
                    self._cond.notify()

    def _write(self) -> None:
        while True:
            with self._cond:
                while (not self._queue or self._sending) and not self.closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._sending = True
            try:
                with self._send_lock:
                    for message in batch:
                        if isinstance(message, ThreadingFuture):
                            message.set(None)
                            continue
                        if isinstance(message, bytes):  # a reply, encoded by the reader
                            self.conn.send_bytes(message)
                            continue
                        try:
                            data = encode(message)
                        except Exception:
                            logger.exception("%s: cannot send %r; skipped", self.name,
                                             message[0])
                            continue
                        self.conn.send_bytes(data)
            except (OSError, ValueError, TypeError):  # TypeError: closed under us
                self.close()
                # Nobody will send these: release anyone draining on them.
                with self._cond:
                    batch.extend(self._queue)
                    self._queue.clear()
                for message in batch:
                    if isinstance(message, ThreadingFuture):
                        with contextlib.suppress(Exception):
                            message.set(None)
                return
            finally:
                with self._cond:
                    self._sending = False

    # -- incoming ------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while not self.closed:
                try:
                    data = self.conn.recv_bytes(MAX_FRAME)
                except EOFError:
                    return  # a clean close between frames
                except TypeError:
                    return  # close() closed the connection under us (its handle is None)
                except OSError as exc:
                    if not self.closed:
                        logger.warning("%s: connection lost (%s); dropping it", self.name, exc)
                    return
                try:
                    request_id, op, args = decode_request(data)
                except ValueError as exc:
                    logger.warning("%s sent a bad request (%s); dropping it", self.name, exc)
                    return
                self._dispatch(request_id, op, args)
        finally:
            self.close()

    def _dispatch(self, request_id: int, op: str, args: dict[str, Any]) -> None:
        try:
            result = getattr(self, f"_op_{op}")(request_id, **args)
        except Exception as exc:  # every error goes back to the client
            result, ok = exc, False
        else:
            ok = True
        if result is _NO_REPLY or args.get("oneway"):
            return
        try:  # encoded once, here: a result that cannot be pickled becomes an error
            data = encode(("reply", request_id, ok, result))
        except Exception:
            data = encode(("reply", request_id, False, BramaError(repr(result))))
        self.reply(data)

    # -- operations ----------------------------------------------------------------------
    @property
    def brama(self) -> Brama:
        return self.server.brama

    def _op_ping(self, request_id: int) -> None:
        return None

    def _op_hello(self, request_id: int) -> object:
        self.server.publisher.add_session(self, request_id)
        return _NO_REPLY

    def _op_register(self, request_id: int, identifier: Any, **options: Any) -> Any:
        return self.brama.register(identifier, **options)

    def _op_unregister(self, request_id: int, identifier: Any, scope: Any = None) -> bool:
        return self.brama.unregister(identifier, scope=scope)

    def _op_success(self, request_id: int, identifier: Any, scope: Any = None,
                    metadata: Any = None, oneway: bool = False) -> None:
        self.brama.success(identifier, scope=scope, metadata=metadata)

    def _op_failure(self, request_id: int, identifier: Any, scope: Any = None,
                    reason: Any = None, metadata: Any = None) -> str | None:
        brama = self.brama
        brama.failure(identifier, scope=scope, reason=reason, metadata=metadata)
        cell = brama._cells.get(identifier if scope is None else (scope, identifier))
        return None if cell is None else cell.status.state.value

    def _op_status(self, request_id: int, identifier: Any, scope: Any = None) -> Any:
        return self.brama.status(identifier, scope=scope)

    def _op_connections(self, request_id: int, **kwargs: Any) -> Any:
        return self.brama.connections(**kwargs)

    def _op_open_circuit(self, request_id: int, identifier: Any, scope: Any = None,
                         reason: Any = None, expiry: Any = None) -> None:
        self.brama.open_circuit(identifier, scope=scope, reason=reason, expiry=expiry)

    def _op_close_circuit(self, request_id: int, identifier: Any, scope: Any = None,
                          reason: Any = None) -> None:
        self.brama.close_circuit(identifier, scope=scope, reason=reason)

    def _op_reset_circuit(self, request_id: int, identifier: Any, scope: Any = None,
                          reason: Any = None) -> None:
        self.brama.reset_circuit(identifier, scope=scope, reason=reason)

    def _op_configure(self, request_id: int, identifier: Any = None, scope: Any = None,
                      **options: Any) -> None:
        self.brama.configure(identifier, scope=scope, **options)

    def _op_subscribe(self, request_id: int, client_id: int, events: Any = None,
                      connection: Any = None, scope: Any = None, filter: bytes | None = None,
                      batch_size: Any = None, batch_timeout: Any = None,
                      max_pending: Any = 10_000) -> int:
        predicate = None
        if filter is not None:
            if not isinstance(filter, bytes):
                raise TypeError("filter must arrive as cloudpickle bytes")
            # Only authenticated clients get here (the handshake ran first).
            predicate = cloudpickle.loads(filter)
        target = RemoteTarget(self, client_id, max_pending if isinstance(max_pending, int)
                              else 10_000)
        sub = self.brama._subscribe_target(
            target, events=events, connection=connection, scope=scope, filter=predicate,
            batch_size=batch_size, batch_timeout=batch_timeout, max_pending=max_pending,
            owner=("client", self.name))
        with self._cond:
            if not self.closed:
                self.subscriptions[sub.id] = sub
                return sub.id
        # close() already ran: nobody else will remove it.
        self.brama.unsubscribe(sub)
        raise BramaError("the client's session closed")

    def _op_unsubscribe(self, request_id: int, ids: list[int]) -> int:
        removed = 0
        for sub_id in ids:
            sub = self.subscriptions.pop(sub_id, None)
            if sub is not None and self.brama.unsubscribe(sub):
                removed += 1
        return removed

    def _op_drain(self, request_id: int, timeout: float = 1.0) -> None:
        self.brama.drain(timeout)

    def _op_trial(self, request_id: int, identifier: Any, scope: Any = None,
                  register: bool = True, options: dict[str, Any] | None = None) -> str:
        """Admission for a guarded call: 'run' (closed) or 'trial' (a half-open permit)."""
        from brama_actors._guard import Guard

        guard = Guard(identifier, scope=scope, brama=self.brama, register=register,
                      **(options or {}))
        _, _cell, trial = guard.enter()
        if trial:
            with self._cond:
                if not self.closed:
                    self.trials[(identifier, scope)] += 1
                    return "trial"
            self._release(identifier, scope)  # close() already returned the others
            raise BramaError("the client's session closed")
        return "run"

    def _op_outcome(self, request_id: int, identifier: Any, scope: Any = None,
                    kind: str = "success", reason: Any = None,
                    trial: bool = False) -> str | None:
        """Report a guarded call's outcome; for a failure, the state after it."""
        brama = self.brama
        try:
            if kind == "success":
                if trial:
                    brama._report_success_sync(identifier, scope)
                else:
                    brama.success(identifier, scope=scope)
            elif kind == "failure":
                return self._op_failure(request_id, identifier, scope, reason)
            return None
        finally:
            if trial and self.trials[(identifier, scope)] > 0:
                self.trials[(identifier, scope)] -= 1
                self._release(identifier, scope)

    def _release(self, identifier: Any, scope: Any) -> None:
        cell: Cell | None = self.brama._cells.get(
            identifier if scope is None else (scope, identifier))
        if cell is not None:
            with cell.lock:
                if cell.trials > 0:
                    cell.trials -= 1

    # -- ending --------------------------------------------------------------------------
    def close(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self.server.publisher.leave(self)
        hang_up(self.conn)
        for sub in list(self.subscriptions.values()):
            try:
                self.brama.unsubscribe(sub)
            except BramaError:
                pass
        self.subscriptions.clear()
        try:
            for (identifier, scope), held in list(self.trials.items()):
                for _ in range(held):
                    self._release(identifier, scope)
        except SystemStopped:
            pass
        self.trials.clear()
        self.server._forget(self)  # last: `clients` drops once the cleanup is done

    def join(self, timeout: float) -> None:
        for thread in (self._reader, self._writer):
            if thread is not threading.current_thread() and thread.ident is not None:
                thread.join(timeout)


class RemoteTarget(Target):
    """Events for a subscription made by a client: queued for its writer thread."""

    def __init__(self, session: _Session, client_id: int, max_pending: int) -> None:
        super().__init__(max_pending)
        self.session = session
        self.client_id = client_id

    def deliver(self, item: Item) -> bool:
        if self.session.enqueue(("event", self.client_id, item)):
            self.stats.delivered += 1 if isinstance(item, Event) else len(item)
            return True
        return False

    def marker(self) -> ThreadingFuture[None]:
        return self.session.marker()


class _Publisher(Target):
    """Pushes every state change to every client's replica, with sequence numbers."""

    def __init__(self, server: Server) -> None:
        super().__init__(1_000_000)
        self.server = server
        self.lock = threading.Lock()
        self.seq = 0
        self.sessions: set[_Session] = set()

    def add_session(self, session: _Session, request_id: int) -> None:
        brama = self.server.brama
        with self.lock:
            states = {(s.identifier, s.scope): s.state.value for s in brama.connections()}
            self.sessions.add(session)
            session.enqueue(("reply", request_id, True, (self.seq, states)))

    def leave(self, session: _Session) -> None:
        with self.lock:
            self.sessions.discard(session)

    def deliver(self, item: Item) -> bool:
        events = (item,) if isinstance(item, Event) else item
        changes = []
        for event in events:
            if event.event is EventType.CONNECTION_REMOVED:
                state = None
            elif event.event is EventType.STATE_CHANGE:
                state = event.data["new_state"].value
            else:
                state = event.data["state"].value
            changes.append((event.connection, event.scope, state))
        with self.lock:
            self.seq += 1
            message = ("push", self.seq, changes)
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

    def __init__(self, brama: Brama, address: Any = None, authkey: bytes | None = None,
                 allow_remote: bool = False) -> None:
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
        self.brama = brama
        self.name = f"{brama._core.name}-node"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sessions: set[_Session] = set()
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
        self._reaper = Scheduler(self._clock, f"{brama._core.name}-node-reaper")
        self.publisher = _Publisher(self)
        self._publisher_sub = brama._subscribe_target(
            self.publisher, events=list(_REPLICA_EVENTS), owner=("node", self.name))
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
                session = _Session(self, conn, self._count)
                self._sessions.add(session)
                self._changed.notify_all()
            session.start()
        finally:
            self._handshakes.release()

    def _forget(self, session: _Session) -> None:
        with self._lock:
            self._sessions.discard(session)
            self._changed.notify_all()
        self.publisher.leave(session)

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
        self.publisher.close()
        try:
            self.brama.unsubscribe(self._publisher_sub)
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
