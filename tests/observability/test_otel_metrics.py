"""The OpenTelemetry export of the metrics, read back through the SDK's in-memory reader.

Providers are always passed explicitly: the global meter provider can be set once per process.
"""

import doctest
import importlib
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric

from catga import _core
from catga.observability import MetricsRegistry
from catga.observability._otel_metrics import instrument
from catga.observability._prometheus import DURATION_BUCKETS, format_float

INSTRUMENTS = {
    # name: (SDK data type, monotonic or None for a gauge, unit)
    "catga.messages": ("Sum", True, "{message}"),
    "catga.messages.active": ("Sum", False, "{message}"),
    "catga.message.duration.sum": ("Sum", True, "s"),
    "catga.message.duration.count": ("Sum", True, "{message}"),
    "catga.message.duration.bucket": ("Sum", True, "{message}"),
    "catga.publish.handlers": ("Sum", True, "{run}"),
    "catga.retry.attempts": ("Sum", True, "{attempt}"),
    "catga.idempotency.hits": ("Sum", True, "{message}"),
    "catga.idempotency.misses": ("Sum", True, "{message}"),
    "catga.rate_limit.rejected": ("Sum", True, "{message}"),
    "catga.concurrency.rejected": ("Sum", True, "{message}"),
    "catga.dead_letters": ("Sum", True, "{message}"),
    "catga.circuit_breaker.state": ("Gauge", None, "1"),
}

KIND, TYPE, OUTCOME = "catga.message.kind", "catga.message.type", "catga.outcome"


class FakeRegistry:
    """Hand-written snapshots, counting how often they are taken."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.snapshots = 0

    def snapshot(self) -> list[dict[str, Any]]:
        self.snapshots += 1
        return [dict(entry) for entry in self.entries]


def entry(kind: str = "command", type_: str = "orders.create", **changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "kind": kind,
        "type": type_,
        "messages": {"success": 3, "failure": 1, "cancelled": 0},
        "duration": {"buckets": [0] * 7 + [2, 1] + [0] * 11 + [1], "sum": 12.0034, "count": 4},
        "active": 2,
        "publish_handlers": {"success": 0, "failure": 0, "cancelled": 0},
        "retry_attempts": 5,
        "idempotency_hits": 6,
        "idempotency_misses": 7,
        "rate_limit_rejected": 8,
        "concurrency_rejected": 9,
        "dead_letters": 10,
        "circuit_breaker_state": None,
    }
    value.update(changes)
    return value


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    assert data is not None
    metrics: dict[str, Metric] = {}
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            assert scope_metrics.scope.name == "catga"
            assert scope_metrics.scope.version == _core.__version__
            for metric in scope_metrics.metrics:
                metrics[metric.name] = metric
    return metrics


def points(metric: Metric) -> dict[tuple[tuple[str, Any], ...], float]:
    return {tuple(sorted((point.attributes or {}).items())): point.value for point in metric.data.data_points}  # type: ignore[union-attr]


def test_instruments_names_kinds_and_units(provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    instrument(FakeRegistry([entry("event", "orders.placed", circuit_breaker_state=0)]), provider)
    metrics = collect(reader)
    assert set(metrics) == set(INSTRUMENTS)
    for name, (data_type, monotonic, unit) in INSTRUMENTS.items():
        metric = metrics[name]
        assert type(metric.data).__name__ == data_type, name
        assert metric.unit == unit, name
        assert metric.description, name
        if monotonic is not None:
            assert metric.data.is_monotonic is monotonic, name  # type: ignore[union-attr]


def test_values_and_attributes(provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    event = entry("event", "orders.placed", publish_handlers={"success": 4, "failure": 1, "cancelled": 2})
    instrument(FakeRegistry([entry(circuit_breaker_state=2), event]), provider)
    metrics = collect(reader)
    created = ((KIND, "command"), (TYPE, "orders.create"))
    assert points(metrics["catga.messages"])[(*created, (OUTCOME, "success"))] == 3
    assert points(metrics["catga.messages"])[(*created, (OUTCOME, "failure"))] == 1
    assert points(metrics["catga.messages"])[(*created, (OUTCOME, "cancelled"))] == 0
    assert points(metrics["catga.messages.active"])[created] == 2
    for name, value in [
        ("catga.retry.attempts", 5),
        ("catga.idempotency.hits", 6),
        ("catga.idempotency.misses", 7),
        ("catga.rate_limit.rejected", 8),
        ("catga.concurrency.rejected", 9),
        ("catga.dead_letters", 10),
    ]:
        assert points(metrics[name])[created] == value, name
    # Only events count handlers; only types with a breaker have a state.
    assert points(metrics["catga.publish.handlers"]) == {
        ((TYPE, "orders.placed"), (OUTCOME, "cancelled")): 2,
        ((TYPE, "orders.placed"), (OUTCOME, "failure")): 1,
        ((TYPE, "orders.placed"), (OUTCOME, "success")): 4,
    }
    assert points(metrics["catga.circuit_breaker.state"]) == {((TYPE, "orders.create"),): 2}


def test_duration_as_sum_count_and_cumulative_buckets(provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    instrument(FakeRegistry([entry()]), provider)
    metrics = collect(reader)
    created = ((KIND, "command"), (TYPE, "orders.create"))
    assert points(metrics["catga.message.duration.sum"])[created] == pytest.approx(12.0034)
    assert points(metrics["catga.message.duration.count"])[created] == 4
    buckets = {dict(labels)["le"]: value for labels, value in points(metrics["catga.message.duration.bucket"]).items()}
    assert list(buckets) == [format_float(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
    assert (buckets["0.0005"], buckets["0.001"], buckets["0.0025"], buckets["10.0"], buckets["+Inf"]) == (0, 2, 3, 3, 4)


def test_one_snapshot_per_collection(provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    registry = FakeRegistry([entry()])
    instrument(registry, provider)
    collect(reader)
    assert registry.snapshots == 1
    registry.entries = [entry(active=7)]
    metrics = collect(reader)
    assert registry.snapshots == 2
    assert points(metrics["catga.messages.active"])[((KIND, "command"), (TYPE, "orders.create"))] == 7


def test_each_reader_collects_a_fresh_snapshot() -> None:
    reader, second = InMemoryMetricReader(), InMemoryMetricReader()
    both = MeterProvider(metric_readers=[reader, second])
    registry = FakeRegistry([entry()])
    instrument(registry, both)
    collect(reader)
    registry.entries = [entry(active=9)]
    metrics = collect(second)
    assert points(metrics["catga.messages.active"])[((KIND, "command"), (TYPE, "orders.create"))] == 9
    assert registry.snapshots == 2
    both.shutdown()


def test_instrument_twice_registers_nothing_new(
    provider: MeterProvider, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    registry = FakeRegistry([entry()])
    instrument(registry, provider)
    instrument(registry, provider)
    metrics = collect(reader)
    assert registry.snapshots == 1
    assert points(metrics["catga.messages.active"]) == {((KIND, "command"), (TYPE, "orders.create")): 2}
    assert not [r for r in caplog.records if "already" in r.getMessage()]  # the SDK saw no duplicate


def test_a_second_registry_on_one_provider_is_refused(provider: MeterProvider) -> None:
    instrument(FakeRegistry([]), provider)
    with pytest.raises(ValueError, match="already exports the metrics of"):
        instrument(FakeRegistry([]), provider)


def test_an_empty_registry_reports_no_points(provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    registry = FakeRegistry([])
    instrument(registry, provider)
    assert reader.get_metrics_data() is None  # the SDK reports nothing at all without points
    assert registry.snapshots == 1


def test_through_the_real_registry(provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    registry = MetricsRegistry()
    metrics = registry.for_type("query", "orders.get")
    metrics.enter()
    metrics.leave(_core.OUTCOME_CANCELLED, 0.003)
    metrics.count(_core.COUNTER_IDEMPOTENCY_HITS, 3)
    registry.track_breaker("orders.get", _core.CircuitBreaker())
    registry.instrument(provider)
    registry.instrument(provider)  # idempotent through the registry too
    collected = collect(reader)
    labels = ((KIND, "query"), (TYPE, "orders.get"))
    assert points(collected["catga.messages"])[(*labels, (OUTCOME, "cancelled"))] == 1
    assert points(collected["catga.idempotency.hits"])[labels] == 3
    assert points(collected["catga.message.duration.count"])[labels] == 1
    assert points(collected["catga.circuit_breaker.state"]) == {((TYPE, "orders.get"),): 0}
    metrics.enter()
    assert points(collect(reader)["catga.messages.active"])[labels] == 1


def test_docstring_examples() -> None:
    module = importlib.import_module("catga.observability._otel_metrics")
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(module, module.__name__) + finder.find(instrument, "instrument", globs=vars(module))
    assert any(test.examples for test in tests)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
