"""Circuits shared by a fleet (API.md section 16) on a real Redis: several systems in one
process stand for several machines. No sleeps: waits are on events, stream positions and
futures, each with a timeout."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import brama_actors
from brama_actors import (
    AlreadyRegistered,
    Brama,
    CircuitOpenError,
    ConnectionNotFound,
    FleetStatus,
    InvalidConfiguration,
    telemetry,
)
from brama_actors._authority._fleet import _authority as fleet_authority
from tests.fleet_helpers import WAIT, converge, fleet, namespace, take, wait_for_event
from tests.redis_server import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the session's Redis (for looking at what the fleet wrote)."""
    plain = redis_server.client()
    yield plain
    plain.close()


# -- options -----------------------------------------------------------------------------

@pytest.mark.parametrize(("fleet_arg", "options"), [
    ("http://localhost:6379", {}),
    ("redis://host:notaport/0", {}),
    (42, {}),
    ("redis://localhost:6379/0", {"fleet_namespace": ""}),
    ("redis://localhost:6379/0", {"fleet_namespace": "a{b}"}),
    ("redis://localhost:6379/0", {"fleet_namespace": 7}),
    ("redis://localhost:6379/0", {"fleet_timeout": 0}),
    ("redis://localhost:6379/0", {"fleet_timeout": True}),
    ("redis://localhost:6379/0", {"fleet_timeout": 2.5}),
    ("redis://localhost:6379/0", {"when_unreachable": "panic"}),
    ("redis://localhost:6379/0", {"stale_after": 100}),  # only with "hold"
    ("redis://localhost:6379/0", {"when_unreachable": "hold", "when_stale": "maybe"}),
    ("redis://localhost:6379/0", {"when_unreachable": "hold", "stale_after": 0}),
    ("redis://localhost:6379/0", {"failure_rate_threshold": 1.5}),
    ("redis://localhost:6379/0", {"slow_call_rate_threshold": 0.5}),  # no duration
])
def test_bad_fleet_options_raise_invalid_configuration(fleet_arg: Any,
                                                       options: dict[str, Any]) -> None:
    """A bad URL, client or fleet option, or a bad rate rule, is refused before anything
    starts."""
    before = set(threading.enumerate())
    with pytest.raises(InvalidConfiguration):
        Brama.start(fleet=fleet_arg, **options)
    assert set(threading.enumerate()) <= before


def test_a_redis_py_older_than_8_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call's deadline needs redis-py 8's read_response(timeout=...): an older
    redis-py is refused at start with a clear message, not a TypeError on a call."""
    import redis

    monkeypatch.setattr(redis, "__version__", "7.4.0")
    with pytest.raises(InvalidConfiguration, match=r"redis-py 8\.0 or later"):
        Brama.start(fleet="redis://localhost:6379/0")


def test_fleet_options_need_fleet_and_refuse_a_clock(redis_server: RedisServer) -> None:
    """fleet_* options without fleet=, and clock= with fleet=, are refused."""
    from brama_actors.testing import ManualClock

    with pytest.raises(InvalidConfiguration, match="fleet_namespace"):
        Brama.start(fleet_namespace="x")
    with pytest.raises(InvalidConfiguration, match="clock"):
        Brama.start(fleet=redis_server.url, clock=ManualClock())


def test_importing_and_local_systems_do_not_load_redis() -> None:
    """redis is imported only when fleet= is used."""
    import subprocess
    import sys

    code = ("import sys, brama_actors\n"
            "brama_actors.Brama.start().stop()\n"
            "print('redis' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False", done.stdout + done.stderr


def test_fleet_status_and_a_given_client_left_open(redis_server: RedisServer) -> None:
    """fleet_status() is None without a fleet, connected with one; stop() does not close
    a redis.Redis it was given."""
    with Brama.start() as local:
        assert local.fleet_status() is None
    given = redis_server.client()
    ns = namespace()
    brama = Brama.start(fleet=given, fleet_namespace=ns)
    status = brama.fleet_status()
    assert isinstance(status, FleetStatus)
    assert status.connected and status.namespace == ns and status.since > 0
    brama.register("db")
    brama.stop()
    assert given.ping()
    assert given.exists("{" + ns + "}:c:" + '["db",null]') == 1
    given.close()


def test_json_only_metadata_and_reason(redis_server: RedisServer,
                                       client: redis.Redis) -> None:
    """Metadata and reasons that are not JSON raise TypeError and record nothing."""
    with fleet(redis_server, 1) as [brama]:
        ns = brama.fleet_status().namespace  # type: ignore[union-attr]
        with pytest.raises(TypeError, match="JSON"):
            brama.register("db", metadata={"when": object()})
        assert not brama.available("db")
        brama.register("db", metadata={"nested": {"ids": [1, 2], "none": []}})
        before = brama.status("db")
        stream_length = client.xlen("{" + ns + "}:events")
        with pytest.raises(TypeError, match="JSON"):
            brama.failure("db", reason=object())
        with pytest.raises(TypeError, match="JSON"):
            brama.failure("db", metadata={"x": {1, 2}})
        with pytest.raises(TypeError, match="JSON"):
            brama.open_circuit("db", reason=float("nan"))
        assert brama.status("db") == before
        assert client.xlen("{" + ns + "}:events") == stream_length
        # What went in comes back exactly (metadata never passes through cjson).
        assert dict(brama.status("db").metadata) == {"nested": {"ids": [1, 2], "none": []}}
        raw = client.hget("{" + ns + "}:c:" + '["db",null]', "status")
        assert raw is not None and b"pickle" not in raw


REASONS = [123456789012345, 0.1 + 0.2, [], {"codes": [], "retry": {"after": 1.5e-7}},
           True, 12, "\x00r", None]


def test_reasons_reach_every_system_exactly(redis_server: RedisServer,
                                            client: redis.Redis) -> None:
    """A reason comes back as it went in, on every system: the script never decodes it
    (cjson would round 123456789012345 to 1.2345678901234e+14 and 0.1 + 0.2 to 0.3, and
    turn [] into {})."""
    with fleet(redis_server, 2) as [a, b]:
        ns = a.fleet_status().namespace  # type: ignore[union-attr]
        subs = [system.subscribe(events=["failure", "circuit_opened", "circuit_closed",
                                         "circuit_reset"]) for system in (a, b)]
        a.register("db", max_attempts=1000)
        for reason in REASONS:
            a.failure("db", reason=reason)
        a.open_circuit("db", reason=[])
        a.close_circuit("db", reason={"by": []})
        a.reset_circuit("db", reason=0.1 + 0.2)
        converge([a, b], client, ns)
        expected = [*REASONS, [], {"by": []}, 0.1 + 0.2]
        for sub in subs:
            got = [event.data["reason"] for event in take(sub)]
            assert got == expected
            assert [type(r) for r in got] == [type(r) for r in expected]


# -- one circuit for the whole fleet --------------------------------------------------------

def test_concurrent_failures_from_many_systems_open_the_circuit_once(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """N systems x concurrent failure(): one opening, one circuit_opened per subscriber
    per system, every event with the same id and timestamp on every system."""
    with fleet(redis_server, 4) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        subs = [[s.subscribe(), s.subscribe(events=["circuit_opened"])] for s in systems]
        systems[0].register("db", max_attempts=5, expiry=60_000)
        converge(systems, client, ns)
        start = threading.Barrier(len(systems) * 3)

        def hammer(system: Brama) -> None:
            start.wait(WAIT)
            for _ in range(10):
                system.failure("db", reason="boom")

        threads = [threading.Thread(target=hammer, args=(s,)) for s in systems for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        converge(systems, client, ns)
        streams = []
        for system, (every, opened) in zip(systems, subs, strict=True):
            status = system.status("db")
            assert status.state == "open" and status.total_failures == 120
            assert status.failure_count == 120
            assert not system.available("db")
            assert len(take(opened)) == 1
            events = take(every)
            kinds = Counter(e.event.value for e in events)
            assert kinds["circuit_opened"] == 1 and kinds["state_change"] == 1
            assert kinds["failure"] == 120
            opening = [e for e in events if e.event == "failure" and e.data["state"] == "open"]
            assert opening[0].data["failure_count"] == 5  # the 5th failure opened it
            streams.append([(e.id, e.timestamp, e.event, dict(e.data)) for e in events])
        assert all(stream == streams[0] for stream in streams)
        assert len({event[0] for event in streams[0]}) == len(streams[0])


def test_failure_is_read_your_writes_and_other_systems_converge(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """After failure() returns, available() and status() here reflect it; elsewhere
    the replica converges from the stream."""
    with fleet(redis_server, 3, max_attempts=1) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b, c = systems
        a.register("db", scope="eu")
        converge(systems, client, ns)
        assert b.available("db", scope="eu") and not b.available("db")
        b.failure("db", scope="eu")
        assert not b.available("db", scope="eu")
        assert b.status("db", scope="eu").state == "open"
        converge(systems, client, ns)
        for system in systems:
            assert not system.available("db", scope="eu")
            assert [s.identifier for s in system.connections(scope="eu")] == ["db"]
        c.reset_circuit("db", scope="eu")
        converge(systems, client, ns)
        assert all(s.available("db", scope="eu") for s in systems)


def test_register_adopts_the_fleets_circuit_and_unregister_is_fleet_wide(
        redis_server: RedisServer, client: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    """A second system registering adopts the fleet's settings silently (a WARNING for
    differences); the same system twice raises; unregister removes it everywhere."""
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        sub = b.subscribe()
        a.register("db", max_attempts=3, metadata={"team": "core"})
        converge(systems, client, ns)
        assert [e.event.value for e in take(sub)] == ["registration", "connection_registered"]
        with caplog.at_level(logging.WARNING, logger="brama_actors"):
            status = b.register("db", max_attempts=9)
        assert status.max_attempts == 3 and dict(status.metadata) == {"team": "core"}
        assert "other settings" in caplog.text
        with pytest.raises(AlreadyRegistered):
            a.register("db")
        with pytest.raises(AlreadyRegistered):
            b.register("db")
        converge(systems, client, ns)
        assert take(sub) == []  # adopting emits nothing
        assert b.unregister("db") is True
        assert b.unregister("db") is False
        converge(systems, client, ns)
        assert [e.event.value for e in take(sub)] == ["connection_unregistered",
                                                      "connection_removed"]
        for system in systems:
            assert not system.available("db")
            with pytest.raises(ConnectionNotFound):
                system.status("db")
        a.register("db")  # registered again, through the system that had it
        converge(systems, client, ns)
        assert b.status("db").max_attempts == 5


def test_a_quiet_success_costs_no_round_trip_and_is_delivered_here_only(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """success() on a closed circuit with no failures sends nothing to Redis; its event
    reaches only this system's subscribers; a success after a failure is one step."""
    with fleet(redis_server, 2) as systems:
        for system in systems:
            # Test time stops the tickers' lease renewals, the only other EVALSHAs the
            # server-wide count below would see (they made this test flake).
            system._authority.fixed_now = lambda: int(time.time() * 1000)  # type: ignore[union-attr]
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        sub_a, sub_b = a.subscribe(events=["success"]), b.subscribe(events=["success"])
        a.register("db")
        converge(systems, client, ns)
        calls = _evalsha_calls(client)
        for _ in range(100):
            a.success("db")
        assert _evalsha_calls(client) == calls
        assert a.status("db").total_successes == 100
        converge(systems, client, ns)
        assert len(take(sub_a)) == 100 and take(sub_b) == []
        a.failure("db")
        a.success("db")  # not quiet any more: one step, seen everywhere
        assert _evalsha_calls(client) == calls + 2
        converge(systems, client, ns)
        assert len(take(sub_a)) == 1 and len(take(sub_b)) == 1
        assert b.status("db").failure_count == 0


def _evalsha_calls(client: redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


# -- expiry ---------------------------------------------------------------------------------

def test_one_expiry_per_opening_fleet_wide(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Several systems, one opening: exactly one expiry transition, delivered with the
    same id on every system, never before the deadline (Redis TIME). How late it is, is
    a benchmark figure, not a unit-test assertion (2 shared cores)."""
    with fleet(redis_server, 3) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        subs = [s.subscribe() for s in systems]
        systems[0].register("db", max_attempts=1, expiry=150)
        systems[1].failure("db")
        seen = []
        for sub in subs:
            _, events = wait_for_event(sub, lambda e: e.event == "circuit_half_opened")
            seen.append(events)
        converge(systems, client, ns)
        ids = []
        for sub, first in zip(subs, seen, strict=True):
            events = first + take(sub)
            expiries = [e for e in events if e.event == "expiry"]
            assert len(expiries) == 1
            assert Counter(e.event.value for e in events)["circuit_half_opened"] == 1
            ids.append(expiries[0].id)
            deadline = expiries[0].data["opened_at"] + expiries[0].data["expiry"]
            assert expiries[0].timestamp >= deadline
        assert len(set(ids)) == 1
        assert all(s.status("db").state == "half_open" for s in systems)


def test_an_overdue_circuit_expires_lazily_before_the_next_step(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Without any ticker (test time), a step on an overdue circuit applies its expiry
    first, as its own entry: a failure then re-opens it from half_open."""
    now = [1_900_000_000_000]
    with fleet(redis_server, 1) as [brama]:
        brama._authority.fixed_now = lambda: now[0]  # type: ignore[union-attr]
        sub = brama.subscribe()
        brama.register("db", max_attempts=1, expiry=100)
        brama.failure("db")
        now[0] += 100
        brama.failure("db", reason="again")
        brama.drain(WAIT)
        kinds = [e.event.value for e in take(sub)]
        assert kinds[-6:] == ["expiry", "circuit_half_opened", "state_change",
                              "failure", "circuit_opened", "state_change"]
        status = brama.status("db")
        assert status.state == "open" and status.opened_at == now[0]


# -- half-open permits ------------------------------------------------------------------------

def _half_open(systems: list[Brama], client: redis.Redis, ns: str, now: list[int],
               **options: Any) -> None:
    for system in systems:
        system._authority.fixed_now = lambda: now[0]  # type: ignore[union-attr]
    systems[0].register("db", max_attempts=1, expiry=100, **options)
    systems[0].failure("db")
    now[0] += 100
    systems[0]._authority.tick_now()  # type: ignore[union-attr]
    converge(systems, client, ns)
    assert all(s.status("db").state == "half_open" for s in systems)


def test_half_open_permits_are_fleet_wide(redis_server: RedisServer,
                                          client: redis.Redis) -> None:
    """half_open_max_calls=2 admits two trials across the whole fleet, not per system."""
    now = [1_900_000_000_000]
    with fleet(redis_server, 3) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        _half_open(systems, client, ns, now, half_open_max_calls=2)
        blocks = [s.guard("db") for s in systems]
        blocks[0].__enter__()
        blocks[1].__enter__()
        with pytest.raises(CircuitOpenError) as refused:
            blocks[2].__enter__()
        assert refused.value.retry_after == 0
        blocks[1].__exit__(None, None, None)  # a trial succeeded: closed fleet-wide
        converge(systems, client, ns)
        assert all(s.status("db").state == "closed" for s in systems)
        blocks[0].__exit__(None, None, None)
        assert systems[2].status("db").total_rejections == 1


def test_a_caller_told_closed_by_redis_sees_closed_before_its_tail_does(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """A system whose replica still shows half_open asks Redis for a permit, hears the
    circuit is closed (another system's trial closed it) and admits a normal call: its
    replica takes that answer at once, not only when its tail reads the entry; the
    closing's events still arrive once, from the stream."""
    now = [1_900_000_000_000]
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        _half_open(systems, client, ns, now)
        sub = b.subscribe(events=["circuit_closed"], connection="db")
        tail = b._authority.tail  # type: ignore[union-attr]
        original = tail._entry
        gate = threading.Event()

        def held(raw_id: str, fields: dict[str, str]) -> bool:
            assert gate.wait(WAIT)
            return bool(original(raw_id, fields))

        tail._entry = held  # b's replica now lags until the gate opens
        try:
            with a.guard("db"):
                pass  # a's trial succeeds: closed in Redis
            assert b.status("db").state == "half_open"
            with b.guard("db"):
                assert b.status("db").state == "closed"
        finally:
            gate.set()
        converge(systems, client, ns)
        assert [e.event for e in take(sub)] == ["circuit_closed"]


def test_a_trial_from_before_a_reopening_cannot_close_the_circuit(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Trials are fenced by the circuit's generation: a stale trial's success changes
    nothing after the circuit re-opened and half-opened again."""
    now = [1_900_000_000_000]
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        _half_open(systems, client, ns, now)
        stale = a.guard("db")
        stale.__enter__()
        b.open_circuit("db", expiry=50)  # re-opened meanwhile
        now[0] += 50
        b._authority.tick_now()  # type: ignore[union-attr]
        converge(systems, client, ns)
        assert a.status("db").state == "half_open"
        stale.__exit__(None, None, None)  # void: its period is over
        converge(systems, client, ns)
        assert all(s.status("db").state == "half_open" for s in systems)
        with b.guard("db"):  # the new period's permit is free
            pass
        converge(systems, client, ns)
        assert a.status("db").state == "closed"


def test_a_dead_holders_permit_comes_back_when_its_lease_ends(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """A permit whose holder never reports (a dead machine) is given back after its
    lease (30 s without half_open_timeout), by the fleet's clock."""
    now = [1_900_000_000_000]
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        _half_open(systems, client, ns, now)
        a.guard("db").__enter__()  # and never exits: its holder "died"
        with pytest.raises(CircuitOpenError):
            b.guard("db").__enter__()
        now[0] += fleet_authority.DEFAULT_LEASE_MS - 1
        with pytest.raises(CircuitOpenError):
            b.guard("db").__enter__()
        now[0] += 1
        with b.guard("db"):
            pass
        assert b.status("db").state == "closed"


# -- the stream -----------------------------------------------------------------------------

def test_a_gap_in_the_stream_makes_a_system_load_a_snapshot(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Entries a system missed that the stream no longer has show as a gap in ver: the
    catch-up from the stream cannot continue the sequence, so it loads a snapshot and
    converges, without delivering anything twice, and says how many it missed
    (telemetry ("brama", "fleet", "gap"); test_fleet_gap.py covers the catch-up)."""
    gaps: list[tuple[Any, Any]] = []
    telemetry.attach("gap-test", ("brama", "fleet", "gap"),
                     lambda _name, measurements, metadata: gaps.append(
                         (dict(measurements), dict(metadata))))
    try:
        with fleet(redis_server, 2) as systems:
            ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
            a, b = systems
            sub = b.subscribe(events=["circuit_opened"])
            a.register("db", max_attempts=1)
            converge(systems, client, ns)
            client.hincrby("{" + ns + "}:meta", "ver", 5)  # as if 5 entries were trimmed
            a.failure("db")
            converge(systems, client, ns)
            assert b.status("db").state == "open"
            assert take(sub) == []  # that entry came after the gap: not delivered here
            # The 5 "trimmed" entries and the one after them, which cannot be delivered
            # once the sequence broke (reported by each system's tail).
            assert [m for m, _ in gaps] == [{"missed": 6}] * len(gaps) and gaps
            assert all(meta == {"namespace": ns, "reason": "trimmed"} for _, meta in gaps)
            a.close_circuit("db")
            converge(systems, client, ns)
            assert b.status("db").state == "closed"
    finally:
        telemetry.detach("gap-test")


def test_stop_leaves_no_thread_and_no_connection(redis_server: RedisServer,
                                                 client: redis.Redis) -> None:
    """A stopped fleet system leaves no thread of its own and closes its connections."""
    before = {t.name for t in threading.enumerate()}
    clients_before = len(client.client_list())
    with fleet(redis_server, 2) as systems:
        systems[0].register("db")
        assert len(client.client_list()) > clients_before
    assert {t.name for t in threading.enumerate()} <= before
    # The server sees a closed socket on its next event loop turn: ask until it has.
    deadline = time.monotonic() + WAIT
    while len(client.client_list()) > clients_before and time.monotonic() < deadline:
        pass
    assert len(client.client_list()) == clients_before
    assert brama_actors  # the module is what the systems came from
