"""The fleet when its Redis is paused, dead or unreachable (API.md section 16): calls are
bounded by fleet_timeout, "local" keeps protecting from the last fleet state, "hold"
answers from it until stale_after, and the fleet's state wins when Redis is back.

Each test starts a Redis of its own: it pauses or kills it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from brama_actors import Brama, NodeUnavailable
from brama_actors._authority._fleet._tail import stream_id
from tests.fleet_helpers import (
    WAIT,
    LinkEvents,
    converge,
    documented_acl,
    fleet,
    namespace,
    take,
    wait_for_event,
)
from tests.redis_server import RedisServer

TIMEOUT_MS = 200
#: What a bounded call may take beyond fleet_timeout on 2 shared cores.
SLACK_S = 0.4


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A Redis of this test's own."""
    with RedisServer.local() as local:
        yield local


def _timed(call: Any) -> tuple[float, Any]:
    start = time.monotonic()
    try:
        result = call()
    except Exception as exc:
        result = exc
    return time.monotonic() - start, result


def test_paused_redis_bounds_calls_and_local_mode_protects_from_the_last_state(
        server: RedisServer, link_events: LinkEvents) -> None:
    """SIGSTOP: the first call that needs Redis returns within fleet_timeout, later ones
    decide here at once with this system's rules (events origin "local"); when Redis is
    back the fleet's state wins and nothing local is replayed."""
    with fleet(server, 1, fleet_timeout=TIMEOUT_MS) as [brama]:
        sub = brama.subscribe(events=["failure", "circuit_opened", "success"])
        brama.register("db", max_attempts=2)
        brama.register("quiet")
        brama.drain(WAIT)
        take(sub, timeout=0)
        server.pause()
        try:
            elapsed, result = _timed(lambda: brama.failure("db", reason="paused"))
            assert result is None and elapsed < TIMEOUT_MS / 1000 + SLACK_S
            status = brama.fleet_status()
            assert status is not None and not status.connected
            assert link_events.unreachable.wait(WAIT)
            elapsed, result = _timed(lambda: brama.failure("db"))
            assert result is None and elapsed < 0.1  # decided here, no wait
            assert not brama.available("db")  # opened locally: 2 failures
            assert brama.status("db").state == "open"
            opened, _ = wait_for_event(sub, lambda e: e.event == "circuit_opened")
            assert opened.data["origin"] == "local"
            brama.success("quiet")  # a quiet success: decided here too
            quiet, _ = wait_for_event(sub, lambda e: e.event == "success")
            assert quiet.data["origin"] == "local" and quiet.data["state"] == "closed"
            elapsed, result = _timed(lambda: brama.available("db"))
            assert elapsed < 0.05
        finally:
            server.resume()
        assert link_events.restored.wait(WAIT)
        status = brama.fleet_status()
        assert status is not None and status.connected
        # The fleet saw at most the one failure sent before the pause was noticed (its
        # reply was lost): the fleet's state wins, the local opening is not replayed.
        fleet_status = brama.status("db")
        assert fleet_status.state == "closed" and fleet_status.failure_count <= 1
        assert brama.available("db")


def test_hold_mode_refuses_writes_and_goes_stale(server: RedisServer,
                                                link_events: LinkEvents) -> None:
    """"hold": writes raise NodeUnavailable within fleet_timeout; available() answers
    the last fleet state for stale_after ms, then when_stale."""
    with fleet(server, 1, fleet_timeout=TIMEOUT_MS, when_unreachable="hold",
               stale_after=1_000, when_stale="deny") as [brama]:
        now = [1_000.0]
        brama._authority.monotonic = lambda: now[0]  # type: ignore[union-attr]
        brama.register("db")
        server.pause()
        try:
            elapsed, result = _timed(lambda: brama.failure("db"))
            assert isinstance(result, NodeUnavailable)
            assert elapsed < TIMEOUT_MS / 1000 + SLACK_S
            assert link_events.unreachable.wait(WAIT)
            assert brama.available("db")  # the last fleet state
            now[0] += 1.001
            assert not brama.available("db")  # stale: when_stale="deny"
            assert not brama.available("unknown")
            with pytest.raises(NodeUnavailable):
                brama.open_circuit("db")
        finally:
            server.resume()
        assert link_events.restored.wait(WAIT)
        assert brama.available("db")


def test_a_redis_unreachable_at_start_is_not_an_error(server: RedisServer,
                                                      link_events: LinkEvents) -> None:
    """A system starts unconnected (bounded); in "local" mode registering works at once
    (a guard's first call too) and the circuits are created in Redis when it comes up;
    "hold" refuses to register."""
    server.kill()
    elapsed, brama = _timed(lambda: Brama.start(fleet=server.url, fleet_timeout=TIMEOUT_MS))
    assert isinstance(brama, Brama)
    held = Brama.start(fleet=server.url, fleet_timeout=TIMEOUT_MS, when_unreachable="hold")
    try:
        assert elapsed < 2 * TIMEOUT_MS / 1000 + 0.5 + SLACK_S
        status = brama.fleet_status()
        assert status is not None and not status.connected
        with pytest.raises(NodeUnavailable):
            held.register("db")
        sub = brama.subscribe(events=["connection_registered", "circuit_opened"])
        brama.register("db", max_attempts=2, metadata={"team": "core"})
        registered, _ = wait_for_event(sub, lambda e: e.event == "connection_registered")
        assert registered.data["origin"] == "local"
        with brama.guard("api", max_attempts=1):  # registered by its first call
            pass
        brama.failure("db")
        brama.failure("db")
        assert not brama.available("db")  # protected here, by this system's rules
        server.restart()
        assert link_events.wait("restored", 2)
        # Created in Redis from the options given; the local opening is not replayed.
        fleet_registered, _ = wait_for_event(
            sub, lambda e: e.event == "connection_registered" and "origin" not in e.data)
        assert fleet_registered.connection in ("db", "api")
        admin = server.client()
        assert admin.scard("{brama}:circuits") == 2
        db = brama.status("db")
        assert db.state == "closed" and db.max_attempts == 2
        assert dict(db.metadata) == {"team": "core"}
        assert brama.status("api").max_attempts == 1
        held.register("other")
        converge([brama, held], admin, "brama")
        assert held.status("db").max_attempts == 2  # the fleet has it now
    finally:
        brama.stop()
        held.stop()


def test_a_redis_that_comes_back_empty_gets_its_circuits_back(
        server: RedisServer, link_events: LinkEvents) -> None:
    """Killed and restarted empty: every system re-creates the circuits registered
    through it (with their settings and metadata, state starting over); the others
    adopt them."""
    with fleet(server, 2, fleet_timeout=TIMEOUT_MS) as [a, b]:
        sub = b.subscribe(events=["connection_registered"])
        a.register("db", max_attempts=3, metadata={"team": "core"})
        a.failure("db")
        wait_for_event(sub, lambda e: e.connection == "db")
        server.kill()
        assert link_events.wait("unreachable", 2)
        server.restart()
        # A system counts as restored once it has created again what it owes: b has
        # "db" then, from its snapshot or (if it loaded that first) from the stream.
        assert link_events.wait("restored", 2)
        admin = server.client()
        ns = a.fleet_status().namespace  # type: ignore[union-attr]
        converge([a, b], admin, ns)
        for system in (a, b):
            status = system.status("db")
            assert status.max_attempts == 3 and dict(status.metadata) == {"team": "core"}
            assert status.failure_count == 0
        b.failure("db")
        converge([a, b], admin, ns)
        assert a.status("db").failure_count == 1  # shared again


def _refuse_writes(admin: redis.Redis, fault: str) -> None:
    if fault == "oom":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
    else:  # a primary turned replica (of a dead one), as after a failover
        admin.execute_command("REPLICAOF", "127.0.0.1", "1")


def _take_writes_again(admin: redis.Redis, fault: str) -> None:
    if fault == "oom":
        admin.config_set("maxmemory", 0)
    else:
        admin.execute_command("REPLICAOF", "NO", "ONE")


@pytest.mark.parametrize("fault", ["oom", "readonly"])
def test_error_replies_are_handled_as_an_unreachable_redis(
        server: RedisServer, link_events: LinkEvents, fault: str) -> None:
    """OOM and READONLY replies reach no caller as a redis exception: "local" decides
    here (and registers here), "hold" raises NodeUnavailable; once Redis takes writes
    again the systems reconnect and the fleet's state wins."""
    admin = server.client()
    ns = namespace()
    with fleet(server, 1, ns, fleet_timeout=TIMEOUT_MS) as [local], \
            fleet(server, 1, ns, fleet_timeout=TIMEOUT_MS, when_unreachable="hold") as [held]:
        local.register("db", max_attempts=2)
        held.register("hdb")
        _refuse_writes(admin, fault)
        try:
            local.failure("db")  # refused: decided here
            local.failure("db")
            assert not local.available("db")
            status = local.fleet_status()
            assert status is not None and not status.connected
            local.register("api")  # registered here, owed to the fleet
            assert local.available("api")
            with pytest.raises(NodeUnavailable):
                held.failure("hdb")
            with pytest.raises(NodeUnavailable):
                held.register("other")
        finally:
            _take_writes_again(admin, fault)
        assert link_events.wait("restored", 2)
        converge([local, held], admin, ns)
        assert local.status("db").state == "closed"  # nothing was written: the fleet's
        assert held.available("api")  # created when Redis took writes again


def test_a_user_limited_to_the_namespace_and_the_documented_commands_is_enough(
        server: RedisServer) -> None:
    """The minimal ACL of docs/fleet.md runs every operation (no ACL log entry)."""
    admin = server.client()
    rules = documented_acl()
    assert "~{orders}:*" in rules and "-@all" in rules
    admin.execute_command("ACL", "SETUSER", "brama", *rules)
    url = server.url.replace("unix://", "unix://brama:secret@")
    now = [1_900_000_000_000]
    with _acl_fleet(url) as [a, b]:
        for system in (a, b):
            system._authority.fixed_now = lambda: now[0]  # type: ignore[union-attr]
        tail = b._authority.tail  # type: ignore[union-attr]
        original = tail._entry
        dropped: list[str] = []

        def drop_once(raw_id: str, fields: dict[str, str]) -> bool:
            if not dropped:  # b's link drops: its tail catches up with XRANGE
                dropped.append(raw_id)
                raise redis.ConnectionError("dropped")
            return bool(original(raw_id, fields))

        tail._entry = drop_once
        a.register("db", max_attempts=1, expiry=100)
        a.failure("db")
        now[0] += 100
        a._authority.tick_now()  # type: ignore[union-attr]
        with a.guard("db"):
            pass
        a.configure("db", expiry=200)
        assert a.unregister("db")
        converge([a, b], admin, "orders")
        assert dropped and tail.applied >= stream_id(dropped[0])
    assert admin.execute_command("ACL", "LOG") == []


def test_a_wake_stream_expires_when_stop_cannot_delete_it(server: RedisServer) -> None:
    """stop() wakes the tail through a stream of its own and deletes it; when the
    delete fails (here: a user without DEL), the stream still expires."""
    admin = server.client()
    rules = [rule for rule in documented_acl() if rule != "+del"]
    admin.execute_command("ACL", "SETUSER", "brama", *rules)
    url = server.url.replace("unix://", "unix://brama:secret@")
    brama = Brama.start(fleet=url, fleet_namespace="orders")
    status = brama.fleet_status()
    assert status is not None and status.connected
    brama.stop()
    wakes = list(admin.scan_iter("{orders}:wake:*"))
    assert len(wakes) == 1
    assert 0 < admin.pttl(wakes[0]) <= 60_000


def test_noscript_costs_one_more_command_and_no_fault(
        server: RedisServer, link_events: LinkEvents) -> None:
    """After SCRIPT FLUSH (a restart or failover forgets scripts) a step runs by EVAL:
    it succeeds, the link stays up, and no SCRIPT LOAD is sent."""
    admin = server.client(decode_responses=True)
    with fleet(server, 1) as [brama]:
        brama.register("db", max_attempts=5)
        admin.script_flush()
        admin.config_resetstat()
        brama.failure("db")
        brama.failure("db")
        stats: Any = admin.info("commandstats")
        assert stats["cmdstat_eval"]["calls"] == 1
        assert "cmdstat_script" not in stats
        assert brama.status("db").failure_count == 2
    assert link_events.names == []


@contextmanager
def _acl_fleet(url: str) -> Iterator[list[Brama]]:
    systems = [Brama.start(fleet=url, fleet_namespace="orders") for _ in range(2)]
    try:
        yield systems
    finally:
        for system in systems:
            system.stop()


def test_concurrent_steps_of_a_windowed_circuit_on_a_paused_redis_wait_one_timeout(
        server: RedisServer, link_events: LinkEvents) -> None:
    """A windowed circuit's steps take its send lock. Redis paused: of N concurrent
    failure() calls that all found the link up, the first waits fleet_timeout; the
    others, queued on the lock, must not each send and wait a timeout of their own in
    turn (they were 0.2, 0.4, ... 1.2 s): each returns within a bound, decided here
    ("local"), and the local window opens the circuit on its rate rule."""
    threads = 6
    with fleet(server, 1, fleet_timeout=TIMEOUT_MS) as [brama]:
        sub = brama.subscribe(events=["failure", "circuit_opened"])
        brama.register("db", failure_rate_threshold=0.5, minimum_calls=threads,
                       max_attempts=0)
        brama.drain(WAIT)
        take(sub, timeout=0)
        barrier = threading.Barrier(threads)
        results: list[tuple[float, Any]] = []
        lock = threading.Lock()

        def call() -> None:
            barrier.wait(WAIT)
            start = time.perf_counter()
            try:
                result: Any = brama.failure("db", reason="paused")
            except Exception as exc:
                result = exc
            with lock:
                results.append((time.perf_counter() - start, result))

        workers = [threading.Thread(target=call) for _ in range(threads)]
        server.pause()
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(WAIT)
            assert len(results) == threads
            assert [r for _, r in results] == [None] * threads  # none lost or raised
            slowest = max(elapsed for elapsed, _ in results)
            assert slowest < 3 * TIMEOUT_MS / 1000, sorted(e for e, _ in results)
            assert link_events.unreachable.wait(WAIT)
            # Every failure was decided here: the local window opened on the rate rule.
            status = brama.status("db")
            assert (status.state, status.total_failures) == ("open", threads)
            # In the order decided: the opening after the six failures behind it.
            seen = [sub.get(timeout=WAIT) for _ in range(threads + 1)]
            assert [e.event for e in seen] == ["failure"] * threads + ["circuit_opened"]
            assert {e.data["origin"] for e in seen} == {"local"}
            assert seen[-1].data["reason"] == "Failure rate exceeded"
        finally:
            server.resume()
        assert link_events.restored.wait(WAIT)
        # The fleet's state wins when Redis is back: nothing local is replayed.
        assert brama.status("db").total_failures <= 1


def test_stop_with_due_batches_on_a_paused_redis_leaves_no_flusher(
        server: RedisServer) -> None:
    """Many windowed circuits with due batches, Redis paused while the link is still
    believed up: stop() returns within a bound, and the flusher has ended (it used to
    send one flush per circuit, each waiting fleet_timeout, outlive stop()'s join and
    open a connection again after close())."""
    circuits = 30
    with fleet(server, 1, fleet_timeout=TIMEOUT_MS) as [brama]:
        authority: Any = brama._authority
        pending = authority.pending
        held = [0.0]
        pending._monotonic = lambda: held[0]  # batches age only when the test says
        for i in range(circuits):
            brama.register(f"db{i}", failure_rate_threshold=0.5)
            brama.success(f"db{i}")  # kept here, in a batch
        assert len(pending.slots) == circuits
        in_flight = threading.Event()
        run = authority._run

        def seen_run(op: str, *args: Any, **kwargs: Any) -> Any:
            if op == "flush":
                in_flight.set()
            return run(op, *args, **kwargs)

        authority._run = seen_run
        server.pause()
        try:
            held[0] += 10.0  # every batch due: wake the flusher
            with pending._wake:
                pending._wake.notify_all()
            assert in_flight.wait(WAIT)  # the first flush waits on the paused Redis
            start = time.perf_counter()
            brama.stop()
            elapsed = time.perf_counter() - start
            assert not pending._thread.is_alive()
            assert not [t.name for t in threading.enumerate()
                        if t.name.startswith("brama-fleet-flush") and t.is_alive()]
            assert elapsed < 3.0, elapsed  # the tail's blocked read is most of it
        finally:
            server.resume()


def test_a_circuit_registered_while_the_tail_settles_its_debts_reaches_the_fleet(
        server: RedisServer, link_events: LinkEvents) -> None:
    """Redis back: the tail creates the circuits registered here meanwhile, then marks
    the link up. One registered by a caller still in local mode while it does so must
    reach Redis too (it used to stay owed forever: its first failure() found it
    missing in Redis, and the caller got ConnectionNotFound for a circuit it
    registered)."""
    with fleet(server, 1, fleet_timeout=TIMEOUT_MS) as [brama]:
        authority: Any = brama._authority
        sub = brama.subscribe(events=["connection_registered"])
        brama.register("db")
        server.pause()
        try:
            brama.failure("db")  # times out: the link is down
            assert link_events.unreachable.wait(WAIT)
            brama.register("owed")  # local: owed to the fleet
            registered = threading.Event()
            create = authority.create

            def register_meanwhile(key: Any, *args: Any, **kwargs: Any) -> Any:
                # settle's first create: another caller, still in local mode (the link
                # is marked up only after settle), registers "late" and returns.
                if not registered.is_set():
                    registered.set()
                    late = threading.Thread(target=brama.register, args=("late",))
                    late.start()
                    late.join(WAIT)
                    assert not late.is_alive()
                return create(key, *args, **kwargs)

            authority.create = register_meanwhile
            link = authority.link
            set_connected = link.set_connected
            settled = threading.Event()

            def register_before_up(up: bool) -> None:
                # Every debt settled, the link not marked up yet: a caller still in
                # local mode registers "last" (created in Redis by that caller).
                if up and not settled.is_set():
                    settled.set()
                    last = threading.Thread(target=brama.register, args=("last",))
                    last.start()
                    last.join(WAIT)
                    assert not last.is_alive()
                set_connected(up)

            link.set_connected = register_before_up
        finally:
            server.resume()
        assert link_events.restored.wait(WAIT)
        assert registered.is_set() and settled.is_set()
        for name in ("late", "last", "owed"):
            brama.failure(name)  # "late" and "last" raised ConnectionNotFound
            assert brama.status(name).failure_count == 1
        assert not authority.offline.owed
        plain = server.client(decode_responses=True)
        members = plain.smembers("{" + authority.options.namespace + "}:circuits")
        assert {'["late",null]', '["last",null]', '["owed",null]'} <= set(members)
        # Registered while unreachable: connection_registered twice, local then fleet.
        origins = []
        while len(origins) < 2:
            event, _ = wait_for_event(sub, lambda e: e.connection == "owed")
            origins.append(event.data.get("origin"))
        assert origins == ["local", None]
