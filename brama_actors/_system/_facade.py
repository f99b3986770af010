"""The public methods a ``Brama`` system and a ``Client`` share, written once.

Each method checks its arguments in the caller's thread (so bad input fails the call and
never an actor, and changes nothing), then asks the system's authority
(``brama_actors._authority``), which decides the circuits wherever they live. The
subclasses add only what differs: how a system starts and stops, how a client connects
and closes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pykka import ActorRef

from brama_actors import _rules as rules
from brama_actors._authority import ALL_SCOPES, Authority
from brama_actors._config import (
    CONNECTION_OPTIONS,
    GLOBAL_OPTIONS,
    check_duration,
    validate_options,
)
from brama_actors._delivery._runners import check_drain_caller
from brama_actors._delivery._subscription import (
    Subscription,
    check_subscription,
    make_target,
    owner,
)
from brama_actors._errors import InvalidConfiguration
from brama_actors._events import Event, EventType, parse_event_types
from brama_actors._guard import Guard, Guardable, GuardBlock
from brama_actors._keys import Key, check_key, check_scope
from brama_actors._status import ConnectionStatus, freeze_mapping

if TYPE_CHECKING:
    from brama_actors._delivery._targets import Target

__all__ = ["Facade", "SystemAPI", "check_metadata"]

_SUCCESS = rules.Success()


def check_metadata(metadata: Any) -> Mapping[str, Any] | None:
    """A read-only copy of ``metadata``, made in the caller's thread.

    Copying here means a hostile mapping (one whose iteration raises) fails the caller's
    call, never an actor.

    Raises:
        TypeError: not a mapping (or None).
    """
    if metadata is None:
        return None
    if isinstance(metadata, Mapping):
        return freeze_mapping(metadata)
    raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")


class Facade(Guardable):
    """What ``Brama`` and ``Client`` offer alike (API sections 2, 6 and 9, and drain).

    Subclasses set ``_authority`` and implement ``_check_running`` (and may add to it).
    """

    #: The name handler threads of this facade's subscriptions start with.
    _handler_name: str
    _authority: Authority
    _REGISTER_OPTIONS: ClassVar[tuple[str, ...]] = tuple(sorted(CONNECTION_OPTIONS))

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runners: list[Target] = []
        self._guards: dict[Key, Guard] = {}

    def _check_running(self) -> None:
        """Raise if this facade takes no more calls (stopped system, closed client)."""
        raise NotImplementedError

    # -- connections ---------------------------------------------------------------------
    def register(self, identifier: str, *, scope: str | None = None, type: str = "general",
                 max_attempts: int | None = None, expiry: int | None = None,
                 expiry_strategy: str | None = None, initial_expiry: int | None = None,
                 max_expiry: int | None = None, backoff_factor: float | None = None,
                 half_open_max_calls: int | None = None,
                 success_threshold: int | None = None, half_open_timeout: int | None = None,
                 failure_rate_threshold: float | None = None,
                 slow_call_rate_threshold: float | None = None,
                 slow_call_duration: int | None = None, window_type: str | None = None,
                 window_size: int | None = None, minimum_calls: int | None = None,
                 metadata: Mapping[str, Any] | None = None) -> ConnectionStatus:
        """Register a connection.

        Raises:
            InvalidIdentifier: bad identifier or scope.
            InvalidConfiguration: a bad option value.
            AlreadyRegistered: the connection exists.
        """
        key = check_key(identifier, scope)
        self._check_running()
        if not isinstance(type, str) or not type:
            raise InvalidConfiguration(f"type must be a non-empty str, got {type!r}")
        frozen = check_metadata(metadata)
        given = validate_options(
            {"max_attempts": max_attempts, "expiry": expiry, "expiry_strategy": expiry_strategy,
             "initial_expiry": initial_expiry, "max_expiry": max_expiry,
             "backoff_factor": backoff_factor, "half_open_max_calls": half_open_max_calls,
             "success_threshold": success_threshold, "half_open_timeout": half_open_timeout,
             "failure_rate_threshold": failure_rate_threshold,
             "slow_call_rate_threshold": slow_call_rate_threshold,
             "slow_call_duration": slow_call_duration, "window_type": window_type,
             "window_size": window_size, "minimum_calls": minimum_calls},
            CONNECTION_OPTIONS, skip_none=True,
        )
        return self._authority.register(key, type, given, frozen)

    def unregister(self, identifier: str, *, scope: str | None = None) -> bool:
        """Remove a connection; True if it existed."""
        key = check_key(identifier, scope)
        self._check_running()
        return self._authority.unregister(key)

    def available(self, identifier: str, *, scope: str | None = None) -> bool:
        """True if the circuit is closed or half-open; False if open or not registered.

        Reads the authority's published view: no actor or network round trip, no lock.
        """
        try:
            view = self._authority.views.get(
                identifier if scope is None else (scope, identifier))
        except TypeError:
            view = None  # unhashable: reported by the check below
        if view is not None and type(identifier) is str:  # not a key-shaped tuple
            return view.available
        return self._authority.available(check_key(identifier, scope))

    def _key(self, identifier: Any, scope: Any) -> Key:
        """The checked key, cheaply when the connection is known under its plain key."""
        if type(identifier) is str and identifier:
            if scope is None:
                return identifier
            if type(scope) is str and scope:
                return (scope, identifier)
        return check_key(identifier, scope)

    def success(self, identifier: str, *, scope: str | None = None,
                metadata: Mapping[str, Any] | None = None,
                duration: float | None = None) -> None:
        """Report a success; may be applied asynchronously (``status()`` and ``drain()``
        from this thread see it).

        Args:
            identifier: the connection.
            scope: its scope.
            metadata: added to the ``success`` event.
            duration: how long the call took, ms (slow-call rules read it).

        Raises:
            TypeError: ``duration`` not a number; ValueError: negative, NaN or infinite.
        """
        if duration is not None:
            duration = check_duration(duration)
        key = self._key(identifier, scope)
        if metadata is None and duration is None:
            outcome = _SUCCESS
        else:
            outcome = rules.Success(check_metadata(metadata), duration=duration)
        self._authority.report(key, outcome)

    def failure(self, identifier: str, *, scope: str | None = None, reason: Any = None,
                metadata: Mapping[str, Any] | None = None,
                duration: float | None = None) -> None:
        """Report a failure; returns once applied (read-your-writes from any thread).

        Raises:
            TypeError: ``duration`` not a number; ValueError: negative, NaN or infinite.
        """
        if duration is not None:
            duration = check_duration(duration)
        key = self._key(identifier, scope)
        self._authority.report(key, rules.Failure(reason, check_metadata(metadata),
                                                  duration=duration))

    def status(self, identifier: str, *, scope: str | None = None) -> ConnectionStatus:
        """The connection's status, reflecting every report this thread made."""
        return self._authority.status(self._key(identifier, scope))

    _ALL: Any = ALL_SCOPES

    def connections(self, *, scope: Any = ALL_SCOPES) -> list[ConnectionStatus]:
        """Every connection's status, or those of one scope (``None``: unscoped)."""
        self._check_running()
        if scope is not ALL_SCOPES:
            scope = check_scope(scope)
        return self._authority.statuses(scope)

    def open_circuit(self, identifier: str, *, scope: str | None = None, reason: Any = None,
                     expiry: int | None = None) -> None:
        """Open the circuit now (for ``expiry`` ms if given, else by strategy)."""
        key = self._key(identifier, scope)
        if expiry is not None:
            validate_options({"expiry": expiry}, CONNECTION_OPTIONS)
        self._authority.control(key, rules.Open(reason, expiry))

    def close_circuit(self, identifier: str, *, scope: str | None = None,
                      reason: Any = None) -> None:
        """Close the circuit, keeping its failure count."""
        self._authority.control(self._key(identifier, scope), rules.Close(reason))

    def reset_circuit(self, identifier: str, *, scope: str | None = None,
                      reason: Any = None) -> None:
        """Close the circuit and zero its failure count; always emits ``circuit_reset``."""
        self._authority.control(self._key(identifier, scope), rules.Reset(reason))

    def configure(self, identifier: str | None = None, *, scope: str | None = None,
                  **options: Any) -> None:
        """Change the system's defaults, or one connection's settings.

        Raises:
            InvalidConfiguration: unknown option or bad value; nothing is changed.
            ConnectionNotFound: ``identifier`` is not registered.
        """
        if identifier is None:
            if scope is not None:
                raise InvalidConfiguration(
                    f"scope={scope!r} needs an identifier; system options take no scope")
            self._check_running()
            self._authority.configure(None, validate_options(options, GLOBAL_OPTIONS))
            return
        key = check_key(identifier, scope)
        self._authority.configure(key, validate_options(options, CONNECTION_OPTIONS))

    # -- events --------------------------------------------------------------------------
    def subscribe(self, *, events: Iterable[EventType | str] | None = None,
                  connection: str | None = None, scope: str | None = None,
                  filter: Callable[[Event], bool] | None = None,
                  subscriber: ActorRef[Any] | None = None, handler: Any = None,
                  batch_size: int | None = None, batch_timeout: int | None = None,
                  max_pending: int = 10_000) -> Subscription:
        """Subscribe to events (API section 6).

        Raises:
            ValueError: unknown event names, both ``subscriber`` and ``handler``, or a bad
                ``max_pending``, ``batch_size`` or ``batch_timeout``.
            TypeError: a filter or handler that is not callable, a subscriber that is not
                an ``ActorRef``, a coroutine handler outside a running event loop.
        """
        self._check_running()
        kinds = check_subscription(events, connection, scope, filter, batch_size,
                                   batch_timeout, max_pending)
        target, subscriber = make_target(subscriber, handler, max_pending,
                                         f"{self._handler_name}-handler")
        if handler is not None:
            with self._lock:
                self._runners = [t for t in self._runners if not t.closed]
                self._runners.append(target)
        sub = Subscription(self, target, events=kinds, connection=connection, scope=scope,
                           filter=filter, subscriber=subscriber, owner=owner(),
                           batch_size=batch_size, batch_timeout=batch_timeout)
        try:
            self._authority.subscribe(sub)
        except BaseException:
            target.close()
            raise
        return sub

    def unsubscribe(self, subscription: Subscription | None = None, *,
                    connection: str | None = None, scope: str | None = None,
                    events: Iterable[EventType | str] | None = None,
                    subscriber: ActorRef[Any] | None = None) -> Any:
        """Remove one subscription (-> bool) or the caller's matching ones (-> int).

        ``subscriber=ref`` removes that actor's subscriptions whoever made them (a
        supervisor detaching a monitor); the other filters only the caller's.
        """
        self._check_running()
        if subscription is not None:
            if not isinstance(subscription, Subscription):
                raise TypeError(f"expected a Subscription, got {subscription!r}")
            if subscription._brama is not self:
                return False
            return self._authority.unsubscribe(subscription)
        filters: dict[str, Any] = {}
        if connection is not None:
            filters["connection"] = connection
        if scope is not None:
            filters["scope"] = scope
        if events is not None:
            filters["events"] = parse_event_types(events)
        who: tuple[str, Any] | None = owner()
        if subscriber is not None:
            filters["subscriber"] = subscriber
            who = None
        return self._authority.unsubscribe_where(who, filters)

    def drain(self, timeout: float = 1.0) -> None:
        """Wait until every event caused by calls that returned before now was handed over.

        Raises:
            TimeoutError: not done within ``timeout`` seconds.
            RuntimeError: called on the event loop that runs a coroutine handler.
        """
        self._check_running()
        check_drain_caller(self._runners)
        self._authority.drain(timeout)

    # -- guarding calls ------------------------------------------------------------------
    def guard(self, identifier: str, *, scope: str | None = None,
              error_handler: Callable[[Any], Any] | None = None, register: bool = True,
              exclude: Any = (), record: Any = None, timeout: int | None = None,
              **register_options: Any) -> GuardBlock:
        """A context manager (``with`` and ``async with``) that guards a block.

        Raises on entry ``CircuitOpenError`` when the circuit refuses the call; records
        the block's outcome on exit, with the rules of the ``circuit_breaker`` decorator
        (``exclude``, ``record``; ``timeout`` for ``async with`` only, else
        ``TypeError`` on entry; ``fallback`` is a ``TypeError``: a block has no call to
        answer in its place).
        """
        if (error_handler is None and register and exclude == () and record is None
                and timeout is None and not register_options):
            # The common form: reuse one validated Guard per connection.
            try:
                template = self._guards.get(
                    identifier if scope is None else (scope, identifier))
            except TypeError:
                template = None
            if template is None:
                template = Guard(identifier, scope=scope, brama=self)
                self._guards[template.key] = template
            return GuardBlock(template)
        return GuardBlock(Guard(identifier, scope=scope, error_handler=error_handler,
                                brama=self, register=register, exclude=exclude,
                                record=record, timeout=timeout, **register_options))


class SystemAPI(Protocol):
    """What every system offers (``Brama``, ``Client``): a method missing on one of them
    is a mypy error (``_remote._client`` assigns both to it)."""

    def register(self, identifier: str, *, scope: str | None = ..., type: str = ...,
                 max_attempts: int | None = ..., expiry: int | None = ...,
                 expiry_strategy: str | None = ..., initial_expiry: int | None = ...,
                 max_expiry: int | None = ..., backoff_factor: float | None = ...,
                 half_open_max_calls: int | None = ...,
                 success_threshold: int | None = ..., half_open_timeout: int | None = ...,
                 failure_rate_threshold: float | None = ...,
                 slow_call_rate_threshold: float | None = ...,
                 slow_call_duration: int | None = ..., window_type: str | None = ...,
                 window_size: int | None = ..., minimum_calls: int | None = ...,
                 metadata: Mapping[str, Any] | None = ...) -> ConnectionStatus: ...
    def unregister(self, identifier: str, *, scope: str | None = ...) -> bool: ...
    def available(self, identifier: str, *, scope: str | None = ...) -> bool: ...
    def success(self, identifier: str, *, scope: str | None = ...,
                metadata: Mapping[str, Any] | None = ...,
                duration: float | None = ...) -> None: ...
    def failure(self, identifier: str, *, scope: str | None = ..., reason: Any = ...,
                metadata: Mapping[str, Any] | None = ...,
                duration: float | None = ...) -> None: ...
    def status(self, identifier: str, *, scope: str | None = ...) -> ConnectionStatus: ...
    def connections(self, *, scope: Any = ...) -> list[ConnectionStatus]: ...
    def open_circuit(self, identifier: str, *, scope: str | None = ..., reason: Any = ...,
                     expiry: int | None = ...) -> None: ...
    def close_circuit(self, identifier: str, *, scope: str | None = ...,
                      reason: Any = ...) -> None: ...
    def reset_circuit(self, identifier: str, *, scope: str | None = ...,
                      reason: Any = ...) -> None: ...
    def configure(self, identifier: str | None = ..., *, scope: str | None = ...,
                  **options: Any) -> None: ...
    def subscribe(self, *, events: Iterable[EventType | str] | None = ...,
                  connection: str | None = ..., scope: str | None = ...,
                  filter: Callable[[Event], bool] | None = ...,
                  subscriber: ActorRef[Any] | None = ..., handler: Any = ...,
                  batch_size: int | None = ..., batch_timeout: int | None = ...,
                  max_pending: int = ...) -> Subscription: ...
    def unsubscribe(self, subscription: Subscription | None = ..., *,
                    connection: str | None = ..., scope: str | None = ...,
                    events: Iterable[EventType | str] | None = ...,
                    subscriber: ActorRef[Any] | None = ...) -> Any: ...
    def drain(self, timeout: float = ...) -> None: ...
    def guard(self, identifier: str, *, scope: str | None = ...,
              error_handler: Callable[[Any], Any] | None = ..., register: bool = ...,
              exclude: Any = ..., record: Any = ..., timeout: int | None = ...,
              **register_options: Any) -> GuardBlock: ...
