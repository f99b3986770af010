"""Functions run in child processes by tests/test_process_faults.py (importable by spawn).

Each child talks back over a ``multiprocessing`` pipe and never waits on a timer: it runs
until the test kills it, or until a ``stop`` event set by the test.
"""

from __future__ import annotations

import os
import signal
import threading
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import brama_actors


def hammer(address: Any, authkey: bytes, identifier: str, ready: Connection) -> None:
    """A client that loops over every kind of call until it is killed.

    Two threads: one reports failures and successes and reads the status, the other
    subscribes and unsubscribes over and over, so that at any moment some request or
    subscription is in flight on the node.
    """
    client = brama_actors.connect(address, authkey=authkey)
    client.subscribe(events=["failure"])
    client.subscribe(handler=lambda event: None)

    def churn() -> None:
        while True:
            sub = client.subscribe(events=["success", "failure"], connection=identifier)
            client.unsubscribe(sub)

    threading.Thread(target=churn, daemon=True).start()
    ready.send(os.getpid())
    while True:
        client.failure(identifier, reason="hammer")
        client.success(identifier)
        client.status(identifier)


def flood(address: Any, authkey: bytes, identifier: str, threads: int, stop: ProcessEvent,
          report: Connection) -> None:
    """A client flooding the node from ``threads`` threads until ``stop`` is set.

    Half the threads make round trips (``status``, ``failure``), the other half send
    one-way ``success`` messages, each as fast as it can. Sends ``("started", pid)`` once
    the first requests went out, then ``("done", round_trips, one_way)``.
    """
    client = brama_actors.connect(address, authkey=authkey)
    counts = [0] * threads
    one_way = [False] * threads
    started = threading.Barrier(threads + 1)

    def run(index: int) -> None:
        started.wait()
        if index % 2:
            one_way[index] = True
            while not stop.is_set():
                for _ in range(100):
                    client.success(identifier)
                counts[index] += 100
        else:
            while not stop.is_set():
                client.status(identifier)
                client.failure(identifier, reason="flood")
                counts[index] += 2

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    started.wait()
    report.send(("started", os.getpid()))
    for worker in workers:
        worker.join()
    client.drain(timeout=10.0)  # every one-way success has been applied before we hang up
    sent_oneway = sum(c for c, o in zip(counts, one_way, strict=True) if o)
    report.send(("done", sum(counts) - sent_oneway, sent_oneway))
    client.close()


def serve_node(address: str, authkey: bytes, config: dict[str, Any],
               control: Connection) -> None:
    """A node serving at a fixed address until it is killed (or told to stop).

    Registers ``config["register"]`` (identifier, max_attempts, failures) first, so a
    restarted node can come back with a different state. Sends its pid once serving.
    """
    options = dict(config)
    register = options.pop("register", ())
    brama = brama_actors.Brama.start(**options)
    try:
        for identifier, max_attempts, failures in register:
            brama.register(identifier, max_attempts=max_attempts)
            for _ in range(failures):
                brama.failure(identifier)
        brama.serve(address, authkey=authkey)
        control.send(os.getpid())
        try:
            control.recv()
        except (EOFError, OSError):
            pass
    finally:
        brama.stop()


def hold_trial(address: Any, authkey: bytes, identifier: str, ready: Connection) -> None:
    """A client inside a guarded half-open trial call (holding the permit) until killed."""
    client = brama_actors.connect(address, authkey=authkey)
    block = client.guard(identifier)
    block.__enter__()
    ready.send(os.getpid())
    signal.pause()
