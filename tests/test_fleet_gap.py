"""Entries a system's tail missed (a reconnect, a read that fell behind, a trimmed
stream) and how they still reach its subscribers (API.md section 16: every stream
entry's events exactly once to each matching subscriber, with the same ids everywhere).

The tail catches up from the stream itself; what the stream no longer has is reported
(telemetry ("brama", "fleet", "gap"), a WARNING), never invented.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from brama_actors import Brama, telemetry
from tests.fleet_helpers import WAIT, converge, documented_acl, fleet, take
from tests.redis_server import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    admin = redis_server.client()
    yield admin
    admin.close()


class Gaps:
    """Records the ("brama", "fleet", "gap") telemetry."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def __call__(self, name: tuple[str, ...], measurements: Any, metadata: Any) -> None:
        self.calls.append((dict(measurements), dict(metadata)))


@pytest.fixture
def gaps() -> Iterator[Gaps]:
    recorded = Gaps()
    telemetry.attach("fleet-gap-test", ("brama", "fleet", "gap"), recorded)
    yield recorded
    telemetry.detach("fleet-gap-test")


class Cut:
    """Cuts a system's tail off: the entries it reads are not handed over, and the
    next one it is given raises a connection error (a dropped link), once ``release``
    was called; from then on it reads as before."""

    def __init__(self, system: Brama, after: int = 0) -> None:
        self.tail = system._authority.tail  # type: ignore[union-attr]
        self._original = self.tail._entry
        self._after = after  # entries handed over before the cut
        self._gate = threading.Event()
        self._cut = False
        self.tail._entry = self._entry

    def _entry(self, raw_id: str, fields: dict[str, str]) -> bool:
        if not self._cut and self._after > 0:
            self._after -= 1
            return bool(self._original(raw_id, fields))
        if not self._cut:
            assert self._gate.wait(WAIT)
            self._cut = True
            raise redis.ConnectionError("the tail's link dropped")
        return bool(self._original(raw_id, fields))

    def release(self) -> None:
        self._gate.set()


def _fleet_events(sub: Any) -> list[tuple[str, str]]:
    return [(e.event, e.id) for e in take(sub) if e.data.get("origin") != "local"]


def test_a_disconnected_tail_delivers_the_missed_entries_once_in_order_with_their_ids(
        redis_server: RedisServer, client: redis.Redis, gaps: Gaps) -> None:
    """While b's tail is cut off, a opens and closes a circuit: when b's tail is back
    it catches up from the stream and delivers those events once, in order, with the
    ids a delivered them with; nothing was lost, so no gap is reported."""
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        a.register("db", max_attempts=1)
        converge(systems, client, ns)
        subs = [s.subscribe(connection="db") for s in systems]
        cut = Cut(b)
        a.failure("db")
        a.close_circuit("db")
        a.failure("db")
        assert b.status("db").state == "closed"  # b's tail is behind
        cut.release()
        converge(systems, client, ns)
        seen_a, seen_b = _fleet_events(subs[0]), _fleet_events(subs[1])
        assert [name for name, _ in seen_a].count("circuit_opened") == 2
        assert "circuit_closed" in [name for name, _ in seen_a]
        assert seen_b == seen_a
        assert len({i for _, i in seen_b}) == len(seen_b)  # no duplicates
        assert all(":" in i and "-" in i.split(":")[0] for _, i in seen_b)  # stream ids
        assert b.status("db").state == "open"
        assert gaps.calls == []


def test_a_catch_up_that_overlaps_what_was_delivered_delivers_nothing_twice(
        redis_server: RedisServer, client: redis.Redis, gaps: Gaps) -> None:
    """The link drops in the middle of a batch the tail read: the catch-up starts after
    the last entry handed over; and a resync with nothing missed delivers nothing."""
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        a.register("db", max_attempts=1)
        converge(systems, client, ns)
        subs = [s.subscribe(connection="db") for s in systems]
        cut = Cut(b, after=1)  # the first entry is handed over, the link drops after
        a.failure("db")
        a.close_circuit("db")
        cut.release()
        converge(systems, client, ns)
        seen_a = _fleet_events(subs[0])
        assert _fleet_events(subs[1]) == seen_a and len(seen_a) >= 3
        tail = b._authority.tail  # type: ignore[union-attr]
        synced = tail.applied
        tail.invalidate()  # a resync that finds nothing missed
        a.failure("db")
        converge(systems, client, ns)
        assert tail.applied > synced
        seen_a = _fleet_events(subs[0])
        assert _fleet_events(subs[1]) == seen_a and seen_a
        assert gaps.calls == []


def test_a_trimmed_stream_falls_back_to_the_snapshot_and_says_how_many_were_missed(
        redis_server: RedisServer, client: redis.Redis, gaps: Gaps,
        caplog: pytest.LogCaptureFixture) -> None:
    """Entries trimmed before b's tail read them cannot be delivered: b loads a
    snapshot (the fleet's state), reports the loss (telemetry with the count, a
    WARNING) and invents no event."""
    with fleet(redis_server, 2) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        a.register("db", max_attempts=1)
        converge(systems, client, ns)
        sub = b.subscribe(connection="db")
        cut = Cut(b)
        a.failure("db")  # 1 entry
        a.close_circuit("db")  # 2
        a.failure("db")  # 3
        converge([a], client, ns)  # a's own tail is not behind
        client.xtrim("{" + ns + "}:events", maxlen=1, approximate=False)
        caplog.set_level(logging.WARNING, logger="brama_actors")
        cut.release()
        converge(systems, client, ns)
        assert b.status("db").state == "open"
        assert take(sub) == []  # nothing invented, nothing delivered out of order
        assert gaps.calls == [({"missed": 3}, {"namespace": ns, "reason": "trimmed"})]
        assert any("3 entries" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
        a.close_circuit("db")  # entries after the snapshot are delivered as before
        converge(systems, client, ns)
        assert [e.event for e in take(sub)].count("circuit_closed") == 1


def _link_down(system: Brama) -> threading.Event:
    """Make every Redis call of ``system``'s link fail while the returned event is set
    (it is set: clear it to bring the link back)."""
    link = system._authority.link  # type: ignore[union-attr]
    down = threading.Event()
    down.set()
    original = link._call

    def unreachable(keys: list[str], argv: list[str], *rest: Any) -> Any:
        if down.is_set():
            raise redis.ConnectionError("the link is down")
        return original(keys, argv, *rest)

    link._call = unreachable
    return down


def test_after_a_local_mode_window_the_fleets_entries_are_delivered_not_local_history(
        redis_server: RedisServer, client: redis.Redis, gaps: Gaps) -> None:
    """b loses its link and decides on its own ("local" events); meanwhile a opens and
    closes the circuit in the fleet. When b's link is back the fleet's state wins, the
    local history is not replayed, and a's entries are delivered on b by the catch-up."""
    with fleet(redis_server, 2, fleet_timeout=200) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        a.register("db", max_attempts=1)
        converge(systems, client, ns)
        subs = [s.subscribe(connection="db") for s in systems]
        down = _link_down(b)
        restored = threading.Event()  # b's link (a's never went down)
        telemetry.attach("fleet-gap-restored", ("brama", "fleet", "restored"),
                         lambda *_: restored.set())
        try:
            cut = Cut(b)
            b.failure("db")  # decided here: opened locally
            assert b.status("db").state == "open"
            a.failure("db")
            a.close_circuit("db")
            cut.release()
            down.clear()
            assert restored.wait(WAIT)
        finally:
            telemetry.detach("fleet-gap-restored")
        converge(systems, client, ns)
        status = b.fleet_status()
        assert status is not None and status.connected
        assert b.status("db").state == "closed"  # the fleet's state won
        seen_b = take(subs[1])
        local = [e for e in seen_b if e.data.get("origin") == "local"]
        assert "circuit_opened" in [e.event for e in local]  # emitted once, then
        fleet_b = [(e.event, e.id) for e in seen_b if e.data.get("origin") != "local"]
        assert fleet_b == _fleet_events(subs[0])  # a's entries, in order, same ids
        assert "circuit_closed" in [name for name, _ in fleet_b]
        assert gaps.calls == []


def test_a_circuit_registered_while_unreachable_survives_the_catch_up_of_a_removal(
        redis_server: RedisServer, client: redis.Redis) -> None:
    """b registers "k" while its link is down (owed to the fleet); meanwhile a registers
    and unregisters a "k" of its own. b's catch-up applies that removal, but b's "k"
    stays and is created in Redis when the link is back."""
    with fleet(redis_server, 2, fleet_timeout=200) as systems:
        ns = systems[0].fleet_status().namespace  # type: ignore[union-attr]
        a, b = systems
        a.register("db")
        converge(systems, client, ns)
        down = _link_down(b)
        restored = threading.Event()
        telemetry.attach("fleet-gap-owed", ("brama", "fleet", "restored"),
                         lambda *_: restored.set())
        tail = b._authority.tail  # type: ignore[union-attr]
        loading = tail._load
        kept: list[bool] = []  # b's "k" right after the catch-up, before the snapshot

        def load(*args: Any) -> None:
            kept.append("k" in b._authority.replica.entries)  # type: ignore[union-attr]
            loading(*args)

        tail._load = load
        try:
            cut = Cut(b)
            b.failure("db")  # local mode from here
            b.register("k")  # owed
            a.register("k")
            a.unregister("k")
            cut.release()
            down.clear()
            assert restored.wait(WAIT)
        finally:
            telemetry.detach("fleet-gap-owed")
        converge(systems, client, ns)
        assert kept and all(kept)  # the catch-up did not take it away, even for a while
        b.failure("k")  # not ConnectionNotFound: b's "k" is in the fleet now
        converge(systems, client, ns)
        assert a.status("k").failure_count == 1


def test_a_catch_up_refused_by_the_acl_falls_back_to_the_snapshot(
        gaps: Gaps, caplog: pytest.LogCaptureFixture) -> None:
    """A user of an older minimal ACL, without +xrange: the systems join; when b's
    tail misses entries its catch-up is refused (NOPERM), so it loads the snapshot
    instead of retrying forever: it converges, reports the entries it could not deliver
    (gap, reason "refused"), says once at ERROR which permission is missing, and
    delivers the entries after the snapshot as before."""
    with RedisServer.local() as server:  # ACL users are server-wide: a Redis of its own
        admin = server.client()
        rules = [rule for rule in documented_acl() if rule != "+xrange"]
        admin.execute_command("ACL", "SETUSER", "brama", *rules)
        url = server.url.replace("unix://", "unix://brama:secret@")
        caplog.set_level(logging.DEBUG, logger="brama_actors")
        ns = "orders"
        with contextlib.ExitStack() as stack:
            systems = [stack.enter_context(Brama.start(fleet=url, fleet_namespace=ns))
                       for _ in range(2)]
            a, b = systems
            for system in systems:
                status = system.fleet_status()
                assert status is not None and status.connected  # joined
            a.register("db", max_attempts=1)
            converge(systems, admin, ns)
            sub = b.subscribe(connection="db")
            for round_ in range(2):  # the second gap is refused too, logged no more
                cut = Cut(b)
                a.failure("db")  # opens
                a.close_circuit("db")
                a.failure("db")  # opens again: 3 entries b misses
                cut.release()
                converge(systems, admin, ns)
                assert b.status("db").state == "open"
                status = b.fleet_status()
                assert status is not None and status.connected
                assert take(sub) == []  # nothing invented
                assert gaps.calls == [({"missed": 3}, {"namespace": ns,
                                                       "reason": "refused"})] * (round_ + 1)
                a.close_circuit("db")  # entries after the snapshot are delivered
                converge(systems, admin, ns)
                assert [e.event for e in take(sub)] == ["circuit_closed", "state_change"]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "+xrange" in errors[0], errors
        denied: Any = admin.acl_log()
        assert {entry["object"] for entry in denied} == {"xrange"}  # and nothing else
        admin.close()
