"""Fleet soak: 4 processes x 1,000 shared connections at 10,000 reports/s in total.

Run from the repository root::

    python tests/benchmarks/bench_fleet_soak.py                # 60 s
    python tests/benchmarks/bench_fleet_soak.py --seconds 600  # longer
    python tests/benchmarks/bench_fleet_soak.py --quick        # 3 s
    python tests/benchmarks/bench_fleet_soak.py --quick --check  # exit 1 if anything lost

Four processes (``spawn``) each start a fleet system on the redis-server of
``tests/redis_server.py`` and register the same 1,000 connections (the first registers,
the others adopt; ``max_attempts=3``, ``expiry=200`` ms). Each reports 2,500 outcomes/s
on random connections, paced in 10 ms batches. A rotating 5% of the connections is
"down" each second (connection ``i`` in second ``s`` when ``(i + s) % 20 == 0``): its
reports are failures, so circuits open, expire (the ticker), and close again when a
success follows. Everything else is a success (mostly quiet: no round trip).

Nothing lost: every process has one subscriber to ``state_change``; after the run (all
processes stopped reporting, then a second for the tails and a drain) it must have
received exactly the transitions Redis made, the sum of every circuit's ``transitions``
counters read from Redis by the parent, with no duplicate (ids strictly increase in
stream order). Flat: each process samples its RSS and thread count every second; the
table gives the first and last samples after a warm-up of a tenth of the run.

Not a test; ``python -m tests.benchmarks --quick`` runs the quick form.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_processes import replace_section
from tests.benchmarks.bench_scale import machine_info
from tests.redis_server import RedisServer

SECTION_TITLE = "## Fleet soak (issue #17)"
PROCESSES = 4
CONNECTIONS = 1_000
TOTAL_RATE = 10_000
BATCH_S = 0.01


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4


def _id_order(event_id: str) -> tuple[int, int, int]:
    stream, _, n = event_id.rpartition(":")
    ms, _, seq = stream.partition("-")
    return int(ms), int(seq), int(n)


def worker(index: int, url: str, namespace: str, seconds: float, ready: Any, go: Any,
           stopped: Any, out: Any) -> None:
    """One process: report at its share of the rate, count transitions, sample RSS."""
    import brama_actors

    brama = brama_actors.Brama.start(fleet=url, fleet_namespace=namespace)
    names = [f"c{i}" for i in range(CONNECTIONS)]
    for name in names:
        brama.register(name, max_attempts=3, expiry=200)
    seen = {"count": 0, "out_of_order": 0}
    last = [(0, 0, 0)]  # the newest id seen: ids strictly increase in stream order
    lock = threading.Lock()

    def on_change(event: Any) -> None:
        order = _id_order(event.id)
        with lock:
            seen["count"] += 1
            if order <= last[0]:
                seen["out_of_order"] += 1
            last[0] = order

    brama.subscribe(events=["state_change"], handler=on_change)
    ready.put(index)
    go.wait()
    rng = random.Random(index)
    per_batch = round(TOTAL_RATE / PROCESSES * BATCH_S)
    samples: list[tuple[float, int, int]] = []
    reports = failures = 0
    begin = time.monotonic()
    due = next_sample = begin
    while (now := time.monotonic()) < begin + seconds:
        if now >= next_sample:
            samples.append((now - begin, rss_kib(), threading.active_count()))
            next_sample += 1.0
        second = int(time.time())
        for _ in range(per_batch):
            i = rng.randrange(CONNECTIONS)
            if (i + second) % 20 == 0:
                brama.failure(names[i])
                failures += 1
            else:
                brama.success(names[i])
        reports += per_batch
        due += BATCH_S
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        elif pause < -0.5:
            due = time.monotonic()  # far behind: report what was achieved, no burst
    elapsed = time.monotonic() - begin
    samples.append((elapsed, rss_kib(), threading.active_count()))
    stopped.put(index)
    go_home = out  # the parent answers with the truth once every process stopped
    truth = go_home.get(timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        brama.drain(5.0)
        with lock:
            if seen["count"] >= truth:
                break
        time.sleep(0.05)
    time.sleep(0.2)  # a duplicate would arrive now
    with lock:
        result = dict(seen)
    brama.stop()
    stopped.put({"index": index, "reports": reports, "failures": failures,
                 "elapsed": elapsed, "samples": samples, **result})


def fleet_transitions(server: RedisServer, namespace: str) -> int:
    """The transitions Redis made: every circuit's ``transitions`` counters summed."""
    client = server.client(decode_responses=True)
    try:
        tag = "{" + namespace + "}"
        total = 0
        for member in client.smembers(f"{tag}:circuits"):
            name = member.decode() if isinstance(member, bytes) else str(member)
            status = json.loads(client.hget(f"{tag}:c:{name}", "status") or "{}")
            counters = status.get("transitions") or []
            total += sum(int(c[2]) for c in counters) if isinstance(counters, list) else 0
        return total
    finally:
        client.close()


def run(seconds: float) -> dict[str, Any]:
    namespace = f"soak-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    ready, stopped, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    answers = [ctx.Queue() for _ in range(PROCESSES)]
    with RedisServer.from_environment() as server:
        procs = [ctx.Process(target=worker, args=(i, server.url, namespace, seconds, ready,
                                                  go, stopped, answers[i]))
                 for i in range(PROCESSES)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)
        go.set()
        for _ in procs:
            stopped.get(timeout=seconds + 300)
        time.sleep(0.5)  # the ticker may still expire circuits opened at the very end
        truth = fleet_transitions(server, namespace)
        for q in answers:
            q.put(truth)
        results = [stopped.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(60)
        truth_after = fleet_transitions(server, namespace)
    return {"seconds": seconds, "truth": truth, "truth_after": truth_after,
            "workers": sorted(results, key=lambda r: r["index"])}


def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    workers = result["workers"]
    reports = sum(w["reports"] for w in workers)
    elapsed = max(w["elapsed"] for w in workers)
    truth = result["truth_after"]
    lost = sum(max(0, truth - w["count"]) for w in workers)
    extra = sum(max(0, w["count"] - truth) for w in workers) + sum(w["out_of_order"]
                                                                  for w in workers)
    out = [("reports (failures)", f"{reports:,} ({sum(w['failures'] for w in workers):,}) "
            f"in {elapsed:.1f} s = {reports / elapsed:,.0f}/s"),
           ("transitions made in Redis", f"{truth:,}"),
           ("`state_change` delivered per process", ", ".join(f"{w['count']:,}"
                                                              for w in workers)),
           ("lost / duplicated or out of order", f"{lost} / {extra}")]
    warm = result["seconds"] / 10
    rss, threads = [], []
    for w in workers:
        kept = [s for s in w["samples"] if s[0] >= warm] or w["samples"]
        rss.append(f"{kept[0][1] / 1024:.1f}->{kept[-1][1] / 1024:.1f}")
        threads.append(f"{min(s[2] for s in kept)}-{max(s[2] for s in kept)}")
    out.append(("RSS per process, MiB (after warm-up -> end)", ", ".join(rss)))
    out.append(("threads per process (min-max)", ", ".join(threads)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="3 s")
    parser.add_argument("--check", action="store_true", help="exit 1 if anything was lost")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else args.seconds
    result = run(seconds)
    table = rows(result)
    for name, value in table:
        print(f"{name:<46} {value}")
    if args.markdown is not None:
        info = machine_info()
        command = "python tests/benchmarks/bench_fleet_soak.py" + (
            " --quick" if args.quick else f" --seconds {seconds:g}")
        lines = [SECTION_TITLE, "", f"Command: `{command}`; 4 processes x 1,000 shared "
                 "connections, 10,000 reports/s asked in total, redis-server 6.2 on a Unix "
                 f"socket; {info['cpu']}, {info['cores']} shared cores; {info['source']}; "
                 f"{info['date']}. Definitions: [the fleet page]"
                 "(fleet.md#outage-drill-and-figures).", "", "| figure | value |", "|---|---|"]
        lines += [f"| {n} | {v} |" for n, v in table]
        replace_section(args.markdown, SECTION_TITLE, "\n".join(lines) + "\n")
    workers = result["workers"]
    broken = any(w["count"] != result["truth_after"] or w["out_of_order"] for w in workers)
    return 1 if args.check and broken else 0


if __name__ == "__main__":
    sys.exit(main())
