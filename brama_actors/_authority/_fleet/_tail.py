"""The stream tail: one thread per system that keeps the replica current and delivers
the fleet's events.

Every entry of the stream is one step applied in Redis. The tail applies its post-state
to the replica and hands its events to this system's delivery, in the stream's order,
exactly once: it is the only reader, and it moves its position past an entry only after
handing it over. Entries are numbered (``ver``): a gap (entries trimmed before this
system read them, or a Redis that restarted empty) makes it load a snapshot instead.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from brama_actors import _rules as rules
from brama_actors._authority._fleet._codec import decode_status, load_metadata, member_key
from brama_actors._authority._fleet._link import MAX_BLOCK_MS, Link, Unreachable
from brama_actors._authority._fleet._ticker import Ticker
from brama_actors._errors import NodeUnavailable
from brama_actors._keys import Key

if TYPE_CHECKING:
    from brama_actors._authority._fleet._authority import FleetAuthority

__all__ = ["Tail", "stream_id"]

logger = logging.getLogger("brama_actors")

#: How often an unreachable link is probed (ms).
PROBE_MS = 100


def stream_id(raw: str) -> tuple[int, int]:
    """A stream id as a comparable pair."""
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


class Tail:
    """The tail thread of one system."""

    def __init__(self, owner: FleetAuthority, link: Link, ticker: Ticker, name: str) -> None:
        self._owner = owner
        self._ticker = ticker
        self._link = link
        self._me = uuid.uuid4().hex
        self._wake_key = link.wake + self._me
        self._stopping = False
        self._cond = threading.Condition()
        self.applied: tuple[int, int] = (0, 0)  # the last entry handed over
        self._last_id = "0-0"
        self._wake_id = "0-0"
        self._ver = 0
        self._synced = False
        self.synced_once = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-fleet", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    # -- waiting for the tail --------------------------------------------------------------
    def wait_for(self, target: tuple[int, int], timeout: float) -> bool:
        """Wait until the entry ``target`` was handed over; False on timeout or stop."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.applied >= target or self._stopping, timeout) \
                and self.applied >= target

    def _advance(self, raw_id: str) -> None:
        with self._cond:
            self._last_id = raw_id
            self.applied = max(self.applied, stream_id(raw_id))
            self._cond.notify_all()

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        link = self._link
        while not self._stopping:
            try:
                if not self._synced:
                    self._resync()
                    link.set_connected(True)
                    self.synced_once.set()
                self._read()
            except Unreachable as exc:
                self._down(exc)
            except NodeUnavailable as exc:
                self._down(exc)
            except Exception:
                if self._stopping:
                    break
                logger.exception("the fleet tail failed; resyncing")
                self._synced = False
                self._pause(PROBE_MS)

    def invalidate(self) -> None:
        """Load a snapshot before the next read (the link was seen down elsewhere)."""
        self._synced = False

    def _down(self, exc: BaseException) -> None:
        if self._stopping:
            return
        logger.debug("fleet tail: %r", exc)
        self._synced = False
        self._link.set_connected(False)
        self.synced_once.set()  # start() waits no longer
        self._owner.local_expiries()
        self._pause(PROBE_MS)

    def _pause(self, ms: int) -> None:
        with self._cond:
            if not self._stopping:
                self._cond.wait(ms / 1000)

    def _resync(self) -> None:
        """Load a snapshot and continue from the stream position it was taken at."""
        owner = self._owner
        link = self._link
        reply = link.run("snapshot", "", {"prefix": link.prefix, "inc": uuid.uuid4().hex},
                         now=owner.fixed_now_ms(),
                         keys=[link.ticker, link.stream, link.meta, link.deadlines,
                               link.ticker, link.index])
        now, ver, last, flat = int(reply[0]), int(reply[1]), str(reply[2]), reply[3]
        self._ticker.learn_now(now)
        circuits = []
        for i in range(0, len(flat), 6):
            name, raw, meta, explicit, gen, cver = flat[i:i + 6]
            status = decode_status(raw, load_metadata(meta))
            circuits.append((member_key(name), status, json.loads(explicit or "{}"),
                             int(gen), int(cver or 0)))
        owner.load_snapshot(ver, circuits, str(reply[4]))
        self._ver = ver
        for _, status, _, _, _ in circuits:
            self._ticker.consider(rules.deadline(status))
        self._synced = True
        self._advance(last)

    def _read(self) -> None:
        link = self._link
        reply: Any = link.tail.xread(
            {link.stream: self._last_id, self._wake_key: self._wake_id}, count=500,
            block=MAX_BLOCK_MS)
        for stream, entries in reply or ():
            if stream != link.stream:
                self._wake_id = entries[-1][0]
                continue
            for raw_id, fields in entries:
                if not self._entry(raw_id, fields):
                    return

    def _entry(self, raw_id: str, fields: dict[str, str]) -> bool:
        """Apply one entry; False if it showed a gap (a resync follows)."""
        ver = int(fields["v"])
        if ver != self._ver + 1:
            if ver <= self._ver:
                self._advance(raw_id)  # already in the snapshot
                return True
            logger.warning("fleet stream gap (entry %d after %d); loading a snapshot", ver,
                           self._ver)
            self._synced = False
            return False
        self._ver = ver
        key: Key = member_key(fields["k"])
        status = self._owner.apply_entry(key, fields, ver)
        if status is not None:
            self._ticker.consider(rules.deadline(status))
        self._owner.deliver(raw_id, fields, key, status)
        self._advance(raw_id)
        return True

    # -- stopping --------------------------------------------------------------------------
    def stop(self, timeout: float) -> None:
        """Stop the thread (waking a blocked read), give the lease back."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        link = self._link
        try:
            link.cmd.xadd(self._wake_key, {"stop": "1"}, maxlen=1)
        except Exception:  # unreachable or an error reply: the read times out anyway
            pass  # (within MAX_BLOCK_MS + fleet_timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            link.cmd.delete(self._wake_key)
        except Exception:  # best effort: see docs/fleet.md on wake keys
            pass

