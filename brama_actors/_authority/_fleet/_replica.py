"""The replica: what one system knows of the fleet's circuits, read without a round trip.

The stream tail applies every entry's post-state here; a caller applies the reply of
its own script at once (read-your-writes), before the tail gets to the same entry.
Each circuit's entries carry ``ver`` (one per stream entry, fleet-wide): a state is
applied only if it is newer than the newest this system has seen for that circuit
(``floor``), so a late tail entry never rolls back a reply, and a removal is not undone
by an older entry.

The floors start over at every snapshot: versions can go back without a new Redis
(its ``meta`` hash lost, a failover that lost writes), and a floor from before would
keep a state the fleet no longer has. Only the replies applied while the snapshot was
being read keep theirs (they are newer than what the snapshot may show).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from brama_actors._config import Settings, resolve_settings
from brama_actors._keys import Key
from brama_actors._status import CircuitState, ConnectionStatus, evolve

__all__ = ["Entry", "Replica"]

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN


class Entry:
    """One circuit as this system last knew it; replaced whole, never changed in place.

    It is also the circuit's *view* (the authority protocol's ``View``): ``available``
    and ``quiet`` for the hot path; ``slow`` the ms from which a success is slow when a
    rate window records it (the guard then times its calls), else None; ``windowed``
    whether a rate rule applies (read per quiet success: ``Settings.windowed`` is a
    property). ``batching``: what ``_pending`` derives from the status for its quiet
    successes, set there on first use (an entry never changes, so neither does that).
    """

    __slots__ = ("available", "batching", "explicit", "gen", "quiet", "settings", "slow",
                 "state", "status", "ver", "windowed", "xver")

    def __init__(self, status: ConnectionStatus, explicit: Mapping[str, Any],
                 settings: Settings, gen: int, ver: int, xver: int = 0) -> None:
        self.status = status
        self.explicit = explicit
        self.settings = settings
        self.gen = gen
        self.ver = ver
        #: The ver of the entry ``explicit`` (and the metadata) came from; 0: unknown
        #: (a step's reply that overtook the registration).
        self.xver = xver
        self.state = status.state
        self.available = status.state is not _OPEN
        self.quiet = status.state is _CLOSED and status.failure_count == 0
        self.windowed = settings.windowed
        self.slow: int | None = settings.slow_call_duration if self.windowed else None
        self.batching: Any = None

    def __repr__(self) -> str:
        return f"<fleet Entry {self.state} ver={self.ver}>"

    def with_status(self, status: ConnectionStatus, gen: int, ver: int) -> Entry:
        """The same circuit in a later state (settings unchanged)."""
        return Entry(status, self.explicit, self.settings, gen, ver, self.xver)


class Replica:
    """Key -> :class:`Entry` for every circuit of the fleet, and what this system adds.

    ``entries`` is the authority's ``views``: a plain dict, read without a lock.
    Writers hold ``lock``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[Key, Entry] = {}
        #: The newest ``ver`` seen per circuit, removals included.
        self.floor: dict[Key, int] = {}
        #: Successes this system counted without Redis (a closed circuit with no
        #: failures): key -> [count, last time]. Added to ``status()`` here only.
        self.quiet: dict[Key, list[int]] = {}
        #: Refused guarded calls and ignored outcomes counted here: key -> [rej, ign].
        self.tallies: dict[Key, list[int]] = {}
        #: While a snapshot is read: the keys whose state was applied meanwhile.
        self._recent: set[Key] | None = None
        #: What ``status()`` starts from (key, entry) -> status: the entry's status
        #: unless set (the fleet authority adds its batches of quiet successes, and
        #: a rate window's figures as of the read: ``_pending.Pending.overlay``).
        self.overlay: Callable[[Key, Entry], ConnectionStatus] | None = None

    def raise_floor(self, key: Key, ver: int) -> None:
        """Count ``key``'s entries up to ``ver`` as seen without applying them."""
        with self.lock:
            self.floor[key] = max(ver, self.floor.get(key, 0))

    def apply(self, key: Key, status: ConnectionStatus | None, gen: int, ver: int,
              explicit: Mapping[str, Any] | None = None, fresh: bool = False) -> bool:
        """Apply a circuit's state at ``ver`` (None: removed); False if it is stale.

        ``explicit``: the circuit's explicit options, when the entry carries them
        (register, configure, snapshot). ``fresh``: a new registration (local counts
        of an earlier registration of the key are dropped).
        """
        with self.lock:
            if ver <= self.floor.get(key, 0):
                if explicit is not None and status is not None:
                    self._complete(key, status, explicit, ver, fresh)
                return False
            self.floor[key] = ver
            if self._recent is not None:
                self._recent.add(key)
            if status is None:
                self.entries.pop(key, None)
                self.quiet.pop(key, None)
                self.tallies.pop(key, None)
                return True
            old = self.entries.get(key)
            if fresh:
                self.quiet.pop(key, None)
                self.tallies.pop(key, None)
            if explicit is not None or old is None:
                given = dict(explicit or {})
                self.entries[key] = Entry(status, given, resolve_settings(given), gen, ver,
                                          0 if explicit is None else ver)
            else:
                self.entries[key] = old.with_status(status, gen, ver)
            return True

    def _complete(self, key: Key, status: ConnectionStatus, explicit: Mapping[str, Any],
                  ver: int, fresh: bool) -> None:
        """A registration or configure older than the circuit's state here (a reply
        overtook it): its options (and a registration's metadata) are still newer than
        what the state here came with, and only such entries carry them (holding
        ``lock``)."""
        old = self.entries.get(key)
        if old is not None and ver > old.xver:
            given = dict(explicit)
            # dataclasses.replace, not evolve: it keeps the status's own type (a
            # WindowedStatus keeps its window; evolve builds a plain ConnectionStatus).
            current = replace(old.status, metadata=status.metadata) if fresh else old.status
            self.entries[key] = Entry(current, given, resolve_settings(given), old.gen,
                                      old.ver, ver)

    def count_quiet(self, key: Key, now: int) -> None:
        """Count a success that changed nothing in the fleet."""
        with self.lock:
            counts = self.quiet.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] = max(counts[1], now)

    def tally(self, key: Key, what: str) -> None:
        """Count a refused call (``"rejected"``) or an ignored outcome (``"ignored"``)."""
        with self.lock:
            counts = self.tallies.setdefault(key, [0, 0])
            counts[0 if what == "rejected" else 1] += 1

    def status(self, key: Key) -> ConnectionStatus | None:
        """The circuit's status with this system's own counts merged in."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        overlay = self.overlay
        status = entry.status if overlay is None else overlay(key, entry)
        with self.lock:
            quiet = self.quiet.get(key)
            tallies = self.tallies.get(key)
            if quiet is not None:
                status = evolve(status, total_successes=status.total_successes + quiet[0],
                                last_success_time=max(quiet[1], status.last_success_time or 0))
            if tallies is not None:
                status = evolve(status, total_rejections=tallies[0], total_ignored=tallies[1])
        return status

    def begin_snapshot(self) -> None:
        """A snapshot is about to be read: note what is applied until :meth:`load`."""
        with self.lock:
            self._recent = set()

    def load(self, ver: int, circuits: list[tuple[Key, ConnectionStatus, Mapping[str, Any],
                                                  int, int]],
             keep: set[Key]) -> list[Key]:
        """Replace the replica by a snapshot whose head was read at ``ver``; the keys it
        removed.

        The floors start over, except for circuits applied since :meth:`begin_snapshot`
        (a reply newer than the snapshot may be). ``keep``: circuits this system owes
        the fleet (registered here while Redis was unreachable), kept though absent.
        """
        with self.lock:
            recent = self._recent or set()
            self._recent = None
            self.floor = {k: v for k, v in self.floor.items() if k in recent}
        seen = set()
        for key, status, explicit, gen, circuit_ver in circuits:
            seen.add(key)
            self.apply(key, status, gen, circuit_ver, explicit)
        gone = []
        with self.lock:
            for key in list(self.entries):
                if key not in seen and key not in keep and self.floor.get(key, 0) <= ver:
                    self.entries.pop(key)
                    self.floor[key] = ver
                    gone.append(key)
        return gone
