"""Inactive cleanup on a fleet (API.md section 16): fleet-wide, by the last activity
anywhere in the fleet.

Activity lives in the sorted set ``{ns}:activity`` (member: the circuit, score: its last
activity, server ms). Every step of the script bumps it (``ZADD GT`` in ``commit``).
Quiet successes of circuits without a rate window never reach Redis as steps: each
system reports the circuits it saw them on every ``report interval``
(``min(cleanup_interval, inactive_threshold) / 4``) in one ``ZADD GT XX`` per 1,000
circuits (``XX``: a report never brings a removed circuit back). Quiet successes of
windowed circuits reach Redis in their batches (``_pending``), which are steps.

The ticker lease holder (``_ticker``) runs the script's ``sweep`` every
``cleanup_interval``, after its own report: each call removes at most ``SWEEP_LIMIT``
circuits idle for more than ``inactive_threshold`` by the server's clock, each like
``unregister`` (keys deleted, one stream entry) with the events ``cleanup`` and
``connection_removed`` (reason ``"inactive"``), which every system's tail applies and
delivers once. The holder's own ``cleanup_interval`` and ``inactive_threshold`` decide.

All of it runs on the ticker's thread: no thread of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from brama_actors._authority._fleet._codec import member
from brama_actors._authority._fleet._link import Link, Unreachable, monotonic_ms

if TYPE_CHECKING:
    from brama_actors._authority._fleet._authority import FleetAuthority
    from brama_actors._keys import Key

__all__ = ["REPORT_CHUNK", "SWEEP_LIMIT", "Sweeper"]

#: Circuits one ``sweep`` call removes at most (the holder calls again after
#: ``SWEEP_PAUSE_MS`` if it reached the limit).
SWEEP_LIMIT = 200
#: Ms between two sweep calls of the holder while idle circuits are left.
SWEEP_PAUSE_MS = 100
#: Circuits one ``ZADD`` of a report carries at most.
REPORT_CHUNK = 1_000

logger = logging.getLogger("brama_actors")


class Sweeper:
    """This system's activity reports and, while it holds the ticker lease, the sweep."""

    def __init__(self, owner: FleetAuthority, link: Link) -> None:
        self._owner = owner
        self._link = link
        self._lock = threading.Lock()
        self._reported: dict[Key, int] = {}  # the quiet activity reported, per circuit
        #: The clock the schedule runs on (ms). Test seam: ``FleetAuthority.fix_time``
        #: puts it on the fixed now, so ``tick_now`` sweeps when a local system would.
        self.clock: Callable[[], int] = monotonic_ms
        self._report_at = self._sweep_at = 0
        self.arm()

    def _config(self, name: str) -> int:
        return int(self._owner.context.config[name])

    def report_interval(self) -> int:
        """How often (ms) this system reports its quiet activity."""
        return max(1, min(self._config("cleanup_interval"),
                          self._config("inactive_threshold")) // 4)

    def arm(self, sweep: bool = True) -> None:
        """Start the schedule over from now: the next report one report interval away
        and (``sweep``) the next sweep ``cleanup_interval`` away.

        At start, and when ``configure()`` changes these options: as on a local
        system, a new ``cleanup_interval`` counts from then, not from the sweep
        before it (which, after a long interval, could be hours away)."""
        with self._lock:
            start = self.clock()
            self._report_at = start + self.report_interval()
            if sweep:
                self._sweep_at = start + self._config("cleanup_interval")

    def wait_ms(self, holder: bool) -> int:
        """Milliseconds until the next report (or sweep, for the holder) is due."""
        due = min(self._report_at, self._sweep_at) if holder else self._report_at
        return max(0, due - self.clock())

    def sweep_due(self) -> int | None:
        """When the sweep became due by the schedule's clock, or None if it is not due."""
        due = self._sweep_at
        return due if self.clock() >= due else None

    def run_due(self, holder: bool, now: int | None = None) -> str:
        """Report if due; sweep if due and ``holder`` (the ticker's thread, or the test
        seam ``tick_now`` with the fixed ``now``; None: the server's TIME); the stream
        id of the sweep's last removal ("" if none)."""
        mono = self.clock()
        last = ""
        if mono >= self._report_at or (holder and mono >= self._sweep_at):
            self._report_at = mono + self.report_interval()
            try:
                self.report()
            except Unreachable as exc:  # the next report sends it (the ticker keeps its lease)
                logger.debug("fleet activity report: %r", exc)
        if mono >= self._sweep_at:
            self._sweep_at = mono + self._config("cleanup_interval")
            if holder:
                # One script call per turn of the ticker: the lease, the expiries and
                # stop() wait no longer than that, and the removals' stream entries come
                # no faster than tails read them (a sweep of 30,000 in one go took 2 s
                # and outran a tail past the stream's MAXLEN).
                last, more = self.sweep(now, calls=1)
                if more:
                    self._sweep_at = mono + SWEEP_PAUSE_MS
        return last

    def report(self) -> int:
        """Send the quiet activity seen since the last report; the circuits sent."""
        replica = self._owner.replica
        with replica.lock:
            seen = {key: counts[1] for key, counts in replica.quiet.items()}
        # A windowed circuit's batch not sent yet (up to FLUSH_MS, or longer while its
        # step waits): its successes are activity already, as they are locally.
        for key, ms in self._owner.pending.activity().items():
            seen[key] = max(ms, seen.get(key, 0))
        with self._lock:
            self._reported = {k: v for k, v in self._reported.items() if k in seen}
            fresh = {k: v for k, v in seen.items() if v > self._reported.get(k, 0)}
        if not fresh:
            return 0
        items = [(member(key), ms) for key, ms in fresh.items()]
        pipe = self._link.cmd.pipeline(transaction=False)
        for i in range(0, len(items), REPORT_CHUNK):
            pipe.zadd(self._link.activity, dict(items[i:i + REPORT_CHUNK]), xx=True, gt=True)
        pipe.execute()
        with self._lock:
            for key, ms in fresh.items():
                self._reported[key] = max(ms, self._reported.get(key, 0))
        return len(items)

    def sweep(self, now: int | None, calls: int | None = None) -> tuple[str, bool]:
        """Remove circuits idle fleet-wide for more than ``inactive_threshold`` at ``now``
        (None: the server's TIME), ``SWEEP_LIMIT`` per script call, at most ``calls``
        calls (None: until none is left); (the stream id of the last removal or "",
        whether more may be left)."""
        link = self._link
        last = ""
        done = 0
        while True:
            reply: Any = link.run(
                "sweep", "", {"prefix": link.prefix, "limit": SWEEP_LIMIT,
                              "threshold": self._config("inactive_threshold")},
                now=now, keys=[link.activity, *link.keys("")[1:]])
            last = str(reply[1]) or last
            done += 1
            if int(reply[2]) < SWEEP_LIMIT:
                return last, False
            if calls is not None and done >= calls:
                return last, True
