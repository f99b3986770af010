"""pytest plugin (entry point ``pytest11``): a ``brama`` fixture on a ManualClock.

Each test gets a fresh system whose clock only moves when the test calls
``brama.clock.advance(ms)``; the system is stopped after the test, so no thread leaks
from one test into the next.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from brama_actors._runtime._clock import ManualClock
from brama_actors._system._brama import Brama


@pytest.fixture
def brama() -> Iterator[Brama]:
    """A fresh brama_actors system on a ManualClock, stopped after the test."""
    system = Brama.start(clock=ManualClock())
    try:
        yield system
    finally:
        system.stop()
