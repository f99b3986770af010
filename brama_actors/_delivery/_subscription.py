"""The public ``Subscription`` handle and its statistics snapshot."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from brama_actors._delivery._targets import InboxTarget, Target
from brama_actors._events import Event, EventType

if TYPE_CHECKING:
    from brama_actors._system._brama import Brama

__all__ = ["Subscription", "SubscriptionStatistics"]

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """A frozen snapshot of one subscription's delivery counters.

    Attributes:
        delivered: events handed to the target (handlers: handled without raising).
        dropped: non-critical events dropped because the queue was full.
        failed: events a handler raised on (after retries for critical events).
        pending: events waiting in the queue.
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
        brama: Brama,
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

    def __iter__(self) -> Iterator[Event | tuple[Event, ...]]:
        inbox = self._inbox()
        while True:
            yield inbox.get(None)

    def __aiter__(self) -> AsyncIterator[Event | tuple[Event, ...]]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Event | tuple[Event, ...]]:
        inbox = self._inbox()
        while True:
            yield await inbox.aget(None)

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
        from brama_actors._errors import SystemStopped

        try:
            self.unsubscribe()
        except SystemStopped:
            pass

