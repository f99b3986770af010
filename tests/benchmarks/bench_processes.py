"""Several-processes benchmark (issue: Several processes).

Run from the repository root::

    python tests/benchmarks/bench_processes.py            # full
    python tests/benchmarks/bench_processes.py --quick    # a smoke run
    python tests/benchmarks/bench_processes.py --markdown docs/benchmarks.md

What it measures, with real processes (spawn start method):

* a client's ``available()`` against a bare function call, in a client process;
* ``failure()`` round trip from a client process: p50 / p99;
* replica propagation: the node changes a circuit's state; each of 4 client processes
  records when its replica shows it (p50 / p99 over many changes);
* replica push throughput: state changes per second pushed to one client.

Timestamps compared across processes come from ``time.clock_gettime(CLOCK_MONOTONIC)``,
which is system-wide on Linux.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import statistics
import sys
import threading
import time
import timeit
from multiprocessing.connection import Connection
from pathlib import Path
from types import MappingProxyType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import brama_actors
from brama_actors import CircuitState, Event, EventType
from tests.benchmarks.bench_scale import machine_info, percentile

SECTION_TITLE = "## Several processes (issue: Several processes)"
TARGET_AVAILABLE_RATIO = 5.0
TARGET_PROPAGATION_P99_MS = 10.0
TARGET_FAILURE_P50_US = 200.0
TARGET_PUSH_PER_S = 100_000


def _now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def client_hot_path(address: Any, authkey: bytes, samples: int, out: Connection) -> None:
    """In a client process: available() vs a bare call, and failure() round trips."""
    client = brama_actors.connect(address, authkey=authkey)

    def bare(identifier: str, *, scope: str | None = None) -> bool:
        return True

    avail = client.available
    number = 200_000
    ratios, ours, base = [], [], []
    for _ in range(7):
        b = timeit.timeit(lambda: bare("svc"), number=number) / number
        a = timeit.timeit(lambda: avail("svc"), number=number) / number
        ratios.append(a / b)
        ours.append(a)
        base.append(b)
    latencies = []
    for _ in range(samples):
        start = time.perf_counter()
        client.failure("svc")
        latencies.append(time.perf_counter() - start)
    client.close()
    out.send({
        "available_ns": statistics.median(ours) * 1e9,
        "bare_ns": statistics.median(base) * 1e9,
        "ratio": statistics.median(ratios),
        "failure_us": [x * 1e6 for x in latencies],
    })


def client_watcher(address: Any, authkey: bytes, changes: int, out: Connection,
                   ready: Connection) -> None:
    """In a client process: record when each change of 'flip' lands in the replica.

    The replica is updated by the client's reader thread; the moment it applies a push
    is the moment ``available()`` starts answering the new state.
    """
    client = brama_actors.connect(address, authkey=authkey)
    seen: list[float] = []
    done = threading.Event()
    link = client._authority.link  # internal: the reader thread's push callback
    original = link._on_push

    def recording(push: Any) -> None:
        original(push)
        stamp = _now()
        seen.extend(stamp for identifier, _, _ in push.changes if identifier == "flip")
        if len(seen) >= changes:
            done.set()

    link._on_push = recording
    ready.send(True)
    done.wait(120)
    client.close()
    out.send(seen)


def client_counter(address: Any, authkey: bytes, changes: int, out: Connection,
                   ready: Connection) -> None:
    """In a client process: count state changes applied to the replica."""
    client = brama_actors.connect(address, authkey=authkey)
    applied = [0]
    done = threading.Event()
    link = client._authority.link  # internal: the reader thread's push callback
    original = link._on_push

    def counting(push: Any) -> None:
        original(push)
        applied[0] += len(push.changes)
        if applied[0] >= changes:
            done.set()

    link._on_push = counting
    ready.send(True)
    done.wait(120)
    out.send((applied[0], _now()))
    client.close()


def run(quick: bool) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {}
    with brama_actors.Brama.start(max_attempts=1, expiry=3_600_000) as brama:
        server = brama.serve()
        brama.register("svc", max_attempts=10**12)

        # 1-2: client available() and failure() round trip
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=client_hot_path,
                           args=(server.address, server.authkey, 500 if quick else 5000, child))
        proc.start()
        hot = parent.recv()
        proc.join(60)
        results["available"] = hot

        # 3: propagation to 4 clients
        changes = 100 if quick else 1000
        brama.register("flip", max_attempts=1)
        watchers = []
        for _ in range(4):
            out_parent, out_child = ctx.Pipe()
            ready_parent, ready_child = ctx.Pipe()
            p = ctx.Process(target=client_watcher,
                            args=(server.address, server.authkey, changes, out_child,
                                  ready_child))
            p.start()
            watchers.append((p, out_parent, ready_parent))
        for _, _, ready_parent in watchers:
            ready_parent.recv()
        flips = []
        for i in range(changes):
            flips.append(_now())
            if i % 2 == 0:
                brama.failure("flip")
            else:
                brama.reset_circuit("flip")
            time.sleep(0.001)  # pacing: ~500 changes/s
        delays = []
        for p, out_parent, _ in watchers:
            seen = out_parent.recv()
            p.join(60)
            delays += [(s - f) * 1000 for s, f in zip(seen, flips, strict=False)]
        results["propagation_ms"] = delays

        # 4: push throughput to one client. Real state changes are limited by how fast
        # one thread can make them (each failure() is an actor round trip), so this
        # feeds the node's publisher state-change events directly: it measures the push
        # path (publisher, client queue, writer, socket, client reader, replica).
        n = 20_000 if quick else 200_000
        batch = 100
        events = tuple(
            Event(EventType.STATE_CHANGE, 0, f"t{i}", None, MappingProxyType({
                "state": CircuitState.OPEN, "new_state": CircuitState.OPEN}))
            for i in range(batch))
        out_parent, out_child = ctx.Pipe()
        ready_parent, ready_child = ctx.Pipe()
        p = ctx.Process(target=client_counter,
                        args=(server.address, server.authkey, n, out_child, ready_child))
        p.start()
        ready_parent.recv()
        start = _now()
        for _ in range(n // batch):
            server._node.publisher.deliver(events)  # internal: the replica pusher
        count, end = out_parent.recv()
        p.join(60)
        results["push_per_s"] = count / (end - start)
    return results


def report(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    hot = results["available"]
    failure = hot["failure_us"]
    prop = results["propagation_ms"]
    rows = [
        ("client available() vs bare call",
         f"{hot['available_ns']:.0f} ns vs {hot['bare_ns']:.0f} ns = {hot['ratio']:.2f}x",
         f"<= {TARGET_AVAILABLE_RATIO:.0f}x", "met" if hot["ratio"] <= TARGET_AVAILABLE_RATIO
         else "not met"),
        ("client failure() round trip p50 / p99",
         f"{percentile(failure, 50):.0f} / {percentile(failure, 99):.0f} µs",
         f"p50 < {TARGET_FAILURE_P50_US:.0f} µs",
         "met" if percentile(failure, 50) < TARGET_FAILURE_P50_US else "not met"),
        ("state change to 4 client replicas p50 / p99",
         f"{percentile(prop, 50):.2f} / {percentile(prop, 99):.2f} ms",
         f"p99 < {TARGET_PROPAGATION_P99_MS:.0f} ms",
         "met" if percentile(prop, 99) < TARGET_PROPAGATION_P99_MS else "not met"),
        ("replica pushes to one client",
         f"{results['push_per_s']:,.0f} changes/s", f">= {TARGET_PUSH_PER_S:,}/s",
         "met" if results["push_per_s"] >= TARGET_PUSH_PER_S else "not met"),
    ]
    return rows


def replace_section(path: Path, title: str, section: str) -> None:
    """Replace the section headed ``title`` in ``path`` (or append it)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    rows = report(run(args.quick))
    width = max(len(r[0]) for r in rows)
    for name, value, target, verdict in rows:
        print(f"{name:<{width}}  {value:<32}  {target:<14}  {verdict}")
    if args.markdown is not None:
        command = "python tests/benchmarks/bench_processes.py" + (" --quick" if args.quick
                                                                   else "")
        info = machine_info()
        lines = [SECTION_TITLE, "", "Command (from the repository root):", "", "```sh",
                 command, "```", "",
                 "| figure | value | target | verdict |", "|---|---|---|---|"]
        lines += [f"| {n} | {v} | {t} | {m} |" for n, v, t, m in rows]
        lines += ["", f"Machine: {info['cpu']}, {info['cores']} cores, {info['python']}, "
                  f"pykka {info['pykka']}; {info['source']}; {info['date']}", ""]
        replace_section(args.markdown, SECTION_TITLE, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
