"""Fault injection: crashes, hostile subscribers, stop() under load, interpreter exit.

Every test injects a fault into a running system and then checks that the system keeps
working, that published state and the events describing it agree (nothing lost, nothing
duplicated), and that no thread is left behind (the autouse fixture of conftest.py also
checks that after every test). Nothing here sleeps: threads meet on ``threading.Event``
and barriers with timeouts, the clock is a ``ManualClock``, and ``drain()`` makes events
visible.
"""

from __future__ import annotations

import functools
import itertools
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from brama_actors import Brama, BramaError, Event, SystemStopped, telemetry
from brama_actors.testing import ManualClock, inject_crash, inject_event_manager_crash
from tests.conftest import collect

JOIN = 20.0  # seconds any helper thread may take before the test calls it hung


@pytest.fixture
def tough(clock: ManualClock) -> Iterator[Brama]:
    """A system whose supervisor tolerates many restarts (crash tests count their own)."""
    brama = Brama.start(clock=clock, max_restarts=1_000)
    yield brama
    brama.stop()


class Restarts:
    """Every ("brama", "supervisor", "restart") telemetry event, and a way to wait for them."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, name: Any, measurements: Any, metadata: Any) -> None:
        with self.cond:
            self.seen.append(dict(metadata))
            self.cond.notify_all()

    def __len__(self) -> int:
        return len(self.seen)

    def wait_for(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.seen) >= count, JOIN)

    def exactly(self, brama: Brama, count: int) -> int:
        """Wait for ``count`` restarts (telemetry runs on its own thread), then recount."""
        self.wait_for(count)
        brama.drain(timeout=10)
        return len(self.seen)


@pytest.fixture
def restarts() -> Iterator[Restarts]:
    """Records supervisor restarts through telemetry (run in the supervisor's thread)."""
    recorder = Restarts()
    telemetry.attach("test-faults-restarts", ("brama", "supervisor", "restart"), recorder)
    yield recorder
    telemetry.detach("test-faults-restarts")


class Recorder:
    """A thread-safe handler that records events and signals when it has ``want`` of them."""

    def __init__(self, want: int = 0) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.want = want
        self.enough = threading.Event()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            if self.want and len(self.events) >= self.want:
                self.enough.set()


class Sink(pykka.ThreadingActor):
    """A plain Pykka subscriber actor; stops itself after ``stop_after`` events if given."""

    use_daemon_thread = True

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.events: list[Event] = []
        self.stop_after = stop_after

    def on_receive(self, message: Any) -> Any:
        if message == "events":
            return list(self.events)
        if isinstance(message, tuple) and message[0] == "brama_event":
            self.events.append(message[1])
            if self.stop_after is not None and len(self.events) >= self.stop_after:
                self.stop()
        return None


class Parent(pykka.ThreadingActor):
    """An application's supervising actor, told when the system ends."""

    use_daemon_thread = True

    def __init__(self, inbox: list[Any], got: threading.Event) -> None:
        super().__init__()
        self.inbox = inbox
        self.got = got

    def on_receive(self, message: Any) -> Any:
        self.inbox.append(message)
        self.got.set()


def run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    """Run callables in threads, join them with a timeout; return what they raised."""
    errors: list[BaseException] = []

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported to the test, not swallowed
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN)
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"threads hung: {hung}"
    return errors


def system_threads(brama: Brama) -> list[str]:
    prefix = brama._context.name + "-"
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def critical_chain(events: list[Event]) -> list[tuple[str, str]]:
    """(previous_state, new_state) of each state_change, in order."""
    return [(e.data["previous_state"], e.data["new_state"]) for e in events
            if e.event == "state_change"]


# -- connection actors crashing -------------------------------------------------------------


def test_connection_crash_under_concurrent_reporters(tough: Brama, restarts: Restarts) -> None:
    """Crashes amid 8 reporting threads: restarted from the snapshot, no report or event lost."""
    brama = tough
    # Unread until the end, and reporting is fast: room for every event (none dropped).
    inbox = brama.subscribe(max_pending=10**7)
    recorder = Recorder()
    brama.subscribe(handler=recorder, max_pending=10**7)
    brama.register("hot", max_attempts=10**9)
    brama.register("flip")
    brama.register("cold", max_attempts=10**9)
    cold_ref = brama._authority.cells["cold"].ref
    crashes, minimum = 12, 100
    started = threading.Barrier(9)
    progress = threading.Condition()
    done = [0] * 8
    opened = [0] * 8
    crasher_done = threading.Event()

    def reporter(index: int) -> Callable[[], None]:
        def run() -> None:
            started.wait(JOIN)
            # Keep reporting until every injected crash has been consumed by a message.
            while done[index] < minimum or not crasher_done.is_set():
                brama.failure("hot", reason=f"t{index}-{done[index]}")
                if done[index] % 3 == 0:
                    if index % 2:
                        brama.open_circuit("flip", reason=f"t{index}")
                        opened[index] += 1
                    else:
                        brama.close_circuit("flip", reason=f"t{index}")
                with progress:
                    done[index] += 1
                    progress.notify_all()
        return run

    def reached(target: int) -> bool:
        return sum(done) >= target

    def crasher() -> None:
        started.wait(JOIN)
        try:
            for k in range(crashes):
                inject_crash("flip" if k % 3 == 0 else "hot", brama=brama)
                brama.failure("cold")
                assert restarts.wait_for(k + 1), f"crash {k + 1} was never consumed"
                # Pace: let every reporter move on, so that one call is never crashed on
                # by several injections in a row (test_call_survives_... covers that).
                target = sum(done) + 40
                with progress:
                    assert progress.wait_for(functools.partial(reached, target), JOIN)
        finally:
            crasher_done.set()

    errors = run_threads([reporter(i) for i in range(8)] + [crasher])
    assert errors == []
    brama.drain(timeout=10)
    total = sum(done)
    hot = brama.status("hot")
    assert (hot.failure_count, hot.total_failures, hot.state) == (total, total, "closed")
    assert brama._authority.cells["cold"].ref is cold_ref  # never restarted
    assert brama.status("cold").failure_count == crashes
    assert restarts.exactly(brama, crashes) == crashes
    assert {(r["child"], r["connection"]) for r in restarts.seen} == {
        ("connection", "hot"), ("connection", "flip")}
    for events in (collect(inbox), recorder.events):
        hot_counts = [e.data["failure_count"] for e in events
                      if e.connection == "hot" and e.event == "failure"]
        assert hot_counts == list(range(1, total + 1))  # every report once, in order
        flip = [e for e in events if e.connection == "flip"]
        assert Counter(e.event.value for e in flip)["circuit_opened"] == sum(opened)
        chain = critical_chain(flip)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chain))
        assert (chain[-1][1] if chain else "closed") == brama.status("flip").state
        assert [e.data["failure_count"] for e in events
                if e.connection == "cold" and e.event == "failure"] == list(
                    range(1, crashes + 1))


def test_call_survives_repeated_crashes_of_its_message(
        tough: Brama, restarts: Restarts, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report whose message crashes the actor three times running still completes once."""
    from brama_actors._authority._local._actor import Apply, ConnectionActor

    tough.register("db", max_attempts=100)
    original = ConnectionActor._handle
    left = [3]

    def crashing(self: ConnectionActor, message: Any) -> Any:
        if type(message) is Apply and left[0]:
            left[0] -= 1
            raise RuntimeError("crash mid-message")
        return original(self, message)

    monkeypatch.setattr(ConnectionActor, "_handle", crashing)
    tough.failure("db")  # expected: applied once by the third restarted actor
    assert restarts.exactly(tough, 3) == 3
    assert tough.status("db").failure_count == 1


def test_counted_failures_survive_a_crash(
        tough: Brama, restarts: Restarts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failures counted in the cell (no actor message) are folded in by the restarted
    actor when the next message crashes the one that would have folded them."""
    from brama_actors._authority._local._actor import Apply, ConnectionActor

    tough.register("db", max_attempts=100)
    tough.failure("db")
    tough.failure("db")
    tough.failure("db")
    assert tough._authority.cells["db"].failures is not None
    original = ConnectionActor._handle
    left = [1]

    def crashing(self: ConnectionActor, message: Any) -> Any:
        if type(message) is Apply and left[0]:
            left[0] -= 1
            raise RuntimeError("crash before folding")
        return original(self, message)

    monkeypatch.setattr(ConnectionActor, "_handle", crashing)
    sub = tough.subscribe(events=["circuit_opened"], connection="db")
    tough.open_circuit("db")
    assert restarts.exactly(tough, 1) == 1
    status = tough.status("db")
    assert (status.state, status.failure_count, status.total_failures) == ("open", 3, 3)
    tough.drain()
    assert [e.data["failure_count"] for e in collect(sub)] == [3]


def test_crash_after_publishing_applies_a_report_once(
        tough: Brama, restarts: Restarts, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between publishing a status and emitting its events neither repeats nor loses it."""
    from brama_actors._delivery._hub import Delivery

    inbox = tough.subscribe(connection="db")
    tough.register("db", max_attempts=100)
    original = Delivery.emit
    left = [1]

    def emit(self: Delivery, identifier: str, scope: str | None, specs: Any,
             now: int) -> None:
        specs = list(specs)
        if left[0] and any(kind == "failure" for kind, _ in specs):
            left[0] -= 1
            raise MemoryError("crash after the status was published")
        original(self, identifier, scope, specs, now)

    monkeypatch.setattr(Delivery, "emit", emit)
    tough.failure("db")
    tough.drain()
    assert restarts.exactly(tough, 1) == 1
    status = tough.status("db")
    failures = [e for e in collect(inbox) if e.event == "failure"]
    assert (status.failure_count, status.total_failures) == (1, 1), "one report, applied twice"
    assert [e.data["failure_count"] for e in failures] == [1]


def test_inject_crash_times_crashes_that_many_messages(tough: Brama,
                                                       restarts: Restarts) -> None:
    """inject_crash(times=3) makes the next three messages crash: three restarts."""
    tough.register("db", max_attempts=100)
    inject_crash("db", times=3, brama=tough)
    for _ in range(5):
        tough.failure("db")
    tough.drain()
    assert tough.status("db").failure_count == 5
    assert restarts.exactly(tough, 3) == 3, f"{len(restarts)} restart(s) for times=3"


def test_crash_on_a_success_keeps_state_consistent(tough: Brama) -> None:
    """A crash eating a fire-and-forget success loses that report only, never half of it."""
    inbox = tough.subscribe(connection="db")
    tough.register("db", max_attempts=3)
    tough.failure("db")
    tough.failure("db")
    inject_crash("db", brama=tough)
    tough.success("db")  # the crash eats it (documented for inject_crash)
    status = tough.status("db")
    tough.drain()
    events = collect(inbox)
    # Whatever happened to the success, status and events tell the same story.
    successes = [e for e in events if e.event == "success"]
    assert status.total_successes == len(successes)
    assert status.failure_count == (0 if successes else 2)
    tough.failure("db")
    tough.drain()
    last = collect(inbox)[-1]
    assert last.data["failure_count"] == tough.status("db").failure_count


# -- the event manager crashing ---------------------------------------------------------------


def test_event_manager_crashes_keep_subscriptions_and_critical_events(
        tough: Brama, restarts: Restarts) -> None:
    """Event-manager crashes amid reporting: subscriptions intact, critical events delivered."""
    brama = tough
    names = [f"c{i}" for i in range(4)]
    inbox = brama.subscribe()
    criticals = brama.subscribe(events=["state_change", "circuit_opened", "circuit_reset"])
    batched = brama.subscribe(events=["state_change"], batch_size=10_000)
    recorder = Recorder()
    handler_sub = brama.subscribe(handler=recorder)
    sink = Sink.start()
    actor_sub = brama.subscribe(subscriber=sink)
    for name in names:
        brama.register(name, max_attempts=1)
    brama.drain()
    collect(inbox)
    collect(criticals)
    cycles, crashes = 40, 10
    started = threading.Barrier(len(names) + 1)

    def cycle(name: str) -> Callable[[], None]:
        def run() -> None:
            started.wait(JOIN)
            for _ in range(cycles):
                brama.failure(name)  # failure, circuit_opened, state_change
                brama.reset_circuit(name)  # circuit_reset, state_change
        return run

    def crasher() -> None:
        started.wait(JOIN)
        for _ in range(crashes):
            inject_event_manager_crash(brama=brama)
            brama.subscribe(events=["cleanup"]).unsubscribe()  # rides across the restart

    errors = run_threads([cycle(n) for n in names] + [crasher])
    assert errors == []
    brama.drain(timeout=10)
    restarts.exactly(brama, crashes)
    assert len([r for r in restarts.seen if r["child"] == "event_manager"]) == crashes
    expected = [("closed", "open"), ("open", "closed")] * cycles
    batches: list[Event] = []
    while True:
        try:
            batches.extend(batched.get(timeout=0))  # type: ignore[arg-type]
        except queue.Empty:
            break
    actor_events: list[Event] = sink.ask("events", timeout=5)  # type: ignore[assignment]
    received: dict[str, list[Event]] = {"inbox": collect(inbox), "criticals": collect(criticals),
                "handler": recorder.events, "batched": batches, "actor": actor_events}
    for label, events in received.items():
        for name in names:
            mine = dedupe([e for e in events if e.connection == name and e.critical])
            assert critical_chain(mine) == expected, (label, name)
            if label != "batched":  # that one subscribed to state_change only
                kinds_seen = [e.event.value for e in mine]
                assert kinds_seen.count("circuit_opened") == cycles, (label, name)
                assert kinds_seen.count("circuit_reset") == cycles, (label, name)
    for sub in (inbox, criticals, batched, handler_sub, actor_sub):
        assert brama.unsubscribe(sub) is True  # every subscription survived
    sink.stop()


def dedupe(events: list[Event]) -> list[Event]:
    """Drop redeliveries (the same event object again): critical events are at-least-once."""
    out: list[Event] = []
    seen: set[int] = set()
    for event in events:
        if id(event) not in seen:
            seen.add(id(event))
            out.append(event)
    return out


# -- hostile handlers and subscribers ---------------------------------------------------------


def test_hostile_handlers_do_not_disturb_others(system: Brama) -> None:
    """Raising, blocking, KeyboardInterrupt and SystemExit handlers: others and reporting fine."""
    gate = threading.Event()
    blocked = threading.Event()

    def blocker(event: Event) -> None:
        blocked.set()
        gate.wait(JOIN * 3)

    def raiser(exc: type[BaseException]) -> Callable[[Event], None]:
        def handle(event: Event) -> None:
            raise exc("hostile handler")
        return handle

    hostile = {
        "raise": system.subscribe(handler=raiser(RuntimeError), events=["failure"]),
        "keyboard": system.subscribe(handler=raiser(KeyboardInterrupt), events=["failure"]),
        "exit": system.subscribe(handler=raiser(SystemExit), events=["failure"]),
        "block": system.subscribe(handler=blocker, max_pending=5),
    }
    reports = 200
    healthy = Recorder(want=reports + 2)
    system.subscribe(handler=healthy, connection="db")
    inbox = system.subscribe(connection="db")
    try:
        system.register("db", max_attempts=10**9)
        for i in range(reports):
            system.failure("db", reason=i)
        assert healthy.enough.wait(JOIN)
        assert [e.data["failure_count"] for e in healthy.events[2:]] == list(
            range(1, reports + 1))
        assert blocked.wait(JOIN)
        with pytest.raises(TimeoutError):
            system.drain(timeout=0.2)  # the blocked handler has not returned
        # Reporting and state are untouched by the hostile handlers.
        assert system.status("db").failure_count == reports
        system.open_circuit("db")
        assert system.available("db") is False
        assert system.supervisor.is_alive()
        assert system._delivery.ref.is_alive()
    finally:
        gate.set()
    system.drain(timeout=10)
    assert len(collect(inbox)) == reports + 4  # + registration x2, circuit_opened, state_change
    for name in ("raise", "keyboard", "exit"):
        stats = hostile[name].statistics()
        assert (stats.failed, stats.delivered, stats.pending) == (reports, 0, 0), name
    stats = hostile["block"].statistics()
    # The blocked handler's queue stayed bounded and never dropped a critical event.
    assert stats.dropped > 0
    assert stats.delivered + stats.dropped + stats.failed + stats.pending == reports + 4


def test_subscriber_actors_stopping_mid_stream_are_dropped(system: Brama) -> None:
    """Subscriber actors that stop mid-stream are dropped; other subscribers get everything."""
    quitter = Sink.start(stop_after=10)
    killed = Sink.start()
    steady = Sink.start()
    subs = {name: system.subscribe(subscriber=ref, connection="db")
            for name, ref in (("quitter", quitter), ("killed", killed), ("steady", steady))}
    inbox = system.subscribe(connection="db")
    system.register("db", max_attempts=10**9)
    for i in range(60):
        system.failure("db")
        if i == 15:
            # It had its 10 events by now (registration + 8 failures): wait until it
            # stopped itself, so the rest reach a stopped actor, whatever the timing.
            assert quitter.actor_stopped.wait(JOIN)
        if i == 20:
            killed.stop()
    system.drain()
    assert not quitter.is_alive()
    got: list[Event] = steady.ask("events", timeout=5)  # type: ignore[assignment]
    assert [e.data["failure_count"] for e in got[2:]] == list(range(1, 61))
    assert len(collect(inbox)) == 62
    assert system.unsubscribe(subs["quitter"]) is False  # dropped already
    assert system.unsubscribe(subs["killed"]) is False
    assert system.unsubscribe(subs["steady"]) is True
    steady.stop()


# -- stopping under load ------------------------------------------------------------------------


def test_stop_during_heavy_reporting_from_8_threads() -> None:
    """stop() amid 8 reporting threads returns quickly; every thread ends in SystemStopped."""
    brama = Brama.start(clock=ManualClock())
    for i in range(8):
        brama.register(f"c{i}", max_attempts=3, expiry=50)
    brama.subscribe(handler=lambda e: None)
    brama.subscribe()
    busy = threading.Barrier(9)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def reporter(index: int) -> Callable[[], None]:
        name = f"c{index}"

        def run() -> None:
            operations: list[Callable[[], Any]] = [
                lambda: brama.failure(name),
                lambda: brama.success(name),
                lambda: brama.status(name),
                lambda: brama.available(name),
                lambda: brama.reset_circuit(name),
                lambda: brama.open_circuit(name),
                brama.connections,
                lambda: brama.subscribe(events=["failure"]).unsubscribe(),
                lambda: brama.register(f"{name}-{time.monotonic_ns()}"),
                lambda: brama.drain(timeout=5),
            ]
            done = 0
            try:
                while True:
                    operations[done % len(operations)]()
                    done += 1
                    if done == 200:
                        busy.wait(JOIN)
            except SystemStopped:
                outcome: Any = "stopped"
            except BaseException as exc:
                outcome = exc
            with lock:
                outcomes.append((outcome, done))
        return run

    threads = [threading.Thread(target=reporter(i), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    busy.wait(JOIN)  # every reporter is in full swing
    begin = time.monotonic()
    brama.stop()
    took = time.monotonic() - begin
    for thread in threads:
        thread.join(JOIN)
    assert [t.name for t in threads if t.is_alive()] == []
    assert took < 5.0, f"stop() took {took:.2f} s"
    assert [o for o, _ in outcomes] == ["stopped"] * 8, outcomes
    assert system_threads(brama) == []
    with pytest.raises(SystemStopped):
        brama.failure("c0")
    brama.stop()  # idempotent


# -- interpreter exit ---------------------------------------------------------------------------

EXIT_SCRIPT = textwrap.dedent("""
    import sys, threading
    import pykka
    import brama_actors

    class Sink(pykka.ThreadingActor):
        use_daemon_thread = True
        def on_receive(self, message):
            return None

    gate = threading.Event()
    brama_actors.register("db", max_attempts=2, expiry=60_000)
    brama_actors.subscribe(handler=lambda event: None)
    brama_actors.subscribe(handler=lambda event: gate.wait(), events=["state_change"]) \\
        if sys.argv[1] == "blocked" else None
    brama_actors.subscribe()
    brama_actors.subscribe(subscriber=Sink.start())
    for _ in range(5):
        brama_actors.failure("db")
    assert not brama_actors.available("db")
    print("reported", flush=True)
""")


@pytest.mark.parametrize("mode", ["idle", "blocked"])
def test_interpreter_exits_with_the_default_system_running(mode: str) -> None:
    """A program that never stops the default system exits within seconds (blocked handler too)."""
    begin = time.monotonic()
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, mode], capture_output=True,
                          text=True, timeout=30, check=False)
    took = time.monotonic() - begin
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "reported"
    assert "Traceback" not in done.stderr
    assert took < 5.0, f"exit took {took:.1f} s with the default system running ({mode})"


def test_calls_queued_behind_a_fatal_crash_are_answered_at_once(
        clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """When a crash makes the supervisor give up, calls queued behind it end at once."""
    from brama_actors._authority._local._actor import Apply, ConnectionActor
    from brama_actors._rules import Failure

    brama = Brama.start(clock=clock, max_restarts=0)
    brama.register("db", max_attempts=100)
    entered, release = threading.Event(), threading.Event()
    original = ConnectionActor._handle

    def crashing(self: ConnectionActor, message: Any) -> Any:
        if type(message) is Apply and message.op == Failure("fatal"):
            entered.set()
            release.wait(JOIN)
            raise RuntimeError("fatal crash")
        return original(self, message)

    monkeypatch.setattr(ConnectionActor, "_handle", crashing)
    outcome: list[Any] = []

    def fatal() -> None:
        try:
            brama.failure("db", reason="fatal")
        except SystemStopped as exc:
            outcome.append(exc)

    thread = threading.Thread(target=fatal, daemon=True)
    thread.start()
    assert entered.wait(JOIN)
    # Another caller's request, queued behind the message being handled (what failure()
    # from a second thread does; asked directly so that it is queued for sure).
    cell = brama._authority.cells["db"]
    assert cell.ref is not None
    queued = cell.ref.ask(Apply(Failure("queued")), block=False)
    release.set()
    thread.join(JOIN)
    assert outcome and brama.stopped
    begin = time.monotonic()
    with pytest.raises((pykka.ActorDeadError, SystemStopped)):
        queued.get(timeout=3)  # pykka.Timeout here: the request was dropped unanswered
    assert time.monotonic() - begin < 1.0
    brama.stop()


# -- restart intensity --------------------------------------------------------------------------


def test_crash_bursts_hitting_restart_intensity_stop_the_system(clock: ManualClock) -> None:
    """Bursts within the window are survived; one too many stops all, tells parent, no thread."""
    inbox_msgs: list[Any] = []
    told = threading.Event()
    parent = Parent.start(inbox_msgs, told)
    brama = Brama.start(clock=clock, parent=parent, max_restarts=4, restart_window=1_000)
    events = brama.subscribe()
    brama.subscribe(handler=lambda e: None)
    for name in ("a", "b", "c"):
        brama.register(name, max_attempts=10**9)
    survived = 0
    for round_ in range(3):  # 4 restarts per burst: at the limit, never beyond it
        for i in range(4):
            if i == 3:
                inject_event_manager_crash(brama=brama)
                brama.subscribe().unsubscribe()
            else:
                name = "abc"[i]
                inject_crash(name, brama=brama)
                brama.failure(name)
            survived += 1
        assert not brama.stopped, f"stopped in burst {round_}"
        clock.advance(1_000)  # the window slides past this burst
    brama.drain()
    assert [brama.status(n).failure_count for n in "abc"] == [3, 3, 3]
    assert survived == 12
    assert sum(1 for e in collect(events) if e.event == "failure") == 9
    # The final burst goes one beyond max_restarts, with reporters running.
    gate = threading.Barrier(5)

    def reporter(name: str) -> Callable[[], None]:
        def run() -> None:
            gate.wait(JOIN)
            try:
                while True:
                    brama.failure(name)
            except SystemStopped:
                return
        return run

    def burst() -> None:
        gate.wait(JOIN)
        for i in range(5):
            try:
                inject_crash("abc"[i % 3], brama=brama)
                brama.failure("abc"[i % 3])
            except SystemStopped:
                return

    errors = run_threads([reporter(n) for n in "abc"] + [reporter("a"), burst])
    assert errors == []
    assert told.wait(JOIN)
    assert inbox_msgs[0][0] == "brama_down" and inbox_msgs[0][1] is brama
    assert "restarts" in inbox_msgs[0][2]
    assert brama.stopped
    brama.stop()  # waits for the teardown the supervisor started
    assert system_threads(brama) == []
    for call in (lambda: brama.failure("a"), brama.subscribe,
                 lambda: brama.register("z")):
        with pytest.raises(SystemStopped):
            call()
    assert isinstance(SystemStopped("x"), BramaError)
    parent.stop()


def test_a_connection_that_never_answers_is_a_timeout_error(
        clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """No answer in time is ``TimeoutError``, the same error the event manager's gives."""
    from brama_actors._authority._local import _authority
    from brama_actors._authority._local._actor import ConnectionActor

    monkeypatch.setattr(_authority, "ASK_TIMEOUT", 0.2)
    brama = Brama.start(clock=clock)
    try:
        brama.register("db", max_attempts=100)
        entered, release = threading.Event(), threading.Event()
        original = ConnectionActor._handle

        def stuck(self: ConnectionActor, message: Any) -> Any:
            if message == "stuck":
                entered.set()
                release.wait(30)
                return None
            return original(self, message)

        monkeypatch.setattr(ConnectionActor, "_handle", stuck)
        brama._authority.cells["db"].ref.tell("stuck")  # busy on a pool worker
        assert entered.wait(5)
        with pytest.raises(TimeoutError, match=r"'db' did not answer within 0\.2 s"):
            brama.failure("db")
        release.set()
        brama.drain()
        assert brama.status("db").failure_count == 1  # the report was queued, then applied
    finally:
        release.set()
        brama.stop()

