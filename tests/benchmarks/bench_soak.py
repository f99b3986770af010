"""Load and soak (issue: Reliability): many connections, many subscriptions, sustained load.

Run from the repository root::

    python tests/benchmarks/bench_soak.py                 # full: 60 s
    python tests/benchmarks/bench_soak.py --quick         # 5 s, smaller (CI runs this)
    python tests/benchmarks/bench_soak.py --markdown docs/reliability.md

It registers 10,000 connections and 1,000 subscriptions (inboxes, each filtered to
10 connections, read by consumer threads), then reports failures and successes from
4 threads as fast as they go for the duration, and reports events/s, p99 delivery
latency (from a 100,000-sample reservoir, so the benchmark's own memory stays flat), RSS
after a warm-up under load and at the end (read before computing percentiles), threads
at start and end, the event manager's peak backlog, dropped and failed counts. Then it
measures expiry precision: 10,000 circuits opened at the same instant, lateness of each
``circuit_half_opened`` event against its deadline (target p99 < 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pykka

import brama_actors
from tests.benchmarks.bench_scale import machine_info, percentile, rss_kib

SECTION_TITLE = "## Load and soak"
#: Latency samples kept (reservoir sampling over the whole run).
RESERVOIR = 100_000


def loop_probe(brama: brama_actors.Brama, name: str | None,
               stop: threading.Event) -> dict[str, float]:
    """Run an asyncio loop until ``stop``: a ticker measures how late it wakes.

    With ``name``, a task also makes guarded ``async def`` calls on that connection (two
    failures in three calls) as fast as the loop lets it: whatever brama_actors waits
    for must not stall the loop. Without, it measures the stalls the load alone causes
    (other threads holding the GIL), the floor to compare with.
    """
    lags: list[float] = []
    calls = [0]

    async def main() -> None:
        async def ticker() -> None:
            while not stop.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - before - 0.001)

        async def caller() -> None:
            @brama_actors.circuit_breaker(name, brama=brama)  # type: ignore[arg-type]
            async def call(i: int) -> None:
                if i % 3:
                    raise ConnectionError("down")

            i = 0
            while not stop.is_set():
                try:
                    await call(i)
                except (ConnectionError, brama_actors.CircuitOpenError):
                    pass
                except brama_actors.BramaError:
                    return
                i += 1
                calls[0] += 1
                if i % 10 == 0:
                    await asyncio.sleep(0)  # let the ticker run as an application would

        tasks = [asyncio.create_task(ticker())]
        if name is not None:
            tasks.append(asyncio.create_task(caller()))
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return {"max_ms": max(lags) * 1000 if lags else float("nan"),
            "p99_ms": percentile(lags, 99) * 1000 if lags else float("nan"),
            "calls": calls[0]}


def soak(connections: int, subscriptions: int, seconds: float) -> dict[str, float]:
    brama = brama_actors.Brama.start(max_attempts=5, expiry=50)
    names = [f"c{i}" for i in range(connections)]
    for name in names:
        brama.register(name)
    threads_start = threading.active_count()
    per = max(1, connections // subscriptions)
    # A fixed reservoir of latency samples (uniform over the run): a list of every
    # sample grew by ~40 B each, 20+ MiB over 60 s, and hid what the library does.
    latencies: list[float] = []
    seen = [0]
    rng = random.Random(1)
    lock = threading.Lock()

    class Consumer(pykka.ThreadingActor):
        """Receives events as actor messages: no polling."""

        use_daemon_thread = True

        def on_receive(self, message: object) -> None:
            if isinstance(message, tuple) and message[0] == "brama_event":
                event = message[1]
                reason = event.data.get("reason")
                if event.event == "failure" and isinstance(reason, float):
                    latency = time.perf_counter() - reason
                    with lock:
                        seen[0] += 1
                        if len(latencies) < RESERVOIR:
                            latencies.append(latency)
                        else:
                            slot = rng.randrange(seen[0])
                            if slot < RESERVOIR:
                                latencies[slot] = latency

    consumers = [Consumer.start() for _ in range(4)]
    # Each subscription watches its own connection (indexed, as an application would).
    subs = [brama.subscribe(events=["failure", "state_change"], connection=names[i * per],
                            subscriber=consumers[i % 4], max_pending=1_000_000)
            for i in range(subscriptions)]
    stop = threading.Event()
    reported = [0] * 4

    def report(k: int) -> None:
        i = k
        while not stop.is_set():
            name = names[(i % subscriptions) * per]
            try:
                if i % 3:
                    brama.failure(name, reason=time.perf_counter())
                else:
                    brama.success(name)
            except brama_actors.BramaError:
                return
            reported[k] += 1
            i += 4

    reporters = [threading.Thread(target=report, args=(k,)) for k in range(4)]
    backlog = brama._delivery.backlog  # internal: how far the manager is behind
    peak_backlog = 0
    probes: dict[str, dict[str, float]] = {}
    probe_stop = threading.Event()
    probe_threads = [
        threading.Thread(target=lambda: probes.__setitem__(
            "guarded", loop_probe(brama, names[0], probe_stop))),
        threading.Thread(target=lambda: probes.__setitem__(
            "idle", loop_probe(brama, None, probe_stop))),
    ]
    start = time.perf_counter()
    for thread in reporters + probe_threads:
        thread.start()
    # RSS at start: once the load runs and the first allocations settled (warm-up).
    warm_up = min(5.0, seconds / 6)
    time.sleep(warm_up)
    rss_start = rss_kib()
    deadline = start + seconds
    while (left := deadline - time.perf_counter()) > 0:
        time.sleep(min(0.25, left))
        peak_backlog = max(peak_backlog, backlog())
    probe_stop.set()
    for thread in probe_threads:
        thread.join(30)
    stop.set()
    for thread in reporters:
        thread.join(30)
    elapsed = time.perf_counter() - start
    brama.drain(timeout=60)
    for consumer in consumers:
        consumer.ask("sync", timeout=60)  # everything told to it was handled
    rss_end = rss_kib()  # before the percentiles below allocate their sorted copies
    threads_end = threading.active_count() - len(consumers)
    stats = [s.statistics() for s in subs]
    result = {
        "events_per_s": sum(s.delivered for s in stats) / elapsed,
        "reports_per_s": sum(reported) / elapsed,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else float("nan"),
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else float("nan"),
        "rss_start_mib": rss_start / 1024, "rss_end_mib": rss_end / 1024,
        "warm_up_s": warm_up, "samples": seen[0], "peak_backlog": peak_backlog,
        "threads_start": threads_start, "threads_end": threads_end,
        "dropped": sum(s.dropped for s in stats), "failed": sum(s.failed for s in stats),
        "pending": sum(s.pending for s in stats),
        "loop_max_ms": probes["guarded"]["max_ms"], "loop_p99_ms": probes["guarded"]["p99_ms"],
        "loop_calls": probes["guarded"]["calls"],
        "idle_loop_max_ms": probes["idle"]["max_ms"],
        "idle_loop_p99_ms": probes["idle"]["p99_ms"],
    }
    brama.stop()
    for consumer in consumers:
        consumer.stop()
    return result


def expiry_precision(circuits: int) -> dict[str, float]:
    brama = brama_actors.Brama.start(max_attempts=1, expiry=500)
    for i in range(circuits):
        brama.register(f"e{i}")
    inbox = brama.subscribe(events=["circuit_half_opened"], max_pending=circuits * 2)
    deadlines = {}
    for i in range(circuits):
        brama.open_circuit(f"e{i}")
    for status in brama.connections():
        assert status.opened_at is not None
        deadlines[status.identifier] = status.opened_at + status.expiry
    lateness = []
    for _ in range(circuits):
        event = inbox.get(timeout=60)
        assert isinstance(event, brama_actors.Event)
        lateness.append(event.timestamp - deadlines[str(event.connection)])
    brama.stop()
    return {"p50": percentile(lateness, 50), "p99": percentile(lateness, 99),
            "max": max(lateness), "min": min(lateness)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if anything was dropped, failed, left pending, or a "
                             "thread was left over")
    args = parser.parse_args(argv)
    if args.quick:
        load = soak(1_000, 100, 5.0)
        precision = expiry_precision(1_000)
    else:
        load = soak(10_000, 1_000, 60.0)
        precision = expiry_precision(10_000)
    rows = [
        ("events delivered per second (sustained)", f"{load['events_per_s']:,.0f}/s", "—"),
        ("reports per second (4 threads)", f"{load['reports_per_s']:,.0f}/s", "—"),
        ("delivery latency p50 / p99", f"{load['p50_ms']:.2f} / {load['p99_ms']:.2f} ms "
         f"({min(load['samples'], RESERVOIR):,} of {load['samples']:,} samples)", "—"),
        (f"RSS after {load['warm_up_s']:.0f} s of load / at the end",
         f"{load['rss_start_mib']:.1f} / {load['rss_end_mib']:.1f} MiB "
         f"({load['rss_end_mib'] - load['rss_start_mib']:+.1f})", "no growth beyond noise"),
        ("event manager backlog, peak (sampled every 0.25 s)",
         f"{load['peak_backlog']:,} messages",
         f"bounded (pacing above {brama_actors._delivery._hub.EM_HIGH_WATER:,})"),
        ("threads at start / end",
         f"{load['threads_start']} / {load['threads_end']}", "equal"),
        ("dropped / failed / still pending", f"{load['dropped']} / {load['failed']} / "
         f"{load['pending']}", "0 / 0 / 0"),
        ("event loop stall with guarded async calls, max / p99",
         f"{load['loop_max_ms']:.1f} / {load['loop_p99_ms']:.2f} ms "
         f"({load['loop_calls']:,.0f} calls)", "max < 5 ms beyond the floor"),
        ("event loop stall, same load, no brama calls (floor), max / p99",
         f"{load['idle_loop_max_ms']:.1f} / {load['idle_loop_p99_ms']:.2f} ms", "—"),
        ("expiry lateness p50 / p99 / max, circuits opened together",
         f"{precision['p50']} / {precision['p99']} / {precision['max']} ms", "p99 < 20 ms"),
    ]
    for name, value, target in rows:
        print(f"{name:<58} {value:<28} {target}")
    lost = load["dropped"] or load["failed"] or load["pending"]
    if args.check and (lost or load["threads_start"] != load["threads_end"]):
        print("check failed: something was lost or a thread was left over")
        return 1
    if args.markdown:
        info = machine_info()
        size = "1,000 connections, 100 subscriptions, 5 s" if args.quick else \
            "10,000 connections, 1,000 subscriptions, 60 s"
        lines = [SECTION_TITLE, "", f"`python tests/benchmarks/bench_soak.py"
                 f"{' --quick' if args.quick else ''}` ({size}; expiry with "
                 f"{'1,000' if args.quick else '10,000'} circuits)", "",
                 "| figure | value | target |", "|---|---|---|"]
        lines += [f"| {n} | {v} | {t} |" for n, v, t in rows]
        lines += ["", f"Machine: {info['cpu']}, {info['cores']} cores, {info['python']}; "
                  f"{info['source']}; {info['date']}", ""]
        text = args.markdown.read_text() if args.markdown.exists() else "# Reliability\n\n"
        pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
        section = "\n".join(lines)
        text = pattern.sub(lambda _: section + "\n", text, count=1) if pattern.search(text) \
            else text.rstrip("\n") + "\n\n" + section + "\n"
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
