"""The fleet's timing figures on one redis-server: propagation, events, expiry, the race.

Run from the repository root::

    python tests/benchmarks/bench_fleet_figures.py            # ~40 s
    python tests/benchmarks/bench_fleet_figures.py --quick    # ~10 s

It starts the fleet tests' ``redis-server`` (``tests/redis_server.py``) and measures:

* **Propagation**: a transition made on one system (``failure()`` opening a circuit, then
  ``reset_circuit``) until each of 4 other systems delivers its ``state_change`` to a
  handler. Two forms: 5 systems in one process, and 1 + 4 separate processes (times on
  ``CLOCK_MONOTONIC``, which Linux shares between processes). p50/p99 over every
  (transition, observer) pair.
* **Events per transition**: every system has 2 subscribers; each must receive each
  transition's ``circuit_opened``/``state_change`` exactly once (counted by id: missing
  and duplicated deliveries are reported separately).
* **Expiry lateness**: circuits opened with expiries of 50-500 ms; the deadline is
  ``opened_at + expiry`` from the ``circuit_opened`` event (Redis server time). Two
  figures: the ticker's lateness (the ``expiry`` event's timestamp, which is the Redis
  ``TIME`` the tick ran at, minus the deadline: one clock, the server's) and the
  arrival lateness (``time.time()`` when a system's handler got ``circuit_half_opened``
  minus the deadline). The second compares the local clock with the server's: valid
  here because redis-server runs on this machine (both read ``CLOCK_REALTIME``); across
  machines it would include their clock offset.
* **The missed-reset race** (docs/fleet.md, "The quiet-success race"): system A reports
  failures on a circuit while system B reports successes on it in a tight loop. Only A
  fails, so A's ``failure`` events carry the fleet's count after each failure. When a
  success of B finished after A's failure ``i-1`` returned and before A's failure ``i``
  started, one process would count failure ``i`` as 1; a count >= 2 is a missed reset (B
  took its replica's "closed, no failures" and did not send the success). Reported: the
  share of such failures, and how long the missed failure had been in Redis when B's
  success ended (the window the race lives in).
* **failure() cost breakdown**: the p50 of ``failure()``, of the same EVALSHA sent by a
  bare redis-py client (script and round trip only), of a PING (the round trip), the
  server's own time per script call (``INFO commandstats`` ``usec`` / ``calls``), and the
  CPU per ``failure()`` of the caller's thread and of the system's other threads (the
  stream tail reading back the entry the call appended); and ``failure()`` again with
  the tail parked (its read loop replaced by a sleep), to show what that read-back
  costs the caller.

Not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import brama_actors
from brama_actors import Event
from tests.benchmarks.bench_processes import replace_section
from tests.benchmarks.bench_scale import machine_info, percentile
from tests.redis_server import RedisServer

SECTION_TITLE = "## Fleet figures (issue #17)"
OBSERVERS = 4
TARGET_PROPAGATION_P99_MS = 10.0
TARGET_LATENESS_P99_MS = 50.0
TARGET_FAILURE_P50_US = 300.0


def start(url: str, namespace: str) -> brama_actors.Brama:
    return brama_actors.Brama.start(fleet=url, fleet_namespace=namespace)


def ms(ns: int) -> float:
    return ns / 1e6


# -- propagation, events per transition ---------------------------------------------------
class Recorder:
    """A handler that records (monotonic ns, event) of what one subscriber receives."""

    def __init__(self) -> None:
        self.got: list[tuple[int, Event]] = []
        self.arrived = threading.Condition()

    def __call__(self, event: Event) -> None:
        now = time.monotonic_ns()
        with self.arrived:
            self.got.append((now, event))
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.got) >= count, timeout)


TRANSITION_EVENTS = ["state_change", "circuit_opened"]


def transitions(maker: brama_actors.Brama, count: int,
                wait: Any) -> list[int]:
    """Make ``count`` transitions on ``maker`` (open, reset, ...); their start times."""
    starts = []
    for i in range(count):
        starts.append(time.monotonic_ns())
        if i % 2 == 0:
            maker.failure("prop")
        else:
            maker.reset_circuit("prop")
        wait(i + 1)
    return starts


def propagation_in_process(url: str, count: int) -> dict[str, Any]:
    """5 systems of one fleet in this process: 1 makes transitions, 4 observe."""
    namespace = f"prop-{uuid.uuid4().hex[:8]}"
    systems = [start(url, namespace) for _ in range(OBSERVERS + 1)]
    try:
        systems[0].register("prop", max_attempts=1, expiry=3_600_000)
        for s in systems[1:]:
            s.register("prop", max_attempts=1, expiry=3_600_000)
        recorders = []
        for s in systems:
            for _ in range(2):
                rec = Recorder()
                s.subscribe(events=TRANSITION_EVENTS, connection="prop", handler=rec)
                recorders.append(rec)

        def wait(done: int) -> None:
            # opens give 2 events (circuit_opened, state_change), resets 1 (state_change)
            expected = sum(2 if i % 2 == 0 else 1 for i in range(done))
            for rec in recorders:
                rec.wait_for(expected, 5)

        starts = transitions(systems[0], count, wait)
        latencies = []
        for rec in recorders[2:]:  # observers only
            changes = [t for t, e in rec.got if e.event == "state_change"]
            latencies += [ms(t - s) for t, s in zip(changes, starts, strict=False)]
        return {"latencies": latencies, "events": event_counts(recorders, count)}
    finally:
        for s in systems:
            s.stop()


def event_counts(recorders: list[Recorder], count: int) -> dict[str, int]:
    """Missing and duplicated transition events over every subscriber."""
    ids: Counter[str] = Counter()
    missing = duplicates = 0
    per_sub = []
    expected_opened = (count + 1) // 2
    for rec in recorders:
        got = Counter(e.id for _, e in rec.got)
        duplicates += sum(n - 1 for n in got.values() if n > 1)
        changes = sum(1 for _, e in rec.got if e.event == "state_change")
        opened = sum(1 for _, e in rec.got if e.event == "circuit_opened")
        missing += max(0, count - changes) + max(0, expected_opened - opened)
        per_sub.append(changes)
        ids.update(got.keys())
    # the same ids on every subscriber of every system
    differing = sum(1 for n in ids.values() if n != len(recorders))
    return {"subscribers": len(recorders), "transitions": count, "missing": missing,
            "duplicates": duplicates, "ids_not_everywhere": differing,
            "min_per_sub": min(per_sub), "max_per_sub": max(per_sub)}


def observer(url: str, namespace: str, count: int, ready: Any, out: Any) -> None:
    """A separate process: a fleet system with 2 subscribers; reports arrival times."""
    brama = start(url, namespace)
    brama.register("prop", max_attempts=1, expiry=3_600_000)
    recs = [Recorder(), Recorder()]
    for rec in recs:
        brama.subscribe(events=TRANSITION_EVENTS, connection="prop", handler=rec)
    ready.put(True)
    expected = sum(2 if i % 2 == 0 else 1 for i in range(count))
    for rec in recs:
        rec.wait_for(expected, 120)
    brama.drain(2.0)
    out.put([[(t, e.event.value, e.id) for t, e in rec.got] for rec in recs])
    brama.stop()


def propagation_processes(url: str, count: int) -> dict[str, Any]:
    """1 system here makes transitions; 4 processes (spawn) observe."""
    namespace = f"procs-{uuid.uuid4().hex[:8]}"
    maker = start(url, namespace)
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    try:
        maker.register("prop", max_attempts=1, expiry=3_600_000)
        procs = [ctx.Process(target=observer, args=(url, namespace, count, ready, out))
                 for _ in range(OBSERVERS)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        own = Recorder()
        maker.subscribe(events=["state_change"], connection="prop", handler=own)

        def wait(done: int) -> None:
            own.wait_for(done, 5)
            time.sleep(0.005)  # let the observers deliver before the next transition

        starts = transitions(maker, count, wait)
        reports = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
    finally:
        maker.stop()
    latencies = []
    recorders = []
    for subs in reports:
        for got in subs:
            changes = [t for t, kind, _ in got if kind == "state_change"]
            latencies += [ms(t - s) for t, s in zip(changes, starts, strict=False)]
            rec = Recorder()
            rec.got = [(t, Event(event=brama_actors.EventType(kind), timestamp=0,
                                 connection="prop", scope=None, data={}, id=i))
                       for t, kind, i in got]
            recorders.append(rec)
    return {"latencies": latencies, "events": event_counts(recorders, count)}


# -- expiry lateness -----------------------------------------------------------------------
def expiry_lateness(url: str, circuits: int) -> dict[str, list[float]]:
    """Open ``circuits`` circuits (expiry 50-500 ms) on one system, observe on two."""
    namespace = f"exp-{uuid.uuid4().hex[:8]}"
    systems = [start(url, namespace) for _ in range(2)]
    rng = random.Random(17)
    try:
        opened: dict[str, int] = {}
        ticks: dict[str, int] = {}
        arrivals: list[float] = []
        lock = threading.Lock()
        done = threading.Event()

        def on_event(event: Event) -> None:
            now_ms = time.time() * 1000
            with lock:
                if event.event == "circuit_opened":
                    opened[event.connection or ""] = (int(event.data["opened_at"])
                                                      + int(event.data["expiry"]))
                elif event.event == "expiry":
                    ticks[event.connection or ""] = event.timestamp
                elif event.event == "circuit_half_opened":
                    arrivals.append(now_ms - opened[event.connection or ""])
                    if len(arrivals) >= 2 * circuits:
                        done.set()

        for s in systems:
            s.subscribe(events=["circuit_opened", "expiry", "circuit_half_opened"],
                        handler=on_event)
        names = [f"exp-{i}" for i in range(circuits)]
        for name in names:
            systems[0].register(name, max_attempts=1, expiry=rng.randrange(50, 500))
        for name in names:
            systems[0].failure(name)
            time.sleep(rng.uniform(0, 0.01))
        done.wait(30)
        server_late = [float(ticks[n] - opened[n]) for n in names if n in ticks]
        return {"server": server_late, "arrival": arrivals}
    finally:
        for s in systems:
            s.stop()


# -- the missed-reset race -----------------------------------------------------------------
def missed_resets(url: str, seconds: float) -> dict[str, Any]:
    """A fails, B succeeds, concurrently; count A's failures that missed B's reset."""
    namespace = f"race-{uuid.uuid4().hex[:8]}"
    a, b = start(url, namespace), start(url, namespace)
    try:
        a.register("race", max_attempts=10**9)
        b.register("race", max_attempts=10**9)
        counts: list[int] = []
        a.subscribe(events=["failure"], connection="race",
                    handler=lambda e: counts.append(int(e.data["failure_count"])))
        a_calls: list[tuple[int, int]] = []
        b_calls: list[tuple[int, int]] = []
        stop = threading.Event()
        rng = random.Random(5)

        def successes() -> None:
            while not stop.is_set():
                begin = time.monotonic_ns()
                b.success("race")
                b_calls.append((begin, time.monotonic_ns()))
                time.sleep(0.0002)

        worker = threading.Thread(target=successes)
        worker.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            begin = time.monotonic_ns()
            a.failure("race")
            a_calls.append((begin, time.monotonic_ns()))
            time.sleep(rng.uniform(0, 0.004))
        stop.set()
        worker.join()
        a.drain(5.0)
    finally:
        a.stop()
        b.stop()
    # A success of B that began after A's failure i-1 returned and ended before A's
    # failure i began must, in one process, reset the count: failure i would count 1.
    exposed = missed = 0
    ages = []
    j = 0
    for i in range(1, min(len(a_calls), len(counts))):
        previous_end, begin = a_calls[i - 1][1], a_calls[i][0]
        while j < len(b_calls) and b_calls[j][0] <= previous_end:
            j += 1
        inside = []
        k = j
        while k < len(b_calls) and b_calls[k][1] < begin:
            inside.append(b_calls[k][1])
            k += 1
        if not inside:
            continue
        exposed += 1
        if counts[i] >= 2:
            missed += 1
            ages.append(ms(inside[-1] - previous_end))
    return {"failures": len(a_calls), "successes": len(b_calls), "exposed": exposed,
            "missed": missed, "ages": ages}


# -- failure() cost ------------------------------------------------------------------------
def failure_breakdown(url: str, calls: int) -> dict[str, float]:
    """p50 of failure(), of its bare EVALSHA, of a PING; the server's time per script."""
    import redis

    from brama_actors._authority._fleet._link import STREAM_MAXLEN
    from brama_actors._authority._fleet._lua import SCRIPT

    namespace = f"cost-{uuid.uuid4().hex[:8]}"
    brama = start(url, namespace)
    bare = redis.Redis.from_url(url, decode_responses=True)
    try:
        brama.register("noisy", max_attempts=10**9)
        for _ in range(200):
            brama.failure("noisy")

        def timed(fn: Any) -> float:
            samples = []
            for _ in range(calls):
                t = time.perf_counter_ns()
                fn()
                samples.append(time.perf_counter_ns() - t)
            return statistics.median(samples) / 1000

        tag = "{" + namespace + "}"
        member = json.dumps(["noisy", None], separators=(",", ":"))
        keys = [f"{tag}:c:{member}", f"{tag}:events", f"{tag}:meta", f"{tag}:deadlines",
                f"{tag}:c:{member}:permits", f"{tag}:circuits"]
        script = bare.register_script(SCRIPT)
        argv = ["failure", "", json.dumps({"reason": None, "member": member}), "", "", "",
                str(STREAM_MAXLEN)]
        before = bare.info("commandstats").get("cmdstat_evalsha", {})
        cpu, own = time.process_time_ns(), time.thread_time_ns()
        result = {"failure": timed(lambda: brama.failure("noisy"))}
        own = time.thread_time_ns() - own
        result["caller_cpu"] = own / calls / 1000
        # The tail thread reads back (XREAD, decode, apply, deliver) the entry each
        # failure appended: CPU in this process, contending for the GIL with the caller.
        result["others_cpu"] = (time.process_time_ns() - cpu - own) / calls / 1000
        after = bare.info("commandstats").get("cmdstat_evalsha", {})
        result["server_us"] = ((after["usec"] - before.get("usec", 0))
                               / (after["calls"] - before.get("calls", 0)))
        result["evalsha"] = timed(lambda: script(keys=keys, args=argv))
        result["ping"] = timed(bare.ping)
        # The same failure() with the stream tail parked (its read loop swapped for a
        # sleep; the next entry wakes its blocked XREAD, then it reads no more): what
        # reading back our own entries costs the caller. Events are not delivered then.
        from brama_actors._authority._fleet import _tail

        read = _tail.Tail._read
        _tail.Tail._read = lambda self: time.sleep(0.05)  # type: ignore[method-assign]
        try:
            for _ in range(50):
                brama.failure("noisy")
            result["parked"] = timed(lambda: brama.failure("noisy"))
        finally:
            _tail.Tail._read = read  # type: ignore[method-assign]
        return result
    finally:
        bare.close()
        brama.stop()


# -- report --------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for label, key in (("in one process", "inproc"), ("separate processes", "procs")):
        lat = results[key]["latencies"]
        p99 = percentile(lat, 99)
        out.append((f"propagation of a transition to 4 other systems, {label}: p50 / p99",
                    f"{percentile(lat, 50):.2f} / {p99:.2f} ms ({len(lat)} "
                    "transition x subscriber pairs)",
                    f"p99 < {TARGET_PROPAGATION_P99_MS:.0f} ms",
                    verdict(p99 < TARGET_PROPAGATION_P99_MS)))
        ev = results[key]["events"]
        exact = ev["missing"] == 0 and ev["duplicates"] == 0 and ev["ids_not_everywhere"] == 0
        out.append((f"transition events per subscriber, {label}",
                    f"{ev['min_per_sub']}-{ev['max_per_sub']} `state_change` for "
                    f"{ev['transitions']} transitions on each of {ev['subscribers']} "
                    f"subscribers; {ev['missing']} missing, {ev['duplicates']} duplicated",
                    "exactly 1 each", verdict(exact)))
    late = results["expiry"]
    for label, key in (("ticker (server clock)", "server"), ("arrival on a system", "arrival")):
        values = late[key]
        p99 = percentile(values, 99) if values else float("inf")
        out.append((f"expiry lateness, {label}: p50 / p99 / max",
                    f"{percentile(values, 50):.0f} / {p99:.0f} / {max(values):.0f} ms "
                    f"({len(values)} expiries)" if values else "none",
                    f"p99 < {TARGET_LATENESS_P99_MS:.0f} ms",
                    verdict(p99 < TARGET_LATENESS_P99_MS)))
    race = results["race"]
    share = race["missed"] / race["exposed"] if race["exposed"] else 0.0
    ages = race["ages"]
    out.append(("missed resets: A's failures after a B success that counted on top",
                f"{race['missed']} of {race['exposed']} ({share:.1%}); {race['failures']} "
                f"failures, {race['successes']:,} successes; window max "
                f"{max(ages, default=0):.2f} ms", "documented", "—"))
    cost = results["cost"]
    out.append(("failure() p50; its EVALSHA from bare redis-py; PING; server time/script",
                f"{cost['failure']:.0f} / {cost['evalsha']:.0f} / {cost['ping']:.0f} / "
                f"{cost['server_us']:.0f} µs", f"p50 < {TARGET_FAILURE_P50_US:.0f} µs",
                verdict(cost["failure"] < TARGET_FAILURE_P50_US)))
    out.append(("CPU per failure(): the caller's thread / the system's other threads",
                f"{cost['caller_cpu']:.0f} / {cost['others_cpu']:.0f} µs", "—", "—"))
    out.append(("failure() p50 with the stream tail parked (no events delivered)",
                f"{cost['parked']:.0f} µs", "—", "—"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    count, circuits, race_s, calls = (60, 40, 1.0, 500) if args.quick else \
        (400, 300, 10.0, 5_000)
    results: dict[str, Any] = {}
    with RedisServer.from_environment() as server:
        results["inproc"] = propagation_in_process(server.url, count)
        results["procs"] = propagation_processes(server.url, count)
        results["expiry"] = expiry_lateness(server.url, circuits)
        results["race"] = missed_resets(server.url, race_s)
        results["cost"] = failure_breakdown(server.url, calls)
    table = rows(results)
    width = max(len(r[0]) for r in table)
    for name, value, target, mark in table:
        print(f"{name:<{width}}  {value}  {target}  {mark}")
    if args.markdown is not None:
        info = machine_info()
        command = "python tests/benchmarks/bench_fleet_figures.py" + (" --quick" if args.quick
                                                                      else "")
        lines = [SECTION_TITLE, "", f"Command: `{command}`; redis-server 6.2 on a Unix "
                 f"socket; {info['cpu']}, {info['cores']} shared cores, {info['python']}; "
                 f"{info['source']}; {info['date']}. Definitions: "
                 "[the fleet page](fleet.md#outage-drill-and-figures).", "",
                 "| figure | value | target | verdict |", "|---|---|---|---|"]
        lines += [f"| {n} | {v} | {t} | {m} |" for n, v, t, m in table]
        replace_section(args.markdown, SECTION_TITLE, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
