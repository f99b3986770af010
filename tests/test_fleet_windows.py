"""Rate windows on a fleet (API.md sections 12 and 16; docs/fleet.md "Rate windows"), on a
real Redis: the window kept in Redis, quiet successes sent in batches, and what several
systems see. No sleeps: the flusher's clock is held or moved by the test, and waits are
on its flush count, stream positions and inboxes, each with a timeout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from brama_actors import Brama, circuit_breaker
from brama_actors._authority._fleet import _pending
from tests.fleet_helpers import WAIT, converge, fleet, stored_of, take, wait_for_event
from tests.redis_server import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the session's Redis (for looking at what the fleet wrote)."""
    plain = redis_server.client(decode_responses=True)
    yield plain
    plain.close()


def ns_of(system: Brama) -> str:
    status = system.fleet_status()
    assert status is not None
    return status.namespace


class FlushClock:
    """The clock a system's batches age on, held still unless the test moves it."""

    def __init__(self, system: Brama) -> None:
        self.pending = system._authority.pending  # type: ignore[union-attr]
        self.now = 0.0
        self.pending._monotonic = lambda: self.now

    def expire(self) -> None:
        """Make every batch due and wake the flusher."""
        self.now += 10.0
        with self.pending._wake:
            self.pending._wake.notify_all()


def test_quiet_successes_cost_no_round_trip_and_a_failure_carries_them(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Successes on a closed windowed circuit stay local until the next failure, which
    folds them in before it is decided: 3 successes then a failure is a rate of 1/4
    (closed), not 1/1."""
    with fleet(redis_server, 1) as [brama]:
        FlushClock(brama)
        brama.register("db", failure_rate_threshold=0.5, minimum_calls=1, max_attempts=0)
        for _ in range(3):
            brama.success("db")
        assert stored_of(client, brama, "db")["total_successes"] == 0  # nothing sent
        status = brama.status("db")
        assert (status.total_successes, status.window_calls, status.failure_rate) == \
            (3, 3, 0.0)
        brama.failure("db")
        in_redis = stored_of(client, brama, "db")
        assert (in_redis["total_successes"], in_redis["wo"]) == (3, "0001")
        status = brama.status("db")
        assert (status.state, status.window_calls, status.failure_rate) == \
            ("closed", 4, 0.25)


def test_a_success_that_would_trip_a_rate_rule_goes_to_redis_and_opens(
        redis_server: RedisServer) -> None:
    """A success that brings the window to minimum_calls with a rate at the threshold is
    not kept: it opens the circuit at once, with the rates (exact) in circuit_opened."""
    with fleet(redis_server, 1) as [brama]:
        FlushClock(brama)
        brama.register("db", failure_rate_threshold=0.5, minimum_calls=4, max_attempts=0)
        sub = brama.subscribe(connection="db")
        brama.failure("db")
        brama.failure("db")
        brama.success("db")  # sent: it resets failure_count; 3 calls < minimum
        assert brama.status("db").state == "closed"
        brama.success("db")  # 2 of 4 failed: 0.5 trips
        assert brama.status("db").state == "open"
        brama.drain(WAIT)
        events = take(sub)
        assert [e.event.value for e in events][-3:] == ["success", "circuit_opened",
                                                       "state_change"]
        opened = events[-2].data
        assert opened["reason"] == "Failure rate exceeded"
        assert (opened["failure_rate"], opened["slow_call_rate"]) == (0.5, 0.0)
        assert brama.status("db").window_calls == 0  # an opening clears it


def test_a_slow_success_is_sent_at_once_and_opens_on_the_slow_rate(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """A slow success is never kept: it reaches Redis before success() returns."""
    with fleet(redis_server, 1) as [brama]:
        FlushClock(brama)
        brama.register("db", slow_call_rate_threshold=0.5, slow_call_duration=100,
                       minimum_calls=3)
        brama.success("db", duration=5)  # quiet
        brama.success("db", duration=150)  # slow: sent, with the quiet one before it
        assert stored_of(client, brama, "db")["wo"] == "02"
        brama.success("db", duration=5)  # would be 1 slow of 3: sent, and still closed
        assert brama.status("db").state == "closed"
        brama.success("db", duration=100)  # 2 slow of 4: opens
        status = brama.status("db")
        assert status.state == "open"
        assert status.total_successes == 4


def test_the_flusher_sends_a_batch_when_it_is_due(redis_server: RedisServer,
                                                  client: redis.Redis) -> None:
    """A circuit with only successes still has them counted in Redis: the flusher sends
    the batch FLUSH_MS after it began (here: when the test moves the flusher's clock)."""
    with fleet(redis_server, 1) as [brama]:
        clock = FlushClock(brama)
        brama.register("db", failure_rate_threshold=0.5)
        for _ in range(5):
            brama.success("db")
        assert stored_of(client, brama, "db")["total_successes"] == 0
        clock.expire()
        assert clock.pending.wait_flushes(1, WAIT)
        assert stored_of(client, brama, "db")["total_successes"] == 5
        assert stored_of(client, brama, "db")["wo"] == "00000"
        status = brama.status("db")
        assert (status.total_successes, status.window_calls) == (5, 5)  # counted once


def test_a_batch_is_sent_when_it_reaches_its_bound(redis_server: RedisServer,
                                                   client: redis.Redis) -> None:
    """A count window's batch holds at most a tenth of the window (at least 10): the
    10th success of a window of 100 is sent without waiting for the timer."""
    with fleet(redis_server, 1) as [brama]:
        clock = FlushClock(brama)
        brama.register("db", failure_rate_threshold=0.5, window_size=100)
        assert _pending.bound(brama.status("db")) == 10
        for _ in range(10):
            brama.success("db")
        assert clock.pending.wait_flushes(1, WAIT)
        assert stored_of(client, brama, "db")["total_successes"] == 10


def test_a_time_window_counts_successes_in_the_bucket_of_their_time(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Quiet successes keep their own time: sent later, they count in their own bucket
    and leave the window when it passes them, not when they were sent."""
    with fleet(redis_server, 1) as [brama]:
        FlushClock(brama)
        now = [1_700_000_000_000]
        brama._authority.fixed_now = lambda: now[0]  # type: ignore[union-attr]
        brama.register("db", failure_rate_threshold=0.5, window_type="time",
                       window_size=1000, minimum_calls=1, max_attempts=0)
        brama.success("db")
        brama.success("db")
        now[0] += 600
        brama.success("db")
        assert brama.status("db").window_calls == 3
        now[0] += 500  # the first two are 1100 ms old now
        assert brama.status("db").window_calls == 1
        brama.failure("db")  # carries all three: 1 failure of 2 live calls
        status = brama.status("db")
        assert (status.state, status.window_calls, status.total_successes) == \
            ("open", 0, 3)


def test_a_batch_from_before_an_opening_counts_in_the_totals_only(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Successes made before another system reset the circuit are added to its totals
    when they arrive, never to the new window."""
    with fleet(redis_server, 2) as [a, b]:
        clock = FlushClock(a)
        a.register("db", failure_rate_threshold=0.5)
        b.register("db")
        converge([a, b], client, ns_of(a))
        for _ in range(3):
            a.success("db")
        b.reset_circuit("db")  # a new window epoch
        converge([a, b], client, ns_of(a))
        clock.expire()
        assert clock.pending.wait_flushes(1, WAIT)
        in_redis = stored_of(client, a, "db")
        assert in_redis["total_successes"] == 3
        assert "wo" not in in_redis


def test_concurrent_failures_from_many_systems_open_on_the_rate_once(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Of many concurrent failures on a rate rule, from many systems, exactly the one
    that brings the window to minimum_calls opens the circuit, once."""
    with fleet(redis_server, 3) as systems:
        for system in systems:
            system.register("db", failure_rate_threshold=1, minimum_calls=5,
                            max_attempts=0)
        subs = [s.subscribe(connection="db", events=["circuit_opened"]) for s in systems]
        start = threading.Barrier(6)

        def fail(system: Brama) -> None:
            start.wait(WAIT)
            for _ in range(4):
                system.failure("db")

        threads = [threading.Thread(target=fail, args=(s,)) for s in systems for _ in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        converge(systems, client, ns_of(systems[0]))
        for sub in subs:
            opened = take(sub)
            assert len(opened) == 1
            assert opened[0].data["failure_count"] == 5
            assert (opened[0].data["failure_rate"], opened[0].data["reason"]) == \
                (1.0, "Failure rate exceeded")
        assert systems[0].status("db").total_failures == 24


def test_configure_adds_and_removes_a_window_fleet_wide(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """A rate rule configured on one system applies in Redis and shows on the others;
    removing it drops the window; a threshold stays exact through Redis (cjson would
    write 0.30000000000000004 as 0.3, and 3 failures of 10 would then open it)."""
    with fleet(redis_server, 2) as [a, b]:
        a.register("db")
        b.register("db")
        a.configure("db", failure_rate_threshold=0.1 + 0.2, minimum_calls=10,
                    max_attempts=0)
        converge([a, b], client, ns_of(a))
        assert b.status("db").failure_rate_threshold == 0.1 + 0.2
        for _ in range(7):
            b.success("db")
        for _ in range(3):
            b.failure("db")
        converge([a, b], client, ns_of(a))
        status = a.status("db")
        assert (status.state, status.window_calls, status.failure_rate) == \
            ("closed", 10, 0.3)
        a.configure("db", failure_rate_threshold=None, max_attempts=5)
        converge([a, b], client, ns_of(a))
        status = b.status("db")
        assert (status.window_calls, status.failure_rate) == (0, None)
        assert "wo" not in stored_of(client, a, "db")


def test_guarded_calls_on_a_windowed_circuit(redis_server: RedisServer,
                                             client: redis.Redis) -> None:
    """A guard's fast path keeps timed successes local (view.slow makes it time them)
    and its failures carry them: the rate rule opens on the third failure of six."""
    with fleet(redis_server, 1) as [brama]:
        FlushClock(brama)
        guard = circuit_breaker("api", brama=brama, failure_rate_threshold=0.5,
                                minimum_calls=4, max_attempts=0, slow_call_duration=60_000)

        @guard
        def call(fail: bool) -> str:
            if fail:
                raise ValueError("down")
            return "ok"

        for _ in range(3):
            assert call(False) == "ok"
        assert brama._authority.views["api"].slow == 60_000  # type: ignore[union-attr]
        assert stored_of(client, brama, "api")["total_successes"] == 0
        for _ in range(2):
            with pytest.raises(ValueError):
                call(True)
        assert brama.status("api").state == "closed"  # 2 of 5
        with pytest.raises(ValueError):
            call(True)
        status = brama.status("api")
        assert (status.state, status.total_successes, status.total_failures) == ("open", 3, 3)


def test_batches_of_an_unregistered_circuit_do_not_reach_a_new_one(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Quiet successes kept for a circuit that is then unregistered are dropped: the
    circuit registered again under that name starts with an empty window."""
    with fleet(redis_server, 1) as [brama]:
        clock = FlushClock(brama)
        brama.register("db", failure_rate_threshold=0.5)
        for _ in range(3):
            brama.success("db")
        brama.unregister("db")
        brama.register("db", failure_rate_threshold=0.5)
        brama.success("db")
        clock.expire()
        assert clock.pending.wait_flushes(1, WAIT)
        status = brama.status("db")
        assert (status.total_successes, status.window_calls) == (1, 1)
        assert stored_of(client, brama, "db")["wo"] == "0"


def test_a_decision_misses_another_systems_unsent_successes(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """The documented bound: a failure decided in Redis does not see successes another
    system still keeps (here 3 on a, held), so b's one failure is a rate of 1/1."""
    with fleet(redis_server, 2) as [a, b]:
        FlushClock(a)
        a.register("db", failure_rate_threshold=0.5, minimum_calls=1, max_attempts=0)
        b.register("db")
        converge([a, b], client, ns_of(a))
        for _ in range(3):
            a.success("db")
        b.failure("db")
        assert b.status("db").state == "open"


def test_a_flushed_batch_can_trip_a_rate_rule(redis_server: RedisServer,
                                              client: redis.Redis) -> None:
    """Successes kept on a before b's failures reached it bring the window to
    minimum_calls when they arrive: the flush opens the circuit (circuit_opened with
    the rates, no success event in the stream: those were delivered on a)."""
    with fleet(redis_server, 2) as [a, b]:
        clock = FlushClock(a)
        a.register("db", failure_rate_threshold=0.5, minimum_calls=4, max_attempts=0)
        b.register("db")
        converge([a, b], client, ns_of(a))
        sub = b.subscribe(connection="db")
        a.success("db")
        a.success("db")
        b.failure("db")
        b.failure("db")  # 2 calls in Redis: below minimum_calls
        assert b.status("db").state == "closed"
        clock.expire()
        assert clock.pending.wait_flushes(1, WAIT)
        converge([a, b], client, ns_of(a))
        assert b.status("db").state == "open"
        events = take(sub)
        assert [e.event.value for e in events][-2:] == ["circuit_opened", "state_change"]
        assert (events[-2].data["failure_rate"], events[-2].data["reason"]) == \
            (0.5, "Failure rate exceeded")
        assert b.status("db").total_successes == 2


def test_local_mode_decides_with_the_fleets_last_window() -> None:
    """Redis paused, "local" mode: this system keeps deciding the rate rule with a window
    seeded from the fleet's last one (and its own unsent successes), so a circuit with
    only a rate rule (max_attempts=0) still opens."""
    with RedisServer.local() as server, fleet(server, 1, fleet_timeout=200) as [brama]:
        FlushClock(brama)
        sub = brama.subscribe(events=["circuit_opened"])
        brama.register("db", failure_rate_threshold=0.5, minimum_calls=5, max_attempts=0)
        brama.success("db")  # kept here
        brama.failure("db")  # carries it: "01" in Redis
        brama.success("db")  # sent (it resets failure_count): "010"
        brama.success("db")  # kept here: 4 calls, 1 failed
        server.pause()
        try:
            brama.failure("db")  # times out: decided here, 5 calls, 2 failed
            assert brama.status("db").state == "closed"
            brama.failure("db")  # 6 calls, 3 failed: 0.5
            status = brama.status("db")
            assert status.state == "open"
            opened, _ = wait_for_event(sub, lambda e: e.data.get("origin") == "local")
            assert (opened.data["reason"], opened.data["origin"]) == \
                ("Failure rate exceeded", "local")
            assert opened.data["failure_rate"] == 0.5
        finally:
            server.resume()


def test_a_batch_counts_once_while_it_is_sent(redis_server: RedisServer) -> None:
    """status() read in a loop while batches are sent never shows a batch twice (the
    reply and the stream entry both carry it) nor not at all."""
    with fleet(redis_server, 1) as [brama]:
        clock = FlushClock(brama)
        brama.register("db", failure_rate_threshold=0.5)
        expected = 0
        for round_ in range(20):
            for _ in range(5):
                brama.success("db")
            expected += 5
            seen: set[tuple[int, int]] = set()
            stop = threading.Event()

            def read(stop: threading.Event, seen: set[tuple[int, int]]) -> None:
                while True:  # at least one read, the last one after stop was set
                    done = stop.is_set()
                    status = brama.status("db")
                    seen.add((status.total_successes, status.window_calls))
                    if done:
                        return

            reader = threading.Thread(target=read, args=(stop, seen))
            reader.start()
            clock.expire()
            assert clock.pending.wait_flushes(round_ + 1, WAIT)
            brama.drain(WAIT)  # the tail applied the flush's entry too
            stop.set()
            reader.join(WAIT)
            assert seen and seen <= {(expected, min(expected, 100))}, seen


def test_the_flusher_sends_nothing_once_stop_was_asked(redis_server: RedisServer,
                                                       client: redis.Redis) -> None:
    """stop() while the flusher is in its loop over due batches: it sends no batch
    after that (it used to send every due one, after stop()'s join could give up and
    close() had closed the link)."""
    circuits = 10
    with fleet(redis_server, 1) as [brama]:
        clock = FlushClock(brama)
        pending = clock.pending
        for i in range(circuits):
            brama.register(f"db{i}", failure_rate_threshold=0.5)
            brama.success(f"db{i}")  # kept here, in a batch
        stopper = threading.Thread(target=brama.stop)
        run = pending.run
        asked: list[bool] = []  # read here: the flusher swallows its own exceptions

        def stop_first(key: Any, op: str, *args: Any) -> Any:
            if op == "flush" and not stopper.is_alive() and not pending._stopped:
                stopper.start()  # stop() joins this thread: wait until it asked
                with pending._wake:
                    asked.append(pending._wake.wait_for(lambda: pending._stopped, WAIT))
            return run(key, op, *args)

        pending.run = stop_first
        clock.expire()  # every batch due: the flusher's first one starts stop()
        assert pending.wait_flushes(1, WAIT)
        pending._thread.join(WAIT)
        stopper.join(WAIT)
        assert not pending._thread.is_alive() and not stopper.is_alive()
        assert asked == [True]  # the flusher was in its loop when stop() asked
        assert [stored_of(client, brama, f"db{i}")["total_successes"]
                for i in range(circuits)] == [0] * circuits


WAIT_MS = int(WAIT * 1000)


class _Gate:
    """Holds each round trip of a windowed circuit's steps until the test opens it, and
    records which slot lock each step queued on and how many were in flight at once."""

    def __init__(self, system: Brama, monkeypatch: pytest.MonkeyPatch) -> None:
        authority = system._authority  # type: ignore[union-attr]
        self._cond = threading.Condition()
        self.queued: list[object] = []  # the slot each step waited on, in order
        self.entered = 0
        self.in_flight = self.most = 0
        self.open = [threading.Event() for _ in range(3)]
        gate = self
        real_run = authority._run

        class SpyLock:
            def __init__(self, slot: object) -> None:
                self._slot, self._lock = slot, threading.Lock()

            def acquire(self, timeout: float = -1) -> bool:
                with gate._cond:
                    gate.queued.append(self._slot)
                    gate._cond.notify_all()
                return self._lock.acquire(timeout=timeout)

            def release(self) -> None:
                self._lock.release()

        class SpySlot(_pending._Slot):
            __slots__ = ()

            def __init__(self) -> None:
                super().__init__()
                self.send = SpyLock(self)  # type: ignore[assignment]

        def run(op: str, key: Any, args: dict[str, Any], **extra: Any) -> Any:
            with gate._cond:
                index = gate.entered
                gate.entered += 1
                gate.in_flight += 1
                gate.most = max(gate.most, gate.in_flight)
                gate._cond.notify_all()
            try:
                assert gate.open[index].wait(WAIT)
                return real_run(op, key, args, **extra)
            finally:
                with gate._cond:
                    gate.in_flight -= 1

        monkeypatch.setattr(_pending, "_Slot", SpySlot)
        monkeypatch.setattr(authority, "_run", run)

    def wait(self, what: Any) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: what(self), WAIT)


def test_a_step_waiting_for_the_one_in_flight_keeps_the_circuit_serialised(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """One system, three failures of one windowed circuit from three threads: the
    second waits for the first in flight; when the first ends, the circuit's send lock
    stays (a step still waits for it), so the third queues behind the second instead
    of running next to it on a new lock: never two steps of one circuit in flight."""
    # A step waits for the one in flight at most fleet_timeout: long enough here.
    with fleet(redis_server, 1, fleet_timeout=WAIT_MS) as [brama]:
        FlushClock(brama)
        brama.register("db", failure_rate_threshold=0.9, minimum_calls=100, max_attempts=0)
        gate = _Gate(brama, monkeypatch)
        threads = [threading.Thread(target=brama.failure, args=("db",)) for _ in range(3)]
        try:
            threads[0].start()
            gate.wait(lambda g: g.entered == 1)  # the first is in flight
            threads[1].start()
            gate.wait(lambda g: len(g.queued) == 2)  # the second waits for it
            gate.open[0].set()
            threads[0].join(WAIT)
            gate.wait(lambda g: g.entered == 2)  # the second is in flight
            threads[2].start()
            gate.wait(lambda g: len(g.queued) == 3)
            assert gate.queued[2] is gate.queued[1]  # behind the second, on its lock
        finally:
            for opened in gate.open:
                opened.set()
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        assert gate.most == 1
        assert brama.status("db").total_failures == 3
