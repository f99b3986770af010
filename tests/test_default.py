"""Module-level functions act on a lazily started default system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import brama_actors
from brama_actors import BramaError
from brama_actors._system import _default


def test_lazy_default_system() -> None:
    """The first module-level call starts the default system; stop() ends it."""
    assert _default._default is None
    brama_actors.register("db", max_attempts=1)
    first = _default._default
    assert first is not None
    brama_actors.failure("db")
    assert brama_actors.available("db") is False
    assert brama_actors.status("db").state == "open"
    assert [s.identifier for s in brama_actors.connections()] == ["db"]
    brama_actors.stop()
    assert first.stopped
    assert brama_actors.available("db") is False  # a fresh system: unknown connection
    assert _default._default is not first


def test_module_level_functions_cover_the_api() -> None:
    """Every module-level function delegates to the default system."""
    brama_actors.configure(max_attempts=2)
    sub = brama_actors.subscribe(events=["circuit_reset"])
    brama_actors.register("db")
    brama_actors.success("db")
    brama_actors.open_circuit("db")
    brama_actors.close_circuit("db")
    brama_actors.reset_circuit("db")
    brama_actors.configure("db", max_attempts=3)
    assert brama_actors.status("db").max_attempts == 3
    brama_actors.drain()
    assert sub.get(timeout=1).event == "circuit_reset"  # type: ignore[union-attr]
    assert brama_actors.unsubscribe(sub) is True
    assert brama_actors.unsubscribe() == 0
    assert brama_actors.unregister("db") is True


def test_explicit_start() -> None:
    """start() starts the default explicitly and refuses a second start."""
    brama = brama_actors.start(max_attempts=1)
    assert brama.register("x").max_attempts == 1
    with pytest.raises(BramaError, match="already running"):
        brama_actors.start()
    brama_actors.stop()
    brama_actors.start()


def test_interpreter_exits_with_default_system_running() -> None:
    """A program that never stops the default system still exits promptly."""
    code = textwrap.dedent("""
        import brama_actors
        brama_actors.register("db")
        brama_actors.subscribe(handler=lambda e: None)
        brama_actors.failure("db")
        print("done")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
