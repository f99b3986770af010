"""Worker processes sharing one circuit through a node.

Run: ``python examples/worker_pool.py``. The parent serves its system; worker processes
connect and call a flaky service through ``circuit_breaker``. When the first worker
trips the circuit, the other workers stop calling the service too: their replica knows
the circuit is open without asking anyone. The parent's monitor prints each event once.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from multiprocessing.connection import Connection
from typing import Any

import brama_actors
from brama_actors import Brama, CircuitOpenError, ConnectionMonitor, Event


def flaky_service(worker: str) -> str:
    """The dependency: it is down for the whole demo."""
    raise ConnectionError(f"inventory service unreachable (asked by {worker})")


def worker(name: str, address: Any, authkey: bytes, calls: int, report: Connection) -> None:
    """A worker process: make guarded calls, report how many reached the service."""
    with brama_actors.connect(address, authkey=authkey) as client:
        call = brama_actors.circuit_breaker("inventory", brama=client, max_attempts=3,
                                            expiry=60_000)(flaky_service)
        reached = rejected = 0
        for _ in range(calls):
            try:
                call(name)
            except CircuitOpenError:
                rejected += 1
            except ConnectionError:
                reached += 1
        report.send((name, os.getpid(), reached, rejected))


class PrintingMonitor(ConnectionMonitor):
    subscribe = dict(events=["registration", "failure", "circuit_opened", "state_change"])

    def __init__(self, opened: threading.Event, seen: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.opened = opened
        self.seen = seen

    def handle_event(self, event: Event) -> None:
        line = f"monitor: {event.connection}: {event.event.value}"
        if "reason" in event.data and event.data["reason"] is not None:
            line += f" ({event.data['reason']})"
        print(line, flush=True)
        self.seen.append(event.event.value)
        if event.event == "circuit_opened":
            self.opened.set()


def main() -> int:
    context = multiprocessing.get_context("spawn")
    opened = threading.Event()
    seen: list[str] = []
    with Brama.start() as brama:
        server = brama.serve()
        monitor = PrintingMonitor.start(opened, seen, brama=brama)
        results = []
        first_end, first_child = context.Pipe()
        first = context.Process(target=worker, args=("worker-1", server.address,
                                                      server.authkey, 5, first_child))
        first.start()
        if not opened.wait(60):
            print("the circuit never opened")
            return 1
        results.append(first_end.recv())
        others = []
        for n in (2, 3):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=worker, args=(f"worker-{n}", server.address,
                                                           server.authkey, 5, child_end))
            process.start()
            others.append((process, parent_end))
        for process, parent_end in others:
            results.append(parent_end.recv())
            process.join(60)
        first.join(60)
        brama.drain()
        monitor.stop()
    for name, pid, reached, rejected in results:
        print(f"{name} (pid {pid}): {reached} call(s) reached the service, "
              f"{rejected} refused by the open circuit")
    others_reached = sum(reached for name, _, reached, _ in results if name != "worker-1")
    ok = results[0][2] == 3 and others_reached == 0 and seen.count("circuit_opened") == 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
