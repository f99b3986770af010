"""The stream tail: one thread per system that keeps the replica current and delivers
the fleet's events.

Every entry of the stream is one step applied in Redis. The tail applies its post-state
to the replica and hands its events to this system's delivery, in the stream's order,
exactly once: it is the only reader, and it moves its position past an entry only after
handing it over. Entries are numbered (``ver``): a gap (a reconnect, entries trimmed
before this system read them, or a Redis that restarted empty) makes it load a snapshot,
and so does a ``ver`` that goes back (Redis lost its ``meta`` hash or, in a failover,
writes). Before the snapshot's pages it catches up from the stream: the entries after
the last one it handed over, up to the snapshot's head, are applied and delivered as a
read would have; those no longer there (trimmed, or a data set Redis lost), or all of
them when Redis refuses the read (an ACL without ``+xrange``), are counted and reported
(telemetry ``("brama", "fleet", "gap")``, a WARNING), never invented.

The snapshot is paged, so no call outlasts ``fleet_timeout`` whatever the number of
circuits: one short script reads the stream position and the fleet's ``ver`` together,
then each page of circuits is a script of its own (``SSCAN`` over the circuit index).
Steps applied while the pages are read come after that position, so the tail replays
them; the replica's ver floors keep a page from rolling back what a reply applied.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

import redis

from brama_actors import _rules as rules
from brama_actors._authority._fleet._codec import (
    decode_events,
    decode_status,
    load_metadata,
    member_key,
)
from brama_actors._authority._fleet._link import (
    CLUSTER,
    MAX_BLOCK_MS,
    TRANSIENT,
    Link,
    Unreachable,
    refusal,
)
from brama_actors._authority._fleet._ticker import Ticker
from brama_actors._delivery import _telemetry
from brama_actors._errors import NodeUnavailable
from brama_actors._keys import Key
from brama_actors._status import ConnectionStatus

if TYPE_CHECKING:
    from brama_actors._authority._fleet._authority import FleetAuthority

__all__ = ["Tail", "stream_id"]

logger = logging.getLogger("brama_actors")

#: How often an unreachable link is probed (ms).
PROBE_MS = 100
#: Circuits per snapshot page (``SSCAN COUNT``): a page takes a few ms in Redis.
PAGE = 500
#: How long a system's wake stream outlives a stop that could not delete it (ms).
WAKE_TTL_MS = 60_000


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
        self._went_back = False  # an entry's ver went back: Redis lost writes
        self._incarnation = ""  # the Redis data set the replica was loaded from
        self._synced = False
        self._refusal_logged = False  # a catch-up's refusal was logged at ERROR
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
                    link.follow()  # a cluster's slot may have moved meanwhile
                    self._resync()
                    link.set_connected(True)
                    if self._owner.offline.owed:  # a register whose create failed
                        self._owner.offline.settle()  # between the two: rare
                    self.synced_once.set()
                self._read()
            except Unreachable as exc:
                self._down(exc)
            except NodeUnavailable as exc:
                self._down(exc)
            except redis.ResponseError as exc:  # the read's error reply (e.g. LOADING)
                self._down(link.refused(exc))
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
        """Load a snapshot, page by page, and continue from the stream position its
        head was read at; then create in Redis what this system owes the fleet."""
        owner = self._owner
        link = self._link
        keys = [link.ticker, link.stream, link.meta, link.deadlines, link.ticker, link.index]
        owner.replica.begin_snapshot()
        head = link.run("snapshot", "", {"inc": uuid.uuid4().hex}, now=owner.fixed_now_ms(),
                        keys=keys)
        now, ver, last, incarnation = int(head[0]), int(head[1]), str(head[2]), str(head[3])
        self._ticker.learn_now(now)
        self._catch_up(ver, last, incarnation)
        circuits = []
        cursor = "0"
        while True:
            page = link.run("page", "", {"prefix": link.prefix, "cursor": cursor,
                                         "count": PAGE}, now=owner.fixed_now_ms(), keys=keys)
            cursor, flat = str(page[0]), page[1]
            for i in range(0, len(flat), 6):
                name, raw, meta, explicit, gen, cver = flat[i:i + 6]
                status = decode_status(raw, load_metadata(meta))
                circuits.append((member_key(name), status, json.loads(explicit or "{}"),
                                 int(gen), int(cver or 0)))
            if cursor == "0":
                break
        self._load(ver, circuits, incarnation, self._went_back or ver < self._ver)
        self._went_back = False
        self._ver = ver
        for _, status, _, _, _ in circuits:
            self._ticker.consider(rules.deadline(status))
        self._synced = True
        self._advance(last)
        owner.offline.settle()

    def _catch_up(self, ver: int, last: str, incarnation: str) -> None:
        """Before a snapshot's pages: deliver the entries this system missed (a
        reconnect, a read that fell behind) from the stream itself, up to the head the
        snapshot was read at (``ver``, ``last``), as :meth:`_read` would have.

        From the last entry handed over (exclusive), so nothing is delivered twice; each
        entry's ``ver`` must continue the sequence. The entries the stream no longer
        has (trimmed past them), or all of them when Redis lost its data, cannot be
        delivered: that is said, not silent (telemetry ``("brama", "fleet", "gap")``
        and a WARNING); the snapshot's pages then bring the state.
        """
        if not self._incarnation:  # the first snapshot: nothing was delivered before
            return
        lost = self._went_back or ver < self._ver or incarnation != self._incarnation
        refused = False
        if not lost:
            try:
                self._read_back(ver, last)
            except redis.ResponseError as exc:
                if refusal(exc) in TRANSIENT | CLUSTER:
                    # Not now (or not here: the slot moved, the link follows it): handled
                    # as an unreachable Redis, resynced later.
                    raise
                self._refused(exc)
                refused = True
            lost = self._went_back
        # Lost: the entries of Redis's new history, at most (some may be copies, after a
        # failover, of entries delivered here); none yet is no loss to report.
        missed = ver if lost else ver - self._ver
        if missed <= 0:
            return
        reason = "lost" if lost else "refused" if refused else "trimmed"
        logger.warning("fleet stream gap: %d entries (%s) not delivered on this system; "
                       "loading a snapshot", missed, reason)
        self._owner.delivery.fire(("brama", "fleet", "gap"), {"missed": missed},
                                  {"namespace": self._owner.options.namespace,
                                   "reason": reason})

    def _read_back(self, ver: int, last: str) -> None:
        """The catch-up's reads: the entries after the last one handed over, up to
        ``last``, applied and delivered while they continue the ``ver`` sequence."""
        start = self._last_id
        while self._ver < ver:
            entries: Any = self._link.tail.xrange(self._link.stream, "(" + start, last,
                                                  count=PAGE)
            if not entries or int(entries[0][1]["v"]) != self._ver + 1:
                return  # trimmed past the next entry
            for raw_id, fields in entries:
                if not self._entry(raw_id, fields):
                    return
            start = entries[-1][0]
            if start != self._last_id:  # an entry that did not continue the sequence
                return

    def _refused(self, exc: redis.ResponseError) -> None:
        """The catch-up's XRANGE got an error reply that will not pass by itself (a
        user set up from an older minimal ACL, without ``+xrange``): the snapshot still
        brings the state, so the system reconnects instead of retrying forever; the
        missed entries count as a gap. Said at ERROR once per system, since every
        later catch-up meets the same refusal."""
        level = logging.DEBUG if self._refusal_logged else logging.ERROR
        self._refusal_logged = True
        needs = " (the fleet's ACL user needs +xrange: docs/fleet.md, \"Keys and a " \
            "minimal ACL\")" if isinstance(exc, redis.exceptions.NoPermissionError) else ""
        logger.log(level, "the fleet's Redis refused the catch-up's XRANGE: %s%s; the "
                   "entries this system missed are not delivered here, a snapshot brings "
                   "the state", exc, needs)

    def _load(self, ver: int, circuits: list[Any], incarnation: str, lost: bool) -> None:
        """Replace the replica by a snapshot: the fleet's state wins over local changes.

        ``lost``: versions went back (Redis lost writes); a new ``incarnation`` (Redis
        lost its data) counts too. Either way the circuits registered here that the
        snapshot lacks are owed to the fleet (created again by ``offline.settle``), and
        the batches of quiet successes not sent yet are dropped (``_pending``).
        """
        owner = self._owner
        lost = lost or (bool(self._incarnation) and incarnation != self._incarnation)
        self._incarnation = incarnation
        keep = owner.offline.keep({key for key, *_ in circuits}, lost)
        owner.pending.drop_local()  # the windows decided with while unreachable
        if lost:  # and batches of quiet successes made against the lost state
            owner.pending.drop_all()
        for key in owner.replica.load(ver, circuits, keep):
            owner.mine.discard(key)

    def _apply(self, key: Key, fields: dict[str, str], ver: int) -> ConnectionStatus | None:
        """Apply one entry's post-state to the replica; the status (None: removed)."""
        owner = self._owner
        replica = owner.replica
        raw = fields["s"]
        if not raw:
            if key in owner.offline.owed:
                # Registered here while Redis was unreachable, after this removal of an
                # earlier circuit of that name: kept, and created in Redis by settle.
                replica.raise_floor(key, ver)
                return None
            if replica.apply(key, None, 0, ver):
                owner.mine.discard(key)
                owner.pending.forget(key)
            return None
        fresh = "cm" in fields
        if fresh:
            metadata = load_metadata(fields["cm"])
        else:
            entry = replica.entries.get(key)
            if ver <= replica.floor.get(key, 0) and "x" not in fields:
                # This system's own reply applied it already (the usual case for its
                # own steps): skip decoding it again on the caller's cores. Only a
                # registration's events need the entry's own status, and only entries
                # with options (register, configure) can still complete the replica.
                # A batch it folded in is in the replica's state: it counts no more.
                if "q" in fields:
                    owner.pending.landed(fields["q"], lambda: None)
                return None if entry is None else entry.status
            metadata = entry.status.metadata if entry is not None else load_metadata(None)
        status = decode_status(raw, metadata)
        explicit = json.loads(fields["x"]) if "x" in fields else None
        if "q" in fields:  # it folded a batch in: maybe this system's, in flight
            owner.pending.landed(fields["q"], lambda: replica.apply(
                key, status, int(fields["g"]), ver, explicit, fresh))
        else:
            replica.apply(key, status, int(fields["g"]), ver, explicit, fresh)
        return status

    def _deliver(self, raw_id: str, fields: dict[str, str], key: Key,
                 status: ConnectionStatus | None) -> None:
        """Hand one entry's events to this system's delivery."""
        delivery = self._owner.delivery
        interest = delivery.interest

        def wanted(kind: Any, identifier: str, scope: str | None) -> bool:
            return bool(_telemetry.HANDLERS) or interest.wants(kind, identifier, scope)

        events = decode_events(raw_id, fields, key, status, wanted)
        if events:
            delivery.publish(events)

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
            # Entries after the snapshot's position always have a greater ver: one that
            # does not is from a Redis that lost its meta hash or (failover) writes.
            self._went_back = ver <= self._ver
            if self._went_back:
                logger.warning("fleet stream went back (entry %d after %d); loading a "
                               "snapshot", ver, self._ver)
            else:  # the catch-up says how many, if any, cannot be delivered
                logger.info("fleet stream gap (entry %d after %d); catching up", ver,
                            self._ver)
            self._synced = False
            return False
        self._ver = ver
        key: Key = member_key(fields["k"])
        status = self._apply(key, fields, ver)
        if status is not None:
            self._ticker.consider(rules.deadline(status))
        self._deliver(raw_id, fields, key, status)
        self._advance(raw_id)
        return True

    # -- stopping --------------------------------------------------------------------------
    def stop(self, timeout: float) -> None:
        """Stop the thread (waking a blocked read), give the lease back."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        link = self._link
        try:  # with a TTL, in the same round trip: the delete below may not happen
            pipe = link.cmd.pipeline(transaction=False)
            pipe.xadd(self._wake_key, {"stop": "1"}, maxlen=1)
            pipe.pexpire(self._wake_key, WAKE_TTL_MS)
            pipe.execute()
        except Exception:  # unreachable or an error reply: the read times out anyway
            pass  # (within MAX_BLOCK_MS + fleet_timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            link.cmd.delete(self._wake_key)
        except Exception:  # best effort: see docs/fleet.md on wake keys
            pass

