"""``python -m brama_actors demo``: runs, shows circuits and events, exits cleanly."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pytest

from brama_actors.__main__ import main
from brama_actors._demo import run


def test_demo_in_process_shows_states_and_events() -> None:
    """A short run prints tables of every service and state changes, then a summary."""
    out = io.StringIO()
    assert run(duration=2.5, seed=1, out=out) == 0
    text = out.getvalue()
    for name in ("catalog", "payments", "inventory"):
        assert name in text
    assert "closed -> open" in text  # the flaky and the failing service trip
    assert "open -> half_open" in text  # and heal by themselves
    assert "summary:" in text
    assert "\x1b[" not in text  # no colour codes when not on a terminal


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a sub-command the CLI prints help and exits 2."""
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_bad_duration() -> None:
    """A non-positive duration is refused."""
    assert main(["demo", "--duration", "0"]) == 2


def test_demo_subprocess_exits_zero() -> None:
    """The real command runs and exits 0."""
    result = subprocess.run([sys.executable, "-m", "brama_actors", "demo", "--duration", "1"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "summary:" in result.stdout


def test_demo_ctrl_c_exits_cleanly() -> None:
    """SIGINT while the demo runs: it stops its system and exits 0, no traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "brama_actors", "demo", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert process.stdout is not None
    for line in process.stdout:  # wait until the first table is on screen
        if line.startswith("service"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "summary:" in out


def test_demo_serves_for_watch() -> None:
    """demo --serve prints a watch command (0600 key file) that works; cleaned up after."""
    process = subprocess.Popen(
        [sys.executable, "-m", "brama_actors", "demo", "--duration", "60", "--serve"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert process.stdout is not None
    command = ""
    for line in process.stdout:
        if "brama_actors watch" in line:
            command = line.strip()
            break
    try:
        keyfile = command.split("--authkey-file", 1)[1].strip()
        assert os.stat(keyfile).st_mode & 0o777 == 0o600
        watch = subprocess.run([sys.executable, *command.split()[1:], "--once"],
                               capture_output=True, text=True, timeout=60, check=False)
        assert watch.returncode == 0, watch.stderr
        assert "catalog" in watch.stdout and "payments" in watch.stdout
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 0
    assert not os.path.exists(keyfile)
