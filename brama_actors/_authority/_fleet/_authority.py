"""The fleet authority: every circuit decided in Redis, shared by every system of a fleet.

Writes run one atomic script step in Redis (``_lua``) and apply its reply to the replica
before returning (read-your-writes); reads (``available()``, ``status()``, the guard's
fast path) answer from the replica (``_replica``), which the stream tail (``_tail``)
keeps current and from which it delivers the fleet's events.

Round trips: none for reads and for a success on a closed circuit with no failures
(counted and delivered here only; with a rate window, sent later in batches by
``_pending``, unless it could open the circuit); one for ``failure()``, manual control
and other successes; two for a guarded half_open call (acquire a permit, then its
outcome).

When Redis does not answer (``fleet_timeout``) or refuses (an error reply, ``_link``),
``when_unreachable="local"`` keeps protecting callers with this system's own rules from
the last fleet state, registrations included (``_offline``), until the tail reconnects
and loads a snapshot: the fleet's state wins and local history is not replayed.
``"hold"`` keeps the last fleet state, and ``available()`` follows
``stale_after``/``when_stale``.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pykka import ActorRef

from brama_actors import _rules as rules
from brama_actors._authority import ALL_SCOPES, Admission, InProcess, Registration
from brama_actors._authority._fleet._codec import (
    WindowedStatus,
    decode_status,
    dump_json,
    encode_status,
    load_metadata,
    member,
    reason_args,
    settings_args,
)
from brama_actors._authority._fleet._link import Link
from brama_actors._authority._fleet._offline import Offline
from brama_actors._authority._fleet._options import FleetOptions
from brama_actors._authority._fleet._pending import Pending
from brama_actors._authority._fleet._replica import Replica
from brama_actors._authority._fleet._sweep import Sweeper
from brama_actors._authority._fleet._tail import Tail, stream_id
from brama_actors._authority._fleet._ticker import Ticker
from brama_actors._authority._fleet._unreachable import (
    LOCAL_OPS,
    HoldViews,
    StoppedViews,
    Verdict,
)
from brama_actors._config import CONNECTION_OPTIONS, Settings, check_global, resolve_settings
from brama_actors._delivery._hub import Delivery
from brama_actors._errors import (
    AlreadyRegistered,
    CircuitOpenError,
    NodeUnavailable,
)
from brama_actors._events import EventType
from brama_actors._keys import Key, describe_key, not_found, split_key
from brama_actors._runtime import _nowait
from brama_actors._runtime._context import Context
from brama_actors._status import CircuitState, ConnectionStatus

__all__ = ["DEFAULT_LEASE_MS", "FleetAuthority"]

logger = logging.getLogger("brama_actors")

_HALF_OPEN = CircuitState.HALF_OPEN
_CLOSED = CircuitState.CLOSED
#: The script's op for each manual control.
_CONTROL_OPS: dict[type, str] = {rules.Open: "open", rules.Close: "close", rules.Reset: "reset"}
#: A trial permit's lease when the circuit has no ``half_open_timeout`` (ms).
DEFAULT_LEASE_MS = 30_000


#: A circuit's name in Redis, cached: it is on every step's path.
_member = functools.lru_cache(maxsize=65_536)(member)


class FleetAuthority(InProcess):
    """Circuits decided in Redis, read from this system's replica.

    Args:
        context: the system's runtime (its clock is a ``SystemClock``).
        delivery: the system's event hub.
        supervisor: the system's supervisor (``sync_supervisor``).
        explicit: the system's explicit options (``configure()`` changes them).
        options: the checked fleet options.
    """

    def __init__(self, context: Context, delivery: Delivery, supervisor: ActorRef[Any],
                 explicit: dict[str, Any], options: FleetOptions) -> None:
        self.context = context
        self.delivery = delivery
        self._supervisor = supervisor
        self._explicit = explicit
        self.options = options
        self.replica = Replica()
        #: The Authority protocol's views: the replica's entries (or a hold stand-in).
        self.views: Mapping[Key, Any] = self.replica.entries
        #: Test seam: a fixed "now" (epoch ms) every script uses instead of TIME.
        self.fixed_now: Callable[[], int] | None = None
        #: Test seam: the clock ``stale_after`` is measured on ("hold" mode).
        self.monotonic: Callable[[], float] = time.monotonic
        #: Keys registered through this system (re-created by it if Redis loses them).
        self.mine: set[Key] = set()
        self.offline = Offline(self)
        self._lock = threading.Lock()
        self._written = (0, 0)  # the newest stream entry this system's calls appended
        self._was_down = False  # "unreachable" was fired and no "restored" since
        self.link = Link(options, self._link_changed, context.clock.now)
        #: Inactive cleanup: activity reports, the holder's sweep (``_sweep``).
        self.sweeper = Sweeper(self, self.link)
        self.ticker = Ticker(self, self.link, context.name)
        self.tail = Tail(self, self.link, self.ticker, context.name)
        #: Quiet successes of windowed circuits, sent in batches (``_pending``).
        self.pending = Pending(self)
        self.replica.overlay = self.pending.overlay
        self.tail.start()
        self.pending.start()
        # A Redis that cannot be reached at start is not an error: wait a bounded time.
        self.tail.synced_once.wait(2 * options.timeout / 1000 + 0.5)
        # After the tail's first connect, which finds a cluster's node for the namespace:
        # a lease sent to another node would be refused (MOVED) and mark the link down.
        self.ticker.start()

    # -- time and the link --------------------------------------------------------------
    def fixed_now_ms(self) -> int | None:
        """The test seam's now, or None (scripts read TIME)."""
        fixed = self.fixed_now
        return None if fixed is None else fixed()

    def now(self) -> int:
        """The fleet's time as best known here (ms since the epoch)."""
        fixed = self.fixed_now
        return fixed() if fixed is not None else self.ticker.server_now()

    def _link_changed(self, up: bool) -> None:
        if not up:  # before the caller that saw it down can register a circuit here
            self.offline.link_down()
        if self.context.stopping:
            return
        name = "restored" if up else "unreachable"
        if not up:
            # A caller's call timed out: the tail's read may not have (a short pause);
            # it must load a snapshot before the link counts as up again.
            self.tail.invalidate()
        if up:
            self.views = self.replica.entries
            if not self._was_down:
                return  # connected at start: nothing was restored
        elif self.options.when_unreachable == "hold":
            verdict = Verdict(self.options.when_stale == "allow")
            self.views = HoldViews(self.replica.entries,
                                    self.monotonic() + self.options.stale_after / 1000,
                                    verdict, self.monotonic)
        self._was_down = not up
        self.delivery.fire(("brama", "fleet", name), {"since": self.link.since},
                           {"namespace": self.options.namespace})

    @property
    def connected(self) -> bool:
        """True while Redis answers and the replica is in sync."""
        return self.link.connected

    def _local_mode(self) -> bool:
        """True when calls must be decided here (Redis unreachable, mode ``"local"``)."""
        if self.link.connected:
            return False
        if self.options.when_unreachable != "local":
            raise NodeUnavailable(f"the fleet's Redis (namespace {self.options.namespace!r})"
                                  " is unreachable")
        return True

    def _run(self, op: str, key: Key, args: dict[str, Any], **extra: Any) -> Any:
        _nowait.check()
        return self.link.run(op, _member(key), args, now=self.fixed_now_ms(), **extra)

    def _note(self, key: Key, reply: Any, explicit: Mapping[str, Any] | None = None,
              fresh: bool = False) -> ConnectionStatus | None:
        """Apply a step's reply to the replica; the status it carries (None: gone)."""
        code, raw, ver, sid, gen = str(reply[0]), str(reply[1]), int(reply[2]), \
            str(reply[3]), int(reply[4])
        if sid:
            written = stream_id(sid)
            with self._lock:
                self._written = max(self._written, written)
        if code == "missing":
            return None
        entry = self.replica.entries.get(key)
        metadata = entry.status.metadata if entry is not None else load_metadata(None)
        status = decode_status(raw, metadata) if raw else None
        if status is not None and ver:
            self.replica.apply(key, status, gen, ver, explicit, fresh)
        return status

    # -- what the tail calls -------------------------------------------------------------
    def local_expiries(self) -> None:
        """While unreachable (local mode): expire the openings decided here."""
        if self.options.when_unreachable == "local":
            self.offline.expire_due()

    # -- connections ---------------------------------------------------------------------
    def register(self, key: Key, kind: str, options: Mapping[str, Any],
                 metadata: Mapping[str, Any] | None) -> ConnectionStatus:
        """Register in the fleet, or adopt the fleet's circuit (warning on differences).

        Redis unreachable, ``"local"`` mode: registered here from the options given and
        created in Redis when it answers again (``_offline``).

        Raises:
            AlreadyRegistered: registered through this system already.
            InvalidConfiguration: bad options.
            TypeError: metadata that is not JSON.
            NodeUnavailable: Redis unreachable, ``"hold"`` mode.
        """
        with self._lock:
            explicit = {k: v for k, v in self._explicit.items() if k in CONNECTION_OPTIONS}
        explicit.update(options)
        settings = resolve_settings(explicit)
        dump_json("metadata", dict(metadata or {}))
        dump_json("options", explicit)
        self._check_running()
        if key in self.mine and key in self.replica.entries:
            raise AlreadyRegistered(f"connection {describe_key(key)} is already registered")
        if not self._local_mode():
            try:
                return self.create(key, kind, explicit, metadata, settings)
            except NodeUnavailable:
                if self.options.when_unreachable != "local":
                    raise
        return self.offline.register(key, kind, explicit, settings, metadata)

    def create(self, key: Key, kind: str, explicit: Mapping[str, Any],
               metadata: Mapping[str, Any] | None,
               settings: Settings | None = None) -> ConnectionStatus:
        """Create the circuit in Redis, or adopt the fleet's; its status here.

        Raises:
            NodeUnavailable: Redis did not answer (or refused).
        """
        identifier, scope = split_key(key)
        settings = settings or resolve_settings(dict(explicit))
        raw_meta = dump_json("metadata", dict(metadata or {}))
        fresh = rules.initial_status(identifier, scope, kind, settings, metadata, 0)
        reply = self._run("register", key, {"status": encode_status(fresh, settings)},
                          cmeta=raw_meta, explicit=dump_json("options", explicit))
        if reply[0] == "exists":
            _, raw, ver, their_meta, their_explicit, gen = reply
            theirs = json.loads(their_explicit or "{}")
            status = decode_status(raw, load_metadata(their_meta))
            self.replica.apply(key, status, int(gen), int(ver), theirs)
            self.warn_if_different(key, theirs, status.type, settings, kind, explicit)
        else:
            self.replica.apply(key, decode_status(str(reply[1]), load_metadata(raw_meta)),
                               int(reply[4]), int(reply[2]), dict(explicit), fresh=True)
            with self._lock:
                self._written = max(self._written, stream_id(str(reply[3])))
        self.mine.add(key)
        current = self.replica.status(key)
        assert current is not None
        return current

    @staticmethod
    def warn_if_different(key: Key, theirs: Mapping[str, Any], their_kind: str,
                          settings: Settings, kind: str, ours: Mapping[str, Any]) -> None:
        """Log at WARNING when the fleet's circuit differs from what we registered."""
        if resolve_settings(dict(theirs)) != settings or their_kind != kind:
            logger.warning(
                "connection %s is already in the fleet with other settings; adopting "
                "the fleet's (type %r, %r) over ours (type %r, %r)", describe_key(key),
                their_kind, dict(theirs), kind, dict(ours))

    def unregister(self, key: Key) -> bool:
        self._check_running()
        if self._local_mode():
            raise NodeUnavailable("cannot unregister while the fleet's Redis is unreachable")
        reply = self._run("unregister", key, {})
        if reply[0] == "missing":
            self.replica.apply(key, None, 0, int(reply[2]))
            self.mine.discard(key)
            return False
        with self._lock:
            self._written = max(self._written, stream_id(str(reply[3])))
        self.replica.apply(key, None, 0, int(reply[2]))
        self.mine.discard(key)
        self.pending.forget(key)
        return True

    def available(self, key: Key) -> bool:
        view = self.views.get(key)
        return view is not None and bool(view.available)

    def report(self, key: Key, outcome: rules.Success | rules.Failure) -> None:
        if type(outcome) is rules.Success:
            self._success(key, outcome.metadata, None, outcome.duration)
            return
        assert type(outcome) is rules.Failure
        self._failure(key, outcome.reason, outcome.metadata, None, outcome.duration)

    def _failure(self, key: Key, reason: Any, metadata: Mapping[str, Any] | None,
                 trial: tuple[str, int] | None, duration: float | None = None) -> None:
        args: dict[str, Any] = {**reason_args(reason), "duration": duration}
        raw_meta = "" if metadata is None else dump_json("metadata", metadata)
        self._check_running()
        if self._local_mode():
            self.offline.apply(key, rules.Failure(reason, metadata, duration=duration))
            return
        if trial is not None:
            args.update(token=trial[0], trial=trial[1])
        self._step(key, "failure", args, opmeta=raw_meta)

    def _step(self, key: Key, op: str, args: dict[str, Any], **extra: Any) -> None:
        try:
            reply = self.pending.run(key, op, args, extra)  # with a batch, if windowed
        except NodeUnavailable:
            if self.options.when_unreachable != "local" or op not in LOCAL_OPS:
                raise
            raw_meta = extra.get("opmeta")
            self.offline.apply(key, LOCAL_OPS[op](args, load_metadata(raw_meta)
                                                  if raw_meta else None))
            return
        if reply[0] == "missing":
            self.replica.apply(key, None, 0, int(reply[2]))
            self.mine.discard(key)
            raise not_found(key)
        self._note(key, reply)

    def _success(self, key: Key, metadata: Mapping[str, Any] | None,
                 trial: tuple[str, int] | None = None, duration: float | None = None) -> None:
        raw_meta = "" if metadata is None else dump_json("metadata", metadata)
        self._check_running()
        entry = self.replica.entries.get(key)
        if trial is None and entry is not None and entry.quiet:
            if not entry.windowed:
                self._quiet_success(key, metadata, self.now(), True)
                return
            now = self.now()  # a rate window's: batched unless it could open it
            if (self.link.connected and type(entry.status) is WindowedStatus
                    and self.pending.quiet(key, entry, duration, now)):
                self._quiet_success(key, metadata, now, False)
                return
        if self._local_mode():  # with a rate window, every success is recorded here
            self.offline.apply(key, rules.Success(metadata, duration=duration))
            return
        args: dict[str, Any] = {"duration": duration}
        if trial is not None:
            args.update(token=trial[0], trial=trial[1])
        self._step(key, "success", args, opmeta=raw_meta)

    def _quiet_success(self, key: Key, metadata: Mapping[str, Any] | None, now: int,
                       count: bool) -> None:
        """A success that changes nothing in the fleet now: delivered here only, and
        counted here only (``count``) or in a batch sent later (``_pending``).

        Race (documented in docs/fleet.md): a failure elsewhere that this replica has
        not seen yet is not reset by it; the next success after the replica shows the
        failure is sent and resets it.
        """
        if count:
            self.replica.count_quiet(key, now)
        identifier, scope = split_key(key)
        if self.delivery.wants_success(identifier, scope):
            # After every fleet event this system's own calls caused, never before them.
            with self._lock:
                written = self._written
            data: dict[str, Any] = {"state": _CLOSED, "failure_count": 0}
            if self.link.connected:
                self.tail.wait_for(written, self.options.timeout / 1000)
            elif self.options.when_unreachable == "local":
                data["origin"] = "local"  # decided here, as every call meanwhile
            if metadata is not None:
                data["metadata"] = metadata
            self.delivery.emit(identifier, scope, [(EventType.SUCCESS, data)], now)

    def record_success(self, key: Key, view: Any, duration: float | None = None) -> None:
        self._success(key, None, None, duration)

    def control(self, key: Key, op: rules.Open | rules.Close | rules.Reset) -> None:
        args: dict[str, Any] = reason_args(op.reason)
        self._check_running()
        name = _CONTROL_OPS[type(op)]
        if self._local_mode():
            self.offline.apply(key, op)
            return
        if type(op) is rules.Open:
            args["expiry"] = op.expiry
        self._step(key, name, args)

    def configure(self, key: Key | None, options: Mapping[str, Any]) -> None:
        """New settings for one connection (fleet-wide), or this system's defaults."""
        if key is None:
            with self._lock:
                merged = {**self._explicit, **options}
                check_global(merged)
                self._explicit.clear()
                self._explicit.update(merged)
                self.context.config.update(options)
            if "cleanup_interval" in options or "inactive_threshold" in options:
                self.sweeper.arm(sweep="cleanup_interval" in options)
                self.ticker.wake()
            if "log_transitions" in options:
                self.delivery.log_transitions(options["log_transitions"])
            return
        entry = self.replica.entries.get(key)
        if entry is None:
            raise not_found(key)
        explicit = {**entry.explicit, **options}
        settings = resolve_settings(explicit)
        self._check_running()
        if self._local_mode():
            raise NodeUnavailable("cannot configure while the fleet's Redis is unreachable")
        reply = self.pending.run(key, "configure", settings_args(settings),
                                 {"explicit": dump_json("options", explicit)}, explicit)
        if reply[0] == "missing":
            raise not_found(key)
        self._note(key, reply, explicit)

    def status(self, key: Key) -> ConnectionStatus:
        status = self.replica.status(key)
        if status is None:
            raise not_found(key)
        return status

    def statuses(self, scope: Any = ALL_SCOPES) -> list[ConnectionStatus]:
        result = []
        for key in list(self.replica.entries):
            status = self.replica.status(key)
            if status is not None and (scope is ALL_SCOPES or status.scope == scope):
                result.append(status)
        return result

    # -- guarded calls -------------------------------------------------------------------
    def admit(self, key: Key, register: Registration | None) -> Admission:
        view = self.views.get(key)
        if view is None:
            if register is None:
                raise not_found(key, "register=False")
            try:
                self.register(key, register.kind, register.options or {}, register.metadata)
            except AlreadyRegistered:
                pass
            view = self.views.get(key)
            if view is None:
                raise not_found(key)
        if not view.available:
            self._refuse(key, f"circuit for {describe_key(key)} is open")
        if view.state is not _HALF_OPEN or not self.link.connected:
            return Admission(key, view)
        token = uuid.uuid4().hex
        try:
            reply = self._run("acquire", key, {"token": token, "lease": DEFAULT_LEASE_MS})
        except NodeUnavailable:
            if self.options.when_unreachable != "local":
                raise
            return Admission(key, view)  # decided here from now on: no fleet permit
        code = str(reply[0])
        if code == "missing":
            raise not_found(key)
        self._note(key, reply)
        if code == "trial":
            return Admission(key, view, trial=True, token=(token, int(reply[4])))
        if code == "closed":
            return Admission(key, self.views.get(key))
        if code == "full":
            self._refuse(key, f"circuit for {describe_key(key)} is half-open and its trial "
                              "call(s) are running")
        self._refuse(key, f"circuit for {describe_key(key)} is open")

    def _open_error(self, key: Key, message: str) -> CircuitOpenError:
        status = self.replica.status(key)
        return CircuitOpenError(message, status, rules.retry_after(status, self.now()))

    def _refuse(self, key: Key, message: str) -> NoReturn:
        self.replica.tally(key, "rejected")
        raise self._open_error(key, message)

    def refusal(self, key: Key) -> CircuitOpenError | None:
        view = self.views.get(key)
        if view is None:
            raise not_found(key)
        return None if view.available else self._open_error(
            key, f"circuit for {describe_key(key)} is open")

    def settle(self, admission: Admission, verdict: tuple[str, Any],
               duration: float | None = None) -> None:
        kind, reason = verdict
        key = admission.key
        trial = admission.token if admission.trial else None
        admission.trial = False  # given back once, whatever happens next
        if kind == "success":
            self._success(key, None, trial, duration)
        elif kind == "failure":
            self._failure(key, reason, None, trial, duration)
        else:  # "ignore" counts; "none" (not an outcome) only gives the permit back
            if kind == "ignore":
                self.replica.tally(key, "ignored")
            if trial is not None:
                try:
                    self._run("release", key, {"token": trial[0]})
                except NodeUnavailable:
                    pass  # the lease gives it back

    def count(self, key: Key, what: str) -> None:
        self.replica.tally(key, what)

    # -- events: InProcess ----------------------------------------------------------
    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            written = self._written
        if self.link.connected and not self.tail.wait_for(written, timeout):
            raise TimeoutError(f"drain did not complete within {timeout} s")
        self.delivery.flush(deadline)

    # -- test seams ----------------------------------------------------------------------
    def expire_now(self, key: Key) -> None:
        """``testing.expire_now``: not on a fleet (its time is the Redis server's)."""
        raise TypeError("expire_now() needs a local system: a fleet's circuits expire by "
                        "the Redis server's clock")

    def succeed_now(self, key: Key) -> None:
        """Test helper: a success applied in the fleet before returning."""
        self._check_running()
        self._step(key, "success", {})

    def fix_time(self, now: Callable[[], int], timeout: float = 5.0) -> None:
        """Test seam: run on ``now`` (epoch ms): every script (``fixed_now``), and the
        inactive cleanup's schedule, which ``tick_now`` then follows; the ticker's
        thread stops acting by itself, so nothing runs at the server's time after this.

        Raises:
            TimeoutError: the ticker's thread did not stop within ``timeout`` s.
        """
        self.fixed_now = now
        if not self.ticker.park(timeout):
            raise TimeoutError(f"the fleet ticker did not park within {timeout} s")
        self.sweeper.clock = now
        self.sweeper.arm()

    def tick_now(self, timeout: float = 5.0) -> None:
        """Expire every circuit due now (the test seam's now), after ``fix_time`` also
        sweep if due (``Ticker.turn``), and wait for the events."""
        now = self.fixed_now_ms()
        last = self.ticker.turn(now) if self.sweeper.clock is self.fixed_now \
            else self.ticker.tick(now)
        if last:
            with self._lock:
                self._written = max(self._written, stream_id(last))
            self.tail.wait_for(stream_id(last), timeout)

    def sweep_now(self, timeout: float = 5.0) -> None:
        """Report this system's activity; if it holds the ticker lease, run the inactive
        cleanup at the test seam's now, and wait for its events."""
        self.sweeper.report()
        if not self.ticker.holder:
            return
        last, _ = self.sweeper.sweep(self.fixed_now_ms())
        if last:
            with self._lock:
                self._written = max(self._written, stream_id(last))
            self.tail.wait_for(stream_id(last), timeout)

    # -- lifecycle -----------------------------------------------------------------------
    def mark_stopped(self) -> None:
        """Refuse calls from now on."""
        self.context.stopping = True
        self.views = StoppedViews()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the flusher, the ticker (giving its lease back) and the tail within one
        ``timeout`` in all, then close this system's clients, unless the flusher is still
        in a round trip (closing under it would let it open a connection again)."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        flusher_ended = self.pending.stop(timeout)
        self.ticker.stop(left())
        self.tail.stop(left())
        if not flusher_ended and not self.pending.stop(left()):
            logger.warning("the fleet's flusher (namespace %r) did not end within %s s; "
                           "its Redis connections are left to close with it",
                           self.options.namespace, timeout)
            return
        self.link.close()
