"""A client of a node in another process: ``connect()`` and ``spawn()``.

It offers the methods of a local system with the same results and errors. Its
``available()`` reads a local replica that the node keeps current by pushing every
state change (with sequence numbers; a gap triggers a resync), so the hot path makes no
round trip. ``failure()`` returns after the node applied it. Subscriptions deliver in
this process, to its own actors, handlers and inboxes. If the node goes away, calls that
need it raise ``NodeUnavailable``, a thread reconnects with backoff, and ``available()``
answers from the last known state for ``stale_after`` ms, then per ``when_stale``.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing.connection as mpc
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from multiprocessing import AuthenticationError
from types import TracebackType
from typing import Any, Self

import cloudpickle
from pykka import ActorRef

from brama_actors._delivery._subscription import Subscription
from brama_actors._delivery._targets import (
    AsyncHandlerTarget,
    HandlerTarget,
    Target,
    check_drain_caller,
    close_runners,
)
from brama_actors._errors import (
    AuthenticationFailed,
    BramaError,
    CircuitOpenError,
    ConnectionNotFound,
    InvalidConfiguration,
    NodeUnavailable,
    describe,
)
from brama_actors._events import Event, EventType, parse_event_types
from brama_actors._runtime import _nowait
from brama_actors._status import CircuitState, ConnectionStatus
from brama_actors._wire import Address, check_address, encode, hang_up

__all__ = ["Client", "connect"]

logger = logging.getLogger("brama_actors")

#: Seconds a request waits for the node's reply.
REQUEST_TIMEOUT = 10.0
_OPEN = CircuitState.OPEN.value
_HALF_OPEN = CircuitState.HALF_OPEN.value
_client_ids = itertools.count(1)


class _Pending:
    __slots__ = ("error", "event", "ok", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False
        self.value: Any = None
        self.error: BaseException | None = None


class RemoteTrial:
    """A guarded call admitted by the node (a "cell" for ``Guard`` on a client)."""

    __slots__ = ("client", "identifier", "released", "scope", "trial")

    def __init__(self, client: Client, identifier: str, scope: str | None,
                 trial: bool) -> None:
        self.client = client
        self.identifier = identifier
        self.scope = scope
        self.trial = trial
        self.released = not trial

    # Each method checks _nowait before it changes anything: under nowait() a round trip
    # raises WouldBlock first, and the whole method is repeated off the event loop.

    def succeeded(self) -> None:
        if self.trial:
            _nowait.check()
            self.released = True
            self.client._request("outcome", identifier=self.identifier, scope=self.scope,
                                 kind="success", trial=True)
        else:
            self.client.success(self.identifier, scope=self.scope)

    def failed(self, reason: Any) -> None:
        _nowait.check()
        trial, self.released = self.trial, True
        state = self.client._request("outcome", identifier=self.identifier, scope=self.scope,
                                     kind="failure", reason=reason, trial=trial)
        self.client._note_state(_key(self.identifier, self.scope), state)

    def release(self) -> None:
        if not self.released:
            _nowait.check()
            self.released = True
            self.client._request("outcome", identifier=self.identifier, scope=self.scope,
                                 kind="ignore", trial=True)


class Client:
    """A connection to a node; create it with ``brama_actors.connect`` or ``spawn``."""

    def __init__(self, address: Any, authkey: bytes, stale_after: int = 5_000,
                 when_stale: str = "allow", *, _process: Any = None,
                 _control: Any = None,
                 _monotonic: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(authkey, bytes) or not authkey:
            raise TypeError("authkey must be non-empty bytes")
        if type(stale_after) is bool or not isinstance(stale_after, int) or stale_after < 0:
            raise InvalidConfiguration(f"stale_after must be an int >= 0, got {stale_after!r}")
        if when_stale not in ("allow", "deny"):
            raise InvalidConfiguration(
                f"when_stale must be 'allow' or 'deny', got {when_stale!r}")
        self.address: Address = check_address(address, allow_remote=True)
        self.authkey = authkey
        self.stale_after = stale_after
        self.when_stale = when_stale
        self.name = f"brama-client-{next(_client_ids)}"
        self._process = _process
        # Staleness is measured on this clock (tests substitute one they move).
        self._monotonic = _monotonic
        self._control = _control
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._conn: mpc.Connection | None = None
        self._closed = False
        self._lost_at: float | None = None
        self._states: dict[Any, str] = {}
        self._avail: dict[Any, bool] = {}
        self._seq = 0
        self._subs: dict[int, tuple[Subscription, dict[str, Any], int]] = {}
        self._sub_ids = itertools.count(1)
        self._targets: list[Target] = []
        self._statuses: dict[Any, ConnectionStatus] = {}
        self._reader: threading.Thread | None = None
        self._reconnector: threading.Thread | None = None
        self._wake = threading.Event()
        self._synced = threading.Event()  # linked, and the replica holds a snapshot
        self._unlinked = threading.Event()  # set while the link is down
        self._cells: dict[Any, Any] = {}  # lets the decorator's local fast path fall through
        self._connect()

    # -- link ----------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            conn = mpc.Client(self.address, authkey=self.authkey)
        except AuthenticationError as exc:
            raise AuthenticationFailed(f"the node at {self.address!r} refused the authkey") \
                from exc
        except (OSError, EOFError) as exc:
            raise NodeUnavailable(f"no node at {self.address!r}: {exc}") from exc
        with self._lock:
            self._conn = conn
        self._reader = threading.Thread(target=self._read, args=(conn,),
                                        name=f"{self.name}-reader", daemon=True)
        self._reader.start()
        seq, states = self._request("hello")
        self._load_snapshot(seq, states)
        self._lost_at = None
        self._unlinked.clear()
        self._synced.set()

    def _load_snapshot(self, seq: int, states: dict[tuple[str, str | None], str]) -> None:
        with self._lock:
            self._seq = seq
            self._states = {_key(i, s): state for (i, s), state in states.items()}
            self._avail = {k: v != _OPEN for k, v in self._states.items()}

    def _read(self, conn: mpc.Connection) -> None:
        try:
            while True:
                message = conn.recv()
                kind = message[0]
                if kind == "reply":
                    _, request_id, ok, value = message
                    pending = self._pending.pop(request_id, None)
                    if pending is not None:
                        pending.ok = ok
                        pending.value = value
                        pending.event.set()
                elif kind == "push":
                    self._apply_push(message[1], message[2])
                elif kind == "event":
                    entry = self._subs.get(message[1])
                    if entry is not None:
                        entry[0].target.deliver(message[2])
        except (EOFError, OSError):
            pass
        except Exception:
            logger.exception("%s: bad message from the node; reconnecting", self.name)
        self._link_lost(conn)

    def _apply_push(self, seq: int, changes: list[tuple[str, str | None, str | None]]) -> None:
        if seq != self._seq + 1:
            logger.warning("%s: replica gap (%d after %d); resyncing", self.name, seq,
                           self._seq)
            threading.Thread(target=self._resync, name=f"{self.name}-resync",
                             daemon=True).start()
            return
        self._seq = seq
        states, avail = self._states, self._avail
        for identifier, scope, state in changes:
            key = _key(identifier, scope)
            if state is None:
                states.pop(key, None)
                avail.pop(key, None)
            else:
                states[key] = state
                avail[key] = state != _OPEN

    def _resync(self) -> None:
        try:
            seq, states = self._request("hello")
        except BramaError:
            return
        self._load_snapshot(seq, states)

    def _link_lost(self, conn: mpc.Connection) -> None:
        with self._lock:
            if self._conn is not conn:
                return
            self._conn = None
            self._synced.clear()
            self._unlinked.set()
            if self._lost_at is None:
                self._lost_at = self._monotonic()
            pending, self._pending = self._pending, {}
        try:
            conn.close()
        except OSError:
            pass
        for entry in pending.values():
            entry.error = NodeUnavailable(f"lost the node at {self.address!r}")
            entry.event.set()
        if not self._closed:
            self._reconnector = threading.Thread(target=self._reconnect,
                                                 name=f"{self.name}-reconnect", daemon=True)
            self._reconnector.start()

    def _reconnect(self) -> None:
        delay = 0.05
        while not self._closed:
            try:
                self._connect()
            except AuthenticationFailed:
                logger.error("%s: the node refused the authkey; not reconnecting", self.name)
                return
            except BramaError:
                if self._wake.wait(delay):
                    return
                delay = min(delay * 2, 2.0)
                continue
            logger.info("%s: reconnected to %r", self.name, self.address)
            for client_id, (sub, options, _) in list(self._subs.items()):
                try:
                    node_id = self._request("subscribe", client_id=client_id, **options)
                    self._subs[client_id] = (sub, options, node_id)
                except BramaError:
                    logger.warning("%s: could not renew %r", self.name, sub)
            return

    def _request(self, op: str, _timeout: float = REQUEST_TIMEOUT, _oneway: bool = False,
                 **args: Any) -> Any:
        if self._closed:
            raise NodeUnavailable("this client is closed")
        if not _oneway:
            _nowait.check()  # a round trip: an asyncio caller makes it off its loop
        request_id = next(self._ids)
        pending = None if _oneway else _Pending()
        if _oneway:
            args["oneway"] = True
        data = encode((request_id, op, args))
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

    # -- lifecycle -----------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Disconnect (the node drops this client's subscriptions); idempotent.

        A client made by ``spawn`` also stops its node process.
        """
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            hang_up(conn)
        for thread in (self._reader, self._reconnector):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
        close_runners(self._targets, timeout)
        if self._process is not None:
            try:
                self._control.send("stop")
            except (OSError, ValueError):
                pass
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout)
            self._control.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("lost" if self._conn is None else "connected")
        return f"<Client {self.address!r} {state}>"

    @property
    def connected(self) -> bool:
        """True while the link to the node is up and the replica is in sync."""
        return self._conn is not None and self._synced.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the client is connected and its replica synced; False on timeout."""
        return self._synced.wait(timeout)

    # -- connections ---------------------------------------------------------------------
    def available(self, identifier: str, *, scope: str | None = None) -> bool:
        """From the local replica: no round trip. See ``stale_after``/``when_stale``."""
        if self._lost_at is not None and (
                (self._monotonic() - self._lost_at) * 1000 > self.stale_after):
            _validate(identifier, scope)
            return self.when_stale == "allow"
        try:
            value = self._avail.get(identifier if scope is None else (scope, identifier))
        except TypeError:
            value = None
        if value is None or type(identifier) is not str:
            value = self._avail.get(_validate(identifier, scope))
            return bool(value)
        return value

    def register(self, identifier: str, **options: Any) -> ConnectionStatus:
        status: ConnectionStatus = self._request("register", identifier=identifier, **options)
        with self._lock:  # visible to available() before register returns
            key = _key(status.identifier, status.scope)
            self._states.setdefault(key, status.state.value)
            self._avail.setdefault(key, status.state is not CircuitState.OPEN)
        return status

    def unregister(self, identifier: str, *, scope: str | None = None) -> bool:
        result = bool(self._request("unregister", identifier=identifier, scope=scope))
        if result:
            key = _key(identifier, scope)
            self._states.pop(key, None)
            self._avail.pop(key, None)
        return result

    def success(self, identifier: str, *, scope: str | None = None,
                metadata: Mapping[str, Any] | None = None) -> None:
        """Report a success (one way: the node applies it asynchronously)."""
        key = _validate(identifier, scope)
        if key not in self._states and self._conn is not None:
            raise ConnectionNotFound(f"connection {describe(identifier, scope)} is not registered")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")
        self._request("success", _oneway=True, identifier=identifier, scope=scope,
                      metadata=None if metadata is None else dict(metadata))

    def failure(self, identifier: str, *, scope: str | None = None, reason: Any = None,
                metadata: Mapping[str, Any] | None = None) -> None:
        """Report a failure; returns after the node applied it."""
        state = self._request("failure", identifier=identifier, scope=scope, reason=reason,
                              metadata=None if metadata is None else _plain(metadata))
        self._note_state(_key(identifier, scope), state)

    def _note_state(self, key: Any, state: Any) -> None:
        """Read-your-writes for available() in this process after a reported failure.

        The node's reply carries the state after the failure; the replica push for it
        may arrive later than the reply.
        """
        if isinstance(state, str) and key in self._states:
            self._states[key] = state
            self._avail[key] = state != _OPEN

    def status(self, identifier: str, *, scope: str | None = None) -> ConnectionStatus:
        status: ConnectionStatus = self._request("status", identifier=identifier, scope=scope)
        self._statuses[_key(identifier, scope)] = status
        return status

    def connections(self, **kwargs: Any) -> list[ConnectionStatus]:
        result: list[ConnectionStatus] = self._request("connections", **kwargs)
        return result

    def open_circuit(self, identifier: str, *, scope: str | None = None, reason: Any = None,
                     expiry: int | None = None) -> None:
        self._request("open_circuit", identifier=identifier, scope=scope, reason=reason,
                      expiry=expiry)
        key = _key(identifier, scope)
        if key in self._states:
            self._states[key] = _OPEN
            self._avail[key] = False

    def close_circuit(self, identifier: str, *, scope: str | None = None,
                      reason: Any = None) -> None:
        self._request("close_circuit", identifier=identifier, scope=scope, reason=reason)
        self._mark_closed(identifier, scope)

    def reset_circuit(self, identifier: str, *, scope: str | None = None,
                      reason: Any = None) -> None:
        self._request("reset_circuit", identifier=identifier, scope=scope, reason=reason)
        self._mark_closed(identifier, scope)

    def _mark_closed(self, identifier: str, scope: str | None) -> None:
        key = _key(identifier, scope)
        if key in self._states:
            self._states[key] = CircuitState.CLOSED.value
            self._avail[key] = True

    def configure(self, identifier: str | None = None, *, scope: str | None = None,
                  **options: Any) -> None:
        self._request("configure", identifier=identifier, scope=scope, **options)

    # -- events --------------------------------------------------------------------------
    def subscribe(self, *, events: Iterable[EventType | str] | None = None,
                  connection: str | None = None, scope: str | None = None,
                  filter: Callable[[Event], bool] | None = None,
                  subscriber: ActorRef[Any] | None = None, handler: Any = None,
                  batch_size: int | None = None, batch_timeout: int | None = None,
                  max_pending: int = 10_000) -> Subscription:
        """Subscribe; events are delivered in this process. ``filter`` runs in the node."""
        from brama_actors._system._brama import _owner, check_subscription, make_target

        kinds = check_subscription(events, connection, scope, filter, batch_size,
                                   batch_timeout, max_pending)
        target, subscriber = make_target(subscriber, handler, max_pending,
                                         f"{self.name}-handler")
        if isinstance(target, HandlerTarget | AsyncHandlerTarget):
            self._targets = [t for t in self._targets if not t.closed]
            self._targets.append(target)
        options: dict[str, Any] = {
            "events": None if kinds is None else sorted(k.value for k in kinds),
            "connection": connection, "scope": scope,
            "filter": None if filter is None else cloudpickle.dumps(filter),
            "batch_size": batch_size, "batch_timeout": batch_timeout,
            "max_pending": max_pending,
        }
        client_id = next(self._sub_ids)
        sub = Subscription(self, target, events=kinds, connection=connection,  # type: ignore[arg-type]
                           scope=scope, filter=filter, subscriber=subscriber, owner=_owner(),
                           batch_size=batch_size, batch_timeout=batch_timeout)
        self._subs[client_id] = (sub, options, 0)
        try:
            node_id = self._request("subscribe", client_id=client_id, **options)
        except BaseException:
            self._subs.pop(client_id, None)
            target.close()
            raise
        self._subs[client_id] = (sub, options, node_id)
        return sub

    def unsubscribe(self, subscription: Subscription | None = None, *,
                    connection: str | None = None, scope: str | None = None,
                    events: Iterable[EventType | str] | None = None,
                    subscriber: ActorRef[Any] | None = None) -> Any:
        """Remove one subscription (-> bool) or the caller's matching ones (-> int)."""
        from brama_actors._system._brama import _owner

        if subscription is not None:
            doomed = [cid for cid, (sub, _, _) in self._subs.items() if sub is subscription]
        else:
            owner = _owner() if subscriber is None else None
            kinds = None if events is None else parse_event_types(events)
            doomed = []
            for cid, (sub, _, _) in self._subs.items():
                if owner is not None and sub.owner != owner:
                    continue
                if ((connection is not None and sub.connection != connection)
                        or (scope is not None and sub.scope != scope)
                        or (kinds is not None and sub.events != kinds)
                        or (subscriber is not None and sub.subscriber != subscriber)):
                    continue
                doomed.append(cid)
        node_ids = []
        for cid in doomed:
            sub, _, node_id = self._subs.pop(cid)
            sub.target.close()
            node_ids.append(node_id)
        if node_ids and self._conn is not None:
            self._request("unsubscribe", ids=node_ids)
        if subscription is not None:
            return bool(doomed)
        return len(doomed)

    def drain(self, timeout: float = 1.0) -> None:
        """Wait until events of earlier calls reached their targets in this process."""
        check_drain_caller(self._targets)
        deadline = time.monotonic() + timeout
        try:
            self._request("drain", _timeout=timeout + 1.0, timeout=timeout)
        except NodeUnavailable:
            raise
        markers = [t.marker() for t in self._targets if not t.closed]
        for marker in markers:
            if marker is None:
                continue
            remaining = deadline - time.monotonic()
            try:
                marker.get(timeout=max(0.0, remaining))
            except Exception as exc:
                raise TimeoutError(f"drain did not complete within {timeout} s") from exc

    # -- guarding ------------------------------------------------------------------------
    def guard(self, identifier: str, *, scope: str | None = None,
              error_handler: Callable[[Any], Any] | None = None, register: bool = True,
              exclude: Any = (), **register_options: Any) -> Any:
        """The ``guard`` context manager, against the node."""
        from brama_actors._guard import Guard, GuardBlock

        if error_handler is not None:
            raise TypeError("error_handler= applies to decorated functions: a guard block "
                            "has no result to judge")
        return GuardBlock(Guard(identifier, scope=scope, error_handler=error_handler,
                                brama=self, register=register, exclude=exclude,
                                **register_options))

    def _guard_enter(self, identifier: str, scope: str | None, register: bool,
                     options: dict[str, Any]) -> RemoteTrial:
        key = _key(identifier, scope)
        state = self._states.get(key)
        if state is None or state == _HALF_OPEN:
            # Unknown here, or a trial that the node must admit: ask the node.
            verdict = self._request("trial", identifier=identifier, scope=scope,
                                    register=register, options=_plain(options))
            if state is None:
                self._states.setdefault(key, CircuitState.CLOSED.value)
                self._avail.setdefault(key, True)
            return RemoteTrial(self, identifier, scope, verdict == "trial")
        if state == _OPEN and self.available(identifier, scope=scope) is False:
            try:
                status = self.status(identifier, scope=scope)
            except NodeUnavailable:
                status = self._statuses.get(key)  # type: ignore[assignment]
            if status is None or status.state is CircuitState.OPEN or self._conn is None:
                raise CircuitOpenError(
                    f"circuit for {describe(identifier, scope)} is open", status)
            return self._guard_enter(identifier, scope, register, options)
        return RemoteTrial(self, identifier, scope, False)


def _key(identifier: str, scope: str | None) -> Any:
    return identifier if scope is None else (scope, identifier)


def _validate(identifier: Any, scope: Any) -> Any:
    from brama_actors._system._brama import _check_key

    return _check_key(identifier, scope)


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in value.items()}


def connect(address: Any, authkey: bytes = b"", stale_after: int = 5_000,
            when_stale: str = "allow") -> Client:
    """Connect to a node served by ``brama.serve()``.

    Raises:
        AuthenticationFailed: the node refused the authkey.
        NodeUnavailable: nothing answers at ``address``.
        InvalidConfiguration: a bad ``stale_after`` or ``when_stale``.
    """
    return Client(address, authkey, stale_after, when_stale)


