"""Process-level faults (docs/processes.md, docs/reliability.md): real processes, real kills.

Every child is started with the ``spawn`` method, killed with SIGKILL or told to stop, and
joined in a ``finally``. Nothing sleeps: the tests wait on pipes, events, futures,
``Server.wait_for_clients``, ``Client.wait_connected`` and thread joins, each with a
timeout. Figures worth quoting (requests sent, latencies, thread counts, queue peaks) are
printed on a ``FIGURES`` line: ``pytest tests/test_process_faults.py -rP`` shows them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Client as RawClient
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import pytest

import brama_actors
from brama_actors import Brama, Client, Event, NodeUnavailable, Server, Subscription
from brama_actors._remote import _session as _server
from tests import proc_fault_helpers
from tests.conftest import subscriptions

CTX = multiprocessing.get_context("spawn")
#: Seconds to wait for a child process to start (it imports brama_actors first).
START = 30.0
#: Seconds any single condition may take before the test fails.
WAIT = 10.0
#: A round trip to the node must complete within this many seconds under a flood.
ROUND_TRIP_BOUND = 2.0
#: One-way successes and round-trip failures the flooding client must get through.
FLOOD_ONE_WAY = 30_000
FLOOD_ROUND_TRIPS = 150

# -- fixtures and helpers ---------------------------------------------------------------------


class _LogWatch(logging.Handler):
    """Collects the ``brama_actors`` log records and lets a test wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float, level: int = logging.WARNING) -> bool:
        """Wait until a record at ``level`` or above whose message contains ``text``."""
        def seen() -> bool:
            return any(r.levelno >= level and text in r.getMessage() for r in self.records)

        with self._cond:
            return self._cond.wait_for(seen, timeout)


@pytest.fixture
def log_watch() -> Iterator[_LogWatch]:
    """Every record the library logs during the test."""
    logger = logging.getLogger("brama_actors")
    watch = _LogWatch()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(level)


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """Exceptions that escaped any thread during the test (instead of pytest's warning)."""
    errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    return errors


class _Counter:
    """An event handler that counts what it gets and says when it reached ``target``."""

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, item: Event | tuple[Event, ...]) -> None:
        with self._lock:
            self.count += 1 if isinstance(item, Event) else len(item)
            if self.count >= self.target:
                self.reached.set()


def _start(target: Callable[..., None], *args: Any) -> tuple[BaseProcess, Connection]:
    """Start ``target(*args, child_end)`` in a spawned process; return it and our end."""
    parent_end, child_end = CTX.Pipe()
    process = CTX.Process(target=target, args=(*args, child_end), daemon=True)
    process.start()
    child_end.close()  # so that recv() sees EOF if the child dies before answering
    return process, parent_end


def _receive(end: Connection, timeout: float = START) -> Any:
    assert end.poll(timeout), "the child process did not answer in time"
    return end.recv()


def _kill(process: BaseProcess) -> None:
    """SIGKILL ``process`` if it still runs, and reap it."""
    if process.is_alive():
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
    process.join(WAIT)
    assert not process.is_alive()


def _subscription_list(brama: Brama) -> list[Subscription]:
    """Every subscription the node's event manager holds."""
    subs = subscriptions(brama)
    return list(subs)


def _subscriptions(brama: Brama) -> int:
    return len(_subscription_list(brama))


def _join_new_threads(before: set[threading.Thread]) -> list[str]:
    """Join every thread started since ``before``; return the names of those still alive."""
    alive = []
    for thread in set(threading.enumerate()) - before:
        thread.join(WAIT)
        if thread.is_alive():
            alive.append(thread.name)
    return alive


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    """Spin on ``predicate`` until it holds or ``timeout`` passes (for state without events).

    Yields the GIL between checks with a zero-length wait instead of sleeping.
    """
    deadline = time.monotonic() + timeout
    idle = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        idle.wait(0)
    return True


def _authenticated_socket(address: Any, authkey: bytes) -> socket.socket:
    """A raw socket to the node that already passed the HMAC handshake (both ways)."""
    conn = RawClient(address, authkey=authkey)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
    conn.close()
    return sock


def _frame(body: bytes) -> bytes:
    """One ``multiprocessing.connection`` frame: a 4-byte big-endian length, then the body."""
    return struct.pack("!i", len(body)) + body


def _request(request_id: int, op: str, **args: Any) -> bytes:
    return _frame(pickle.dumps(("request", request_id, op, args)))


def _read_until_closed(sock: socket.socket, timeout: float) -> bool:
    """Read and discard until the node closes the socket; False if it keeps it open."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass  # dropped with unread data still queued: a reset instead of EOF
    return True


def _figures(**values: object) -> None:
    """Print figures worth quoting in docs/reliability.md (see ``-rP``)."""
    print("FIGURES", ", ".join(f"{k}={v}" for k, v in values.items()))


def _session_peaks(server: Server) -> int:
    """The longest outgoing queue among the node's sessions right now."""
    return max((len(s._queue) for s in list(server._sessions)), default=0)


# -- 1. a client killed mid-call ----------------------------------------------------------------


@pytest.mark.parametrize("round_", range(3))
def test_client_killed_mid_call(node: tuple[Brama, Server], round_: int,
                                thread_errors: list[threading.ExceptHookArgs]) -> None:
    """A client SIGKILLed with requests and subscriptions in flight is forgotten cleanly.

    Its session and subscriptions go, no thread it caused survives, every report it made
    was applied exactly once, and another client keeps its state and its events.
    """
    brama, server = node
    brama.register("db", max_attempts=1_000_000)
    failures = _Counter(target=300)
    brama.subscribe(handler=failures, events=["failure"])
    other = brama_actors.connect(server.address, authkey=server.authkey)
    try:
        theirs = other.subscribe(events=["failure"], connection="db")
        assert server.wait_for_clients(1, timeout=WAIT)
        subscriptions_before = _subscriptions(brama)
        threads_before = set(threading.enumerate())
        sessions_before = set(server._sessions)
        worker, pipe = _start(proc_fault_helpers.hammer, server.address, server.authkey, "db")
        try:
            _receive(pipe)
            (hammer,) = set(server._sessions) - sessions_before
            # The node has applied 300 of its failures: it is mid-stream, not idle.
            assert failures.reached.wait(WAIT)
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(WAIT)
        finally:
            _kill(worker)

        assert server.wait_for_clients(1, timeout=WAIT)
        assert _join_new_threads(threads_before) == []
        assert threading.active_count() <= len(threads_before)
        brama.drain()
        status = brama.status("db")
        applied = failures.count
        assert status.total_failures == applied  # each applied once, each one event
        _figures(failures_applied_before_kill=applied)

        assert other.connected  # never lost its own link
        other.failure("db", reason="after the kill")
        assert other.status("db").total_failures == applied + 1
        assert other.available("db") is True
        for _ in range(applied + 1):  # theirs got every failure event, then ours
            event = theirs.get(timeout=WAIT)
            assert isinstance(event, Event)
            if event.data["reason"] == "after the kill":
                break
        else:
            pytest.fail("the surviving client did not get its event")

        # Two races once hit a few percent of kills (each also has a deterministic
        # test below): a subscribe in flight outliving its session
        # (test_session_closed_mid_request_leaves_nothing), and the reader dying with a
        # TypeError when the writer closed the connection mid-frame
        # (test_session_closed_between_header_and_body).
        assert [sub for sub in _subscription_list(brama)
                if sub.owner == ("client", hammer.name)] == []
        assert [repr(e.exc_value) for e in thread_errors] == []
        assert _subscriptions(brama) == subscriptions_before
    finally:
        other.close()


def test_client_killed_holding_trial_permit(node: tuple[Brama, Server]) -> None:
    """A client SIGKILLed inside a half-open trial call gives its permit back."""
    from brama_actors.testing import set_state

    brama, server = node
    brama.register("api", half_open_max_calls=1)
    set_state("api", "half_open", brama=brama)
    worker, pipe = _start(proc_fault_helpers.hold_trial, server.address, server.authkey,
                          "api")
    try:
        _receive(pipe)
        assert brama._authority.cells["api"].trials == 1
        with pytest.raises(brama_actors.CircuitOpenError), brama.guard("api"):
            pass  # the one permit is taken
        _kill(worker)
    finally:
        _kill(worker)
    assert server.wait_for_clients(0, timeout=WAIT)
    assert brama._authority.cells["api"].trials == 0
    with brama.guard("api"):  # the permit is back: a trial runs and closes the circuit
        pass
    assert brama.status("api").state == "closed"


def _close_from_another_thread(session: Any) -> None:
    """What the writer thread does when a send to a dead peer fails: close the session."""
    closer = threading.Thread(target=session.close)
    closer.start()
    closer.join(WAIT)
    assert session.closed


@pytest.mark.parametrize("op", ["subscribe", "admit"])
def test_session_closed_mid_request_leaves_nothing(node: tuple[Brama, Server],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   op: str) -> None:
    """A request the node is executing when the client's session closes leaves nothing.

    Deterministic form of the race behind the rare failure of test_client_killed_mid_call:
    the session is closed from another thread exactly while the request runs.
    """
    from brama_actors.testing import set_state

    brama, server = node
    brama.register("api", half_open_max_calls=1)
    set_state("api", "half_open", brama=brama)
    subscriptions_before = _subscriptions(brama)
    conn = RawClient(server.address, authkey=server.authkey)
    try:
        assert server.wait_for_clients(1, timeout=WAIT)
        (session,) = server._sessions
        if op == "subscribe":
            subscribe = brama._authority.subscribe

            def subscribe_then_close(*args: Any, **kwargs: Any) -> Any:
                subscribe(*args, **kwargs)
                _close_from_another_thread(session)

            monkeypatch.setattr(brama._authority, "subscribe", subscribe_then_close)
            request: tuple[Any, ...] = ("request", 1, "subscribe",
                                        {"client_id": 1, "events": ["failure"]})
        else:
            admit = brama._authority.admit

            def admit_then_close(*args: Any) -> Any:
                admitted = admit(*args)
                _close_from_another_thread(session)
                return admitted

            monkeypatch.setattr(brama._authority, "admit", admit_then_close)
            request = ("request", 1, "admit", {"identifier": "api"})
        conn.send_bytes(pickle.dumps(request))
        assert server.wait_for_clients(0, timeout=WAIT)
        session.join(WAIT)  # the reader finished the request
    finally:
        conn.close()
    monkeypatch.undo()
    assert _subscriptions(brama) == subscriptions_before, "a subscription outlived its client"
    assert brama._authority.cells["api"].trials == 0, "a trial permit outlived its client"


def test_session_closed_between_header_and_body(node: tuple[Brama, Server],
                                                monkeypatch: pytest.MonkeyPatch,
                                                thread_errors: list[threading.ExceptHookArgs]
                                                ) -> None:
    """A session closed while its reader is mid-frame ends the reader quietly."""
    _, server = node
    sock = _authenticated_socket(server.address, server.authkey)
    try:
        assert server.wait_for_clients(1, timeout=WAIT)
        (session,) = server._sessions
        conn = session.conn
        recv = conn._recv  # type: ignore[attr-defined]
        closed_once: list[bool] = []

        def close_before_body(size: int, *args: Any) -> Any:
            # The reader has read the length header and now asks for the body: this is
            # where a send failing in the writer thread closes the session.
            if not closed_once:
                closed_once.append(True)
                _close_from_another_thread(session)
            return recv(size, *args)

        # The reader is blocked reading the next header already (through the original
        # method); the body is read through this one.
        monkeypatch.setattr(conn, "_recv", close_before_body)
        sock.sendall(_request(1, "ping"))
        assert server.wait_for_clients(0, timeout=WAIT)
        session.join(WAIT)
    finally:
        sock.close()
    assert closed_once
    assert [repr(e.exc_value) for e in thread_errors] == []


# -- 2. a client flooding the node ---------------------------------------------------------------


def test_flooding_client_does_not_starve_others(node: tuple[Brama, Server]) -> None:
    """8 threads flooding round trips and one-way reports: others still get answers fast.

    Thread count and every queue stay bounded, and no report is lost: the node's totals
    equal what the flooding process says it sent.
    """
    brama, server = node
    brama.register("db", max_attempts=1_000_000_000)
    brama.register("mine")
    successes = _Counter(target=1)
    # A listener for successes: each one-way success then costs an actor message
    # (no quiet fast path), the worst case for the node's queues.
    success_sub = brama.subscribe(handler=successes, events=["success"])
    other = brama_actors.connect(server.address, authkey=server.authkey)
    stop = CTX.Event()
    try:
        assert server.wait_for_clients(1, timeout=WAIT)
        threads_before = set(threading.enumerate())
        worker, pipe = _start(proc_fault_helpers.flood, server.address, server.authkey, "db",
                              8, stop)
        try:
            assert _receive(pipe)[0] == "started"
            peak_threads = threading.active_count()
            peak_queue = peak_inbox = 0
            latencies = []
            cell = brama._authority.cells["db"]
            # Round trips of our own until the flood has put FLOOD_ONE_WAY one-way and
            # FLOOD_ROUND_TRIPS round-trip reports through the node.
            deadline = time.monotonic() + WAIT
            while True:
                began = time.monotonic()
                other.failure("mine", reason="between floods")
                other.status("mine")
                latencies.append(time.monotonic() - began)
                peak_threads = max(peak_threads, threading.active_count())
                peak_queue = max(peak_queue, _session_peaks(server))
                assert cell.inbox is not None
                peak_inbox = max(peak_inbox, len(cell.inbox._items))
                flooded = cell.current_status(brama._context.clock)
                if (flooded.total_successes >= FLOOD_ONE_WAY
                        and flooded.total_failures >= FLOOD_ROUND_TRIPS):
                    break
                assert time.monotonic() < deadline, f"the flood is too slow: {flooded}"
            stop.set()
            message = _receive(pipe, WAIT)
            assert message[0] == "done"
            _, round_trips, one_way = message
            worker.join(WAIT)
            assert worker.exitcode == 0
        finally:
            stop.set()
            _kill(worker)

        assert server.wait_for_clients(1, timeout=WAIT)
        assert _join_new_threads(threads_before) == []
        brama.drain()
        status = brama.status("db")
        assert status.total_failures == round_trips // 2  # status + failure per loop
        assert status.total_successes == one_way
        assert brama.status("mine").total_failures == len(latencies)
        assert max(latencies) < ROUND_TRIP_BOUND
        # The flooding client adds its session's reader and writer; a handshake thread
        # may still be finishing when the first sample is taken.
        assert peak_threads <= len(threads_before) + 3
        assert peak_queue <= _server.MAX_QUEUE
        latencies.sort()
        _figures(flood_round_trips=round_trips, flood_one_way=one_way,
                 other_round_trips=len(latencies),
                 other_round_trip_p50_ms=round(latencies[len(latencies) // 2] * 1000, 2),
                 other_round_trip_max_ms=round(latencies[-1] * 1000, 2),
                 node_threads_before=len(threads_before), node_threads_peak=peak_threads,
                 node_threads_after=threading.active_count(), session_queue_peak=peak_queue,
                 actor_inbox_peak=peak_inbox, success_events_handled=successes.count,
                 success_events_dropped=success_sub.statistics().dropped)
    finally:
        other.close()


def test_writer_backlog_is_bounded(node: tuple[Brama, Server],
                                   monkeypatch: pytest.MonkeyPatch,
                                   thread_errors: list[threading.ExceptHookArgs]) -> None:
    """A client that sends requests and never reads replies cannot grow the node's queue.

    The node must drop it (docs/processes.md: "its outgoing queue grows to 200,000
    messages, then the node drops it") or stop reading from it; either way the queue
    stays within MAX_QUEUE (lowered to 2,000 here to keep the test short).
    """
    monkeypatch.setattr(_server, "MAX_QUEUE", 2_000)
    brama, server = node
    brama.register("db", max_attempts=1_000_000_000)
    conn = RawClient(server.address, authkey=server.authkey)
    conn.send_bytes(pickle.dumps(("request", 1, "subscribe",
                                  {"client_id": 1, "events": ["failure"]})))
    assert conn.poll(WAIT)
    assert conn.recv()[:3] == ("reply", 1, True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
    conn.close()
    (session,) = server._sessions
    try:
        threads_before = set(threading.enumerate())
        # Events until the socket is full and the writer is stuck behind them.
        def backed_up() -> bool:
            brama.failure("db", reason="x" * 200)
            return len(session._queue) >= 500

        assert _poll(backed_up, WAIT)
        sock.settimeout(2.0)
        sent = 0
        peak = len(session._queue)
        peak_threads = threading.active_count()
        outcome = "kept reading"
        try:
            for request_id in range(2, 2 + 5 * _server.MAX_QUEUE):
                sock.sendall(_request(request_id, "ping"))
                sent += 1
                if sent % 100 == 0:
                    peak = max(peak, len(session._queue))
                    peak_threads = max(peak_threads, threading.active_count())
        except TimeoutError:
            outcome = "stopped reading"  # back-pressure: also a bounded answer
        except (BrokenPipeError, ConnectionResetError):
            outcome = "dropped"
        peak = max(peak, len(session._queue))
        _figures(pings_sent=sent, queue_peak=peak, max_queue=_server.MAX_QUEUE,
                 outcome=outcome, node_threads_before=len(threads_before),
                 node_threads_peak=peak_threads)

        # Others are served meanwhile, within the bound; the flood started no thread.
        assert peak_threads <= len(threads_before)
        with brama_actors.connect(server.address, authkey=server.authkey) as other:
            began = time.monotonic()
            other.status("db")
            assert time.monotonic() - began < ROUND_TRIP_BOUND
        assert _join_new_threads(threads_before) == []

        assert peak <= _server.MAX_QUEUE, (
            f"{sent} unread requests left {peak} messages queued for one client "
            f"(MAX_QUEUE={_server.MAX_QUEUE}); the client was not dropped ({outcome})")
        assert outcome != "kept reading" or session.closed
    finally:
        sock.close()
        # End the session while thread_errors is installed: with its writer failing on
        # the closed socket, this can hit the reader race that
        # test_session_closed_between_header_and_body reproduces (a TypeError).
        server.wait_for_clients(0, timeout=WAIT)
        session.join(WAIT)
        assert [repr(e.exc_value) for e in thread_errors
                if not isinstance(e.exc_value, TypeError)] == []


# -- 3. truncated frames ------------------------------------------------------------------------


def _half_header(sock: socket.socket) -> None:
    sock.sendall(b"\x00\x00")  # two of the four length bytes


def _short_body(sock: socket.socket) -> None:
    sock.sendall(struct.pack("!i", 1_000) + b"\x80" * 100)  # promises 1,000, sends 100


def _truncated_pickle(sock: socket.socket) -> None:
    body = pickle.dumps(("request", 1, "register", {"identifier": "x"}))
    sock.sendall(_frame(body[: len(body) // 2]))  # a whole frame, half a pickle


TRUNCATIONS = {
    "half-header-before-auth": (False, _half_header, True, "failed the handshake"),
    "short-body-before-auth": (False, _short_body, True, "failed the handshake"),
    "half-header-after-auth": (True, _half_header, True, None),
    "short-body-after-auth": (True, _short_body, True, None),
    "truncated-pickle-after-auth": (True, _truncated_pickle, False, "bad request"),
}


@pytest.mark.parametrize("case", list(TRUNCATIONS))
def test_truncated_frames(node: tuple[Brama, Server], log_watch: _LogWatch, case: str) -> None:
    """A peer sending a truncated frame is dropped alone; the node keeps serving."""
    authenticated, send, then_close, logged = TRUNCATIONS[case]
    brama, server = node
    brama.register("db")
    with brama_actors.connect(server.address, authkey=server.authkey) as other:
        inbox = other.subscribe(events=["failure"])
        assert server.wait_for_clients(1, timeout=WAIT)
        threads_before = set(threading.enumerate())
        if authenticated:
            sock = _authenticated_socket(server.address, server.authkey)
            assert server.wait_for_clients(2, timeout=WAIT)
        else:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(server.address)
        try:
            send(sock)
            if then_close:
                sock.shutdown(socket.SHUT_WR)
            # Either way the node must end the conversation: EOF (or a reset) comes back.
            assert _read_until_closed(sock, WAIT)
        finally:
            sock.close()
        if logged is not None:
            assert log_watch.wait_for(logged, WAIT)
        assert server.wait_for_clients(1, timeout=WAIT)
        assert _join_new_threads(threads_before) == []
        # The other client was never disturbed: same link, same subscription.
        other.failure("db", reason="still here")
        event = inbox.get(timeout=WAIT)
        assert isinstance(event, Event) and event.data["reason"] == "still here"
        assert other.status("db").total_failures == 1
    with brama_actors.connect(server.address, authkey=server.authkey) as fresh:
        assert fresh.status("db").total_failures == 1


@pytest.mark.parametrize("case", ["half-header-after-auth", "short-body-after-auth"])
def test_truncated_frame_after_auth_is_logged(node: tuple[Brama, Server],
                                              log_watch: _LogWatch, case: str) -> None:
    """An authenticated peer that hangs up in the middle of a frame is logged."""
    _, send, _, _ = TRUNCATIONS[case]
    _, server = node
    sock = _authenticated_socket(server.address, server.authkey)
    try:
        assert server.wait_for_clients(1, timeout=WAIT)
        (session,) = server._sessions
        send(sock)
        sock.shutdown(socket.SHUT_WR)
        assert _read_until_closed(sock, WAIT)
    finally:
        sock.close()
    assert server.wait_for_clients(0, timeout=WAIT)
    session.join(WAIT)  # the reader has finished: whatever it logs is logged by now
    assert any(r.levelno >= logging.WARNING and session.name in r.getMessage()
               for r in log_watch.records), [r.getMessage() for r in log_watch.records]


# -- 4. the node killed ---------------------------------------------------------------------------


class _FakeMonotonic:
    """The client's staleness clock, moved by the test instead of waiting."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _serve_child(address: str, authkey: bytes,
                 register: list[tuple[str, int, int]]) -> tuple[BaseProcess, Connection]:
    """A node in a child process at ``address``; ``register`` sets its initial state."""
    process, control = _start(proc_fault_helpers.serve_node, address, authkey,
                              {"register": register})
    _receive(control)
    return process, control


@pytest.mark.parametrize(("when_stale", "stale_answer"), [("allow", True), ("deny", False)])
def test_node_killed_client_goes_stale_then_resyncs(tmp_path: Any, when_stale: str,
                                                   stale_answer: bool) -> None:
    """The node SIGKILLed and restarted: NodeUnavailable, stale answers, then a resync.

    ``available()`` answers from the last known state for ``stale_after`` ms, then per
    ``when_stale``; a new node at the same address and authkey brings the client back,
    with the new node's state and the client's subscriptions renewed.
    """
    address = str(tmp_path / "node.sock")
    authkey = os.urandom(32)
    clock = _FakeMonotonic()
    first, first_control = _serve_child(address, authkey, [("up", 1, 0), ("down", 1, 1)])
    second: BaseProcess | None = None
    second_control: Connection | None = None
    client = Client(address, authkey, stale_after=1_000, when_stale=when_stale,
                    _monotonic=clock)
    try:
        inbox = client.subscribe(events=["failure"])
        assert client.available("up") is True and client.available("down") is False

        _kill(first)
        assert client._authority.unlinked.wait(WAIT)
        for call in (lambda: client.status("up"), lambda: client.failure("up"),
                     lambda: client.register("x"), client.connections,
                     lambda: client.subscribe(events=["failure"])):
            with pytest.raises(NodeUnavailable):
                call()
        assert client.connected is False
        # Within stale_after: the last known state.
        clock.now += 0.999
        assert client.available("up") is True and client.available("down") is False
        # Past stale_after: per when_stale, whatever the last known state was.
        clock.now += 0.002
        assert client.available("up") is stale_answer
        assert client.available("down") is stale_answer

        # A new node at the same address, with different state; SIGKILL left the old
        # socket file behind, and serve() reclaims it (nobody listens there).
        second, second_control = _serve_child(address, authkey,
                                              [("up", 1, 1), ("new", 5, 0)])
        assert client.wait_connected(timeout=WAIT)
        assert client.connected
        # Resynced from the new node; no longer stale although the fake clock is past it.
        assert client.available("up") is False
        assert client.available("new") is True
        assert client.available("down") is False  # unknown on the new node
        assert client.status("up").state == "open"
        # The subscription was renewed on the new node.
        client.failure("new", reason="after the restart")
        event = inbox.get(timeout=WAIT)
        assert isinstance(event, Event) and event.data["reason"] == "after the restart"
        with pytest.raises(queue.Empty):
            inbox.get(timeout=0)
    finally:
        client.close()
        first_control.close()
        _kill(first)
        if second is not None and second_control is not None:
            second_control.close()  # the node stops when its control pipe closes
            second.join(WAIT)
            _kill(second)


def test_restart_at_path_left_by_killed_node(tmp_path: Any) -> None:
    """A node can serve at the path of a node that was SIGKILLed (a stale socket file)."""
    address = str(tmp_path / "node.sock")
    first, control = _serve_child(address, b"k", [])
    try:
        _kill(first)
    finally:
        control.close()
        _kill(first)
    assert os.path.exists(address)  # nobody removed it
    with Brama.start() as brama:
        error: OSError | None = None
        try:
            brama.serve(address, authkey=b"k")
        except OSError as exc:
            error = exc
        assert error is None, f"serve() at a stale socket path: {error!r}"
        with brama_actors.connect(address, authkey=b"k") as client:
            assert client.connections() == []


def test_spawned_node_killed() -> None:
    """A spawn()ed node SIGKILLed: NodeUnavailable, last known state, and close() returns."""
    client = brama_actors.spawn(max_attempts=1, stale_after=60_000)
    process = client._process
    try:
        client.register("up")
        client.register("down")
        client.failure("down")
        os.kill(process.pid, signal.SIGKILL)
        process.join(WAIT)
        assert client._authority.unlinked.wait(WAIT)
        with pytest.raises(NodeUnavailable):
            client.status("up")
        with pytest.raises(NodeUnavailable):
            client.failure("up")
        assert client.available("up") is True and client.available("down") is False
        client.close(timeout=WAIT)
        assert not process.is_alive()
        assert process.exitcode == -signal.SIGKILL
    finally:
        client.close()
        _kill(process)
