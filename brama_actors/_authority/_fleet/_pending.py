"""Quiet successes of circuits with a rate window: kept here, sent to Redis in batches.

A healthy success costs no round trip on a fleet (API.md section 16), but a rate
window needs the successes. So a system keeps the fast successes of a windowed
circuit here (a count, and per bucket for a time window) while its replica shows the
circuit closed with no failures and the success cannot trip a rate rule; they reach
Redis as one *batch*:

* with this system's next step on that circuit (a failure carries the successes
  before it, as do a loud success, manual control and ``configure``), folded in before
  the step is decided;
* or by the flusher thread, ``FLUSH_MS`` after the batch began, or as soon as it holds
  ``bound()`` successes (a ``flush`` step; it can trip a rate rule itself).

A success that could open the circuit is never kept: a slow one (a slow-call rule
reads it), and one that trips a rate rule on this system's view of the window (the
replica's, with the batches added). It goes to Redis at once with the batch before it.

This system's steps on a windowed circuit take the circuit's send lock, so at most one
batch of it is in flight and a failure never overtakes the successes before it: with
one system, the window in Redis is exactly the local one at every decision. What
``status()`` shows merges the batches in (``overlay``); a batch counts until the
replica holds a state that folded it in, never twice: the reply and the stream entry
that carry it (``q``, the batch's name) are applied under this module's lock.

A batch recorded in another window epoch than the one Redis has (the window was
cleared since: an opening, a reset, a new kind or size) adds to the totals only. A
batch whose round trip failed is dropped (it may have been applied: never twice).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from brama_actors import _rules as rules
from brama_actors._authority._fleet._codec import WindowedStatus
from brama_actors._errors import NodeUnavailable
from brama_actors._keys import Key
from brama_actors._runtime import _nowait
from brama_actors._status import CircuitState, ConnectionStatus, evolve
from brama_actors._window import BUCKETS, TimeWindow, Window, window_for

if TYPE_CHECKING:
    from brama_actors._authority._fleet._authority import FleetAuthority
    from brama_actors._authority._fleet._replica import Entry

__all__ = ["FLUSH_MS", "Pending", "bound"]

logger = logging.getLogger("brama_actors")

#: The longest a quiet success waits before its batch is sent (ms).
FLUSH_MS = 100
#: A time window's batch is sent once it holds this many successes.
TIME_BOUND = 1000


def bound(status: ConnectionStatus) -> int:
    """Successes a batch may hold before it is sent: a tenth of a count window (at
    least 10), so the window in Redis misses at most that many per system."""
    if status.window_type == "time":
        return TIME_BOUND
    return max(10, status.window_size // 10)


class Batch:
    """Quiet successes of one circuit not in Redis yet (one window epoch)."""

    __slots__ = ("buckets", "count", "epoch", "last", "name", "started", "window")

    def __init__(self, name: str, epoch: int, started: float) -> None:
        self.name = name
        self.epoch = epoch
        self.started = started  # monotonic s: the flusher sends it FLUSH_MS later
        self.count = 0  # successes (all go to the totals)
        self.last = 0  # the latest one's time, epoch ms
        self.window = 0  # of them, those a count window records (this epoch's)
        self.buckets: dict[int, int] = {}  # a time window's: bucket index -> successes

    def add(self, epoch: int, now: int, width: int) -> None:
        """One fast success at ``now`` in window epoch ``epoch`` (``width``: a time
        window's bucket width, 0 for a count window)."""
        if epoch != self.epoch:  # the window was cleared: earlier ones count no more
            self.epoch, self.window, self.buckets = epoch, 0, {}
        self.count += 1
        self.last = max(self.last, now)
        if width:
            index = now // width
            self.buckets[index] = self.buckets.get(index, 0) + 1
        else:
            self.window += 1

    def wire(self) -> dict[str, Any]:
        """The batch as the script's ``args.q``."""
        flat = [x for item in sorted(self.buckets.items()) for x in item]
        return {"id": self.name, "n": self.count, "l": self.last, "e": self.epoch,
                "w": self.window, "b": flat}


class _Slot:
    """One circuit's batches: the one filling, the one in flight, and the send lock;
    ``lost``, the last batch whose round trip failed (never sent again, but a local
    window, decided here while Redis is unreachable, counts it); ``users``, the steps
    holding or waiting for ``send`` (under ``Pending.lock``): a slot is dropped only
    when none is left, else a waiting step would send on a slot nobody else sees, next
    to a new slot's step (two of one circuit in flight)."""

    __slots__ = ("flight", "lost", "open", "send", "users")

    def __init__(self) -> None:
        self.open: Batch | None = None
        self.flight: Batch | None = None
        self.lost: Batch | None = None
        self.send = threading.Lock()
        self.users = 0


def _width(status: ConnectionStatus) -> int:
    return -(-status.window_size // BUCKETS) if status.window_type == "time" else 0


class _Facts:
    """What a quiet success of a windowed circuit needs from its status, worked out
    once per replica entry (``Entry.batching``) rather than per success under the
    shared lock: whether the window holds a failed or slow outcome (only then can a
    fast success trip a rate rule), a time window's bucket width, the batch bound."""

    __slots__ = ("bound", "clean", "epoch", "width")

    def __init__(self, status: WindowedStatus) -> None:
        window = status.window
        self.clean = not (window.failures or window.slow
                          or any(f or s for _, _, f, s in window.buckets))
        self.width = _width(status)
        self.bound = bound(status)
        self.epoch = window.epoch


def figures(status: WindowedStatus, batches: list[Batch], now: int,
            extra: int = 0) -> tuple[int, int, int]:
    """(calls, failures, slow) of the window at ``now`` with ``batches`` folded in (those
    of its epoch) and ``extra`` more fast successes at ``now``."""
    window = status.window
    batches = [b for b in batches if b.epoch == window.epoch]
    size = status.window_size
    if status.window_type == "time":
        width = _width(status)
        cutoff = now - size
        calls = failures = slow = 0
        for index, c, f, s in window.buckets:
            if index * width > cutoff:
                calls, failures, slow = calls + c, failures + f, slow + s
        for batch in batches:
            calls += sum(n for index, n in batch.buckets.items() if index * width > cutoff)
        return calls + extra, failures, slow
    outcomes = window.outcomes
    added = sum(b.window for b in batches) + extra
    over = len(outcomes) + added - size
    failures, slow = window.failures, window.slow
    if over > 0:
        gone = outcomes[:over]
        failures -= gone.count("1") + gone.count("3")
        slow -= gone.count("2") + gone.count("3")
    return min(size, len(outcomes) + added), failures, slow


def trips(status: ConnectionStatus, calls: int, failures: int, slow: int) -> bool:
    """True if these figures trip a rate rule of ``status`` (``rules.rate_trip``)."""
    return rules.rate_trip(status, calls, failures, slow) is not None


class Pending:
    """This system's batches of quiet successes, and the thread that sends them.

    Args:
        authority: the fleet authority (its replica, link, ``_run``, ``_note``).
    """

    def __init__(self, authority: FleetAuthority) -> None:
        self._authority = authority
        #: The clock batches age on (s). Test seam: tests set it to hold batches back.
        self._monotonic: Callable[[], float] = time.monotonic
        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)
        self.slots: dict[Key, _Slot] = {}
        #: The windows this system decides with while Redis is unreachable ("local").
        self.local: dict[Key, Window] = {}
        self._me = uuid.uuid4().hex[:8]
        self._seq = 0
        self._stopped = False
        #: Batches the flusher sent (a test seam: ``wait_flushes``).
        self.flushes = 0
        self._sent = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"brama-fleet-flush-{authority.context.name}")

    def start(self) -> None:
        """Start the flusher."""
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop the flusher (batches not sent by then stay counted here only); False if
        it did not end within ``timeout`` s (a flush still in its round trip)."""
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    # -- the caller's side ---------------------------------------------------------------
    def quiet(self, key: Key, entry: Entry, duration: float | None, now: int) -> bool:
        """Keep a fast success of a windowed circuit here if it cannot open it; False:
        it must go to Redis now (slow, or it trips a rate rule on this view)."""
        status = entry.status
        assert isinstance(status, WindowedStatus)
        slow = status.slow_call_duration
        if duration is not None and slow is not None and duration >= slow:
            return False
        facts: _Facts | None = entry.batching
        if facts is None:  # once per entry (per state of the circuit), not per success
            facts = entry.batching = _Facts(status)
        epoch = facts.epoch
        with self.lock:
            slot = self.slots.get(key)
            if slot is None:
                slot = self.slots[key] = _Slot()
            if not facts.clean:
                # Only then can a fast success trip a rate rule (else both rates are 0).
                batches = [b for b in (slot.flight, slot.open) if b is not None]
                if trips(status, *figures(status, batches, now, 1)):
                    return False
            batch = slot.open
            if batch is None:
                self._seq += 1
                batch = slot.open = Batch(f"{self._me}:{self._seq}", epoch,
                                          self._monotonic())
                self._wake.notify()  # the flusher's next deadline moved
            batch.add(epoch, now, facts.width)
            if batch.count >= facts.bound:
                batch.started = float("-inf")  # due now
                self._wake.notify()
        return True

    def run(self, key: Key, op: str, args: dict[str, Any], extra: dict[str, Any],
            explicit: Mapping[str, Any] | None = None) -> Any:
        """Run one step of ``key``, carrying its batch (windowed circuits only);
        ``explicit``: the circuit's explicit options after it (``configure``).

        A step waits for the one in flight on the same circuit at most until
        ``fleet_timeout`` after it began, and is not sent if the link went down
        meanwhile (the step before it found Redis unreachable): so concurrent steps of
        one circuit do not each wait a full ``fleet_timeout`` in turn on a dead Redis;
        the caller decides them here (``"local"``) as any call while unreachable. Its
        round trip gets what is left of that ``fleet_timeout``: the wait and the round
        trip together never take longer.

        Raises:
            NodeUnavailable: Redis did not answer (the batch is dropped), the step in
                flight did not end in time, or the link is down (the batch is kept).
        """
        authority = self._authority
        entry = authority.replica.entries.get(key)
        if key not in self.slots and (entry is None
                                      or type(entry.status) is not WindowedStatus):
            return authority._run(op, key, args, **extra)
        _nowait.check()  # before taking anything: the caller may retry in a thread
        timeout = authority.options.timeout / 1000
        deadline = time.monotonic() + timeout
        link = authority.link
        if op == "flush" and (self._stopped or not link.connected):
            return None  # kept until Redis answers again (or never: stopped)
        with self.lock:
            slot = self.slots.get(key)
            if slot is None:
                slot = self.slots[key] = _Slot()
            slot.users += 1
        try:
            if not slot.send.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise NodeUnavailable(
                    f"the fleet's Redis did not answer this circuit's step in flight "
                    f"within {authority.options.timeout} ms")
            try:
                if not link.connected:
                    raise NodeUnavailable("the fleet's Redis is unreachable (the step "
                                          "before this one on the circuit found it so)")
                return self._send(key, slot, op, args, extra, explicit, deadline)
            finally:
                slot.send.release()
        finally:
            with self.lock:
                slot.users -= 1
                if (not slot.users and slot.open is None and slot.flight is None
                        and slot.lost is None and self.slots.get(key) is slot):
                    del self.slots[key]  # left empty by a step that gave up waiting

    def _send(self, key: Key, slot: _Slot, op: str, args: dict[str, Any],
              extra: dict[str, Any], explicit: Mapping[str, Any] | None,
              deadline: float) -> Any:
        """``run``'s round trip, under the circuit's send lock, by ``deadline``."""
        authority = self._authority
        with self.lock:
            batch, slot.open = slot.open, None
            slot.flight = batch
            if batch is None and op == "flush":  # a step took it meanwhile
                if self.slots.get(key) is slot and slot.open is None and slot.users == 1:
                    del self.slots[key]
                return None
        if batch is not None:
            args = {**args, "q": batch.wire()}
        try:
            reply = authority._run(op, key, args, deadline=deadline, **extra)
        except BaseException:
            with self.lock:
                slot.flight = None
                slot.lost = batch
            raise
        with self.lock:
            if batch is not None and reply[0] != "missing":
                authority._note(key, reply, explicit)  # the batch gone: counted once
            slot.flight = None
            if slot.open is None and slot.users == 1 and self.slots.get(key) is slot:
                del self.slots[key]  # no other step waits for it
        return reply

    def local_window(self, key: Key, entry: Entry, now: int) -> Window | None:
        """The window to decide with here while Redis is unreachable: the fleet's last
        window with this system's batches, then what this system records into it, until
        a snapshot replaces the replica (``drop_local``)."""
        if not entry.settings.windowed:
            return None
        with self.lock:
            old = self.local.get(key)
            window = window_for(entry.settings, old)
            if window is not None and old is None:
                status = entry.status
                slot = self.slots.get(key)
                batches = [] if slot is None else [
                    b for b in (slot.lost, slot.flight, slot.open) if b is not None]
                if isinstance(status, WindowedStatus):
                    _seed(window, status, batches, now)
            if window is not None:
                self.local[key] = window
            return window

    def drop_local(self) -> None:
        """The fleet's state is back (a snapshot): forget the local windows."""
        with self.lock:
            self.local.clear()
            for slot in self.slots.values():
                slot.lost = None

    def drop_all(self) -> None:
        """Redis lost its data (``_tail``: a new incarnation, versions gone back): every
        batch was made against circuits whose state starts over; none is sent."""
        with self.lock:
            self.slots.clear()

    def forget(self, key: Key) -> None:
        """The circuit was removed: its batches will not count in a later registration."""
        with self.lock:
            self.slots.pop(key, None)

    def activity(self) -> dict[Key, int]:
        """The latest quiet success per circuit in batches not in Redis yet (epoch
        ms): activity for the inactive cleanup's reports (``_sweep``)."""
        with self.lock:
            return {key: max(b.last for b in batches)
                    for key, slot in self.slots.items()
                    if (batches := [b for b in (slot.flight, slot.open) if b is not None])}

    def landed(self, name: str, apply: Callable[[], Any]) -> Any:
        """Apply a stream entry that folded batch ``name`` in: if it is this system's
        batch in flight, it stops counting here in the same step."""
        if not name.startswith(self._me + ":"):
            return apply()
        with self.lock:
            result = apply()
            for slot in self.slots.values():
                if slot.flight is not None and slot.flight.name == name:
                    slot.flight = None
            return result

    def overlay(self, key: Key, entry: Entry) -> ConnectionStatus:
        """The status ``status()`` shows: the replica's with this system's batches and
        the window's figures as of now (a plain ``ConnectionStatus``)."""
        if type(entry.status) is not WindowedStatus and key not in self.slots:
            return entry.status  # no window, no batch: nothing to add, no lock
        with self.lock:
            entry = self._authority.replica.entries.get(key) or entry
            status = entry.status
            slot = self.slots.get(key)
            batches = [] if slot is None else [
                b for b in (slot.flight, slot.open) if b is not None]
        if not isinstance(status, WindowedStatus):
            if not batches:
                return status
            return _with_totals(status, batches)
        now = self._authority.now()
        window = batches if status.state is CircuitState.CLOSED else []
        status = evolve(status, **rules.figures_fields(
            status.minimum_calls, *figures(status, window, now)))
        return _with_totals(status, batches) if batches else status

    # -- the flusher ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopped:
                    return
                due, wait = self._due()
                if not due:
                    self._wake.wait(wait)
                    continue
            if not self._authority.link.connected:
                with self._wake:  # kept until Redis answers again
                    self._wake.wait(FLUSH_MS / 1000)
                continue
            for key in due:
                # Stopped, or the link went down (a flush timed out): not one more
                # round trip. After stop() none may reopen a connection close() closed.
                if self._stopped or not self._authority.link.connected:
                    break
                try:
                    self.run(key, "flush", {}, {})
                except Exception:  # the link reported an unreachable Redis already
                    logger.debug("sending a batch of quiet successes failed", exc_info=True)
                with self._sent:
                    self.flushes += 1
                    self._sent.notify_all()

    def wait_flushes(self, count: int, timeout: float) -> bool:
        """Test seam: wait until the flusher sent ``count`` batches in all; False if it
        did not within ``timeout`` s."""
        with self._sent:
            return self._sent.wait_for(lambda: self.flushes >= count, timeout)

    def _due(self) -> tuple[list[Key], float | None]:
        """Keys whose batch is due now, and how long until the next one is (under lock)."""
        now = self._monotonic()
        due: list[Key] = []
        wait: float | None = None
        for key, slot in self.slots.items():
            batch = slot.open
            if batch is None:
                continue
            left = batch.started + FLUSH_MS / 1000 - now
            if left <= 0:
                due.append(key)
            elif wait is None or left < wait:
                wait = left
        return due, wait


def _seed(window: Window, status: WindowedStatus, batches: list[Batch], now: int) -> None:
    """Fill a local window with the fleet's window and this system's batches."""
    fleet = status.window
    batches = [b for b in batches if b.epoch == fleet.epoch]
    if isinstance(window, TimeWindow):
        window.buckets = fleet.buckets  # the same (index, calls, failures, slow)
        for batch in batches:
            for index, count in sorted(batch.buckets.items()):
                window.add_successes(count, index * window.width)
        return
    for code in fleet.outcomes:
        window.record(int(code), now)
    window.add_successes(sum(b.window for b in batches), now)


def _with_totals(status: ConnectionStatus, batches: list[Batch]) -> ConnectionStatus:
    return evolve(status, total_successes=status.total_successes + sum(
        b.count for b in batches), last_success_time=max(
        [status.last_success_time or 0, *(b.last for b in batches)]))
