"""Every script in examples/ runs to completion (pytest-style ``*_test.py`` ones pass)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

#: Seconds one example may take; below the suite's 60 s pytest-timeout so that a hung
#: example fails with its own name and output rather than a bare timeout.
EXAMPLE_TIMEOUT = 50


def _command(path: Path) -> list[str]:
    if path.name.endswith("_test.py"):
        # An example written as pytest tests: run it the way its readers would.
        return [sys.executable, "-m", "pytest", "-q", str(path), "-p", "no:cacheprovider"]
    return [sys.executable, str(path)]


def test_examples_exist() -> None:
    """The glob finds the examples directory's scripts (a moved directory fails here)."""
    assert EXAMPLES, f"no examples found under {ROOT / 'examples'}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(path: Path) -> None:
    """The example exits with status 0 within the time limit."""
    try:
        # The checkout under test, not whatever copy of the package is installed.
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT),
                                                           os.environ.get("PYTHONPATH"))))}
        result = subprocess.run(
            _command(path), cwd=ROOT, capture_output=True, text=True,
            timeout=EXAMPLE_TIMEOUT, check=False, env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raw: str | bytes | None = exc.stdout
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw or ""
        pytest.fail(f"{path.name} did not finish within {EXAMPLE_TIMEOUT} s:\n{output}")
    assert result.returncode == 0, (
        f"{path.name} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
