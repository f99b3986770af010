"""A real HTTP server for the integration tests: the standard library's, on 127.0.0.1.

Each test module makes its own fixture from :func:`serve`::

    @pytest.fixture
    def upstream() -> Iterator[Upstream]:
        with serve() as server:
            yield server

The server answers every request as told by :meth:`Upstream.answer`:

* an int: that status code, with a small body;
* ``"close"``: close the socket without answering (the client sees a transport error);
* ``"hold"``: 200, but only once the test sets :attr:`Upstream.release` (a request in
  flight, holding whatever it holds, e.g. a half-open trial permit);
* ``"stream"``: 200 with a :data:`STREAM_SIZE`-byte body, of which only the first
  :data:`FIRST_CHUNK` bytes are sent until the test sets :attr:`Upstream.release`. A
  client that buffered the body could not return before that, which is how the tests
  prove the body is not read by the integration.

It counts the requests it saw, so a test can prove a refused request never left the
client. It speaks HTTP/1.0 (one request per connection, no keep-alive), so every handler
thread ends with its response, and leaving :func:`serve` joins them all.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FIRST_CHUNK", "STREAM_SIZE", "Upstream", "serve"]

STREAM_SIZE = 4 * 1024 * 1024
FIRST_CHUNK = 16 * 1024
#: How long a ``"hold"`` or ``"stream"`` answer waits for ``release`` before going on.
RELEASE_TIMEOUT = 10.0


class Upstream:
    """The running server: its address, what it answers, and what it saw."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.port: int = server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._mode: int | str = 200
        self._count = 0
        self.paths: list[str] = []
        #: Set by the test to let a ``"stream"`` answer send the rest of its body.
        self.release = threading.Event()
        #: Set by the server when a request arrives (clear it to wait for the next one).
        self.arrived = threading.Event()
        #: Set by the server once a ``"stream"`` answer has sent its whole body.
        self.body_sent = threading.Event()

    def answer(self, mode: int | str) -> None:
        """What every following request gets: a status, ``"close"``, ``"hold"``, ``"stream"``."""
        if not (isinstance(mode, int) or mode in ("close", "hold", "stream")):
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self._mode = mode

    @property
    def requests(self) -> int:
        """How many requests reached the server."""
        with self._lock:
            return self._count

    def _take(self, path: str) -> int | str:
        with self._lock:
            self._count += 1
            self.paths.append(path)
            mode = self._mode
        self.arrived.set()
        return mode


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        mode = self.server.upstream._take(self.path)
        if mode == "close":
            self.close_connection = True
            return  # nothing written: the client sees the socket close
        if mode == "stream":
            self._stream()
            return
        if mode == "hold":
            self.server.upstream.release.wait(RELEASE_TIMEOUT)
            mode = 200
        assert isinstance(mode, int)
        body = f"answer {mode}\n".encode()
        self.send_response(mode)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def _stream(self) -> None:
        upstream = self.server.upstream
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(STREAM_SIZE))
        self.end_headers()
        self.wfile.write(b"x" * FIRST_CHUNK)
        self.wfile.flush()
        upstream.release.wait(RELEASE_TIMEOUT)
        try:
            self.wfile.write(b"x" * (STREAM_SIZE - FIRST_CHUNK))
            self.wfile.flush()
        except OSError:
            return  # the client went away: nothing more to send
        upstream.body_sent.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so none outlives the fixture.
    daemon_threads = False
    block_on_close = True
    upstream: Upstream


@contextlib.contextmanager
def serve() -> Iterator[Upstream]:
    """Run a server on 127.0.0.1 (a free port) for the ``with`` block, then stop it."""
    server = _Server(("127.0.0.1", 0), _Handler)
    upstream = server.upstream = Upstream(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="test-http-server", daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        upstream.release.set()  # no streaming handler waits past the test
        server.shutdown()
        server.server_close()
        thread.join(10)
        assert not thread.is_alive(), "the test HTTP server did not stop"
