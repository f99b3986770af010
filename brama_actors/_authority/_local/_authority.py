"""The local authority: every circuit decided by its own actor, in this process.

A cell per connection is published for readers; writes go to the connection's actor,
run in the caller's thread when the actor is idle (``_PooledInbox.call``) and asked
otherwise, always with a timeout. The cleanup sweep and the expiry timers run on the
system's scheduler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import pykka
from pykka import ActorDeadError, ActorRef

from brama_actors import _rules as rules
from brama_actors._authority import ALL_SCOPES, Admission, InProcess, Registration
from brama_actors._authority._local._actor import (
    GET_STATUS,
    PING,
    Apply,
    ConnectionActor,
    Reconfigure,
    Retire,
)
from brama_actors._authority._local._cell import QUIET_BATCH, Cell
from brama_actors._config import CONNECTION_OPTIONS, check_global, resolve_settings
from brama_actors._delivery import _telemetry
from brama_actors._delivery._hub import ASK_TIMEOUT, Delivery, wait_all
from brama_actors._errors import AlreadyRegistered, BramaError, CircuitOpenError, SystemStopped
from brama_actors._events import EventType
from brama_actors._frozen import make_constructor
from brama_actors._keys import Key, describe_key, not_found, split_key
from brama_actors._runtime import BUSY, Timer, _nowait
from brama_actors._runtime._context import Context
from brama_actors._runtime._crash import RESTARTED, ArmCrash
from brama_actors._runtime._pool import reject
from brama_actors._runtime._supervisor import Crashed
from brama_actors._status import CircuitState, ConnectionStatus

__all__ = ["LocalAuthority"]

logger = logging.getLogger("brama_actors")

_HALF_OPEN = CircuitState.HALF_OPEN
_CLOSED = CircuitState.CLOSED
_FAILURE = EventType.FAILURE
_SUCCESS = rules.Success()
# A success sent to the actor is built on every non-quiet success: without __init__.
_new_success = make_constructor(rules.Success)


class _StoppedCells(dict[Key, Cell]):
    """Stands in for the cell table of a stopped system: every lookup raises."""

    def get(self, key: Any, default: Any = None) -> Any:
        raise SystemStopped("this Brama system is stopped")

    def values(self) -> Any:
        raise SystemStopped("this Brama system is stopped")


_STOPPED = _StoppedCells()


class LocalAuthority(InProcess):
    """Circuits owned by connection actors on this system's pool.

    Args:
        context: the system's shared runtime.
        delivery: the system's event hub.
        supervisor: the system's supervisor (restarts crashed connection actors).
        explicit: the system's explicitly set options (``configure()`` changes them).
    """

    def __init__(self, context: Context, delivery: Delivery, supervisor: ActorRef[Any],
                 explicit: dict[str, Any]) -> None:
        self.context = context
        self.delivery = delivery
        self._supervisor = supervisor
        self._explicit = explicit
        self._lock = threading.Lock()  # registration (check-and-insert) and configure
        self.cells: dict[Key, Cell] = {}
        #: The Authority protocol's views: the cells, or a stand-in that raises.
        self.views: Mapping[Key, Cell] = self.cells
        self._sweep_timer: Timer | None = None
        self._raw = context.clock.raw  # bound once: read on every quiet success

    # -- connections ---------------------------------------------------------------------
    def register(self, key: Key, kind: str, options: Mapping[str, Any],
                 metadata: Mapping[str, Any] | None) -> ConnectionStatus:
        """Start a connection's actor and publish its cell, in the caller's thread.

        Why not a message to the supervisor: the ask round trip and the thread hand-offs
        cost ~3x the work itself (tests/benchmarks/bench_scale.py). The lock makes
        check-and-insert atomic; the supervisor still owns restarts.

        Raises:
            AlreadyRegistered: the key is taken.
            InvalidConfiguration: the options resolve to an invalid combination.
        """
        identifier, scope = split_key(key)
        context = self.context
        with self._lock:
            explicit = {k: v for k, v in self._explicit.items() if k in CONNECTION_OPTIONS}
            explicit.update(options)
            settings = resolve_settings(explicit)
            if context.stopping:
                raise SystemStopped("this Brama system is stopped")
            if key in self.cells:
                raise AlreadyRegistered(f"connection {describe_key(key)} is already registered")
            now = context.clock.now()
            status = rules.initial_status(identifier, scope, kind, settings, metadata, now)
            cell = Cell(key, status, settings, explicit)
            cell.adopt(settings)
            self._start_actor(cell)
            # Events first, then the cell: nothing the actor emits can overtake them.
            self.delivery.emit(identifier, scope, rules.registration_events(status, settings),
                               now)
            self.cells[key] = cell
        return status

    def _start_actor(self, cell: Cell, leftovers: list[Any] | None = None) -> None:
        """Start (or restart) the actor of ``cell`` and point the cell at it."""
        ref = ConnectionActor.start(self, cell, leftovers)
        cell.inbox = ref.actor_inbox  # type: ignore[assignment]
        cell.ref = ref

    def remove_cell(self, cell: Cell) -> None:
        """Called by a retiring actor: forget its cell (if it is still the current one)."""
        with self._lock:
            if self.cells.get(cell.key) is cell:
                del self.cells[cell.key]

    def unregister(self, key: Key) -> bool:
        try:
            return bool(self._call(key, Retire()))
        except LookupError:  # ConnectionNotFound
            return False

    def available(self, key: Key) -> bool:
        cell = self.views.get(key)
        return cell is not None and cell.available

    def report(self, key: Key, outcome: rules.Success | rules.Failure) -> None:
        if type(outcome) is rules.Success:
            cell = self.views.get(key)
            if cell is not None and outcome.metadata is None:
                self.record_success(key, cell, outcome.duration)
            else:
                stamped = _new_success(outcome.metadata, outcome.trial, outcome.duration,
                                       self.context.clock.now())
                self._call(key, Apply(stamped), block=False)
            return
        assert type(outcome) is rules.Failure
        if outcome.metadata is None and outcome.trial is None and self._count_failure(
                key, outcome.reason):
            return
        self._call(key, Apply(outcome))

    def _count_failure(self, key: Key, reason: Any) -> bool:
        """Count a failure that only counts (``rules.counts_only``) in its cell.

        Why: during an outage every caller reports failures until the circuit opens,
        and most of those failures change nothing but three counters. The reporting
        thread claims the idle actor (so one change at a time and per-connection order
        still hold), adds the failure to ``Cell.failures`` and emits its ``failure``
        event if somebody wants it: no actor message, no new status (the actor folds
        the count in before its next message; readers merge it). Returns False, having
        done nothing, when the rule does not hold or the actor is busy: the caller
        sends the failure to the actor then.
        """
        cell = self.views.get(key)
        if cell is None or cell.crashes_armed or cell.window is not None or (
                cell.status.state is not _CLOSED):
            return False  # cannot only count (checked exactly under the claim)
        inbox = cell.inbox
        if inbox is None:
            return False
        delivery = self.delivery
        identifier, scope = split_key(key)
        wanted = bool(_telemetry.HANDLERS) or delivery.interest.wants(
            _FAILURE, identifier, scope)
        if wanted:
            delivery.pace()
        actor = inbox.claim()
        if actor is None:
            return False
        try:
            failures = cell.failures
            pending = 0 if failures is None else failures[0]
            status = cell.status
            if not rules.counts_only(status, cell.settings, pending):
                return False
            now = self.context.clock.now()
            cell.quiet = False  # first: nobody who sees the failure gets a quiet success
            cell.failures = (pending + 1, now)
            if wanted or delivery.interest.wants(_FAILURE, identifier, scope):
                delivery.emit(identifier, scope, (rules.failure_event(
                    status.state, status.failure_count + pending + 1, reason),), now)
        finally:
            inbox.release(actor)
        return True

    def record_success(self, key: Key, view: Any, duration: float | None = None) -> None:
        """A success without metadata (a guarded call's, or ``success()``'s).

        When it changes nothing but counters (closed, no failures, a clean window, not
        slow itself) and nobody listens for its event, it is counted in the cell (a mark
        in ``Cell.quiet_marks``), with no actor message:
        the guarded call's hot path, so plain reads come first and the precise interest
        check runs only when some subscription wants ``success`` events at all.
        """
        if view.quiet and not _telemetry.HANDLERS and (
                duration is None or view.slow is None or duration < view.slow):
            delivery = self.delivery
            if not (delivery.interest.successes
                    and delivery.wants_success(*split_key(key))):
                view.quiet_raw = raw = self._raw()  # first: whoever sees the mark sees its time
                marks = view.quiet_marks
                marks.append(raw)  # atomic: no lock on the hot path
                if len(marks) >= QUIET_BATCH:
                    view.collect_marks(self.context.clock)
                return
        # Applied asynchronously: stamped now, so it counts at the time it happened.
        self._call(key, Apply(_new_success(None, None, duration, self.context.clock.now())),
                   block=False)

    def control(self, key: Key, op: rules.Open | rules.Close | rules.Reset) -> None:
        self._call(key, Apply(op))

    def configure(self, key: Key | None, options: Mapping[str, Any]) -> None:
        """New settings for one connection, or new defaults (checked by the caller).

        Raises:
            InvalidConfiguration: the options resolve to an invalid combination.
        """
        if key is None:
            with self._lock:
                merged = {**self._explicit, **options}
                check_global(merged)
                self._explicit.clear()
                self._explicit.update(merged)
                self.context.config.update(options)
            if "cleanup_interval" in options:
                self.arm_sweep()
            if "log_transitions" in options:
                self.delivery.log_transitions(options["log_transitions"])
            return
        cell = self.views.get(key)
        if cell is None:
            raise not_found(key)
        explicit = {**cell.explicit, **options}
        self._call(key, Reconfigure(explicit, resolve_settings(explicit)))

    def status(self, key: Key) -> ConnectionStatus:
        cell = self.views.get(key)
        if cell is None:
            raise not_found(key)
        inbox = cell.inbox
        if inbox is not None and inbox.idle():
            # Nothing queued or running: the published status is current.
            return cell.current_status(self.context.clock)
        status: ConnectionStatus = self._call(key, GET_STATUS)
        return status

    def statuses(self, scope: Any = ALL_SCOPES) -> list[ConnectionStatus]:
        cells = list(self.views.values())
        clock = self.context.clock
        if scope is ALL_SCOPES:
            return [cell.current_status(clock) for cell in cells]
        return [cell.current_status(clock) for cell in cells if cell.status.scope == scope]

    # -- guarded calls -------------------------------------------------------------------
    def admit(self, key: Key, register: Registration | None) -> Admission:
        cell = self.views.get(key)
        if cell is None:
            if register is None:
                raise not_found(key, "register=False")
            try:
                self.register(key, register.kind, register.options or {}, register.metadata)
            except AlreadyRegistered:
                pass  # another thread registered it first
            cell = self.views.get(key)
            if cell is None:  # unregistered again at once: report it as unknown
                raise not_found(key)
        if not cell.available:
            cell.count("rejected")
            raise self._open_error(cell)
        if cell.status.state is not _HALF_OPEN:
            return Admission(key, cell)
        with cell.lock:
            status = cell.status
            period = status.opened_at
            if cell.trial_period != period:  # a new half_open period: earlier permits void
                cell.trial_period = period
                cell.trials = 0
            limit = status.half_open_max_calls
            full = cell.trials >= limit
            if not full:
                cell.trials += 1
        if full:
            cell.count("rejected")
            raise CircuitOpenError(
                f"circuit for {describe_key(key)} is half-open and its {limit} trial "
                "call(s) are running", status)
        return Admission(key, cell, trial=True, token=period)

    def settle(self, admission: Admission, verdict: tuple[str, Any],
               duration: float | None = None) -> None:
        kind, reason = verdict
        key = admission.key
        try:
            if kind == "success":
                if admission.trial:
                    # Applied before the permit goes back: the next caller sees the
                    # circuit closed, not half_open with a free permit. A trial of a
                    # half_open period that is over changes nothing (the rules check).
                    self._call(key, Apply(rules.Success(trial=admission.token,
                                                        duration=duration)))
                else:
                    self.record_success(key, admission.view, duration)
            elif kind == "failure":
                if admission.trial:
                    self._call(key, Apply(rules.Failure(reason, trial=admission.token,
                                                        duration=duration)))
                elif not self._count_failure(key, reason):
                    self._call(key, Apply(rules.Failure(reason, duration=duration)))
            elif kind == "ignore" and admission.view is not None:
                admission.view.count("ignored")
        except _nowait.WouldBlock:
            raise  # nothing was done: the caller repeats the whole settle off its loop
        except BaseException:
            self._release(admission)
            raise
        self._release(admission)

    def _open_error(self, cell: Cell) -> CircuitOpenError:
        status = cell.status
        return CircuitOpenError(f"circuit for {describe_key(cell.key)} is open", status,
                                rules.retry_after(status, self.context.clock.now()))

    def refusal(self, key: Key) -> CircuitOpenError | None:
        cell = self.views.get(key)
        if cell is None:
            raise not_found(key)
        return None if cell.available else self._open_error(cell)

    def count(self, key: Key, what: str) -> None:
        cell = self.views.get(key)
        if cell is not None:
            cell.count(what)

    @staticmethod
    def _release(admission: Admission) -> None:
        """Give back a half-open trial permit once (none if its period is over)."""
        if admission.trial:
            admission.trial = False  # given back once, whatever happens next
            cell = admission.view
            with cell.lock:
                if cell.trial_period == admission.token and cell.trials > 0:
                    cell.trials -= 1

    # -- events: InProcess ----------------------------------------------------------
    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        futures = [
            cell.ref.ask(PING, block=False)
            for cell in list(self.views.values())
            if cell.ref is not None and cell.inbox is not None and not cell.inbox.idle()
        ]
        wait_all(futures, deadline)
        self.delivery.flush(deadline)

    # -- calls to connection actors ------------------------------------------------------
    def _call(self, key: Key, message: Any, *, block: bool = True) -> Any:
        """Send ``message`` to a connection's actor, following it across a restart."""
        self.delivery.pace()
        # A message that crashes its actor is retried on the restarted one; a poison
        # message ends when restart intensity gives up (SystemStopped) or here.
        attempts = int(self.context.config["max_restarts"]) + 2
        for _ in range(attempts):
            cell = self.views.get(key)
            if cell is None:
                raise not_found(key)
            ref = cell.ref
            assert ref is not None
            try:
                if not block:
                    ref.tell(message)
                    return None
                inbox = cell.inbox
                result = BUSY if inbox is None else inbox.call(message)
                if result is BUSY:
                    _nowait.check()  # nothing was sent: an asyncio caller retries off-loop
                    result = ref.ask(message, timeout=ASK_TIMEOUT)
            except ActorDeadError:
                result = RESTARTED
            except pykka.Timeout:
                self._check_running()
                raise TimeoutError(f"connection {describe_key(key)} did not answer within "
                                   f"{ASK_TIMEOUT} s") from None
            if result is not RESTARTED:
                return result
            self._check_running()
            if cell.retired:
                # Refused because the connection was removed meanwhile (unregister or
                # the sweep), not because it crashed: the call raced the removal.
                raise not_found(key)
            # The crashed actor told the supervisor before refusing us: once the
            # supervisor has caught up, the cell points at the restarted actor.
            self.sync_supervisor()
        self._check_running()
        raise BramaError(f"connection {describe_key(key)} crashed {attempts} times "
                         "handling this call")

    # -- what connection actors ask of their authority ---------------------------------
    def schedule_expiry(self, key: Key, deadline: int, opened_at: int) -> Timer:
        """Apply the expiry of the opening at ``opened_at`` when ``deadline`` comes."""
        def fire() -> list[Any] | None:
            cell = self.cells.get(key)
            if cell is None or cell.ref is None:
                return None
            return [cell.ref.ask(Apply(rules.Expire(opened_at)), block=False)]

        return self.context.scheduler.schedule(deadline, fire)

    def crashed(self, cell: Cell, ref: ActorRef[Any], exc: BaseException,
                leftovers: list[Any]) -> None:
        """Called by a crashing actor (under its inbox lock): have it restarted."""
        identifier, scope = split_key(cell.key)

        def current() -> bool:
            return self.cells.get(cell.key) is cell and cell.ref is ref

        def restart() -> None:
            self._start_actor(cell, leftovers)

        def refuse() -> None:
            for envelope in leftovers:
                reject(envelope, ref)

        try:
            self._supervisor.tell(Crashed("connection", identifier, scope, repr(exc),
                                          current, restart, refuse))
        except ActorDeadError:
            refuse()  # stopping

    # -- the cleanup sweep ----------------------------------------------------------------
    def arm_sweep(self) -> None:
        """(Re)schedule the sweep ``cleanup_interval`` ms from now."""
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        context = self.context
        self._sweep_timer = context.scheduler.schedule(
            context.clock.now() + context.config["cleanup_interval"], self._sweep)

    def _sweep(self) -> list[Any]:
        context = self.context
        threshold = context.config["inactive_threshold"]
        now = context.clock.now()
        waits = []
        for cell in list(self.cells.values()):
            if now - cell.last_activity(context.clock) > threshold and cell.ref is not None:
                try:
                    waits.append(cell.ref.ask(Retire(threshold), block=False))
                except ActorDeadError:
                    pass
        if not context.stopping:
            self.arm_sweep()
        return waits

    # -- lifecycle and test seams ---------------------------------------------------------
    def close(self) -> None:
        """Refuse every lookup and halt every connection actor (the system is stopping).

        Connection actors have nothing to do on stop: halting them in place (their
        queued asks answer ``ActorDeadError``, hence ``SystemStopped``) instead of
        sending each a stop message through the pool takes 100,000 of them down in a
        fraction of a second.
        """
        self.views = _STOPPED
        for cell in list(self.cells.values()):
            if cell.inbox is not None:
                cell.inbox.halt()

    def mark_stopped(self) -> None:
        """Refuse lookups from now on (``close`` halts the actors later)."""
        self.views = _STOPPED

    def inject_crash(self, key: Key, times: int) -> None:
        """Test seam: crash the connection's actor at its next ``times`` messages."""
        self._call(key, ArmCrash(times))

    def expire_now(self, key: Key) -> None:
        """Test helper: move an open circuit to half_open as if its deadline had passed."""
        status = self.status(key)
        if status.state is CircuitState.OPEN and status.opened_at is not None:
            self._call(key, Apply(rules.Expire(status.opened_at)))

    def succeed_now(self, key: Key) -> None:
        """Test helper: a success applied before returning."""
        self._call(key, Apply(_SUCCESS))
