"""Rate windows on a fleet meeting its recovery paths (docs/fleet.md "Rate windows" and
"Failure modes"): a windowed circuit registered while Redis is unreachable, a Redis that
comes back empty, versions that go back while a batch of quiet successes is carried.
Real redis-server; no sleeps (waits are on telemetry, stream positions and inboxes)."""

from __future__ import annotations

from typing import Any

import pytest

from brama_actors import Brama
from brama_actors._authority._fleet._codec import WindowedStatus
from tests.fleet_helpers import (
    LinkEvents,
    converge,
    fleet,
    lose_versions,
    stored_of,
    wait_for_event,
)
from tests.redis_server import RedisServer

TIMEOUT_MS = 200


def _hold_flusher(system: Brama) -> None:
    """Batches never come due by age: only a step (or a full batch) sends them."""
    system._authority.pending._monotonic = lambda: 0.0  # type: ignore[union-attr]


def test_a_circuit_registered_while_unreachable_keeps_its_rate_rule(
        link_events: LinkEvents) -> None:
    """Registered in "local" mode with only a rate rule: it decides with a window of its
    own (a rate still opens it, origin "local"); when Redis is up it is created there
    with its thresholds, the local window is dropped with the snapshot, and the fleet's
    window takes over (quiet successes batched again)."""
    with RedisServer.local() as server:
        server.kill()
        brama = Brama.start(fleet=server.url, fleet_timeout=TIMEOUT_MS)
        try:
            _hold_flusher(brama)
            sub = brama.subscribe(events=["circuit_opened", "connection_registered"])
            brama.register("db", failure_rate_threshold=0.5, minimum_calls=4,
                           max_attempts=0)
            brama.success("db")
            brama.success("db")
            brama.failure("db")
            assert brama.status("db").state == "closed"
            assert brama.status("db").window_calls == 3
            brama.failure("db")  # 2 of 4
            opened, _ = wait_for_event(sub, lambda e: e.event == "circuit_opened")
            assert (opened.data["reason"], opened.data["origin"]) == \
                ("Failure rate exceeded", "local")
            assert opened.data["failure_rate"] == 0.5
            authority: Any = brama._authority
            assert authority.pending.local  # a local window while unreachable

            server.restart()
            assert link_events.wait("restored", 1)
            wait_for_event(sub, lambda e: e.event == "connection_registered"
                           and "origin" not in e.data)
            client = server.client(decode_responses=True)
            converge([brama], client, "brama")
            in_redis = stored_of(client, brama, "db")
            assert in_redis["failure_rate_threshold"] == "0.5"  # exact, as a string
            assert not authority.pending.local  # dropped with the snapshot
            assert type(authority.replica.entries["db"].status) is WindowedStatus
            status = brama.status("db")  # the fleet's state wins: nothing replayed
            assert (status.state, status.window_calls, status.failure_rate) == \
                ("closed", 0, None)

            for _ in range(3):
                brama.success("db")  # quiet again: kept here, in a batch
            assert stored_of(client, brama, "db")["total_successes"] == 0
            brama.failure("db")  # carries them: 1 of 4
            assert stored_of(client, brama, "db").get("wo") == "0001"
            brama.failure("db")  # 2 of 5: closed
            assert brama.status("db").state == "closed"
            brama.failure("db")  # 3 of 6: opens in Redis
            status = brama.status("db")
            assert status.state == "open"
            opened, _ = wait_for_event(sub, lambda e: e.event == "circuit_opened"
                                       and "origin" not in e.data)
            assert opened.data["reason"] == "Failure rate exceeded"
            client.close()
        finally:
            brama.stop()


def test_a_redis_back_empty_recreates_a_windowed_circuit_and_its_window_works(
        link_events: LinkEvents) -> None:
    """A windowed circuit whose Redis restarts empty: decided locally meanwhile (the
    window seeded from the fleet's and the kept successes), then re-created by the
    system that registered it, with its rate rule, and shared again by both systems."""
    with RedisServer.local() as server, \
            fleet(server, 2, fleet_timeout=TIMEOUT_MS) as [a, b]:
        _hold_flusher(a)
        sub = a.subscribe(events=["circuit_opened"])
        a.register("db", failure_rate_threshold=0.5, minimum_calls=4, max_attempts=0)
        a.failure("db")
        a.success("db")  # sent (resets failure_count)
        a.success("db")  # kept here
        server.kill()
        assert link_events.wait("unreachable", 2)
        a.failure("db")  # decided here: 2 of 4 with the kept success
        opened, _ = wait_for_event(sub, lambda e: e.data.get("origin") == "local")
        assert opened.data["reason"] == "Failure rate exceeded"
        server.restart()
        assert link_events.wait("restored", 2)
        client = server.client(decode_responses=True)
        ns = a.fleet_status().namespace  # type: ignore[union-attr]
        converge([a, b], client, ns)
        assert stored_of(client, a, "db")["failure_rate_threshold"] == "0.5"
        for system in (a, b):
            status = system.status("db")
            assert (status.state, status.window_calls) == ("closed", 0)
        b.success("db")
        b.failure("db")  # carries b's success: 1 of 2
        b.success("db")
        b.failure("db")  # 2 of 4: opens, seen by both
        converge([a, b], client, ns)
        assert a.status("db").state == "open" and b.status("db").state == "open"
        client.close()


@pytest.mark.parametrize("loss", ["meta deleted", "ver lowered"])
def test_a_batch_carried_when_versions_go_back_counts_once(
        redis_server: RedisServer, loss: str) -> None:
    """The step that carries a batch of quiet successes is the one whose ver goes back:
    its reply is older than the replica's floor, the tail resyncs, and every system
    ends with the batch counted exactly once (window and totals)."""
    client = redis_server.client(decode_responses=True)
    with fleet(redis_server, 2) as systems:
        a = systems[0]
        ns = a.fleet_status().namespace  # type: ignore[union-attr]
        _hold_flusher(a)
        a.register("db", failure_rate_threshold=0.9, minimum_calls=50, max_attempts=100)
        a.failure("db")
        a.failure("db")
        a.success("db")  # sent: it resets failure_count
        for _ in range(3):
            a.success("db")  # kept here
        converge(systems, client, ns)
        lose_versions(client, ns, loss)
        a.failure("db")  # carries the batch; its ver goes back
        assert stored_of(client, a, "db")["wo"] == "1100001"
        converge(systems, client, ns)
        for system in systems:
            status = system.status("db")
            assert (status.total_successes, status.total_failures,
                    status.window_calls) == (4, 3, 7), system
        a.reset_circuit("db")  # one more step after the resync (a fresh ver)
        converge(systems, client, ns)
        for system in systems:
            status = system.status("db")
            assert (status.total_successes, status.total_failures) == (4, 3), system
            assert status.window_calls == 0  # the reset cleared it
    client.close()


def test_a_reply_that_overtakes_a_windowed_registration_keeps_its_window(
        redis_server: RedisServer) -> None:
    """b's own failure on a windowed circuit registered by a comes back before b's tail
    read the registration: the registration, older, brings the metadata and keeps the
    window the reply brought (the replica's status stays windowed, so b batches its
    quiet successes and shows the window's figures)."""
    client = redis_server.client(decode_responses=True)
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        a.register("gate", max_attempts=1)
        converge(systems, client, ns)
        held = b._authority.ticker._cond  # type: ignore[union-attr]
        with held:  # b's tail stops at the opening of "gate" (see test_fleet_recovery)
            a.failure("gate")
            a.register("db", failure_rate_threshold=0.5, minimum_calls=10,
                       max_attempts=0, metadata={"team": "core"})
            b.failure("db")  # the reply comes first
        converge(systems, client, ns)
        entry = b._authority.replica.entries["db"]  # type: ignore[union-attr]
        assert type(entry.status) is WindowedStatus
        status = b.status("db")
        assert dict(status.metadata) == {"team": "core"}
        assert (status.window_calls, status.failure_count) == (1, 1)
    client.close()
