"""The fleet's own figures on a real redis-server, next to bench_fleet_baseline.py's.

Run from the repository root::

    python tests/benchmarks/bench_fleet.py            # 5,000 failing calls
    python tests/benchmarks/bench_fleet.py --quick    # 500

It starts the fleet tests' ``redis-server`` (``tests/redis_server.py``) and measures, for
one system of a fleet: the Redis commands per operation (``INFO commandstats`` deltas,
the INFO calls and the tail's own ``XREAD`` excluded) for ``available()``, a quiet
success, a failure below the threshold, the failure that trips the circuit, a success
on a circuit with failures, a guarded call on a half_open circuit (each counted
alone: what sets it up runs outside the count); and the latency of ``failure()`` below
the threshold (p50, p99 in µs: one round trip, the script, the replica update). Not a
test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import brama_actors
from tests.redis_server import RedisServer

_IGNORED = {"info", "xread", "set", "get", "xadd", "del"}  # INFO, the tail, the ticker


def commands(admin: Any) -> dict[str, int]:
    stats = admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def measure(admin: Any, operation: Callable[[], object], times: int = 10,
            setup: Callable[[], object] | None = None) -> dict[str, float]:
    """Commands per ``operation``; ``setup`` runs before each, outside the count.

    (Counting ``setup`` and ``operation`` together made "success() after failures" and
    "failure() that trips" read 2 EVALSHA: the failure before the success, the reset
    after the trip. A MONITOR shows one EVALSHA per step.)
    """
    delta: dict[str, int] = {}
    for _ in range(times):
        if setup is not None:
            setup()
        before = commands(admin)
        operation()
        after = commands(admin)
        for k in after:
            if k not in _IGNORED and after[k] != before.get(k, 0):
                delta[k] = delta.get(k, 0) + after[k] - before.get(k, 0)
    return {k: v / times for k, v in delta.items()}


def guarded(brama: Any, name: str) -> None:
    with brama.guard(name):
        pass


def half_open(brama: Any, name: str) -> None:
    """Open ``name`` and wait until the ticker made it half_open (expiry 50 ms)."""
    brama.failure(name)
    deadline = time.monotonic() + 5
    while brama.status(name).state != "half_open" and time.monotonic() < deadline:
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    calls = 500 if args.quick else 5_000
    with RedisServer.from_environment() as server:
        admin = server.client(decode_responses=True)
        brama = brama_actors.Brama.start(fleet=server.url, fleet_namespace="bench")
        try:
            brama.register("quiet")
            brama.register("noisy", max_attempts=10**9)
            brama.register("trip", max_attempts=1, expiry=60_000)
            brama.register("probe", max_attempts=1, expiry=50)
            rows = [
                ("available()", measure(admin, lambda: brama.available("quiet"))),
                ("success(), closed, no failures", measure(admin,
                                                           lambda: brama.success("quiet"))),
                ("failure() below the threshold", measure(admin,
                                                          lambda: brama.failure("noisy"))),
                ("success() after failures", measure(
                    admin, lambda: brama.success("noisy"),
                    setup=lambda: brama.failure("noisy"))),
                ("failure() that trips", measure(
                    admin, lambda: brama.failure("trip"),
                    setup=lambda: brama.reset_circuit("trip"))),
                ("guarded call, half_open", measure(
                    admin, lambda: guarded(brama, "probe"), 5, setup=lambda: half_open(
                        brama, "probe"))),
            ]
            for name, work in rows:
                print(f"{name:34} {work or 'no command'}")
            samples = []
            for _ in range(calls):
                start = time.perf_counter_ns()
                brama.failure("noisy")
                samples.append((time.perf_counter_ns() - start) // 1000)
            samples.sort()
            p99 = samples[int(len(samples) * 0.99) - 1]
            print(f"failure() latency over {calls} calls: p50 {statistics.median(samples):.0f}"
                  f" µs, p99 {p99} µs")
        finally:
            brama.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
