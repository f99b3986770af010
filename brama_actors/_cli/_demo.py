"""``python -m brama_actors demo``: three simulated services, their circuits, live.

One service is healthy, one is flaky, and one goes down for a while and recovers. Worker
threads call them through ``guard`` blocks; the terminal shows each circuit's state every
second and the state changes as they happen, with failures summarised under each table.
With ``--serve`` the demo also serves its node, so ``python -m brama_actors watch`` can be
tried against it. With ``--fleet URL`` the services are called by worker processes of one
fleet instead (``_fleet_demo``).

Time: the simulated story (when ``inventory`` is down) and every printed ``t=`` read the
system's own clock (``brama.clock``); ``time.monotonic`` only paces the display loop. The
story scales with ``--duration``, so a short run still shows open -> half_open -> closed.

Ctrl-C stops the demo cleanly, whenever it comes: the workers are stopped and joined, the
system is stopped (a second Ctrl-C during that is ignored), a summary is printed, and the
exit status is 0.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import queue
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from brama_actors._delivery._subscription import Subscription
from brama_actors._errors import BramaError, CircuitOpenError
from brama_actors._events import Event, EventType
from brama_actors._status import CircuitState, ConnectionStatus
from brama_actors._system._brama import Brama

__all__ = ["add_parser", "main", "run"]

#: Events the demo subscribes to. ``state_change`` is printed; the ``circuit_*`` events
#: and ``failure`` are counted (failures are summarised under each table, not flooded).
WATCHED_EVENTS = (
    EventType.STATE_CHANGE,
    EventType.CIRCUIT_OPENED,
    EventType.CIRCUIT_HALF_OPENED,
    EventType.CIRCUIT_CLOSED,
    EventType.FAILURE,
)
MAX_ATTEMPTS = 3
#: The most worker processes ``demo --fleet`` starts (each is a Python process).
MAX_PROCESSES = 16
#: Seconds the shutdown may spend on joining workers and on draining events.
SHUTDOWN_TIMEOUT = 5.0

_STATE_COLORS = {"closed": "32", "half_open": "33", "open": "31"}


@dataclass
class Service:
    """A simulated dependency and the calls made to it."""

    name: str
    description: str
    failure_rate: float
    down_from: float = 2.0  # fractions of the run; never down by default
    down_until: float = 2.0
    calls: int = 0
    failures: int = 0
    rejected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, progress: float, rng: random.Random) -> None:
        """Answer, or raise as the real dependency would.

        Args:
            progress: how far the run is, 0.0 at the start and 1.0 at the end.
            rng: the calling worker's random source.

        Raises:
            ConnectionError: the service is down at ``progress``.
            TimeoutError: a random failure, at ``failure_rate``.
        """
        if self.down_from <= progress < self.down_until:
            raise ConnectionError(f"{self.name}: connection refused")
        if rng.random() < self.failure_rate:
            raise TimeoutError(f"{self.name}: timed out")

    def counts(self) -> tuple[int, int, int]:
        """Return ``(calls, failures, rejected)`` as one consistent triple."""
        with self.lock:
            return self.calls, self.failures, self.rejected


def _services() -> list[Service]:
    return [
        Service("catalog", "healthy", 0.0),
        Service("payments", "flaky (35% errors)", 0.35),
        Service("inventory", "down from 20% to 55% of the run", 0.02, 0.20, 0.55),
    ]


def expiry_for(duration: float) -> int:
    """The circuits' expiry (ms) for a run of ``duration`` seconds.

    It scales with the run, so a short run still shows open -> half_open -> closed.
    """
    return max(200, int(duration * 1000 / 12))


def _color(text: str, code: str, enabled: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if enabled else text


def _use_color(out: TextIO) -> bool:
    """ANSI colours only on a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""
    isatty = getattr(out, "isatty", None)
    return bool(isatty is not None and isatty()) and "NO_COLOR" not in os.environ


def _short(reason: object) -> str:
    """``TimeoutError('payments: timed out')`` -> ``TimeoutError``, for the summaries."""
    return str(reason).split("(", 1)[0]


class Display:
    """Turns statuses and events into lines of text, and counts what it has seen.

    Args:
        services: the simulated services, in display order.
        start_ms: the run's start on the system's clock.
        color: whether to colour states with ANSI codes.
    """

    def __init__(self, services: list[Service], start_ms: int, color: bool) -> None:
        self.services = services
        self.start_ms = start_ms
        self.color = color
        self.openings: Counter[str] = Counter()
        self.transitions = 0
        self._recent_failures: Counter[tuple[str, str]] = Counter()
        self._expiry: dict[str, int] = {}

    def event(self, event: Event) -> str | None:
        """Account for one event; return the line to print for it, if any.

        ``state_change`` gives the one line per transition. The ``circuit_*`` event that
        comes just before it says the same thing, so it is only counted (and an opening's
        expiry is kept for the line that follows); failures are summarised by ``table``.
        """
        name = event.connection or "-"
        data = event.data
        kind = event.event
        if kind is EventType.FAILURE:
            self._recent_failures[(name, _short(data.get("reason")))] += 1
            return None
        if kind is EventType.CIRCUIT_OPENED:
            self.openings[name] += 1
            self._expiry[name] = int(data.get("expiry", 0))
            return None
        if kind is not EventType.STATE_CHANGE:
            return None
        self.transitions += 1
        new = str(data["new_state"])
        note = str(data.get("reason"))
        if new == CircuitState.OPEN and name in self._expiry:
            note += f"; half-open in {self._expiry.pop(name) / 1000:.1f} s"
        at = (event.timestamp - self.start_ms) / 1000
        text = f"  t={at:5.1f}s  {name}: {data['previous_state']} -> {new}  ({note})"
        return _color(text, _STATE_COLORS.get(new, "0"), self.color)

    def table(self, statuses: dict[str, ConnectionStatus], now_ms: int) -> str:
        """One table of every circuit, then the failures since the previous table.

        Args:
            statuses: each service's status, by name (a missing one shows as ``?``).
            now_ms: when they were read, on the system's clock.

        Returns:
            The lines of the table, joined.
        """
        elapsed = (now_ms - self.start_ms) / 1000
        lines = [f"--- t={elapsed:5.1f}s " + "-" * 62,
                 f"{'service':<10} {'state':<10} {'fails':>5} {'success':>8} {'calls':>6} "
                 f"{'errors':>6} {'refused':>7}  behaviour"]
        for service in self.services:
            calls, failures, rejected = service.counts()
            status = statuses.get(service.name)
            state = "?" if status is None else status.state.value
            fails = "?" if status is None else str(status.failure_count)
            rate = None if status is None else status.success_rate
            success = "-" if rate is None else f"{rate:.0%}"
            painted = _color(f"{state:<10}", _STATE_COLORS.get(state, "0"), self.color)
            lines.append(f"{service.name:<10} {painted} {fails:>5} {success:>8} {calls:>6} "
                         f"{failures:>6} {rejected:>7}  {service.description}")
        if self._recent_failures:
            parts = [f"{name} {count}x {reason}"
                     for (name, reason), count in self._recent_failures.most_common()]
            lines.append("failures since the last table: " + ", ".join(parts))
            self._recent_failures.clear()
        return "\n".join(lines)

    def summary(self, elapsed: float, seed: int, interrupted: bool) -> str:
        """The closing lines: per service, then in total.

        Args:
            elapsed: seconds the run lasted.
            seed: the seed that reproduces the simulated services' randomness.
            interrupted: True when Ctrl-C ended the run.

        Returns:
            The lines of the summary, joined.
        """
        how = "interrupted" if interrupted else "done"
        lines = [f"summary ({how} after {elapsed:.1f} s, seed {seed}):"]
        total = refused = 0
        for service in self.services:
            calls, failures, rejected = service.counts()
            total += calls
            refused += rejected
            lines.append(f"  {service.name:<10} {calls:>6} calls, {failures:>5} errors, "
                         f"{rejected:>6} refused, opened {self.openings[service.name]} time(s)")
        lines.append(f"  {total} calls made, {refused} refused while a circuit was open (the "
                     f"failing dependency was spared those calls); "
                     f"{self.transitions} state change(s)")
        return "\n".join(lines)


def _worker(brama: Brama, services: list[Service], stop: threading.Event, start_ms: int,
            duration: float, seed: int) -> None:
    """Call every service through its guard until ``stop`` is set (a worker thread).

    Args:
        brama: the demo's system.
        services: the services to call, in turn.
        stop: set when the demo ends.
        start_ms: the run's start on ``brama.clock``, the simulated story's time axis.
        duration: the run's length in seconds.
        seed: this worker's random seed.
    """
    rng = random.Random(seed)
    length_ms = duration * 1000
    try:
        while not stop.is_set():
            progress = (brama.clock.now() - start_ms) / length_ms
            for service in services:
                try:
                    with brama.guard(service.name):
                        with service.lock:
                            service.calls += 1
                        service.call(progress, rng)
                except CircuitOpenError:
                    with service.lock:
                        service.rejected += 1
                except (ConnectionError, TimeoutError):
                    with service.lock:
                        service.failures += 1
            stop.wait(0.02)  # pacing: ~50 calls per second per service and worker
    except BramaError:
        # The system stopped under the worker (its supervisor gave up): end quietly, the
        # main loop notices ``stop`` and reports it.
        stop.set()


class _Interrupts:
    """Ctrl-C handling for the demo: one ``KeyboardInterrupt`` at most, and only when armed.

    The default handler raises on every Ctrl-C, so a second press (or one that comes just
    as the run ends) could land inside the shutdown and leave the system running. Here the
    first Ctrl-C raises and disarms, and the run disarms it before it shuts down, so the
    shutdown and the summary always complete.
    """

    def __init__(self) -> None:
        self.armed = True

    def handle(self, signum: int, frame: object) -> None:
        """The SIGINT handler."""
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Interrupts]:
        """Handle SIGINT with ``handle`` inside the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # only the main thread receives SIGINT or may set handlers
            return
        previous = signal.signal(signal.SIGINT, self.handle)
        try:
            yield self
        finally:
            if previous is not None:  # None: a handler installed outside Python; leave it
                signal.signal(signal.SIGINT, previous)


def _statuses(brama: Brama, services: list[Service]) -> dict[str, ConnectionStatus]:
    return {status.identifier: status for status in brama.connections()
            if status.identifier in {service.name for service in services}}


def run(duration: float = 20.0, seed: int | None = None, serve: bool = False,
        out: TextIO | None = None) -> int:
    """Run the demo.

    Args:
        duration: seconds to run; the simulated outage and the expiry scale with it.
        seed: seed of the simulated services' randomness (default: a random one, printed
            so that a run can be repeated).
        serve: also serve the system's node and print the ``watch`` command for it.
        out: where to print (default: ``sys.stdout`` at the time of the call).

    Returns:
        0 when the run ends or Ctrl-C interrupts it; 1 if the system stopped by itself.
    """
    with _Interrupts().installed() as interrupts:
        return _run(duration, random.randrange(1_000_000) if seed is None else seed, serve,
                    sys.stdout if out is None else out, interrupts)


def _run(duration: float, seed: int, serve: bool, out: TextIO,
         interrupts: _Interrupts) -> int:
    """``run``, with its defaults resolved and Ctrl-C handled by ``interrupts``."""
    services = _services()
    expiry = expiry_for(duration)
    stop = threading.Event()
    workers: list[threading.Thread] = []
    brama: Brama | None = None
    changes: Subscription | None = None
    display: Display | None = None
    keydir: str | None = None
    interrupted = False
    failed: str | None = None
    leftovers: list[Event] = []
    final: dict[str, ConnectionStatus] = {}
    final_ms = 0
    began = time.monotonic()

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        brama = Brama.start(max_attempts=MAX_ATTEMPTS, expiry=expiry)
        for service in services:
            brama.register(service.name, type="http")
        changes = brama.subscribe(events=WATCHED_EVENTS)
        start_ms = brama.clock.now()
        display = Display(services, start_ms, _use_color(out))
        say(f"brama_actors demo: {len(services)} services, max_attempts={MAX_ATTEMPTS}, "
            f"expiry={expiry} ms, {duration:g} s, seed {seed} (Ctrl-C to stop)")
        if serve:
            node = brama.serve()
            keydir = tempfile.mkdtemp(prefix="brama-demo-")
            keyfile = os.path.join(keydir, "authkey")
            with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
                handle.write(node.authkey.hex())
            say(f"serving on {node.address}; watch it with:\n"
                f"  python -m brama_actors watch {node.address} --authkey-file {keyfile}")
        workers = [threading.Thread(target=_worker, name=f"demo-worker-{i}",
                                    args=(brama, services, stop, start_ms, duration, seed + i),
                                    daemon=True)
                   for i in range(2)]
        for worker in workers:
            worker.start()
        # Pacing only: the loop wakes for each event, for each table, and at the end.
        deadline = began + duration
        next_table = began
        while True:
            now = time.monotonic()
            if now >= deadline:
                break  # the last table is printed once everything has stopped
            if now >= next_table:
                say(display.table(_statuses(brama, services), brama.clock.now()))
                next_table += 1.0
            if stop.is_set():
                failed = "the brama system stopped unexpectedly"
                break
            try:
                item = changes.get(timeout=max(0.0, min(next_table, deadline) - now))
            except queue.Empty:
                continue
            for event in item if isinstance(item, tuple) else (item,):
                line = display.event(event)
                if line is not None:
                    say(line)
        # Disarm inside the ``try``: a Ctrl-C up to here is caught below, and none can
        # land in the shutdown.
        interrupts.armed = False
    except KeyboardInterrupt:
        interrupted = True  # the handler disarmed itself when it raised
    except BramaError as exc:
        interrupts.armed = False
        failed = f"the brama system failed: {exc}"
    finally:
        interrupts.armed = False
        stop.set()
        for worker in workers:
            worker.join(SHUTDOWN_TIMEOUT)
        if brama is not None:
            with contextlib.suppress(BramaError, TimeoutError):
                brama.drain(SHUTDOWN_TIMEOUT)
                final_ms = brama.clock.now()
                final = _statuses(brama, services)
                while changes is not None:  # the events the loop had no time to print
                    try:
                        item = changes.get(timeout=0)
                    except queue.Empty:
                        break
                    leftovers.extend(item if isinstance(item, tuple) else (item,))
            brama.stop()
        if keydir is not None:
            shutil.rmtree(keydir, ignore_errors=True)

    # Everything is stopped; the summary takes milliseconds, so a double press of Ctrl-C
    # (still disarmed) does not cut it short.
    if interrupted:
        say("\ninterrupted: stopped the workers and the system")
    if display is not None:
        for event in leftovers:
            line = display.event(event)
            if line is not None:
                say(line)
        if final:
            say(display.table(final, final_ms))
        say(display.summary(time.monotonic() - began, seed, interrupted))
    if failed is not None:
        say(f"error: {failed}")
    return 1 if failed is not None else 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` sub-command.

    Args:
        subparsers: the CLI's sub-command registry.
    """
    parser = subparsers.add_parser("demo", help="a live demonstration on simulated services",
                                   description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=20.0, metavar="SECONDS",
                        help="seconds to run (default 20); the outage and expiry scale with it")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="seed for reproducible runs (default: random, and printed)")
    parser.add_argument("--serve", action="store_true",
                        help="serve the demo's node so `watch` can connect to it")
    parser.add_argument("--fleet", nargs="?", const="", metavar="URL",
                        help="run the services in worker processes of one fleet on this "
                             "Redis (--fleet alone: $BRAMA_FLEET_URL)")
    parser.add_argument("--processes", type=int, default=3, metavar="N",
                        help=f"worker processes with --fleet (default 3, at most "
                             f"{MAX_PROCESSES})")
    parser.add_argument("--namespace", default=None,
                        help="fleet namespace with --fleet (default: a fresh one, removed "
                             "at the end)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``demo`` from parsed arguments.

    Args:
        args: ``duration``, ``seed`` and ``serve``, as ``add_parser`` defines them.
        out: where to print (default: ``sys.stdout`` at the time of the call).

    Returns:
        The exit code: 2 for a bad ``--duration``, else that of ``run``.
    """
    if not (math.isfinite(args.duration) and args.duration > 0):
        print(f"demo: --duration must be a finite number > 0, got {args.duration}",
              file=sys.stderr)
        return 2
    if args.fleet is not None:
        return _fleet(args, sys.stdout if out is None else out)
    return run(args.duration, args.seed, args.serve, out)


def _fleet(args: argparse.Namespace, out: TextIO) -> int:
    """``demo --fleet``: checks its options, then runs ``_fleet_demo`` (which needs
    ``redis``, so it is imported only here)."""
    from brama_actors._cli._fleet_watch import fleet_url, refuse

    if args.serve:
        print("demo: --serve is for the plain demo; watch a fleet with watch --fleet",
              file=sys.stderr)
        return 2
    if not 1 <= args.processes <= MAX_PROCESSES:
        print(f"demo: --processes must be between 1 and {MAX_PROCESSES}, got "
              f"{args.processes}", file=sys.stderr)
        return 2
    try:
        url = fleet_url(args.fleet)
        from brama_actors._cli._fleet_demo import run_fleet

        seed = random.randrange(1_000_000) if args.seed is None else args.seed
        return run_fleet(url, args.namespace, args.processes, args.duration, seed, out)
    except ValueError as exc:
        return refuse("demo", exc)
