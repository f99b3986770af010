"""``spawn()``: a node in a child process, and a client that owns it.

The child is started with the ``spawn`` method (never ``fork``: forking a process that
already runs threads is unsafe). It serves its system on a private Unix socket, sends
the address and authkey back over a pipe, and then waits on that pipe: when the parent
says "stop", closes the client, or dies (the pipe reaches end-of-file), the child stops
its system and exits.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

from brama_actors._config import GLOBAL_OPTIONS, check_global, validate_options
from brama_actors._errors import NodeUnavailable
from brama_actors._remote._client import Client

__all__ = ["spawn"]

#: Seconds to wait for the child node to come up.
START_TIMEOUT = 60.0


def _node_main(config: dict[str, Any], control: Connection) -> None:
    """The child process: run a node until the parent goes away."""
    from brama_actors._system._brama import Brama

    brama = Brama.start(**config)
    try:
        server = brama.serve()
        control.send((server.address, server.authkey))
        try:
            control.recv()  # "stop", or EOFError when the parent is gone
        except (EOFError, OSError):
            pass
    finally:
        brama.stop()


def spawn(*, stale_after: int = 5_000, when_stale: str = "allow", **config: Any) -> Client:
    """Start a node in a child process and return a client that owns it.

    Closing the client stops the node; the node also stops when this process exits.

    Args:
        stale_after: as for ``connect``.
        when_stale: as for ``connect``.
        **config: options of ``Brama.start`` for the node.

    Raises:
        InvalidConfiguration: a bad option (checked here, before any process starts).
        NodeUnavailable: the node did not come up.
    """
    check_global(validate_options(config, GLOBAL_OPTIONS))
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_node_main, args=(config, child_end),
                              name="brama-node", daemon=True)
    process.start()
    child_end.close()
    try:
        if not parent_end.poll(START_TIMEOUT):
            raise NodeUnavailable(f"the spawned node did not start within {START_TIMEOUT} s")
        address, authkey = parent_end.recv()
    except (EOFError, OSError, NodeUnavailable) as exc:
        process.terminate()
        process.join(5)
        parent_end.close()
        if isinstance(exc, NodeUnavailable):
            raise
        raise NodeUnavailable(f"the spawned node failed to start (exit code "
                              f"{process.exitcode})") from exc
    try:
        return Client(address, authkey, stale_after, when_stale, _process=process,
                      _control=parent_end)
    except BaseException:
        parent_end.close()
        process.join(5)
        raise
