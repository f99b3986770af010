"""``brama_actors.opentelemetry`` (API.md section 14), collected for real by the SDK's
``InMemoryMetricReader``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import brama_actors
from brama_actors import Brama, CircuitOpenError, _durations
from brama_actors._status import evolve
from brama_actors._system import _metrics
from brama_actors.opentelemetry import instrument, uninstrument
from brama_actors.testing import ManualClock

Points = dict[str, list[tuple[dict[str, Any], Any]]]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """An in-memory reader; uninstrumented and shut down after the test."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    reader.provider = provider  # type: ignore[attr-defined]
    yield reader
    uninstrument()
    provider.shutdown()


def provider_of(reader: InMemoryMetricReader) -> MeterProvider:
    return reader.provider  # type: ignore[attr-defined, no-any-return]


def collect(reader: InMemoryMetricReader) -> tuple[Points, dict[str, Any]]:
    """One collection: name -> [(attributes, value or data point)], and name -> metric."""
    data = reader.get_metrics_data()
    points: Points = {}
    metrics: dict[str, Any] = {}
    if data is None:
        return points, metrics
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "brama_actors"
            for metric in scope.metrics:
                metrics[metric.name] = metric
                points[metric.name] = [
                    (dict(p.attributes or {}), getattr(p, "value", p))
                    for p in metric.data.data_points]
    return points, metrics


def values(points: Points, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(attrs.items())): value for attrs, value in points.get(name, [])}


def attrs(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((f"brama.{k}", v) for k, v in labels.items()))


def test_state_gauge_and_calls_counter(reader: InMemoryMetricReader, system: Brama) -> None:
    """brama.circuit.state (1 current, 0 others) and brama.calls (unit {call}), with
    connection and scope ("" unscoped) on every point."""
    system.register("db", max_attempts=10)
    system.register("api", scope="eu")
    system.success("db")
    system.success("db")
    system.failure("db")
    system.open_circuit("api", scope="eu")
    instrument(system, provider_of(reader))
    points, metrics = collect(reader)
    assert values(points, "brama.circuit.state") == {
        attrs(connection="db", scope="", state="closed"): 1,
        attrs(connection="db", scope="", state="open"): 0,
        attrs(connection="db", scope="", state="half_open"): 0,
        attrs(connection="api", scope="eu", state="closed"): 0,
        attrs(connection="api", scope="eu", state="open"): 1,
        attrs(connection="api", scope="eu", state="half_open"): 0,
    }
    calls = values(points, "brama.calls")
    assert calls[attrs(connection="db", scope="", outcome="success")] == 2
    assert calls[attrs(connection="db", scope="", outcome="failure")] == 1
    assert {dict(k)["brama.outcome"] for k in calls} == {
        "success", "failure", "rejected", "ignored"}
    assert metrics["brama.calls"].unit == "{call}"
    assert metrics["brama.calls"].data.is_monotonic
    assert values(points, "brama.circuit.transitions") == {
        (("brama.connection", "api"), ("brama.from_state", "closed"), ("brama.scope", "eu"),
         ("brama.to_state", "open")): 1}  # the manual opening; db never changed state
    assert "brama.call.duration" not in points  # no guarded call ran


def test_rejections_ignored_and_transitions(reader: InMemoryMetricReader, system: Brama,
                                            clock: ManualClock) -> None:
    """brama.calls counts refusals and ignored outcomes; brama.circuit.transitions the
    pairs that happened (main's counters)."""
    instrument(system, provider_of(reader))
    guard = system.guard("db", max_attempts=1, expiry=1000, exclude=(KeyError,))
    with pytest.raises(KeyError), guard:
        raise KeyError("ignored")
    with pytest.raises(RuntimeError), guard:
        raise RuntimeError("down")
    with pytest.raises(CircuitOpenError), guard:
        pass
    clock.advance(1000)
    with guard:
        pass
    points, metrics = collect(reader)
    calls = values(points, "brama.calls")
    assert calls[attrs(connection="db", scope="", outcome="rejected")] == 1
    assert calls[attrs(connection="db", scope="", outcome="ignored")] == 1
    assert values(points, "brama.circuit.transitions") == {
        attrs(connection="db", scope="", from_state="closed", to_state="open"): 1,
        attrs(connection="db", scope="", from_state="open", to_state="half_open"): 1,
        attrs(connection="db", scope="", from_state="half_open", to_state="closed"): 1,
    }
    assert metrics["brama.circuit.transitions"].data.is_monotonic


def test_guarded_calls_fill_the_duration_histogram(reader: InMemoryMetricReader,
                                                   system: Brama) -> None:
    """brama.call.duration (unit s) gets one point per guarded call that ran, by
    outcome; a refusal records nothing (main's guard timing)."""
    instrument(system, provider_of(reader))
    guard = system.guard("db", max_attempts=1)
    with guard:
        pass
    with pytest.raises(RuntimeError), guard:
        raise RuntimeError("down")
    with pytest.raises(CircuitOpenError), guard:
        pass
    points, metrics = collect(reader)
    histogram = values(points, "brama.call.duration")
    assert metrics["brama.call.duration"].unit == "s"
    assert set(histogram) == {attrs(connection="db", scope="", outcome="success"),
                              attrs(connection="db", scope="", outcome="failure")}
    assert all(point.count == 1 and point.sum >= 0 for point in histogram.values())


def test_the_observer_records_into_the_histogram(reader: InMemoryMetricReader,
                                                 system: Brama) -> None:
    """instrument() installs one duration observer, which records seconds under the
    connection, scope and outcome; uninstrument() removes it."""
    before = list(_durations.OBSERVERS)
    instrument(system, provider_of(reader))
    added = [o for o in _durations.OBSERVERS if o not in before]
    assert len(added) == 1
    added[0](("db", None, "success", 0.25))
    added[0](("db", None, "success", 0.5))
    added[0](("api", "eu", "failure", 2.0))
    points, _ = collect(reader)
    histogram = values(points, "brama.call.duration")
    ok = histogram[attrs(connection="db", scope="", outcome="success")]
    assert (ok.count, ok.sum) == (2, 0.75)
    assert histogram[attrs(connection="api", scope="eu", outcome="failure")].count == 1
    assert 0.25 in ok.explicit_bounds  # buckets in seconds, not the SDK's milliseconds
    uninstrument()
    assert before == _durations.OBSERVERS


def test_uninstrument_stops_reporting_and_instrument_again_resumes(
        reader: InMemoryMetricReader, system: Brama) -> None:
    """After uninstrument() the callbacks report nothing; instrument() on the same meter
    provider reports again (OpenTelemetry cannot remove instruments, so they are reused)."""
    system.register("db")
    instrument(system, provider_of(reader))
    assert values(collect(reader)[0], "brama.circuit.state")
    uninstrument()
    uninstrument()  # idempotent
    points, _ = collect(reader)
    assert not values(points, "brama.circuit.state")
    assert not values(points, "brama.calls")
    instrument(system, provider_of(reader))
    system.register("api")
    connections = {dict(k)["brama.connection"]
                   for k in values(collect(reader)[0], "brama.circuit.state")}
    assert connections == {"db", "api"}


def test_a_second_instrument_is_an_error(reader: InMemoryMetricReader,
                                         system: Brama) -> None:
    """instrument() while instrumented raises RuntimeError; the first keeps reporting."""
    system.register("db")
    instrument(system, provider_of(reader))
    with pytest.raises(RuntimeError, match="uninstrument"):
        instrument(system, provider_of(reader))
    observers = len(_durations.OBSERVERS)
    assert values(collect(reader)[0], "brama.circuit.state")
    assert len(_durations.OBSERVERS) == observers


def test_unregistered_connection_disappears(reader: InMemoryMetricReader,
                                            system: Brama) -> None:
    """A connection unregistered since the last collection reports no point."""
    system.register("db")
    system.register("api", scope="eu")
    instrument(system, provider_of(reader))
    collect(reader)
    system.unregister("api", scope="eu")
    points, _ = collect(reader)
    assert {dict(k)["brama.connection"] for k in values(points, "brama.circuit.state")} == {
        "db"}


def test_default_system_at_each_collection(reader: InMemoryMetricReader) -> None:
    """brama=None reads the default system when collected, and starts none itself."""
    instrument(meter_provider=provider_of(reader))
    assert not values(collect(reader)[0], "brama.circuit.state")
    assert brama_actors._system._default._default is None
    brama_actors.register("one")
    points, _ = collect(reader)
    assert {dict(k)["brama.connection"] for k in values(points, "brama.circuit.state")} == {
        "one"}


@pytest.mark.parametrize("value", ["default", 3, object()])
def test_not_a_system_is_a_type_error(reader: InMemoryMetricReader, value: object) -> None:
    """instrument(brama=<not a system>) raises TypeError and installs nothing."""
    observers = list(_durations.OBSERVERS)
    with pytest.raises(TypeError, match="brama"):
        instrument(value, provider_of(reader))
    assert observers == _durations.OBSERVERS
    instrument(None, provider_of(reader))  # not left half-instrumented


def test_rejections_ignored_and_transitions_are_observed(
        reader: InMemoryMetricReader, system: Brama, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status counters main fills (rejections, ignored, transitions) become
    observations, whatever counts them: here a status carrying them is read instead."""
    status = evolve(system.register("db"), total_rejections=4, total_ignored=2,
                    transitions=(("closed", "open", 3),))
    monkeypatch.setattr(_metrics, "read", lambda brama: _metrics.Reading((status,)))
    instrument(system, provider_of(reader))
    points, _ = collect(reader)
    calls = values(points, "brama.calls")
    assert calls[attrs(connection="db", scope="", outcome="rejected")] == 4
    assert calls[attrs(connection="db", scope="", outcome="ignored")] == 2
    assert values(points, "brama.circuit.transitions") == {
        attrs(connection="db", scope="", from_state="closed", to_state="open"): 3}


GLOBAL_PROVIDER_SCRIPT = """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import brama_actors
from brama_actors.opentelemetry import instrument, uninstrument

with brama_actors.Brama.start() as brama:
    brama.register("db")
    instrument(brama)        # the global provider is still the API's proxy
    uninstrument()
    instrument(brama)        # a second proxy meter: its instruments are duplicates
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    data = reader.get_metrics_data()
    names = sorted({m.name for rm in data.resource_metrics for sm in rm.scope_metrics
                    for m in sm.metrics})
    print(names)
    uninstrument()
"""


def test_instrumenting_before_the_global_provider_is_set() -> None:
    """instrument() on the global (proxy) provider, again after uninstrument(), then the
    SDK provider set: the instruments the SDK kept report the current instrumentation
    (a process of its own: the global provider can be set once)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", GLOBAL_PROVIDER_SCRIPT],
                            capture_output=True, text=True, timeout=60, check=True)
    assert "'brama.calls'" in result.stdout and "'brama.circuit.state'" in result.stdout, (
        result.stdout, result.stderr)


def test_the_recorder_thread_ends_with_uninstrument(reader: InMemoryMetricReader,
                                                    system: Brama) -> None:
    import threading

    instrument(system, provider_of(reader))
    assert any(t.name == "brama-otel-durations" for t in threading.enumerate())
    uninstrument()
    assert not any(t.name == "brama-otel-durations" for t in threading.enumerate())
