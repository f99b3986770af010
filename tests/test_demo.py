"""``python -m brama_actors demo``: runs, shows circuits and events, exits cleanly."""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MappingProxyType
from typing import IO, Any

import pytest

from brama_actors import CircuitState, Event, EventType
from brama_actors.__main__ import main
from brama_actors._cli._demo import Display, _Interrupts, _services, run

#: Seconds a subprocess test waits for a line or an exit before failing.
WAIT = 30.0


def _demo_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("demo-") and t.is_alive()]


# -- in process ------------------------------------------------------------------------------
def test_demo_in_process_shows_states_and_events(capsys: pytest.CaptureFixture[str]) -> None:
    """A short run prints tables, each transition as it happens, failures, then a summary."""
    assert main(["demo", "--duration", "1.5", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "seed 1" in text
    assert text.count("--- t=") >= 2  # the tables during the run, and the final one
    for name in ("catalog", "payments", "inventory"):
        assert name in text
    assert "closed -> open  (Threshold exceeded; half-open in 0.2 s)" in text
    assert "open -> half_open  (Expiry reached)" in text  # circuits heal by themselves
    assert "half_open -> closed  (Success in half_open)" in text
    assert "failures since the last table: " in text
    assert "summary (done after" in text
    assert "\x1b[" not in text  # no colour codes when not on a terminal
    assert not _demo_threads()


def test_run_prints_to_the_given_stream(capsys: pytest.CaptureFixture[str]) -> None:
    """``run(out=...)`` writes there, and nothing to stdout."""
    out = io.StringIO()
    assert run(duration=0.2, seed=2, out=out) == 0
    assert "summary (done after" in out.getvalue()
    assert capsys.readouterr().out == ""


class _PressCtrlC(io.StringIO):
    """An output that sends SIGINT to this process when a line starting so is printed."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = list(starts)

    def write(self, text: str) -> int:
        if self.starts and text.startswith(self.starts[0]):
            self.starts.pop(0)
            os.kill(os.getpid(), signal.SIGINT)
        return super().write(text)


def test_ctrl_c_in_process_stops_everything() -> None:
    """Ctrl-C returns 0 with a summary, leaves no thread, and restores the SIGINT handler."""
    handler = signal.getsignal(signal.SIGINT)
    out = _PressCtrlC("--- t=")
    assert run(duration=30, seed=3, out=out) == 0
    text = out.getvalue()
    assert "interrupted: stopped the workers and the system" in text
    assert "summary (interrupted after" in text
    assert not _demo_threads()
    assert signal.getsignal(signal.SIGINT) is handler


def test_second_ctrl_c_does_not_cut_the_summary() -> None:
    """A second Ctrl-C after the first one's shutdown is ignored: the summary is complete."""
    out = _PressCtrlC("--- t=", "\ninterrupted")
    assert run(duration=30, seed=4, out=out) == 0
    assert "refused while a circuit was open" in out.getvalue()  # the summary's last line
    assert not out.starts  # both presses happened
    assert not _demo_threads()


def test_interrupts_raise_once_then_ignore() -> None:
    """The demo's SIGINT handler raises KeyboardInterrupt once, then only when re-armed."""
    interrupts = _Interrupts()
    with pytest.raises(KeyboardInterrupt):
        interrupts.handle(signal.SIGINT, None)
    interrupts.handle(signal.SIGINT, None)  # a second press: ignored
    interrupts.armed = True
    with pytest.raises(KeyboardInterrupt):
        interrupts.handle(signal.SIGINT, None)


def _event(kind: EventType, connection: str, at: int, **data: Any) -> Event:
    return Event(kind, at, connection, None, MappingProxyType(data))


def test_display_prints_transitions_and_summarises_failures() -> None:
    """One line per state change (with the opening's expiry), failures counted per table."""
    display = Display(_services(), start_ms=1_000, color=False)
    closed, opened = CircuitState.CLOSED, CircuitState.OPEN
    assert display.event(_event(EventType.FAILURE, "payments", 1_500, state=opened,
                                failure_count=3,
                                reason="TimeoutError('payments: timed out')")) is None
    assert display.event(_event(EventType.CIRCUIT_OPENED, "payments", 1_500, state=opened,
                                failure_count=3, reason="Threshold exceeded",
                                opened_at=1_500, expiry=2_000)) is None
    line = display.event(_event(EventType.STATE_CHANGE, "payments", 1_500, state=opened,
                                failure_count=3, previous_state=closed, new_state=opened,
                                reason="Threshold exceeded"))
    assert line == ("  t=  0.5s  payments: closed -> open  "
                    "(Threshold exceeded; half-open in 2.0 s)")
    table = display.table({}, now_ms=2_000)
    assert table.startswith("--- t=  1.0s ")
    assert table.endswith("failures since the last table: payments 1x TimeoutError")
    assert "failures since" not in display.table({}, now_ms=3_000)  # counted once
    summary = display.summary(2.0, seed=7, interrupted=False).splitlines()
    assert summary[0] == "summary (done after 2.0 s, seed 7):"
    payments = next(line for line in summary if line.startswith("  payments "))
    assert payments.endswith("opened 1 time(s)")
    assert summary[-1].endswith("; 1 state change(s)")


def test_display_colours_states_only_when_asked() -> None:
    """With colour on, a transition line carries the new state's ANSI colour."""
    display = Display(_services(), start_ms=0, color=True)
    closed, half = CircuitState.CLOSED, CircuitState.HALF_OPEN
    line = display.event(_event(EventType.STATE_CHANGE, "inventory", 10, state=closed,
                                failure_count=0, previous_state=half, new_state=closed,
                                reason="Success in half_open"))
    assert line is not None and line.startswith("\x1b[32m") and line.endswith("\x1b[0m")


# -- command line ----------------------------------------------------------------------------
def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a sub-command the CLI prints help and exits 2."""
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m brama_actors")
    assert "demo" in err


@pytest.mark.parametrize("duration", ["0", "-1", "nan", "inf"])
def test_bad_duration(duration: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A duration that is not a finite number > 0 is refused with exit code 2."""
    assert main(["demo", "--duration", duration]) == 2
    assert "--duration must be a finite number > 0" in capsys.readouterr().err


def test_module_without_command_exits_with_usage() -> None:
    """``python -m brama_actors`` alone exits non-zero with the usage on stderr."""
    result = subprocess.run([sys.executable, "-m", "brama_actors"], capture_output=True,
                            text=True, timeout=WAIT, check=False)
    assert result.returncode == 2
    assert "usage: python -m brama_actors" in result.stderr


def test_demo_subprocess_exits_zero() -> None:
    """The real command runs and exits 0."""
    result = subprocess.run([sys.executable, "-m", "brama_actors", "demo", "--duration", "1"],
                            capture_output=True, text=True, timeout=WAIT, check=False)
    assert result.returncode == 0, result.stderr
    assert "summary (done after" in result.stdout
    assert result.stderr == ""


class _Demo:
    """A demo subprocess whose output is read by threads, so every wait is bounded."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "brama_actors", "demo", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.err: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.lines.put),
                             name="test-demo-stdout"),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err.append),
                             name="test-demo-stderr"),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], put: Callable[[str | None], None]) -> None:
        for line in stream:
            put(line)
        put(None)

    def wait_for(self, start: str) -> str:
        """Return the first line starting with ``start`` (fails after ``WAIT`` s or EOF)."""
        while True:
            line = self.lines.get(timeout=WAIT)
            assert line is not None, f"the demo ended before {start!r}: {self.seen}"
            self.seen.append(line)
            if line.startswith(start):
                return line

    def finish(self) -> tuple[int, str, str]:
        """Wait for the exit; return ``(returncode, stdout, stderr)``."""
        code = self.process.wait(timeout=WAIT)
        for reader in self._readers:
            reader.join(WAIT)
        rest: list[str] = []
        while (line := self.lines.get(timeout=WAIT)) is not None:
            rest.append(line)
        return code, "".join(self.seen + rest), "".join(e for e in self.err if e is not None)

    def kill(self) -> None:
        """Make sure the process and the readers are gone (after a failed test too)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=WAIT)
        for reader in self._readers:
            reader.join(WAIT)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.process.stdout.close()
        self.process.stderr.close()


@contextmanager
def _demo(*args: str) -> Iterator[_Demo]:
    demo = _Demo(*args)
    try:
        yield demo
    finally:
        demo.kill()


def test_demo_ctrl_c_exits_cleanly() -> None:
    """SIGINT while the demo runs: it stops its system and exits 0 promptly, no traceback."""
    with _demo("--duration", "60") as demo:
        demo.wait_for("--- t=")  # the first table is on screen: the demo is running
        demo.process.send_signal(signal.SIGINT)
        code, out, err = demo.finish()
    assert code == 0, err
    assert err == ""
    assert "interrupted: stopped the workers and the system" in out
    assert "summary (interrupted after" in out


def test_demo_serves_for_watch() -> None:
    """demo --serve prints a watch command (0600 key file) that works; cleaned up after."""
    with _demo("--duration", "60", "--serve") as demo:
        command = demo.wait_for("  python -m brama_actors watch").strip()
        keyfile = command.split("--authkey-file", 1)[1].strip()
        assert os.stat(keyfile).st_mode & 0o777 == 0o600
        watch = subprocess.run([sys.executable, *command.split()[1:], "--once"],
                               capture_output=True, text=True, timeout=WAIT, check=False)
        assert watch.returncode == 0, watch.stderr
        assert "catalog" in watch.stdout and "payments" in watch.stdout
        demo.process.send_signal(signal.SIGINT)
        code, _, err = demo.finish()
    assert code == 0, err
    assert not os.path.exists(keyfile)
