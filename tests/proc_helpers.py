"""Functions run in child processes by tests/test_processes.py (importable by spawn)."""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection
from typing import Any

import brama_actors


def report_failures(address: Any, authkey: bytes, identifier: str, count: int,
                    done: Connection) -> None:
    """A worker process: report failures through a client, then say done."""
    with brama_actors.connect(address, authkey=authkey) as client:
        for _ in range(count):
            client.failure(identifier, reason=f"from pid {os.getpid()}")
        done.send(client.available(identifier))


def subscribe_then_wait(address: Any, authkey: bytes, ready: Connection) -> None:
    """A worker that subscribes, says ready, then waits to be killed."""
    client = brama_actors.connect(address, authkey=authkey)
    client.subscribe(events=["failure"])
    client.subscribe(handler=print)
    ready.send(os.getpid())
    signal.pause()


def spawn_node_and_report(ready: Connection) -> None:
    """A parent process that spawns a node, reports the node's pid, then waits."""
    client = brama_actors.spawn()
    process = client._process
    ready.send(process.pid)
    signal.pause()
