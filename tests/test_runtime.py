"""The pooled actor runtime behaves like Pykka's ThreadingActor, on a few threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from brama_actors._runtime import Pool, PooledActor, current_actor


@pytest.fixture
def pool() -> Iterator[Pool]:
    """A pool of 2 workers, shut down after the test."""
    pool = Pool("brama-test", 2)
    yield pool
    pykka.ActorRegistry.stop_all(timeout=5)
    pool.shutdown()


class Recorder(PooledActor):
    def __init__(self, pool: Pool, log: list[Any] | None = None,
                 failed: threading.Event | None = None) -> None:
        super().__init__(pool)
        self.log = log if log is not None else []
        self.failed = failed if failed is not None else threading.Event()

    def on_start(self) -> None:
        self.log.append("start")

    def on_stop(self) -> None:
        self.log.append("stop")

    def on_failure(self, *exc_info: Any) -> None:
        self.log.append(("failure", exc_info[0]))
        self.failed.set()

    def on_receive(self, message: Any) -> Any:
        if message == "raise":
            raise ValueError("boom")
        if message == "interrupt":
            raise KeyboardInterrupt
        if message == "whoami":
            return current_actor()
        self.log.append(message)
        return ("echo", message)

    def add(self, a: int, b: int) -> int:
        return a + b


def test_ask_and_tell_in_order(pool: Pool) -> None:
    """Messages are processed one at a time, in the order they were sent."""
    log: list[Any] = []
    ref = Recorder.start(pool, log)
    for i in range(500):
        ref.tell(i)
    assert ref.ask("last", timeout=5) == ("echo", "last")
    assert log == ["start", *range(500), "last"]


def test_proxy_calls(pool: Pool) -> None:
    """Pykka proxies work on pooled actors."""
    ref = Recorder.start(pool)
    assert ref.proxy().add(2, 3).get(timeout=5) == 5


def test_ask_exception_returns_to_caller_and_actor_lives(pool: Pool) -> None:
    """An exception in an ask handler is raised in the caller; the actor keeps running."""
    ref = Recorder.start(pool)
    with pytest.raises(ValueError, match="boom"):
        ref.ask("raise", timeout=5)
    assert ref.is_alive()
    assert ref.ask("x", timeout=5) == ("echo", "x")


def test_tell_exception_stops_actor_and_calls_on_failure(pool: Pool) -> None:
    """An exception escaping a tell handler runs on_failure and stops that actor only."""
    failed = threading.Event()
    ref = Recorder.start(pool, None, failed)
    other = Recorder.start(pool)
    ref.tell("raise")
    assert failed.wait(5)
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("x", timeout=5)
    assert other.ask("y", timeout=5) == ("echo", "y")


def test_base_exception_stops_only_that_actor(pool: Pool) -> None:
    """A BaseException stops its actor only, not every actor in the process (Pykka would)."""
    victim = Recorder.start(pool)
    bystander = Recorder.start(pool)
    with pytest.raises(pykka.ActorDeadError):
        victim.ask("interrupt", timeout=5)
    assert not victim.is_alive()
    assert bystander.is_alive()
    assert bystander.ask("still here", timeout=5) == ("echo", "still here")


def test_stop_processes_earlier_messages_and_rejects_later(pool: Pool) -> None:
    """stop() lets queued messages finish, runs on_stop, then refuses new messages."""
    log: list[Any] = []
    ref = Recorder.start(pool, log)
    for i in range(10):
        ref.tell(i)
    assert ref.stop(timeout=5) is True
    assert log == ["start", *range(10), "stop"]
    assert ref.stop(timeout=5) is False
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("late")
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("late", timeout=5)
    assert ref not in pykka.ActorRegistry.get_all()


def test_pending_asks_answered_when_actor_stops(pool: Pool) -> None:
    """Asks queued behind a stop get ActorDeadError instead of hanging."""
    ref = Recorder.start(pool)
    gate = threading.Event()

    class Blocker(PooledActor):
        def on_receive(self, message: Any) -> Any:
            gate.wait(5)

    blocker = Blocker.start(pool)
    blocker.tell("block")
    stop_future = blocker.stop(block=False)
    late = blocker.ask("after stop", block=False)
    gate.set()
    assert stop_future.get(timeout=5) is True
    with pytest.raises(pykka.ActorDeadError):
        late.get(timeout=5)
    assert ref.ask("ok", timeout=5) == ("echo", "ok")


def test_many_actors_few_threads(pool: Pool) -> None:
    """2,000 actors run on the pool's 2 threads."""
    before = threading.active_count()
    refs = [Recorder.start(pool) for _ in range(2000)]
    futures = [ref.ask("ping", block=False) for ref in refs]
    assert [f.get(timeout=10) for f in futures] == [("echo", "ping")] * 2000
    assert threading.active_count() == before


def test_current_actor(pool: Pool) -> None:
    """current_actor() is the ref being processed on a worker, None elsewhere."""
    ref = Recorder.start(pool)
    assert ref.ask("whoami", timeout=5) is ref
    assert current_actor() is None


def test_one_actor_never_runs_on_two_workers_at_once(pool: Pool) -> None:
    """Concurrent senders never make one actor process two messages at the same time."""
    inside = threading.Semaphore(1)
    overlaps: list[int] = []

    class Exclusive(PooledActor):
        def on_receive(self, message: Any) -> Any:
            if not inside.acquire(blocking=False):
                overlaps.append(message)
                return None
            inside.release()
            return None

    ref = Exclusive.start(pool)

    def send() -> None:
        for i in range(2000):
            ref.tell(i)

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(10)
    ref.ask("done", timeout=10)
    assert overlaps == []


def test_on_start_failure_stops_actor(pool: Pool) -> None:
    """An exception in on_start stops the actor; asks get ActorDeadError."""

    class BadStart(PooledActor):
        def on_start(self) -> None:
            raise RuntimeError("no")

    ref = BadStart.start(pool)
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("x", timeout=5)


def test_pool_shutdown_joins_threads() -> None:
    """Pool.shutdown ends and joins every worker thread."""
    pool = Pool("brama-shutdown", 3)
    assert all(t.is_alive() for t in pool.threads)
    pool.shutdown()
    assert not any(t.is_alive() for t in pool.threads)
