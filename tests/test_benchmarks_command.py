"""The benchmark command keeps working: ``python -m tests.benchmarks --quick`` runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(600)
def test_quick_benchmark_run_writes_report_and_charts(tmp_path: Path) -> None:
    """The quick form runs every benchmark, writes the report, charts and verdicts."""
    output = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks", "--quick", "--output", str(output)],
        capture_output=True, text=True, timeout=580, check=False,
        cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    for section in ("## Scale", "## Guarded calls", "## Events", "## Several processes",
                    "## Charts", "## Failure path", "## Fleet figures", "## Fleet soak",
                    "## Fleet outage drill"):
        assert section in text
    for chart in ("bench_guard_overhead.png", "bench_events_fanout.png",
                  "bench_scale_curve.png"):
        assert (tmp_path / chart).stat().st_size > 1000
    assert "=== targets" in result.stdout


@pytest.mark.timeout(300)
def test_soak_short_form_loses_nothing(tmp_path: Path) -> None:
    """The short soak: nothing dropped, failed or left pending; no thread left over."""
    output = tmp_path / "reliability.md"
    result = subprocess.run(
        [sys.executable, "tests/benchmarks/bench_soak.py", "--quick", "--check", "--markdown",
         str(output)],
        capture_output=True, text=True, timeout=280, check=False,
        cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "## Load and soak" in output.read_text()
