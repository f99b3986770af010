"""How a fleet recovers from what its Redis loses and from races with its own tail (API.md
section 16): versions that go back, a circuit registered again, a snapshot of many
circuits, a reply that overtakes a registration. All on the real redis-server; faults
that stop or reconfigure Redis are in test_fleet_faults.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from brama_actors import Brama
from brama_actors._authority._fleet._codec import encode_status, member
from brama_actors._authority._fleet._lua import SCRIPT
from brama_actors._config import resolve_settings
from brama_actors._rules import initial_status
from tests.fleet_helpers import converge, fleet, last_entry, lose_versions, namespace
from tests.redis_server import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the session's Redis."""
    plain = redis_server.client()
    yield plain
    plain.close()


def test_a_trial_of_an_earlier_registration_cannot_close_the_circuit(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """A permit taken before the circuit was unregistered and registered again is void:
    the half-open fence never repeats across registrations."""
    now = [1_900_000_000_000]
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        for system in systems:
            system._authority.fixed_now = lambda: now[0]  # type: ignore[union-attr]

        def half_open(system: Brama) -> None:
            system.register("db", max_attempts=1, expiry=100)
            system.failure("db")
            now[0] += 100
            system._authority.tick_now()  # type: ignore[union-attr]
            converge(systems, client, ns)
            assert all(s.status("db").state == "half_open" for s in systems)

        half_open(a)
        stale = a.guard("db")
        stale.__enter__()  # a trial permit of the first registration
        assert b.unregister("db")
        half_open(b)  # the same number of transitions as the first one
        stale.__exit__(None, None, None)
        converge(systems, client, ns)
        assert all(s.status("db").state == "half_open" for s in systems)


@pytest.mark.parametrize("loss", ["meta deleted", "ver lowered"])
def test_versions_going_back_make_every_system_load_the_fleets_state(
        redis_server: RedisServer, client: redis.Redis, loss: str) -> None:
    """Redis lost its meta hash (a DEL, an eviction) or, in a failover, its last writes:
    versions go back, and no system keeps the newer state the fleet lost."""
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a = systems[0]
        a.register("db", max_attempts=100)
        for _ in range(5):
            a.failure("db")
        converge(systems, client, ns)
        lose_versions(client, ns, loss)
        a.failure("db", reason="after the loss")  # the fleet's count: 6
        a.reset_circuit("db")
        converge(systems, client, ns)
        for system in systems:
            status = system.status("db")
            assert status.failure_count == 0 and status.total_failures == 6


def _register_many(client: redis.Redis, ns: str, count: int) -> None:
    """``count`` circuits registered by the fleet's own script, pipelined."""
    script = client.register_script(SCRIPT)
    tag = "{" + ns + "}"
    settings = resolve_settings({})
    for start in range(0, count, 2_000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(start + 2_000, count)):
            name = f"c{n}"
            status = encode_status(initial_status(name, None, "http", settings, None, 0),
                                   settings)
            circuit = f"{tag}:c:{member(name)}"
            keys = [circuit, f"{tag}:events", f"{tag}:meta", f"{tag}:deadlines",
                    circuit + ":permits", f"{tag}:circuits"]
            args: dict[str, Any] = {"status": status, "member": member(name)}
            script(keys=keys, args=["register", "", json.dumps(args), "", "{}", "{}",
                                    "10000"], client=pipe)
        pipe.execute()


@pytest.mark.timeout(120)
def test_a_system_joins_a_fleet_of_20_000_circuits(redis_server: RedisServer,
                                                   client: redis.Redis) -> None:
    """The snapshot is paged: with 20,000 circuits (one script over all of them would
    outlast fleet_timeout) a new system joins within a bound and sees them all."""
    ns = namespace()
    _register_many(client, ns, 20_000)
    target = last_entry(client, ns)
    start = time.monotonic()
    with fleet(redis_server, 1, ns) as [joining]:
        assert joining._authority.tail.wait_for(target, 20.0)  # type: ignore[union-attr]
        joined = time.monotonic() - start
        assert len(joining.connections()) == 20_000
        assert joining.available("c19999")
        joining.failure("c0")
        assert joining.status("c0").failure_count == 1
    assert joined < 20.0


def test_a_reply_that_overtakes_the_registration_keeps_its_metadata_and_options(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """A system's own step on a circuit registered (and configured) elsewhere can come
    back before its tail read the registration: the registration and the configure,
    older, still bring the metadata and options the reply lacks."""
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        a.register("gate", max_attempts=1)
        converge(systems, client, ns)
        held = b._authority.ticker._cond  # type: ignore[union-attr]
        # b's tail hands every deadline it reads to its ticker, under this lock: held,
        # it stops b's tail right after the opening of "gate", before what follows.
        with held:
            a.failure("gate")
            a.register("db", max_attempts=3, metadata={"team": "core"})
            a.configure("db", max_attempts=7)
            b.failure("db")  # the reply comes first: b's tail is held
            assert dict(b.status("db").metadata) == {}
        converge(systems, client, ns)
        status = b.status("db")
        assert dict(status.metadata) == {"team": "core"} and status.failure_count == 1
        # The options b would decide with while Redis is unreachable.
        assert b._authority.replica.entries[  # type: ignore[union-attr]
            "db"].settings.max_attempts == 7
