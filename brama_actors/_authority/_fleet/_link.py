"""The link to the fleet's Redis: clients with bounded waits, key names, the script.

Clients are built here, never reused from the application: from a URL, or from the
connection settings of a ``redis.Redis`` the application gave (its TLS, credentials and
database), with this system's own pools, so that every wait is bounded by
``fleet_timeout``, nothing is retried behind our back (redis-py retries timeouts 10
times by default, and a retried script may run twice), and ``stop()`` closes only what
it opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from brama_actors._authority._fleet._lua import SCRIPT
from brama_actors._authority._fleet._options import FleetOptions
from brama_actors._errors import NodeUnavailable

__all__ = ["MAX_BLOCK_MS", "Link", "Unreachable", "refusal"]

logger = logging.getLogger("brama_actors")

#: The longest a tail read blocks in Redis (ms): also how soon a stopped system notices
#: a dead link on the tail's side.
MAX_BLOCK_MS = 1_000
#: Entries kept in the stream (approximately: ``XADD MAXLEN ~``).
STREAM_MAXLEN = 10_000

#: What a dead, paused or unreachable Redis raises.
Unreachable = (redis.ConnectionError, redis.TimeoutError, OSError)

#: Error replies that mean "not now" rather than "never": a replica after a failover
#: (READONLY; UNBLOCKED for a blocked read when the primary becomes a replica), a
#: restart loading its data (LOADING, raised by redis-py as a connection error), out of
#: memory (OOM), a long script (BUSY), and their cluster cousins.
TRANSIENT = frozenset({"READONLY", "UNBLOCKED", "LOADING", "OOM", "BUSY", "MASTERDOWN",
                       "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN"})
#: Error replies of a Redis Cluster node that does not hold the namespace's slot.
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

_OWN_KWARGS = ("socket_timeout", "socket_connect_timeout", "retry", "retry_on_timeout",
               "decode_responses", "encoding", "encoding_errors")


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


def _client(options: FleetOptions, timeout_s: float) -> redis.Redis:
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout_s, "socket_connect_timeout": options.timeout / 1000,
        "retry": Retry(NoBackoff(), 0), "decode_responses": True,
        **_no_maintenance_notices(),
    }
    if options.url is not None:
        client: redis.Redis = redis.Redis.from_url(options.url, **kwargs)
        return client
    pool = options.client.connection_pool
    given = {k: v for k, v in pool.connection_kwargs.items()
             if k not in _OWN_KWARGS and not k.startswith(("orig_", "maint_"))}
    given.update(kwargs)
    own = redis.ConnectionPool(connection_class=pool.connection_class, **given)
    return redis.Redis(connection_pool=own)


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
        tag = "{" + ns + "}"
        self.prefix = f"{tag}:c:"
        self.stream = f"{tag}:events"
        self.meta = f"{tag}:meta"
        self.deadlines = f"{tag}:deadlines"
        self.index = f"{tag}:circuits"
        self.ticker = f"{tag}:ticker"
        self.activity = f"{tag}:activity"
        self.wake = f"{tag}:wake:"  # + a system's own id
        self.cmd = _client(options, options.timeout / 1000)
        self.tail = _client(options, (MAX_BLOCK_MS + options.timeout) / 1000)
        # The script's name in Redis (its SHA-1, not a security use: FIPS builds allow it).
        self._sha = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
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
            keys: list[str] | None = None) -> Any:
        """Run one op of the script; marks the link down and raises ``NodeUnavailable``
        when Redis does not answer within ``fleet_timeout`` or refuses (``refused``)."""
        args = {k: v for k, v in args.items() if v is not None}
        args["member"] = member
        argv = [op, "" if now is None else str(now), json.dumps(args), opmeta, cmeta, explicit,
                str(STREAM_MAXLEN)]
        try:
            reply = self._call(keys or self.keys(member), argv)
        except Unreachable as exc:
            self.set_connected(False)
            raise NodeUnavailable(
                f"the fleet's Redis did not answer within {self.options.timeout} ms: "
                f"{exc}") from None
        except redis.ResponseError as exc:
            raise self.refused(exc) from None
        return reply

    def _call(self, keys: list[str], argv: list[str]) -> Any:
        try:
            return self.cmd.evalsha(self._sha, len(keys), *keys, *argv)
        except redis.exceptions.NoScriptError:
            # A restarted or failed-over Redis: EVAL runs the script and caches it, one
            # command where SCRIPT LOAD and EVALSHA again would be two.
            return self.cmd.eval(SCRIPT, len(keys), *keys, *argv)

    def refused(self, exc: redis.ResponseError) -> NodeUnavailable:
        """An error reply as ``NodeUnavailable``, the link marked down.

        A transient refusal (``TRANSIENT``) is handled as an unreachable Redis: the
        tail's snapshot, which writes, succeeds again only once Redis takes writes. Any
        other reply (a cluster's MOVED, a missing ACL permission, a script error) is a
        misconfiguration or a bug: logged at ERROR (once per outage: the tail retries
        every 100 ms), then handled the same way, so no ``redis`` exception reaches a
        caller.
        """
        code = refusal(exc)
        if code in CLUSTER:
            message = (f"the fleet's Redis is a Redis Cluster node that does not hold the "
                       f"namespace's slot ({exc}): fleet= needs a standalone Redis (or "
                       "its primary)")
        else:
            message = f"the fleet's Redis refused the step: {exc}"
        if code not in TRANSIENT:
            logger.log(logging.DEBUG if message == self._refusal else logging.ERROR, "%s",
                       message)
            self._refusal = message
        self.set_connected(False)
        return NodeUnavailable(message)

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
        for client in (self.cmd, self.tail):
            try:
                client.close()
                client.connection_pool.disconnect()
            except Exception:  # closing must not fail a stop
                logger.debug("closing a fleet client failed", exc_info=True)


def monotonic_ms() -> int:
    """Local monotonic ms (to estimate the server's clock between replies)."""
    return int(time.monotonic() * 1000)
