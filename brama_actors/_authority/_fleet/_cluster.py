"""The fleet's Redis as nodes: how every client is built, and which node serves a namespace.

Every key of a namespace carries the hash tag ``{ns}``, so on a Redis Cluster the whole
namespace lives in one slot, served by one primary. The fleet does not talk through a
cluster client: one routes each command, follows MOVED and ASK and retries behind our
back, with pools and timeouts of its own (a retried script may run twice, a wait may
outlast ``fleet_timeout``). It talks to that primary with the same plain clients it uses
for a standalone Redis, built here from the settings it was given (TLS, credentials,
database) with pools of its own, no retries and decoded replies.

:class:`Nodes` finds that primary with ``CLUSTER SLOTS``, asked of a node it knows: once
at connect, which also tells a standalone Redis (it answers "cluster support disabled"
and is not asked again) from a cluster; and on a cluster again whenever its caller says
the slot may have moved (a MOVED or ASK reply, or a link that went down: a failover may
have promoted a replica). When to ask is the caller's business: the stream tail asks
before it loads a snapshot, so a caller of ``failure()`` never waits for a lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from brama_actors._errors import InvalidConfiguration

__all__ = ["Address", "Nodes", "Unreachable", "close_client", "namespace_slot"]

logger = logging.getLogger("brama_actors")

#: A node's TCP address.
Address = tuple[str, int]

#: What a dead, paused or unreachable Redis raises.
Unreachable = (redis.ConnectionError, redis.TimeoutError, OSError)

#: Connection settings the fleet sets itself, whatever the application's client says.
_OWN_KWARGS = frozenset({
    "socket_timeout", "socket_connect_timeout", "retry", "retry_on_timeout",
    "decode_responses", "encoding", "encoding_errors",
    # A cluster client's hook on each connection of its nodes (READONLY for replica
    # reads): it belongs to the application's client, not to ours.
    "redis_connect_func",
})
#: Where one node is: the settings a client of another node replaces.
_ADDRESS_KWARGS = ("host", "port", "path")


def namespace_slot(namespace: str) -> int:
    """The cluster slot of every key of ``namespace`` (they share the tag ``{namespace}``)."""
    return int(key_slot(("{" + namespace + "}").encode()))


def close_client(client: redis.Redis) -> None:
    """Close a client of this system's own and every connection of its pool."""
    client.close()
    client.connection_pool.disconnect()


def _no_maintenance_notices() -> dict[str, Any]:
    """Settings that turn redis-py's maintenance notifications off (newer redis-py asks
    for them on every TCP connection): on a notice it would relax every socket timeout
    to 10 s, past ``fleet_timeout``, and asking is a CLIENT command the fleet's minimal
    ACL does not allow."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # redis-py before maintenance notifications
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def _no_client_setinfo() -> dict[str, Any]:
    """Settings that keep redis-py from sending ``CLIENT SETINFO`` twice per connect:
    two round trips per connection, and a command the minimal ACL would have to allow
    in a form Redis 7.0 refuses (``+client|setinfo``: 7.0 has no such subcommand, 6.2
    accepts any name, 7.2 added it)."""
    try:
        import redis.driver_info  # noqa: F401  (redis-py 7+: driver_info=None disables)
    except ImportError:
        return {"lib_name": None, "lib_version": None}
    return {"driver_info": None}


def _address(kwargs: dict[str, Any]) -> list[Address]:
    if "path" in kwargs:  # a Unix socket: no TCP address to ask or to recognise
        return []
    return [(str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))]


def _settings(fleet: Any, slot: int) -> tuple[type[Any], dict[str, Any], list[Address]]:
    """The connection class and settings of ``fleet`` (a URL, a ``redis.Redis`` or a
    ``redis.cluster.RedisCluster``) without the fleet's own, and the nodes it names
    (for a cluster client, the slot's primary in its cache first)."""
    if isinstance(fleet, str):
        settings = redis.connection.parse_url(fleet)  # type: ignore[no-untyped-call]
        connection_class = settings.pop("connection_class", redis.Connection)
        return connection_class, _given(settings), _address(settings)
    if isinstance(fleet, redis.RedisCluster):
        # Only read: no command is sent through the application's client.
        cached = getattr(fleet.nodes_manager, "slots_cache", {}).get(slot) or []
        everyone: list[Any] = fleet.get_nodes()  # type: ignore[no-untyped-call]
        known = [node for node in [*cached[:1], *everyone]
                 if node.redis_connection is not None]
        if not known:
            raise InvalidConfiguration("fleet: the redis.cluster.RedisCluster knows no node")
        nodes = list(dict.fromkeys((str(node.host), int(node.port)) for node in known))
        pool: Any = known[0].redis_connection.connection_pool
    else:
        pool = fleet.connection_pool
        nodes = _address(pool.connection_kwargs)
    return pool.connection_class, _given(pool.connection_kwargs), nodes


def _given(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without what the fleet sets itself and redis-py's own bookkeeping
    (``orig_*``, maintenance notification handlers): a new pool makes its own."""
    return {k: v for k, v in settings.items()
            if k not in _OWN_KWARGS and not k.startswith(("orig_", "maint_"))
            and "maint_notifications" not in k}


class Nodes:
    """How to reach the fleet's Redis, and on a cluster the primary serving a namespace.

    Thread-safe: :meth:`moved` may be called from any thread; one thread at a time
    calls :meth:`locate`.

    Args:
        fleet: the checked ``fleet=`` (a URL, a ``redis.Redis`` or a
            ``redis.cluster.RedisCluster``; only its settings are read).
        namespace: the fleet namespace.
        timeout_ms: how long connecting, and each node asked, may take.
    """

    def __init__(self, fleet: Any, namespace: str, timeout_ms: int) -> None:
        self.namespace = namespace
        self.slot = namespace_slot(namespace)
        self._timeout = timeout_ms / 1000
        self._class, self._kwargs, self._given = _settings(fleet, self.slot)
        #: True: a Redis Cluster; False: a standalone Redis; None: not asked yet.
        self.cluster: bool | None = True if isinstance(fleet, redis.RedisCluster) else None
        #: The node clients are built for (None: the address as given, e.g. a socket).
        self.node: Address | None = self._given[0] if self.cluster else None
        self._seeds = list(self._given)
        self._hint: Address | None = None
        self._lock = threading.Lock()

    def client(self, socket_timeout_s: float) -> redis.Redis:
        """A client of :attr:`node` with a pool of its own: every wait bounded, nothing
        retried (redis-py retries timeouts by default, and a retried script may run
        twice), replies decoded."""
        return self._client(self.node, socket_timeout_s, self._timeout)

    def _client(self, node: Address | None, socket_timeout_s: float,
                connect_timeout_s: float) -> redis.Redis:
        kwargs = dict(self._kwargs)
        connection_class = self._class
        if node is not None:
            for name in _ADDRESS_KWARGS:
                kwargs.pop(name, None)
            kwargs["host"], kwargs["port"] = node
            if issubclass(connection_class, redis.UnixDomainSocketConnection):
                connection_class = redis.Connection  # a cluster node is reached by TCP
        kwargs.update(socket_timeout=socket_timeout_s,
                      socket_connect_timeout=connect_timeout_s,
                      retry=Retry(NoBackoff(), 0), decode_responses=True)
        kwargs.update(_no_maintenance_notices())
        kwargs.update(_no_client_setinfo())
        pool = redis.ConnectionPool(connection_class=connection_class, **kwargs)
        return redis.Redis(connection_pool=pool)

    def moved(self, exc: BaseException) -> bool:
        """Note a MOVED or ASK reply (True; False for any other error): the namespace's
        slot is served, or being migrated, elsewhere; the next lookup asks there first."""
        if not isinstance(exc, redis.exceptions.AskError):  # MovedError is one too
            return False
        with self._lock:
            self.cluster = True
            self._hint = (str(exc.host), int(exc.port))
        return True

    def locate(self, current: redis.Redis, budget_s: float) -> bool:
        """Find the primary serving the namespace's slot; True when it is another node
        than the one clients were built for (:meth:`client` now builds them for it).

        A standalone Redis is asked once (any error reply to that first question, say a
        user without ``cluster|slots`` or a server without CLUSTER, counts as
        standalone); later it is asked again only after a MOVED or ASK (:meth:`moved`).
        The nodes asked: the one a MOVED named, ``current``'s, then every node the
        cluster announced, in turn, until one answers or ``budget_s`` is spent.

        Raises:
            redis.ConnectionError, redis.TimeoutError, OSError: no node answered.
            redis.ResponseError: a node of a cluster refused ``CLUSTER SLOTS`` (say
                NOPERM), or no primary serves the slot (CLUSTERDOWN).
        """
        with self._lock:
            hint, self._hint = self._hint, None
            first = self.cluster is None
            if self.cluster is False:
                return False
            others = [a for a in self._seeds if a not in (hint, self.node)]
            if self.node is None:  # current is the address as given
                others = [a for a in others if a not in self._given[:1]]
        deadline = time.monotonic() + budget_s
        asked: list[Address | None] = [*([hint] if hint else []), None, *others]
        error: BaseException = redis.TimeoutError(
            f"no node of the fleet's Redis answered CLUSTER SLOTS within {budget_s} s")
        for address in asked:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                rows = self._slots(current if address is None else address, left)
            except Unreachable as exc:
                error = exc
                continue
            except redis.ResponseError as exc:
                if first and address is None:
                    return self._standalone(exc)
                raise redis.ResponseError(
                    f"{exc} (CLUSTER SLOTS, asked to find the node that serves the "
                    f"fleet namespace {self.namespace!r})") from None
            host = self._host(current) if address is None else address[0]
            return self._learn(rows, host)
        raise error

    def follow(self, client: redis.Redis, socket_timeout_s: float) -> redis.Redis:
        """``client``, or when the namespace is served on another node (:meth:`locate`,
        within ``socket_timeout_s``) a new client of that node, ``client`` closed: for
        a single client that nothing else uses meanwhile (a read-only view).

        Raises:
            As :meth:`locate`.
        """
        if not self.locate(client, socket_timeout_s):
            return client
        close_client(client)
        return self.client(socket_timeout_s)

    def _standalone(self, exc: redis.ResponseError) -> bool:
        with self._lock:
            if self.cluster is None:
                self.cluster = False
        if "cluster support disabled" not in str(exc):
            logger.debug("the fleet's Redis did not answer CLUSTER SLOTS (%s): taken for "
                         "a standalone Redis", exc)
        return False

    def _slots(self, target: redis.Redis | Address, left: float) -> list[Any]:
        if not isinstance(target, tuple):
            rows: list[Any] = target.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "SLOTS")
            return rows
        wait = min(self._timeout, left)
        client = self._client(target, wait, wait)
        try:
            rows = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            return rows
        finally:
            close_client(client)

    @staticmethod
    def _host(client: redis.Redis) -> str:
        return str(client.connection_pool.connection_kwargs.get("host", ""))

    def _learn(self, rows: list[Any], asked_host: str) -> bool:
        """Take the slot's primary and every node from a ``CLUSTER SLOTS`` reply: rows
        of ``[first, last, primary, replica...]``, each node ``[host, port, id, ...]``."""
        owner: Address | None = None
        seen: list[Address] = []
        for row in rows:
            for i, node in enumerate(row[2:]):
                # An empty or "?" host (Redis 7: an endpoint it does not know) means the
                # host of the node asked.
                host = str(node[0]) if str(node[0]) not in ("", "?") else asked_host
                seen.append((host, int(node[1])))
                if i == 0 and int(row[0]) <= self.slot <= int(row[1]):
                    owner = seen[-1]
        if owner is None:
            raise redis.exceptions.ClusterDownError(
                f"CLUSTERDOWN no primary serves slot {self.slot} (namespace "
                f"{self.namespace!r})")
        with self._lock:
            self.cluster = True
            self._seeds = list(dict.fromkeys([*self._given, *seen]))
            if owner == self.node or (self.node is None and owner in self._given[:1]):
                return False
            self.node = owner
        logger.info("the fleet's Redis Cluster serves namespace %r (slot %d) on %s:%d",
                    self.namespace, self.slot, *owner)
        return True
