"""What every part of one system shares: its name, clock, pool, scheduler and options.

Built completely before any actor starts: the actors of a system begin running on the
pool the moment they are started, so everything they may read must already exist.
"""

from __future__ import annotations

import itertools
from typing import Any

from brama_actors._runtime import Clock, Pool, Scheduler

__all__ = ["POOL_SIZE", "Context"]

#: Worker threads per system. Actors never block, so a few workers keep 2 cores busy.
POOL_SIZE = 4

_system_ids = itertools.count(1)


class Context:
    """The shared runtime of one system.

    Attributes:
        name: ``brama-<n>``, the prefix of every thread the system starts.
        clock: the system's clock (the only source of time).
        config: the system's options, resolved with the defaults (mutable: ``configure``).
        pool: the workers its actors run on.
        scheduler: its one timer heap.
        stopping: set once the system starts to stop; actors then wind down quietly.
    """

    def __init__(self, clock: Clock, config: dict[str, Any]) -> None:
        self.name = f"brama-{next(_system_ids)}"
        self.clock = clock
        self.config = config
        self.stopping = False
        self.pool = Pool(self.name, POOL_SIZE)
        self.scheduler = Scheduler(clock, f"{self.name}-scheduler")
