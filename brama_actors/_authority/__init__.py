"""Where a circuit is decided: one protocol, one implementation per kind of authority.

Everything above this layer (the ``Brama`` and ``Client`` facades, guards, the node's
operations, ``watch``, the exporters) reaches circuits only through :class:`Authority`
and never asks which kind it has:

* ``_local.LocalAuthority``: connection actors in this process (``Brama.start()``).
* ``_node.NodeAuthority``: a node in another process, reached over its socket
  (``connect()``, ``spawn()``).
* ``_fleet.FleetAuthority``: Redis, shared by a fleet of systems
  (``Brama.start(fleet=...)``; loaded only then, it imports ``redis``).

A new kind of authority is one new module implementing this protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from brama_actors._errors import SystemStopped
from brama_actors._keys import Key
from brama_actors._status import ConnectionStatus

if TYPE_CHECKING:
    from pykka import ActorRef

    from brama_actors._delivery._subscription import Subscription
    from brama_actors._errors import CircuitOpenError
    from brama_actors._rules import Close, Failure, Open, Reset, Success
    from brama_actors._runtime._context import Context

__all__ = ["ALL_SCOPES", "Admission", "Authority", "InProcess", "Registration", "View"]

#: ``statuses(scope=ALL_SCOPES)``: every connection, whatever its scope.
ALL_SCOPES: Any = object()


class View(Protocol):
    """What an authority publishes about one connection, read without waiting.

    Attributes:
        available: closed or half_open (False while open).
        quiet: a success here would change nothing but counters (closed, no failures,
            nothing else to record): the guard takes its fast path and leaves the
            counting to ``Authority.record_success``.
        slow: ms from which a success is slow and must be timed (None: the guard
            times a call only for duration observers).
    """

    available: bool
    quiet: bool
    slow: int | None

    @property
    def state(self) -> str:
        """The circuit's state (a ``CircuitState`` value)."""


@dataclass(frozen=True, slots=True)
class Registration:
    """What a guard registers on first use: type, settings and metadata."""

    kind: str = "general"
    options: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(slots=True)
class Admission:
    """A guarded call let through by an authority.

    Attributes:
        key: the connection.
        view: its view when admitted.
        trial: True if the call holds a half-open trial permit, which ``settle``
            gives back.
        token: the authority's own handle on the permit (None when ``trial`` is False).
        started: ``time.perf_counter()`` when the call started, if it is timed (a
            slow-call rule or a duration observer wants it), else None.
    """

    key: Key
    view: Any
    trial: bool = False
    token: Any = None
    started: float | None = None


class Authority(Protocol):
    """The operations through which everything above reaches the circuits.

    Reads never wait. Every write takes effect before it returns (``failure()`` and
    manual control included), except a success, which may be applied asynchronously:
    ``status()`` from the same thread still reflects it and ``drain()`` covers it.
    Under ``_runtime._nowait.nowait()`` an operation that would wait raises
    ``WouldBlock`` before changing anything.
    """

    @property
    def views(self) -> Mapping[Key, View]:
        """Key -> view, for the hot path (``available()`` and the guard's fast path)."""

    # -- connections ---------------------------------------------------------------------
    def register(self, key: Key, kind: str, options: Mapping[str, Any],
                 metadata: Mapping[str, Any] | None) -> ConnectionStatus:
        """Register a connection with explicit per-connection options (checked)."""

    def unregister(self, key: Key) -> bool:
        """Remove a connection; False if it did not exist."""

    def available(self, key: Key) -> bool:
        """The slow path of ``available()`` (the key is checked): never waits."""

    def report(self, key: Key, outcome: Success | Failure) -> None:
        """Report an outcome: a failure returns once applied, a success may be async."""

    def control(self, key: Key, op: Open | Close | Reset) -> None:
        """Manual control: open, close or reset a circuit."""

    def configure(self, key: Key | None, options: Mapping[str, Any]) -> None:
        """New options for one connection, or (``key`` None) the system's defaults."""

    def status(self, key: Key) -> ConnectionStatus:
        """The connection's status, reflecting every report this thread made."""

    def statuses(self, scope: Any = ALL_SCOPES) -> list[ConnectionStatus]:
        """Every connection's status, or those of one scope (None: unscoped)."""

    # -- guarded calls -------------------------------------------------------------------
    def admit(self, key: Key, register: Registration | None) -> Admission:
        """Let a guarded call through, registering the connection first if asked.

        Raises:
            CircuitOpenError: open, or half_open with every trial permit taken.
            ConnectionNotFound: unknown and ``register`` is None.
        """

    def refusal(self, key: Key) -> CircuitOpenError | None:
        """The ``CircuitOpenError`` a guarded call would get now for an open circuit
        (with its ``retry_after``), or None; takes no permit and counts nothing.

        Raises:
            ConnectionNotFound: unknown.
        """

    def record_success(self, key: Key, view: Any, duration: float | None = None) -> None:
        """A guarded call's success, admitted without a trial permit (the fast path);
        ``duration`` in ms, when the call was timed."""

    def settle(self, admission: Admission, verdict: tuple[str, Any],
               duration: float | None = None) -> None:
        """Record a guarded call's verdict, give its permit back: "success", "failure",
        "ignore" (counted in ``total_ignored``) or "none" (not an outcome: counted
        nowhere)."""

    def count(self, key: Key, what: str) -> None:
        """Count a guarded call refused elsewhere (``"rejected"``: a client's replica
        refused it) or an outcome recorded as nothing (``"ignored"``)."""

    # -- events --------------------------------------------------------------------------
    def subscribe(self, subscription: Subscription) -> None:
        """Start delivering matching events to the subscription's target."""

    def unsubscribe(self, subscription: Subscription) -> bool:
        """Stop one subscription; False if it was gone."""

    def unsubscribe_where(self, owner: tuple[str, Any] | None,
                          filters: dict[str, Any]) -> int:
        """Stop ``owner``'s (None: anybody's) subscriptions whose filters match."""

    def drain(self, timeout: float) -> None:
        """Return once every event of earlier calls was handed to its target."""


class InProcess:
    """What the authorities running in this process share (the local and the fleet
    one; a node's client reaches its node instead): subscriptions handed to this
    system's own delivery layer, and syncing with this system's supervisor."""

    delivery: Any  # brama_actors._delivery.Delivery
    context: Context
    _supervisor: ActorRef[Any]  # the system's Supervisor

    def sync_supervisor(self) -> None:
        """Wait until the supervisor processed earlier messages (crash reports).

        Raises:
            SystemStopped: the system stopped.
            TimeoutError: no answer within ``ASK_TIMEOUT``.
        """
        from brama_actors._delivery._hub import ASK_TIMEOUT
        from brama_actors._runtime._supervisor import sync_with

        sync_with(self._supervisor, self.context, ASK_TIMEOUT)

    def _check_running(self) -> None:
        if self.context.stopping:
            raise SystemStopped("this Brama system is stopped")

    def subscribe(self, subscription: Subscription) -> None:
        self.delivery.subscribe(subscription)

    def unsubscribe(self, subscription: Subscription) -> bool:
        unsubscribed: bool = self.delivery.unsubscribe(subscription)
        return unsubscribed

    def unsubscribe_where(self, owner: tuple[str, Any] | None,
                          filters: dict[str, Any]) -> int:
        removed: int = self.delivery.unsubscribe_where(owner, filters)
        return removed
