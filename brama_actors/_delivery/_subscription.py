"""The public ``Subscription`` handle and its statistics snapshot."""

from __future__ import annotations

import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka
from pykka import ActorRef

from brama_actors._config import check_optional_int
from brama_actors._delivery._runners import (
    AsyncHandlerTarget,
    HandlerTarget,
    is_coroutine_handler,
)
from brama_actors._delivery._targets import ActorTarget, InboxTarget, Target
from brama_actors._errors import SystemStopped
from brama_actors._events import Event, EventType, parse_event_types
from brama_actors._keys import check_key
from brama_actors._runtime import current_actor

__all__ = [
    "Subscription",
    "SubscriptionStatistics",
    "caller_actor",
    "check_subscription",
    "make_target",
    "owner",
]

_ids = itertools.count(1)


#: Items iteration takes at once (the rest stays queued, so other readers still share).
_ITER_BATCH = 256


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """A frozen snapshot of one subscription's delivery counters.

    Attributes:
        delivered: events handed to the target (handlers: handled without raising).
        dropped: non-critical events dropped because the queue was full.
        failed: events a handler raised on (after retries for critical events).
        pending: events waiting in the queue or in a batch not yet flushed.
    """

    delivered: int
    dropped: int
    failed: int
    pending: int


class Subscription:
    """A subscription: its filters, its target and, for inboxes, the way to read it.

    Created by ``subscribe()``; pass it to ``unsubscribe()`` or use it as a context
    manager (unsubscribes on exit).
    """

    __slots__ = ("__weakref__", "_brama", "batch_size", "batch_timeout", "batched",
                 "connection", "events",
                 "filter", "id", "owner", "scope", "subscriber", "target")

    def __init__(
        self,
        brama: Any,
        target: Target,
        *,
        events: frozenset[EventType] | None,
        connection: str | None,
        scope: str | None,
        filter: Callable[[Event], bool] | None,
        subscriber: Any,
        owner: tuple[str, Any],
        batch_size: int | None = None,
        batch_timeout: int | None = None,
    ) -> None:
        self.id: int = next(_ids)
        self._brama = brama
        self.target = target
        self.events = events
        self.connection = connection
        self.scope = scope
        self.filter = filter
        self.subscriber = subscriber
        self.owner = owner
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        #: Events held in a batch not flushed yet (written by the event manager).
        self.batched = 0

    def __repr__(self) -> str:
        parts = [f"id={self.id}"]
        if self.events is not None:
            parts.append(f"events={sorted(e.value for e in self.events)}")
        if self.connection is not None:
            parts.append(f"connection={self.connection!r}")
        if self.scope is not None:
            parts.append(f"scope={self.scope!r}")
        return f"<Subscription {' '.join(parts)}>"

    def matches(self, event: Event) -> bool:
        """Apply every filter but the predicate (which the event manager guards)."""
        if self.events is not None and event.event not in self.events:
            return False
        if self.connection is not None and event.connection != self.connection:
            return False
        return self.scope is None or event.scope == self.scope

    # -- inbox reading -----------------------------------------------------------------
    def _inbox(self) -> InboxTarget:
        if not isinstance(self.target, InboxTarget):
            raise TypeError(
                f"{self!r} delivers to a {type(self.target).__name__}, not an inbox; "
                "only subscriptions without subscriber= or handler= can be read"
            )
        return self.target

    def get(self, timeout: float | None = None) -> Event | tuple[Event, ...]:
        """Wait for the next event (a tuple of events for a batched subscription).

        Raises:
            queue.Empty: nothing arrived within ``timeout`` seconds.
        """
        return self._inbox().get(timeout)

    async def aget(self, timeout: float | None = None) -> Event | tuple[Event, ...]:
        """Like ``get`` but waits without blocking the asyncio event loop.

        Raises:
            queue.Empty: nothing arrived within ``timeout`` seconds.
        """
        return await self._inbox().aget(timeout)

    def get_many(self, max_items: int | None = None,
                 timeout: float | None = None) -> list[Event | tuple[Event, ...]]:
        """Take everything queued (at most ``max_items``), waiting up to ``timeout`` s
        for the first item; ``[]`` if nothing arrived in time.

        One call takes a whole burst under one lock and one wake-up, where ``get()``
        costs both per event: the reader's side of a fast fan-out.

        Raises:
            TypeError: ``max_items`` is not an int (or is a bool).
            ValueError: ``max_items`` is below 1.
        """
        return self._inbox().get_many(check_optional_int("max_items", max_items), timeout)

    async def aget_many(self, max_items: int | None = None,
                        timeout: float | None = None) -> list[Event | tuple[Event, ...]]:
        """Like ``get_many`` but waits without blocking the asyncio event loop.

        Raises:
            TypeError: ``max_items`` is not an int (or is a bool).
            ValueError: ``max_items`` is below 1.
        """
        return await self._inbox().aget_many(check_optional_int("max_items", max_items), timeout)

    def __iter__(self) -> Iterator[Event | tuple[Event, ...]]:
        # Takes what is queued in batches; what the loop did not consume when it stops
        # (break, an exception) goes back to the front of the inbox, uncounted.
        inbox = self._inbox()
        batch: list[Event | tuple[Event, ...]] = []
        index = 0
        try:
            while True:
                batch = inbox.get_many(_ITER_BATCH, None)
                for index, item in enumerate(batch, 1):  # noqa: B007 - read in finally
                    yield item
                batch, index = [], 0
        finally:
            inbox.put_back(batch[index:])

    def __aiter__(self) -> AsyncIterator[Event | tuple[Event, ...]]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Event | tuple[Event, ...]]:
        inbox = self._inbox()
        batch: list[Event | tuple[Event, ...]] = []
        index = 0
        try:
            while True:
                batch = await inbox.aget_many(_ITER_BATCH, None)
                for index, item in enumerate(batch, 1):  # noqa: B007 - read in finally
                    yield item
                batch, index = [], 0
        finally:
            inbox.put_back(batch[index:])

    def statistics(self) -> SubscriptionStatistics:
        """A frozen snapshot of this subscription's counters."""
        stats = self.target.stats
        return SubscriptionStatistics(
            delivered=stats.delivered,
            dropped=stats.dropped,
            failed=stats.failed,
            pending=self.target.pending() + self.batched,
        )

    def unsubscribe(self) -> bool:
        """Remove this subscription; False if it was already removed."""
        return bool(self._brama.unsubscribe(self))

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.unsubscribe()
        except SystemStopped:
            pass



def check_subscription(events: Any, connection: Any, scope: Any, filter: Any,
                       batch_size: Any, batch_timeout: Any,
                       max_pending: Any) -> frozenset[EventType] | None:
    """Validate subscription filters and options; return the parsed event types.

    Raises:
        ValueError: unknown event names or bad numbers.
        TypeError: a non-callable filter.
        InvalidIdentifier: a bad connection or scope filter.
    """
    kinds = parse_event_types(events)
    if connection is not None or scope is not None:
        check_key(connection if connection is not None else "x", scope)
    if filter is not None and not callable(filter):
        raise TypeError(f"filter must be callable, got {filter!r}")
    if type(max_pending) is bool or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError(f"max_pending must be an int >= 1, got {max_pending!r}")
    for name, value in (("batch_size", batch_size), ("batch_timeout", batch_timeout)):
        if value is not None and (type(value) is bool or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
    return kinds


def make_target(subscriber: Any, handler: Any, max_pending: int,
                handler_name: str) -> tuple[Target, Any]:
    """The target of a new subscription: a handler runner, an actor, or an inbox.

    Returns the target and the subscriber actor (the calling actor when none is given
    from inside one).

    Raises:
        ValueError: both ``subscriber`` and ``handler``.
        TypeError: a handler that is not callable, a subscriber that is not an ActorRef,
            a coroutine handler outside a running event loop.
    """
    if subscriber is not None and handler is not None:
        raise ValueError("give subscriber= or handler=, not both")
    if handler is not None:
        if not callable(getattr(handler, "handle_event", None)) and not callable(handler):
            raise TypeError(
                f"handler must have a handle_event(event) method or be callable, got {handler!r}")
        if is_coroutine_handler(handler):
            import asyncio  # only coroutine handlers pay for importing it

            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise TypeError(
                    f"handler {handler!r} is a coroutine function: subscribe it from inside "
                    "a running event loop (it runs on that loop), or read an inbox "
                    "subscription with `await sub.aget()` or `async for event in sub`"
                ) from None
            return AsyncHandlerTarget(handler, max_pending, handler_name), None
        return HandlerTarget(handler, max_pending, handler_name), None
    if subscriber is None:
        subscriber = caller_actor()
    if subscriber is None:
        return InboxTarget(max_pending), None
    if not isinstance(subscriber, ActorRef):
        raise TypeError(f"subscriber must be a pykka ActorRef, got {subscriber!r}")
    return ActorTarget(subscriber, max_pending), subscriber


def caller_actor() -> ActorRef[Any] | None:
    """The Pykka actor whose message the current thread is handling, if any."""
    ref = current_actor()
    if ref is not None:
        return ref
    # A ThreadingActor's thread runs its bound _actor_loop; the stdlib keeps the target
    # on the Thread while it runs. Pykka offers no public "current actor".
    target = getattr(threading.current_thread(), "_target", None)
    actor = getattr(target, "__self__", None)
    if isinstance(actor, pykka.Actor):
        return actor.actor_ref
    return None


def owner() -> tuple[str, Any]:
    """Who is subscribing: the current actor, or else the current thread."""
    actor = caller_actor()
    if actor is not None:
        return ("actor", actor.actor_urn)
    return ("thread", threading.get_ident())
