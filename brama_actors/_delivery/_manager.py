"""The event manager actor: the subscription table, its indexes, and fan-out.

Subscriptions are indexed by connection (or else scope) and by event type, so the cost
of one event follows the subscriptions it can match, not all that exist. Delivery only
appends to each target's queue or tells an actor; it never waits on a subscriber.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brama_actors._delivery import _telemetry
from brama_actors._delivery._interest import ALL_TYPES, Interest
from brama_actors._delivery._subscription import Subscription
from brama_actors._delivery._targets import Target
from brama_actors._events import CRITICAL_EVENTS, Event, EventType
from brama_actors._runtime import Pool, PooledActor, Timer
from brama_actors._runtime._crash import RESTARTED, ArmCrash, InjectedCrash

if TYPE_CHECKING:
    from brama_actors._delivery._hub import Delivery

__all__ = [
    "EventManager",
    "Flush",
    "FlushBatch",
    "Publish",
    "Subscribe",
    "Unsubscribe",
    "UnsubscribeWhere",
]

logger = logging.getLogger("brama_actors")

_ALL_TYPES = ALL_TYPES


@dataclass(frozen=True, slots=True)
class Subscribe:
    subscription: Subscription


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    subscription_id: int


@dataclass(frozen=True, slots=True)
class UnsubscribeWhere:
    owner: tuple[str, Any] | None
    filters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Publish:
    events: tuple[Event, ...]


class Drain:
    """Take the event groups the system queued (``Delivery.take``) and fan them out.

    Reporters queue their events and send one ``Drain`` only when none is on its way:
    one message per run of the manager, not one per report.
    """

    __slots__ = ()


DRAIN = Drain()


@dataclass(frozen=True, slots=True)
class FlushBatch:
    """A batch timer fired: flush that subscription's batch if it is still the same."""

    subscription_id: int
    token: int


class Flush:
    """Flush pending batches; reply with futures that resolve once every target
    handled what it was given."""

    __slots__ = ()


def _kinds(sub: Subscription) -> Iterable[EventType]:
    return sub.events if sub.events is not None else _ALL_TYPES


class _Batch:
    __slots__ = ("events", "timer", "token")

    def __init__(self, token: int) -> None:
        self.events: list[Event] = []
        self.timer: Timer | None = None
        self.token = token


class EventManager(PooledActor):
    """Holds the subscriptions of one system and fans events out to them.

    A crash while handling a message is recovered in place: the supervisor is told (it
    counts the restart and may give up), the indexes are rebuilt from the subscription
    table, unflushed batches go to their own targets, and the critical events of the
    message being handled are delivered again (at least once). The actor, its ref and
    its inbox stay the same, so nothing told to it meanwhile is refused or reordered.

    Args:
        pool: the pool that runs it.
        hub: the system's event hub (interest table, telemetry runner, pacing).
    """

    def __init__(self, pool: Pool, hub: Delivery) -> None:
        super().__init__(pool)
        self._hub = hub
        self._subs: dict[int, Subscription] = {}
        self._reset_indexes()
        self._filter_warned: set[int] = set()
        self._batches: dict[int, _Batch] = {}
        self._tokens = itertools.count(1)
        self._crashes_armed = 0
        # What the Drain being handled took (redelivered if it crashes), else None.
        self._taken: tuple[Event, ...] | None = None
        # Targets delivered to quietly in this run, woken once in on_yield.
        self._owed: dict[Target, None] = {}

    def _reset_indexes(self) -> None:
        # Subscriptions without a connection or scope: one list per event type. Those
        # filtered by connection (else scope): one list per connection (scope), whatever
        # their types, checked at delivery. Why: a list per type and connection cost
        # ~1.3 KiB per connection-filtered subscription, and such lists are short.
        self._by_connection: dict[str, list[Subscription]] = {}
        self._by_scope: dict[str, list[Subscription]] = {}
        self._by_type: dict[EventType, list[Subscription]] = {t: [] for t in _ALL_TYPES}
        self._interest = Interest(self._by_type, self._by_connection, self._by_scope)

    # -- table -------------------------------------------------------------------------
    def table(self) -> list[Subscription]:
        """The subscriptions, in creation order (for diagnostics and tests, via a proxy)."""
        return list(self._subs.values())

    def _buckets(self, sub: Subscription) -> Iterable[list[Subscription]]:
        if sub.connection is not None:
            return (self._by_connection.setdefault(sub.connection, []),)
        if sub.scope is not None:
            return (self._by_scope.setdefault(sub.scope, []),)
        by_type = self._by_type
        return [by_type[kind] for kind in _kinds(sub)]

    def _add(self, sub: Subscription, publish: bool = True) -> None:
        if sub.id in self._subs:
            return  # a retried Subscribe after a crash
        self._subs[sub.id] = sub
        for bucket in self._buckets(sub):
            bucket.append(sub)
        self._interest.count(_kinds(sub), 1)
        if publish:
            self._publish_interest()

    def _forget_empty(self, sub: Subscription) -> None:
        """Drop a connection's or scope's list once its last subscription is gone."""
        if sub.connection is not None:
            if not self._by_connection.get(sub.connection, True):
                del self._by_connection[sub.connection]
        elif sub.scope is not None and not self._by_scope.get(sub.scope, True):
            del self._by_scope[sub.scope]

    def _publish_interest(self) -> None:
        self._hub.interest = self._interest

    def _remove(self, sub: Subscription) -> bool:
        if self._subs.pop(sub.id, None) is None:
            return False
        for bucket in self._buckets(sub):
            bucket.remove(sub)
        self._forget_empty(sub)
        self._interest.count(_kinds(sub), -1)
        self._filter_warned.discard(sub.id)
        self._flush_batch(sub)
        sub.target.close()
        self._publish_interest()
        return True

    # -- messages ----------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        if self._crashes_armed and type(message) is not ArmCrash:
            self._crashes_armed -= 1
            return self._crash(InjectedCrash("crash injected through the test seam"), message)
        try:
            return self._handle(message)
        except BaseException as exc:  # even KeyboardInterrupt: restart, never strand it
            return self._crash(exc, message)

    def _handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is Drain:
            self._taken = events = self._hub.take()
            self._publish(events)
            self._taken = None
            return None
        if kind is Publish:
            self._publish(message.events)
            return None
        if kind is FlushBatch:
            sub = self._subs.get(message.subscription_id)
            batch = self._batches.get(message.subscription_id)
            if sub is not None and batch is not None and batch.token == message.token:
                self._flush_batch(sub)
            return None
        if kind is Subscribe:
            self._add(message.subscription)
            return None
        if kind is Unsubscribe:
            sub = self._subs.get(message.subscription_id)
            return sub is not None and self._remove(sub)
        if kind is UnsubscribeWhere:
            return self._remove_where(message.owner, message.filters)
        if kind is Flush:
            # Events reported before the flush was asked for are behind a Drain that is
            # ahead of it in this inbox (Delivery.publish tells it under its lock).
            self.on_yield()
            for sub in list(self._subs.values()):
                self._flush_batch(sub)
            markers = [s.target.marker() for s in self._subs.values()]
            telemetry = self._hub.telemetry_target
            if telemetry is not None:
                markers.append(telemetry.marker())
            return [m for m in markers if m is not None]
        if kind is ArmCrash:
            self._crashes_armed = message.times
            return None
        # Unknown messages are logged, not raised: a raise in a tell handler would stop
        # this actor, and nothing restarts the supervisor or a manager stopped that way.
        logger.warning("%s ignored an unexpected message %r", type(self).__name__, message)
        return None

    def _remove_where(self, owner: tuple[str, Any] | None, filters: dict[str, Any]) -> int:
        doomed = []
        for sub in self._subs.values():
            if owner is not None and sub.owner != owner:
                continue
            if any(getattr(sub, name) != value for name, value in filters.items()):
                continue
            doomed.append(sub)
        for sub in doomed:
            self._remove(sub)
        return len(doomed)

    def on_stop(self) -> None:
        # Events reported while the stop was on its way (their Drain is refused).
        events = self._hub.take()
        if events:
            self._publish(events)
        for sub in list(self._subs.values()):
            self._flush_batch(sub)
            sub.target.close()

    def _crash(self, exc: BaseException, message: Any) -> object:
        """Recover in place from a crash while handling ``message``."""
        logger.error("event manager crashed: %r; restarting it with its subscriptions", exc,
                     exc_info=not isinstance(exc, InjectedCrash))
        self._hub.manager_crashed(repr(exc))
        # Rebuild what the crash may have left half-updated from the table itself.
        table = list(self._subs.values())
        self._subs = {}
        self._reset_indexes()
        self._filter_warned.clear()
        for sub in table:
            self._add(sub, publish=False)
        self._publish_interest()
        # Unflushed batches hold older events: hand them over first, in order.
        for sub in table:
            self._flush_batch(sub)
        taken, self._taken = self._taken, None
        if taken is not None:  # crashed fanning out what a Drain took: as for a Publish
            message = Publish(taken)
        elif type(message) is Drain:  # crashed before taking (an injected crash)
            message = Publish(self._hub.take())
        if type(message) is Publish:
            critical = tuple(e for e in message.events if e.event in CRITICAL_EVENTS)
            if critical:
                try:
                    self._publish(critical)
                except Exception:
                    logger.exception("event manager could not redeliver %d critical "
                                     "event(s) after a crash", len(critical))
        return RESTARTED

    # -- fan-out -----------------------------------------------------------------------
    def _publish(self, events: tuple[Event, ...]) -> None:
        by_connection = self._by_connection
        by_scope = self._by_scope
        by_type = self._by_type
        dead: list[Subscription] = []
        if _telemetry.HANDLERS:
            self._hub.telemetry().deliver(events)
        for event in events:
            kind = event.event
            candidates = by_type[kind]
            if by_connection and event.connection is not None:
                extra = by_connection.get(event.connection)
                if extra:
                    candidates = candidates + extra
            if by_scope and event.scope is not None:
                extra = by_scope.get(event.scope)
                if extra:
                    candidates = candidates + extra
            for sub in candidates:
                if sub.events is not None and kind not in sub.events:
                    continue
                if sub.scope is not None and event.scope != sub.scope:
                    continue
                if sub.filter is not None and not self._guarded_filter(sub, event):
                    continue
                if sub.batch_size is not None or sub.batch_timeout is not None:
                    self._batch(sub, event)
                    continue
                delivered = sub.target.deliver_quietly(event)
                if delivered is None:
                    self._owed[sub.target] = None
                elif not delivered:
                    dead.append(sub)
        for sub in dead:
            self._remove(sub)

    def on_yield(self) -> None:
        """Wake every reader delivered to since the last wake, once each."""
        self._hub.manager_yielded()
        owed = self._owed
        while owed:
            target = next(iter(owed))
            del owed[target]
            try:
                target.wake()
            except Exception:
                logger.exception("waking the reader of %r failed", target)

    def _batch(self, sub: Subscription, event: Event) -> None:
        batch = self._batches.get(sub.id)
        if batch is None:
            batch = self._batches[sub.id] = _Batch(next(self._tokens))
        batch.events.append(event)
        sub.batched = len(batch.events)
        if sub.batch_size is not None and len(batch.events) >= sub.batch_size:
            self._flush_batch(sub)
        elif len(batch.events) == 1 and sub.batch_timeout is not None:
            batch.timer = self._hub.schedule_batch_flush(sub.id, batch.token,
                                                          sub.batch_timeout)

    def _flush_batch(self, sub: Subscription) -> None:
        batch = self._batches.pop(sub.id, None)
        if batch is None:
            return
        sub.batched = 0
        if batch.timer is not None:
            batch.timer.cancel()
        if batch.events and not sub.target.deliver(tuple(batch.events)):
            self._remove(sub)

    def _guarded_filter(self, sub: Subscription, event: Event) -> bool:
        try:
            return bool(sub.filter(event))  # type: ignore[misc]
        except Exception:
            if sub.id not in self._filter_warned:
                self._filter_warned.add(sub.id)
                logger.exception(
                    "filter of %r raised; treated as no match (logged once per subscription)",
                    sub,
                )
            return False
