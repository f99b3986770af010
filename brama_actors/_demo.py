"""``python -m brama_actors demo``: three simulated services, their circuits, live.

One service is healthy, one is flaky, and one goes down for a while and recovers. Worker
threads call them through ``guard`` blocks; the terminal shows each circuit's state every
second and the state changes as they happen. With ``--serve`` the demo also serves its
node, so ``python -m brama_actors watch`` can be tried against it.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from brama_actors._errors import CircuitOpenError
from brama_actors._events import Event
from brama_actors._system import Brama

__all__ = ["add_parser", "main", "run"]


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
        """Answer, or raise as the real dependency would."""
        if self.down_from <= progress < self.down_until:
            raise ConnectionError(f"{self.name}: connection refused")
        if rng.random() < self.failure_rate:
            raise TimeoutError(f"{self.name}: timed out")


def _services() -> list[Service]:
    return [
        Service("catalog", "healthy", 0.0),
        Service("payments", "flaky (35% errors)", 0.35),
        Service("inventory", "down from 20% to 55% of the run", 0.02, 0.20, 0.55),
    ]


def _color(text: str, code: str, enabled: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if enabled else text


_STATE_COLORS = {"closed": "32", "half_open": "33", "open": "31"}


def _table(brama: Brama, services: list[Service], elapsed: float, color: bool) -> str:
    lines = [f"--- t={elapsed:5.1f}s " + "-" * 62,
             f"{'service':<10} {'state':<10} {'fails':>5} {'success':>8} {'calls':>6} "
             f"{'errors':>6} {'refused':>7}  behaviour"]
    for service in services:
        status = brama.status(service.name)
        rate = "-" if status.success_rate is None else f"{status.success_rate:.0%}"
        state = status.state.value
        lines.append(
            f"{service.name:<10} {_color(f'{state:<10}', _STATE_COLORS[state], color)} "
            f"{status.failure_count:>5} {rate:>8} {service.calls:>6} {service.failures:>6} "
            f"{service.rejected:>7}  {service.description}")
    return "\n".join(lines)


def _describe(event: Event, start_ms: int, color: bool) -> str:
    at = (event.timestamp - start_ms) / 1000
    new = event.data["new_state"].value
    text = (f"  t={at:5.1f}s  {event.connection}: {event.data['previous_state'].value} -> "
            f"{new}  ({event.data['reason']})")
    return _color(text, _STATE_COLORS[new], color)


def _worker(brama: Brama, services: list[Service], stop: threading.Event, start: float,
            duration: float, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        progress = (time.monotonic() - start) / duration
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


def run(duration: float = 20.0, seed: int | None = None, serve: bool = False,
        out: TextIO = sys.stdout) -> int:
    """Run the demo; returns the exit code."""
    color = out.isatty() and "NO_COLOR" not in os.environ
    services = _services()
    # Expiry scales with the run, so a short run still shows open -> half_open -> closed.
    expiry = max(200, int(duration * 1000 / 12))
    stop = threading.Event()
    with Brama.start(max_attempts=3, expiry=expiry) as brama:
        for service in services:
            brama.register(service.name, type="http")
        changes = brama.subscribe(events=["state_change"])
        start_ms = brama.clock.now()
        print(f"brama_actors demo: {len(services)} services, max_attempts=3, "
              f"expiry={expiry} ms, {duration:g} s (Ctrl-C to stop)", file=out)
        keydir = None
        if serve:
            node = brama.serve()
            keydir = tempfile.mkdtemp(prefix="brama-demo-")
            keyfile = os.path.join(keydir, "authkey")
            with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
                handle.write(node.authkey.hex())
            print(f"serving on {node.address}; watch it with:\n"
                  f"  python -m brama_actors watch {node.address} --authkey-file {keyfile}",
                  file=out)
        out.flush()
        start = time.monotonic()
        workers = [threading.Thread(target=_worker, name=f"demo-worker-{i}",
                                    args=(brama, services, stop, start, duration,
                                          (seed if seed is not None else time.time_ns()) + i),
                                    daemon=True)
                   for i in range(2)]
        for worker in workers:
            worker.start()
        try:
            next_table = start
            while True:
                now = time.monotonic()
                if now - start >= duration:
                    break
                if now >= next_table:
                    print(_table(brama, services, now - start, color), file=out)
                    print("state changes:", file=out)
                    next_table += 1.0
                timeout = max(0.0, min(next_table, start + duration) - time.monotonic())
                try:
                    event = changes.get(timeout=timeout)
                except queue.Empty:
                    continue
                assert isinstance(event, Event)
                print(_describe(event, start_ms, color), file=out)
                out.flush()
        except KeyboardInterrupt:
            print("\ninterrupted; stopping", file=out)
        finally:
            stop.set()
            for worker in workers:
                worker.join(5)
        print(_table(brama, services, time.monotonic() - start, color), file=out)
        total = sum(s.calls for s in services)
        refused = sum(s.rejected for s in services)
        print(f"summary: {total} calls made, {refused} refused while a circuit was open "
              f"(the failing dependency was spared those calls)", file=out)
        out.flush()
        if keydir is not None:
            shutil.rmtree(keydir, ignore_errors=True)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser("demo", help="a live demonstration on simulated services",
                                   description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds to run (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    parser.add_argument("--serve", action="store_true",
                        help="serve the demo's node so `watch` can connect to it")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``demo`` from parsed arguments."""
    if not args.duration > 0:
        print("demo: --duration must be > 0", file=sys.stderr)
        return 2
    return run(args.duration, args.seed, args.serve, out)
