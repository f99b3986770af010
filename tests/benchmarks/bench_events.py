"""Events benchmark (issue: Event system): delivery throughput, latency, filter cost, memory.

Run from the repository root::

    python tests/benchmarks/bench_events.py                 # full run, a few minutes
    python tests/benchmarks/bench_events.py --quick         # CI smoke run, < 30 s
    python tests/benchmarks/bench_events.py --markdown docs/benchmarks.md

What it measures (each part in a fresh subprocess, so RSS and threads start clean):

1. throughput: ``failure()`` on 100 closed connections (``max_attempts=10**9``) from 1, 2
   and 4 reporting threads, fanned out to 10 inbox subscriptions (all events), each read
   by its own consumer thread with ``sub.get()`` while reporting runs. Deliveries/s =
   events x subscriptions / wall time from the start of reporting until the last event
   was taken out of the last inbox.
2. latency: ``failure()`` paced at 1,000/s from one thread; for every delivery, the
   ``time.perf_counter_ns()`` at which a consumer thread got the event minus the one taken
   right after ``failure()`` returned (events carry ``reason=i`` to be matched).
3. filter cost: two systems in the same process, one with 10 subscriptions
   ``connection=f"c{i}"``, one with 10,000; events aimed at ``c0`` (one matching
   subscription). Timed, interleaved: the event manager alone (one ``Publish`` of K events
   asked of it directly, through the internal ``brama._delivery.ref``; and K single-event
   ``Publish`` messages told, then ``drain()``), and end to end (N ``failure("c0")`` calls,
   then ``drain()``).
4. memory: VmRSS growth (``/proc/self/status``) per idle inbox subscription for 10,000 of
   them (unfiltered, and filtered per connection), ``tracemalloc`` bytes per subscription,
   and handler subscriptions (one thread each) against plain threads blocked on a
   ``Condition`` (the thread cost alone).
5. for the chart: deliveries/s to 1,000 and 10,000 inbox subscriptions, to 10 Pykka
   ``ThreadingActor`` subscribers and to 10 handler subscriptions (2 reporting threads).

It is not a test: pytest collects ``test_*.py`` only, so this file is never collected.
No dependency beyond the standard library, pykka and brama_actors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import cpu_model, percentile, rss_kib, source_revision

SECTION_TITLE = "## Events (issue: Event system)"
FINDINGS_TITLE = "### Findings"

# Targets of the Event system issue.
TARGET_DELIVERIES_PER_S = 100_000
#: The same fan-out with readers taking bursts with ``get_many()``.
TARGET_DELIVERIES_GET_MANY = 300_000
#: An outage seen by 1 all-events + 9 connection-filtered inboxes: calls/s, every event
#: delivered, and the p99 from failure() to the reader.
TARGET_FILTERED_CALLS = 50_000
TARGET_FILTERED_P99_MS = 20
TARGET_P99_MS = 5.0
TARGET_FILTER_RATIO = 1.5
TARGET_KIB_PER_SUB = 4.0

CONNECTIONS = 100
BIG = 10**9  # max_attempts that keeps circuits closed; max_pending that never drops
GET_TIMEOUT = 30.0

Row = tuple[str, str, str, str]


# -- small helpers -----------------------------------------------------------------------
def settled_rss_kib() -> int:
    gc.collect()
    time.sleep(0.2)
    gc.collect()
    return rss_kib()


def source_fingerprint() -> dict[str, str]:
    """A hash per brama_actors/*.py file, to notice the library changing during a run."""
    import hashlib

    package = Path(__file__).resolve().parents[2] / "brama_actors"
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(package.glob("*.py"))}


def machine_info(source_before: str = "",
                 fingerprint_before: dict[str, str] | None = None) -> dict[str, str]:
    from importlib.metadata import version

    import brama_actors

    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pykka": version("pykka"),
        "brama_actors": brama_actors.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "source": _source_note(source_before, fingerprint_before),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": load,
    }


def _source_note(before: str, fingerprint_before: dict[str, str] | None) -> str:
    after = source_revision()
    if not before or fingerprint_before is None:
        return after
    now = source_fingerprint()
    changed = sorted(name for name in fingerprint_before.keys() | now.keys()
                     if fingerprint_before.get(name) != now.get(name))
    if changed:
        return (f"{after} (WARNING: brama_actors/{', '.join(changed)} changed during the "
                f"run, which began at {before})")
    return f"{after} (unchanged during the run)" if before == after else (
        f"{after} (was {before} at the start; brama_actors/*.py unchanged)")


def start_system(connections: int = CONNECTIONS) -> tuple[Any, list[str]]:
    import brama_actors

    brama = brama_actors.Brama.start()
    names = [f"c{i}" for i in range(connections)]
    for name in names:
        brama.register(name, max_attempts=BIG)
    return brama, names


def clear_inbox(sub: Any) -> int:
    taken = 0
    while True:
        try:
            sub.get(0)
        except queue.Empty:
            return taken
        taken += 1


# -- subscriber kinds for the fan-out runs -------------------------------------------------
class _Counter:
    """Counts deliveries; sets ``done`` (and notes the time) when ``goal`` is reached."""

    def __init__(self) -> None:
        self.count = 0
        self.goal = BIG
        self.last = 0.0
        self.done = threading.Event()

    def arm(self, goal: int) -> None:
        self.goal = goal
        self.done.clear()

    def hit(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self.goal and not self.done.is_set():
            self.last = time.perf_counter()
            self.done.set()


def _counting_actor_class() -> type:
    import pykka

    class CountingActor(pykka.ThreadingActor):
        """A plain Pykka actor (its own daemon thread) counting what it is told."""

        use_daemon_thread = True

        def __init__(self, counter: _Counter) -> None:
            super().__init__()
            self.counter = counter

        def on_receive(self, message: Any) -> Any:
            if type(message) is tuple and message and message[0] == "brama_event":
                self.counter.hit()
            elif type(message) is tuple and message and message[0] == "brama_events":
                self.counter.hit(len(message[1]))
            return None

    return CountingActor


class _CountingHandler:
    """A handler subscription's callable: runs in that subscription's own thread."""

    def __init__(self, counter: _Counter) -> None:
        self.counter = counter

    def __call__(self, event: Any) -> None:
        self.counter.hit()


# -- child: fan-out throughput (sections 1, 4 and 5) ----------------------------------------
def child_fanout(kind: str, subs: int, threads: int, events: int, rounds: int,
                 memory: bool, consumers: int, method: str = "failure") -> dict[str, Any]:
    """Deliveries/s from ``threads`` reporting threads to ``subs`` subscriptions of ``kind``.

    ``method`` is the reporting call: ``failure`` (returns once applied) or ``success``
    (applied asynchronously). With ``memory``, also VmRSS/thread growth while the
    subscriptions are created.
    """
    brama, names = start_system()
    out: dict[str, Any] = {"kind": kind, "subs": subs, "threads": threads,
                           "events": events, "rounds": rounds, "method": method}
    last_share = max(1, subs // 100)
    last_start = 0.0
    actor_refs: list[Any] = []
    counters: list[_Counter] = []
    rss0 = settled_rss_kib() if memory else 0
    threads0 = threading.active_count()
    t0 = time.perf_counter()
    subscriptions: list[Any] = []
    if kind in ("inbox", "inbox_many"):
        for i in range(subs):
            if i == subs - last_share:
                last_start = time.perf_counter()
            subscriptions.append(brama.subscribe(max_pending=BIG))
    elif kind == "handler":
        for _ in range(subs):
            counter = _Counter()
            counters.append(counter)
            subscriptions.append(brama.subscribe(handler=_CountingHandler(counter),
                                                 max_pending=BIG))
    elif kind == "actor":
        actor_cls = _counting_actor_class()
        for _ in range(subs):
            counter = _Counter()
            counters.append(counter)
            ref = actor_cls.start(counter)
            actor_refs.append(ref)
            subscriptions.append(brama.subscribe(subscriber=ref, max_pending=BIG))
    else:
        raise ValueError(kind)
    out["subscribe_s"] = time.perf_counter() - t0
    if last_start:
        out["subscribe_last_ms"] = (time.perf_counter() - last_start) / last_share * 1e3
    out["threads_added"] = threading.active_count() - threads0
    if memory:
        out["rss_growth_kib"] = settled_rss_kib() - rss0

    delivered_total = 0

    def one_round(n_events: int) -> dict[str, float]:
        nonlocal delivered_total
        go = threading.Event()
        per_thread = [n_events // threads + (1 if t < n_events % threads else 0)
                      for t in range(threads)]
        ends: list[float] = []
        errors: list[str] = []
        readers: list[threading.Thread] = []
        if kind in ("inbox", "inbox_many"):
            n_readers = min(consumers, subs)
            slices = [subscriptions[i::n_readers] for i in range(n_readers)]

            def read(mine: list[Any]) -> None:
                try:
                    for _ in range(n_events):
                        for sub in mine:
                            sub.get(GET_TIMEOUT)
                except queue.Empty:
                    errors.append("an inbox consumer timed out")
                ends.append(time.perf_counter())

            def read_many(mine: list[Any]) -> None:
                # get_many(): each call takes what is queued (one lock, one wake-up).
                left = [[sub, n_events] for sub in mine]
                try:
                    while left:
                        for entry in left:
                            taken = entry[0].get_many(timeout=GET_TIMEOUT)
                            if not taken:
                                raise queue.Empty
                            entry[1] -= len(taken)
                        left = [entry for entry in left if entry[1] > 0]
                except queue.Empty:
                    errors.append("an inbox consumer timed out")
                ends.append(time.perf_counter())

            target = read_many if kind == "inbox_many" else read
            readers = [threading.Thread(target=target, args=(s,), daemon=True)
                       for s in slices]
            for reader in readers:
                reader.start()
        else:
            for counter in counters:
                counter.arm(counter.count + n_events)

        call = getattr(brama, method)

        def report(offset: int, count: int) -> None:
            go.wait()
            for j in range(count):
                call(names[(offset + j * threads) % len(names)])

        reporters = [threading.Thread(target=report, args=(t, per_thread[t]), daemon=True)
                     for t in range(threads)]
        for reporter in reporters:
            reporter.start()
        time.sleep(0.05)  # readers are blocked in get(), reporters in go.wait()
        start = time.perf_counter()
        go.set()
        for reporter in reporters:
            reporter.join()
        reported = time.perf_counter()
        if kind in ("inbox", "inbox_many"):
            for reader in readers:
                reader.join()
            end = max(ends)
        else:
            for counter in counters:
                if not counter.done.wait(GET_TIMEOUT):
                    errors.append(f"a {kind} subscriber timed out")
            end = max(c.last for c in counters)
        if errors:
            raise RuntimeError(f"{errors[0]} ({len(errors)} error(s))")
        delivered_total += n_events * subs
        wall = end - start
        return {"wall_s": wall, "deliveries_per_s": n_events * subs / wall,
                "reports_per_s": n_events / (reported - start),
                "lag_ms": (end - reported) * 1e3}

    if events > 0:
        one_round(max(50, events // 10))  # warm-up, not reported
        results = [one_round(events) for _ in range(rounds)]
        out["runs"] = results
        brama.drain(timeout=60)
        out["dropped"] = sum(s.statistics().dropped for s in subscriptions)
        out["failed"] = sum(s.statistics().failed for s in subscriptions)
    t0 = time.perf_counter()
    brama.stop()
    out["stop_s"] = time.perf_counter() - t0
    for ref in actor_refs:
        ref.stop()
    return out


# -- child: paced latency (section 2) ------------------------------------------------------
def child_filtered(calls: int, rounds: int) -> dict[str, Any]:
    """An outage seen by a dashboard: ``calls`` failure() over 100 connections, one
    all-events inbox and nine inboxes filtered to one connection each, every inbox read
    by its own thread with get_many(). Report-to-receipt latency per delivery: the
    reason carries perf_counter_ns() at the call, the reader stamps its receipt."""
    brama, names = start_system()
    subs = [brama.subscribe(max_pending=BIG)]
    subs += [brama.subscribe(connection=names[i], max_pending=BIG) for i in range(9)]
    per_connection = calls // len(names)
    expected = [calls] + [per_connection] * 9
    out: dict[str, Any] = {"calls": calls, "runs": []}
    clock = time.perf_counter_ns
    for _ in range(rounds + 1):  # the first round warms up, not reported
        lags: list[list[int]] = [[] for _ in subs]
        ends: list[int] = [0] * len(subs)

        def read(index: int, lags: list[list[int]], ends: list[int]) -> None:
            sub, mine, want = subs[index], lags[index], expected[index]
            while len(mine) < want:
                got = sub.get_many(timeout=GET_TIMEOUT)
                now = clock()
                if not got:
                    return
                mine.extend(now - event.data["reason"] for event in got)
            ends[index] = clock()

        readers = [threading.Thread(target=read, args=(i, lags, ends), daemon=True)
                   for i in range(len(subs))]
        for reader in readers:
            reader.start()
        failure = brama.failure
        start = clock()
        for j in range(calls):
            failure(names[j % len(names)], reason=clock())
        reported = clock()
        for reader in readers:
            reader.join(GET_TIMEOUT * 2)
        delivered = sum(len(x) for x in lags)
        samples = sorted(v for x in lags for v in x)
        out["runs"].append({
            "calls_per_s": calls / ((reported - start) / 1e9),
            "delivered": delivered, "expected": sum(expected),
            "p50_ms": percentile(samples, 50) / 1e6 if samples else None,
            "p99_ms": percentile(samples, 99) / 1e6 if samples else None,
            "last_receipt_ms": (max(ends) - reported) / 1e6,
        })
    out["runs"] = out["runs"][1:]
    brama.stop()
    return out


def child_latency(subs: int, events: int, rate: float) -> dict[str, Any]:
    brama, names = start_system()
    subscriptions = [brama.subscribe(max_pending=BIG) for _ in range(subs)]
    warm = 200
    total = warm + events
    returned = [0] * total
    called = [0] * total
    received = [[0] * total for _ in range(subs)]
    errors: list[str] = []

    def read(k: int) -> None:
        sub = subscriptions[k]
        mine = received[k]
        try:
            for _ in range(total):
                event = sub.get(GET_TIMEOUT)
                mine[event.data["reason"]] = time.perf_counter_ns()
        except queue.Empty:
            errors.append("consumer timed out")

    readers = [threading.Thread(target=read, args=(k,), daemon=True) for k in range(subs)]
    for reader in readers:
        reader.start()
    pc = time.perf_counter_ns
    for i in range(warm):  # unpaced warm-up
        called[i] = pc()
        brama.failure(names[i % len(names)], reason=i)
        returned[i] = pc()
    time.sleep(0.2)
    period_ns = int(1e9 / rate)
    begin = pc()
    behind = 0
    for n, i in enumerate(range(warm, total)):
        due = begin + n * period_ns
        now = pc()
        if now < due:
            time.sleep((due - now) / 1e9)
        elif now - due > period_ns:
            behind += 1
        called[i] = pc()
        brama.failure(names[i % len(names)], reason=i)
        returned[i] = pc()
    elapsed = (pc() - begin) / 1e9
    for reader in readers:
        reader.join()
    brama.stop()
    if errors:
        raise RuntimeError(errors[0])
    from_return = []
    from_call = []
    early = 0
    for k in range(subs):
        for i in range(warm, total):
            got = received[k][i]
            if got < returned[i]:
                early += 1
            from_return.append(max(0, got - returned[i]) / 1e6)
            from_call.append((got - called[i]) / 1e6)
    call_ms = [(returned[i] - called[i]) / 1e6 for i in range(warm, total)]
    return {
        "subs": subs, "events": events, "rate": rate, "achieved_rate": events / elapsed,
        "behind": behind, "deliveries": len(from_return),
        "p50_ms": percentile(from_return, 50), "p99_ms": percentile(from_return, 99),
        "p999_ms": percentile(from_return, 99.9), "max_ms": max(from_return),
        "call_p50_ms": percentile(from_call, 50), "call_p99_ms": percentile(from_call, 99),
        "failure_p50_ms": percentile(call_ms, 50), "failure_p99_ms": percentile(call_ms, 99),
        "early_pct": 100 * early / len(from_return),
    }


# -- child: filter cost, 10 vs many connection-filtered subscriptions (sections 3, 4) -------
def child_filter(many: int, k_events: int, calls: int, repeat: int) -> dict[str, Any]:
    from types import MappingProxyType

    from brama_actors._delivery._manager import Publish
    from brama_actors._events import Event, EventType

    last_share = max(1, many // 100)
    last_ms = 0.0

    def build(count: int) -> tuple[Any, Any]:
        nonlocal last_ms
        brama, _ = start_system(10)
        probe = None
        last_start = 0.0
        for i in range(count):
            if i == count - last_share:
                last_start = time.perf_counter()
            sub = brama.subscribe(connection=f"c{i}", max_pending=BIG)
            if i == 0:
                probe = sub
        last_ms = (time.perf_counter() - last_start) / last_share * 1e3
        return brama, probe

    few, few_probe = build(10)
    rss0 = settled_rss_kib()
    t0 = time.perf_counter()
    lots, lots_probe = build(many)
    subscribe_s = time.perf_counter() - t0
    rss_growth = settled_rss_kib() - rss0

    data = MappingProxyType({"state": "closed", "failure_count": 1, "reason": None})
    batch = tuple(Event(EventType.FAILURE, 0, "c0", None, data) for _ in range(k_events))
    singles = [Publish((event,)) for event in batch]

    def em_batch(brama: Any) -> float:
        em = brama._delivery.ref
        start = time.perf_counter_ns()
        em.ask(Publish(batch), timeout=120)
        return (time.perf_counter_ns() - start) / k_events

    def em_single(brama: Any) -> float:
        tell = brama._delivery.ref.tell
        start = time.perf_counter_ns()
        for message in singles:
            tell(message)
        brama.drain(timeout=120)
        return (time.perf_counter_ns() - start) / k_events

    def end_to_end(brama: Any) -> float:
        start = time.perf_counter_ns()
        for _ in range(calls):
            brama.failure("c0")
        brama.drain(timeout=120)
        return (time.perf_counter_ns() - start) / calls

    def drain_only(brama: Any) -> float:
        start = time.perf_counter_ns()
        for _ in range(20):
            brama.drain(timeout=120)
        return (time.perf_counter_ns() - start) / 20

    measures = {"em_batch": em_batch, "em_single": em_single, "e2e": end_to_end,
                "drain": drain_only}
    results: dict[str, dict[str, list[float]]] = {
        name: {"few": [], "many": []} for name in measures}
    systems = {"few": (few, few_probe), "many": (lots, lots_probe)}
    for name, fn in measures.items():
        for (brama, probe) in systems.values():  # warm-up
            fn(brama)
            clear_inbox(probe)
        for rep in range(repeat):
            order = ("few", "many") if rep % 2 == 0 else ("many", "few")
            for label in order:
                brama, probe = systems[label]
                results[name][label].append(fn(brama))
                clear_inbox(probe)
    few.stop()
    lots.stop()
    out: dict[str, Any] = {"many": many, "k_events": k_events, "calls": calls,
                           "repeat": repeat, "subscribe_s": subscribe_s,
                           "subscribe_last_ms": last_ms,
                           "rss_growth_kib": rss_growth}
    for name, per in results.items():
        few_ns, many_ns = per["few"], per["many"]
        ratios = [m / f for m, f in zip(many_ns, few_ns, strict=True)]
        out[name] = {"few_ns": statistics.median(few_ns), "many_ns": statistics.median(many_ns),
                     "few_min_ns": min(few_ns), "many_min_ns": min(many_ns),
                     "ratio_median": statistics.median(ratios),
                     "ratio_min": min(many_ns) / min(few_ns)}
    return out


# -- child: tracemalloc per subscription (section 4) --------------------------------------
def child_trace(subs: int) -> dict[str, Any]:
    import tracemalloc

    out: dict[str, Any] = {"subs": subs}
    for label in ("inbox", "inbox_filtered", "handler"):
        brama, _ = start_system(10)
        keep = [brama.subscribe(), brama.subscribe(connection="c1")]  # warm code paths
        gc.collect()
        tracemalloc.start(1)
        base = tracemalloc.take_snapshot()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(subs):
            if label == "inbox":
                keep.append(brama.subscribe())
            elif label == "inbox_filtered":
                keep.append(brama.subscribe(connection=f"x{i}"))
            else:
                keep.append(brama.subscribe(handler=_CountingHandler(_Counter())))
        brama.drain(timeout=60)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
        top = snap.compare_to(base, "lineno")[:6]
        out[label] = {
            "bytes_per_sub": (after - before) / subs,
            "top": [f"{s.size_diff / subs:.0f} B/sub {s.traceback[0].filename.rsplit('/', 1)[-1]}:"
                    f"{s.traceback[0].lineno}" for s in top],
        }
        brama.stop()
        del keep
    return out


# -- child: plain threads, the cost of a thread alone (section 4) --------------------------
def child_threads(count: int) -> dict[str, Any]:
    rss0 = settled_rss_kib()
    conds = [threading.Condition(threading.Lock()) for _ in range(count)]
    stop = threading.Event()

    def wait(cond: threading.Condition) -> None:
        with cond:
            while not stop.is_set():
                cond.wait()

    threads = [threading.Thread(target=wait, args=(c,), daemon=True) for c in conds]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    start_s = time.perf_counter() - t0
    time.sleep(0.2)
    growth = settled_rss_kib() - rss0
    stop.set()
    for cond in conds:
        with cond:
            cond.notify()
    for thread in threads:
        thread.join()
    return {"threads": count, "rss_growth_kib": growth, "start_s": start_s}


# -- parent ---------------------------------------------------------------------------------
def run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", *args],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"benchmark child {args} failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1]))


def met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def fmt_rate(values: Sequence[float]) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.0f}/s"
    return f"{med:,.0f}/s ({min(values):,.0f}-{max(values):,.0f})"


def per_sub_kib(kib: float, subs: int) -> str:
    return f"{kib / subs:.2f} KiB ({kib / 1024:.1f} MiB for {subs:,})"


def build_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    # 1. throughput
    for res in r["throughput"]:
        rates = [run["deliveries_per_s"] for run in res["runs"]]
        reports = [run["reports_per_s"] for run in res["runs"]]
        med = statistics.median(rates)
        rows.append((f"1. deliveries/s, 10 inbox subs, {res['threads']} reporting thread(s)",
                     fmt_rate(rates), f">= {TARGET_DELIVERIES_PER_S:,}/s",
                     met(med >= TARGET_DELIVERIES_PER_S)))
        rows.append((f"   failure() calls/s (events), {res['threads']} thread(s); "
                     "consumer lag after the last call",
                     f"{statistics.median(reports):,.0f}/s; "
                     f"{max(0.0, statistics.median(run['lag_ms'] for run in res['runs'])):.1f} ms"
                     + (f"; {res['dropped']} dropped" if res["dropped"] else ""), "", ""))
    for res in r.get("throughput_many", []):
        rates = [run["deliveries_per_s"] for run in res["runs"]]
        med = statistics.median(rates)
        rows.append((f"1b. deliveries/s, 10 inbox subs read with get_many(), "
                     f"{res['threads']} reporting thread(s)",
                     fmt_rate(rates), f">= {TARGET_DELIVERIES_GET_MANY:,}/s",
                     met(med >= TARGET_DELIVERIES_GET_MANY)))
    filtered = r.get("filtered")
    if filtered:
        runs = filtered["runs"]
        rates = [run["calls_per_s"] for run in runs]
        p99s = [run["p99_ms"] for run in runs]
        complete = all(run["delivered"] == run["expected"] for run in runs)
        rows.append((f"1c. failure() calls/s, {filtered['calls']:,} over 100 connections, "
                     "1 all-events + 9 filtered inboxes (get_many readers)",
                     fmt_rate(rates) + ("" if complete else "; EVENTS MISSING"),
                     f">= {TARGET_FILTERED_CALLS:,}/s",
                     met(statistics.median(rates) >= TARGET_FILTERED_CALLS and complete)))
        rows.append(("    p99 report-to-receipt latency in that run",
                     f"{statistics.median(p99s):.1f} ms ({min(p99s):.1f}-{max(p99s):.1f})",
                     f"< {TARGET_FILTERED_P99_MS} ms",
                     met(statistics.median(p99s) < TARGET_FILTERED_P99_MS)))
    # 2. latency: several runs (fresh processes); medians, range in brackets
    for runs in r["latency"]:
        first = runs[0]

        def mid(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        def span(key: str, runs: list[dict[str, Any]] = runs) -> str:
            if len(runs) == 1:
                return ""
            values = [run[key] for run in runs]
            return f" ({min(values):.3f}-{max(values):.3f})"

        p99 = mid("p99_ms")
        rows.append((f"2. latency failure() return -> consumer, p50 / p99, {first['subs']} inbox "
                     f"sub(s), {first['rate']:,.0f}/s, {len(runs)} run(s)",
                     f"{mid('p50_ms'):.3f} / {p99:.3f}{span('p99_ms')} ms",
                     f"p99 < {TARGET_P99_MS:g} ms", met(p99 < TARGET_P99_MS)))
        rows.append((f"   same, p99.9 / max; from the call; failure() itself p50 / p99 "
                     f"({first['subs']} sub(s))",
                     f"{mid('p999_ms'):.2f} / {max(run['max_ms'] for run in runs):.2f} ms; "
                     f"{mid('call_p50_ms'):.3f} / {mid('call_p99_ms'):.3f} ms; "
                     f"{mid('failure_p50_ms'):.3f} / {mid('failure_p99_ms'):.3f} ms",
                     "", ""))
        rows.append((f"   paced rate achieved; deliveries before failure() returned "
                     f"({first['subs']} sub(s))",
                     f"{mid('achieved_rate'):,.0f}/s; {mid('early_pct'):.1f}% (counted as 0)",
                     "", ""))
    # 3. filter cost
    fc = r["filter"]
    many = fc["many"]
    labels = {
        "em_batch": f"event manager, one Publish of {fc['k_events']:,} events, per event",
        "em_single": f"event manager, {fc['k_events']:,} one-event Publish + drain(), per event",
        "e2e": f"failure('c0') x {fc['calls']:,} + drain(), per event",
    }
    for name, label in labels.items():
        m = fc[name]
        ratio = m["ratio_median"]
        rows.append((f"3. {label}: 10 vs {many:,} subs",
                     f"{m['few_ns'] / 1e3:.2f} vs {m['many_ns'] / 1e3:.2f} µs; paired ratio "
                     f"{ratio:.2f}x (ratio of medians {m['many_ns'] / m['few_ns']:.2f}x, "
                     f"min/min {m['ratio_min']:.2f}x)",
                     f"<= {TARGET_FILTER_RATIO:g}x", met(ratio <= TARGET_FILTER_RATIO)))
    d = fc["drain"]
    rows.append((f"   drain() with nothing pending: 10 vs {many:,} subs",
                 f"{d['few_ns'] / 1e3:.0f} vs {d['many_ns'] / 1e3:.0f} µs", "", ""))
    rows.append((f"   subscribe() {many:,} connection-filtered subs (wall); per call, last 1%",
                 f"{fc['subscribe_s']:.1f} s ({fc['subscribe_s'] / many * 1e3:.2f} ms each); "
                 f"{fc['subscribe_last_ms']:.2f} ms", "", ""))
    # 4. memory
    mem = r["inbox_memory"]
    kib = mem["rss_growth_kib"] / mem["subs"]
    rows.append((f"4. RSS per idle inbox sub (all events), {mem['subs']:,} subs",
                 per_sub_kib(mem["rss_growth_kib"], mem["subs"]),
                 f"< {TARGET_KIB_PER_SUB:g} KiB", met(kib < TARGET_KIB_PER_SUB)))
    kib_f = fc["rss_growth_kib"] / many
    rows.append((f"   RSS per idle inbox sub (connection=f'c{{i}}'), {many:,} subs",
                 per_sub_kib(fc["rss_growth_kib"], many),
                 f"< {TARGET_KIB_PER_SUB:g} KiB", met(kib_f < TARGET_KIB_PER_SUB)))
    rows.append((f"   subscribe() {mem['subs']:,} inbox subs (all events) (wall); per call, "
                 "last 1%",
                 f"{mem['subscribe_s']:.1f} s ({mem['subscribe_s'] / mem['subs'] * 1e3:.2f} ms "
                 f"each); {mem['subscribe_last_ms']:.2f} ms", "", ""))
    tr = r["trace"]
    rows.append((f"   tracemalloc per sub: inbox / inbox filtered / handler ({tr['subs']:,} each)",
                 f"{tr['inbox']['bytes_per_sub'] / 1024:.2f} / "
                 f"{tr['inbox_filtered']['bytes_per_sub'] / 1024:.2f} / "
                 f"{tr['handler']['bytes_per_sub'] / 1024:.2f} KiB", "", ""))
    hm = r["handler_memory"]
    th = r["threads_ref"]
    rows.append((f"   RSS per idle handler sub, {hm['subs']:,} subs (threads added)",
                 f"{hm['rss_growth_kib'] / hm['subs']:.2f} KiB "
                 f"({hm['threads_added']:,} threads)", "", ""))
    rows.append((f"   of which the thread: RSS per plain thread waiting on a Condition "
                 f"({th['threads']:,})",
                 f"{th['rss_growth_kib'] / th['threads']:.2f} KiB", "", ""))
    rows.append((f"   subscribe() {hm['subs']:,} handler subs; stop() with them (wall)",
                 f"{hm['subscribe_s']:.2f} s; {hm['stop_s']:.2f} s", "", ""))
    # 5. chart figures
    for res in r["chart"]:
        rates = [run["deliveries_per_s"] for run in res["runs"]]
        how = "" if res["method"] == "failure" else f", reported with {res['method']}()"
        rows.append((f"5. deliveries/s to {res['subs']:,} {res['kind']} subs, "
                     f"{res['threads']} reporting threads{how}",
                     fmt_rate(rates) + (f"; {res['dropped']} dropped" if res["dropped"] else ""),
                     "", ""))
    return rows


def text_table(rows: list[Row]) -> str:
    header = ("figure", "value", "target", "")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    return "\n".join(lines)


def markdown_section(rows: list[Row], info: dict[str, str], command: str,
                     details: str) -> str:
    out = [
        SECTION_TITLE,
        "",
        "Command (from the repository root):",
        "",
        "```sh",
        command,
        "```",
        "",
        details,
        "",
        "| figure | value | target | verdict |",
        "|---|---|---|---|",
    ]
    out += [f"| {f.strip()} | {v} | {t or '—'} | {m or '—'} |" for f, v, t, m in rows]
    out += [
        "",
        "Machine:",
        "",
        f"* CPU: {info['cpu']}, {info['cores']} cores "
        f"(load average at the end: {info['load']}; other processes were running)",
        f"* {info['python']}, pykka {info['pykka']}, brama_actors {info['brama_actors']}",
        f"* OS: {info['os']}",
        f"* source measured: {info['source']}",
        f"* date: {info['date']}",
        "",
    ]
    return "\n".join(out)


def write_markdown(path: Path, section: str) -> None:
    """Replace this benchmark's section in ``path`` (or append it); keep other sections.

    A hand-written ``### Findings`` subsection of the old section is kept.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(text)
    if found:
        old = found.group(0)
        at = old.find(f"\n{FINDINGS_TITLE}")
        if at >= 0:
            section = section.rstrip("\n") + "\n" + old[at:].rstrip("\n") + "\n"
        text = text[:found.start()] + section.rstrip("\n") + "\n\n" + text[found.end():]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"events": 2_000, "rounds": 1, "lat_events": 1_000, "many": 1_000,
                "k_events": 5_000, "calls": 300, "repeat": 3, "mem_subs": 1_000,
                "handler_subs": 200, "trace_subs": 300, "scale": [], "lat_runs": 1,
                "chart_events": 2_000}
    return {"events": 20_000, "rounds": 5, "lat_events": 5_000, "many": 10_000,
            "k_events": 20_000, "calls": 2_000, "repeat": 7, "mem_subs": 10_000,
            "handler_subs": 1_000, "trace_subs": 1_000, "scale": [(1_000, 1_000)], "lat_runs": 3,
            "chart_events": 20_000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short run for CI (< 30 s)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="PATH",
                        help="write/replace the 'Events' section of this markdown file")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        what, *rest = args.child
        values = [json.loads(v) for v in rest]
        runners = {"fanout": child_fanout, "latency": child_latency, "filter": child_filter,
                   "trace": child_trace, "threads": child_threads,
                   "filtered": child_filtered}
        print(json.dumps(runners[what](*values)))
        return 0

    p = plan(args.quick)
    source_before, fingerprint_before = source_revision(), source_fingerprint()
    wall0 = time.perf_counter()
    print(f"bench_events ({'quick' if args.quick else 'full'})", flush=True)

    def child(*parts: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = run_child([str(parts[0]), *(json.dumps(v) for v in parts[1:])])
        print(f"  {parts[0]}{list(parts[1:])}: {time.perf_counter() - t0:.1f} s", flush=True)
        return result

    results: dict[str, Any] = {}
    # child_fanout(kind, subs, threads, events, rounds, memory, consumers)
    results["throughput"] = [child("fanout", "inbox", 10, t, p["events"], p["rounds"], False, 10)
                             for t in (1, 2, 4)]
    results["throughput_many"] = [child("fanout", "inbox_many", 10, t, p["events"],
                                        p["rounds"], False, 10) for t in (1, 2)]
    results["filtered"] = child("filtered", 10_000 if not args.quick else 2_000,
                                p["rounds"])
    results["latency"] = [[child("latency", s, p["lat_events"], 1000.0)
                           for _ in range(p["lat_runs"])] for s in (10, 1)]
    results["filter"] = child("filter", p["many"], p["k_events"], p["calls"], p["repeat"])
    big = p["mem_subs"]
    big_events = max(50, 2_000_000 // big) if not args.quick else 200
    results["inbox_memory"] = child("fanout", "inbox", big, 2, big_events, 1, True, 10)
    results["handler_memory"] = child("fanout", "handler", p["handler_subs"], 2, 0, 0, True, 10)
    results["threads_ref"] = child("threads", p["handler_subs"])
    results["trace"] = child("trace", p["trace_subs"])
    chart = [child("fanout", "inbox", subs, 2, ev, p["rounds"], False, 10)
             for subs, ev in p["scale"]]
    chart.append(results["inbox_memory"])
    chart += [child("fanout", kind, 10, 2, p["chart_events"], p["rounds"], False, 10)
              for kind in ("actor", "handler")]
    chart.append(results["throughput"][1])
    chart.append(child("fanout", "inbox", 10, 2, p["chart_events"], p["rounds"], False, 10,
                       "success"))
    results["chart"] = chart

    rows = build_rows(results)
    info = machine_info(source_before, fingerprint_before)
    print()
    print(text_table(rows))
    print()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['python']}, "
          f"pykka {info['pykka']}, {info['date']}, load {info['load']}; "
          f"source: {info['source']}; total {time.perf_counter() - wall0:.0f} s")
    for label in ("inbox", "inbox_filtered", "handler"):
        print(f"tracemalloc top ({label}): " + "; ".join(results["trace"][label]["top"]))

    if args.markdown is not None:
        command = "python tests/benchmarks/bench_events.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]))
        events, rounds = p["events"], p["rounds"]
        details = (
            f"Each part runs in a fresh subprocess. Systems hold {CONNECTIONS} connections "
            "`c0`… registered with `max_attempts=10**9` (circuits stay closed, so each "
            "`failure()` emits one `failure` event); subscriptions are created after "
            "registration with `max_pending` large enough that nothing is dropped. "
            f"(1) {events:,} `failure()` calls per round, spread over the 100 connections "
            "from 1, 2 or 4 reporting threads; 10 inbox subscriptions to all events, each "
            "read by its own consumer thread (`sub.get()`) during reporting; deliveries/s = "
            "events x 10 / wall time from the start of reporting to the last `get()`; "
            f"median of {rounds} rounds after a warm-up (range in brackets). "
            f"(2) {p['lat_events']:,} `failure(reason=i)` calls paced at 1,000/s from one "
            "thread, after 200 unpaced warm-up calls; latency = `perf_counter_ns()` in the "
            "consumer thread when `get()` returned the event minus `perf_counter_ns()` right "
            "after `failure()` returned (an event can reach a consumer before the caller "
            "resumes; those count as 0), over every delivery to every subscription. "
            f"(3) Two systems in one process, with 10 and with {p['many']:,} subscriptions "
            "`connection=f'c{i}'`; events for `c0` (one matching subscription); "
            f"{p['repeat']} interleaved repeats, medians, ratio = median of paired ratios. "
            "The event-manager rows send `Publish` messages to the event manager directly "
            "(internal `brama._delivery.ref`) to leave out the connection actors. "
            "(4) VmRSS from `/proc/self/status` after `gc.collect()`, before and after "
            "creating the subscriptions; tracemalloc counts Python allocations only. "
            "(5) as (1) with 2 reporting threads; subscriptions beyond 10 are read by 10 "
            "consumer threads, each taking from its share of the inboxes in turn; actor "
            "subscribers are plain `pykka.ThreadingActor`s (`use_daemon_thread=True`) "
            "counting messages."
        )
        write_markdown(args.markdown, markdown_section(rows, info, command.strip(), details))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
