"""``serve()`` on a fleet system (API.md sections 11 and 16): one machine's processes
share its fleet link. A served fleet system is one machine of the fleet; its clients
(here another process, and a client in this process) report through it, and what they
do is decided in Redis and seen by the other machines."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest
import redis

import brama_actors
from brama_actors import CircuitOpenError
from tests import proc_helpers
from tests.fleet_helpers import WAIT, converge, fleet, namespace, wait_for_event
from tests.redis_server import RedisServer

CTX = multiprocessing.get_context("spawn")


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    plain = redis_server.client()
    yield plain
    plain.close()


def test_a_client_process_of_a_served_fleet_system_trips_the_fleet_circuit(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """Failures a client process reports through a served fleet system open the circuit
    for every machine, with one circuit_opened per subscriber per machine."""
    ns = namespace()
    with fleet(redis_server, 2, ns, max_attempts=3) as (served, other):
        served.register("db")
        converge([served, other], client, ns)
        subs = [system.subscribe(events=["circuit_opened"]) for system in (served, other)]
        server = served.serve()
        try:
            ours, theirs = CTX.Pipe(duplex=False)
            worker = CTX.Process(target=proc_helpers.report_failures,
                                 args=(server.address, server.authkey, "db", 3, theirs))
            worker.start()
            try:
                assert ours.poll(60), "the client process did not finish"
                assert ours.recv() is False  # the client sees it open on return
            finally:
                worker.join(WAIT)
            assert worker.exitcode == 0
            converge([served, other], client, ns)
            for system, sub in zip((served, other), subs, strict=True):
                opened, _ = wait_for_event(sub, lambda e: e.event == "circuit_opened")
                assert opened.data["failure_count"] == 3
                assert not system.available("db")
                assert sub.get_many(timeout=0) == []  # exactly one per subscriber
        finally:
            server.close()


def test_an_in_process_client_sees_an_opening_decided_by_another_machine(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """A client connected to a served fleet system reads the fleet's state: a circuit
    another machine opened refuses the client's guarded calls."""
    ns = namespace()
    with fleet(redis_server, 2, ns, max_attempts=2) as (served, other):
        server = served.serve()
        try:
            with brama_actors.connect(server.address, authkey=server.authkey) as remote:
                remote.register("api")  # created in Redis through the served system
                converge([served, other], client, ns)
                assert other.status("api").state == "closed"
                opened = remote.subscribe(events=["circuit_opened"], connection="api")
                other.failure("api")
                other.failure("api")
                event = opened.get(timeout=WAIT)
                assert event.data["reason"] == "Threshold exceeded"
                converge([served], client, ns)
                assert not remote.available("api")

                @brama_actors.circuit_breaker("api", brama=remote)
                def call() -> str:
                    return "reached"

                with pytest.raises(CircuitOpenError):
                    call()
        finally:
            server.close()
