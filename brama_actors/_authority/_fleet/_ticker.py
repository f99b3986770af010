"""Expiry at the deadlines, by the Redis server's clock: one system of the fleet at a
time holds the ticker lease (``SET NX PX``, renewed every third of it) and runs the
script's ``tick`` at each deadline. Correctness never depends on it: every step also
expires its circuit first if it is overdue, and a ``tick`` expires a circuit only if it
is due, atomically, so one opening has exactly one expiry fleet-wide. The holder also
runs the inactive cleanup (``_sweep``); every system reports its activity from here.

A thread of its own, not the stream tail's blocked read: Redis 6.2 times out blocked
reads on its 100 ms cron, too coarse for "within 50 ms of the deadline"; a local wait
on the estimated server clock is not.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING

from brama_actors._authority._fleet._link import Link, Unreachable, monotonic_ms
from brama_actors._errors import NodeUnavailable

if TYPE_CHECKING:
    from brama_actors._authority._fleet._authority import FleetAuthority

__all__ = ["LEASE_MS", "Ticker"]

logger = logging.getLogger("brama_actors")

#: The ticker lease (ms): another system takes over within this long after the holder
#: died or lost its link.
LEASE_MS = 3_000
#: Circuits one ``tick`` expires at most (it runs again at once if it hit the limit).
TICK_LIMIT = 200


class Ticker:
    """The ticker thread of one system (it ticks only while it holds the lease)."""

    def __init__(self, owner: FleetAuthority, link: Link, name: str) -> None:
        self._owner = owner
        self._link = link
        self._me = uuid.uuid4().hex
        self._cond = threading.Condition()
        self._stopping = False
        self.holder = False
        self._offset = 0  # server ms - local monotonic ms, from the last reply with TIME
        self._next_due: int | None = None  # the earliest deadline known (server ms)
        self._parked = False  # saw the test seam fixed_now: acts no more by itself
        self._thread = threading.Thread(target=self._run, name=f"{name}-fleet-ticker",
                                        daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def server_now(self) -> int:
        """An estimate of the Redis server's clock (ms), from the last reply with TIME."""
        return monotonic_ms() + self._offset

    def learn_now(self, server_ms: int) -> None:
        """Note the server's clock from a reply that carried it."""
        self._offset = server_ms - monotonic_ms()

    def consider(self, due: int | None) -> None:
        """A deadline the tail saw (server ms): wake the thread if it is the earliest."""
        if due is None:
            return
        with self._cond:
            if self._next_due is None or due < self._next_due:
                self._next_due = due
                self._cond.notify_all()

    def wake(self) -> None:
        """Make the thread work out its next wait again (the sweep's schedule moved)."""
        with self._cond:
            self._cond.notify_all()

    def park(self, timeout: float) -> bool:
        """Test seam: wait until the thread saw ``fixed_now`` and so acts no more by
        itself (tests drive time: ``tick_now``, ``sweep_now``); False on timeout."""
        with self._cond:
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._parked or self._stopping, timeout)

    def _run(self) -> None:
        lease_at = 0
        while True:
            with self._cond:
                if self._stopping:
                    return
                if self._owner.fixed_now is not None:  # tests drive time themselves
                    self._parked = True
                    self._cond.notify_all()
                    self._cond.wait(LEASE_MS / 3000)
                    continue
                wait = max(0, lease_at - monotonic_ms())
                due = self._next_due
                if self.holder and due is not None:
                    wait = min(wait, max(0, due - self.server_now()))
                wait = min(wait, self._owner.sweeper.wait_ms(self.holder))
                if wait:
                    self._cond.wait(wait / 1000)
                    continue
            try:
                if monotonic_ms() >= lease_at:
                    lease_at = monotonic_ms() + LEASE_MS // 3
                    self._lease()
                if self.holder and due is not None and due <= self.server_now():
                    self.tick(None)
                self._owner.sweeper.run_due(self.holder)  # inactive cleanup (_sweep)
            except (*Unreachable, NodeUnavailable) as exc:
                logger.debug("fleet ticker: %r", exc)
                self.holder = False
            except Exception:
                logger.exception("the fleet ticker failed; retrying")
                self.holder = False

    def _lease(self) -> None:
        link = self._link
        got = link.run("lease", "", {"me": self._me, "ttl": LEASE_MS},
                       keys=[link.ticker, *link.keys("")[1:]])
        self.holder = bool(int(got[0]))

    def tick(self, now: int | None, upto: int | None = None) -> str:
        """Expire every circuit due at ``now`` (None: the server's TIME), or only those
        due by ``upto`` (the test seam ``tick_now``: the ones before a sweep); the
        stream id of the last step it appended ("" if none)."""
        link = self._link
        last = ""
        while True:
            reply = link.run("tick", "", {"prefix": link.prefix, "limit": TICK_LIMIT,
                                          "upto": upto},
                             now=now, keys=[link.ticker, *link.keys("")[1:]])
            if now is None:
                self.learn_now(int(reply[0]))
            with self._cond:
                self._next_due = int(float(reply[1])) if reply[1] else None
            last = str(reply[2]) or last
            if int(reply[3]) < TICK_LIMIT:
                return last

    def turn(self, now: int | None) -> str:
        """What the holder's turns since the last one would have done had time passed
        by itself, all at ``now`` (the test seam ``tick_now``; as a local system's
        ``ManualClock.advance`` fires its timers): the expiries due by the sweep's time,
        then the sweep if due (with its report), then the other expiries. The stream id
        of the last step appended ("" if none)."""
        sweeper = self._owner.sweeper
        sweep_at = sweeper.sweep_due()
        last = ""
        if sweep_at is not None:
            last = self.tick(now, upto=sweep_at)
            last = sweeper.run_due(True, now) or last
        return self.tick(now) or last

    def stop(self, timeout: float) -> None:
        """Stop the thread and give the lease back (best effort)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.holder:
            link = self._link
            try:
                link.run("lease", "", {"me": self._me, "drop": True},
                         keys=[link.ticker, *link.keys("")[1:]])
            except Exception:  # unreachable, or an error reply: the lease expires anyway
                pass
