"""Prometheus metrics for brama_actors circuits (extra ``prometheus``; API.md section 14).

::

    from prometheus_client import REGISTRY
    from brama_actors.prometheus import BramaCollector

    REGISTRY.register(BramaCollector(brama))   # brama=None: the default system

The collector reads the system when Prometheus scrapes (no callback on any call), so
an idle exporter costs nothing. It exposes:

* ``brama_circuit_state{connection,scope,state}`` gauge: 1 for the current state, 0
  for the two others;
* ``brama_circuit_failure_count{connection,scope}`` gauge;
* ``brama_calls_total{connection,scope,outcome}`` counter, outcome ``success``,
  ``failure``, ``rejected`` or ``ignored``;
* ``brama_transitions_total{connection,scope,from_state,to_state}`` counter, for the
  pairs that happened;
* ``brama_events_dropped_total{subscription}`` counter (``str(sub.id)``), for the
  subscriptions that dropped events.

An unscoped connection has ``scope=""``; an unregistered one is gone from the next
scrape. Importing this module imports ``prometheus_client``; ``import brama_actors``
does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from brama_actors._system import _metrics

__all__ = ["BramaCollector"]

_CONNECTION = ["connection", "scope"]


class BramaCollector(Collector):
    """A Prometheus custom collector over one brama_actors system.

    Args:
        brama: the system to read (a ``Brama`` or a ``Client``); ``None`` reads the
            default system at each scrape, and exports nothing while none runs (a
            scrape never starts one).

    Raises:
        TypeError: ``brama`` is neither a system nor ``None``.
    """

    def __init__(self, brama: Any = None) -> None:
        self._brama = _metrics.check_system(brama)

    def describe(self) -> list[Metric]:
        """The families without samples: the registry learns the names (and refuses a
        second registration) without a scrape at registration time."""
        return _families()

    def collect(self) -> Iterator[Metric]:
        """Read the system now and yield its metric families."""
        reading = _metrics.read(self._brama)
        state, failures, calls, transitions, dropped = families = _families()
        # Samples are built here rather than through add_metric (which zips label names
        # and values for each one): at 10,000 connections that is 80,000 samples a
        # scrape, and this loop is the part of the scrape's cost that is ours.
        state_samples = state.samples
        failure_samples = failures.samples
        call_samples = calls.samples
        transition_samples = transitions.samples
        states = _metrics.STATES
        outcomes = _metrics.OUTCOMES
        for status in reading.connections:
            connection, scope = _metrics.labels(status)
            current = status.state
            for name in states:
                state_samples.append(Sample(
                    "brama_circuit_state",
                    {"connection": connection, "scope": scope, "state": name},
                    1.0 if current == name else 0.0))
            failure_samples.append(Sample(
                "brama_circuit_failure_count", {"connection": connection, "scope": scope},
                float(status.failure_count)))
            for outcome, field in outcomes:
                call_samples.append(Sample(
                    "brama_calls_total",
                    {"connection": connection, "scope": scope, "outcome": outcome},
                    float(getattr(status, field))))
            for from_state, to_state, count in status.transitions:
                transition_samples.append(Sample(
                    "brama_transitions_total",
                    {"connection": connection, "scope": scope, "from_state": from_state,
                     "to_state": to_state}, float(count)))
        for subscription, count in reading.dropped:
            dropped.add_metric([subscription], float(count))
        yield from families


def _families() -> list[Any]:
    return [
        GaugeMetricFamily("brama_circuit_state",
                          "Circuit state: 1 for the current state, 0 for the others.",
                          labels=[*_CONNECTION, "state"]),
        GaugeMetricFamily("brama_circuit_failure_count",
                          "Consecutive failures counted by the circuit.", labels=_CONNECTION),
        CounterMetricFamily("brama_calls_total",
                            "Outcomes recorded per connection (success, failure, "
                            "rejected, ignored).", labels=[*_CONNECTION, "outcome"]),
        CounterMetricFamily("brama_transitions_total",
                            "State changes per (from_state, to_state) since registration.",
                            labels=[*_CONNECTION, "from_state", "to_state"]),
        CounterMetricFamily("brama_events_dropped_total",
                            "Non-critical events dropped by a subscription that fell "
                            "behind.", labels=["subscription"]),
    ]
