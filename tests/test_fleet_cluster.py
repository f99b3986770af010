"""A fleet on a real Redis Cluster (API.md section 16: every key under one hash tag).

The session's cluster (``tests/redis_cluster.py``) has three primaries and a replica on
localhost. A system may be given any node's URL, or a ``redis.cluster.RedisCluster``:
it finds the primary serving its namespace's slot and follows it when the slot moves
(resharding) or a replica takes over (failover). No sleeps: waits are on telemetry,
stream positions and inboxes, each with a timeout; the cluster helper polls the nodes
with a deadline.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis

from brama_actors import Brama, EventType
from brama_actors._authority._fleet._tail import stream_id
from tests.fleet_helpers import (
    LinkEvents,
    converge,
    documented_acl,
    namespace,
    take,
    wait_for_event,
)
from tests.redis_cluster import LocalCluster, Node, namespace_slot
from tests.redis_server import RedisServer, RedisServerError

#: What a bounded call may take beyond fleet_timeout on 2 shared cores.
SLACK_S = 0.4
TIMEOUT_MS = 200


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What was logged at ERROR so far in the test."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _namespace_on(cluster: LocalCluster, node: Node) -> str:
    """A fresh namespace whose slot ``node`` serves."""
    while True:
        ns = namespace()
        if cluster.owner_of(ns) is node:
            return ns


def _minimal_user(cluster: LocalCluster, ns: str) -> str:
    """The minimal user of docs/fleet.md, limited to ``ns``, on every node (ACLs are per
    node): its name (password ``secret``)."""
    rules = documented_acl()
    assert "~{orders}:*" in rules and "+cluster|slots" in rules
    rules[rules.index("~{orders}:*")] = "~{" + ns + "}:*"
    name = f"brama-{ns}"
    for node in cluster.nodes:
        node.admin().execute_command("ACL", "SETUSER", name, *rules)
    return name


def _denied(cluster: LocalCluster, user: str) -> list[Any]:
    """What any node refused ``user`` (ACL LOG)."""
    return [entry for node in cluster.nodes for entry in node.admin().acl_log()
            if entry["username"] == user]


def _circuit(ns: str, name: str) -> str:
    return "{" + ns + "}:c:" + f'["{name}",null]'


def test_systems_given_different_nodes_share_one_circuit(
        redis_cluster: LocalCluster, caplog: pytest.LogCaptureFixture) -> None:
    """Two systems given two nodes that do not serve the namespace (one as the documented
    minimal user) share one circuit: failures split across them open it once, and each
    system's subscriber gets that one circuit_opened, with the same id."""
    cluster = redis_cluster
    ns = namespace()
    owner = cluster.owner_of(ns)
    first, second = cluster.others(owner)[:2]
    user = _minimal_user(cluster, ns)
    urls = [f"redis://{user}:secret@{first.address}/0", second.url]
    systems = [Brama.start(fleet=url, fleet_namespace=ns) for url in urls]
    try:
        for system in systems:
            status = system.fleet_status()
            assert status is not None and status.connected
        subs = [system.subscribe(events=["circuit_opened"]) for system in systems]
        systems[0].register("db", max_attempts=4)
        converge(systems, owner.admin(), ns)
        for i in range(4):
            systems[i % 2].failure("db", reason="boom")
        converge(systems, owner.admin(), ns)
        opened = [take(sub) for sub in subs]
        assert [len(got) for got in opened] == [1, 1]
        assert opened[0][0].id == opened[1][0].id
        assert "origin" not in opened[0][0].data  # decided in Redis, not locally
        for system in systems:
            status = system.status("db")
            assert status.state == "open" and status.failure_count == 4
        assert owner.admin().exists(_circuit(ns, "db")) == 1
    finally:
        for system in systems:
            system.stop()
    assert _denied(cluster, user) == []
    assert _errors(caplog) == []


def test_a_redis_cluster_client_is_accepted_and_left_open(redis_cluster: LocalCluster) -> None:
    """A redis.cluster.RedisCluster works as fleet=: only its settings are used (the
    system's own connections go to the slot's primary), and stop() does not close it."""
    cluster = redis_cluster
    ns = namespace()
    other = cluster.others(cluster.owner_of(ns))[0]
    app = redis.RedisCluster(host="127.0.0.1", port=other.port, decode_responses=True)
    try:
        node = app.get_node(host="127.0.0.1", port=other.port)
        assert node is not None and node.redis_connection is not None
        connection = node.redis_connection.client_id()  # the app's own connection
        brama = Brama.start(fleet=app, fleet_namespace=ns)
        try:
            status = brama.fleet_status()
            assert status is not None and status.connected
            sub = brama.subscribe(events=["circuit_opened"])
            brama.register("db", max_attempts=2)
            brama.failure("db")
            brama.failure("db")
            event, _ = wait_for_event(sub, lambda e: e.event == EventType.CIRCUIT_OPENED)
            assert "origin" not in event.data
        finally:
            brama.stop()
        assert node.redis_connection.client_id() == connection  # not closed, not replaced
        assert app.hget(_circuit(ns, "db"), "status")  # the app's client sees the fleet
    finally:
        app.close()


def test_a_resharded_namespace_is_followed_with_its_state(
        redis_cluster: LocalCluster, link_events: LinkEvents,
        caplog: pytest.LogCaptureFixture) -> None:
    """The namespace's slot moves to another primary while a system runs: during the
    migration its calls are bounded and decided locally (ASK: the link is unreachable);
    then MOVED makes it find the new primary, and the fleet's state and events go on
    there (an open circuit stays open, counted failures keep counting). No ERROR log."""
    cluster = redis_cluster
    ns = namespace()
    slot = namespace_slot(ns)
    source = cluster.owner(slot)
    target = next(node for node in cluster.primaries() if node is not source)
    entry = cluster.others(source)[0]
    brama = Brama.start(fleet=entry.url, fleet_namespace=ns, fleet_timeout=TIMEOUT_MS)
    try:
        sub = brama.subscribe(events=["circuit_opened", "failure"])
        brama.register("db", max_attempts=2)
        brama.register("cache", max_attempts=3)
        brama.failure("db")
        brama.failure("db")
        brama.failure("cache")
        first, _ = wait_for_event(sub, lambda e: e.event == EventType.CIRCUIT_OPENED)
        converge([brama], source.admin(), ns)
        take(sub)
        assert cluster.begin_move(slot, target) is source
        started = time.monotonic()
        brama.failure("cache", reason="while moving")  # ASK: decided here
        assert time.monotonic() - started < TIMEOUT_MS / 1000 + SLACK_S
        local, _ = wait_for_event(sub, lambda e: e.event == EventType.FAILURE)
        assert local.data.get("origin") == "local"
        assert link_events.wait("unreachable", 1)
        cluster.finish_move(slot, source, target)
        assert link_events.wait("restored", 1)
        status = brama.fleet_status()
        assert status is not None and status.connected
        assert brama.status("db").state == "open"  # the fleet's state, kept
        assert brama.status("cache").failure_count == 1  # the local one not replayed
        brama.failure("cache")
        assert brama.status("cache").failure_count == 2  # read-your-writes on the target
        brama.failure("cache")
        opened, _ = wait_for_event(sub, lambda e: e.event == EventType.CIRCUIT_OPENED)
        assert opened.connection == "cache" and "origin" not in opened.data
        assert _stream_id(opened.id) > _stream_id(first.id)  # the same stream, later
        assert target.admin().exists(_circuit(ns, "cache")) == 1
        assert source.admin().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        brama.stop()
    assert _errors(caplog) == []


def test_a_promoted_replica_is_followed(redis_cluster: LocalCluster, link_events: LinkEvents,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """CLUSTER FAILOVER promotes the replica of the namespace's primary (the very node the
    system was given): the system follows the new primary; state and events go on."""
    cluster = redis_cluster
    primary = next(node for node in cluster.primaries() if _has_replica(cluster, node))
    replica = cluster.replica_of(primary)
    ns = _namespace_on(cluster, primary)
    brama = Brama.start(fleet=primary.url, fleet_namespace=ns)
    try:
        sub = brama.subscribe(events=["circuit_opened"])
        brama.register("db", max_attempts=1)
        brama.register("cache", max_attempts=3)
        brama.failure("db")
        brama.failure("cache")
        first, _ = wait_for_event(sub, lambda e: e.event == EventType.CIRCUIT_OPENED)
        cluster.failover(replica)
        assert cluster.owner_of(ns) is replica
        assert link_events.wait("restored", 1)
        assert brama.status("db").state == "open"
        assert brama.status("cache").failure_count == 1
        brama.failure("cache")
        brama.failure("cache")
        opened, _ = wait_for_event(sub, lambda e: e.event == EventType.CIRCUIT_OPENED)
        assert opened.connection == "cache" and "origin" not in opened.data
        assert _stream_id(opened.id) > _stream_id(first.id)
        assert replica.admin().hget(_circuit(ns, "cache"), "status")
    finally:
        brama.stop()
    assert _errors(caplog) == []


def test_a_standalone_redis_is_asked_once_whether_it_is_a_cluster(
        link_events: LinkEvents) -> None:
    """On a standalone Redis the lookup costs one CLUSTER SLOTS at connect, none on
    later reconnects, and nothing on the calls' path."""
    with RedisServer.local() as server:
        admin = server.client(decode_responses=True)
        brama = Brama.start(fleet=server.url, fleet_namespace=namespace())
        try:
            brama.register("db")
            brama.failure("db")
            assert _calls(admin, "cluster") == 1
            # A reconnect and a snapshot: the paused Redis cannot answer the tail's read
            # (blocked or the next one), which times out and marks the link down. (CLIENT
            # KILL did so only if it caught that read blocked: between two reads redis-py's
            # pool reconnects the killed connection, silently.)
            server.pause()
            try:
                assert link_events.wait("unreachable", 1)
            finally:
                server.resume()
            assert link_events.wait("restored", 1)
            brama.failure("db")
            assert brama.status("db").failure_count == 2
            assert _calls(admin, "cluster") == 1
        finally:
            brama.stop()


def _has_replica(cluster: LocalCluster, node: Node) -> bool:
    try:
        cluster.replica_of(node)
    except RedisServerError:
        return False
    return True


def _calls(client: redis.Redis, command: str) -> int:
    """Calls of ``command`` and its subcommands (Redis 7 counts ``cluster|slots`` apart)."""
    stats: Any = client.info("commandstats")
    return sum(int(value.get("calls", 0)) for name, value in stats.items()
               if name.partition("|")[0] == f"cmdstat_{command}")


def _stream_id(event_id: str) -> tuple[int, int]:
    """The stream entry of a fleet event's id (``"<stream id>:<n>"``)."""
    return stream_id(event_id.partition(":")[0])

