"""Running library calls from asyncio code without blocking the event loop.

A guarded ``async def`` records its outcome through the same calls as synchronous code.
Most of them complete at once in the calling thread (a counter bump, or a connection
actor's message run inline while it is idle); a few would wait: for a busy actor's
answer, for a paced event manager, for a node's reply. Under ``nowait()`` such a call
raises :class:`WouldBlock` *before* doing anything, and :func:`run` then repeats it on
the loop's default executor, where waiting is harmless. So the loop pays a thread
hand-off only when the call really has to wait.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["WouldBlock", "check", "nowait", "run"]

T = TypeVar("T")

_local = threading.local()


class WouldBlock(Exception):
    """Raised under ``nowait()`` by a call that would have to wait; nothing was done."""


def check() -> None:
    """Call before waiting on another thread: raises ``WouldBlock`` under ``nowait()``."""
    if getattr(_local, "on", False):
        raise WouldBlock


@contextlib.contextmanager
def nowait() -> Iterator[None]:
    """Within this block, calls that would wait raise ``WouldBlock`` instead."""
    previous = getattr(_local, "on", False)
    _local.on = True
    try:
        yield
    finally:
        _local.on = previous


async def run(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in this thread if it completes without waiting, else off-loop.

    Args:
        function: a call that, under ``nowait()``, either completes or raises
            ``WouldBlock`` before doing anything.
        *args: its arguments.
    """
    try:
        with nowait():
            return function(*args)
    except WouldBlock:
        pass
    import asyncio  # the caller runs on a loop: asyncio is imported already

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(function, *args))
