"""What a node does for one client: one method per operation of ``_ops.OPS``.

Public operations go through the served system's public methods (the same checks as in
process); admission, settling and subscriptions that deliver to the client go through
its authority. What the client holds (subscriptions, half-open trial permits) is kept
here and given back when the session closes, so a client that dies costs nothing else.
"""

from __future__ import annotations

import collections
import inspect
import threading
from typing import TYPE_CHECKING, Any

import cloudpickle

from brama_actors._authority import ALL_SCOPES, Admission, Registration
from brama_actors._config import check_duration
from brama_actors._delivery._subscription import Subscription, check_subscription
from brama_actors._delivery._targets import Item, Target, count
from brama_actors._errors import BramaError, SystemStopped
from brama_actors._keys import Key, check_key
from brama_actors._remote._frames import EventFrame, to_wire
from brama_actors._remote._ops import OPS

if TYPE_CHECKING:
    from pykka import ThreadingFuture

    from brama_actors._remote._session import Session

__all__ = ["NodeService", "RemoteTarget"]


class RemoteTarget(Target):
    """Events for a subscription made by a client: queued for its session's writer."""

    def __init__(self, session: Session, client_id: int, max_pending: int) -> None:
        super().__init__(max_pending)
        self.session = session
        self.client_id = client_id

    def deliver(self, item: Item) -> bool:
        if self.session.enqueue(to_wire(EventFrame(self.client_id, item))):
            self.stats.delivered += count(item)
            return True
        return False

    def marker(self) -> ThreadingFuture[None]:
        return self.session.marker()


class NodeService:
    """The operations one client may run on the node (see ``_ops.OPS``)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._node = session.node
        self._lock = threading.Lock()
        self._closed = False
        self.subscriptions: dict[int, Subscription] = {}
        self._trials: dict[Key, collections.deque[Admission]] = {}

    def dispatch(self, request_id: int, op: str, args: dict[str, Any]) -> Any:
        """Run one operation (already checked against the table)."""
        if op == "hello":
            return self.hello(request_id)
        return getattr(self, op)(**args)

    # -- the operations ------------------------------------------------------------------
    def hello(self, request_id: int) -> Any:
        from brama_actors._remote._session import NO_REPLY

        self._node.publisher.add_session(self._session, request_id)
        return NO_REPLY

    def ping(self) -> None:
        return None

    def register(self, identifier: Any, scope: Any = None, **options: Any) -> Any:
        return self._node.brama.register(identifier, scope=scope, **options)

    def unregister(self, identifier: Any, scope: Any = None) -> bool:
        return self._node.brama.unregister(identifier, scope=scope)

    def success(self, identifier: Any, scope: Any = None, metadata: Any = None,
                duration: Any = None) -> None:
        self._node.brama.success(identifier, scope=scope, metadata=metadata,
                                 duration=duration)

    def failure(self, identifier: Any, scope: Any = None, reason: Any = None,
                metadata: Any = None, duration: Any = None) -> str | None:
        """Apply a failure; the state after it (the client's read-your-writes)."""
        self._node.brama.failure(identifier, scope=scope, reason=reason, metadata=metadata,
                                 duration=duration)
        return self._state(check_key(identifier, scope))

    def tally(self, identifier: Any, scope: Any = None, what: str = "rejected") -> None:
        """Count a call the client refused, or an outcome it recorded as nothing."""
        if what not in ("rejected", "ignored"):
            raise ValueError(f"what must be 'rejected' or 'ignored', got {what!r}")
        self._node.authority.count(check_key(identifier, scope), what)

    def _state(self, key: Key) -> str | None:
        view = self._node.authority.views.get(key)
        if view is None:
            return None
        return str(view.state)

    def status(self, identifier: Any, scope: Any = None) -> Any:
        return self._node.brama.status(identifier, scope=scope)

    def connections(self, scope: Any = ALL_SCOPES) -> Any:
        return self._node.brama.connections(scope=scope)

    def open_circuit(self, identifier: Any, scope: Any = None, reason: Any = None,
                     expiry: Any = None) -> None:
        self._node.brama.open_circuit(identifier, scope=scope, reason=reason, expiry=expiry)

    def close_circuit(self, identifier: Any, scope: Any = None, reason: Any = None) -> None:
        self._node.brama.close_circuit(identifier, scope=scope, reason=reason)

    def reset_circuit(self, identifier: Any, scope: Any = None, reason: Any = None) -> None:
        self._node.brama.reset_circuit(identifier, scope=scope, reason=reason)

    def configure(self, identifier: Any = None, scope: Any = None,
                  options: Any = None) -> None:
        if not isinstance(options, dict):
            raise TypeError("options must arrive as a dict")
        self._node.brama.configure(identifier, scope=scope, **options)

    def subscribe(self, client_id: int, events: Any = None, connection: Any = None,
                  scope: Any = None, filter: bytes | None = None, batch_size: Any = None,
                  batch_timeout: Any = None, max_pending: Any = 10_000) -> int:
        predicate = None
        if filter is not None:
            if not isinstance(filter, bytes):
                raise TypeError("filter must arrive as cloudpickle bytes")
            # Only authenticated clients get here (the handshake ran first).
            predicate = cloudpickle.loads(filter)
        brama = self._node.brama
        brama._check_running()
        kinds = check_subscription(events, connection, scope, predicate, batch_size,
                                   batch_timeout, max_pending)
        target = RemoteTarget(self._session, client_id, max_pending)
        sub = Subscription(brama, target, events=kinds, connection=connection, scope=scope,
                           filter=predicate, subscriber=None,
                           owner=("client", self._session.name),
                           batch_size=batch_size, batch_timeout=batch_timeout)
        self._node.authority.subscribe(sub)
        with self._lock:
            if not self._closed:
                self.subscriptions[sub.id] = sub
                return sub.id
        # close() already ran: nobody else will remove it.
        self._node.authority.unsubscribe(sub)
        raise BramaError("the client's session closed")

    def unsubscribe(self, ids: list[int]) -> int:
        removed = 0
        for sub_id in ids:
            with self._lock:
                sub = self.subscriptions.pop(sub_id, None)
            if sub is not None and self._node.authority.unsubscribe(sub):
                removed += 1
        return removed

    def drain(self, timeout: float = 1.0) -> None:
        self._node.brama.drain(timeout)

    def admit(self, identifier: Any, scope: Any = None, register: bool = True,
              kind: str = "general", options: Any = None, metadata: Any = None) -> str:
        """Admission for a guarded call: 'run' (no permit) or 'trial' (a half-open permit).

        The client checked the registration options when it built its guard.
        """
        key = check_key(identifier, scope)
        registration = Registration(kind, options or {}, metadata) if register else None
        admission = self._node.authority.admit(key, registration)
        if not admission.trial:
            return "run"
        with self._lock:
            if not self._closed:
                self._trials.setdefault(key, collections.deque()).append(admission)
                return "trial"
        self._node.authority.settle(admission, ("none", None))  # close() ran already
        raise BramaError("the client's session closed")

    def settle(self, identifier: Any, scope: Any = None, verdict: str = "success",
               reason: Any = None, trial: bool = False, duration: Any = None) -> str | None:
        """Record a guarded call's verdict (and give back its permit); for a failure, the
        state after it."""
        if verdict not in ("success", "failure", "ignore", "none"):
            raise ValueError(
                f"verdict must be success, failure, ignore or none, got {verdict!r}")
        duration = check_duration(duration)
        key = check_key(identifier, scope)
        authority = self._node.authority
        admission = None
        if trial:
            with self._lock:
                held = self._trials.get(key)
                if held:
                    admission = held.popleft()
        if admission is None:  # no permit held: a plain outcome
            view = authority.views.get(key)
            admission = Admission(key, view)
            if verdict == "success" and view is not None:
                authority.record_success(key, view, duration)
                return None
        authority.settle(admission, (verdict, reason), duration)
        return self._state(key) if verdict == "failure" else None

    # -- ending --------------------------------------------------------------------------
    def close(self) -> None:
        """Give back everything the client held: subscriptions and trial permits."""
        with self._lock:
            self._closed = True
            subscriptions = list(self.subscriptions.values())
            self.subscriptions.clear()
            trials = [a for held in self._trials.values() for a in held]
            self._trials.clear()
        authority = self._node.authority
        for sub in subscriptions:
            try:
                authority.unsubscribe(sub)
            except BramaError:
                pass  # the system is stopping
        for admission in trials:
            try:
                authority.settle(admission, ("none", None))
            except (SystemStopped, LookupError):
                pass


def _check_table() -> None:
    """Every operation of the table has its method here, taking exactly its arguments."""
    for op in OPS.values():
        method = getattr(NodeService, op.name, None)
        if method is None:
            raise TypeError(f"NodeService has no method for operation {op.name!r}")
        params = [p for p in inspect.signature(method).parameters.values()
                  if p.name != "self" and p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in params} - {"request_id"}
        extra = names - set(op.params)
        if extra:
            raise TypeError(f"NodeService.{op.name} takes {sorted(extra)} that OPS does not list")


_check_table()
