"""A read-only view of a fleet's circuits: what ``watch --fleet`` and ``demo --fleet`` show.

It reads what every fleet system reads (a snapshot of every circuit of the namespace, then
the tail of the event stream) but with read commands only: ``XREVRANGE``, ``SMEMBERS``,
``HMGET``, ``XREAD``, ``GET`` and ``TIME`` (and ``CLUSTER SLOTS``: on a Redis Cluster it
reads from the primary serving the namespace, found as a system finds it, ``_cluster``).
It never runs the fleet's script, so it does not
register, take the ticker lease, write the incarnation, open a wake stream or count
anything: watching changes nothing in the fleet, and a Redis user allowed only these
commands is enough (docs/fleet.md, "Tooling"). That is why it is not a ``Brama`` system
started with ``fleet=``: such a system would compete for the ticker lease and run expiries.

The snapshot is not atomic (``MULTI`` is not in the fleet's minimal ACL); each circuit's
hash carries the version of its last step, and stream entries at or below it are not
applied to it, so the view converges exactly as a system's replica does.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from brama_actors._authority._fleet._cluster import Nodes, close_client
from brama_actors._authority._fleet._codec import (
    decode_events,
    decode_status,
    load_metadata,
    member_key,
)
from brama_actors._authority._fleet._link import KeyNames, monotonic_ms
from brama_actors._authority._fleet._options import check_fleet_options
from brama_actors._events import Event, EventType
from brama_actors._keys import Key
from brama_actors._runtime._clock import SystemClock
from brama_actors._status import ConnectionStatus

__all__ = ["VIEW_BLOCK_MS", "FleetHealth", "FleetView"]

#: Entries read per ``XREAD``.
_BATCH = 500
#: The longest an ``XREAD`` blocks (ms); the socket timeout allows for it.
VIEW_BLOCK_MS = 500


@dataclass(frozen=True, slots=True)
class FleetHealth:
    """What the view knows of the fleet's link, at one moment.

    Attributes:
        connected: True while this view's reads of Redis succeed.
        since: when ``connected`` last changed (local epoch ms).
        error: why the last read failed (None while connected).
        ticker: the first 8 characters of the ticker lease holder's token (None: no
            system holds it, so expiries wait for the next step on each circuit).
        server_now: the Redis server's clock as last estimated (ms since the epoch).
    """

    connected: bool
    since: int
    error: str | None
    ticker: str | None
    server_now: int


class FleetView:
    """The circuits of one fleet namespace, kept current from its stream, read-only.

    Thread-safe: one thread calls :meth:`poll`, any thread may call :meth:`statuses` and
    :meth:`health`.

    Args:
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL.
        namespace: the fleet's ``fleet_namespace``.
        timeout_ms: how long one command may wait on Redis (an ``XREAD`` waits its block
            time on top).

    Raises:
        InvalidConfiguration: a URL or namespace ``Brama.start(fleet=...)`` would refuse.
    """

    def __init__(self, url: str, namespace: str, timeout_ms: int = 1_000) -> None:
        check_fleet_options(url, {"fleet_namespace": namespace})  # the same rules, once
        import redis

        #: What a failed read raises: Redis unreachable, or an error reply (NOPERM...).
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.url = url
        self.namespace = namespace
        # No retries: a read that fails shows the fleet as unreachable at once.
        self._nodes = Nodes(url, namespace, timeout_ms)
        self._wait = (timeout_ms + VIEW_BLOCK_MS) / 1000
        self._client: Any = self._nodes.client(self._wait)
        names = KeyNames.of(namespace)
        self._prefix, self._stream = names.prefix, names.stream
        self._index, self._ticker = names.index, names.ticker
        self._lock = threading.Lock()
        self._statuses: dict[Key, ConnectionStatus] = {}
        self._floor: dict[Key, int] = {}  # the version each circuit was read at
        self._synced = False
        self._last_id = "0-0"
        self._ver = 0
        self._offset = 0  # server ms - local monotonic ms
        self._health = FleetHealth(False, _epoch_ms(), "not read yet", None, 0)
        self._known = False

    # -- reading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Read every circuit of the namespace and the stream position (a snapshot).

        On a Redis Cluster it first finds the node serving the namespace (a load follows
        every failed read: the slot may have moved).

        Raises:
            redis.RedisError, OSError: Redis did not answer or refused a command.
        """
        self._client = self._nodes.follow(self._client, self._wait)
        client = self._client
        top: Any = client.xrevrange(self._stream, count=1)
        last, ver = ("0-0", 0) if not top else (top[0][0], int(top[0][1]["v"]))
        members = sorted(client.smembers(self._index))
        pipe = client.pipeline(transaction=False)
        for name in members:
            pipe.hmget(self._prefix + name, "status", "meta", "ver")
        replies = pipe.execute()
        statuses: dict[Key, ConnectionStatus] = {}
        floor: dict[Key, int] = {}
        for name, (raw, meta, cver) in zip(members, replies, strict=True):
            if raw:  # gone between SMEMBERS and HMGET: its unregister entry follows
                key = member_key(name)
                statuses[key] = decode_status(raw, load_metadata(meta))
                floor[key] = int(cver or 0)
        with self._lock:
            self._statuses = statuses
            self._floor = floor
            self._last_id = last
            self._ver = ver
            self._synced = True
        self._refresh()

    def poll(self, block_ms: int, events: tuple[EventType, ...] | None = None) -> list[Event]:
        """Apply what the stream appended since the last call; its events.

        Waits up to ``block_ms`` (at most ``VIEW_BLOCK_MS``) for a first entry. A failed
        read marks the fleet unreachable (the last state read stays); the next call loads
        a snapshot again.

        Args:
            block_ms: the longest wait for new entries (0: do not wait).
            events: the event types to return (None: all).

        Returns:
            The events of the entries read, in the stream's order (each with the id and
            timestamp every system of the fleet gives it).
        """
        try:
            if not self._synced:
                self.load()
            reply: Any = self._client.xread({self._stream: self._last_id}, count=_BATCH,
                                            block=min(VIEW_BLOCK_MS, max(1, block_ms)))
            found: list[Event] = []
            for _stream, entries in reply or ():
                for raw_id, fields in entries:
                    if not self._entry(raw_id, fields, events, found):
                        break  # a gap: the next call loads a snapshot
            self._refresh()
            return found
        except self.errors as exc:
            self._down(exc)
            return []

    def _entry(self, raw_id: str, fields: Mapping[str, str],
               wanted: tuple[EventType, ...] | None, found: list[Event]) -> bool:
        ver = int(fields["v"])
        if ver > self._ver + 1:  # trimmed before we read it, or Redis restarted empty
            self._synced = False
            return False
        key = member_key(fields["k"])
        raw = fields["s"]
        with self._lock:
            old = self._statuses.get(key)
            status = None
            if raw:
                metadata = load_metadata(fields["cm"]) if "cm" in fields else \
                    (old.metadata if old is not None else load_metadata(None))
                status = decode_status(raw, metadata)
            if ver > self._floor.get(key, 0):
                self._floor[key] = ver
                if status is None:
                    self._statuses.pop(key, None)
                else:
                    self._statuses[key] = status
            self._ver = max(self._ver, ver)
            self._last_id = raw_id

        def accept(kind: EventType, identifier: str, scope: str | None) -> bool:
            return wanted is None or kind in wanted

        found.extend(decode_events(raw_id, fields, key, status, accept))
        return True

    def _refresh(self) -> None:
        """Read the ticker lease holder and the server's clock; mark the link up."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._ticker)
        pipe.time()
        holder, (seconds, micros) = pipe.execute()
        self._offset = seconds * 1000 + micros // 1000 - monotonic_ms()
        self._set(True, None, holder[:8] if holder else None)

    def _down(self, exc: BaseException) -> None:
        self._synced = False
        self._nodes.moved(exc)  # a MOVED or ASK: the next load asks that node first
        reason = f"{type(exc).__name__}: {exc}"
        with self._lock:
            ticker = self._health.ticker
        self._set(False, reason, ticker)

    def _set(self, connected: bool, error: str | None, ticker: str | None) -> None:
        with self._lock:
            since = self._health.since
            if connected is not self._health.connected or not self._known:
                since = _epoch_ms()
            self._known = True
            self._health = FleetHealth(connected, since, error, ticker, self.server_now())

    # -- what it shows ---------------------------------------------------------------------
    def server_now(self) -> int:
        """The Redis server's clock (ms since the epoch), estimated from the last ``TIME``."""
        return monotonic_ms() + self._offset

    def statuses(self) -> list[ConnectionStatus]:
        """Every circuit of the namespace, as last read."""
        with self._lock:
            return list(self._statuses.values())

    def health(self) -> FleetHealth:
        """The link's state as last seen."""
        with self._lock:
            health = self._health
        return FleetHealth(health.connected, health.since, health.error, health.ticker,
                           self.server_now())

    def last_id(self) -> str:
        """The id of the newest stream entry applied (``"0-0"``: none)."""
        with self._lock:
            return self._last_id

    def top_id(self) -> str:
        """The id of the newest entry in the stream now (``"0-0"``: none).

        Raises:
            redis.RedisError, OSError: Redis did not answer.
        """
        top: Any = self._client.xrevrange(self._stream, count=1)
        return "0-0" if not top else str(top[0][0])

    def close(self) -> None:
        """Close the view's connections."""
        try:
            close_client(self._client)
        except self.errors:
            pass  # closing must not fail a command's exit


#: Local wall time, for ``FleetHealth.since`` only (the fleet's own time is the server's).
_WALL = SystemClock()


def _epoch_ms() -> int:
    return _WALL.now()
