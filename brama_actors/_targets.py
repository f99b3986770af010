"""Where a subscription's events go: an inbox, a Pykka actor, or a handler runner.

Every target has a bounded queue of ``max_pending`` events. The event manager only ever
appends to it (never waits), so a slow subscriber delays nobody but itself. When a queue
is full its oldest non-critical event is dropped; critical events are never dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

from pykka import ActorDeadError, ActorRef, ThreadingFuture

from brama_actors._events import CRITICAL_EVENTS, Event

__all__ = ["ActorTarget", "HandlerTarget", "InboxTarget", "Stats", "Target"]

logger = logging.getLogger("brama_actors")

#: How often a handler is retried on a critical event, and the first backoff (s).
CRITICAL_RETRIES = 3
RETRY_BACKOFF = 0.01


class Stats:
    """Mutable counters behind ``Subscription.statistics()`` (guarded by the target)."""

    __slots__ = ("delivered", "dropped", "failed")

    def __init__(self) -> None:
        self.delivered = 0
        self.dropped = 0
        self.failed = 0


def _drop_oldest_noncritical(queue: collections.deque[Any]) -> bool:
    for index, item in enumerate(queue):
        if isinstance(item, Event) and item.event not in CRITICAL_EVENTS:
            del queue[index]
            return True
    return False


class Target:
    """Base class: receives events from the event manager thread."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.stats = Stats()
        self.closed = False

    def deliver(self, event: Event) -> bool:
        """Hand ``event`` over; False if the target is gone for good."""
        raise NotImplementedError

    def pending(self) -> int:
        return 0

    def marker(self) -> ThreadingFuture[None] | None:
        """A future resolved once everything delivered so far has been handled."""
        return None

    def close(self) -> None:
        self.closed = True


class InboxTarget(Target):
    """A queue the subscriber reads with ``get``/iteration/``aget``."""

    def __init__(self, max_pending: int) -> None:
        super().__init__(max_pending)
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[Event] = collections.deque()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def deliver(self, event: Event) -> bool:
        with self._cond:
            items = self._items
            if len(items) >= self.max_pending:
                if _drop_oldest_noncritical(items):
                    self.stats.dropped += 1
                elif event.event not in CRITICAL_EVENTS:
                    self.stats.dropped += 1
                    return True
            items.append(event)
            self.stats.delivered += 1
            self._cond.notify()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # the loop was closed meanwhile
                pass
        return True

    def pending(self) -> int:
        return len(self._items)

    def get(self, timeout: float | None) -> Event:
        import queue

        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout):
                raise queue.Empty
            return self._items.popleft()

    def get_nowait(self) -> Event | None:
        with self._cond:
            if self._items:
                return self._items.popleft()
            return None

    async def aget(self, timeout: float | None) -> Event:
        import queue

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise queue.Empty
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                with self._cond:
                    if self._items:
                        return self._items.popleft()
                raise queue.Empty from None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ActorTarget(Target):
    """A Pykka actor, told ``("brama_event", event)``."""

    def __init__(self, ref: ActorRef[Any], max_pending: int) -> None:
        super().__init__(max_pending)
        self.ref = ref

    def deliver(self, event: Event) -> bool:
        try:
            self.ref.tell(("brama_event", event))
        except ActorDeadError:
            return False
        self.stats.delivered += 1
        return True


_MARK = object()


class HandlerTarget(Target):
    """Runs a handler (object with ``handle_event`` or a callable) in its own thread.

    One runner per subscription: a handler that blocks forever holds only its own
    thread, and a raising handler breaks nobody else's delivery.
    """

    def __init__(self, handler: Any, max_pending: int, name: str,
                 on_failure: Callable[[Target, Event, BaseException], None] | None = None) -> None:
        super().__init__(max_pending)
        method = getattr(handler, "handle_event", None)
        self._call: Callable[[Any], Any] = method if callable(method) else handler
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[Any] = collections.deque()
        self._on_failure = on_failure
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def deliver(self, event: Event) -> bool:
        with self._cond:
            if self.closed:
                return False
            items = self._items
            if len(items) >= self.max_pending:
                if _drop_oldest_noncritical(items):
                    self.stats.dropped += 1
                elif event.event not in CRITICAL_EVENTS:
                    self.stats.dropped += 1
                    return True
            items.append(event)
            self._cond.notify()
        return True

    def pending(self) -> int:
        return sum(1 for item in self._items if isinstance(item, Event))

    def marker(self) -> ThreadingFuture[None]:
        future: ThreadingFuture[None] = ThreadingFuture()
        with self._cond:
            if self.closed:
                future.set(None)
                return future
            self._items.append((_MARK, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()
        self._stop_event.set()

    def join(self, timeout: float) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self.closed:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
            if not isinstance(item, Event):
                item[1].set(None)
                continue
            self._handle(item)

    def _handle(self, event: Event) -> None:
        attempts = 1 + (CRITICAL_RETRIES if event.event in CRITICAL_EVENTS else 0)
        backoff = RETRY_BACKOFF
        for attempt in range(attempts):
            try:
                self._call(event)
            except BaseException as exc:
                if attempt + 1 < attempts and not self._stop_event.is_set():
                    self._stop_event.wait(backoff)
                    backoff *= 2
                    continue
                with self._cond:
                    self.stats.failed += 1
                logger.error("brama_actors handler %r failed on %s after %d attempt(s)",
                             self._call, event.event.value, attempt + 1, exc_info=exc)
                if self._on_failure is not None:
                    self._on_failure(self, event, exc)
                return
            else:
                with self._cond:
                    self.stats.delivered += 1
                return
