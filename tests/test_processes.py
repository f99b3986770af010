"""Several processes (docs/processes.md): serve, connect, spawn, with real processes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import select
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import brama_actors
from brama_actors import (
    AuthenticationFailed,
    Brama,
    CircuitOpenError,
    Client,
    ConnectionNotFound,
    NodeUnavailable,
    Server,
)
from tests import proc_helpers
from tests.conftest import subscriptions

CTX = multiprocessing.get_context("spawn")


@pytest.fixture
def node() -> Iterator[tuple[Brama, Server]]:
    """A running system served on a private Unix socket (max_attempts=3; conftest's
    ``client`` connects to this one in this module)."""
    brama = Brama.start(max_attempts=3)
    server = brama.serve()
    yield brama, server
    brama.stop()


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (pidfd, no polling sleep)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def _subscriptions(brama: Brama) -> int:
    return len(subscriptions(brama))


# -- serving ----------------------------------------------------------------------------


def test_default_address_is_private(node: tuple[Brama, Server]) -> None:
    """serve() uses a Unix socket in a fresh 0700 directory, with a 32-byte authkey."""
    _, server = node
    assert isinstance(server.address, str)
    directory = os.path.dirname(server.address)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert len(server.authkey) == 32


def test_socket_directory_removed_on_close() -> None:
    """Closing the server removes its socket and private directory."""
    with Brama.start() as brama:
        server = brama.serve()
        directory = os.path.dirname(str(server.address))
        server.close()
        assert not os.path.exists(directory)


@pytest.mark.parametrize("host", ["10.1.2.3", "0.0.0.0", "example.com", "192.168.0.1"])
def test_non_loopback_refused(host: str) -> None:
    """A non-loopback host needs allow_remote=True."""
    with Brama.start() as brama, pytest.raises(ValueError, match="loopback"):
        brama.serve((host, 0))


def test_tcp_loopback(node: tuple[Brama, Server]) -> None:
    """TCP on 127.0.0.1 works end to end."""
    brama, _ = node
    server = brama.serve(("127.0.0.1", 0), authkey=b"secret")
    assert isinstance(server.address, tuple) and server.address[1] > 0
    with brama_actors.connect(server.address, authkey=b"secret") as client:
        client.register("db")
        assert brama.available("db")


def test_wrong_authkey(node: tuple[Brama, Server]) -> None:
    """A wrong authkey raises AuthenticationFailed; the node keeps serving."""
    _, server = node
    with pytest.raises(AuthenticationFailed):
        brama_actors.connect(server.address, authkey=b"wrong")
    with brama_actors.connect(server.address, authkey=server.authkey) as client:
        assert client.connections() == []


def test_unreachable_address(tmp_path: Any) -> None:
    """Nothing at the address: NodeUnavailable."""
    with pytest.raises(NodeUnavailable):
        brama_actors.connect(str(tmp_path / "nothing.sock"), authkey=b"k")


def _raw(address: Any) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    return sock


def test_garbage_bytes_are_dropped(node: tuple[Brama, Server]) -> None:
    """A peer sending garbage is dropped; the node keeps serving."""
    _, server = node
    for payload in (b"\x00" * 3, os.urandom(64), b"\xff\xff\xff\xff" + b"x" * 10):
        sock = _raw(server.address)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        received = b""
        try:
            while chunk := sock.recv(1024):  # the challenge, then end of file: dropped
                received += chunk
        except ConnectionResetError:
            pass  # dropped with unread data still queued: a reset instead of EOF
        assert received  # the challenge came first; a node that kept us would time out
        sock.close()
    with brama_actors.connect(server.address, authkey=server.authkey) as client:
        client.register("db")


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))  # type: ignore[attr-defined]


def test_pickle_before_authentication_is_never_unpickled(node: tuple[Brama, Server],
                                                         tmp_path: Any) -> None:
    """A valid-looking pickle sent before the handshake is never unpickled."""
    _, server = node
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.path = str(marker)  # type: ignore[attr-defined]
    frame = pickle.dumps(evil)
    sock = _raw(server.address)
    sock.sendall(len(frame).to_bytes(4, "big") + frame)
    sock.recv(1024)
    sock.close()
    with brama_actors.connect(server.address, authkey=server.authkey) as client:
        assert client.connections() == []
    assert not marker.exists()


def test_authenticated_request_with_globals_is_refused(node: tuple[Brama, Server],
                                                       tmp_path: Any) -> None:
    """Even after authentication, a request naming a global is refused and dropped."""
    _, server = node
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.path = str(marker)  # type: ignore[attr-defined]
    client = brama_actors.connect(server.address, authkey=server.authkey)
    conn = client._link._conn
    assert conn is not None
    conn.send_bytes(pickle.dumps(("request", 1, "register", {"identifier": evil})))
    with pytest.raises(NodeUnavailable):
        client._link.call("ping", _timeout=5)
    client.close()
    assert not marker.exists()


def test_oversized_request_drops_client(node: tuple[Brama, Server]) -> None:
    """A request over the frame limit drops that client only."""
    _, server = node
    with brama_actors.connect(server.address, authkey=server.authkey) as big, \
            brama_actors.connect(server.address, authkey=server.authkey) as other:
        with pytest.raises(NodeUnavailable):
            big.register("x" * (2 << 20))
        other.register("db")
        assert other.available("db")


def test_many_connections_bounded(node: tuple[Brama, Server]) -> None:
    """Many silent peers at once do not explode the thread count."""
    from brama_actors._remote._server import MAX_HANDSHAKES

    _, server = node
    before = threading.active_count()
    socks = [_raw(server.address) for _ in range(60)]
    try:
        for sock in socks:  # each gets the challenge once a handshake slot is free
            if socks.index(sock) < MAX_HANDSHAKES:
                assert sock.recv(64)
        assert threading.active_count() - before <= MAX_HANDSHAKES + 2
    finally:
        for sock in socks:
            sock.close()
    with brama_actors.connect(server.address, authkey=server.authkey) as client:
        client.register("db")


# -- the client API -------------------------------------------------------------------------


def test_client_has_the_same_results_and_errors(node: tuple[Brama, Server],
                                                client: Client) -> None:
    """A client's calls behave like the local system's."""
    brama, _ = node
    status = client.register("db", scope="eu", max_attempts=2)
    assert status.max_attempts == 2 and status.scope == "eu"
    with pytest.raises(brama_actors.AlreadyRegistered):
        client.register("db", scope="eu")
    with pytest.raises(ConnectionNotFound):
        client.failure("nope")
    with pytest.raises(ConnectionNotFound):
        client.success("nope")
    with pytest.raises(brama_actors.InvalidIdentifier):
        client.available("")
    client.failure("db", scope="eu")
    client.failure("db", scope="eu")
    assert client.available("db", scope="eu") is False  # read-your-writes
    assert brama.available("db", scope="eu") is False
    assert client.status("db", scope="eu").state == "open"
    client.reset_circuit("db", scope="eu")
    assert client.available("db", scope="eu")
    client.open_circuit("db", scope="eu", expiry=60_000)
    assert not client.available("db", scope="eu")
    client.close_circuit("db", scope="eu")
    client.configure("db", scope="eu", max_attempts=5)
    assert brama.status("db", scope="eu").max_attempts == 5
    client.configure(max_attempts=7)
    assert client.register("new").max_attempts == 7
    assert {s.identifier for s in client.connections()} == {"db", "new"}
    client.success("new")
    client.drain()
    assert brama.status("new").total_successes == 1
    assert client.unregister("new") is True
    assert client.available("new") is False


def test_replica_follows_other_writers(node: tuple[Brama, Server], client: Client) -> None:
    """State changes made on the node reach the client's replica."""
    brama, _ = node
    brama.register("db", max_attempts=1)
    sub = client.subscribe(events=["state_change"], connection="db")
    brama.failure("db")
    sub.get(timeout=5)  # the push for it went out before the event
    client.drain()
    assert client.available("db") is False
    brama.reset_circuit("db")
    sub.get(timeout=5)
    client.drain()
    assert client.available("db") is True


def test_remote_subscriptions_and_filters(node: tuple[Brama, Server], client: Client) -> None:
    """Subscriptions deliver in the client; filter callables run in the node."""
    brama, _ = node
    seen: list[str] = []
    wanted = "db"
    inbox = client.subscribe(events=["failure"], filter=lambda e: e.connection == wanted)
    client.subscribe(handler=lambda e: seen.append(e.event.value), events=["registration"])
    batches = client.subscribe(events=["failure"], batch_size=2)
    brama.register("db", max_attempts=100)
    brama.register("other", max_attempts=100)
    brama.failure("other")
    brama.failure("db")
    brama.failure("db")
    client.drain()
    assert [e.connection for e in (inbox.get(timeout=1), inbox.get(timeout=1))] == ["db", "db"]
    assert seen == ["registration", "registration"]
    assert len(batches.get(timeout=1)) == 2  # type: ignore[arg-type]
    assert client.unsubscribe(inbox) is True
    assert client.unsubscribe() == 2


def test_client_guard_and_decorator(node: tuple[Brama, Server], client: Client) -> None:
    """Guards and the decorator work through a client, including half-open admission."""
    brama, _ = node

    @brama_actors.circuit_breaker("api", brama=client, max_attempts=2, expiry=60_000)
    def call(fail: bool) -> str:
        if fail:
            raise ConnectionError("down")
        return "ok"

    assert call(False) == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            call(True)
    with pytest.raises(CircuitOpenError) as info:
        call(False)
    assert info.value.status.state == "open"
    from brama_actors.testing import set_state

    set_state("api", "half_open", brama=brama)
    client.drain()
    block = client.guard("api")
    block.__enter__()
    with pytest.raises(CircuitOpenError), client.guard("api"):
        pass
    block.__exit__(None, None, None)
    assert brama.status("api").state == "closed"
    with client.guard("api"):
        pass


# -- processes ------------------------------------------------------------------------------


def test_worker_processes_share_circuits(node: tuple[Brama, Server]) -> None:
    """Failures reported from worker processes trip the node's circuit for everyone."""
    brama, server = node
    brama.register("payments", max_attempts=4)
    pipes = []
    workers = []
    for _ in range(2):
        parent_end, child_end = CTX.Pipe()
        worker = CTX.Process(target=proc_helpers.report_failures,
                             args=(server.address, server.authkey, "payments", 2, child_end))
        worker.start()
        pipes.append(parent_end)
        workers.append(worker)
    for parent_end in pipes:
        assert parent_end.poll(30)
        parent_end.recv()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert brama.status("payments").total_failures == 4
    assert not brama.available("payments")


def test_killed_client_loses_its_subscriptions(node: tuple[Brama, Server]) -> None:
    """A client killed with SIGKILL loses its subscriptions; nothing else changes."""
    brama, server = node
    brama.register("db")
    mine = brama.subscribe()
    parent_end, child_end = CTX.Pipe()
    worker = CTX.Process(target=proc_helpers.subscribe_then_wait,
                         args=(server.address, server.authkey, child_end))
    worker.start()
    assert parent_end.poll(30)
    parent_end.recv()
    before = _subscriptions(brama)
    assert server.clients == 1
    os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
    worker.join(30)
    assert server.wait_for_clients(0, timeout=10)
    assert _subscriptions(brama) == before - 2
    brama.failure("db")
    brama.drain()
    assert brama.status("db").failure_count == 1
    assert mine.get(timeout=1).event == "failure"  # type: ignore[union-attr]


def test_node_restart_client_reconnects_and_resyncs(tmp_path: Any) -> None:
    """Node stopped and restarted at the same address: the client reconnects, resyncs."""
    address = str(tmp_path / "node.sock")
    first = Brama.start()
    server = first.serve(address, authkey=b"k")
    client = brama_actors.connect(address, authkey=b"k")
    client.register("db")
    first.stop()
    with pytest.raises(NodeUnavailable):
        client.status("db")
    assert client.available("db") is True  # last known state, not yet stale
    second = Brama.start(max_attempts=1)
    second.register("db")
    second.failure("db")
    second.serve(address, authkey=b"k")
    assert client.wait_connected(timeout=10)
    assert client.available("db") is False  # resynced from the new node
    assert client.status("db").state == "open"
    client.close()
    second.stop()
    assert server is not None


@pytest.mark.parametrize(("when_stale", "expected"), [("allow", True), ("deny", False)])
def test_stale_behaviour(tmp_path: Any, when_stale: str, expected: bool) -> None:
    """After stale_after ms without the node, available() answers per when_stale."""
    now = [100.0]
    address = str(tmp_path / "node.sock")
    brama = Brama.start(max_attempts=1)
    brama.serve(address, authkey=b"k")
    brama.register("up")
    brama.register("down")
    brama.failure("down")
    client = Client(address, b"k", stale_after=1_000, when_stale=when_stale,
                    _monotonic=lambda: now[0])
    brama.stop()
    assert client._authority.unlinked.wait(10)
    assert client.available("up") is True and client.available("down") is False
    now[0] += 0.999
    assert client.available("down") is False  # still within stale_after
    now[0] += 0.002
    assert client.available("up") is expected
    assert client.available("down") is expected
    client.close()


def test_spawn_and_close_stops_node() -> None:
    """spawn() runs a node in a child; closing the client stops it."""
    client = brama_actors.spawn(max_attempts=1)
    process = client._process
    client.register("db")
    client.failure("db")
    assert client.available("db") is False
    client.close()
    assert not process.is_alive()
    assert process.exitcode == 0


def test_spawned_node_exits_with_its_parent() -> None:
    """When the parent dies (SIGKILL), the spawned node exits too."""
    parent_end, child_end = CTX.Pipe()
    parent = CTX.Process(target=proc_helpers.spawn_node_and_report, args=(child_end,))
    parent.start()
    assert parent_end.poll(60)
    node_pid = parent_end.recv()
    os.kill(parent.pid, signal.SIGKILL)  # type: ignore[arg-type]
    parent.join(30)
    assert _wait_gone(node_pid, 30)


def test_spawn_rejects_bad_config() -> None:
    """spawn() validates options before starting a process."""
    with pytest.raises(brama_actors.InvalidConfiguration):
        brama_actors.spawn(max_attempts=0)


def test_module_level_serve() -> None:
    """brama_actors.serve() serves the default system."""
    server = brama_actors.serve()
    with brama_actors.connect(server.address, authkey=server.authkey) as client:
        client.register("db")
    assert brama_actors.available("db")


def test_close_racing_a_reconnect_leaves_no_thread(node: tuple[Brama, Server],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """close() while the link is reconnecting: the new connection is hung up, no reader
    thread starts after close, and close() never joins a thread not yet started."""
    from brama_actors._remote import _link
    from brama_actors._remote._wire import hang_up

    _, server = node
    client = brama_actors.connect(server.address, authkey=server.authkey)
    real = _link.mpc.Client
    connected, release = threading.Event(), threading.Event()

    def slow_client(*args: Any, **kwargs: Any) -> Any:
        conn = real(*args, **kwargs)
        connected.set()  # connected again; close() now runs before the link records it
        release.wait(10)
        return conn

    monkeypatch.setattr(_link.mpc, "Client", slow_client)
    link = client._link
    conn = link._conn
    assert conn is not None
    hang_up(conn)  # the reader sees the link drop and starts reconnecting
    assert connected.wait(10)
    closer = threading.Thread(target=client.close, args=(10.0,))
    closer.start()
    assert link._wake.wait(10)  # close() has marked the link closed
    release.set()
    closer.join(15)
    assert not closer.is_alive()
    assert link._conn is None
    left = [t.name for t in threading.enumerate() if t.name.startswith(client.name)]
    assert left == []
