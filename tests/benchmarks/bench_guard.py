"""Guarded-call benchmark (issue: Guarding calls): per-call overhead against peer breakers.

Run from the repository root::

    python tests/benchmarks/bench_guard.py                      # full form (~1-2 min)
    python tests/benchmarks/bench_guard.py --quick              # CI smoke run (< 20 s)
    python tests/benchmarks/bench_guard.py --markdown docs/benchmarks.md

What it measures, all in this one process:

* the per-call OVERHEAD of guarding a no-op function on a closed circuit (success path):
  time per call minus the time per call of the bare no-op ``f()`` measured in the same
  round. Contenders: our ``@circuit_breaker(..., brama=brama)`` on a ``Brama.start()``
  system, the same decorator with ``brama=None`` (the default system), our
  ``with brama.guard(...): f()``, pybreaker's ``breaker.call(f)`` and ``@breaker``,
  circuitbreaker's ``@circuit``, purgatory's sync in-memory breaker
  (``SyncCircuitBreakerFactory``: its ``@factory(name)`` decorator and
  ``with factory.get_breaker(name):``).
* the rejection path on an open circuit, catching the exception in the loop: ours
  (``CircuitOpenError``) vs pybreaker (``CircuitBreakerError``) vs circuitbreaker
  (``CircuitBreakerError``), with a function that raises and catches a plain exception as
  the floor any raising breaker pays.
* separately (reported, not compared): our decorator when one inbox subscription listens
  to ``success`` events, so every success is told to the connection's actor (the slow
  path); the inbox is drained every ``--chunk`` calls, outside the timed loop.

Method: one warm-up round, then ``--rounds`` rounds; each round runs every contender once
(``--calls`` calls in a plain ``for`` loop timed with ``time.perf_counter_ns``, garbage
collector disabled), round-robin in an order rotated every round. Medians over rounds, with
the interquartile range and min/max; a ratio is the median of the per-round ratios of two
overheads (both measured in the same round), with the ratio of the medians alongside.

It is not a test: pytest collects ``test_*.py`` only, so this file is never collected.
Needs the ``bench`` extra (pybreaker, circuitbreaker, purgatory).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import queue
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import cpu_model, source_revision

SECTION_TITLE = "## Guarded calls (issue: Guarding calls)"

# Targets of the Guarding calls issue (our decorator's overhead relative to the peers').
TARGET_VS_CIRCUITBREAKER = 1.0
TARGET_VS_PYBREAKER = 0.5

OPEN_FOR_MS = 3_600_000  # open circuits stay open for the whole run
BASELINE = "bare"

perf_ns = time.perf_counter_ns


# -- the guarded function and its baselines ------------------------------------------------
def noop() -> None:
    """The guarded function: does nothing."""
    return None


def raise_plain() -> None:
    """Reference for the rejection path: the cost of raising and catching an exception."""
    raise RuntimeError("circuit open")


# -- timing loops (one shape per way of calling; all plain for loops) ----------------------
def loop_call(fn: Callable[[], Any], n: int) -> int:
    """ns for ``n`` calls of ``fn()``."""
    rng = range(n)
    t0 = perf_ns()
    for _ in rng:
        fn()
    return perf_ns() - t0


def loop_call_through(call: Callable[[Callable[[], Any]], Any], fn: Callable[[], Any],
                      n: int) -> int:
    """ns for ``n`` calls of ``call(fn)`` (pybreaker's ``breaker.call``)."""
    rng = range(n)
    t0 = perf_ns()
    for _ in rng:
        call(fn)
    return perf_ns() - t0


def loop_with(make_cm: Callable[[], Any], fn: Callable[[], Any], n: int) -> int:
    """ns for ``n`` times ``with make_cm(): fn()``."""
    rng = range(n)
    t0 = perf_ns()
    for _ in rng:
        with make_cm():
            fn()
    return perf_ns() - t0


def loop_reject(fn: Callable[[], Any], exc: type[BaseException], n: int) -> int:
    """ns for ``n`` calls of ``fn()``, each raising ``exc``, caught in the loop."""
    rng = range(n)
    t0 = perf_ns()
    for _ in rng:
        try:
            fn()
        except exc:
            pass
    return perf_ns() - t0


def loop_reject_with(make_cm: Callable[[], Any], fn: Callable[[], Any],
                     exc: type[BaseException], n: int) -> int:
    """ns for ``n`` times ``with make_cm(): fn()`` refused on entry, caught in the loop."""
    rng = range(n)
    t0 = perf_ns()
    for _ in rng:
        try:
            with make_cm():
                fn()
        except exc:
            pass
    return perf_ns() - t0


# -- contenders ------------------------------------------------------------------------------
@dataclass
class Contender:
    """One way of making a call; ``run(n)`` returns the ns that ``n`` calls took."""

    key: str
    label: str
    group: str  # "base", "success", "reject"
    run: Callable[[int], int]
    samples: list[float] = field(default_factory=list)  # ns per call, one per round

    def overheads(self, base: Sequence[float]) -> list[float]:
        return [s - b for s, b in zip(self.samples, base, strict=True)]


@dataclass
class Setup:
    """Everything the contenders use, kept to check the outcome and to stop at the end."""

    brama: Any
    contenders: list[Contender]
    counted: dict[str, tuple[Any, str]]  # contender key -> (system, connection)


def build() -> Setup:
    """Create the systems, breakers and guarded functions; open the circuits to reject."""
    import circuitbreaker
    import purgatory
    import pybreaker

    import brama_actors
    from brama_actors import Brama, CircuitOpenError, circuit_breaker

    brama = Brama.start()

    # -- success path (closed circuits) --
    ours_dec = circuit_breaker("bench-dec", brama=brama)(noop)
    ours_default = circuit_breaker("bench-dec-default")(noop)  # brama=None: default system
    # API.md section 12: a guarded success with a rate window (count of 100, and 60 s).
    ours_count = circuit_breaker("bench-win-count", brama=brama, failure_rate_threshold=0.5,
                                 window_size=100)(noop)
    ours_time = circuit_breaker("bench-win-time", brama=brama, failure_rate_threshold=0.5,
                                window_type="time", window_size=60_000)(noop)
    guard = brama.guard

    def ours_block() -> Any:
        return guard("bench-guard")

    pb_call_breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600, name="call")
    pb_dec_breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600, name="dec")
    pb_dec = pb_dec_breaker(noop)
    cb_dec = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=3600,
                                           name="bench-cb")(noop)
    factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=3600)
    pg_dec = factory("bench-pg-dec")(noop)
    get_breaker = factory.get_breaker

    def pg_block() -> Any:
        return get_breaker("bench-pg-ctx")

    # -- rejection path (open circuits) --
    brama.register("bench-open")
    brama.open_circuit("bench-open", reason="bench", expiry=OPEN_FOR_MS)
    ours_open = circuit_breaker("bench-open", brama=brama)(noop)

    def ours_open_block() -> Any:
        return guard("bench-open")

    pb_open_breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600, name="open")
    pb_open_breaker.open()
    pb_open = pb_open_breaker(noop)
    cb_open_breaker = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600,
                                                    name="bench-cb-open")
    cb_open = cb_open_breaker(noop)
    cb_fail = cb_open_breaker(raise_plain)
    try:
        cb_fail()
    except RuntimeError:
        pass

    # The rejections must really be rejections.
    for fn, exc in ((ours_open, CircuitOpenError), (pb_open, pybreaker.CircuitBreakerError),
                    (cb_open, circuitbreaker.CircuitBreakerError)):
        try:
            fn()
        except exc:
            continue
        raise RuntimeError(f"{fn!r} was not refused: its circuit is not open")

    pb_err = pybreaker.CircuitBreakerError
    cb_err = circuitbreaker.CircuitBreakerError
    contenders = [
        Contender(BASELINE, "bare no-op call `f()`", "base",
                  lambda n: loop_call(noop, n)),
        Contender("ours_dec", "ours: `@circuit_breaker(..., brama=brama)`", "success",
                  lambda n: loop_call(ours_dec, n)),
        Contender("ours_default", "ours: `@circuit_breaker(...)`, default system "
                  "(`brama=None`)", "success", lambda n: loop_call(ours_default, n)),
        Contender("ours_count", "ours: `@circuit_breaker(...)`, count window of 100, "
                  "failure-rate rule", "success", lambda n: loop_call(ours_count, n)),
        Contender("ours_time", "ours: `@circuit_breaker(...)`, time window of 60 s, "
                  "failure-rate rule", "success", lambda n: loop_call(ours_time, n)),
        Contender("ours_guard", "ours: `with brama.guard(...): f()`", "success",
                  lambda n: loop_with(ours_block, noop, n)),
        Contender("pb_call", "pybreaker: `breaker.call(f)`", "success",
                  lambda n: loop_call_through(pb_call_breaker.call, noop, n)),
        Contender("pb_dec", "pybreaker: `@breaker`", "success",
                  lambda n: loop_call(pb_dec, n)),
        Contender("cb_dec", "circuitbreaker: `@circuit`", "success",
                  lambda n: loop_call(cb_dec, n)),
        Contender("pg_dec", "purgatory: `@SyncCircuitBreakerFactory()(name)`", "success",
                  lambda n: loop_call(pg_dec, n)),
        Contender("pg_ctx", "purgatory: `with factory.get_breaker(name): f()`", "success",
                  lambda n: loop_with(pg_block, noop, n)),
        Contender("raise_plain", "floor: `f()` raising a `RuntimeError`, caught", "reject",
                  lambda n: loop_reject(raise_plain, RuntimeError, n)),
        Contender("ours_reject", "ours: decorator -> `CircuitOpenError`", "reject",
                  lambda n: loop_reject(ours_open, CircuitOpenError, n)),
        Contender("ours_guard_reject", "ours: `with brama.guard(...)` -> `CircuitOpenError`",
                  "reject", lambda n: loop_reject_with(ours_open_block, noop,
                                                       CircuitOpenError, n)),
        Contender("pb_reject", "pybreaker: `@breaker` -> `CircuitBreakerError`", "reject",
                  lambda n: loop_reject(pb_open, pb_err, n)),
        Contender("cb_reject", "circuitbreaker: `@circuit` -> `CircuitBreakerError`", "reject",
                  lambda n: loop_reject(cb_open, cb_err, n)),
    ]
    counted = {
        "ours_dec": (brama, "bench-dec"),
        "ours_default": (brama_actors._system._default.get(), "bench-dec-default"),
        "ours_guard": (brama, "bench-guard"),
        "ours_count": (brama, "bench-win-count"),
        "ours_time": (brama, "bench-win-time"),
    }
    return Setup(brama, contenders, counted)


def run_rounds(contenders: list[Contender], rounds: int, calls: int,
               progress: bool) -> None:
    """A warm-up round, then ``rounds`` interleaved rounds (order rotated each round)."""
    k = len(contenders)
    for r in range(-1, rounds):
        gc.collect()
        order = [contenders[(i + max(r, 0)) % k] for i in range(k)]
        for contender in order:
            gc.disable()
            try:
                ns = contender.run(calls)
            finally:
                gc.enable()
            if r >= 0:
                contender.samples.append(ns / calls)
        if progress:
            print(f"  round {r + 1}/{rounds}" if r >= 0 else "  warm-up done",
                  file=sys.stderr, flush=True)


# -- the slow path: a success subscriber -------------------------------------------------------
@dataclass
class SlowPath:
    caller: list[float] = field(default_factory=list)  # overhead ns/call, caller side
    total: list[float] = field(default_factory=list)  # + drain and inbox reading, ns/call
    bare: list[float] = field(default_factory=list)
    events: int = 0
    calls: int = 0
    dropped: int = 0


def drain_inbox(brama: Any, sub: Any) -> int:
    """Wait until every success was handed over, then read the inbox empty."""
    brama.drain(timeout=30.0)
    got = 0
    while True:
        try:
            item = sub.get(timeout=0)
        except queue.Empty:
            return got
        got += len(item) if isinstance(item, tuple) else 1


def run_slow_path(rounds: int, calls: int, chunk: int, progress: bool) -> SlowPath:
    """Our decorator with one inbox subscribed to ``success``: every success goes to the actor."""
    from brama_actors import Brama, circuit_breaker

    out = SlowPath()
    with Brama.start() as slow:
        sub = slow.subscribe(events=["success"], max_pending=10 * chunk + 1_000)
        guarded = circuit_breaker("bench-slow", brama=slow)(noop)
        chunks = [chunk] * (calls // chunk) + ([calls % chunk] if calls % chunk else [])
        for r in range(-1, rounds):
            gc.collect()
            first_bare = r % 2 == 0
            for part in ("bare", "slow") if first_bare else ("slow", "bare"):
                if part == "bare":
                    gc.disable()
                    try:
                        ns = loop_call(noop, calls)
                    finally:
                        gc.enable()
                    if r >= 0:
                        out.bare.append(ns / calls)
                    continue
                timed = side = 0
                for size in chunks:
                    gc.disable()
                    try:
                        timed += loop_call(guarded, size)
                    finally:
                        gc.enable()
                    t0 = perf_ns()
                    got = drain_inbox(slow, sub)
                    side += perf_ns() - t0
                    if r >= 0:
                        out.events += got
                if r >= 0:
                    out.calls += calls
                    out.caller.append(timed / calls)
                    out.total.append((timed + side) / calls)
            if progress:
                print(f"  slow path round {r + 1}/{rounds}" if r >= 0
                      else "  slow path warm-up done", file=sys.stderr, flush=True)
        out.caller = [c - b for c, b in zip(out.caller, out.bare, strict=True)]
        out.total = [c - b for c, b in zip(out.total, out.bare, strict=True)]
        out.dropped = sub.statistics().dropped
        sub.unsubscribe()
    return out


# -- statistics ------------------------------------------------------------------------------
def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3); Q1 = Q3 = median for fewer than two values."""
    if len(values) < 2:
        m = values[0]
        return m, m, m
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    return [a / b if b > 0 else float("inf") for a, b in zip(num, den, strict=True)]


@dataclass
class Ratio:
    label: str
    num: str
    den: str
    target: float | None  # ratio must be <= target


def ratio_figures(by_key: dict[str, list[float]], ratio: Ratio) -> tuple[float, float, float,
                                                                         float]:
    """(median of per-round ratios, Q1, Q3, ratio of medians)."""
    per_round = paired_ratios(by_key[ratio.num], by_key[ratio.den])
    q1, med, q3 = quartiles(per_round)
    den_med = statistics.median(by_key[ratio.den])
    of_medians = statistics.median(by_key[ratio.num]) / den_med if den_med > 0 else float("inf")
    return med, q1, q3, of_medians


RATIOS = [
    Ratio("ours decorator (brama=) / circuitbreaker", "ours_dec", "cb_dec",
          TARGET_VS_CIRCUITBREAKER),
    Ratio("ours decorator (brama=) / pybreaker decorator", "ours_dec", "pb_dec",
          TARGET_VS_PYBREAKER),
    Ratio("ours decorator (default system) / circuitbreaker", "ours_default", "cb_dec",
          TARGET_VS_CIRCUITBREAKER),
    Ratio("ours decorator (default system) / pybreaker decorator", "ours_default", "pb_dec",
          TARGET_VS_PYBREAKER),
    Ratio("count window: ours decorator / circuitbreaker", "ours_count", "cb_dec", 1.0),
    Ratio("count window: ours decorator / pybreaker decorator", "ours_count", "pb_dec", 0.5),
    Ratio("time window: ours decorator / circuitbreaker", "ours_time", "cb_dec", 1.0),
    Ratio("time window: ours decorator / pybreaker decorator", "ours_time", "pb_dec", 0.5),
    Ratio("ours guard / pybreaker `call`", "ours_guard", "pb_call", None),
    Ratio("ours guard / pybreaker decorator", "ours_guard", "pb_dec", None),
    Ratio("ours decorator (brama=) / purgatory decorator", "ours_dec", "pg_dec", None),
    Ratio("rejection: ours decorator / pybreaker", "ours_reject", "pb_reject", None),
    Ratio("rejection: ours decorator / circuitbreaker", "ours_reject", "cb_reject", None),
    Ratio("rejection: ours guard / pybreaker", "ours_guard_reject", "pb_reject", None),
]


# -- machine info ------------------------------------------------------------------------------
def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine_info() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(f"{name} {ver(name)}" for name in (
            "brama-actors", "pykka", "pybreaker", "circuitbreaker", "purgatory")),
        "os": f"{platform.system()} {platform.release()}",
        "source": source_revision(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -- report ------------------------------------------------------------------------------------
def fmt_ns(x: float) -> str:
    return f"{x:,.0f}"


def verdict(value: float, target: float | None) -> str:
    if target is None:
        return "—"
    return "met" if value <= target else "NOT MET"


def report(setup: Setup, slow: SlowPath | None, args: argparse.Namespace,
           info: dict[str, str], checks: list[str], load_start: str) -> str:
    base = next(c for c in setup.contenders if c.key == BASELINE).samples
    by_key = {c.key: c.overheads(base) for c in setup.contenders}
    lines = [
        SECTION_TITLE,
        "",
        "Command (from the repository root):",
        "",
        "```sh",
        f"python tests/benchmarks/bench_guard.py{' --quick' if args.quick else ''}"
        " --markdown docs/benchmarks.md",
        "```",
        "",
        f"One process, a warm-up round then {args.rounds} rounds; each round times every "
        f"contender once ({args.calls:,} calls in a plain `for` loop, "
        "`time.perf_counter_ns`, `gc.disable()` during the loop), round-robin in an order "
        "rotated every round. Overhead = ns per call minus ns per call of the bare no-op "
        "`f()` timed in the same round; median over rounds, IQR in brackets, then min-max. "
        "Success path: closed circuits, `f` returns `None`. Rejection path: open circuits, "
        "each call raises and the loop catches it (overhead also net of the bare call). "
        "A ratio is the median of the per-round ratios of two overheads [IQR]; the ratio "
        "of the medians follows it. Peers are configured with their defaults apart from "
        "long reset timeouts.",
        "",
        "| contender | overhead per call, ns: median [IQR] | min-max | per call incl. f() |",
        "|---|---|---|---|",
    ]
    base_med = statistics.median(base)
    lines.append(f"| {next(c.label for c in setup.contenders if c.key == BASELINE)} "
                 f"(the baseline) | — | {fmt_ns(min(base))}-{fmt_ns(max(base))} "
                 f"| {fmt_ns(base_med)} |")
    for group in ("success", "reject"):
        if group == "reject":
            lines.append("| **rejection path (open circuit)** | | | |")
        for c in setup.contenders:
            if c.group != group:
                continue
            ov = by_key[c.key]
            q1, med, q3 = quartiles(ov)
            lines.append(f"| {c.label} | {fmt_ns(med)} [{fmt_ns(q1)}-{fmt_ns(q3)}] "
                         f"| {fmt_ns(min(ov))}-{fmt_ns(max(ov))} "
                         f"| {fmt_ns(statistics.median(c.samples))} |")
    lines += [
        "",
        "| ratio of overheads | median of per-round ratios [IQR] | ratio of medians "
        "| target | verdict |",
        "|---|---|---|---|---|",
    ]
    for ratio in RATIOS:
        med, q1, q3, of_medians = ratio_figures(by_key, ratio)
        target = "—" if ratio.target is None else f"<= {ratio.target:.1f}x"
        lines.append(f"| {ratio.label} | {med:.2f}x [{q1:.2f}-{q3:.2f}] | {of_medians:.2f}x "
                     f"| {target} | {verdict(med, ratio.target)} |")
    if slow is not None:
        cq1, cmed, cq3 = quartiles(slow.caller)
        tq1, tmed, tq3 = quartiles(slow.total)
        lines += [
            "",
            f"Slow path, measured separately (not compared): our decorator (`brama=`) on a "
            f"second system where one inbox subscription listens to `success` events, so "
            f"every success is told to the connection's actor. {args.slow_rounds} rounds "
            f"after a warm-up, each timing {args.slow_calls:,} calls in chunks of "
            f"{args.chunk:,}; after each chunk, outside the timed loop, `brama.drain()` and "
            f"the inbox is read empty. The bare `f()` loop alternates with it.",
            "",
            "| figure | median [IQR] | min-max |",
            "|---|---|---|",
            f"| caller-side overhead per call (timed loop only), ns | {fmt_ns(cmed)} "
            f"[{fmt_ns(cq1)}-{fmt_ns(cq3)}] | {fmt_ns(min(slow.caller))}-"
            f"{fmt_ns(max(slow.caller))} |",
            f"| same, plus drain() and reading the inbox, per call, ns | {fmt_ns(tmed)} "
            f"[{fmt_ns(tq1)}-{fmt_ns(tq3)}] | {fmt_ns(min(slow.total))}-"
            f"{fmt_ns(max(slow.total))} |",
            f"| success events read / guarded calls (timed rounds); dropped | "
            f"{slow.events:,} / {slow.calls:,}; {slow.dropped} | — |",
        ]
    lines += ["", "Checks: " + "; ".join(checks) + ".", "", "Machine:", ""]
    lines += [
        f"* CPU: {info['cpu']}, {info['cores']} cores (load average at the start: "
        f"{load_start}; at the end: {load_average()})",
        f"* {info['python']}; {info['packages']}",
        f"* OS: {info['os']}",
        f"* source measured: {info['source']}",
        f"* date: {info['date']}",
        "",
    ]
    return "\n".join(lines)


def write_markdown(path: Path, section: str) -> None:
    """Add this section at the end of ``path``, or replace it there if already present.

    Other sections are left byte for byte; a new file gets a ``# Benchmarks`` title.
    """
    section = section.rstrip("\n") + "\n"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Benchmarks\n\n" + section, encoding="utf-8")
        return
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        following = pattern.search(text)
        assert following is not None
        tail = text[following.end():]
        new = text[:following.start()] + section + ("\n" + tail if tail else "")
        path.write_text(new, encoding="utf-8")
        return
    # Append only (O_APPEND), so a section another writer adds meanwhile is not lost.
    sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    with path.open("a", encoding="utf-8") as out:
        out.write(sep + section)


def check_counts(setup: Setup, rounds: int, calls: int) -> list[str]:
    """Every guarded success of the success path was recorded by its connection."""
    expected = (rounds + 1) * calls
    checks = []
    for key, (brama, identifier) in setup.counted.items():
        brama.drain(timeout=30.0)
        status = brama.status(identifier)
        got = status.total_successes
        ok = "ok" if got == expected and status.state.value == "closed" else "MISMATCH"
        checks.append(f"{key}: {got:,} successes recorded of {expected:,} calls, "
                      f"{status.state.value} ({ok})")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short CI run (< 20 s)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds (default 31; 9 with --quick)")
    parser.add_argument("--calls", type=int, default=None,
                        help="calls per contender per round (default 50000; 10000 with --quick)")
    parser.add_argument("--slow-rounds", type=int, default=None,
                        help="slow-path rounds (default 9; 3 with --quick)")
    parser.add_argument("--slow-calls", type=int, default=None,
                        help="slow-path calls per round (default 20000; 3000 with --quick)")
    parser.add_argument("--chunk", type=int, default=1_000,
                        help="slow path: calls between two inbox drains (default 1000)")
    parser.add_argument("--no-slow", action="store_true", help="skip the slow path")
    parser.add_argument("--markdown", type=Path, default=None, metavar="PATH",
                        help="append (or replace) the 'Guarded calls' section of this file")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (9 if args.quick else 31)
    args.calls = args.calls or (10_000 if args.quick else 50_000)
    args.slow_rounds = args.slow_rounds or (3 if args.quick else 9)
    args.slow_calls = args.slow_calls or (3_000 if args.quick else 20_000)
    if min(args.rounds, args.calls, args.slow_rounds, args.slow_calls, args.chunk) < 1:
        parser.error("--rounds, --calls, --slow-rounds, --slow-calls and --chunk must be >= 1")

    import brama_actors

    load_start = load_average()
    started = time.monotonic()
    setup = build()
    try:
        print(f"success + rejection paths: {args.rounds} rounds x {len(setup.contenders)} "
              f"contenders x {args.calls:,} calls", file=sys.stderr, flush=True)
        run_rounds(setup.contenders, args.rounds, args.calls, progress=not args.quick)
        checks = check_counts(setup, args.rounds, args.calls)
    finally:
        setup.brama.stop()
        brama_actors.stop()
    slow = None
    if not args.no_slow:
        print(f"slow path: {args.slow_rounds} rounds x {args.slow_calls:,} calls",
              file=sys.stderr, flush=True)
        slow = run_slow_path(args.slow_rounds, args.slow_calls, args.chunk,
                             progress=not args.quick)
    section = report(setup, slow, args, machine_info(), checks, load_start)
    print(section)
    print(f"(wall time {time.monotonic() - started:.1f} s)", file=sys.stderr)
    if args.markdown is not None:
        write_markdown(args.markdown, section)
        print(f"wrote the section to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
