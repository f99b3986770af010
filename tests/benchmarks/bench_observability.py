"""What exporting metrics costs: one Prometheus scrape and one OpenTelemetry collection.

Run: ``python tests/benchmarks/bench_observability.py [--quick] [--connections N]
[--runs R] [--markdown FILE]``.

The exporters read the system at collection time (API.md section 14), so their whole
cost is paid by the scraper, once per scrape, and grows with the number of connections.
With ``--connections`` (default 10,000) connections registered, a tenth of them open,
a tenth with failures counted, every one with some successes, each figure is the median
(and range) of ``--runs`` rounds (at least 5) of:

* one ``generate_latest`` of a ``CollectorRegistry`` holding only a ``BramaCollector``
  (collect + text format), the figure Prometheus waits for;
* one ``InMemoryMetricReader.get_metrics_data()`` of an SDK ``MeterProvider`` after
  ``brama_actors.opentelemetry.instrument()`` (every observable callback + aggregation).

and, with a collector registered and OpenTelemetry instrumented (so every guarded call
is timed for the ``brama.call.duration`` histogram), the overhead of a guarded success
(decorator, ``brama=``) against circuitbreaker's decorator, in the same rounds.

Targets (API.md section 14 work): a scrape at 10,000 connections < 100 ms; the guarded
success, instrumented, <= 1.0x circuitbreaker's overhead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

import brama_actors  # noqa: E402
from brama_actors import opentelemetry as brama_otel  # noqa: E402
from brama_actors.prometheus import BramaCollector  # noqa: E402
from tests.benchmarks.bench_processes import replace_section  # noqa: E402
from tests.benchmarks.bench_scale import machine_info  # noqa: E402

TARGET_SCRAPE_MS = 100.0
TARGET_GUARD_RATIO = 1.0
CALLS = 200_000
SECTION = "## Observability (API.md section 14)"


def populate(brama: brama_actors.Brama, connections: int) -> None:
    """Register ``connections``, some scoped, a tenth open, a tenth with failures."""
    for i in range(connections):
        scope = None if i % 2 else f"s{i % 7}"
        name = f"c{i}"
        brama.register(name, scope=scope, max_attempts=10)
        brama.success(name, scope=scope)
        if i % 10 == 0:
            brama.open_circuit(name, scope=scope)
        elif i % 10 == 1:
            brama.failure(name, scope=scope)
    brama.drain(timeout=60)


def timed_ms(fn: Callable[[], object], runs: int) -> tuple[list[float], object]:
    """Milliseconds of each of ``runs`` calls after one warm-up call; the last result."""
    result = fn()
    values = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        values.append((time.perf_counter() - start) * 1e3)
    return values, result


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ms ({min(values):.1f}-{max(values):.1f})"


def _noop() -> None:
    pass


def _ns_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e9


def guarded_overheads(brama: brama_actors.Brama, runs: int,
                      calls: int) -> dict[str, list[float]]:
    """ns of overhead per call (minus a bare call), interleaved rounds: ours while
    instrumented, and circuitbreaker's decorator."""
    import circuitbreaker

    ours = brama_actors.circuit_breaker("bench-instrumented", brama=brama)(_noop)
    theirs = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=3600,
                                           name="bench-obs-cb")(_noop)
    result: dict[str, list[float]] = {"ours": [], "circuitbreaker": []}
    for _ in range(runs + 1):  # the first round warms up
        bare = _ns_per_call(_noop, calls)
        figures = (_ns_per_call(ours, calls) - bare, _ns_per_call(theirs, calls) - bare)
        result["ours"].append(figures[0])
        result["circuitbreaker"].append(figures[1])
    return {k: v[1:] for k, v in result.items()}


def run(connections: int, runs: int, calls: int = CALLS) -> dict[str, list[float]]:
    """Milliseconds per scrape and per collection, one value per round."""
    with brama_actors.Brama.start(log_transitions=False) as brama:
        populate(brama, connections)
        registry = CollectorRegistry()
        registry.register(BramaCollector(brama))
        scrape, text = timed_ms(lambda: generate_latest(registry), runs)
        assert isinstance(text, bytes) and text.count(b"\nbrama_circuit_state{") == 3 * connections
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        brama_otel.instrument(brama, provider)
        try:
            collection, _ = timed_ms(reader.get_metrics_data, runs)
            guard = guarded_overheads(brama, runs, calls)
        finally:
            brama_otel.uninstrument()
            provider.shutdown()
        ratios = [o / c for o, c in zip(guard["ours"], guard["circuitbreaker"], strict=True)]
        return {"scrape": scrape, "otel": collection, "bytes": [float(len(text))],
                "guard_ours": guard["ours"], "guard_cb": guard["circuitbreaker"],
                "guard_ratio": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 connections (CI)")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5, help="rounds (>= 5 for figures)")
    parser.add_argument("--markdown", type=Path, help="replace/append a section in this file")
    args = parser.parse_args(argv)
    connections = 1_000 if args.quick else args.connections
    results = run(connections, max(1, args.runs), 20_000 if args.quick else CALLS)
    info = machine_info()
    scrape_median = statistics.median(results["scrape"])
    verdict = "met" if scrape_median < TARGET_SCRAPE_MS else "not met"
    size = results["bytes"][0] / 1024
    print(f"bench_observability, {connections:,} connections, {args.runs} rounds; "
          f"{info['cpu']}, {info['cores']} cores, {info['python']}")
    print(f"  Prometheus scrape (collect + generate_latest): {_fmt(results['scrape'])}, "
          f"{size:,.0f} KiB of text (< {TARGET_SCRAPE_MS:.0f} ms at 10,000: {verdict})")
    print(f"  OpenTelemetry collection (get_metrics_data):  {_fmt(results['otel'])}")
    ratio = statistics.median(results["guard_ratio"])
    guard_verdict = "met" if ratio <= TARGET_GUARD_RATIO else "not met"
    guard_line = (f"{statistics.median(results['guard_ours']):.0f} ns vs "
                  f"{statistics.median(results['guard_cb']):.0f} ns = {ratio:.2f}x")
    print(f"  guarded success overhead, instrumented, vs circuitbreaker: {guard_line} "
          f"(<= {TARGET_GUARD_RATIO}x: {guard_verdict})")
    if args.markdown is not None:
        lines = [
            SECTION,
            "",
            f"{connections:,} connections (a tenth open, a tenth with failures), "
            f"{args.runs} rounds after a warm-up; median (range). Machine: {info['cpu']}, "
            f"{info['cores']} cores, {info['python']}, {info['os']}; source "
            f"{info['source']}; {info['date']}.",
            "",
            "| | per scrape | target |",
            "|---|---|---|",
            f"| Prometheus: `generate_latest` with a `BramaCollector` ({size:,.0f} KiB) | "
            f"{_fmt(results['scrape'])} | < {TARGET_SCRAPE_MS:.0f} ms: {verdict} |",
            f"| OpenTelemetry: `get_metrics_data()` after `instrument()` | "
            f"{_fmt(results['otel'])} | |",
            "",
            "| | overhead per call (median of rounds) | target |",
            "|---|---|---|",
            f"| guarded success (decorator) with the collector registered and "
            f"OpenTelemetry instrumented, vs circuitbreaker's decorator | {guard_line} | "
            f"<= {TARGET_GUARD_RATIO}x: {guard_verdict} |",
            "",
        ]
        replace_section(args.markdown, SECTION, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
