"""The runtime every system runs on: pooled actors, supervision, one scheduler, clocks.

Nothing here knows about circuits. ``_pool`` runs Pykka actors on a few shared worker
threads; ``_supervisor`` restarts what crashes within restart intensity (``_crash``: the
seam and the reply of a restarted actor); ``_scheduler`` fires callbacks at clock
deadlines from one heap; ``_clock`` is the only source of time; ``_context`` is what one
system's parts share; ``_nowait`` lets asyncio callers avoid waiting on the loop.
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
