"""The runtime every system runs on: pooled actors, one scheduler, injected clocks.

Nothing here knows about circuits. ``_pool`` runs Pykka actors on a few shared worker
threads; ``_scheduler`` fires callbacks at clock deadlines from one heap; ``_clock`` is
the only source of time; ``_nowait`` lets asyncio callers avoid waiting on the loop.
"""

from brama_actors._runtime._clock import Clock, ManualClock, SystemClock
from brama_actors._runtime._pool import BUSY, Pool, PooledActor, current_actor, reject
from brama_actors._runtime._scheduler import Scheduler, Timer

__all__ = [
    "BUSY",
    "Clock",
    "ManualClock",
    "Pool",
    "PooledActor",
    "Scheduler",
    "SystemClock",
    "Timer",
    "current_actor",
    "reject",
]
