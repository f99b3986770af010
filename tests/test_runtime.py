"""The pooled actor runtime behaves like Pykka's ThreadingActor, on a few threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from brama_actors._runtime._pool import BUSY, Pool, PooledActor, current_actor


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


# -- caller-run messages (_PooledInbox.call) ----------------------------------------------
class Gate(PooledActor):
    """Blocks on "hold" until released; records the thread of every message."""

    def __init__(self, pool: Pool, entered: threading.Event, release: threading.Event,
                 log: list[Any]) -> None:
        super().__init__(pool)
        self.entered = entered
        self.release = release
        self.log = log

    def on_receive(self, message: Any) -> Any:
        if message == "hold":
            self.entered.set()
            assert self.release.wait(5)
        if message == "raise":
            raise ValueError("boom")
        if message == "interrupt":
            raise KeyboardInterrupt
        self.log.append((message, threading.current_thread().name, current_actor()))
        return ("echo", message)


def _gate(pool: Pool) -> tuple[Any, threading.Event, threading.Event, list[Any]]:
    entered, release, log = threading.Event(), threading.Event(), []
    ref = Gate.start(pool, entered, release, log)
    ref.ask("warm", timeout=5)  # started: the first message always goes to the pool
    return ref, entered, release, log


def test_call_runs_in_the_calling_thread_when_idle(pool: Pool) -> None:
    """An idle actor's message is processed by the caller, as the actor, with ask's result."""
    ref, _, _, log = _gate(pool)
    inbox = ref.actor_inbox
    assert inbox.call("x") == ("echo", "x")
    assert log[-1] == ("x", threading.current_thread().name, ref)
    assert current_actor() is None  # restored after the call
    assert inbox.idle()


def test_call_is_busy_while_a_worker_runs_the_actor(pool: Pool) -> None:
    """Never two threads in one actor: a busy actor is left to its worker, order kept."""
    ref, entered, release, log = _gate(pool)
    inbox = ref.actor_inbox
    ref.tell("hold")
    assert entered.wait(5)
    assert inbox.call("x") is BUSY
    ref.tell("after")
    release.set()
    assert ref.ask("last", timeout=5) == ("echo", "last")
    assert [m for m, _, _ in log] == ["warm", "hold", "after", "last"]
    assert all(name.startswith("brama-test-worker") for _, name, _ in log)


def test_messages_sent_during_a_call_are_run_after_it(pool: Pool) -> None:
    """Tells that arrive while the caller holds the actor are queued, then run by the pool."""
    entered, release, log = threading.Event(), threading.Event(), []
    ref = Gate.start(pool, entered, release, log)
    ref.ask("warm", timeout=5)
    inbox = ref.actor_inbox
    result: list[Any] = []
    caller = threading.Thread(target=lambda: result.append(inbox.call("hold")))
    caller.start()
    assert entered.wait(5)
    ref.tell("queued")  # the actor is held by the caller thread
    assert ref.actor_inbox.call("y") is BUSY
    release.set()
    caller.join(5)
    assert result == [("echo", "hold")]
    assert ref.ask("last", timeout=5) == ("echo", "last")
    assert [m for m, _, _ in log] == ["warm", "hold", "queued", "last"]


def test_call_raises_what_ask_raises(pool: Pool) -> None:
    """An exception reaches the caller and the actor lives; a BaseException stops it only."""
    ref, _, _, _ = _gate(pool)
    other, _, _, _ = _gate(pool)
    inbox = ref.actor_inbox
    with pytest.raises(ValueError, match="boom"):
        inbox.call("raise")
    assert inbox.call("x") == ("echo", "x")
    with pytest.raises(pykka.ActorDeadError):
        inbox.call("interrupt")
    assert not ref.is_alive()
    assert inbox.call("x") is BUSY  # closed: the caller falls back to ask, which refuses
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("x", timeout=5)
    assert other.ask("still", timeout=5) == ("echo", "still")


def test_call_before_the_first_message_goes_to_the_pool(pool: Pool) -> None:
    """A lazily started actor runs on_start on a worker: call leaves it to ask."""

    class Lazy(Recorder):
        lazy_start = True

    log: list[Any] = []
    ref = Lazy.start(pool, log)
    assert ref.actor_inbox.call("x") is BUSY
    assert ref.ask("x", timeout=5) == ("echo", "x")
    assert ref.actor_inbox.call("y") == ("echo", "y")
    assert log == ["start", "x", "y"]


def test_on_yield_runs_once_per_run_after_its_messages(pool: Pool) -> None:
    """on_yield runs when the actor gives up its worker: after a run's messages, as it."""

    class Yielder(Gate):
        def on_yield(self) -> None:
            self.log.append(("yield", threading.current_thread().name, current_actor()))

    entered, release, log = threading.Event(), threading.Event(), []
    ref = Yielder.start(pool, entered, release, log)
    ref.tell("hold")
    assert entered.wait(5)
    for i in range(5):
        ref.tell(i)  # queued behind "hold": the same run takes them
    release.set()
    assert ref.ask("last", timeout=5) == ("echo", "last")
    names = [m for m, _, _ in log]
    # One yield after the whole run (hold, 0..4, and "last" if it was queued in time).
    assert names[:6] == ["hold", 0, 1, 2, 3, 4]
    assert names.count("yield") in (1, 2)
    assert names[-1] == "yield" or names[-2:] == ["yield", "last"]
    assert all(actor == ref for _, _, actor in log)
    # A caller-run message yields too, in the caller's thread.
    inbox = ref.actor_inbox
    deadline = time.monotonic() + 5
    while not inbox.idle():  # the worker is yielding after "last"; no sleep, bounded
        assert time.monotonic() < deadline
    log.clear()
    assert inbox.call("inline") == ("echo", "inline")
    assert log[-2:] == [("inline", threading.current_thread().name, ref),
                        ("yield", threading.current_thread().name, ref)]


class Yielder(PooledActor):
    """on_yield raises (or on_start raises a BaseException) to test the pool's last line."""

    def __init__(self, pool: Pool, mode: str) -> None:
        super().__init__(pool)
        self.mode = mode

    def on_start(self) -> None:
        if self.mode == "start":
            raise SystemExit("on_start")

    def on_yield(self) -> None:
        if self.mode == "yield":
            raise RuntimeError("on_yield")

    def on_receive(self, message: Any) -> Any:
        return message


def test_on_yield_error_never_ends_a_worker(pool: Pool,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """An error in on_yield is logged; the worker and the actor keep running."""
    threads = pool.threads
    ref = Yielder.start(pool, "yield")
    for i in range(20):
        assert ref.ask(i, timeout=5) == i
    assert all(t.is_alive() for t in threads)
    assert "on_yield failed" in caplog.text


def test_base_exception_in_on_start_stops_only_that_actor(pool: Pool) -> None:
    """A SystemExit from on_start stops that actor; the pool's workers live on."""
    ref = Yielder.start(pool, "start")
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("x", timeout=5)
    other = Recorder.start(pool)
    assert other.ask("y", timeout=5) == ("echo", "y")
    assert all(t.is_alive() for t in pool.threads)


def test_halt_refuses_queued_asks_without_running_them(pool: Pool) -> None:
    """halt() stops an idle actor at once: queued asks get ActorDeadError, unprocessed."""
    gate = threading.Event()
    running = threading.Event()
    log: list[Any] = []

    class Slow(PooledActor):
        def on_receive(self, message: Any) -> Any:
            if message == "block":
                running.set()
                gate.wait(5)
            log.append(message)
            return message

    ref = Slow.start(pool)
    blocked = ref.ask("block", block=False)
    assert running.wait(5)
    queued = ref.ask("queued", block=False)
    inbox = ref.actor_inbox
    assert isinstance(inbox, type(Slow._create_actor_inbox()))
    inbox.halt()
    gate.set()
    assert blocked.get(timeout=5) == "block"  # the running message completes
    with pytest.raises(pykka.ActorDeadError):
        queued.get(timeout=5)
    assert log == ["block"]
    assert not ref.is_alive()
