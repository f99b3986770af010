"""Handler runners: where ``subscribe(handler=...)`` events are handled, and telemetry.

A handler runs outside the event manager: in a thread of its own
(:class:`HandlerTarget`), or, for a coroutine handler, as a task on the event loop that
subscribed it (:class:`AsyncHandlerTarget`). The system's telemetry runner is a handler
runner too (:class:`TelemetryTarget`).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pykka import ThreadingFuture

from brama_actors._delivery import _telemetry
from brama_actors._delivery._targets import Item, Target, _Queued, count, is_critical
from brama_actors._events import Event

if TYPE_CHECKING:
    pass

__all__ = [
    "RUNNER_STOP_WAIT",
    "AsyncHandlerTarget",
    "HandlerTarget",
    "TelemetryCall",
    "TelemetryTarget",
    "check_drain_caller",
    "close_runners",
    "handler_function",
    "is_coroutine_handler",
]

logger = logging.getLogger("brama_actors")

#: How often a handler is retried on a critical item, and the first backoff (s).
CRITICAL_RETRIES = 3
RETRY_BACKOFF = 0.01

_MARK = object()


def handler_function(handler: Any) -> Callable[[Any], Any]:
    """What a handler subscription calls: ``handler.handle_event`` or ``handler`` itself."""
    method = getattr(handler, "handle_event", None)
    return method if callable(method) else handler  # type: ignore[no-any-return]


def is_coroutine_handler(handler: Any) -> bool:
    """True if the handler's function is a coroutine function (``async def``)."""
    function = handler_function(handler)
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None))  # noqa: B004 - an object with an async __call__


class _Runner(_Queued):
    """What thread and event-loop handler runners share: queue, markers, retry policy.

    One runner per subscription: a handler that blocks holds only its own runner, and a
    raising handler breaks nobody else's delivery. A critical item the handler raises on
    is retried (``CRITICAL_RETRIES`` times, backing off); then it is counted as failed,
    logged, and reported as telemetry ``("brama", "subscriber", "failure")``.
    ``BaseException`` is contained too.
    """

    def __init__(self, handler: Any, max_pending: int, label: str) -> None:
        super().__init__(max_pending)
        self._call: Callable[[Any], Any] = handler_function(handler)
        self._label = label or repr(handler)
        # Set when stop() gave up waiting for a handler blocked in user code: the runner
        # cannot be killed, but once the handler returns it runs nothing more.
        self._abandoned = False

    def deliver_quietly(self, item: Item) -> bool | None:
        with self._cond:
            if self.closed:
                return False
            self._enqueue(item, is_critical(item))
        return None

    def pending(self) -> int:
        return sum(count(item) for item in list(self._items) if not isinstance(item, list))

    def marker(self) -> ThreadingFuture[None]:
        future: ThreadingFuture[None] = ThreadingFuture()
        with self._cond:
            if self.closed:
                future.set(None)
                return future
            self._items.append([_MARK, future])  # a list: never taken for an item
        self.wake()
        return future

    def abandon(self) -> None:
        """Give up on a handler still blocked after ``close()`` and ``join()``.

        What is still queued is dropped, and when the handler returns its runner ends at
        once: no retry, no failure report, no telemetry, no further item.
        """
        with self._cond:
            self._abandoned = True
            self.closed = True
            dropped = list(self._items)
            self._items.clear()
        for item in dropped:
            if isinstance(item, list):
                item[1].set(None)  # a drain marker: nothing will handle it now

    def _take(self) -> Any:
        """The next queued entry, or None; markers are resolved here, in order."""
        while True:
            with self._cond:
                if not self._items or self._abandoned:
                    return None
                item = self._items.popleft()
            if isinstance(item, list):
                item[1].set(None)
                continue
            return item

    def _succeeded(self, item: Item) -> None:
        with self._cond:
            self.stats.delivered += count(item)

    def _retry(self, item: Item, exc: BaseException, attempt: int, attempts: int) -> bool:
        """The handler raised ``exc`` on try ``attempt`` (from 0) of ``attempts``: True to
        try again after the backoff; else the failure is reported (unless ``stop()``
        abandoned this runner: then nothing is) and the item is done."""
        if self._abandoned:
            return False
        if attempt + 1 < attempts and not self.closed:  # closing: no more waiting
            return True
        self._failed(item, exc, attempt + 1)
        return False

    def _failed(self, item: Item, exc: BaseException, attempts: int) -> None:
        with self._cond:
            self.stats.failed += count(item)
        first = item if isinstance(item, Event) else item[0]
        logger.error("brama_actors handler %s failed on %s after %d attempt(s)",
                     self._label, first.event.value, attempts, exc_info=exc)
        _telemetry.execute(
            ("brama", "subscriber", "failure"),
            {"system_time": first.timestamp, "attempts": attempts},
            {"subscriber": self._label, "event": item, "error": exc},
        )


class HandlerTarget(_Runner):
    """Runs a handler (object with ``handle_event`` or a callable) in its own thread."""

    def __init__(self, handler: Any, max_pending: int, name: str, label: str = "") -> None:
        super().__init__(handler, max_pending, label)
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()
        self._stop_event.set()

    def join(self, timeout: float) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the runner thread is alive (e.g. blocked in the handler)."""
        return self._thread.is_alive()

    def abandon(self) -> None:
        super().abandon()
        self._stop_event.set()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self.closed:
                    self._cond.wait()
            item = self._take()
            if item is None:
                with self._cond:
                    if self._abandoned or (self.closed and not self._items):
                        return
                continue
            self._handle(item)

    def _handle(self, item: Item) -> None:
        attempts = 1 + (CRITICAL_RETRIES if is_critical(item) else 0)
        backoff = RETRY_BACKOFF
        for attempt in range(attempts):
            try:
                result = self._call(item)
                if inspect.isawaitable(result):
                    _discard(result)
                    raise TypeError(
                        f"handler {self._label} returned an awaitable that nothing would "
                        "await; subscribe an `async def` handler from a running event loop")
            except BaseException as exc:
                if not self._retry(item, exc, attempt, attempts):
                    return
                self._stop_event.wait(backoff)
                backoff *= 2
            else:
                self._succeeded(item)
                return


def _discard(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()  # no "never awaited" RuntimeWarning: the TypeError says it instead


#: Seconds closing waits for handler runners to finish their current item (at most).
RUNNER_STOP_WAIT = 1.0


def close_runners(targets: Iterable[Target], timeout: float) -> int:
    """Close targets and wait for their runners; abandon those still blocked.

    A runner blocked in user code cannot be killed: it is waited for at most
    ``min(timeout, RUNNER_STOP_WAIT)`` seconds, then abandoned (it runs nothing more
    once the handler returns). Returns how many were abandoned.
    """
    targets = list(targets)
    for target in targets:
        target.close()
    deadline = time.monotonic() + max(0.0, min(timeout, RUNNER_STOP_WAIT))
    for target in targets:
        target.join(max(0.0, deadline - time.monotonic()))
    blocked = [t for t in targets if t.running]
    for target in blocked:
        target.abandon()
    return len(blocked)


def check_drain_caller(targets: Iterable[Target]) -> None:
    """Refuse a ``drain()`` that would wait for a coroutine handler on its own loop.

    Raises:
        RuntimeError: called from the event loop thread that runs such a handler: the
            handler could not run while drain blocks that thread.
    """
    for target in targets:
        if isinstance(target, AsyncHandlerTarget) and not target.closed \
                and target.on_own_loop():
            raise RuntimeError(
                "drain() was called on the event loop that runs a coroutine handler; it "
                "would wait for that handler while blocking it. Use "
                "`await asyncio.to_thread(brama.drain)`")


class AsyncHandlerTarget(_Runner):
    """Runs a coroutine handler on the event loop that was running at ``subscribe``.

    One task per subscription awaits the handler one item at a time, in order, with the
    retry rules of a thread handler (backing off with ``asyncio.sleep``, so the loop
    runs meanwhile). The event manager only appends to the queue and wakes the task with
    ``call_soon_threadsafe``; nothing of the loop runs in an actor.
    """

    def __init__(self, handler: Any, max_pending: int, name: str, label: str = "") -> None:
        import asyncio  # only coroutine handlers pay for importing it

        super().__init__(handler, max_pending, label)
        self._loop = asyncio.get_running_loop()  # the caller checked that one runs
        self._thread_id = threading.get_ident()
        self._wakeup = asyncio.Event()
        self._done = threading.Event()
        self._task = self._loop.create_task(self._run(), name=name)

    def deliver_quietly(self, item: Item) -> bool | None:
        if self._loop.is_closed():
            return False  # the loop is gone: so is the subscription
        return super().deliver_quietly(item)

    def wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the loop was closed meanwhile
            pass

    def close(self) -> None:
        with self._cond:
            self.closed = True
        self.wake()

    def on_own_loop(self) -> bool:
        """True when called from the thread running this handler's event loop."""
        return threading.get_ident() == self._thread_id and not self._done.is_set()

    def join(self, timeout: float) -> None:
        # From the loop's own thread the task cannot run while we wait: don't.
        if not self.on_own_loop() and not self._loop.is_closed():
            self._done.wait(timeout)

    @property
    def running(self) -> bool:
        """True while the task has not ended (and its loop still exists)."""
        return not self._done.is_set() and not self._loop.is_closed()

    def abandon(self) -> None:
        super().abandon()
        try:
            self._loop.call_soon_threadsafe(self._task.cancel)
        except RuntimeError:
            pass

    async def _run(self) -> None:
        try:
            while True:
                self._wakeup.clear()
                item = self._take()
                if item is None:
                    with self._cond:
                        if self._abandoned or (self.closed and not self._items):
                            return
                        if self._items:
                            continue
                    await self._wakeup.wait()
                    continue
                await self._handle(item)
        finally:
            # Ended (closed, abandoned, or cancelled with its loop): refuse what comes,
            # so the event manager drops the subscription instead of queueing for nobody.
            with self._cond:
                self.closed = True
            self._done.set()

    async def _handle(self, item: Item) -> None:
        import asyncio

        attempts = 1 + (CRITICAL_RETRIES if is_critical(item) else 0)
        backoff = RETRY_BACKOFF
        for attempt in range(attempts):
            try:
                await self._call(item)
            except asyncio.CancelledError:
                raise  # the task is cancelled (loop shutdown, or stop() abandoned it)
            except BaseException as exc:
                if not self._retry(item, exc, attempt, attempts):
                    return
                await asyncio.sleep(backoff)
                backoff *= 2
            else:
                self._succeeded(item)
                return


class TelemetryCall:
    """A telemetry execution queued for the telemetry runner."""

    __slots__ = ("measurements", "metadata", "name")

    def __init__(self, name: tuple[str, ...], measurements: dict[str, Any],
                 metadata: dict[str, Any]) -> None:
        self.name = name
        self.measurements = measurements
        self.metadata = metadata


class TelemetryTarget(HandlerTarget):
    """Fires ``("brama", "connection", <type>)`` telemetry for every event, in its thread.

    It tracks when each connection last changed state, to measure ``duration`` (ms spent
    in the previous state) on ``state_change``.
    """

    def __init__(self, name: str, max_pending: int = 100_000) -> None:
        self._since: dict[tuple[str | None, str | None], int] = {}
        super().__init__(self._fire, max_pending, name, "telemetry")

    def fire(self, call: TelemetryCall) -> None:
        """Queue a telemetry execution (e.g. a supervisor restart) for this thread."""
        with self._cond:
            if not self.closed:
                self._items.append(call)
                self._cond.notify()

    def _handle(self, item: Any) -> None:
        if isinstance(item, TelemetryCall):
            _telemetry.execute(item.name, item.measurements, item.metadata)
            return
        super()._handle(item)

    def _fire(self, item: Item) -> None:
        for event in (item,) if isinstance(item, Event) else item:
            key = (event.scope, event.connection)
            measurements: dict[str, Any] = {"system_time": event.timestamp}
            kind = event.event.value
            if kind == "state_change":
                since = self._since.get(key)
                if since is not None:
                    measurements["duration"] = event.timestamp - since
                self._since[key] = event.timestamp
            elif kind == "registration":
                self._since[key] = event.timestamp
            elif kind == "connection_removed":
                self._since.pop(key, None)
            _telemetry.execute(
                ("brama", "connection", kind),
                measurements,
                {"connection": event.connection, "scope": event.scope, "data": event.data},
            )
