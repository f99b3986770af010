"""``python -m brama_actors watch``: authkey handling and the rendered view."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from brama_actors import Brama, Server
from brama_actors._cli._watch import main, parse_address, read_authkey
from tests.screens import Screens


@pytest.fixture
def served() -> Iterator[tuple[Brama, Server]]:
    brama = Brama.start(max_attempts=1)
    server = brama.serve()
    yield brama, server
    brama.stop()


def _args(address: Any, **kwargs: Any) -> argparse.Namespace:
    defaults = {"authkey_file": None, "once": True, "interval": 1.0, "events": 10,
                "fleet": None, "namespace": "brama", "duration": None}
    defaults.update(kwargs)
    return argparse.Namespace(address=str(address), **defaults)


def test_once_prints_a_snapshot(served: tuple[Brama, Server],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--once prints every circuit with state, failures, time in state, success rate."""
    brama, server = served
    brama.register("payments", scope="eu")
    brama.register("search")
    brama.success("search")
    brama.failure("payments", scope="eu", reason="timeout")
    monkeypatch.setenv("BRAMA_AUTHKEY", server.authkey.hex())
    out = io.StringIO()
    assert main(_args(server.address), out) == 0
    text = out.getvalue()
    assert "2 circuit(s)" in text
    line = next(line for line in text.splitlines() if line.startswith("payments"))
    assert "eu" in line and "open" in line and " 1 " in line and "0%" in line
    search = next(line for line in text.splitlines() if line.startswith("search"))
    assert "closed" in search and "100%" in search


def test_authkey_file_must_be_private(tmp_path: Any, served: tuple[Brama, Server]) -> None:
    """A key file others can read is refused; a 0600 one works."""
    _, server = served
    key = tmp_path / "key"
    key.write_text(server.authkey.hex())
    os.chmod(key, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_authkey(str(key))
    os.chmod(key, 0o600)
    assert read_authkey(str(key)) == server.authkey
    out = io.StringIO()
    assert main(_args(server.address, authkey_file=str(key)), out) == 0


def test_missing_or_wrong_key(served: tuple[Brama, Server],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No key: exit 2; a wrong key: exit 1 with a message."""
    _, server = served
    monkeypatch.delenv("BRAMA_AUTHKEY", raising=False)
    assert main(_args(server.address), io.StringIO()) == 2
    monkeypatch.setenv("BRAMA_AUTHKEY", "00" * 32)
    assert main(_args(server.address), io.StringIO()) == 1


def test_parse_address() -> None:
    """Paths stay paths; host:port becomes a tuple."""
    assert parse_address("/tmp/x/node.sock") == "/tmp/x/node.sock"
    assert parse_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:7000") == ("::1", 7000)


def test_command_line_once(served: tuple[Brama, Server]) -> None:
    """The real command with --once exits 0 and never takes the key as an argument."""
    brama, server = served
    brama.register("db")
    env = dict(os.environ, BRAMA_AUTHKEY=server.authkey.hex())
    result = subprocess.run(
        [sys.executable, "-m", "brama_actors", "watch", str(server.address), "--once"],
        capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "db" in result.stdout


def test_latest_events_show_transitions_and_failures_not_successes(
        served: tuple[Brama, Server], monkeypatch: pytest.MonkeyPatch) -> None:
    """A healthy service's successes are counted in the table, never listed as events."""
    brama, server = served
    brama.register("healthy")
    brama.register("flaky")
    monkeypatch.setenv("BRAMA_AUTHKEY", server.authkey.hex())
    out = Screens()
    stop = threading.Event()
    result: list[int] = []
    watcher = threading.Thread(
        target=lambda: result.append(main(_args(server.address, once=False, interval=0.05),
                                           out, stop)))
    watcher.start()
    try:
        assert server.wait_for_clients(1, timeout=10)
        with out.flushed:  # the watch subscribed before its first screen
            assert out.flushed.wait_for(lambda: "circuit(s)" in out.getvalue(), 10)
        for _ in range(200):
            brama.success("healthy")
        brama.failure("flaky", reason="timeout")
        brama.drain()
        with out.flushed:
            assert out.flushed.wait_for(
                lambda: "flaky: state_change" in out.getvalue(), 10)
    finally:
        stop.set()
        watcher.join(10)
    assert result == [0]
    last = out.getvalue().rsplit("circuit(s)", 1)[1]
    healthy = next(line for line in last.splitlines() if line.startswith("healthy"))
    assert " 200 " in healthy
    assert "flaky: failure (timeout)" in last
    assert "flaky: state_change closed -> open" in last
    assert ": success" not in out.getvalue()


def test_duration_ends_the_live_view(served: tuple[Brama, Server]) -> None:
    """--duration stops the live view by itself, after several screens, with exit 0."""
    brama, server = served
    brama.register("db")
    env = dict(os.environ, BRAMA_AUTHKEY=server.authkey.hex())
    result = subprocess.run(
        [sys.executable, "-m", "brama_actors", "watch", str(server.address), "--duration",
         "0.5", "--interval", "0.1"],
        capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("1 circuit(s)") >= 2
