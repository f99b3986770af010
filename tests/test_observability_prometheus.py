"""``brama_actors.prometheus.BramaCollector`` (API.md section 14), scraped for real through
a ``prometheus_client.CollectorRegistry`` and parsed back from the text format."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import brama_actors
from brama_actors import Brama, CircuitOpenError
from brama_actors._status import evolve
from brama_actors._system import _metrics
from brama_actors.prometheus import BramaCollector
from brama_actors.testing import ManualClock

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of one scrape: (name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def types(registry: CollectorRegistry) -> dict[str, str]:
    """Family name -> type, as a scraper reads them."""
    text = generate_latest(registry).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def of(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


@pytest.fixture
def registry(system: Brama) -> CollectorRegistry:
    """A fresh registry with a collector on the ``system`` fixture."""
    registry = CollectorRegistry()
    registry.register(BramaCollector(system))
    return registry


def test_families_and_types(registry: CollectorRegistry, system: Brama) -> None:
    """Two gauges and three counters, named as API.md section 14 says."""
    system.register("db")
    assert types(registry) == {
        "brama_circuit_state": "gauge",
        "brama_circuit_failure_count": "gauge",
        "brama_calls": "counter",
        "brama_transitions": "counter",
        "brama_events_dropped": "counter",
    }


def test_state_gauge_is_one_for_the_current_state(registry: CollectorRegistry,
                                                  system: Brama) -> None:
    """brama_circuit_state: 1 for the current state, 0 for the two others; scope=""
    when unscoped."""
    system.register("db")
    system.register("api", scope="eu")
    system.open_circuit("api", scope="eu")
    states = of(scrape(registry), "brama_circuit_state")
    assert states == {
        key(connection="db", scope="", state="closed"): 1.0,
        key(connection="db", scope="", state="open"): 0.0,
        key(connection="db", scope="", state="half_open"): 0.0,
        key(connection="api", scope="eu", state="closed"): 0.0,
        key(connection="api", scope="eu", state="open"): 1.0,
        key(connection="api", scope="eu", state="half_open"): 0.0,
    }


def test_failure_count_and_outcome_counters(registry: CollectorRegistry,
                                            system: Brama) -> None:
    """failure_count follows the circuit; calls_total counts successes and failures."""
    system.register("db", max_attempts=10)
    for _ in range(3):
        system.success("db")
    for _ in range(2):
        system.failure("db")
    samples = scrape(registry)
    assert of(samples, "brama_circuit_failure_count") == {key(connection="db", scope=""): 2.0}
    calls = of(samples, "brama_calls_total")
    assert calls[key(connection="db", scope="", outcome="success")] == 3.0
    assert calls[key(connection="db", scope="", outcome="failure")] == 2.0
    assert {dict(k)["outcome"] for k in calls} == {"success", "failure", "rejected", "ignored"}


def test_rejected_and_ignored_calls_are_counted(registry: CollectorRegistry,
                                                system: Brama) -> None:
    """Guard refusals count as rejected, excluded exceptions as ignored (main's counters)."""
    guard = system.guard("db", max_attempts=1, exclude=(KeyError,))
    with pytest.raises(KeyError), guard:
        raise KeyError("not a service failure")
    with pytest.raises(RuntimeError), guard:
        raise RuntimeError("down")
    for _ in range(2):
        with pytest.raises(CircuitOpenError), guard:
            pass
    calls = of(scrape(registry), "brama_calls_total")
    assert calls[key(connection="db", scope="", outcome="failure")] == 1.0
    assert calls[key(connection="db", scope="", outcome="rejected")] == 2.0
    assert calls[key(connection="db", scope="", outcome="ignored")] == 1.0


def test_transitions_total_counts_pairs_that_happened(
        registry: CollectorRegistry, system: Brama, clock: ManualClock) -> None:
    """Each (from_state, to_state) pair that happened, with its count (main's counters)."""
    system.register("db", max_attempts=1, expiry=1000)
    system.failure("db")
    clock.advance(1000)
    system.failure("db")  # half_open -> open
    clock.advance(1000)
    system.success("db")
    system.open_circuit("db")
    transitions = of(scrape(registry), "brama_transitions_total")
    base = {"connection": "db", "scope": ""}
    assert transitions == {
        key(**base, from_state="closed", to_state="open"): 2.0,
        key(**base, from_state="open", to_state="half_open"): 2.0,
        key(**base, from_state="half_open", to_state="open"): 1.0,
        key(**base, from_state="half_open", to_state="closed"): 1.0,
    }


def test_no_transition_samples_before_any_transition(registry: CollectorRegistry,
                                                      system: Brama) -> None:
    """A connection that never changed state has no transition samples."""
    system.register("db")
    assert of(scrape(registry), "brama_transitions_total") == {}


def test_unregistered_connection_disappears(registry: CollectorRegistry,
                                            system: Brama) -> None:
    """Unregistering removes every sample of the connection from the next scrape."""
    system.register("db")
    system.register("api")
    assert {dict(k)["connection"] for k in of(scrape(registry), "brama_circuit_state")} == {
        "db", "api"}
    system.unregister("db")
    samples = scrape(registry)
    assert all(dict(labels).get("connection") != "db" for (_, labels) in samples)


def test_dropped_events_by_subscription(registry: CollectorRegistry, system: Brama) -> None:
    """A subscription that dropped events is exported under str(sub.id); others are not."""
    full = system.subscribe(events=["failure"], max_pending=2)
    fine = system.subscribe(events=["failure"])
    system.register("db", max_attempts=100)
    for _ in range(5):
        system.failure("db")
    system.drain()
    assert full.statistics().dropped == 3
    dropped = of(scrape(registry), "brama_events_dropped_total")
    assert dropped == {key(subscription=str(full.id)): 3.0}
    assert str(fine.id) not in {dict(k)["subscription"] for k in dropped}


def test_the_transition_log_is_not_a_subscription_here(registry: CollectorRegistry,
                                                        system: Brama) -> None:
    """The system's own log subscription never shows up as a subscription label."""
    system.register("db")
    system.open_circuit("db")
    system.drain()
    assert of(scrape(registry), "brama_events_dropped_total") == {}
    assert system._delivery.subscriptions() == []


def test_default_system_at_each_scrape() -> None:
    """brama=None reads the default system when scraped, and starts none itself."""
    registry = CollectorRegistry()
    registry.register(BramaCollector())
    assert of(scrape(registry), "brama_circuit_state") == {}
    brama_actors.register("one")
    assert {dict(k)["connection"] for k in of(scrape(registry), "brama_circuit_state")} == {
        "one"}
    brama_actors.stop()
    assert scrape(registry) == {}
    brama_actors.register("two")  # a fresh default system
    assert {dict(k)["connection"] for k in of(scrape(registry), "brama_circuit_state")} == {
        "two"}


def test_stopped_system_exports_nothing(clock: ManualClock) -> None:
    """A stopped system's connections are gone from the next scrape (no error)."""
    brama = Brama.start(clock=clock)
    registry = CollectorRegistry()
    registry.register(BramaCollector(brama))
    brama.register("db")
    assert scrape(registry)
    brama.stop()
    assert scrape(registry) == {}


@pytest.mark.parametrize("value", ["default", 1, object(), Brama])
def test_not_a_system_is_a_type_error(value: object) -> None:
    """BramaCollector(brama=<not a system>) raises TypeError at once."""
    with pytest.raises(TypeError, match="brama"):
        BramaCollector(value)


def test_registering_twice_is_prometheus_clients_error(system: Brama) -> None:
    """The families are described, so a second collector in one registry is refused by
    prometheus_client itself; describing reads no system."""
    registry = CollectorRegistry()
    collector = BramaCollector(system)
    registry.register(collector)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(BramaCollector(system))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(collector)
    assert all(not family.samples for family in collector.describe())


def test_client_systems_are_read_too(client: brama_actors.Client,
                                     node: tuple[Brama, brama_actors.Server]) -> None:
    """A Client is a system too: its node's connections are exported."""
    brama, _ = node
    brama.register("db")
    brama.open_circuit("db")
    registry = CollectorRegistry()
    registry.register(BramaCollector(client))
    client.status("db")  # the replica has caught up with the node
    states = of(scrape(registry), "brama_circuit_state")
    assert states[key(connection="db", scope="", state="open")] == 1.0


def test_an_unreachable_client_empties_brama_s_part_of_the_scrape(
        client: brama_actors.Client, node: tuple[Brama, brama_actors.Server]) -> None:
    """A closed client (or a node out of reach) must not fail the application's whole
    scrape: brama's families are empty, the other collectors' samples are there."""
    from prometheus_client import Counter

    brama, _ = node
    brama.register("db")
    registry = CollectorRegistry()
    registry.register(BramaCollector(client))
    other = Counter("app_requests", "the application's own metric", registry=registry)
    other.inc()
    client.close()
    samples = scrape(registry)
    assert of(samples, "brama_circuit_state") == {}
    assert of(samples, "app_requests_total") == {(): 1.0}


def test_importing_brama_actors_imports_neither_exporter_library() -> None:
    """prometheus_client and opentelemetry load only with their modules."""
    code = ("import sys, brama_actors\n"
            "print([m for m in ('prometheus_client', 'opentelemetry') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30)
    assert out.stdout.strip() == "[]"


def test_rejections_ignored_and_transitions_are_rendered(
        registry: CollectorRegistry, system: Brama, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status counters main fills (rejections, ignored, transitions) become samples,
    whatever counts them: here a status carrying them is read in place of the system."""
    status = evolve(system.register("db", scope="eu"), total_rejections=4, total_ignored=2,
                    transitions=(("closed", "open", 3), ("open", "half_open", 2)))
    monkeypatch.setattr(_metrics, "read",
                        lambda brama: _metrics.Reading((status,), (("7", 5),)))
    samples = scrape(registry)
    calls = of(samples, "brama_calls_total")
    assert calls[key(connection="db", scope="eu", outcome="rejected")] == 4.0
    assert calls[key(connection="db", scope="eu", outcome="ignored")] == 2.0
    assert of(samples, "brama_transitions_total") == {
        key(connection="db", scope="eu", from_state="closed", to_state="open"): 3.0,
        key(connection="db", scope="eu", from_state="open", to_state="half_open"): 2.0,
    }
    assert of(samples, "brama_events_dropped_total") == {key(subscription="7"): 5.0}
