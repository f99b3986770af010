"""What a rate window costs on a fleet, next to bench_fleet.py's figures without one.

Run from the repository root::

    python tests/benchmarks/bench_fleet_window.py            # 5,000 calls per figure
    python tests/benchmarks/bench_fleet_window.py --quick    # 500

It starts the fleet tests' ``redis-server`` and measures, for one system of a fleet and
a circuit with ``failure_rate_threshold`` and a count window of 100: Redis commands per
quiet success (the batches the flusher sends, amortised), per failure (which carries the
successes before it), the latency of ``failure()`` (p50, p99 in µs) with and without
the window, and ``MEMORY USAGE`` of the circuit's hash with its window full. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import brama_actors
from tests.benchmarks.bench_fleet import commands
from tests.redis_server import RedisServer

_IGNORED = {"info", "xread", "set", "get", "del"}  # INFO, the tail, the ticker


def delta(before: dict[str, int], after: dict[str, int], times: int) -> dict[str, float]:
    return {k: round((after.get(k, 0) - before.get(k, 0)) / times, 3) for k in after
            if k not in _IGNORED and after.get(k, 0) != before.get(k, 0)}


def latency(call: Any, calls: int) -> str:
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) // 1000)
    samples.sort()
    return (f"p50 {statistics.median(samples):.0f} µs, "
            f"p99 {samples[int(len(samples) * 0.99) - 1]} µs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    calls = 500 if args.quick else 5_000
    with RedisServer.from_environment() as server:
        admin = server.client(decode_responses=True)
        brama = brama_actors.Brama.start(fleet=server.url, fleet_namespace="benchw")
        try:
            window = {"failure_rate_threshold": 0.9, "window_size": 100,
                      "max_attempts": 10**9}
            brama.register("plain", max_attempts=10**9)
            brama.register("windowed", **window)
            started = time.perf_counter()
            for _ in range(calls * 10):
                brama.success("plain")
            print(f"quiet success, no window: "
                  f"{(time.perf_counter() - started) / (calls * 10) * 1e6:.2f} µs each")
            before = commands(admin)
            started = time.perf_counter()
            for _ in range(calls * 10):
                brama.success("windowed")
            spent = time.perf_counter() - started
            brama.failure("windowed")  # carries what is left
            after = commands(admin)
            print(f"quiet success, window of 100: {spent / (calls * 10) * 1e6:.2f} µs each, "
                  f"commands per success {delta(before, after, calls * 10)} "
                  f"({after['evalsha'] - before.get('evalsha', 0)} EVALSHA for "
                  f"{calls * 10} successes and the failure that carries the last batch)")
            before = commands(admin)
            for _ in range(100):
                brama.success("windowed")
                brama.failure("windowed")
            after = commands(admin)
            print(f"success() + failure(), windowed: commands per pair "
                  f"{delta(before, after, 100)}")
            for name in ("plain", "windowed", "plain", "windowed"):
                print(f"failure() on {name:9}: {latency(lambda n=name: brama.failure(n), calls)}")
            for _ in range(100):  # the window full: 100 outcomes
                brama.failure("windowed")
            key = '{benchw}:c:["windowed",null]'
            plain = '{benchw}:c:["plain",null]'
            print(f"MEMORY USAGE, circuit hash: window of 100 full "
                  f"{admin.memory_usage(key, samples=0)} B, no window "
                  f"{admin.memory_usage(plain, samples=0)} B")
        finally:
            brama.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
