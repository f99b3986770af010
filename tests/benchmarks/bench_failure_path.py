"""The failure path side by side with pybreaker: what a failing call costs.

Run: ``python tests/benchmarks/bench_failure_path.py [--quick] [--markdown FILE]``.

During an outage every caller reports failures until the circuit opens, so this path is
the busy one. In one process, interleaved, each figure the median of ``--runs`` rounds
(at least 5) with its range:

* ``failure()`` on a closed circuit with no subscriber, against pybreaker's whole failing
  call (``CircuitBreaker.call`` of a function that raises, with ``fail_max`` too high to
  open);
* ``failure()`` with one all-events inbox read by its own thread (``get_many``), against
  pybreaker with a listener that puts each failure into a ``queue.Queue`` read by its own
  thread;
* a guarded failing call (decorator) against pybreaker's decorator.

Targets (issue "failure and event path"): each ratio <= 1.0x.
"""

from __future__ import annotations

import argparse
import functools
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pybreaker  # noqa: E402

import brama_actors  # noqa: E402
from tests.benchmarks.bench_processes import replace_section  # noqa: E402
from tests.benchmarks.bench_scale import machine_info  # noqa: E402

TARGET_RATIO = 1.0


def per_call_us(fn: Callable[[], None], n: int) -> float:
    """Mean µs per call over ``n`` calls, after a warm-up."""
    for _ in range(min(2_000, n)):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


class _Reader:
    """A thread that keeps taking from ``take`` until stopped."""

    def __init__(self, take: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._take = take
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take()

    def __enter__(self) -> _Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _boom() -> None:
    raise ValueError("down")


def run(calls: int, runs: int) -> dict[str, list[float]]:
    """Per-call µs of each variant, one value per round."""
    results: dict[str, list[float]] = {name: [] for name in (
        "pybreaker_call", "ours_failure", "pybreaker_queue", "ours_inbox",
        "pybreaker_decorator", "ours_decorator")}
    plain = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=3600)

    def pybreaker_call() -> None:
        try:
            plain.call(_boom)
        except ValueError:
            pass

    failures: queue.Queue[BaseException] = queue.Queue()

    class QueueListener(pybreaker.CircuitBreakerListener):
        def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
            failures.put(exc)

    listened = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=3600,
                                        listeners=[QueueListener()])

    def pybreaker_queue() -> None:
        try:
            listened.call(_boom)
        except ValueError:
            pass

    def take_queue() -> None:
        try:
            failures.get(timeout=0.05)
        except queue.Empty:
            pass

    decorated_pb = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=3600)(_boom)

    def pybreaker_decorator() -> None:
        try:
            decorated_pb()
        except ValueError:
            pass

    with brama_actors.Brama.start() as brama:
        brama.register("db", max_attempts=10**9)
        brama.register("dec", max_attempts=10**9)
        failure = brama.failure

        def ours_failure() -> None:
            failure("db")

        decorated = brama_actors.circuit_breaker("dec", brama=brama)(_boom)

        def ours_decorator() -> None:
            try:
                decorated()
            except ValueError:
                pass

        for _ in range(runs):
            results["pybreaker_call"].append(per_call_us(pybreaker_call, calls))
            results["ours_failure"].append(per_call_us(ours_failure, calls))
            with _Reader(take_queue):
                results["pybreaker_queue"].append(per_call_us(pybreaker_queue, calls))
            sub = brama.subscribe(max_pending=calls * 4)
            with sub, _Reader(functools.partial(sub.get_many, None, 0.05)):
                results["ours_inbox"].append(per_call_us(ours_failure, calls))
            results["pybreaker_decorator"].append(per_call_us(pybreaker_decorator, calls))
            results["ours_decorator"].append(per_call_us(ours_decorator, calls))
    return results


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} µs ({min(values):.2f}-{max(values):.2f})"


def report(results: dict[str, list[float]]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for label, ours, theirs in (
            ("failure(), no subscriber vs pybreaker failing call", "ours_failure",
             "pybreaker_call"),
            ("failure(), 1 inbox read vs pybreaker + queue listener read", "ours_inbox",
             "pybreaker_queue"),
            ("guarded failing call: decorator vs pybreaker decorator", "ours_decorator",
             "pybreaker_decorator")):
        # Ratio of the rounds' paired values, median (rounds are interleaved).
        ratio = statistics.median(o / t for o, t in zip(results[ours], results[theirs],
                                                           strict=True))
        rows.append((label, _fmt(results[ours]), _fmt(results[theirs]), f"{ratio:.2f}x",
                     "met" if ratio <= TARGET_RATIO else "not met"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (CI)")
    parser.add_argument("--runs", type=int, default=5, help="rounds (>= 5 for figures)")
    parser.add_argument("--markdown", type=Path, help="append a section to this file")
    args = parser.parse_args(argv)
    calls = 5_000 if args.quick else 50_000
    results = run(calls, max(1, args.runs))
    rows = report(results)
    info = machine_info()
    print(f"bench_failure_path ({'quick' if args.quick else 'full'}), {args.runs} rounds of "
          f"{calls:,} calls; {info['cpu']}, {info['cores']} cores, {info['python']}")
    for label, ours, theirs, ratio, verdict in rows:
        print(f"  {label:58s} {ours:>24s} vs {theirs:>24s} = {ratio:>6s} "
              f"(<= {TARGET_RATIO:.1f}x {verdict})")
    if args.markdown is not None:
        lines = [
            "## Failure path",
            "",
            f"{args.runs} interleaved rounds of {calls:,} calls in one process; median "
            "(range); ratio = median of the rounds' paired ratios. Machine: "
            f"{info['cpu']}, {info['cores']} cores, {info['python']}, {info['os']}; "
            f"source {info['source']}; {info['date']}.",
            "",
            "| | ours | pybreaker | ratio | target <= 1.0x |",
            "|---|---|---|---|---|",
            *(f"| {label} | {ours} | {theirs} | {ratio} | {verdict} |"
              for label, ours, theirs, ratio, verdict in rows),
            "",
        ]
        replace_section(args.markdown, "## Failure path", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
