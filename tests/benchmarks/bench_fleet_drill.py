"""The outage drill: 8 machines call one service that goes down and comes back.

Run from the repository root::

    python tests/benchmarks/bench_fleet_drill.py            # reset timeout 1 s, ~20 s
    python tests/benchmarks/bench_fleet_drill.py --quick    # reset timeout 0.3 s, ~8 s
    python tests/benchmarks/bench_fleet_drill.py --markdown docs/benchmarks.md \\
        --fleet-doc docs/fleet.md --chart docs/bench_fleet_drill.png

Eight processes (multiprocessing ``spawn``) stand for eight machines. Each calls the
service at 125 calls/s (1,000 calls/s for the fleet in total), one call at a time,
through its circuit breaker (``fail_max``/``max_attempts`` 5, reset timeout ``R``):

* ``pybreaker``: one ``pybreaker.CircuitBreaker`` per machine (its default, in-memory);
* ``brama_actors, per machine``: ``Brama.start()`` in each process (no ``fleet=``);
* ``brama_actors, fleet=``: ``Brama.start(fleet=..., fleet_namespace=...)`` in each
  process, all on the redis-server of ``tests/redis_server.py``.

The service is a real TCP server in the parent process: each call is one line on a
machine's persistent connection, answered ``1`` (up) or ``0`` (down, the caller raises).
The *service* records every call it receives with its own monotonic time, so what
"reaches the down service" is counted where it lands, not by the callers. Timeline:
up for a warm-up, down for ``2.5 x R``, then up again for ``1.5 x R``. Figures:

* calls that reached the down service before every machine stopped calling (the window
  ``[down, down + R)``, before any circuit may probe), and when the last of them came;
* probes while still down (calls received in ``[down + R, up)``): the total, and the
  most in any 100 ms (the herd that hits the service at once);
* trials at once when it is back: the service comes back cold, holding the answers to
  its first 100 ms of calls for 100 ms; the calls it receives in that time are the
  half-open trials admitted together (one per machine per breaker, or one per fleet);
* recovery: from ``up`` until the service has received a call from every machine;
* alerts: ``circuit_opened`` deliveries per subscriber (one per machine; pybreaker: a
  listener's ``state_change`` to open), and the distinct openings (by ``Event.id``; a
  fleet's opening has the same id on every machine, so a pager deduplicates it).

Not a test; the default suite runs the quick form through ``python -m tests.benchmarks``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import socketserver
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_processes import replace_section
from tests.benchmarks.bench_scale import machine_info
from tests.redis_server import RedisServer

SECTION_TITLE = "## Fleet outage drill (issue #17)"
DOC_TITLE = "## Outage drill and figures"
MACHINES = 8
TOTAL_RATE = 1_000  # calls/s, all machines together
FAIL_MAX = 5
COLD_S = 0.1  # the recovered service answers its first 100 ms of calls after 100 ms
ROWS = ("pybreaker", "brama_actors, per machine", "brama_actors, fleet=")


class ServiceDown(Exception):
    """What a machine's call raises when the service answers ``0``."""


# -- the service ---------------------------------------------------------------------------
class Service(socketserver.ThreadingTCPServer):
    """A TCP service that records every call it receives: (monotonic s, machine, up)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.up = True
        self.calls: list[tuple[float, int, bool]] = []
        #: Set when it comes back: the first COLD_S of its traffic is answered after
        #: COLD_S (a cold service), so trials admitted together are in flight together.
        self.recovering = False
        self.first_back: float | None = None
        self.lock = threading.Lock()

    def answer_delay(self, now: float) -> float:
        """How long to hold this call's answer (only at the start of the recovery)."""
        if not self.recovering:
            return 0.0
        with self.lock:
            if self.first_back is None:
                self.first_back = now
        return COLD_S if now < self.first_back + COLD_S else 0.0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        service = self.server
        assert isinstance(service, Service)
        for line in self.rfile:
            up = service.up
            now = time.monotonic()
            service.calls.append((now, int(line), up))  # list.append: atomic
            if up and (delay := service.answer_delay(now)):
                time.sleep(delay)
            self.wfile.write(b"1\n" if up else b"0\n")


# -- a machine -----------------------------------------------------------------------------
def machine(index: int, redis_url: str, orders: Any, ready: Any, stop: Any,
            results: Any) -> None:
    """One machine process: runs each row it is given (the same processes for every row,
    so the drill spawns 8 processes, not 24), until it is given ``None``."""
    while (order := orders.get(timeout=600)) is not None:
        row, address, namespace, reset_s = order
        drive(row, index, tuple(address), redis_url, namespace, reset_s, ready, stop,
              results)


def drive(row: str, index: int, address: tuple[str, int], redis_url: str, namespace: str,
          reset_s: float, ready: Any, stop: Any, results: Any) -> None:
    """One row on one machine: call the service at its share of the rate until ``stop``."""
    sock = socket.create_connection(address)
    reader = sock.makefile("rb")
    line = f"{index}\n".encode()

    def call_service() -> None:
        sock.sendall(line)
        if reader.readline() != b"1\n":
            raise ServiceDown("down")

    alerts: list[str] = []
    if row == "pybreaker":
        import pybreaker

        class Opened(pybreaker.CircuitBreakerListener):
            def state_change(self, cb: Any, old: Any, new: Any) -> None:
                if new.name == pybreaker.STATE_OPEN:
                    alerts.append(f"{index}:{len(alerts)}")

        breaker = pybreaker.CircuitBreaker(fail_max=FAIL_MAX, reset_timeout=reset_s,
                                           listeners=[Opened()])
        refused: tuple[type[BaseException], ...] = (pybreaker.CircuitBreakerError,)

        def guarded() -> None:
            breaker.call(call_service)

        def finish() -> None:
            return None
    else:
        import brama_actors

        if row == "brama_actors, fleet=":
            brama = brama_actors.Brama.start(fleet=redis_url, fleet_namespace=namespace)
        else:
            brama = brama_actors.Brama.start()
        brama.register("service", max_attempts=FAIL_MAX, expiry=int(reset_s * 1000))
        brama.subscribe(events=["circuit_opened"], handler=lambda event: alerts.append(event.id))
        refused = (brama_actors.CircuitOpenError,)

        def guarded() -> None:
            with brama.guard("service"):
                call_service()

        def finish() -> None:
            brama.drain(2.0)
            brama.stop()
    ready.put(index)
    interval = MACHINES / TOTAL_RATE
    due = time.monotonic()
    expected: tuple[type[BaseException], ...] = (ServiceDown, *refused)
    while not stop.is_set():
        try:
            guarded()
        except expected:
            pass
        due += interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        elif pause < -0.05:
            due = time.monotonic()  # fell behind (a loaded machine): no catch-up burst
    finish()
    sock.close()
    results.put((index, alerts))


# -- one row -------------------------------------------------------------------------------
@dataclass
class Drill:
    """What one row of the drill measured."""

    row: str
    reset_s: float
    down_at: float = 0.0
    up_at: float = 0.0
    calls: list[tuple[float, int, bool]] = field(default_factory=list)
    alerts: dict[int, list[str]] = field(default_factory=dict)

    def window(self, start: float, end: float) -> list[tuple[float, int, bool]]:
        return [c for c in self.calls if start <= c[0] < end]

    @property
    def stop_calls(self) -> list[tuple[float, int, bool]]:
        return self.window(self.down_at, self.down_at + self.reset_s)

    @property
    def probes(self) -> list[tuple[float, int, bool]]:
        return self.window(self.down_at + self.reset_s, self.up_at)

    def most_at_once(self, span: float = 0.1) -> int:
        times = [c[0] for c in self.probes]
        best, low = 0, 0
        for high, t in enumerate(times):
            while times[low] < t - span:
                low += 1
            best = max(best, high - low + 1)
        return best

    first_back: float | None = None

    def trials_at_once(self) -> int:
        """Calls that reached the recovered service while its first answer was held."""
        if self.first_back is None:
            return 0
        return len(self.window(self.first_back, self.first_back + COLD_S))

    def recovery_ms(self) -> float:
        firsts: dict[int, float] = {}
        for t, who, up in self.calls:
            if t >= self.up_at and up and who not in firsts:
                firsts[who] = t
        if len(firsts) < MACHINES:
            return float("inf")
        return (max(firsts.values()) - self.up_at) * 1000

    def figures(self) -> dict[str, Any]:
        stop = self.stop_calls
        per_sub = [len(a) for a in self.alerts.values()]
        return {
            "reached": len(stop),
            "last_ms": (stop[-1][0] - self.down_at) * 1000 if stop else 0.0,
            "probes": len(self.probes),
            "at_once": self.most_at_once(),
            "trials": self.trials_at_once(),
            "recovery_ms": self.recovery_ms(),
            "alerts_mean": statistics.mean(per_sub) if per_sub else 0.0,
            "alerts_range": (min(per_sub, default=0), max(per_sub, default=0)),
            "distinct": len({a for alerts in self.alerts.values() for a in alerts}),
            "total_calls": len(self.calls),
        }


class Machines:
    """The 8 machine processes (``spawn``), started once for every row."""

    def __init__(self, redis_url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.results, self.stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.orders = [ctx.Queue() for _ in range(MACHINES)]
        self.procs = [ctx.Process(target=machine, args=(i, redis_url, self.orders[i],
                                                        self.ready, self.stop, self.results))
                      for i in range(MACHINES)]
        for p in self.procs:
            p.start()

    def close(self) -> None:
        for q in self.orders:
            q.put(None)
        for p in self.procs:
            p.join(30)


def run_row(machines: Machines, row: str, reset_s: float, warmup_s: float) -> Drill:
    """Run the drill for one row: the machines call, the service goes down and up."""
    service = Service()
    threading.Thread(target=service.serve_forever, daemon=True).start()
    ready, results, stop = machines.ready, machines.results, machines.stop
    stop.clear()
    namespace = f"drill-{uuid.uuid4().hex[:8]}"
    procs = machines.procs
    for q in machines.orders:
        q.put((row, service.address, namespace, reset_s))
    for _ in procs:
        ready.get(timeout=120)
    drill = Drill(row, reset_s)
    time.sleep(warmup_s)
    drill.down_at = time.monotonic()
    service.up = False
    time.sleep(2.5 * reset_s)
    drill.up_at = time.monotonic()
    service.recovering = True
    service.up = True
    time.sleep(1.5 * reset_s)
    stop.set()
    for _ in procs:
        index, alerts = results.get(timeout=60)
        drill.alerts[index] = alerts
    service.shutdown()
    service.server_close()
    drill.calls = sorted(service.calls)
    drill.first_back = service.first_back
    return drill


# -- report --------------------------------------------------------------------------------
def table(drills: list[Drill]) -> list[str]:
    lines = ["| machines' breakers | (a) calls reaching the down service (last at) | "
             "(b) probes while down: total / most in 100 ms | (b) trials at once when "
             "it is back | recovery: every machine calling again | (c) `circuit_opened` "
             "per subscriber / distinct openings |",
             "|---|---|---|---|---|---|"]
    for d in drills:
        f = d.figures()
        low, high = f["alerts_range"]
        spread = "" if low == high else f" ({low}-{high})"
        lines.append(f"| {d.row} | {f['reached']} (+{f['last_ms']:.0f} ms) | "
                     f"{f['probes']} / {f['at_once']} | {f['trials']} | "
                     f"{f['recovery_ms']:.0f} ms | "
                     f"{f['alerts_mean']:g}{spread} / {f['distinct']} |")
    return lines


def chart(drills: list[Drill], path: Path) -> None:
    """Calls the service received per 50 ms, one panel per row, the outage shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(drills), 1, figsize=(8, 1.9 * len(drills) + 0.6),
                             sharex=True)
    bin_s = 0.05
    for ax, d in zip(axes, drills, strict=True):
        start = d.down_at - 0.5
        end = d.up_at + 1.5 * d.reset_s
        edges = [start + i * bin_s for i in range(int((end - start) / bin_s) + 1)]
        counts_up = [0] * (len(edges) - 1)
        counts_down = [0] * (len(edges) - 1)
        for t, _, up in d.calls:
            i = int((t - start) / bin_s)
            if 0 <= i < len(counts_up):
                (counts_up if up else counts_down)[i] += 1
        xs = [(e - d.down_at) for e in edges[:-1]]
        ax.bar(xs, counts_up, width=bin_s, align="edge", color="tab:green", label="answered")
        ax.bar(xs, counts_down, width=bin_s, align="edge", color="tab:red",
               label="reached the down service", bottom=counts_up)
        ax.axvspan(0, d.up_at - d.down_at, color="tab:red", alpha=0.08)
        ax.set_ylabel("calls / 50 ms")
        f = d.figures()
        ax.set_title(f"{d.row}: {f['reached']} calls reached the down service, "
                     f"{f['probes']} probes, {f['distinct']} openings", fontsize=9)
    axes[0].legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel(f"seconds since the service went down (shaded: down; 8 machines, "
                        f"{TOTAL_RATE:,} calls/s in total, reset timeout "
                        f"{drills[0].reset_s:g} s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: How the other fleet figures are measured, and what they bound; their values are the
#: tables copied from benchmarks.md (bench_fleet_figures.py, bench_fleet_soak.py).
METHODS = """\
### Other figures, and how they are measured

All on one redis-server 6.2 (`tests/redis_server.py`, a Unix socket), by
`python tests/benchmarks/bench_fleet_figures.py`, `bench_fleet_soak.py` and
`bench_fleet.py`:

* **Propagation**: a transition (`failure()` opening a circuit, then `reset_circuit`)
  on one system until a handler on each of 4 other systems gets its `state_change`:
  5 systems in one process, and 1 + 4 processes (times on `CLOCK_MONOTONIC`, shared by
  the processes of one Linux machine). Each system has 2 subscribers; every one must get
  every transition's events exactly once (counted by `Event.id`).
* **Expiry lateness**: circuits opened with expiries of 50-500 ms. The deadline is
  `opened_at + expiry` of the `circuit_opened` event, both Redis time. *Ticker*: the
  `expiry` event's timestamp (the Redis `TIME` the tick ran at) minus the deadline, one
  clock. *Arrival*: `time.time()` when a handler got `circuit_half_opened` minus the
  deadline: the local clock against the server's, valid here because the server runs on
  the same machine (both `CLOCK_REALTIME`); between machines it includes their offset.
* **The quiet-success race** (see Costs): system A reports failures (a random 0-4 ms
  apart) while system B reports successes in a loop. A success of B that began after
  A's failure `i-1` returned and ended before A's failure `i` began would, in one
  process, reset the count, so failure `i` would count 1; a count of 2 or more is a
  missed reset. The race needs B's success to land before B's replica has the failure,
  so its window is the propagation delay (the "window max" is the longest gap seen
  between the failure's return and the missed success), and its effect is bounded: a
  missed reset only leaves failures counted that one process would have cleared, so a
  circuit can open up to `max_attempts - 1` failures early, only when failures and
  successes of one circuit interleave within that window; the next success that sees
  the failure resets it.
* **Soak**: 4 processes x 1,000 shared connections, 10,000 reports/s asked in total, a
  rotating 5% of the connections failing; every process must receive exactly the
  transitions Redis made (the sum of every circuit's `transitions` counters), RSS and
  thread counts sampled every second (`--seconds` for a longer run; one of 240 s on
  2026-12-03: 0 lost of 80,971 transitions on each process, RSS 42.3 -> 42.6 MiB after
  the first 24 s, 11 threads throughout).
* **failure() cost**: its p50 next to the same `EVALSHA` from a bare redis-py client, a
  `PING`, and the server's time per script (`INFO commandstats`); then the CPU per
  `failure()` of the caller's thread and of the system's other threads. The latter is
  mostly the stream tail reading back the entry the call itself appended (`XREAD`
  parsing, decoding the status, the replica's version check, delivery), at the moment
  the caller handles its reply: with the GIL, the two take turns. The last row parks
  the tail (a test seam: no events are delivered then) to show what that costs.
* **Round trips**: `bench_fleet.py` counts `INFO commandstats` deltas per operation,
  each alone; a MONITOR shows one `EVALSHA` per step (failure, success after failures,
  the failure that opens) and two for a guarded half_open call (acquire, outcome).
"""


def copied_tables(markdown: Path | None) -> str:
    """The fleet figures' and soak's tables from ``markdown`` (empty if absent)."""
    if markdown is None or not markdown.exists():
        return ""
    import re

    text = markdown.read_text(encoding="utf-8")
    parts = []
    for title in ("## Fleet figures (issue #17)", "## Fleet soak (issue #17)"):
        match = re.search(rf"^{re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        if match:
            parts.append(match.group(1).strip().replace(
                " Definitions: [the fleet page](fleet.md#outage-drill-and-figures).", ""))
    return "\n\n".join(parts)


def reading(drills: list[Drill]) -> str:
    """What the table says, in one paragraph computed from it."""
    rows = {d.row: d.figures() for d in drills}
    fleet, alone = rows["brama_actors, fleet="], rows["brama_actors, per machine"]
    return (f"With `fleet=` the outage cost the service {fleet['reached']} calls instead of "
            f"{alone['reached']} ({FAIL_MAX} failures open the fleet's one circuit; the "
            "others were already in flight on machines whose replica had not yet seen the "
            f"opening), {fleet['probes']} probes instead of {alone['probes']}, "
            f"{fleet['trials']} trial instead of {alone['trials']} when it came back, and "
            f"{fleet['distinct']} distinct alerts instead of {alone['distinct']}. Recovery "
            f"took {fleet['recovery_ms'] - alone['recovery_ms']:+.0f} ms against per-machine "
            "breakers: the reset timeout decides most of it, and on a fleet the other "
            "machines call again only once the one trial has returned (held "
            f"{COLD_S * 1000:.0f} ms by the cold service) and its closing has reached them.")


def doc_section(drills: list[Drill], command: str, info: dict[str, str], chart_name: str,
                extra: str = "") -> str:
    reset = drills[0].reset_s
    lines = [
        DOC_TITLE, "",
        f"Eight processes stand for eight machines; each calls one service at "
        f"{TOTAL_RATE // MACHINES} calls/s ({TOTAL_RATE:,} calls/s in total) through its "
        f"breaker (5 failures open it, reset timeout {reset:g} s). The service, a TCP "
        "server the processes call, records every call it receives; it goes down for "
        f"{2.5 * reset:g} s, then comes back. (a) counts the calls that reached it in the "
        f"first {reset:g} s of the outage (before any circuit may probe), (b) the probes "
        "that reached it while still down (in all, and the most within 100 ms), and the "
        "trials in flight at once when it came back (it comes back cold: it holds the "
        "answers to its first 100 ms of calls for 100 ms, so trials admitted together "
        "are in flight together), (c) the alerts each machine's subscriber got "
        "(`circuit_opened`; pybreaker: a listener's change to open) and the distinct "
        "openings behind them (a fleet's opening carries the same `Event.id` everywhere, "
        "so a pager deduplicates it to one).", "",
        f"Command: `{command}` ({info['date']}, {info['cpu']}, {info['cores']} shared cores,"
        f" {info['python']}, redis-server 6.2 on a Unix socket; {info['source']}). The "
        "machine is shared with other work: the lead refreshes these figures; counts "
        "(calls, probes, alerts) depend little on load, times do.", "",
    ]
    lines += table(drills)
    lines += ["", reading(drills), "", f"![outage drill]({chart_name})", ""]
    lines += [METHODS]
    if extra:
        lines += [extra, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="reset timeout 0.3 s")
    parser.add_argument("--markdown", type=Path, help="benchmarks.md to update")
    parser.add_argument("--fleet-doc", type=Path, help="fleet.md whose drill section to write")
    parser.add_argument("--chart", type=Path, help="the PNG to draw")
    args = parser.parse_args(argv)
    reset_s, warmup_s = (0.3, 0.3) if args.quick else (1.0, 1.0)
    drills = []
    with RedisServer.from_environment() as server:
        machines = Machines(server.url)
        try:
            for row in ROWS:
                drills.append(run_row(machines, row, reset_s, warmup_s))
                print(table(drills)[-1], flush=True)
        finally:
            machines.close()
    lines = table(drills)
    print("\n".join(lines))
    command = "python tests/benchmarks/bench_fleet_drill.py" + (" --quick" if args.quick
                                                                else "")
    info = machine_info()
    chart_path = args.chart
    if chart_path is None and args.markdown is not None:
        chart_path = args.markdown.parent / "bench_fleet_drill.png"
    if chart_path is not None:
        chart(drills, chart_path)
    if args.markdown is not None:
        body = [SECTION_TITLE, "", f"Command: `{command}`; {info['date']}; details and "
                "definitions in [the fleet page](fleet.md#outage-drill-and-figures).", ""]
        body += table(drills)
        body += ["", f"![outage drill]({chart_path.name if chart_path else ''})", ""]
        replace_section(args.markdown, SECTION_TITLE, "\n".join(body))
    if args.fleet_doc is not None:
        replace_section(args.fleet_doc, DOC_TITLE,
                        doc_section(drills, command, info,
                                    chart_path.name if chart_path else "",
                                    copied_tables(args.markdown)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
