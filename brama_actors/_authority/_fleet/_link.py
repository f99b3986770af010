"""The link to the fleet's Redis: clients with bounded waits, key names, the script.

Clients are never reused from the application: ``_cluster`` builds them from a URL, or
from the connection settings of the ``redis.Redis`` or ``redis.cluster.RedisCluster``
the application gave (its TLS, credentials and database), with this system's own pools,
so that every wait is bounded by ``fleet_timeout``, nothing is retried behind our back
(redis-py retries timeouts 10 times by default, and a retried script may run twice), and
``stop()`` closes only what it opened. On a Redis Cluster they talk to the primary that
serves the namespace's slot, found again (``follow``) after a MOVED or an outage.

Each script call (``run``) has one deadline, ``fleet_timeout`` after it began, for
everything it does (``_roundtrip``: connecting, ``NOSCRIPT``, one retry), and each step
that changes a circuit carries a request id, so that retry never applies it twice
(``_lua_once``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from brama_actors._authority._fleet._cluster import Nodes, Unreachable, close_client
from brama_actors._authority._fleet._lua import SCRIPT
from brama_actors._authority._fleet._options import FleetOptions
from brama_actors._authority._fleet._roundtrip import RoundTrip
from brama_actors._errors import NodeUnavailable

__all__ = ["MAX_BLOCK_MS", "RECORDED", "RECORD_TIMEOUTS", "KeyNames", "Link", "Unreachable",
           "refusal"]

logger = logging.getLogger("brama_actors")

#: The longest a tail read blocks in Redis (ms): also how soon a stopped system notices
#: a dead link on the tail's side.
MAX_BLOCK_MS = 1_000
#: JSON without spaces (a step's args: fewer bytes to send and for cjson to read).
_COMPACT = (",", ":")
#: Entries kept in the stream (approximately: ``XADD MAXLEN ~``).
STREAM_MAXLEN = 10_000
#: The ops whose request id the script records (``_lua_once``): those a second run
#: would apply again or answer otherwise (a second count, entry or permit; "exists" for
#: the register that created it, "missing" for the unregister that removed it). The
#: others are idempotent as they are, so their retry needs no record: ``release``
#: (ZREM), ``tick`` and ``sweep`` (a circuit expires or goes once), ``lease`` (its
#: holder's SET), ``snapshot`` (HSETNX), ``page`` (reads).
RECORDED = frozenset({"register", "unregister", "acquire", "success", "failure", "open",
                      "close", "reset", "configure", "flush"})
#: How long a request's reply is kept, in ``fleet_timeout``: its retry comes before the
#: call's deadline (one timeout); the rest covers a first attempt that a proxy delivers
#: after the retry.
RECORD_TIMEOUTS = 5

#: Error replies that mean "not now" rather than "never": a replica after a failover
#: (READONLY; UNBLOCKED for a blocked read when the primary becomes a replica), a
#: restart loading its data (LOADING, raised by redis-py as a connection error), out of
#: memory (OOM), a long script (BUSY), and their cluster cousins.
TRANSIENT = frozenset({"READONLY", "UNBLOCKED", "LOADING", "OOM", "BUSY", "MASTERDOWN",
                       "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN"})
#: Error replies of a Redis Cluster node that does not serve the namespace's slot (it
#: moved: resharding, a failover): the tail finds its primary again (``follow``).
CLUSTER = frozenset({"MOVED", "ASK"})
_CODES: tuple[tuple[type[Exception], str], ...] = (
    (redis.exceptions.ReadOnlyError, "READONLY"), (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.MovedError, "MOVED"), (redis.exceptions.AskError, "ASK"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
)
# The code of an error reply, also inside a script's error (Redis 6.2 wraps it:
# "Error running script (...): @user_script:1: ... -OOM command not allowed ...").
_CODE = re.compile(r"(?:^|\s-)([A-Z]{2,})\b")


def refusal(exc: redis.ResponseError) -> str:
    """The error code of an error reply ("OOM", "READONLY", ..., "" if none)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    match = _CODE.search(str(exc))
    return match.group(1) if match else ""


@dataclass(frozen=True, slots=True)
class KeyNames:
    """The key names of a fleet namespace, all under its hash tag (one slot)."""

    tag: str  # "{namespace}"
    prefix: str  # + a circuit's member: its hash (+ ":permits": its permit set)
    stream: str
    meta: str
    deadlines: str
    index: str
    ticker: str
    activity: str
    wake: str  # + a system's own id

    @classmethod
    def of(cls, namespace: str) -> KeyNames:
        tag = "{" + namespace + "}"
        return cls(tag, f"{tag}:c:", f"{tag}:events", f"{tag}:meta", f"{tag}:deadlines",
                   f"{tag}:circuits", f"{tag}:ticker", f"{tag}:activity", f"{tag}:wake:")


class Link:
    """Key names, the script, and whether Redis answers.

    Args:
        options: the checked fleet options.
        on_change: called with True/False when the link comes up or goes down
            (outside any lock).
        now: epoch ms (for ``FleetStatus.since``).
    """

    def __init__(self, options: FleetOptions, on_change: Callable[[bool], None],
                 now: Callable[[], int]) -> None:
        self.options = options
        ns = options.namespace
        names = KeyNames.of(ns)
        tag = names.tag
        self.prefix, self.stream, self.meta = names.prefix, names.stream, names.meta
        self.deadlines, self.index, self.ticker = names.deadlines, names.index, names.ticker
        self.activity, self.wake = names.activity, names.wake
        # + a request id: this link's random prefix and a counter (unique fleet-wide
        # without a random draw per step).
        self._requests = f"{tag}:r:{uuid.uuid4().hex[:16]}:"
        self._count = itertools.count(1)
        self._record_ms = str(RECORD_TIMEOUTS * options.timeout)
        self._nodes = Nodes(options.url if options.client is None else options.client, ns,
                            options.timeout)
        self.cmd, self.tail = self._clients()
        self._retired: list[redis.Redis] = []  # clients of a node the slot moved away from
        # The script's name in Redis (its SHA-1, not a security use: FIPS builds allow it).
        self._sha = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
        self._trips = RoundTrip(self.cmd, self._sha, SCRIPT, ns)
        self._on_change = on_change
        self._now = now
        self._lock = threading.Lock()
        self.connected = False
        self._refusal = ""  # the last error reply logged at ERROR in this outage
        self._known = False  # the first state (up or down) is a change too
        self.since = now()

    def keys(self, member: str) -> list[str]:
        """KEYS of a step on the circuit ``member``."""
        circuit = self.prefix + member
        return [circuit, self.stream, self.meta, self.deadlines, circuit + ":permits",
                self.index, self.activity]

    def run(self, op: str, member: str, args: dict[str, Any], *, now: int | None = None,
            opmeta: str = "", cmeta: str = "", explicit: str = "",
            keys: list[str] | None = None, deadline: float | None = None) -> Any:
        """Run one op of the script by ``deadline`` (monotonic s; default: ``fleet_timeout``
        from now), all of it: connecting, ``NOSCRIPT``, a retry (``_roundtrip``).

        Raises:
            NodeUnavailable: Redis did not answer in time (the link is marked down), or
                refused (``refused``), or ``deadline`` had passed already (nothing was
                sent: the link stays as it was).
        """
        start = time.monotonic()
        if deadline is None:
            deadline = start + self.options.timeout / 1000
        elif deadline <= start:
            raise NodeUnavailable(f"no time was left of this call's {self.options.timeout} "
                                  "ms to send its step to the fleet's Redis")
        args = {k: v for k, v in args.items() if v is not None}
        args["member"] = member
        argv = [op, "" if now is None else str(now), json.dumps(args, separators=_COMPACT),
                opmeta, cmeta, explicit, str(STREAM_MAXLEN)]
        keys = keys or self.keys(member)
        if op in RECORDED:  # the request id, in its record's key name (_lua_once)
            keys = [*keys, f"{self._requests}{next(self._count):x}"]
            argv.append(self._record_ms)
        trips = self._trips
        try:
            reply = self._call(keys, argv, deadline)
        except Unreachable as exc:
            self.set_connected(False)
            raise NodeUnavailable(
                f"the fleet's Redis did not answer within {self.options.timeout} ms: "
                f"{exc}") from None
        except redis.ResponseError as exc:
            if trips is not self._trips and refusal(exc) in CLUSTER:
                # Sent to the node the slot left, before follow() moved the link: this
                # call is decided without Redis, the link (up again) stays up.
                raise NodeUnavailable(f"the fleet's Redis Cluster moved the namespace's "
                                      f"slot during this call ({exc})") from None
            raise self.refused(exc) from None
        return reply

    def _call(self, keys: list[str], argv: list[str], deadline: float) -> Any:
        return self._trips.call(keys, argv, deadline)

    def refused(self, exc: redis.ResponseError) -> NodeUnavailable:
        """An error reply as ``NodeUnavailable``, the link marked down.

        A transient refusal (``TRANSIENT``) is handled as an unreachable Redis: the
        tail's snapshot, which writes, succeeds again only once Redis takes writes. So
        is a cluster's MOVED or ASK (the slot moved, or is moving): the tail finds the
        slot's primary (``follow``) before its next snapshot. Any other reply (a missing
        ACL permission, a script error) is a misconfiguration or a bug: logged at ERROR
        (once per outage: the tail retries every 100 ms), then handled the same way, so
        no ``redis`` exception reaches a caller.
        """
        code = refusal(exc)
        moved = code in CLUSTER and self._nodes.moved(exc)
        if moved:
            message = (f"the fleet's Redis Cluster moved, or is moving, the namespace's "
                       f"slot ({code} {exc}); finding the node that serves it")
        else:
            message = f"the fleet's Redis refused the step: {exc}"
        if code not in TRANSIENT and not moved:
            logger.log(logging.DEBUG if message == self._refusal else logging.ERROR, "%s",
                       message)
            self._refusal = message
        self.set_connected(False)
        return NodeUnavailable(message)

    def _clients(self) -> tuple[redis.Redis, redis.Redis]:
        """A command client (waits ``fleet_timeout``) and a tail client (waits for a
        blocked read too), for the node the namespace is served on."""
        timeout = self.options.timeout
        return (self._nodes.client(timeout / 1000),
                self._nodes.client((MAX_BLOCK_MS + timeout) / 1000))

    def follow(self) -> None:
        """Before a snapshot: talk to the node that serves the namespace.

        A standalone Redis is asked once whether it is one (at connect). On a Redis
        Cluster the slot's primary is looked up again whenever the link is down (a
        MOVED or ASK marked it down, or a failover may have promoted a replica), on the
        tail's thread, within ``MAX_BLOCK_MS + fleet_timeout``; callers meanwhile find
        the link unreachable, as in any outage. The clients of a node the slot left are
        retired (idle connections closed at once, the rest at the next move or at
        ``close``), so a call still in flight on them ends as it would have.

        Raises:
            redis.ConnectionError, redis.TimeoutError, OSError: no node answered.
            redis.ResponseError: a node refused the lookup (``refused`` handles it).
        """
        budget = (MAX_BLOCK_MS + self.options.timeout) / 1000
        if self.connected or not self._nodes.locate(self.cmd, budget):
            return
        old = (self.cmd, self.tail)
        self.cmd, self.tail = self._clients()
        trips, self._trips = self._trips, RoundTrip(self.cmd, self._sha, SCRIPT,
                                                    self.options.namespace)
        trips.close()  # a call in flight on it drops its connection when done
        for client in self._retired:
            close_client(client)
        self._retired = list(old)
        for client in old:
            client.connection_pool.disconnect(inuse_connections=False)

    def set_connected(self, up: bool) -> None:
        """Record the link's state; tell ``on_change`` when it changed."""
        with self._lock:
            if self.connected is up and self._known:
                return
            self._known = True
            self.connected = up
            self.since = self._now()
            if up:
                self._refusal = ""
        if not up:
            logger.warning("the fleet's Redis (namespace %r) is unreachable",
                           self.options.namespace)
        else:
            logger.info("the fleet's Redis (namespace %r) is reachable",
                        self.options.namespace)
        self._on_change(up)

    def close(self) -> None:
        """Close this system's own clients (never the application's)."""
        self._trips.close()
        for client in (self.cmd, self.tail, *self._retired):
            try:
                close_client(client)
            except Exception:  # closing must not fail a stop
                logger.debug("closing a fleet client failed", exc_info=True)


def monotonic_ms() -> int:
    """Local monotonic ms (to estimate the server's clock between replies)."""
    return int(time.monotonic() * 1000)
