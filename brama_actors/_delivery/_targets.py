"""Where a subscription's events go: an inbox or a Pykka actor (handler runners: _runners).

An item is one ``Event`` or, for a batched subscription, a tuple of events. Every target
has a bounded queue of ``max_pending`` items. The event manager only ever appends to it
(never waits), so a slow subscriber delays nobody but itself. When a queue is full its
oldest non-critical item is dropped; an item holding a critical event is never dropped.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError, ActorRef, ThreadingFuture

from brama_actors._events import CRITICAL_EVENTS, Event

if TYPE_CHECKING:
    import asyncio

__all__ = ["ActorTarget", "InboxTarget", "Item", "Stats", "Target", "count", "is_critical"]

logger = logging.getLogger("brama_actors")

Item = Event | tuple[Event, ...]


def is_critical(item: Item) -> bool:
    """True if the item is, or holds, a critical event (delivered at least once)."""
    if isinstance(item, Event):
        return item.event in CRITICAL_EVENTS
    return any(event.event in CRITICAL_EVENTS for event in item)


def count(item: Item) -> int:
    """How many events an item holds."""
    return 1 if isinstance(item, Event) else len(item)


class Stats:
    """Mutable counters behind ``Subscription.statistics()`` (guarded by the target)."""

    __slots__ = ("delivered", "dropped", "failed")

    def __init__(self) -> None:
        self.delivered = 0
        self.dropped = 0
        self.failed = 0


class Target:
    """Base class: receives items from the event manager thread."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.stats = Stats()
        self.closed = False

    def deliver(self, item: Item) -> bool:
        """Hand ``item`` over; False if the target is gone for good."""
        raise NotImplementedError

    def deliver_quietly(self, item: Item) -> bool | None:
        """Like ``deliver``, but may leave waking the reader to a later ``wake()``.

        Returns None when a ``wake()`` is owed. Why: the event manager fans out many
        events per run of its worker; waking a reader per event costs a thread switch
        each, waking it once per run lets it take them all at once.
        """
        return self.deliver(item)

    def wake(self) -> None:
        """Wake the reader after ``deliver_quietly`` returned None."""

    def pending(self) -> int:
        return 0

    def marker(self) -> ThreadingFuture[None] | None:
        """A future resolved once everything delivered so far has been handled."""
        return None

    def close(self) -> None:
        self.closed = True

    def join(self, timeout: float) -> None:
        """Wait for the target's own thread, if it has one."""

    @property
    def running(self) -> bool:
        """True while the target's own runner (thread or task) has not ended."""
        return False

    def abandon(self) -> None:
        """Give up on a runner still busy after ``close()`` and ``join()`` (see runners)."""


class _Queued(Target):
    """A target with its own deque, condition and drop-oldest-non-critical policy."""

    def __init__(self, max_pending: int) -> None:
        super().__init__(max_pending)
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[Any] = collections.deque()

    def _enqueue(self, item: Any, critical: bool) -> bool:
        """Append under the lock; False if the item itself was dropped."""
        items = self._items
        if len(items) >= self.max_pending:
            for index, queued in enumerate(items):
                if not isinstance(queued, tuple | Event) or is_critical(queued):
                    continue
                del items[index]
                self.stats.dropped += count(queued)
                break
            else:
                if not critical:
                    self.stats.dropped += count(item)
                    return False
        items.append(item)
        return True

    def deliver(self, item: Item) -> bool:
        delivered = self.deliver_quietly(item)
        if delivered is None:
            self.wake()
            return True
        return delivered

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()


class InboxTarget(_Queued):
    """A queue the subscriber reads with ``get``/iteration/``aget``.

    ``delivered`` counts what the reader took out, so that for every subscription
    delivered + dropped + failed + pending is the number of matching events.
    """

    def __init__(self, max_pending: int) -> None:
        super().__init__(max_pending)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def deliver_quietly(self, item: Item) -> bool | None:
        with self._cond:
            self._enqueue(item, is_critical(item))
        return None

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # the loop was closed meanwhile
                pass

    def pending(self) -> int:
        return sum(count(item) for item in list(self._items))

    def _take(self) -> Item:
        item: Item = self._items.popleft()
        self.stats.delivered += count(item)
        return item

    def _take_many(self, max_items: int | None) -> list[Item]:
        items = self._items
        n = len(items) if max_items is None else min(max_items, len(items))
        popleft = items.popleft
        taken: list[Item] = [popleft() for _ in range(n)]
        self.stats.delivered += sum(map(count, taken))
        return taken

    def put_back(self, items: list[Item]) -> None:
        """Return items taken but not handed to the reader, ahead of newer ones.

        Why: iteration takes a batch at a time; when the reader stops early, the rest
        of the batch must stay readable, in order, and not count as delivered.
        """
        if not items:
            return
        with self._cond:
            self._items.extendleft(reversed(items))
            self.stats.delivered -= sum(map(count, items))
        self.wake()

    def get(self, timeout: float | None) -> Item:
        with self._cond:
            if self._items:
                return self._take()
            if not self._cond.wait_for(self._has_items, timeout):
                raise queue.Empty
            return self._take()

    def get_many(self, max_items: int | None, timeout: float | None) -> list[Item]:
        with self._cond:
            if not self._items and not self._cond.wait_for(self._has_items, timeout):
                return []
            return self._take_many(max_items)

    def _has_items(self) -> bool:
        return bool(self._items)

    async def aget(self, timeout: float | None) -> Item:
        taken = await self.aget_many(1, timeout)
        if not taken:
            raise queue.Empty
        return taken[0]

    async def aget_many(self, max_items: int | None, timeout: float | None) -> list[Item]:
        import asyncio  # only asyncio readers pay for importing it

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._cond:
                if self._items:
                    return self._take_many(max_items)
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return []
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                with self._cond:
                    return self._take_many(max_items) if self._items else []


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ActorTarget(Target):
    """A Pykka actor, told ``("brama_event", event)`` or ``("brama_events", batch)``.

    The actor's own inbox is the queue: when it already holds ``max_pending`` messages,
    new non-critical items are dropped (what was told cannot be taken back).
    """

    def __init__(self, ref: ActorRef[Any], max_pending: int) -> None:
        super().__init__(max_pending)
        self.ref = ref

    def pending(self) -> int:
        # Told events are the actor's: nothing of ours is pending.
        return 0

    def backlog(self) -> int:
        """Messages waiting in the actor's inbox (ours and anybody else's)."""
        inbox = self.ref.actor_inbox
        size = getattr(inbox, "qsize", None)
        if size is not None:
            return int(size())
        try:
            return len(inbox)  # type: ignore[arg-type]
        except TypeError:
            return 0

    def deliver(self, item: Item) -> bool:
        if not self.ref.is_alive():
            return False
        if self.max_pending and self.backlog() >= self.max_pending and not is_critical(item):
            self.stats.dropped += count(item)
            return True
        message = ("brama_event", item) if isinstance(item, Event) else ("brama_events", item)
        try:
            self.ref.tell(message)
        except ActorDeadError:
            return False
        self.stats.delivered += count(item)
        return True

