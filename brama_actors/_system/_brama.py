"""``Brama``: one running system, and the internals its actors share.

The facade methods run in the caller's thread. Reads (``available``, ``connections``,
often ``status``) use the published cells; writes go to the one actor that owns the
connection. Every ``ask`` has a timeout, and a call that races with ``stop()`` ends in
``SystemStopped``, never in a hang.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Self

import pykka
from pykka import ActorDeadError, ActorRef

from brama_actors import _rules as rules
from brama_actors._config import (
    CONNECTION_OPTIONS,
    DEFAULTS,
    GLOBAL_OPTIONS,
    Settings,
    check_global,
    resolve_settings,
    validate_options,
)
from brama_actors._delivery import _telemetry
from brama_actors._delivery._manager import (
    EventManager,
    Flush,
    FlushBatch,
    Interest,
    Publish,
    Subscribe,
    Unsubscribe,
    UnsubscribeWhere,
)
from brama_actors._delivery._subscription import Subscription
from brama_actors._delivery._targets import (
    RUNNER_STOP_WAIT,
    ActorTarget,
    AsyncHandlerTarget,
    HandlerTarget,
    InboxTarget,
    Target,
    TelemetryCall,
    TelemetryTarget,
    check_drain_caller,
    close_runners,
    is_coroutine_handler,
)
from brama_actors._errors import (
    AlreadyRegistered,
    BramaError,
    ConnectionNotFound,
    InvalidConfiguration,
    InvalidIdentifier,
    SystemStopped,
    describe,
)
from brama_actors._events import Event, EventType, parse_event_types
from brama_actors._guard import Guard, GuardBlock
from brama_actors._runtime import _nowait
from brama_actors._runtime._clock import Clock, SystemClock
from brama_actors._runtime._pool import BUSY, Pool, _PooledInbox, current_actor
from brama_actors._runtime._scheduler import Scheduler, Timer
from brama_actors._server import Server
from brama_actors._status import ConnectionStatus, freeze_mapping
from brama_actors._system._connection import Cell, ConnectionActor
from brama_actors._system._messages import (
    GET_STATUS,
    PING,
    RESTARTED,
    Apply,
    ArmCrash,
    Key,
    Reconfigure,
    Retire,
    make_key,
    split_key,
)
from brama_actors._system._supervisor import Crashed, EventManagerCrashed, Supervisor, Sync

__all__ = ["Brama", "Core"]

logger = logging.getLogger("brama_actors")

#: Seconds any internal ask waits before giving up; generous, since actors never block.
ASK_TIMEOUT = 10.0
#: Worker threads per system. Actors never block, so a few workers keep 2 cores busy.
POOL_SIZE = 4
#: Back-pressure: when the event manager has more than EM_HIGH_WATER messages queued,
#: reporting threads (never the pool's workers) wait until it is under EM_LOW_WATER, for
#: at most EM_WAIT seconds; after a wait in vain, nobody waits again until it has moved.
EM_HIGH_WATER = 1_000
EM_LOW_WATER = 250
EM_WAIT = 1.0

_system_ids = itertools.count(1)

#: Every system not yet stopped, so tests and atexit can find them.
running: weakref.WeakSet[Brama] = weakref.WeakSet()


class _StoppedCells(dict[Key, Cell]):
    """Stands in for the cell table of a stopped system: every lookup raises."""

    def get(self, key: Any, default: Any = None) -> Any:
        raise SystemStopped("this Brama system is stopped")

    def values(self) -> Any:
        raise SystemStopped("this Brama system is stopped")


_STOPPED = _StoppedCells()


def _check_key(identifier: Any, scope: Any) -> Key:
    if type(identifier) is not str or not identifier:
        if not isinstance(identifier, str) or not identifier:
            raise InvalidIdentifier(f"identifier must be a non-empty str, got {identifier!r}")
        identifier = str(identifier)
    if scope is not None and (not isinstance(scope, str) or not scope):
        raise InvalidIdentifier(f"scope must be None or a non-empty str, got {scope!r}")
    return make_key(identifier, None if scope is None else str(scope))


def _not_found(key: Key) -> ConnectionNotFound:
    return ConnectionNotFound(f"connection {describe(*split_key(key))} is not registered")


def check_subscription(events: Any, connection: Any, scope: Any, filter: Any,
                       batch_size: Any, batch_timeout: Any,
                       max_pending: Any) -> frozenset[EventType] | None:
    """Validate subscription filters and options; return the parsed event types.

    Raises:
        ValueError: unknown event names or bad numbers.
        TypeError: a non-callable filter.
        InvalidIdentifier: a bad connection or scope filter.
    """
    kinds = parse_event_types(events)
    if connection is not None or scope is not None:
        _check_key(connection if connection is not None else "x", scope)
    if filter is not None and not callable(filter):
        raise TypeError(f"filter must be callable, got {filter!r}")
    if type(max_pending) is bool or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError(f"max_pending must be an int >= 1, got {max_pending!r}")
    for name, value in (("batch_size", batch_size), ("batch_timeout", batch_timeout)):
        if value is not None and (type(value) is bool or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
    return kinds


def make_target(subscriber: Any, handler: Any, max_pending: int,
                handler_name: str) -> tuple[Target, Any]:
    """The target of a new subscription: a handler runner, an actor, or an inbox.

    Returns the target and the subscriber actor (the calling actor when none is given
    from inside one).

    Raises:
        ValueError: both ``subscriber`` and ``handler``.
        TypeError: a handler that is not callable, a subscriber that is not an ActorRef.
    """
    if subscriber is not None and handler is not None:
        raise ValueError("give subscriber= or handler=, not both")
    if handler is not None:
        if not callable(getattr(handler, "handle_event", None)) and not callable(handler):
            raise TypeError(
                f"handler must have a handle_event(event) method or be callable, got {handler!r}")
        if is_coroutine_handler(handler):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise TypeError(
                    f"handler {handler!r} is a coroutine function: subscribe it from inside "
                    "a running event loop (it runs on that loop), or read an inbox "
                    "subscription with `await sub.aget()` or `async for event in sub`"
                ) from None
            return AsyncHandlerTarget(handler, max_pending, handler_name), None
        return HandlerTarget(handler, max_pending, handler_name), None
    if subscriber is None:
        subscriber = _caller_actor()
    if subscriber is None:
        return InboxTarget(max_pending), None
    if not isinstance(subscriber, ActorRef):
        raise TypeError(f"subscriber must be a pykka ActorRef, got {subscriber!r}")
    return ActorTarget(subscriber, max_pending), subscriber


def _check_metadata(metadata: Any) -> Mapping[str, Any] | None:
    """A read-only copy of ``metadata``, made in the caller's thread.

    Copying here means a hostile mapping (one whose iteration raises) fails the caller's
    call, never an actor.
    """
    if metadata is None:
        return None
    if isinstance(metadata, Mapping):
        return freeze_mapping(metadata)
    raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")


def _caller_actor() -> ActorRef[Any] | None:
    """The Pykka actor whose message the current thread is handling, if any."""
    ref = current_actor()
    if ref is not None:
        return ref
    # A ThreadingActor's thread runs its bound _actor_loop; the stdlib keeps the target
    # on the Thread while it runs. Pykka offers no public "current actor".
    target = getattr(threading.current_thread(), "_target", None)
    actor = getattr(target, "__self__", None)
    if isinstance(actor, pykka.Actor):
        return actor.actor_ref
    return None


def _owner() -> tuple[str, Any]:
    actor = _caller_actor()
    if actor is not None:
        return ("actor", actor.actor_urn)
    return ("thread", threading.get_ident())


class Core:
    """What the system's actors share: clock, scheduler, pool, cells, refs, config."""

    def __init__(self, brama: Brama, clock: Clock, config: dict[str, Any], name: str) -> None:
        self.brama = brama
        self.clock = clock
        self.config = config
        self.name = name
        self.cells: dict[Key, Cell] = {}
        self.cells_lock = threading.Lock()
        # Replaced whole by the event manager whenever subscriptions change.
        self.interest = Interest.NONE
        # Back-pressure (pace): runs of the manager so far, threads waiting, and the run
        # count when a wait last timed out.
        self.em_space = threading.Condition(threading.Lock())
        self.em_runs = 0
        self.em_waiting = 0
        self.em_stalled_at = -1
        self.stopping = False
        self.sweep_timer: Timer | None = None
        self.telemetry_target: TelemetryTarget | None = None
        # Everything an actor may read is assigned above: the actors below start running
        # on the pool at once (the event manager yields, and reads em_runs, before
        # __init__ returns), so nothing they touch may be assigned after them.
        self.pool = Pool(name, POOL_SIZE)
        self.scheduler = Scheduler(clock, f"{name}-scheduler")
        self.em: ActorRef[EventManager] = EventManager.start(self.pool, self)
        self.em_inbox: _PooledInbox = self.em.actor_inbox  # type: ignore[assignment]
        self.supervisor: ActorRef[Supervisor] = Supervisor.start(self.pool, self)

    # -- used by actors ------------------------------------------------------------------
    def emit(self, status: ConnectionStatus, specs: Iterable[rules.EventSpec], now: int) -> None:
        """Build events for ``status``'s connection and tell them to the event manager."""
        identifier = status.identifier
        scope = status.scope
        interest = self.interest
        if _telemetry.active():
            wanted = list(specs)
        else:
            wanted = [s for s in specs if interest.wants(s[0], identifier, scope)]
            if not wanted:
                return  # nobody listens: build nothing, send nothing
        events = tuple(
            Event(kind, now, identifier, scope, MappingProxyType(data)) for kind, data in wanted
        )
        self.tell_event_manager(Publish(events))

    def pace(self) -> None:
        """Let the event manager catch up if reporters outrun it (called before a report).

        Why: a report is applied in the caller's thread when its actor is idle, so
        reporting threads can produce events faster than one manager fans them out; its
        inbox would grow without bound. Pool workers never wait (the manager needs them),
        and a manager that makes no progress (a filter that blocks) delays reporters once
        by EM_WAIT, not on every call.
        """
        if self.em_inbox.backlog() <= EM_HIGH_WATER or current_actor() is not None:
            return
        runs = self.em_runs
        if runs == self.em_stalled_at or self.stopping:
            return
        _nowait.check()  # asyncio callers wait off their loop instead
        with self.em_space:
            self.em_waiting += 1
            try:
                if not self.em_space.wait_for(self._em_caught_up, EM_WAIT):
                    self.em_stalled_at = self.em_runs
                    logger.warning("the event manager is %d messages behind and made no "
                                   "progress in %.1f s; reporters no longer wait for it",
                                   self.em_inbox.backlog(), EM_WAIT)
            finally:
                self.em_waiting -= 1

    def _em_caught_up(self) -> bool:
        return self.em_inbox.backlog() < EM_LOW_WATER or self.stopping

    def event_manager_yielded(self) -> None:
        """Called by the event manager after each run: wake paced reporters if due."""
        self.em_runs += 1
        if self.em_waiting and (self.em_inbox.backlog() < EM_LOW_WATER or self.stopping):
            with self.em_space:
                self.em_space.notify_all()

    def tell_event_manager(self, message: Any) -> None:
        """Tell the event manager (it recovers from crashes in place, so it stays)."""
        try:
            self.em.tell(message)
        except ActorDeadError:
            if not self.stopping:
                logger.error("the event manager is gone; an event was not delivered")

    def telemetry(self) -> TelemetryTarget:
        """The system's telemetry runner, started on first use."""
        target = self.telemetry_target
        if target is None:
            with self.cells_lock:
                target = self.telemetry_target
                if target is None:
                    target = self.telemetry_target = TelemetryTarget(f"{self.name}-telemetry")
        return target

    def schedule_batch_flush(self, subscription_id: int, token: int, delay: int) -> Timer:
        """Flush a subscription's batch ``delay`` ms from now (system clock)."""
        def fire() -> list[Any] | None:
            try:
                return [self.em.ask(FlushBatch(subscription_id, token), block=False)]
            except ActorDeadError:
                return None

        return self.scheduler.schedule(self.clock.now() + delay, fire)

    def event_manager_crashed(self, reason: str) -> None:
        """Tell the supervisor (restart intensity, telemetry); the manager recovers itself."""
        try:
            self.supervisor.tell(EventManagerCrashed(reason))
        except ActorDeadError:
            pass  # stopping

    def register(self, key: Key, kind: str, settings: Settings, explicit: dict[str, Any],
                 metadata: Mapping[str, Any] | None) -> ConnectionStatus:
        """Start a connection's actor and publish its cell, in the caller's thread.

        Why not a message to the supervisor: the ask round trip and the thread hand-offs
        cost ~3x the work itself (tests/benchmarks/bench_scale.py). The registry lock
        makes check-and-insert atomic; the supervisor still owns restarts.

        Raises:
            AlreadyRegistered: the key is taken.
        """
        identifier, scope = split_key(key)
        with self.cells_lock:
            if self.stopping:
                raise SystemStopped("this Brama system is stopped")
            if key in self.cells:
                raise AlreadyRegistered(
                    f"connection {describe(identifier, scope)} is already registered")
            now = self.clock.now()
            status = rules.initial_status(identifier, scope, kind, settings, metadata, now)
            cell = Cell(key, status, settings, explicit)
            ref = ConnectionActor.start(self, cell)
            cell.inbox = ref.actor_inbox  # type: ignore[assignment]
            cell.ref = ref
            # Events first, then the cell: nothing the actor emits can overtake them.
            self.emit(status, rules.registration_events(status, settings), now)
            self.cells[key] = cell
        return status

    def remove_cell(self, cell: Cell) -> None:
        with self.cells_lock:
            if self.cells.get(cell.key) is cell:
                del self.cells[cell.key]

    def schedule_expiry(self, key: Key, deadline: int, opened_at: int) -> Timer:
        def fire() -> list[Any] | None:
            cell = self.cells.get(key)
            if cell is None or cell.ref is None:
                return None
            return [cell.ref.ask(Apply(rules.Expire(opened_at)), block=False)]

        return self.scheduler.schedule(deadline, fire)

    def child_crashed(self, cell: Cell, ref: ActorRef[Any], exc: BaseException,
                      leftovers: list[Any]) -> None:
        try:
            self.supervisor.tell(Crashed(cell, ref, repr(exc), leftovers))
        except ActorDeadError:
            pass  # stopping

    def restarted(self, child: str, identifier: str | None, scope: str | None,
                  reason: str) -> None:
        if not _telemetry.HANDLERS:
            return
        # Run by the telemetry thread: telemetry handlers never run inside an actor.
        self.telemetry().fire(TelemetryCall(
            ("brama", "supervisor", "restart"),
            {"system_time": self.clock.now()},
            {"child": child, "connection": identifier, "scope": scope, "reason": reason},
        ))

    def give_up(self, reason: str) -> None:
        """Stop the system from another thread (actors must not join their own pool)."""
        logger.error("brama_actors supervisor gives up: %s; stopping the system", reason)
        # Calls are refused at once; the teardown runs on its own thread because an
        # actor cannot wait for the pool it runs on to end.
        brama = self.brama
        if brama._mark_stopped():
            thread = threading.Thread(
                target=brama._teardown, args=(reason,), name=f"{self.name}-give-up",
                daemon=True,
            )
            brama._teardown_thread = thread
            thread.start()

    # -- cleanup sweep -------------------------------------------------------------------
    def arm_sweep(self) -> None:
        if self.sweep_timer is not None:
            self.sweep_timer.cancel()
        self.sweep_timer = self.scheduler.schedule(
            self.clock.now() + self.config["cleanup_interval"], self._sweep
        )

    def _sweep(self) -> list[Any]:
        threshold = self.config["inactive_threshold"]
        now = self.clock.now()
        waits = []
        for cell in list(self.cells.values()):
            idle = now - max(cell.status.last_activity, cell.quiet_last(self.clock))
            if idle > threshold and cell.ref is not None:
                try:
                    waits.append(cell.ref.ask(Retire(threshold), block=False))
                except ActorDeadError:
                    pass
        if not self.stopping:
            self.arm_sweep()
        return waits


class Brama:
    """One running brama_actors system; create it with :meth:`Brama.start`.

    Several systems can run in one process; they never see each other's connections,
    subscriptions or events.
    """

    def __init__(self, *, _token: object = None, **_: Any) -> None:
        if _token is not _START_TOKEN:
            raise TypeError("create a system with Brama.start(**config)")
        self._lock = threading.Lock()
        self._stopped = False
        self._down = threading.Event()
        self._teardown_thread: threading.Thread | None = None
        self._cells: dict[Key, Cell] = {}
        self._parent: ActorRef[Any] | None = None
        self._explicit: dict[str, Any] = {}
        self._targets: list[Target] = []
        self._guards: dict[Key, Guard] = {}
        self._servers: list[Server] = []
        self._core: Core

    # -- lifecycle -----------------------------------------------------------------------
    @classmethod
    def start(cls, *, clock: Clock | None = None, parent: ActorRef[Any] | None = None,
              **config: Any) -> Brama:
        """Start a system.

        Args:
            clock: the clock every timestamp, expiry and sweep uses (default: system).
            parent: an actor told ``("brama_stopped", brama)`` / ``("brama_down", brama,
                reason)`` when the system ends.
            **config: options of API.md section 1.

        Raises:
            InvalidConfiguration: an unknown option or bad value.
        """
        explicit = validate_options(config, GLOBAL_OPTIONS)
        check_global(explicit)
        if clock is None:
            clock = SystemClock()
        elif not isinstance(clock, Clock):
            raise InvalidConfiguration(f"clock must be a brama_actors Clock, got {clock!r}")
        if parent is not None and not isinstance(parent, ActorRef):
            raise InvalidConfiguration(f"parent must be a pykka ActorRef, got {parent!r}")
        merged = dict(DEFAULTS)
        merged.update(explicit)
        brama = cls(_token=_START_TOKEN)
        brama._explicit = explicit
        brama._parent = parent
        name = f"brama-{next(_system_ids)}"
        brama._core = Core(brama, clock, merged, name)
        brama._cells = brama._core.cells
        brama._core.arm_sweep()
        running.add(brama)
        return brama

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<Brama {self._core.name} {state}, {len(self._core.cells)} connection(s)>"

    @property
    def clock(self) -> Clock:
        """The clock of this system."""
        return self._core.clock

    @property
    def supervisor(self) -> ActorRef[Any]:
        """The system supervisor's Pykka ``ActorRef``."""
        return self._core.supervisor

    @property
    def stopped(self) -> bool:
        """True once ``stop()`` was called (or the supervisor gave up)."""
        return self._stopped

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every actor and thread of this system; idempotent.

        Calls racing with ``stop()`` complete normally or raise ``SystemStopped``.
        """
        self._shutdown(None, timeout)

    def _mark_stopped(self) -> bool:
        """Refuse calls from now on; True for the caller that did it first."""
        with self._lock:
            if self._stopped:
                return False
            self._stopped = True
            self._cells = _STOPPED
            return True

    def _shutdown(self, reason: str | None, timeout: float = 10.0) -> None:
        if self._mark_stopped():
            self._teardown(reason, timeout)
        else:
            # Someone else (e.g. the supervisor giving up) is tearing down: wait for it,
            # so that stop() returning still means no thread is left.
            self._down.wait(timeout)
            thread = self._teardown_thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)

    def _teardown(self, reason: str | None, timeout: float = 10.0) -> None:
        core = self._core
        for server in self._servers:
            server.close()
        core.stopping = True
        with core.em_space:
            core.em_space.notify_all()  # paced reporters: stop waiting
        deadline = time.monotonic() + timeout
        core.scheduler.stop(timeout)
        # Connection actors have nothing to do on stop: halt them in place (their
        # queued asks answer ActorDeadError, hence SystemStopped) rather than sending
        # each a stop message through the pool; 100,000 of them take a fraction of a
        # second this way.
        for cell in list(core.cells.values()):
            if cell.inbox is not None:
                cell.inbox.halt()
        futures = [core.supervisor.stop(block=False), core.em.stop(block=False)]
        for future in futures:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                logger.warning("an actor of %s did not stop in time", core.name)
                break
        core.pool.shutdown(max(0.0, deadline - time.monotonic()))
        if core.telemetry_target is not None:
            self._targets.append(core.telemetry_target)
        # Handler runners finish what they are doing; one blocked in user code cannot be
        # stopped (a daemon thread), so waiting is bounded and it is then abandoned.
        blocked = close_runners(self._targets, max(0.0, deadline - time.monotonic()))
        if blocked:
            logger.warning("%s: %d handler(s) still blocked in user code after %.1f s; "
                           "their daemon threads end when the handlers return and run "
                           "nothing of the system meanwhile", core.name, blocked,
                           RUNNER_STOP_WAIT)
        self._targets.clear()
        _forget_default(self)
        running.discard(self)
        self._down.set()
        parent = self._parent
        if parent is not None:
            message: tuple[Any, ...] = (
                ("brama_stopped", self) if reason is None else ("brama_down", self, reason)
            )
            try:
                parent.tell(message)
            except ActorDeadError:
                logger.warning("parent actor of %s is gone; not told %s", core.name, message[0])
        elif reason is not None:
            logger.error("%s stopped: %s", core.name, reason)

    # -- helpers -------------------------------------------------------------------------
    def _check_running(self) -> None:
        if self._stopped:
            raise SystemStopped("this Brama system is stopped")

    def _cell(self, identifier: Any, scope: Any) -> Cell:
        key = _check_key(identifier, scope)
        cell = self._cells.get(key)
        if cell is None:
            raise _not_found(key)
        return cell

    def _ask_supervisor(self, message: Any) -> Any:
        _nowait.check()
        try:
            return self._core.supervisor.ask(message, timeout=ASK_TIMEOUT)
        except ActorDeadError:
            raise SystemStopped("this Brama system is stopped") from None
        except pykka.Timeout:
            self._check_running()
            raise BramaError("the supervisor did not answer within "
                             f"{ASK_TIMEOUT} s") from None

    def _call(self, identifier: Any, scope: Any, message: Any, *, block: bool = True) -> Any:
        """Send ``message`` to a connection's actor, following it across a restart."""
        key = _check_key(identifier, scope)
        self._core.pace()
        # A message that crashes its actor is retried on the restarted one; a poison
        # message ends when restart intensity gives up (SystemStopped) or here.
        attempts = int(self._core.config["max_restarts"]) + 2
        for _ in range(attempts):
            cell = self._cells.get(key)
            if cell is None:
                raise _not_found(key)
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
                raise BramaError(
                    f"connection {describe(*split_key(key))} did not answer within {ASK_TIMEOUT} s"
                ) from None
            if result is not RESTARTED:
                return result
            self._check_running()
            if cell.retired:
                # Refused because the connection was removed meanwhile (unregister or
                # the sweep), not because it crashed: the call raced the removal.
                raise _not_found(key)
            # The crashed actor told the supervisor before refusing us: once the
            # supervisor has caught up, the cell points at the restarted actor.
            self._ask_supervisor(Sync())
        self._check_running()
        raise BramaError(f"connection {describe(*split_key(key))} crashed {attempts} times "
                         "handling this call")

    # -- connections (API.md section 2) -----------------------------------------------
    def register(self, identifier: str, *, scope: str | None = None, type: str = "general",
                 max_attempts: int | None = None, expiry: int | None = None,
                 expiry_strategy: str | None = None, initial_expiry: int | None = None,
                 max_expiry: int | None = None, backoff_factor: float | None = None,
                 half_open_max_calls: int | None = None,
                 metadata: Mapping[str, Any] | None = None) -> ConnectionStatus:
        """Register a connection and start its actor.

        Raises:
            InvalidIdentifier: bad identifier or scope.
            InvalidConfiguration: a bad option value.
            AlreadyRegistered: the connection exists.
        """
        key = _check_key(identifier, scope)
        self._check_running()
        if not isinstance(type, str) or not type:
            raise InvalidConfiguration(f"type must be a non-empty str, got {type!r}")
        metadata = _check_metadata(metadata)
        given = validate_options(
            {"max_attempts": max_attempts, "expiry": expiry, "expiry_strategy": expiry_strategy,
             "initial_expiry": initial_expiry, "max_expiry": max_expiry,
             "backoff_factor": backoff_factor, "half_open_max_calls": half_open_max_calls},
            CONNECTION_OPTIONS, skip_none=True,
        )
        explicit = {k: v for k, v in self._explicit.items() if k in CONNECTION_OPTIONS}
        explicit.update(given)
        settings = resolve_settings(explicit)
        return self._core.register(key, type, settings, explicit, metadata)

    def unregister(self, identifier: str, *, scope: str | None = None) -> bool:
        """Remove a connection; True if it existed."""
        try:
            return bool(self._call(identifier, scope, Retire()))
        except ConnectionNotFound:
            return False

    def available(self, identifier: str, *, scope: str | None = None) -> bool:
        """True if the circuit is closed or half-open; False if open or not registered.

        Reads the published status: no actor round trip, no lock.
        """
        try:
            cell = self._cells.get(identifier if scope is None else (scope, identifier))
        except TypeError:
            cell = None  # unhashable: reported by the validation below
        if cell is not None and type(identifier) is str:  # not a key-shaped tuple
            return cell.available
        cell = self._cells.get(_check_key(identifier, scope))
        return cell is not None and cell.available

    def success(self, identifier: str, *, scope: str | None = None,
                metadata: Mapping[str, Any] | None = None) -> None:
        """Report a success; applied asynchronously (``status()`` and ``drain()`` see it)."""
        try:
            cell = self._cells.get(identifier if scope is None else (scope, identifier))
        except TypeError:
            cell = None
        if (cell is not None and cell.quiet and type(identifier) is str
                and not _telemetry.HANDLERS
                and not self._core.interest.wants(_SUCCESS, identifier, scope)):
            # Changes nothing but counters and nobody listens: no actor message needed
            # (and no copy of metadata that no event will carry).
            if metadata is not None and not isinstance(metadata, Mapping):
                _check_metadata(metadata)
            cell.add_quiet_success(self._core.clock.raw())
            return
        metadata = _check_metadata(metadata)
        self._call(identifier, scope, Apply(rules.Success(metadata)), block=False)

    def failure(self, identifier: str, *, scope: str | None = None, reason: Any = None,
                metadata: Mapping[str, Any] | None = None) -> None:
        """Report a failure; returns once applied (read-your-writes from any thread)."""
        metadata = _check_metadata(metadata)
        self._call(identifier, scope, Apply(rules.Failure(reason, metadata)))

    def status(self, identifier: str, *, scope: str | None = None) -> ConnectionStatus:
        """The connection's status, reflecting every report this thread made."""
        cell = self._cell(identifier, scope)
        inbox = cell.inbox
        if inbox is not None and inbox.idle():
            # Nothing queued or running: the published status is current.
            return cell.current_status(self._core.clock)
        status: ConnectionStatus = self._call(identifier, scope, GET_STATUS)
        return status

    _ALL: Any = object()

    def connections(self, *, scope: Any = _ALL) -> list[ConnectionStatus]:
        """Every connection's status, or those of one scope (``None``: unscoped)."""
        self._check_running()
        if scope is not Brama._ALL and scope is not None:
            _check_key("x", scope)
        cells = list(self._cells.values())
        clock = self._core.clock
        if scope is Brama._ALL:
            return [cell.current_status(clock) for cell in cells]
        return [cell.current_status(clock) for cell in cells if cell.status.scope == scope]

    def open_circuit(self, identifier: str, *, scope: str | None = None, reason: Any = None,
                     expiry: int | None = None) -> None:
        """Open the circuit now (for ``expiry`` ms if given, else by strategy)."""
        if expiry is not None:
            validate_options({"expiry": expiry}, CONNECTION_OPTIONS)
        self._call(identifier, scope, Apply(rules.Open(reason, expiry)))

    def close_circuit(self, identifier: str, *, scope: str | None = None,
                      reason: Any = None) -> None:
        """Close the circuit, keeping its failure count."""
        self._call(identifier, scope, Apply(rules.Close(reason)))

    def reset_circuit(self, identifier: str, *, scope: str | None = None,
                      reason: Any = None) -> None:
        """Close the circuit and zero its failure count; always emits ``circuit_reset``."""
        self._call(identifier, scope, Apply(rules.Reset(reason)))

    def configure(self, identifier: str | None = None, *, scope: str | None = None,
                  **options: Any) -> None:
        """Change the system's defaults, or one connection's settings.

        Raises:
            InvalidConfiguration: unknown option or bad value; nothing is changed.
            ConnectionNotFound: ``identifier`` is not registered.
        """
        if identifier is None:
            if scope is not None:
                raise InvalidConfiguration(
                    f"scope={scope!r} needs an identifier; system options take no scope")
            self._check_running()
            new = validate_options(options, GLOBAL_OPTIONS)
            with self._lock:
                merged = {**self._explicit, **new}
                check_global(merged)
                self._explicit = merged
                self._core.config.update(new)
            if "cleanup_interval" in new:
                self._core.arm_sweep()
            return
        new = validate_options(options, CONNECTION_OPTIONS)
        cell = self._cell(identifier, scope)
        explicit = {**cell.explicit, **new}
        settings = resolve_settings(explicit)
        self._call(identifier, scope, Reconfigure(explicit, settings))

    # -- events (API.md sections 6 and 10) ------------------------------------------------
    def subscribe(self, *, events: Iterable[EventType | str] | None = None,
                  connection: str | None = None, scope: str | None = None,
                  filter: Callable[[Event], bool] | None = None,
                  subscriber: ActorRef[Any] | None = None, handler: Any = None,
                  batch_size: int | None = None, batch_timeout: int | None = None,
                  max_pending: int = 10_000) -> Subscription:
        """Subscribe to events; see API.md section 6.

        Raises:
            ValueError: unknown event names, both ``subscriber`` and ``handler``, or a bad
                ``max_pending``, ``batch_size`` or ``batch_timeout``.
            TypeError: a filter or handler that is not callable, a subscriber that is not
                an ``ActorRef``.
        """
        self._check_running()
        check_subscription(events, connection, scope, filter, batch_size, batch_timeout,
                           max_pending)
        target, subscriber = make_target(subscriber, handler, max_pending,
                                         f"{self._core.name}-handler")
        if isinstance(target, HandlerTarget | AsyncHandlerTarget):
            self._targets = [t for t in self._targets if not t.closed]
            self._targets.append(target)
        return self._subscribe_target(
            target, events=events, connection=connection, scope=scope, filter=filter,
            batch_size=batch_size, batch_timeout=batch_timeout, max_pending=max_pending,
            subscriber=subscriber, owner=_owner())

    def _subscribe_target(self, target: Target, *, events: Any = None,
                          connection: Any = None, scope: Any = None, filter: Any = None,
                          batch_size: Any = None, batch_timeout: Any = None,
                          max_pending: Any = 10_000, subscriber: Any = None,
                          owner: tuple[str, Any]) -> Subscription:
        """Validate and add a subscription delivering to ``target``."""
        try:
            self._check_running()
            kinds = check_subscription(events, connection, scope, filter, batch_size,
                                       batch_timeout, max_pending)
            sub = Subscription(self, target, events=kinds, connection=connection, scope=scope,
                               filter=filter, subscriber=subscriber, owner=owner,
                               batch_size=batch_size, batch_timeout=batch_timeout)
            self._ask_event_manager(Subscribe(sub), ASK_TIMEOUT)
        except BaseException:
            target.close()
            raise
        return sub

    def unsubscribe(self, subscription: Subscription | None = None, *,
                    connection: str | None = None, scope: str | None = None,
                    events: Iterable[EventType | str] | None = None,
                    subscriber: ActorRef[Any] | None = None) -> Any:
        """Remove one subscription (-> bool) or the caller's matching ones (-> int)."""
        self._check_running()
        if subscription is not None:
            if not isinstance(subscription, Subscription):
                raise TypeError(f"expected a Subscription, got {subscription!r}")
            if subscription._brama is not self:
                return False
            message: Any = Unsubscribe(subscription.id)
        else:
            filters: dict[str, Any] = {}
            if connection is not None:
                filters["connection"] = connection
            if scope is not None:
                filters["scope"] = scope
            if events is not None:
                filters["events"] = parse_event_types(events)
            # subscriber=ref removes that actor's subscriptions whoever made them (a
            # supervisor detaching a monitor); otherwise only the caller's.
            owner: tuple[str, Any] | None = _owner()
            if subscriber is not None:
                filters["subscriber"] = subscriber
                owner = None
            message = UnsubscribeWhere(owner, filters)
        return self._ask_event_manager(message, ASK_TIMEOUT)

    def _ask_event_manager(self, message: Any, timeout: float) -> Any:
        """Ask the event manager, following it across a restart."""
        _nowait.check()
        deadline = time.monotonic() + timeout
        for _ in range(3):
            try:
                result = self._core.em.ask(
                    message, timeout=max(0.001, deadline - time.monotonic()))
            except ActorDeadError:
                result = RESTARTED
            except pykka.Timeout:
                self._check_running()
                raise TimeoutError(
                    f"the event manager did not answer within {timeout} s") from None
            if result is not RESTARTED:
                return result
            self._check_running()
            self._ask_supervisor(Sync())
        self._check_running()
        raise BramaError("the event manager keeps crashing")

    def drain(self, timeout: float = 1.0) -> None:
        """Wait until every event caused by calls that returned before now was handed over.

        Raises:
            TimeoutError: not done within ``timeout`` seconds.
        """
        self._check_running()
        check_drain_caller(self._targets)
        deadline = time.monotonic() + timeout
        futures = [
            cell.ref.ask(PING, block=False)
            for cell in list(self._cells.values())
            if cell.ref is not None and cell.inbox is not None and not cell.inbox.idle()
        ]
        _wait_all(futures, deadline)
        markers = self._ask_event_manager(Flush(), max(0.001, deadline - time.monotonic()))
        _wait_all(markers, deadline)

    # -- guarding calls (API.md section 9) --------------------------------------------
    def guard(self, identifier: str, *, scope: str | None = None,
              error_handler: Callable[[Any], Any] | None = None, register: bool = True,
              exclude: Any = (), **register_options: Any) -> GuardBlock:
        """A context manager (``with`` and ``async with``) that guards a block.

        Raises on entry ``CircuitOpenError`` when the circuit refuses the call; records
        the block's outcome on exit, with the rules of the ``circuit_breaker`` decorator.
        """
        if error_handler is not None:
            raise TypeError("error_handler= applies to decorated functions: a guard block "
                            "has no result to judge")
        if register and exclude == () and not register_options:
            # The common form: reuse one validated Guard per connection.
            key = identifier if scope is None else (scope, identifier)
            try:
                template = self._guards.get(key)
            except TypeError:
                template = None
            if template is None:
                template = Guard(identifier, scope=scope, brama=self)
                self._guards[key] = template
            return GuardBlock(template)
        return GuardBlock(Guard(identifier, scope=scope, error_handler=error_handler, brama=self,
                                register=register, exclude=exclude, **register_options))

    def _report_success_sync(self, identifier: str, scope: str | None) -> None:
        """A success applied before returning (half-open trials need it)."""
        self._call(identifier, scope, Apply(rules.Success()))

    # -- several processes (API.md section 11) --------------------------------------------
    def serve(self, address: Any = None, authkey: bytes | None = None,
              allow_remote: bool = False) -> Server:
        """Serve this system to other processes (see ``brama_actors.connect``).

        Args:
            address: a Unix socket path, or a ``(host, port)`` on loopback; ``None``
                makes a socket in a fresh private (0700) directory.
            authkey: the shared secret; ``None`` generates 32 random bytes.
            allow_remote: allow a non-loopback host.

        Raises:
            ValueError: a non-loopback host without ``allow_remote``.
            TypeError: a bad address or authkey.
        """
        self._check_running()
        server = Server(self, address, authkey, allow_remote)
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._servers.append(server)
        if stopped:
            server.close()
            raise SystemStopped("this Brama system is stopped")
        return server

    # -- test seam -----------------------------------------------------------------------
    def _inject_crash(self, identifier: str, *, scope: str | None = None, times: int = 1) -> None:
        self._call(identifier, scope, ArmCrash(times))

    def _inject_event_manager_crash(self, times: int = 1) -> None:
        self._ask_event_manager(ArmCrash(times), ASK_TIMEOUT)


def _wait_all(futures: Iterable[Any], deadline: float) -> None:
    for future in futures:
        remaining = deadline - time.monotonic()
        try:
            future.get(timeout=max(0.0, remaining))
        except pykka.Timeout:
            raise TimeoutError("drain did not complete in time") from None
        except ActorDeadError:
            pass


_START_TOKEN = object()
_SUCCESS = EventType.SUCCESS


def _forget_default(brama: Brama) -> None:
    from brama_actors._system import _default

    _default.forget(brama)


