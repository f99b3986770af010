"""The Grafana dashboard (docs/grafana/brama_actors.json) queries only metrics the
Prometheus collector exports, so a renamed metric cannot leave it silently empty."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brama_actors.prometheus import BramaCollector

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "brama_actors.json"

_METRIC = re.compile(r"\bbrama_[a-z_]+\b")


def _exported() -> set[str]:
    """The sample names a scrape can hold: gauges as named, counters with ``_total``."""
    names = set()
    for family in BramaCollector().describe():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows hold their panels


def _queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [target["expr"] for panel in _panels(dashboard["panels"])
               for target in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append(query["query"])
    return queries


def test_every_metric_in_the_dashboard_is_exported() -> None:
    """Every brama_* name in a panel expr or variable query is a sample the collector
    exports."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = _queries(dashboard)
    used = {name for query in queries for name in _METRIC.findall(query)}
    assert used, "no brama_* metric found in the dashboard"
    assert used <= _exported(), used - _exported()


def test_the_dashboard_covers_state_calls_rejections_and_transitions() -> None:
    """State timeline, calls by outcome, rejections and transitions each have a panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(_panels(dashboard["panels"]))
    assert all(panel.get("targets") for panel in panels)
    by_type = {panel["type"] for panel in panels}
    assert "state-timeline" in by_type
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needed in ("brama_circuit_state", "brama_calls_total", 'outcome="rejected"',
                   "brama_transitions_total"):
        assert needed in exprs, needed
    assert len({panel["id"] for panel in panels}) == len(panels)
