"""Helpers of the fleet tests: systems on one real Redis, synchronised without sleeping."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from brama_actors import Brama, Event
from brama_actors._authority._fleet._tail import stream_id
from tests.redis_server import RedisServer

WAIT = 10.0  # seconds any wait in a fleet test may take at most


def namespace() -> str:
    """A namespace of this test's own, so tests on the session's Redis never meet."""
    return f"t{uuid.uuid4().hex[:12]}"


@contextmanager
def fleet(server: RedisServer, count: int, ns: str | None = None,
          **options: Any) -> Iterator[list[Brama]]:
    """``count`` systems of one fleet ("machines"), stopped on exit."""
    ns = ns or namespace()
    systems = [Brama.start(fleet=server.url, fleet_namespace=ns, **options)
               for _ in range(count)]
    try:
        yield systems
    finally:
        for system in systems:
            system.stop()


def last_entry(client: redis.Redis, ns: str) -> tuple[int, int]:
    """The newest stream entry of namespace ``ns``."""
    top: Any = client.xrevrange("{" + ns + "}:events", count=1)
    if not top:
        return (0, 0)
    raw = top[0][0]
    return stream_id(raw.decode() if isinstance(raw, bytes) else raw)


def converge(systems: list[Brama], client: redis.Redis, ns: str) -> None:
    """Wait until every system's tail handed over every entry written so far."""
    target = last_entry(client, ns)
    for system in systems:
        assert system._authority.tail.wait_for(target, WAIT), system  # type: ignore[union-attr]
        system.drain(WAIT)


def take(sub: Any, timeout: float = 0.0) -> list[Event]:
    """Everything in an inbox subscription now (after ``converge``)."""
    got = []
    while True:
        try:
            got.append(sub.get(timeout=timeout))
        except queue.Empty:
            return got


def wait_for_event(sub: Any, predicate: Callable[[Event], bool],
                   timeout: float = WAIT) -> tuple[Event, list[Event]]:
    """Read an inbox until an event matches; (that event, everything read)."""
    seen = []
    while True:
        event = sub.get(timeout=timeout)
        seen.append(event)
        if predicate(event):
            return event, seen


class LinkEvents:
    """Records the fleet telemetry ("brama", "fleet", ...) as threading events."""

    def __init__(self) -> None:
        self.unreachable = threading.Event()
        self.restored = threading.Event()
        self.gap = threading.Event()  # entries a system could not deliver
        self.names: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, name: tuple[str, ...], measurements: Any, metadata: Any) -> None:
        with self._cond:
            self.names.append(name[-1])
            self._cond.notify_all()
        getattr(self, name[-1]).set()

    def wait(self, name: str, count: int = 1) -> bool:
        """Wait until ``name`` fired ``count`` times."""
        with self._cond:
            return self._cond.wait_for(lambda: self.names.count(name) >= count, WAIT)


def documented_acl(user: str = "brama") -> list[str]:
    """The ACL rules of docs/fleet.md's minimal ``user`` ("brama", the systems', or
    "watcher", the read-only watcher's), after ``ACL SETUSER <user>``."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "fleet.md").read_text()
    block = page[page.index(f"ACL SETUSER {user} "):]
    block = block[:block.index("```")]
    return block.split()[3:]


def stored_status(client: redis.Redis, ns: str, identifier: str,
                  scope: str | None = None) -> dict[str, Any]:
    """A circuit's status as the fleet stores it in Redis (its hash's JSON)."""
    member = json.dumps([identifier, scope], separators=(",", ":"))
    raw = client.hget("{" + ns + "}:c:" + member, "status")
    assert raw is not None
    value: dict[str, Any] = json.loads(raw)
    return value


def lose_versions(client: redis.Redis, ns: str, loss: str) -> None:
    """Make the fleet's versions go back without a new Redis: ``"meta deleted"`` (a
    DEL, an eviction) or any other ``loss`` (``ver`` set back to 1: a failover to a
    replica that lost writes)."""
    meta = "{" + ns + "}:meta"
    if loss == "meta deleted":
        client.delete(meta)
    else:
        client.hset(meta, "ver", 1)


def stored_of(client: redis.Redis, system: Brama, identifier: str) -> dict[str, Any]:
    """``stored_status`` of ``system``'s namespace."""
    status = system.fleet_status()
    assert status is not None
    return stored_status(client, status.namespace, identifier)
