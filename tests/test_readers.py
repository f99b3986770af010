"""Reading an inbox: get_many, aget_many and iteration that takes batches (docs/events.md)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from brama_actors import Brama, Client, Event
from brama_actors.testing import ManualClock


def _failures(system: Brama, n: int, identifier: str = "db") -> None:
    for i in range(n):
        system.failure(identifier, reason=i)
    system.drain()


def _reasons(items: list[Any]) -> list[Any]:
    return [item.data["reason"] for item in items]


@pytest.fixture
def db(system: Brama) -> Brama:
    system.register("db", max_attempts=10**9)
    return system


def test_get_many_takes_everything_queued_in_order(db: Brama) -> None:
    """get_many() returns every queued event, oldest first, and counts them delivered."""
    sub = db.subscribe(events=["failure"])
    _failures(db, 5)
    taken = sub.get_many(timeout=0)
    assert _reasons(taken) == [0, 1, 2, 3, 4]
    assert all(isinstance(item, Event) for item in taken)
    stats = sub.statistics()
    assert (stats.delivered, stats.pending) == (5, 0)
    assert sub.get_many(timeout=0) == []


def test_get_many_respects_max_items(db: Brama) -> None:
    """max_items bounds one call; the rest stays queued, in order."""
    sub = db.subscribe(events=["failure"])
    _failures(db, 5)
    assert _reasons(sub.get_many(max_items=2, timeout=0)) == [0, 1]
    assert sub.statistics().pending == 3
    assert _reasons(sub.get_many(max_items=10, timeout=0)) == [2, 3, 4]


def test_get_many_waits_for_the_first_event_only(db: Brama) -> None:
    """With nothing queued, get_many waits for the first event, then takes what is there."""
    sub = db.subscribe(events=["failure"])
    result: list[Any] = []
    started = threading.Event()

    def reader() -> None:
        started.set()
        result.extend(sub.get_many(timeout=10))

    thread = threading.Thread(target=reader)
    thread.start()
    assert started.wait(5)
    db.failure("db", reason="first")
    thread.join(10)
    assert not thread.is_alive()
    assert _reasons(result)[0] == "first"


def test_get_many_timeout_returns_empty_list(db: Brama) -> None:
    """Nothing within the timeout: [] (get() raises queue.Empty instead)."""
    sub = db.subscribe(events=["failure"])
    assert sub.get_many(timeout=0.01) == []


def test_get_many_on_a_batched_subscription_returns_batches(db: Brama,
                                                            clock: ManualClock) -> None:
    """On a batched subscription each item is a tuple of events, as get() returns."""
    sub = db.subscribe(events=["failure"], batch_size=2)
    _failures(db, 4)
    taken = sub.get_many(timeout=0)
    assert [tuple(e.data["reason"] for e in batch) for batch in taken] == [(0, 1), (2, 3)]
    assert sub.statistics().delivered == 4


@pytest.mark.parametrize(("bad", "error"), [
    (0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError), ("3", TypeError),
])
def test_get_many_refuses_bad_max_items_taking_nothing(db: Brama, bad: Any,
                                                       error: type[Exception]) -> None:
    """A bad max_items raises before anything is taken."""
    sub = db.subscribe(events=["failure"])
    _failures(db, 2)
    with pytest.raises(error, match="max_items"):
        sub.get_many(max_items=bad, timeout=0)
    with pytest.raises(error, match="max_items"):
        asyncio.run(sub.aget_many(max_items=bad, timeout=0))
    assert sub.statistics().pending == 2


def test_get_many_on_a_handler_subscription_is_a_type_error(db: Brama) -> None:
    """Only inboxes can be read."""
    sub = db.subscribe(handler=lambda event: None)
    with pytest.raises(TypeError, match="not an inbox"):
        sub.get_many(timeout=0)


def test_iteration_that_stops_early_leaves_the_rest_queued(db: Brama) -> None:
    """Iteration takes batches, but what the loop did not consume stays readable."""
    sub = db.subscribe(events=["failure"])
    _failures(db, 6)
    seen = []
    iterator = iter(sub)
    for event in iterator:
        seen.append(event.data["reason"])
        if len(seen) == 2:
            break
    iterator.close()  # what CPython does when the loop's iterator is dropped
    assert seen == [0, 1]
    stats = sub.statistics()
    assert (stats.delivered, stats.pending) == (2, 4)
    assert _reasons(sub.get_many(timeout=0)) == [2, 3, 4, 5]


def test_iteration_reads_events_arriving_later(db: Brama) -> None:
    """Iteration keeps waiting for events after it emptied the inbox."""
    sub = db.subscribe(events=["failure"])
    _failures(db, 2)
    got: list[Any] = []
    done = threading.Event()

    def reader() -> None:
        for event in sub:
            got.append(event.data["reason"])
            if len(got) == 4:
                done.set()
                return

    thread = threading.Thread(target=reader)
    thread.start()
    db.failure("db", reason=2)
    db.failure("db", reason=3)
    assert done.wait(10)
    thread.join(10)
    assert got == [0, 1, 2, 3]


def test_aget_many_and_async_iteration(db: Brama) -> None:
    """aget_many waits on the loop; async for stops early without losing events."""
    sub = db.subscribe(events=["failure"])

    async def scenario() -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        empty = await sub.aget_many(timeout=0.01)
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(sub.aget_many(timeout=10))
        await asyncio.sleep(0)  # the reader is waiting before anything is queued
        await loop.run_in_executor(None, _failures, db, 3)
        first = await waiting  # woken by the first event: takes what was there then
        assert first
        first += await sub.aget_many(timeout=0)
        await loop.run_in_executor(None, _failures, db, 3)  # all queued (drained)
        seen = []
        iterator = sub.__aiter__()
        async for event in iterator:
            seen.append(event.data["reason"])
            break
        await iterator.aclose()  # type: ignore[attr-defined]
        rest = await sub.aget_many(max_items=10, timeout=0)
        return empty, first, seen, rest

    empty, first, seen, rest = asyncio.run(scenario())
    assert empty == []
    assert _reasons(first) == [0, 1, 2]
    assert seen == [0]
    assert _reasons(rest) == [1, 2]
    assert sub.statistics().delivered == 6


def test_get_many_on_a_client_subscription(node: tuple[Brama, Any], client: Client) -> None:
    """A client's inbox is read the same way."""
    brama, _ = node
    brama.register("db", max_attempts=10**9)
    sub = client.subscribe(events=["failure"])
    for i in range(3):
        client.failure("db", reason=i)
    got: list[Any] = []
    while len(got) < 3:
        batch = sub.get_many(timeout=10)
        assert batch, "nothing arrived"
        got.extend(batch)
    assert _reasons(got) == [0, 1, 2]
