"""The event side of one system: its event manager, interest table, pacing and telemetry.

Whatever decides circuits (connection actors, a node's replica, a fleet's stream reader)
hands events here and never waits for a subscriber. The hub owns the one event manager
actor and what other threads need to know about it: which events anybody wants (so
nobody builds the rest), how far behind it is (so reporters can be paced), and the
telemetry runner it feeds.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any

import pykka
from pykka import ActorDeadError, ActorRef

from brama_actors._delivery import _telemetry
from brama_actors._delivery._interest import Interest
from brama_actors._delivery._manager import (
    DRAIN,
    EventManager,
    Flush,
    FlushBatch,
    Subscribe,
    Unsubscribe,
    UnsubscribeWhere,
)
from brama_actors._delivery._runners import HandlerTarget, TelemetryCall, TelemetryTarget
from brama_actors._delivery._subscription import Subscription
from brama_actors._delivery._transition_log import TransitionLog
from brama_actors._errors import BramaError, SystemStopped
from brama_actors._events import Event, EventType
from brama_actors._frozen import make_constructor
from brama_actors._runtime import Timer, _nowait, current_actor
from brama_actors._runtime._context import Context
from brama_actors._runtime._crash import RESTARTED, ArmCrash

__all__ = ["ASK_TIMEOUT", "EM_HIGH_WATER", "EM_LOW_WATER", "EM_WAIT", "Delivery", "wait_all"]

logger = logging.getLogger("brama_actors")

# Every reported event is built here: without __init__'s per-field cost (``_frozen``).
_new_event = make_constructor(Event)

#: Seconds any internal ask waits before giving up; generous, since actors never block.
ASK_TIMEOUT = 10.0
#: Back-pressure: when the event manager has more than EM_HIGH_WATER messages queued,
#: reporting threads (never the pool's workers) wait until it is under EM_LOW_WATER, for
#: at most EM_WAIT seconds; after a wait in vain, nobody waits again until it has moved.
EM_HIGH_WATER = 500
EM_LOW_WATER = 125
EM_WAIT = 1.0

#: (event type, data) pairs, as the rules produce them.
EventSpec = tuple[EventType, dict[str, Any]]


class Delivery:
    """The event manager of one system and what other threads know about it.

    Args:
        context: the system's shared runtime.
        on_crash: called with a reason when the event manager crashed and recovered in
            place (the supervisor counts it as a restart and may give up).
        sync: waits until the supervisor has caught up (after a crash), or raises
            ``SystemStopped``.
    """

    def __init__(self, context: Context, on_crash: Callable[[str], None],
                 sync: Callable[[], None]) -> None:
        self.context = context
        self._on_crash = on_crash
        self._sync = sync
        # Replaced by the event manager when it rebuilds its indexes; read by emitters.
        self.interest = Interest.NONE
        # Pacing: runs of the manager so far, threads waiting, and the run count when a
        # wait last timed out.
        self._space = threading.Condition(threading.Lock())
        self._runs = 0
        self._waiting = 0
        self._stalled_at = -1
        self._telemetry: TelemetryTarget | None = None
        self._telemetry_lock = threading.Lock()
        # The system's own state_change subscription (log_transitions), if on.
        self._log: Subscription | None = None
        self._log_targets: list[HandlerTarget] = []  # every one started, joined on stop
        self._log_lock = threading.Lock()
        # Event ids of this system: "<system name>:<n>". next() on a count is atomic
        # under the GIL and costs ~30 ns, only for events somebody wants.
        self._event_ids = itertools.count(1)
        # The system's name repeats across processes (brama-1 in each); a random part
        # keeps local event ids unique across the machines of a fleet and restarts.
        self._id_prefix = f"{context.name}-{uuid.uuid4().hex[:12]}:"
        # Event groups waiting for the manager, which takes them all at once (``take``);
        # ``_signalled``: a Drain is on its way. Why: a message per report cost the
        # reporter a tell and the manager a turn of its loop for each event; now a
        # report appends under a lock, and one Drain carries what queued meanwhile.
        self._queued: list[tuple[Event, ...]] = []
        self._queued_lock = threading.Lock()
        self._signalled = False
        # Last: the event manager starts running at once and reads the fields above.
        self.ref: ActorRef[EventManager] = EventManager.start(context.pool, self)
        self._inbox = self.ref.actor_inbox

    # -- emitting ------------------------------------------------------------------------
    def emit(self, identifier: str, scope: str | None, specs: Iterable[EventSpec],
             now: int) -> None:
        """Build the events somebody wants (all of them for telemetry) and hand them over."""
        if _telemetry.HANDLERS:
            wanted = list(specs)
        else:
            interest = self.interest
            wanted = [s for s in specs if interest.wants(s[0], identifier, scope)]
            if not wanted:
                return  # nobody listens: build nothing, send nothing
        ids, prefix = self._event_ids, self._id_prefix
        self.publish(tuple([
            _new_event(kind, now, identifier, scope, MappingProxyType(data),
                       f"{prefix}{next(ids)}")
            for kind, data in wanted
        ]))

    def publish(self, events: tuple[Event, ...]) -> None:
        """Hand built events to the event manager (it recovers from crashes in place).

        Called in per-connection order (by the connection's actor, or a reporter holding
        it), so appending to one queue keeps each connection's events in order.
        """
        with self._queued_lock:
            self._queued.append(events)
            if self._signalled:
                return  # the Drain already in the manager's inbox takes these too
            try:
                # Told under the lock: whoever sees _signalled finds the Drain queued
                # ahead of anything it tells the manager later (stop, unsubscribe).
                self.ref.tell(DRAIN)
            except ActorDeadError:
                lost, self._queued = self._queued, []
            else:
                self._signalled = True  # only once the Drain is really on its way
                return
        if not self.context.stopping:
            logger.error("the event manager is gone; %d event group(s) not delivered",
                         len(lost))

    def take(self) -> tuple[Event, ...]:
        """Every event queued for the manager, in order (the manager's Drain calls it)."""
        with self._queued_lock:
            groups = self._queued
            self._queued = []
            self._signalled = False
        if len(groups) == 1:
            return groups[0]
        return tuple(itertools.chain.from_iterable(groups))

    def wants_success(self, identifier: str, scope: str | None) -> bool:
        """True if a ``success`` event of this connection could reach anybody."""
        interest = self.interest
        return bool(_telemetry.HANDLERS) or (
            interest.successes and interest.wants(EventType.SUCCESS, identifier, scope))

    # -- back-pressure -------------------------------------------------------------------
    def backlog(self) -> int:
        """Messages and event groups queued for the event manager."""
        return len(self._queued) + self._inbox.backlog()  # type: ignore[attr-defined, no-any-return]

    def pace(self) -> None:
        """Let the event manager catch up if reporters outrun it (called before a report).

        Why: a report is applied in the caller's thread when its actor is idle, so
        reporting threads can produce events faster than one manager fans them out; its
        inbox would grow without bound. Pool workers never wait (the manager needs them),
        and a manager that makes no progress (a filter that blocks) delays reporters once
        by EM_WAIT, not on every call.
        """
        if self.backlog() <= EM_HIGH_WATER or current_actor() is not None:
            return
        if self._runs == self._stalled_at or self.context.stopping:
            return
        _nowait.check()  # asyncio callers wait off their loop instead
        with self._space:
            self._waiting += 1
            try:
                if not self._space.wait_for(self._caught_up, EM_WAIT):
                    self._stalled_at = self._runs
                    logger.warning("the event manager is %d messages behind and made no "
                                   "progress in %.1f s; reporters no longer wait for it",
                                   self.backlog(), EM_WAIT)
            finally:
                self._waiting -= 1

    def _caught_up(self) -> bool:
        return self.backlog() < EM_LOW_WATER or self.context.stopping

    def manager_yielded(self) -> None:
        """Called by the event manager after each run: wake paced reporters if due."""
        self._runs += 1
        if self._waiting and self._caught_up():
            with self._space:
                self._space.notify_all()

    def release_paced(self) -> None:
        """Wake every paced reporter (the system is stopping)."""
        with self._space:
            self._space.notify_all()

    # -- what the event manager asks of the system ---------------------------------------
    def manager_crashed(self, reason: str) -> None:
        """The event manager crashed and recovered in place."""
        self._on_crash(reason)

    def telemetry(self) -> TelemetryTarget:
        """The system's telemetry runner, started on first use."""
        target = self._telemetry
        if target is None:
            with self._telemetry_lock:
                target = self._telemetry
                if target is None:
                    target = self._telemetry = TelemetryTarget(
                        f"{self.context.name}-telemetry")
        return target

    @property
    def telemetry_target(self) -> TelemetryTarget | None:
        """The telemetry runner if it was started."""
        return self._telemetry

    def fire(self, name: tuple[str, ...], measurements: dict[str, Any],
             metadata: dict[str, Any]) -> None:
        """Run telemetry on the telemetry thread (never inside an actor)."""
        if _telemetry.HANDLERS:
            self.telemetry().fire(TelemetryCall(name, measurements, metadata))

    def schedule_batch_flush(self, subscription_id: int, token: int, delay: int) -> Timer:
        """Flush a subscription's batch ``delay`` ms from now (system clock)."""
        def fire() -> list[Any] | None:
            try:
                return [self.ref.ask(FlushBatch(subscription_id, token), block=False)]
            except ActorDeadError:
                return None

        context = self.context
        return context.scheduler.schedule(context.clock.now() + delay, fire)

    # -- the transition log ---------------------------------------------------------------
    def log_transitions(self, enabled: bool) -> None:
        """Turn the system's transition log on or off (``log_transitions`` option).

        The log is a handler subscription owned by the system itself (not by the thread
        that started it), so a user's ``unsubscribe()`` never removes it, and the user's
        subscriptions listed by the exporters never include it.
        """
        with self._log_lock:
            current = self._log
            if enabled and current is None:
                target = HandlerTarget(TransitionLog(), 10_000, f"{self.context.name}-log",
                                       "transition log")
                sub = Subscription(None, target, events=frozenset({EventType.STATE_CHANGE}),
                                   connection=None, scope=None, filter=None, subscriber=None,
                                   owner=("system", self.context.name))
                try:
                    self.subscribe(sub)
                except BaseException:
                    target.close()
                    raise
                self._log = sub
                self._log_targets = [t for t in self._log_targets if t.running]
                self._log_targets.append(target)
            elif not enabled and current is not None:
                self._log = None
                self.unsubscribe(current)

    @property
    def log_targets(self) -> list[HandlerTarget]:
        """The transition log's handler runners not yet ended (closed on stop)."""
        return list(self._log_targets)

    def subscriptions(self) -> list[Subscription]:
        """The users' subscriptions, read without asking the event manager.

        Every subscription sits in one of the interest indexes the manager publishes
        (by connection, else by scope, else by each of its event types); each read
        below is one atomic copy, as for ``Interest.wants``. The system's own transition
        log is left out: it is not the users' to see.
        """
        interest = self.interest
        lists = [*list(interest._by_type.values()), *list(interest._by_connection.values()),
                 *list(interest._by_scope.values())]
        found: dict[int, Subscription] = {}
        for subs in lists:
            for sub in list(subs):
                found[sub.id] = sub
        log = self._log
        if log is not None:
            found.pop(log.id, None)
        return [found[key] for key in sorted(found)]

    # -- subscriptions -------------------------------------------------------------------
    def subscribe(self, subscription: Subscription) -> None:
        """Add a subscription; it is active when this returns."""
        self.ask(Subscribe(subscription), ASK_TIMEOUT)

    def unsubscribe(self, subscription: Subscription) -> bool:
        """Remove one subscription; False if it was gone."""
        return bool(self.ask(Unsubscribe(subscription.id), ASK_TIMEOUT))

    def unsubscribe_where(self, owner: tuple[str, Any] | None,
                          filters: dict[str, Any]) -> int:
        """Remove the subscriptions of ``owner`` (None: anybody's) matching ``filters``."""
        return int(self.ask(UnsubscribeWhere(owner, filters), ASK_TIMEOUT))

    def flush(self, deadline: float) -> None:
        """Flush batches and wait until every target handled what it was given."""
        markers = self.ask(Flush(), max(0.001, deadline - time.monotonic()))
        wait_all(markers, deadline)

    def ask(self, message: Any, timeout: float) -> Any:
        """Ask the event manager, following it across a crash it recovers from.

        Raises:
            TimeoutError: no answer within ``timeout`` seconds.
            SystemStopped: the system stopped meanwhile.
        """
        _nowait.check()
        deadline = time.monotonic() + timeout
        for _ in range(3):
            try:
                result = self.ref.ask(message,
                                      timeout=max(0.001, deadline - time.monotonic()))
            except ActorDeadError:
                result = RESTARTED
            except pykka.Timeout:
                self._check_running()
                raise TimeoutError(
                    f"the event manager did not answer within {timeout} s") from None
            if result is not RESTARTED:
                return result
            self._check_running()
            self._sync()
        self._check_running()
        raise BramaError("the event manager keeps crashing")

    def _check_running(self) -> None:
        if self.context.stopping:
            raise SystemStopped("this Brama system is stopped")

    def inject_crash(self, times: int) -> None:
        """Test seam: crash the event manager at its next ``times`` messages."""
        self.ask(ArmCrash(times), ASK_TIMEOUT)

    def stop(self) -> Any:
        """Stop the event manager (it flushes pending batches); returns its stop future."""
        self.release_paced()
        return self.ref.stop(block=False)


def wait_all(futures: Iterable[Any], deadline: float) -> None:
    """Wait for every future until ``deadline`` (monotonic seconds).

    Raises:
        TimeoutError: one was not done in time.
    """
    for future in futures:
        remaining = deadline - time.monotonic()
        try:
            future.get(timeout=max(0.0, remaining))
        except pykka.Timeout:
            raise TimeoutError("drain did not complete in time") from None
        except ActorDeadError:
            pass
