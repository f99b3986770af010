"""What a fleet system decides on its own while its Redis is unreachable
(``when_unreachable="local"``), and what it owes the fleet when Redis answers again.

Ops are decided here with the shared rules (``brama_actors._rules``) from the last fleet
state; their events carry ``data["origin"] == "local"``, and the fleet's state wins when
Redis is back (the next snapshot replaces them; nothing is replayed).

A circuit registered here meanwhile exists here at once, from the options given, and is
*owed*: created in Redis when the link is back, after the snapshot, unless the fleet
has it by then (its state wins). A Redis that came back without its data (a new
incarnation, or versions that went back) is owed every circuit registered through this
system that it no longer has: the fleet re-creates its circuits from what its systems
know. Their state starts over (closed, no counts); local history is not replayed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brama_actors import _rules as rules
from brama_actors._authority._fleet._replica import Entry
from brama_actors._config import Settings
from brama_actors._errors import NodeUnavailable
from brama_actors._keys import Key, describe_key, not_found, split_key
from brama_actors._rules import EventSpec
from brama_actors._status import ConnectionStatus

if TYPE_CHECKING:
    from brama_actors._authority._fleet._authority import FleetAuthority

__all__ = ["Offline", "Owed"]

logger = logging.getLogger("brama_actors")


@dataclass(frozen=True, slots=True)
class Owed:
    """A circuit to create in Redis: what its registration said.

    Attributes:
        kind: the connection's type.
        explicit: its explicit options (the system's defaults and ``register``'s).
        metadata: its metadata.
    """

    kind: str
    explicit: Mapping[str, Any]
    metadata: Mapping[str, Any] | None


class Offline:
    """Local decisions of one fleet system, and the circuits it owes the fleet.

    Args:
        owner: the fleet authority (its replica, delivery, clock and ``create``).
    """

    def __init__(self, owner: FleetAuthority) -> None:
        self._owner = owner
        #: Circuits to create in Redis once it answers (key -> what to create).
        self.owed: dict[Key, Owed] = {}
        #: True from the moment ``settle`` found nothing left to create (the link is
        #: up, or about to be) until the link goes down (``link_down``): a circuit
        #: registered here then is created in Redis by its caller, never owed, since
        #: no resync would come to create it. Both under ``_lock``.
        self.settled = False
        self._lock = threading.Lock()

    def link_down(self) -> None:
        """The link went down: circuits registered here from now on are owed."""
        with self._lock:
            self.settled = False

    def register(self, key: Key, kind: str, explicit: Mapping[str, Any], settings: Settings,
                 metadata: Mapping[str, Any] | None) -> ConnectionStatus:
        """Register here (Redis unreachable): adopt the fleet's last known circuit, or
        create one locally and owe it to the fleet (created in Redis by the caller
        instead if the tail settled every debt meanwhile)."""
        owner = self._owner
        replica = owner.replica
        known = replica.entries.get(key)
        if known is not None:
            owner.warn_if_different(key, known.explicit, known.status.type, settings, kind,
                                    explicit)
            owner.mine.add(key)
            status = replica.status(key)
            return known.status if status is None else status
        identifier, scope = split_key(key)
        while True:
            now = owner.context.clock.now()
            status = rules.initial_status(identifier, scope, kind, settings, metadata, now)
            with self._lock:
                if not self.settled:  # a resync to come will create it
                    owner.mine.add(key)
                    with replica.lock:
                        replica.entries[key] = Entry(status, dict(explicit), settings, 0, 0)
                        self.owed[key] = Owed(kind, dict(explicit), metadata)
                        # Under the lock: before any event of a call on the new circuit.
                        owner.delivery.emit(identifier, scope, _local(
                            rules.registration_events(status, settings)), now)
                    return status
            try:  # settled: Redis answered a moment ago, and nothing will settle this one
                return owner.create(key, kind, explicit, metadata, settings)
            except NodeUnavailable:  # Redis stopped answering: owe it after all
                self.link_down()  # (a no-op if the link's change ran it already)

    def apply(self, key: Key, op: rules.Input) -> None:
        """Decide ``op`` here with the shared rules (and the circuit's local rate
        window, ``Pending.local_window``)."""
        owner = self._owner
        replica = owner.replica
        while True:
            entry = replica.entries.get(key)
            if entry is None:
                raise not_found(key)
            now = owner.context.clock.now()
            # Taken before the replica's lock, never under it: Pending's lock comes
            # first where both are held (a reply or a stream entry landing a batch).
            window = owner.pending.local_window(key, entry, now)
            with replica.lock:
                current = replica.entries.get(key)
                if current is None:
                    raise not_found(key)
                if current.settings != entry.settings:
                    continue  # replaced meanwhile by other settings: their window
                transition = rules.apply(current.status, current.settings, op, now, window)
                if transition.status is not current.status:
                    replica.entries[key] = current.with_status(transition.status,
                                                               current.gen, current.ver)
                if transition.events:
                    # Under the lock, as decided: concurrent calls' events stay in order
                    # (a failure's event after the opening another call decided first).
                    owner.delivery.emit(*split_key(key), _local(transition.events), now)
            return

    def expire_due(self) -> None:
        """Expire the openings decided here that are due (by this system's clock)."""
        now = self._owner.context.clock.now()
        for key, entry in list(self._owner.replica.entries.items()):
            due = rules.deadline(entry.status)
            if due is not None and due <= now and entry.status.opened_at is not None:
                self.apply(key, rules.Expire(entry.status.opened_at))

    def keep(self, present: set[Key], lost: bool) -> set[Key]:
        """Before a snapshot is loaded: the circuits this system owes the fleet, kept in
        the replica though the snapshot lacks them. ``present``: the snapshot's keys;
        ``lost``: Redis lost its data (then it is owed every circuit registered here)."""
        owner = self._owner
        with self._lock:
            for key in present:
                self.owed.pop(key, None)  # the fleet has it: its state wins
            if lost:
                for key in owner.mine - present:
                    entry = owner.replica.entries.get(key)
                    if entry is not None and key not in self.owed:
                        self.owed[key] = Owed(entry.status.type, entry.explicit,
                                              entry.status.metadata)
            return set(self.owed)

    def settle(self) -> None:
        """Create in Redis every circuit owed (the tail, after loading a snapshot,
        before it marks the link up), those registered here while it runs too: it
        ends only when nothing is owed, and from then on ``register`` creates in Redis
        itself (``settled``), so no registration falls between the two.

        Raises:
            NodeUnavailable: Redis stopped answering; what is left stays owed.
        """
        owner = self._owner
        while True:
            with self._lock:
                if not self.owed:
                    self.settled = True
                    return
                key, owed = next(iter(self.owed.items()))
            try:
                owner.create(key, owed.kind, owed.explicit, owed.metadata)
            except NodeUnavailable:
                raise
            except Exception:  # never again on every resync: given up, and said so
                logger.exception("connection %s could not be created in the fleet; it "
                                 "is dropped from this system's debts", describe_key(key))
            with self._lock:
                if self.owed.get(key) is owed:
                    del self.owed[key]


def _local(specs: Iterable[EventSpec]) -> list[EventSpec]:
    """Events decided on this system while Redis is unreachable: ``origin`` "local"."""
    return [(kind, {**data, "origin": "local"}) for kind, data in specs]
