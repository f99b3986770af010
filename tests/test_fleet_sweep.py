"""Inactive cleanup on a fleet (API.md section 16, docs/fleet.md): fleet-wide, by the
last activity anywhere in the fleet, on a real Redis. Time is the test seam's fixed now,
except in the one test that lets the ticker's thread sweep by itself."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from brama_actors import Brama, ConnectionNotFound
from tests.fleet_helpers import converge, fleet, namespace, take, wait_for_event
from tests.redis_server import RedisServer

THRESHOLD = 1_000
OPTIONS = {"inactive_threshold": THRESHOLD, "cleanup_interval": 100}
START = 1_900_000_000_000


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the session's Redis."""
    plain = redis_server.client()
    yield plain
    plain.close()


def _setup(systems: list[Brama], client: redis.Redis, ns: str, now: list[int],
           holder: int) -> None:
    """Fix every system's now; make ``systems[holder]`` the only ticker lease holder."""
    for system in systems:
        system._authority.fixed_now = lambda: now[0]  # type: ignore[union-attr]
    client.delete("{" + ns + "}:ticker")
    systems[holder]._authority.ticker._lease()  # type: ignore[union-attr]
    for i, system in enumerate(systems):
        ticker = system._authority.ticker  # type: ignore[union-attr]
        if i != holder:
            ticker._lease()
        assert ticker.holder == (i == holder)


def _exists(systems: list[Brama], name: str) -> list[bool]:
    found = []
    for system in systems:
        try:
            system.status(name)
            found.append(True)
        except ConnectionNotFound:
            found.append(False)
    return found


def test_an_idle_circuit_is_removed_fleet_wide_once(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Idle beyond inactive_threshold on every system: removed from Redis and every
    replica by one sweep, ``cleanup`` then ``connection_removed`` (reason "inactive")
    delivered exactly once to each subscriber of each system; not a millisecond early."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 3, ns, **OPTIONS) as systems:
        _setup(systems, client, ns, now, holder=0)
        subs = [s.subscribe() for s in systems] + [systems[1].subscribe()]
        systems[2].register("db")
        systems[2].register("kept")
        converge(systems, client, ns)
        now[0] += THRESHOLD - 1
        systems[1].failure("kept")  # activity on another circuit
        now[0] += 1  # idle exactly inactive_threshold: kept (as the local sweep)
        systems[0]._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert _exists(systems, "db") == [True] * 3
        for sub in subs:
            take(sub)
        now[0] += 1
        systems[0]._authority.sweep_now()  # type: ignore[union-attr]
        systems[0]._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert _exists(systems, "db") == [False] * 3
        assert _exists(systems, "kept") == [True] * 3
        for sub in subs:
            events = take(sub)
            assert [e.event.value for e in events] == ["cleanup", "connection_removed"]
            assert all(e.data["reason"] == "inactive" and e.connection == "db"
                       for e in events)
            assert events[0].data["state"] == "closed"
        tag = "{" + ns + "}"
        assert client.zscore(tag + ":activity", '["db",null]') is None
        assert client.sismember(tag + ":circuits", '["db",null]') == 0
        assert client.zscore(tag + ":activity", '["kept",null]') is not None
        # Registered again: a new circuit, with its own activity.
        systems[1].register("db")
        converge(systems, client, ns)
        assert _exists(systems, "db") == [True] * 3


def test_an_open_circuit_idle_beyond_the_threshold_is_removed(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """As the local sweep: any state, open included (its opening is activity)."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 2, ns, **OPTIONS) as systems:
        _setup(systems, client, ns, now, holder=1)
        sub = systems[0].subscribe()
        systems[0].register("db", max_attempts=1, expiry=10 * THRESHOLD)
        systems[0].failure("db")
        converge(systems, client, ns)
        take(sub)
        now[0] += THRESHOLD + 1
        systems[1]._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        events = take(sub)
        assert [(e.event.value, e.data["state"]) for e in events] == [
            ("cleanup", "open"), ("connection_removed", "open")]
        assert _exists(systems, "db") == [False, False]
        assert client.zcard("{" + ns + "}:deadlines") == 0


def test_quiet_successes_on_one_system_keep_the_circuit_everywhere(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Successes that never reach Redis as steps (closed, no failures, no rate window)
    on one system only, reported as activity: no system loses the circuit; once they
    stop, it goes after inactive_threshold."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 3, ns, **OPTIONS) as systems:
        _setup(systems, client, ns, now, holder=0)
        systems[0].register("db")
        converge(systems, client, ns)
        for _ in range(4):
            now[0] += 600
            systems[2].success("db")  # quiet: no step
            systems[2]._authority.sweep_now()  # type: ignore[union-attr]
            systems[0]._authority.sweep_now()  # type: ignore[union-attr]
            converge(systems, client, ns)
            assert _exists(systems, "db") == [True] * 3
        now[0] += THRESHOLD
        systems[2]._authority.sweep_now()  # type: ignore[union-attr]
        systems[0]._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert _exists(systems, "db") == [True] * 3
        now[0] += 1
        systems[0]._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert _exists(systems, "db") == [False] * 3


def _calls(client: redis.Redis, command: str) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_activity_reports_cost_one_command_per_report(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """10,000 quiet successes over 100 circuits, reported 5 times: 5 ZADD in all (one per
    report, however many circuits and successes), no script call."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 2, ns, **OPTIONS) as systems:
        _setup(systems, client, ns, now, holder=0)
        names = [f"svc{i}" for i in range(100)]
        for name in names:
            systems[0].register(name)
        converge(systems, client, ns)
        zadd, evalsha = _calls(client, "zadd"), _calls(client, "evalsha")
        quiet = systems[1]
        for _ in range(5):
            now[0] += 10
            for _ in range(20):
                for name in names:
                    quiet.success(name)
            assert quiet._authority.sweeper.report() == len(names)  # type: ignore[union-attr]
        assert quiet._authority.sweeper.report() == 0  # type: ignore[union-attr]
        assert _calls(client, "zadd") - zadd == 5
        assert _calls(client, "evalsha") == evalsha
        scores = client.zmscore("{" + ns + "}:activity", [f'["{n}",null]' for n in names])
        assert set(scores) == {float(now[0])}


def test_the_non_holder_does_not_sweep(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Only the ticker lease holder sweeps: another system, its sweep due, only reports."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 2, ns, **OPTIONS) as systems:
        _setup(systems, client, ns, now, holder=1)
        systems[0].register("db")
        converge(systems, client, ns)
        now[0] += THRESHOLD + 1
        other = systems[0]._authority  # type: ignore[union-attr]
        other.sweep_now()
        other.sweeper._sweep_at = other.sweeper._report_at = 0
        other.sweeper.run_due(other.ticker.holder)
        converge(systems, client, ns)
        assert _exists(systems, "db") == [True, True]
        systems[1]._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert _exists(systems, "db") == [False, False]


def test_the_ticker_thread_sweeps_by_itself(redis_server: RedisServer,
                                            client: redis.Redis) -> None:
    """Real time, no seam: the holder's thread sweeps every cleanup_interval; the
    events reach every system's subscriber once."""
    ns = namespace()
    with fleet(redis_server, 2, ns, inactive_threshold=50, cleanup_interval=20) as systems:
        subs = [s.subscribe() for s in systems]
        systems[0].register("db")
        seen = []
        for sub in subs:
            _, events = wait_for_event(sub, lambda e: e.event.value == "connection_removed")
            seen.append(events)
        converge(systems, client, ns)
        for sub, events in zip(subs, seen, strict=True):
            kinds = Counter(e.event.value for e in events + take(sub))
            assert kinds["cleanup"] == 1 and kinds["connection_removed"] == 1
        assert _exists(systems, "db") == [False, False]


def test_quiet_successes_of_a_windowed_circuit_count_as_activity(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """A rate window's quiet successes reach Redis in their batch (a step): that is
    activity too, without any report."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 2, ns, **OPTIONS) as systems:
        _setup(systems, client, ns, now, holder=0)
        pending = systems[1]._authority.pending  # type: ignore[union-attr]
        mono = [0.0]
        pending._monotonic = lambda: mono[0]
        systems[0].register("db", failure_rate_threshold=0.5, minimum_calls=100)
        converge(systems, client, ns)
        now[0] += 600
        systems[1].success("db")  # quiet, batched
        mono[0] += 10.0
        with pending._wake:
            pending._wake.notify_all()
        assert pending.wait_flushes(1, 10.0)
        assert client.zscore("{" + ns + "}:activity", '["db",null]') == now[0]
        now[0] += 600
        systems[0]._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert _exists(systems, "db") == [True, True]
        now[0] += 401
        systems[0]._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert _exists(systems, "db") == [False, False]


def test_adopting_a_circuit_is_activity(redis_server: RedisServer,
                                        client: redis.Redis) -> None:
    """A system that registers (adopts) a circuit the fleet already has keeps it from
    being swept as idle: registering is activity, as locally."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 2, ns, **OPTIONS) as systems:
        a, b = systems
        _setup(systems, client, ns, now, holder=0)
        a.register("db")
        converge(systems, client, ns)
        now[0] += THRESHOLD - 10
        b.register("db")  # adopted 10 ms before a's registration is THRESHOLD old
        now[0] += 11
        a._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert _exists(systems, "db") == [True, True]
        now[0] += THRESHOLD
        a._authority.sweep_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert _exists(systems, "db") == [False, False]


def test_a_large_sweep_runs_one_call_per_turn(redis_server: RedisServer,
                                              client: redis.Redis) -> None:
    """The holder's thread removes at most SWEEP_LIMIT circuits per turn and comes back
    for the rest (the lease, expiries and stop() never wait for a whole sweep)."""
    from brama_actors._authority._fleet._sweep import SWEEP_LIMIT

    ns = namespace()
    now = [START]
    with fleet(redis_server, 1, ns, **OPTIONS) as (a,):
        _setup([a], client, ns, now, holder=0)
        for i in range(SWEEP_LIMIT + 5):
            a.register(f"c{i}")
        now[0] += THRESHOLD + 1
        sweeper = a._authority.sweeper  # type: ignore[union-attr]
        last, more = sweeper.sweep(now[0], calls=1)
        assert last and more
        assert client.scard("{" + ns + "}:circuits") == 5
        last, more = sweeper.sweep(now[0], calls=1)
        assert last and not more
        assert client.scard("{" + ns + "}:circuits") == 0


def test_a_new_cleanup_interval_counts_from_the_configure(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """configure(cleanup_interval=...) reschedules the holder's next sweep from then, as
    a local system does (not after the sweep the old interval had scheduled)."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 1, ns, inactive_threshold=THRESHOLD,
               cleanup_interval=3_600_000) as (a,):
        a._authority.fix_time(lambda: now[0])  # type: ignore[union-attr]
        a.register("db")
        now[0] += THRESHOLD + 1
        a.configure(cleanup_interval=100)
        now[0] += 99
        a._authority.tick_now()  # type: ignore[union-attr]
        assert _exists([a], "db") == [True]
        now[0] += 1
        a._authority.tick_now()  # type: ignore[union-attr]
        assert _exists([a], "db") == [False]


def test_configure_and_manual_ops_that_change_no_state_are_not_activity(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Activity is what API.md section 3 names (registration, last success or failure,
    state change), as on a local system: a configure, a reset of a closed circuit and
    an open_circuit on an open one keep no circuit from the sweep."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 1, ns, **OPTIONS) as (a,):
        _setup([a], client, ns, now, holder=0)
        a.register("closed")
        a.register("opened")
        a.open_circuit("opened", expiry=10 * THRESHOLD)
        now[0] += THRESHOLD - 10
        a.configure("closed", expiry=200)
        a.reset_circuit("closed")  # closed already: circuit_reset, no state change
        a.open_circuit("opened", expiry=10 * THRESHOLD)  # restarts the opening only
        assert a.status("opened").state_changed_at == START
        now[0] += 11
        a._authority.sweep_now()  # type: ignore[union-attr]
        converge([a], client, ns)
        assert _exists([a], "closed") == [False]
        assert _exists([a], "opened") == [False]


def test_a_batch_of_quiet_successes_not_sent_yet_is_activity(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """A windowed circuit's quiet successes still waiting in their batch count as
    activity at the holder's sweep (its report carries them); once they are old too the
    circuit goes, and its batch with it."""
    ns = namespace()
    now = [START]
    with fleet(redis_server, 1, ns, **OPTIONS) as (a,):
        _setup([a], client, ns, now, holder=0)
        pending = a._authority.pending  # type: ignore[union-attr]
        pending._monotonic = lambda: 0.0  # the flusher never finds the batch due
        a.register("db", failure_rate_threshold=0.5, minimum_calls=100)
        now[0] += THRESHOLD - 100
        a.success("db")  # quiet, batched
        assert pending.activity() == {"db": now[0]}
        now[0] += 200
        a._authority.sweep_now()  # type: ignore[union-attr]
        converge([a], client, ns)
        assert _exists([a], "db") == [True]
        assert a.status("db").total_successes == 1
        now[0] += THRESHOLD
        a._authority.sweep_now()  # type: ignore[union-attr]
        converge([a], client, ns)
        assert _exists([a], "db") == [False]
        assert pending.activity() == {}
