"""A pooled actor runtime on Pykka's runtime hooks.

Why: one ``ThreadingActor`` per connection costs an OS thread each; measured before
this was built (figures in docs/actor-design.md), 10k of them cost +217 MiB, ~4.5 s to start and
triple the ask latency. Here every
actor of
a system shares a small pool of daemon worker threads: an actor whose inbox receives a
message is queued once on the pool, and a worker runs a bounded batch of its messages.
One actor's messages are never processed by two workers at once, so the usual actor
guarantee (one message at a time, in order) holds.

It plugs into Pykka through the hooks documented "for implementors of new actor types"
(``_create_actor_inbox``, ``_create_future``, ``_start_actor_loop``) and reuses Pykka's
own per-message steps (``_handle_receive``, ``_handle_failure``, ``_stop``), so refs,
proxies, ``tell``/``ask``/``stop`` and ``ActorRegistry`` behave as for a ThreadingActor.
Those steps are private to Pykka, hence the pinned major version and tests/test_runtime.py.

One deliberate difference: a ``BaseException`` escaping a handler stops only that actor.
Pykka would call ``ActorRegistry.stop_all()`` and stop every actor in the process.
"""

from __future__ import annotations

import collections
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import pykka
from pykka import ActorDeadError, ThreadingFuture, messages

__all__ = ["BUSY", "Pool", "PooledActor", "current_actor", "reject"]

logger = logging.getLogger("brama_actors")

# Messages one actor may process before it yields its worker to other actors.
_BATCH = 64

_local = threading.local()

#: ``_PooledInbox.call`` could not run the message in the calling thread.
BUSY: Any = object()


def current_actor() -> pykka.ActorRef[Any] | None:
    """The ref of the pooled actor whose message this thread is processing, if any."""
    return getattr(_local, "actor", None)


class Pool:
    """A fixed set of daemon worker threads that run pooled actors."""

    def __init__(self, name: str, size: int = 4) -> None:
        self._queue: queue.SimpleQueue[_PooledInbox | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The worker threads (for introspection and tests)."""
        return tuple(self._threads)

    def submit(self, inbox: _PooledInbox) -> None:
        self._queue.put(inbox)

    def _work(self) -> None:
        while True:
            inbox = self._queue.get()
            if inbox is None:
                return
            try:
                inbox.run()
            except BaseException:
                # Nothing may end a worker: the pool would shrink for good and pytest
                # reports an exception escaping a thread. run() contains the actor's own
                # failures; this is the runtime's last line, and the actor is released
                # so its later messages still run.
                logger.exception("brama_actors worker: unexpected error running %r", inbox)
                inbox.recover()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Let workers finish what is queued, then end them (joined within ``timeout``)."""
        for _ in self._threads:
            self._queue.put(None)
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout)


def reject(envelope: Any, actor_ref: Any) -> None:
    """Answer an envelope that will never be processed (ActorDeadError for an ask)."""
    if envelope.reply_to is None:
        return
    if isinstance(envelope.message, messages._ActorStop):
        envelope.reply_to.set(None)
        return
    error = ActorDeadError(f"{actor_ref} stopped before handling the message")
    envelope.reply_to.set_exception(exc_info=(ActorDeadError, error, None))


class _PooledInbox:
    """The inbox of one pooled actor: a deque plus a "queued on the pool" flag."""

    __slots__ = ("_actor", "_closed", "_items", "_lock", "_pool", "_scheduled", "_started")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[Any] = collections.deque()
        # True while the actor is queued on or running in the pool. Starts True so
        # nothing runs before _start_actor_loop binds the actor.
        self._scheduled = True
        self._closed = False
        self._started = False
        self._actor: PooledActor | None = None
        self._pool: Pool | None = None

    # -- the ActorInbox protocol Pykka uses ------------------------------------------
    def put(self, envelope: Any, /) -> None:
        with self._lock:
            if not self._closed:
                self._items.append(envelope)
                if self._scheduled:
                    return
                self._scheduled = True
                pool = self._pool
            else:
                pool = None
        if pool is None:
            reject(envelope, self._actor.actor_ref if self._actor else None)
            return
        pool.submit(self)

    def get(self) -> Any:
        with self._lock:
            return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    # -- runtime ---------------------------------------------------------------------
    def backlog(self) -> int:
        """Messages queued, not counting one being processed."""
        return len(self._items)

    def idle(self) -> bool:
        """True when no message is queued or being processed.

        After a thread's ``put`` returns, this stays False until that message has been
        processed, which lets readers skip a round trip when there is nothing pending.
        """
        return not self._scheduled

    def bind(self, actor: PooledActor, pool: Pool, *, lazy: bool = False) -> None:
        with self._lock:
            self._actor = actor
            self._pool = pool
            if lazy and not self._items:
                # on_start runs before the first message instead of now: saves a
                # worker wake-up per actor when thousands are started at once.
                self._scheduled = False
                return
        pool.submit(self)

    def close(self, on_close: Callable[[list[Any]], None] | None = None) -> list[Any]:
        """Refuse further messages and take the unprocessed ones.

        ``on_close`` runs under the inbox lock with the taken envelopes, so anyone whose
        message is refused after this can rely on what ``on_close`` did (e.g. telling
        the supervisor) having happened first.
        """
        with self._lock:
            self._closed = True
            taken = list(self._items)
            self._items.clear()
            if on_close is not None:
                on_close(taken)
        return taken

    def call(self, message: Any) -> Any:
        """Process ``message`` in the calling thread if the actor is idle, else ``BUSY``.

        Why: an ask wakes a pool worker and then the asker, two thread hand-offs that
        cost far more than the work of a connection actor. When nothing is queued or
        running, the caller claims the actor exactly as a worker would (the
        "scheduled" flag), so one message at a time and in order still hold; messages
        that arrive meanwhile are queued and handed to the pool afterwards.
        The result or exception is the one ``ask`` would give.
        """
        actor = self.claim()
        if actor is None:
            return BUSY
        previous = getattr(_local, "actor", None)
        _local.actor = actor.actor_ref
        try:
            return _process_inline(actor, message)
        finally:
            _yield(actor)
            _local.actor = previous
            self.release(actor)

    def claim(self) -> PooledActor | None:
        """Take the idle actor for the calling thread (None if it is busy or not ready).

        While claimed, neither a worker nor another caller runs the actor, so the caller
        may change what only the actor changes (``call`` runs a message; the local
        authority counts a failure in the connection's cell without one). Always
        followed by ``release``.
        """
        actor = self._actor
        with self._lock:
            if self._scheduled or self._closed or not self._started or actor is None:
                return None
            self._scheduled = True
        return actor

    def release(self, actor: PooledActor) -> None:
        """Give a claimed actor back: to the pool if messages arrived meanwhile."""
        if actor.actor_stopped.is_set():
            self._teardown(actor)
            return
        with self._lock:
            if not self._items:
                self._scheduled = False
                return
            pool = self._pool
        if pool is not None:
            pool.submit(self)

    def run(self) -> None:
        actor = self._actor
        assert actor is not None
        _local.actor = actor.actor_ref
        try:
            if not self._started:
                self._started = True
                try:
                    actor._actor_loop_setup()  # contains an Exception from on_start
                except BaseException:
                    logger.exception("%s.on_start failed; stopping that actor only", actor)
                    _fail(actor, *sys.exc_info())
            for _ in range(_BATCH):
                if actor.actor_stopped.is_set():
                    _yield(actor)
                    self._teardown(actor)
                    return
                with self._lock:
                    envelope = self._items.popleft() if self._items else None
                if envelope is None:
                    # Still ours (scheduled): no other worker runs the actor meanwhile.
                    _yield(actor)
                    with self._lock:
                        if not self._items:
                            self._scheduled = False
                            return
                        envelope = self._items.popleft()
                _process(actor, envelope)
            _yield(actor)
            self.release(actor)  # a batch done: back to the pool if more is queued
        finally:
            _local.actor = None

    def recover(self) -> None:
        """Release an actor whose run ended in an unexpected error (see ``Pool._work``)."""
        with self._lock:
            if not self._items or self._closed:
                self._scheduled = False
                return
            pool = self._pool
        if pool is not None:
            pool.submit(self)

    def halt(self) -> None:
        """Stop the actor without running what is queued: its askers get ActorDeadError.

        For actors with nothing to do on stop (connection actors), at system teardown:
        one lock round each instead of a stop message through the pool, and no entry in
        Pykka's registry to remove (an O(n) scan per actor). A message being processed
        right now completes; its runner sees the actor stopped and tears it down.
        """
        actor = self._actor
        taken = self.close()
        if actor is None:
            return
        actor.actor_stopped.set()
        for envelope in taken:
            reject(envelope, actor.actor_ref)

    def _teardown(self, actor: PooledActor) -> None:
        for envelope in self.close():
            reject(envelope, actor.actor_ref)
        with self._lock:
            self._scheduled = False


def _yield(actor: PooledActor) -> None:
    """Run ``on_yield``; an error there is logged, never allowed to end the run."""
    try:
        actor.on_yield()
    except BaseException:
        logger.exception("%s.on_yield failed", actor)


def _process(actor: PooledActor, envelope: Any) -> None:
    """Handle one envelope exactly as Pykka's ``_actor_loop_running`` does."""
    try:
        response = actor._handle_receive(envelope.message)
        if envelope.reply_to is not None:
            envelope.reply_to.set(response)
    except Exception:
        if envelope.reply_to is not None:
            envelope.reply_to.set_exception()
        else:
            _fail(actor, *sys.exc_info())
    except BaseException as exc:
        # Contained: Pykka would stop every actor of the process here.
        logger.error("%r in %s; stopping that actor only", exc, actor)
        _fail(actor, *sys.exc_info())  # before replying: the asker sees it stopped
        if envelope.reply_to is not None:
            error = ActorDeadError(f"{actor} stopped by {exc!r}")
            envelope.reply_to.set_exception(exc_info=(ActorDeadError, error, None))


def _process_inline(actor: PooledActor, message: Any) -> Any:
    """``_process`` for a caller-run message: the result, or the exception ask raises."""
    try:
        return actor._handle_receive(message)
    except Exception:
        raise
    except BaseException as exc:
        logger.error("%r in %s; stopping that actor only", exc, actor)
        _fail(actor, *sys.exc_info())
        raise ActorDeadError(f"{actor} stopped by {exc!r}") from None


def _fail(actor: PooledActor, *exc_info: Any) -> None:
    actor._handle_failure(*exc_info)
    try:
        actor.on_failure(*exc_info)
    except Exception:
        actor._handle_failure(*sys.exc_info())


class PooledActor(pykka.Actor):
    """A Pykka actor that runs on a :class:`Pool` instead of its own thread.

    Args:
        pool: the pool whose workers run this actor.
    """

    #: Run ``on_start`` just before the first message rather than right away.
    lazy_start: ClassVar[bool] = False
    #: List the actor in Pykka's ``ActorRegistry``. Actors a system starts by the
    #: hundred thousand leave it out: the registry is one process-wide list whose
    #: ``unregister`` scans it, so stopping n listed actors costs O(n^2).
    registered: ClassVar[bool] = True

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        super().__init__()

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Any]:
        """Start the actor on its pool (``Actor.start``, without the registry if so set)."""
        if cls.registered:
            return super().start(*args, **kwargs)
        actor = cls(*args, **kwargs)
        actor._start_actor_loop()  # the hook Pykka documents for new actor types
        return actor.actor_ref

    def on_yield(self) -> None:
        """Called when the actor is about to give up its worker, between messages.

        For work worth doing once per run rather than once per message (the event
        manager wakes the readers it delivered to). Runs as the actor, which keeps its
        worker meanwhile; it must not raise.
        """

    @staticmethod
    def _create_actor_inbox() -> _PooledInbox:
        return _PooledInbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return ThreadingFuture()

    def _start_actor_loop(self) -> None:
        inbox = self.actor_inbox
        assert isinstance(inbox, _PooledInbox)
        inbox.bind(self, self._pool, lazy=self.lazy_start)

    @property
    def pooled_inbox(self) -> _PooledInbox:
        """This actor's inbox, with the runtime's extra operations."""
        inbox = self.actor_inbox
        assert isinstance(inbox, _PooledInbox)
        return inbox
