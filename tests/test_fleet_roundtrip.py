"""One call, one deadline, one application (API.md section 16, docs/fleet.md "Failure
modes"): a fleet call never waits longer than fleet_timeout, whatever it has to do
(reconnect, NOSCRIPT, a retry), and a step retried after its reply was lost is applied
once (request ids).

The faults come from a real relay between the system and a real Redis
(``tests/redis_relay.py``) or from signals to a Redis of the test's own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from brama_actors import Brama
from brama_actors._authority._fleet._link import RECORD_TIMEOUTS
from tests.fleet_helpers import (
    WAIT,
    LinkEvents,
    converge,
    namespace,
    stored_status,
    take,
    wait_for_event,
)
from tests.redis_relay import Command, Relay, script_op
from tests.redis_server import RedisServer

#: What a bounded call may take beyond fleet_timeout on 2 shared cores (as
#: tests/test_fleet_faults.py), and always less than a second fleet_timeout of the
#: tests that prove a call no longer waits one timeout per command.
SLACK_S = 0.4


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A Redis of this test's own (paused, restarted)."""
    with RedisServer.local() as local:
        yield local


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    """A relay to the session's Redis."""
    with Relay(redis_server.socket_path) as front:
        yield front


def _start(url: str, ns: str, timeout_ms: int = 200) -> Brama:
    """A fleet system with its ticker stopped (its lease given back; no expiry or sweep
    is needed here), so the test's calls are the only ones on the link's command
    connections: none of the ticker's can take a fault meant for them."""
    brama = Brama.start(fleet=url, fleet_namespace=ns, fleet_timeout=timeout_ms)
    brama._authority.ticker.stop(WAIT)  # type: ignore[union-attr]
    return brama


def _tried(brama: Brama) -> list[int]:
    """The threads whose calls reached the link's round trip (a spy, not a fake: each
    call goes on to Redis)."""
    link = brama._authority.link  # type: ignore[union-attr]
    original = link._call
    callers: list[int] = []

    def spy(*args: Any) -> Any:
        callers.append(threading.get_ident())
        return original(*args)

    link._call = spy  # type: ignore[method-assign]
    return callers


def _entries(admin: redis.Redis, ns: str, kind: str) -> int:
    """Events of type ``kind`` in the namespace's stream."""
    found = 0
    entries: Any = admin.xrange("{" + ns + "}:events")
    for _, fields in entries:
        events = json.loads(fields[b"e"])
        found += sum(1 for event in events if event[0] == kind)
    return found


def _op(op: bytes) -> Any:
    def chosen(command: Command) -> bool:
        return script_op(command) == op
    return chosen


def test_a_failure_whose_reply_was_lost_is_retried_and_counted_once(
        redis_server: RedisServer, relay: Relay, link_events: LinkEvents) -> None:
    """The relay passes failure()'s script to Redis, which runs it, then closes the
    connection instead of passing the reply on: the system retries on a new connection
    with the same request id, the script answers from its record, and the fleet counts
    one failure, one stream entry, one event per subscriber; the link stays up."""
    admin = redis_server.client()
    ns = namespace()
    brama = _start(relay.url, ns)
    try:
        brama.register("db", max_attempts=5)
        sub = brama.subscribe(events=["failure"])
        relay.lose_reply(_op(b"failure"))
        brama.failure("db", reason="lost")
        assert relay.lost.is_set()
        assert relay.sent(b"failure") == 2  # the attempt and its retry, both to Redis
        assert brama.status("db").failure_count == 1  # the reply the retry got
        stored = stored_status(admin, ns, "db")
        assert (stored["failure_count"], stored["total_failures"]) == (1, 1)
        assert _entries(admin, ns, "failure") == 1
        converge([brama], admin, ns)
        assert [e.data["reason"] for e in take(sub)] == ["lost"]
        status = brama.fleet_status()
        assert status is not None and status.connected
        assert link_events.names == []
        brama.failure("db")  # the next step counts as usual
        assert brama.status("db").failure_count == 2
    finally:
        brama.stop()


def test_an_unregister_whose_reply_was_lost_reports_the_removal(
        redis_server: RedisServer, relay: Relay) -> None:
    """The retry of unregister gets the reply of the step that removed the circuit
    (True), not that of a second run ("missing": False); one removal in the stream."""
    admin = redis_server.client()
    ns = namespace()
    brama = _start(relay.url, ns)
    try:
        brama.register("db")
        relay.lose_reply(_op(b"unregister"))
        assert brama.unregister("db") is True
        assert relay.lost.is_set() and relay.sent(b"unregister") == 2
        assert _entries(admin, ns, "connection_unregistered") == 1
        assert brama.connections() == []
    finally:
        brama.stop()


def test_a_trial_whose_permit_reply_was_lost_is_admitted(
        redis_server: RedisServer, relay: Relay) -> None:
    """half_open, one trial at a time: the retry of acquire gets the permit the first
    run took (a second run would find it taken, by this very call, and refuse); the
    trial closes the circuit."""
    admin = redis_server.client()
    ns = namespace()
    brama = _start(relay.url, ns)
    try:
        now = [1_900_000_000_000]
        brama._authority.fixed_now = lambda: now[0]  # type: ignore[union-attr]
        brama.register("db", max_attempts=1, expiry=100, half_open_max_calls=1)
        brama.failure("db")
        now[0] += 100
        brama._authority.tick_now()  # type: ignore[union-attr]
        assert brama.status("db").state == "half_open"
        relay.lose_reply(_op(b"acquire"))
        with brama.guard("db"):
            pass
        assert relay.lost.is_set() and relay.sent(b"acquire") == 2
        assert brama.status("db").state == "closed"
        assert stored_status(admin, ns, "db")["state"] == "closed"
    finally:
        brama.stop()


def test_a_request_record_is_kept_a_few_timeouts_only(redis_server: RedisServer) -> None:
    """Each recorded step leaves one key of its own under the namespace's hash tag,
    expiring within RECORD_TIMEOUTS x fleet_timeout and holding the reply as JSON:
    records are bounded by time, not by the systems that came and went. Reads and the
    ticker's idempotent ops record none."""
    admin = redis_server.client()
    ns = namespace()
    timeout_ms = 300
    brama = _start(redis_server.url, ns, timeout_ms)
    try:
        brama.register("db", max_attempts=5)
        brama.failure("db")
        brama.failure("db")
        records = list(admin.scan_iter("{" + ns + "}:r:*"))
        assert len(records) == 3  # register, two failures; the snapshot none
        for key in records:
            assert 0 < admin.pttl(key) <= RECORD_TIMEOUTS * timeout_ms
            reply = json.loads(admin.get(key))  # only JSON in Redis (API.md section 16)
            assert reply[0] == "ok" and isinstance(reply[2], int)
    finally:
        brama.stop()


def test_a_timed_out_step_is_not_retried(redis_server: RedisServer, relay: Relay,
                                         link_events: LinkEvents) -> None:
    """A reply later than fleet_timeout spends the call's deadline: the step is sent
    once, the call returns within the bound, decided here ("local") with its reason
    and metadata."""
    timeout_ms = 200
    ns = namespace()
    brama = _start(relay.url, ns, timeout_ms)
    try:
        brama.register("db", max_attempts=5)
        sub = brama.subscribe(events=["failure"])
        relay.delay = 3 * timeout_ms / 1000
        tried = _tried(brama)
        start = time.monotonic()
        brama.failure("db", reason=["slow", []], metadata={"attempt": 1})
        elapsed = time.monotonic() - start
        assert threading.get_ident() in tried
        assert elapsed < timeout_ms / 1000 + SLACK_S, elapsed
        assert relay.sent(b"failure") == 1
        # The step reached Redis (only its reply was late): the tail delivers the
        # fleet's failure event too, a delay later; which comes first is not the point.
        failure, _ = wait_for_event(
            sub, lambda e: e.event == "failure" and e.data.get("origin") == "local")
        # Decided here with what the call gave, not what the step's args carried.
        assert failure.data["reason"] == ["slow", []]
        assert failure.data["metadata"] == {"attempt": 1}
        assert link_events.wait("unreachable")
        relay.delay = 0.0
        assert link_events.wait("restored")
    finally:
        relay.delay = 0.0
        brama.stop()


def test_a_slow_redis_cannot_stretch_a_call_past_fleet_timeout(
        redis_server: RedisServer, relay: Relay, link_events: LinkEvents) -> None:
    """Every reply takes 0.6 x fleet_timeout, the call's connection is gone and Redis
    forgot the script: connect (its handshake's HELLO), EVALSHA (NOSCRIPT) and EVAL each
    answer within fleet_timeout, but together took 1.8 of it (as each was bounded, not
    the call). Now the call gives up at its deadline, decided here."""
    timeout_ms = 1_000
    admin = redis_server.client()
    ns = namespace()
    brama = _start(relay.url, ns, timeout_ms)
    try:
        brama.register("db", max_attempts=5)
        admin.script_flush()
        # The tail opens its connection at its first read, after start() returned: cut
        # before that read went through, it was cut too, and its read's error marked
        # the link down before the call (decided here without trying Redis).
        assert relay.wait_for(b"XREAD", WAIT)
        assert relay.cut(sparing=b"XREAD") >= 1  # the link's, not the tail's
        accepted = relay.accepted
        tried = _tried(brama)
        relay.delay = 0.6 * timeout_ms / 1000
        start = time.monotonic()
        brama.failure("db", reason="slow")
        elapsed = time.monotonic() - start
        assert threading.get_ident() in tried  # it went to Redis...
        # ...on a new connection (nothing else of the system's connects until it returns;
        # then the tail's resync may connect too).
        assert relay.accepted > accepted
        assert elapsed < timeout_ms / 1000 + SLACK_S < 2 * timeout_ms / 1000, elapsed
        status = brama.fleet_status()
        assert status is not None and not status.connected
        assert brama.status("db").failure_count == 1  # decided here
        relay.delay = 0.0
        assert link_events.wait("restored")
        brama.failure("db")  # and the link works again (EVAL after NOSCRIPT)
        assert stored_status(admin, ns, "db")["failure_count"] == 1
    finally:
        relay.delay = 0.0
        brama.stop()


def test_a_slow_handshake_cannot_stretch_a_call_past_fleet_timeout(
        redis_server: RedisServer, relay: Relay, link_events: LinkEvents) -> None:
    """A password and a database make the connect's handshake two commands (HELLO with
    AUTH, SELECT): every reply taking 0.6 x fleet_timeout, connecting alone outlasts the
    call's deadline (bounded per command, the call took 1.8 x: the handshake, then
    EVALSHA). The call gives up at its deadline, decided here; the connection made on
    its behalf finishes later, and the link comes back."""
    timeout_ms = 1_000
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "handshake", "on", ">pw", "~*", "&*", "+@all")
    db1 = redis_server.client(db=1)
    ns = namespace()
    brama = _start(f"unix://handshake:pw@{relay.path}?db=1", ns, timeout_ms)
    try:
        brama.register("db", max_attempts=5)
        assert relay.wait_for(b"XREAD", WAIT)
        assert relay.cut(sparing=b"XREAD") >= 1  # the link's: the call must connect
        assert relay.wait_for(b"XREAD", WAIT)  # the tail still reads on its own
        tried = _tried(brama)
        relay.delay = 0.6 * timeout_ms / 1000
        start = time.monotonic()
        brama.failure("db", reason="slow handshake")
        elapsed = time.monotonic() - start
        assert threading.get_ident() in tried
        assert elapsed < timeout_ms / 1000 + SLACK_S < 1.8 * timeout_ms / 1000, elapsed
        assert link_events.wait("unreachable")
        assert brama.status("db").failure_count == 1  # decided here
        relay.delay = 0.0
        assert link_events.wait("restored")
        brama.failure("db")  # in db 1, as the URL says
        assert stored_status(db1, ns, "db")["failure_count"] == 1  # the fleet's state won
    finally:
        relay.delay = 0.0
        brama.stop()
        admin.execute_command("ACL", "DELUSER", "handshake")


def test_a_paused_redis_bounds_a_call_that_must_reconnect(
        server: RedisServer, link_events: LinkEvents) -> None:
    """SIGSTOP after the call's connections were killed and the script flushed: the
    call must connect (the kernel accepts, the handshake never answers) and would then
    meet NOSCRIPT; it returns within fleet_timeout plus a slack, decided here; the
    connecting thread ends when Redis answers again, and the link comes back."""
    timeout_ms = 200
    admin = server.client(decode_responses=True)
    ns = namespace()
    brama = _start(server.url, ns, timeout_ms)
    try:
        sub = brama.subscribe(events=["failure"])
        brama.register("db", max_attempts=5)
        admin.script_flush()
        for client in admin.client_list():
            if client["cmd"] in ("evalsha", "eval"):  # the link's; not the tail's XREAD
                admin.client_kill_filter(_id=client["id"])
        tried = _tried(brama)
        server.pause()
        try:
            start = time.monotonic()
            brama.failure("db", reason="paused")
            elapsed = time.monotonic() - start
            assert threading.get_ident() in tried
            assert elapsed < timeout_ms / 1000 + SLACK_S, elapsed
            failure, _ = wait_for_event(sub, lambda e: e.event == "failure")
            assert failure.data["origin"] == "local"
            # Telemetry runs on the telemetry thread: wait for it, then check it was the
            # only change (Redis is paused: nothing can be restored yet).
            assert link_events.wait("unreachable")
            assert link_events.names == ["unreachable"]
        finally:
            server.resume()
        assert link_events.wait("restored")
        brama.failure("db")
        assert brama.status("db").failure_count == 1  # the fleet's state won
    finally:
        brama.stop()
