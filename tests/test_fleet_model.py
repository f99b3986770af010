"""The model-based suite of tests/test_model.py against the fleet authority.

The same reference model and the same rules drive a system started with ``fleet=`` on
a real Redis, so the Lua script is checked against the contract exactly as the local
connection actors are. A fleet's time is the Redis server's; the authority's test seam
``fix_time`` makes every script use the model's time instead (and the inactive
cleanup's schedule run on it), and ``advance`` runs the fleet's ``tick_now`` at the new
time: what the ticker lease holder's turns do, the expiries and the sweep, in the
model's order.

Rate rules run as on a local system: one system's window in Redis, with its quiet
successes carried by its next step or sent by the flusher at any moment in between, must
be exactly the model's after every step (status, rates in ``circuit_opened``). So does
the inactive cleanup, with ``cleanup_interval`` and ``inactive_threshold`` among the
system's options (and ``configure``'s): the fleet's activity (steps, reported quiet
successes, batches not sent yet) is exactly the model's ``last_activity``. Every rule
(register, register_rated, unregister, success incl. half_open, durations and
metadata, failure, failures, mixed, open/close/reset, configure, advance and
advance_to_deadline, subscriptions) runs unchanged; the one adaptation is in
``advance``, said there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import initialize, rule

from brama_actors import Brama, InvalidConfiguration
from tests import test_model as m
from tests.redis_server import RedisServer

#: The session's Redis URL, set by the module's autouse fixture (hypothesis runs the
#: machine as a unittest TestCase, which takes no fixture arguments).
REDIS: dict[str, str] = {}
#: What ``BramaMachine.start`` falls back to (small: connections go idle within a run).
FALLBACK = {"cleanup_interval": 500, "inactive_threshold": 1000, "expiry": 100,
            "max_attempts": 2}


@pytest.fixture(autouse=True)
def _redis_url(redis_server: RedisServer) -> Iterator[None]:
    REDIS["url"] = redis_server.url
    yield


class _FixedClock:
    """What the base machine's invariant reads as the system's clock: the model's time."""

    def __init__(self, now: list[int]) -> None:
        self._now = now

    def now(self) -> int:
        return self._now[0]


class _FleetSystem:
    """The fleet system as the base machine sees it: every attribute forwarded, except
    ``clock``, which reads the test seam's time (a fleet system's own clock is the wall
    clock; its scripts use the seam). A proxy rather than an edit to ``BramaMachine``:
    changing that class's source changes its derandomized examples."""

    def __init__(self, system: Brama, now: list[int]) -> None:
        self._system = system
        self.clock = _FixedClock(now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._system, name)


class FleetMachine(m.BramaMachine):
    """``BramaMachine`` on a fleet system, its time the model's."""

    def __init__(self) -> None:
        super().__init__()
        self.now = [m.START]
        self.system: Brama

    @initialize(config=m.option_sets(m.GLOBAL_KEYS), watch_success=st.booleans())
    def start(self, config: dict[str, Any], watch_success: bool) -> None:
        for name in ("cleanup_interval", "inactive_threshold", "expiry", "max_attempts"):
            config.setdefault(name, FALLBACK[name])
        namespace = f"model{uuid.uuid4().hex[:12]}"
        try:
            explicit = m.predict(config, m.GLOBAL_KEYS)
            m.resolve({k: v for k, v in explicit.items() if k in m.CONNECTION_KEYS})
        except m.Invalid:
            self.expect_error((InvalidConfiguration,), lambda: Brama.start(
                fleet=REDIS["url"], fleet_namespace=namespace, **config).stop())
            config = dict(FALLBACK)
            explicit = dict(config)
        system = Brama.start(fleet=REDIS["url"], fleet_namespace=namespace, **config)
        system._authority.fix_time(lambda: self.now[0])  # type: ignore[union-attr]
        self.system = system
        self.brama = _FleetSystem(system, self.now)  # type: ignore[assignment]
        self.model = m.Model(m.START, explicit)
        events = None if watch_success else [t for t in m.ALL_TYPES if t != "success"]
        holder: list[Any] = []
        brama = self.brama
        import threading

        thread = threading.Thread(target=lambda: holder.append(brama.subscribe(events=events)))
        thread.start()
        thread.join(10)
        self.model.subs.append(m.MSub(holder[0], None if events is None else frozenset(events),
                                      None, None, "none", mine=False))

    @rule(key=m.BramaMachine.known,
          options=m.option_sets(m.CONNECTION_KEYS, ("cleanup_interval", "inactive_threshold")))
    def configure_connection(self, key: m.Key, options: dict[str, Any]) -> None:
        super().configure_connection(key, options)
        if self.exists(key):
            # A new half_open_timeout may already be over: the model fires it at the next
            # advance; a fleet step would expire it lazily first, so advance now.
            self.advance(0)

    @rule(dt=st.sampled_from([0, 1, 19, 30, 50, 100, 250, 600, 1500, 4000]))
    def advance(self, dt: int) -> None:
        """Move the fleet's time; ``tick_now`` runs what the ticker lease holder's turns
        would have: the expiries and the sweep that became due."""
        model = self.model
        if model.sweep_at <= model.now + dt:
            # The one adaptation. An expiry due in the very millisecond of the sweep:
            # the model orders the two by when each was scheduled, a local system's
            # scheduler too; a fleet's ticker ticks, then sweeps, in one turn (a
            # tick's ZRANGEBYSCORE cannot part a millisecond). The contract orders
            # neither: the model's sweep goes last within its millisecond here.
            model.sweep_seq = model.next_seq()
        self.now[0] += dt
        self.system._authority.tick_now()  # type: ignore[union-attr]
        model.advance(dt)


TestFleetMachine = FleetMachine.TestCase
TestFleetMachine.settings = settings(
    **m.examples(200),
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
