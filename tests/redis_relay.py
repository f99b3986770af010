"""A relay between a fleet system and the test Redis, for faults Redis cannot make itself.

It listens on a Unix socket of its own and relays each connection to the real server's
socket, reading the commands that pass (RESP arrays, as redis-py sends them) so a test
can:

* lose the reply of one chosen command (:meth:`Relay.lose_reply`): the command reaches
  Redis, Redis runs it and answers, and the relay then closes the client's side of that
  connection without passing the answer on: what a proxy or a failing network does;
* slow every reply down (:attr:`Relay.delay`, seconds: each reply is held that long);
* cut connections (:meth:`Relay.cut`), sparing those that carried a given command
  (wait for that command first: :meth:`Relay.wait_for`).

It records every command it relayed (:attr:`Relay.commands`) and counts the connections
it accepted (:attr:`Relay.accepted`).
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

#: A command as its arguments (bytes), e.g. ``[b"EVALSHA", sha, b"8", ...]``.
Command = list[bytes]


def script_op(command: Command) -> bytes | None:
    """The fleet op of an EVALSHA/EVAL command (its ARGV[1]), None for other commands."""
    if command[0].upper() not in (b"EVALSHA", b"EVAL"):
        return None
    return command[3 + int(command[2])]


def _parse(buffer: bytearray) -> tuple[Command, int] | None:
    """The first complete command in ``buffer`` and its length in bytes, or None."""
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    if buffer[:1] != b"*":  # an inline command (redis-py never sends one)
        return [bytes(buffer[:end])], end + 2
    count, at, args = int(buffer[1:end]), end + 2, []
    for _ in range(count):
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        size = int(buffer[at + 1:end])
        start = end + 2
        if len(buffer) < start + size + 2:
            return None
        args.append(bytes(buffer[start:start + size]))
        at = start + size + 2
    return args, at


class _Pair:
    """One relayed connection: the client's socket and ours to Redis."""

    def __init__(self, outer: socket.socket, inner: socket.socket) -> None:
        self.outer = outer
        self.inner = inner
        self.commands: list[Command] = []
        self.lose_next = False  # the next reply is lost, and the connection with it

    def close(self) -> None:
        for sock in (self.outer, self.inner):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class Relay:
    """Listens on ``path`` (a Unix socket in a private directory), relays to ``target``.

    Args:
        target: the Unix socket of the real server.
    """

    def __init__(self, target: Path) -> None:
        self._target = str(target)
        self._dir = tempfile.TemporaryDirectory(prefix="brama-relay-", dir="/tmp")
        self.path = Path(self._dir.name) / "relay.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self._lock = threading.Lock()
        self._relayed = threading.Condition(self._lock)  # a command was recorded
        self._pairs: list[_Pair] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._lose: Callable[[Command], bool] | None = None
        #: Set once a reply was lost (:meth:`lose_reply`).
        self.lost = threading.Event()
        #: Seconds every reply is held before it is passed on.
        self.delay = 0.0
        #: Every command relayed, in order.
        self.commands: list[Command] = []
        #: Connections accepted so far.
        self.accepted = 0
        self._start(self._accept)

    @property
    def url(self) -> str:
        """The URL a fleet system connects to (through the relay)."""
        return f"unix://{self.path}"

    def lose_reply(self, chosen: Callable[[Command], bool]) -> None:
        """Lose the reply of the next command for which ``chosen`` is true (once)."""
        self.lost.clear()
        with self._lock:
            self._lose = chosen

    def sent(self, op: bytes) -> int:
        """How many script calls of fleet op ``op`` went through (attempts, retries)."""
        with self._lock:
            return sum(1 for command in self.commands if script_op(command) == op)

    def wait_for(self, name: bytes, timeout: float) -> bool:
        """Wait until a command ``name`` (e.g. ``b"XREAD"``) went through; False on
        timeout."""
        with self._relayed:
            return self._relayed.wait_for(
                lambda: any(c[0].upper() == name for c in self.commands), timeout)

    def cut(self, sparing: bytes | None = None) -> int:
        """Close every relayed connection (but those that carried the command
        ``sparing``, e.g. ``b"XREAD"``: a tail's); how many were closed.

        A connection that will carry ``sparing`` but has not yet (being opened, in its
        handshake) is cut: :meth:`wait_for` the command first."""
        with self._lock:
            cut = [pair for pair in self._pairs
                   if sparing is None or all(c[0].upper() != sparing for c in pair.commands)]
            self._pairs = [pair for pair in self._pairs if pair not in cut]
        for pair in cut:
            pair.close()
        return len(cut)

    # -- relaying --------------------------------------------------------------------------
    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="redis-relay")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                outer, _ = self._listener.accept()
            except OSError:
                return  # closed
            inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                inner.connect(self._target)
            except OSError:
                outer.close()
                inner.close()
                continue
            pair = _Pair(outer, inner)
            with self._lock:
                if self._closed.is_set():
                    pair.close()
                    return
                self._pairs.append(pair)
                self.accepted += 1
            self._start(self._requests, pair)
            self._start(self._replies, pair)

    def _requests(self, pair: _Pair) -> None:
        """Client to Redis: every byte passes; complete commands are recorded first."""
        buffer = bytearray()
        try:
            while data := pair.outer.recv(65536):
                buffer += data
                while (parsed := _parse(buffer)) is not None:
                    command, size = parsed
                    del buffer[:size]
                    with self._lock:
                        self.commands.append(command)
                        pair.commands.append(command)
                        self._relayed.notify_all()
                        if self._lose is not None and self._lose(command):
                            self._lose = None
                            pair.lose_next = True  # before Redis can answer it
                pair.inner.sendall(data)
        except OSError:
            pass
        pair.close()

    def _replies(self, pair: _Pair) -> None:
        """Redis to client: held ``delay`` s; a lost reply closes the client's side."""
        try:
            while data := pair.inner.recv(65536):
                if pair.lose_next:  # Redis ran the command: its answer goes nowhere
                    # Set before the close: the client sees the close, retries and may
                    # return (and its test check ``lost``) before this thread runs again.
                    self.lost.set()
                    pair.close()
                    return
                if self.delay and self._closed.wait(self.delay):
                    break
                pair.outer.sendall(data)
        except OSError:
            pass
        pair.close()

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening, cut every relayed connection, wait for the relay threads."""
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        self.cut()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        self._dir.cleanup()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
