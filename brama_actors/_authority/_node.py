"""The node authority: circuits decided by a node in another process.

Reads come from a local replica that the node keeps current by pushing every state
change (numbered; a gap triggers a resync), so ``available()`` makes no round trip.
Writes are operations on the node (``_remote._ops``); ``failure()`` returns after the
node applied it and its reply carries the state after it (read-your-writes here, even if
the push comes later). Subscriptions deliver in this process: the node filters at the
source and sends matching events, which go to local targets.

When the link is down, the replica answers for ``stale_after`` ms, then every
``available()`` says what ``when_stale`` says.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import cloudpickle

from brama_actors import _rules as rules
from brama_actors._authority import ALL_SCOPES, Admission, Registration
from brama_actors._errors import CircuitOpenError, NodeUnavailable
from brama_actors._keys import Key, describe_key, make_key, not_found, split_key
from brama_actors._remote._frames import EventFrame, Push
from brama_actors._remote._link import Link
from brama_actors._remote._wire import Address
from brama_actors._runtime import _nowait
from brama_actors._runtime._clock import SystemClock
from brama_actors._status import CircuitState, ConnectionStatus

if TYPE_CHECKING:
    from brama_actors._delivery._subscription import Subscription

__all__ = ["NodeAuthority", "ReplicaView"]

logger = logging.getLogger("brama_actors")

_OPEN = CircuitState.OPEN.value
_HALF_OPEN = CircuitState.HALF_OPEN.value
_CLOSED = CircuitState.CLOSED.value


class ReplicaView:
    """A replica entry: one shared, immutable view per state (no allocation per push)."""

    __slots__ = ("available", "quiet", "slow", "state")

    def __init__(self, state: str, available: bool) -> None:
        self.state = state
        self.available = available
        self.quiet = False  # every success goes to the node
        self.slow: int | None = 0  # guards time every call: the node's rules decide what is slow

    def __repr__(self) -> str:
        return f"<ReplicaView {self.state}>"


_VIEWS = {state: ReplicaView(state, state != _OPEN) for state in (_CLOSED, _OPEN, _HALF_OPEN)}
_ALLOW = ReplicaView("stale", True)
_DENY = ReplicaView("stale", False)


class _StaleViews(Mapping[Key, ReplicaView]):
    """The replica while the link is down: as it was, then ``when_stale`` for every key."""

    def __init__(self, replica: dict[Key, ReplicaView], since: float, stale_after: int,
                 allow: bool, monotonic: Callable[[], float]) -> None:
        self._replica = replica
        self._until = since + stale_after / 1000
        self._verdict = _ALLOW if allow else _DENY
        self._monotonic = monotonic

    def get(self, key: Any, default: Any = None) -> Any:
        if self._monotonic() > self._until:
            return self._verdict
        return self._replica.get(key, default)

    def __getitem__(self, key: Key) -> ReplicaView:
        view = self.get(key)
        if view is None:
            raise KeyError(key)
        return view  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._replica)

    def __len__(self) -> int:
        return len(self._replica)


def _plain(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A mapping as plain dicts (the node decodes requests without globals)."""
    if value is None:
        return None
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in value.items()}


class NodeAuthority:
    """The circuits of a node, reached over a link.

    Args:
        address: the node's address.
        authkey: the shared secret.
        name: the client's name.
        stale_after: ms the replica answers after the link was lost.
        when_stale: ``"allow"`` or ``"deny"`` afterwards.
        monotonic: the clock staleness is measured on (tests move their own).
    """

    def __init__(self, address: Address, authkey: bytes, name: str, stale_after: int,
                 when_stale: str, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._stale_after = stale_after
        self._allow = when_stale == "allow"
        self._monotonic = monotonic
        # A node runs on a SystemClock (epoch ms); ours reads the same wall time, for
        # CircuitOpenError.retry_after.
        self._clock = SystemClock()
        self._replica: dict[Key, ReplicaView] = {}
        #: The Authority protocol's views: the replica, or its stale stand-in.
        self.views: Mapping[Key, ReplicaView] = self._replica
        self._seq = 0
        self._lock = threading.Lock()
        self._synced = threading.Event()  # linked, and the replica holds a snapshot
        #: Set while the link is down (tests and ``watch`` wait on it).
        self.unlinked = threading.Event()
        self._statuses: dict[Key, ConnectionStatus] = {}  # last known, for refusals
        self._subs: dict[int, tuple[Subscription, dict[str, Any], int]] = {}
        self._sub_ids = itertools.count(1)
        self.link = Link(address, authkey, name, self._push, self._event, self._up,
                         self._down)

    # -- the link ------------------------------------------------------------------------
    def _up(self, again: bool) -> None:
        seq, states = self.link.call("hello")
        self._load(seq, states)
        self.views = self._replica
        self.unlinked.clear()
        self._synced.set()
        if again:
            for client_id, (sub, options, _) in list(self._subs.items()):
                try:
                    node_id = self.link.call("subscribe", client_id=client_id, **options)
                    self._subs[client_id] = (sub, options, node_id)
                except Exception:
                    logger.warning("%s: could not renew %r", self.link.name, sub)

    def _load(self, seq: int, states: dict[tuple[str, str | None], str]) -> None:
        replica = {make_key(i, s): _VIEWS[state] for (i, s), state in states.items()}
        with self._lock:
            self._seq = seq
            self._replica.clear()
            self._replica.update(replica)

    def _down(self) -> None:
        self._synced.clear()
        self.views = _StaleViews(self._replica, self._monotonic(), self._stale_after,
                                 self._allow, self._monotonic)
        self.unlinked.set()

    def _push(self, push: Push) -> None:
        if push.seq != self._seq + 1:
            logger.warning("%s: replica gap (%d after %d); resyncing", self.link.name,
                           push.seq, self._seq)
            threading.Thread(target=self._resync, name=f"{self.link.name}-resync",
                             daemon=True).start()
            return
        self._seq = push.seq
        replica = self._replica
        for identifier, scope, state in push.changes:
            key = make_key(identifier, scope)
            if state is None:
                replica.pop(key, None)
            else:
                replica[key] = _VIEWS[state]

    def _resync(self) -> None:
        try:
            seq, states = self.link.call("hello")
        except Exception:
            return
        self._load(seq, states)

    def _event(self, frame: EventFrame) -> None:
        entry = self._subs.get(frame.client_id)
        if entry is not None:
            entry[0].target.deliver(frame.item)

    @property
    def connected(self) -> bool:
        """True while the link is up and the replica is in sync."""
        return self.link.up and self._synced.is_set()

    def wait_connected(self, timeout: float | None) -> bool:
        """Wait until connected and synced; False on timeout (or once closed)."""
        return self._synced.wait(timeout) and not self.link.closed

    def close(self, timeout: float) -> None:
        """Disconnect for good: from now on the replica is stale."""
        self.link.close(timeout)
        self._down()
        for sub, _, _ in self._subs.values():
            sub.target.close()

    def _note(self, key: Key, state: Any) -> None:
        """Read-your-writes: the state the node replied with, before its push arrives."""
        if isinstance(state, str) and key in self._replica:
            self._replica[key] = _VIEWS[state]

    # -- connections ---------------------------------------------------------------------
    def register(self, key: Key, kind: str, options: Mapping[str, Any],
                 metadata: Mapping[str, Any] | None) -> ConnectionStatus:
        identifier, scope = split_key(key)
        status: ConnectionStatus = self.link.call(
            "register", identifier=identifier, scope=scope, type=kind,
            metadata=_plain(metadata), **options)
        with self._lock:  # visible to available() before register returns
            self._replica.setdefault(key, _VIEWS[status.state.value])
        return status

    def unregister(self, key: Key) -> bool:
        identifier, scope = split_key(key)
        removed = bool(self.link.call("unregister", identifier=identifier, scope=scope))
        if removed:
            self._replica.pop(key, None)
        return removed

    def available(self, key: Key) -> bool:
        view = self.views.get(key)
        return view is not None and view.available

    def report(self, key: Key, outcome: rules.Success | rules.Failure) -> None:
        identifier, scope = split_key(key)
        if type(outcome) is rules.Success:
            if key not in self._replica and self.link.up:
                raise not_found(key)
            self.link.call("success", identifier=identifier, scope=scope,
                           metadata=_plain(outcome.metadata), duration=outcome.duration)
            return
        assert type(outcome) is rules.Failure
        state = self.link.call("failure", identifier=identifier, scope=scope,
                               reason=outcome.reason, metadata=_plain(outcome.metadata),
                               duration=outcome.duration)
        self._note(key, state)

    def record_success(self, key: Key, view: Any, duration: float | None = None) -> None:
        identifier, scope = split_key(key)
        self.link.call("success", identifier=identifier, scope=scope, duration=duration)

    def _open_error(self, key: Key, status: ConnectionStatus | None) -> CircuitOpenError:
        return CircuitOpenError(f"circuit for {describe_key(key)} is open", status,
                                rules.retry_after(status, self._clock.now()))

    def refusal(self, key: Key) -> CircuitOpenError | None:
        status = self.status(key)  # ConnectionNotFound when unknown
        return self._open_error(key, status) if status.state is CircuitState.OPEN else None

    def count(self, key: Key, what: str) -> None:
        """Count a refusal or an ignored outcome at the node (best effort: one-way, and
        not at all while the node is unreachable)."""
        identifier, scope = split_key(key)
        try:
            self.link.call("tally", identifier=identifier, scope=scope, what=what)
        except NodeUnavailable:
            pass

    def control(self, key: Key, op: rules.Open | rules.Close | rules.Reset) -> None:
        identifier, scope = split_key(key)
        if type(op) is rules.Open:
            self.link.call("open_circuit", identifier=identifier, scope=scope,
                           reason=op.reason, expiry=op.expiry)
            self._note(key, _OPEN)
        else:
            name = "close_circuit" if type(op) is rules.Close else "reset_circuit"
            self.link.call(name, identifier=identifier, scope=scope, reason=op.reason)
            self._note(key, _CLOSED)

    def configure(self, key: Key | None, options: Mapping[str, Any]) -> None:
        if key is None:
            self.link.call("configure", options=dict(options))
            return
        identifier, scope = split_key(key)
        self.link.call("configure", identifier=identifier, scope=scope, options=dict(options))

    def status(self, key: Key) -> ConnectionStatus:
        identifier, scope = split_key(key)
        status: ConnectionStatus = self.link.call("status", identifier=identifier, scope=scope)
        self._statuses[key] = status
        return status

    def statuses(self, scope: Any = ALL_SCOPES) -> list[ConnectionStatus]:
        if scope is ALL_SCOPES:
            result: list[ConnectionStatus] = self.link.call("connections")
        else:
            result = self.link.call("connections", scope=scope)
        return result

    # -- guarded calls -------------------------------------------------------------------
    def admit(self, key: Key, register: Registration | None) -> Admission:
        view = self._replica.get(key)
        if view is None or view.state == _HALF_OPEN:
            # Unknown here, or a trial that the node must admit: ask the node.
            identifier, scope = split_key(key)
            args: dict[str, Any] = {"register": register is not None}
            if register is not None:
                args.update(kind=register.kind, options=dict(register.options or {}),
                            metadata=_plain(register.metadata))
            verdict = self.link.call("admit", identifier=identifier, scope=scope, **args)
            if view is None:
                self._replica.setdefault(key, _VIEWS[_CLOSED])
            return Admission(key, view, trial=verdict == "trial")
        if view.state == _OPEN and self.views.get(key) is not _ALLOW:
            try:
                status = self.status(key)
            except NodeUnavailable:
                status = self._statuses.get(key)  # type: ignore[assignment]
            if status is None or status.state is CircuitState.OPEN or not self.link.up:
                self.count(key, "rejected")
                raise self._open_error(key, status)
            self._note(key, status.state.value)
            return self.admit(key, register)
        return Admission(key, view)

    def settle(self, admission: Admission, verdict: tuple[str, Any],
               duration: float | None = None) -> None:
        kind, reason = verdict
        key = admission.key
        identifier, scope = split_key(key)
        if admission.trial:
            _nowait.check()  # before anything changes: an asyncio caller repeats it all
            admission.trial = False  # given back once, whatever happens next
            state = self.link.call("settle", identifier=identifier, scope=scope,
                                   verdict=kind, reason=reason, trial=True,
                                   duration=duration)
            if kind == "failure":
                self._note(key, state)
            return
        if kind == "success":
            self.record_success(key, admission.view, duration)
        elif kind == "failure":
            state = self.link.call("failure", identifier=identifier, scope=scope,
                                   reason=reason, duration=duration)
            self._note(key, state)
        elif kind == "ignore":
            self.count(key, "ignored")

    # -- events --------------------------------------------------------------------------
    def subscribe(self, subscription: Subscription) -> None:
        kinds = subscription.events
        predicate = subscription.filter
        options: dict[str, Any] = {
            "events": None if kinds is None else sorted(k.value for k in kinds),
            "connection": subscription.connection, "scope": subscription.scope,
            "filter": None if predicate is None else cloudpickle.dumps(predicate),
            "batch_size": subscription.batch_size,
            "batch_timeout": subscription.batch_timeout,
            "max_pending": subscription.target.max_pending,
        }
        client_id = next(self._sub_ids)
        self._subs[client_id] = (subscription, options, 0)
        try:
            node_id = self.link.call("subscribe", client_id=client_id, **options)
        except BaseException:
            self._subs.pop(client_id, None)
            raise
        self._subs[client_id] = (subscription, options, node_id)

    def unsubscribe(self, subscription: Subscription) -> bool:
        doomed = [cid for cid, (sub, _, _) in self._subs.items() if sub is subscription]
        return bool(self._remove(doomed))

    def unsubscribe_where(self, owner: tuple[str, Any] | None,
                          filters: dict[str, Any]) -> int:
        doomed = [cid for cid, (sub, _, _) in self._subs.items()
                  if (owner is None or sub.owner == owner)
                  and all(getattr(sub, name) == value for name, value in filters.items())]
        return self._remove(doomed)

    def _remove(self, client_ids: list[int]) -> int:
        node_ids = []
        for cid in client_ids:
            sub, _, node_id = self._subs.pop(cid)
            sub.target.close()
            node_ids.append(node_id)
        if node_ids and self.link.up:
            self.link.call("unsubscribe", ids=node_ids)
        return len(node_ids)

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.link.call("drain", _timeout=timeout + 1.0, timeout=timeout)
        for sub, _, _ in list(self._subs.values()):
            if sub.target.closed:
                continue
            marker = sub.target.marker()
            if marker is None:
                continue
            try:
                marker.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:
                raise TimeoutError(f"drain did not complete within {timeout} s") from exc
