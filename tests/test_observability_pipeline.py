"""Logging, Tracing and Metrics as the pipeline runs them, on both cores (docs/internals.md,
"Observation"): spans from the OpenTelemetry SDK's in-memory exporter, metrics from a registry of
the test's own, exported through the SDK's in-memory reader and as Prometheus text."""

import asyncio
import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

import catga
from catga import Config
from catga.behaviors import (
    CircuitBreaker,
    ConcurrencyLimit,
    DeadLetter,
    Logging,
    Metrics,
    RateLimit,
    Retry,
    Tracing,
)
from catga.observability import MetricsRegistry


class Reserve(catga.Command[str], tag="stock.reserve"):
    item: str


class Count(catga.Query[int], tag="stock.count"):
    item: str


class Reserved(catga.Event, tag="stock.reserved"):
    item: str


class Flaky(catga.TransportError):
    """A retryable error (TransportError is retryable)."""


def quiet_retry(max_attempts: int = 3) -> Retry:
    retry = Retry(max_attempts=max_attempts, jitter=0.0)

    async def sleep(delay: float) -> None:
        pass

    retry._sleep = sleep  # type: ignore[method-assign]
    retry._sleep_sync = lambda delay: None  # type: ignore[method-assign]
    return retry


@pytest.fixture
def registry() -> MetricsRegistry:
    return MetricsRegistry()


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def entry(registry: MetricsRegistry, type_: str, kind: str | None = None) -> dict[str, Any]:
    found = [e for e in registry.snapshot() if e["type"] == type_ and (kind is None or e["kind"] == kind)]
    assert len(found) == 1, found
    return found[0]


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


# ------------------------------------------------------------------------------------- metrics


async def test_metrics_count_sends_by_outcome_and_time_them(registry: MetricsRegistry) -> None:
    mediator = catga.Mediator(config=Config.default().with_(metrics=Metrics(registry=registry), retry=None))

    @mediator.handler
    async def reserve(cmd: Reserve) -> str:
        if cmd.item == "bad":
            raise ValueError("no stock")
        return cmd.item

    for i in range(5):
        assert await mediator.send(Reserve(f"a{i}")) == f"a{i}"
    with pytest.raises(ValueError, match="no stock"):
        await mediator.send(Reserve("bad"))
    stats = entry(registry, "stock.reserve")
    assert stats["kind"] == "command"
    assert stats["messages"] == {"success": 5, "failure": 1, "cancelled": 0}
    assert stats["duration"]["count"] == 6
    assert sum(stats["duration"]["buckets"]) == 6
    assert 0.0 < stats["duration"]["sum"] < 5.0
    assert stats["active"] == 0
    assert (stats["idempotency_misses"], stats["idempotency_hits"]) == (6, 0)


async def test_metrics_count_idempotency_hits_and_replays_as_successes(registry: MetricsRegistry) -> None:
    mediator = catga.Mediator(config=Config.default().with_(metrics=Metrics(registry=registry)))
    mediator.register(Reserve, lambda cmd: "ok")
    message = Reserve("a")
    for _ in range(3):
        assert await mediator.send(message) == "ok"
    stats = entry(registry, "stock.reserve")
    assert (stats["idempotency_misses"], stats["idempotency_hits"]) == (1, 2)
    assert stats["messages"]["success"] == 3


async def test_metrics_see_the_active_count_while_a_handler_runs(registry: MetricsRegistry) -> None:
    mediator = catga.Mediator(config=Config.minimal().with_(metrics=Metrics(registry=registry)))
    started, release = asyncio.Event(), asyncio.Event()

    @mediator.handler
    async def reserve(cmd: Reserve) -> str:
        started.set()
        await release.wait()
        return "ok"

    task = asyncio.create_task(mediator.send(Reserve("a")))
    await started.wait()
    assert entry(registry, "stock.reserve")["active"] == 1
    release.set()
    assert await task == "ok"
    assert entry(registry, "stock.reserve")["active"] == 0


async def test_metrics_count_a_cancelled_send(registry: MetricsRegistry) -> None:
    mediator = catga.Mediator(config=Config.minimal().with_(metrics=Metrics(registry=registry)))
    started = asyncio.Event()

    @mediator.handler
    async def reserve(cmd: Reserve) -> str:
        started.set()
        await asyncio.sleep(60)
        return "late"

    task = asyncio.create_task(mediator.send(Reserve("a")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = entry(registry, "stock.reserve")
    assert stats["messages"] == {"success": 0, "failure": 0, "cancelled": 1}
    assert stats["active"] == 0


async def test_metrics_of_a_publish_count_the_event_once_and_each_handler(registry: MetricsRegistry) -> None:
    mediator = catga.Mediator(config=Config.default().with_(metrics=Metrics(registry=registry), retry=None))
    seen: list[str] = []

    @mediator.handler
    async def first(event: Reserved) -> None:
        seen.append("first")

    @mediator.handler
    def second(event: Reserved) -> None:
        raise ValueError("second fails")

    @mediator.handler
    async def third(event: Reserved) -> None:
        seen.append("third")

    with pytest.raises(catga.PublishError):
        await mediator.publish(Reserved("a"))
    stats = entry(registry, "stock.reserved")
    assert stats["kind"] == "event"
    assert stats["messages"] == {"success": 0, "failure": 1, "cancelled": 0}
    assert stats["publish_handlers"] == {"success": 2, "failure": 1, "cancelled": 0}
    assert stats["duration"]["count"] == 1
    assert seen == ["first", "third"]


@pytest.mark.parametrize("strategy", ["sequential", "concurrent"])
async def test_metrics_of_both_publish_strategies_agree(registry: MetricsRegistry, strategy: Any) -> None:
    mediator = catga.Mediator(config=Config.minimal().with_(metrics=Metrics(registry=registry)), publish=strategy)
    for _ in range(3):
        mediator.register(Reserved, _async_noop)
    await mediator.publish(Reserved("a"))
    await mediator.publish(Reserved("b"))
    stats = entry(registry, "stock.reserved")
    assert stats["messages"]["success"] == 2
    assert stats["publish_handlers"]["success"] == 6
    assert stats["active"] == 0


async def _async_noop(event: object) -> None:
    pass


async def test_metrics_count_retries_dead_letters_and_rejections(registry: MetricsRegistry) -> None:
    clock = lambda: 0.0  # noqa: E731  # the bucket never refills
    config = Config.default().with_(
        metrics=Metrics(registry=registry),
        retry=quiet_retry(3),
        dead_letter=DeadLetter(),
        rate_limit=RateLimit(rate=1.0, burst=3.0, clock=clock),
    )
    mediator = catga.Mediator(config=config)

    @mediator.handler
    def reserve(cmd: Reserve) -> str:
        raise Flaky("the network dropped")

    with pytest.raises(Flaky):
        await mediator.send(Reserve("a"))  # token 1: 3 attempts, 2 retries, then a dead letter
    with pytest.raises(Flaky):
        await mediator.send(Reserve("b"))  # token 2
    with pytest.raises(Flaky):
        await mediator.send(Reserve("c"))  # token 3
    with pytest.raises(catga.RateLimited):
        await mediator.send(Reserve("d"))  # no token left: rejected before the handler
    stats = entry(registry, "stock.reserve")
    assert stats["retry_attempts"] == 6
    assert stats["dead_letters"] == 3
    assert stats["rate_limit_rejected"] == 1
    assert stats["messages"]["failure"] == 4


async def test_metrics_count_concurrency_rejections(registry: MetricsRegistry) -> None:
    config = Config.minimal().with_(
        metrics=Metrics(registry=registry), concurrency_limit=ConcurrencyLimit(1, wait_timeout=0.01)
    )
    mediator = catga.Mediator(config=config)
    release = asyncio.Event()

    @mediator.handler
    async def reserve(cmd: Reserve) -> str:
        await release.wait()
        return "ok"

    first = asyncio.create_task(mediator.send(Reserve("a")))
    await asyncio.sleep(0)
    with pytest.raises(catga.ConcurrencyLimited):
        await mediator.send(Reserve("b"))
    release.set()
    assert await first == "ok"
    assert entry(registry, "stock.reserve")["concurrency_rejected"] == 1


async def test_metrics_show_an_open_breaker(registry: MetricsRegistry) -> None:
    config = Config.minimal().with_(
        metrics=Metrics(registry=registry), circuit_breaker=CircuitBreaker(failure_threshold=1, reset_timeout=60.0)
    )
    mediator = catga.Mediator(config=config)

    @mediator.handler
    def reserve(cmd: Reserve) -> str:
        raise ValueError("down")

    mediator._route(Reserve)  # compiled: the breaker is made and tracked
    assert entry(registry, "stock.reserve")["circuit_breaker_state"] == 0
    with pytest.raises(ValueError, match="down"):
        await mediator.send(Reserve("a"))
    assert entry(registry, "stock.reserve")["circuit_breaker_state"] == 2
    with pytest.raises(catga.CircuitOpen):
        await mediator.send(Reserve("b"))


def test_metrics_of_send_sync(registry: MetricsRegistry) -> None:
    mediator = catga.Mediator(config=Config.default().with_(metrics=Metrics(registry=registry)))
    mediator.register(Reserve, lambda cmd: "ok")
    message = Reserve("a")
    assert mediator.send_sync(message) == "ok"
    assert mediator.send_sync(message) == "ok"
    stats = entry(registry, "stock.reserve")
    assert stats["messages"]["success"] == 2
    assert (stats["idempotency_misses"], stats["idempotency_hits"]) == (1, 1)
    assert stats["active"] == 0


async def test_metrics_export_through_opentelemetry_and_prometheus(registry: MetricsRegistry) -> None:
    mediator = catga.Mediator(config=Config.default().with_(metrics=Metrics(registry=registry)))
    mediator.register(Reserve, lambda cmd: "ok")
    mediator.register(Count, lambda query: 7)
    for i in range(4):
        await mediator.send(Reserve(f"r{i}"))
    await mediator.send(Count("x"))

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    registry.instrument(provider)
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted(point.attributes.items()))): point.value  # type: ignore[union-attr]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == "catga"
        for metric in scope.metrics
        for point in metric.data.data_points
        if hasattr(point, "value")
    }
    messages = {attrs: value for (name, attrs), value in points.items() if name == "catga.messages"}
    assert sum(value for attrs, value in messages.items() if ("catga.outcome", "success") in attrs) == 5
    provider.shutdown()

    families = {family.name: family for family in text_string_to_metric_families(registry.prometheus_text())}
    samples = [s for s in families["catga_messages"].samples if s.name == "catga_messages_total"]
    success = {s.labels["type"]: s.value for s in samples if s.labels["outcome"] == "success"}
    assert success == {"stock.reserve": 4.0, "stock.count": 1.0}
    count = [s for s in families["catga_message_duration_seconds"].samples if s.name.endswith("_count")]
    assert {s.labels["type"]: s.value for s in count} == {"stock.reserve": 4.0, "stock.count": 1.0}


# ------------------------------------------------------------------------------------- tracing


async def test_spans_of_a_send_and_its_handler(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = spans
    mediator = catga.Mediator(config=Config.default().with_(tracing=Tracing(tracer_provider=provider)))
    mediator.register(Reserve, lambda cmd: "ok")
    message = Reserve("a")
    assert await mediator.send(message) == "ok"
    finished = exporter.get_finished_spans()
    [send] = by_name(finished, "send stock.reserve")
    [handle] = by_name(finished, "handle stock.reserve")
    assert handle.parent is not None
    assert handle.parent.span_id == send.context.span_id
    assert send.kind == SpanKind.INTERNAL
    attributes = dict(send.attributes or {})
    assert attributes["messaging.system"] == "catga"
    assert attributes["messaging.destination.name"] == "stock.reserve"
    assert attributes["messaging.message.id"] == str(message.message_id)
    assert attributes["catga.message.kind"] == "command"
    assert attributes["catga.correlation_id"] == message.message_id
    assert attributes["catga.outcome"] == "success"


async def test_a_replay_is_a_span_without_a_handler_span(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = spans
    mediator = catga.Mediator(config=Config.default().with_(tracing=Tracing(tracer_provider=provider)))
    mediator.register(Reserve, lambda cmd: "ok")
    message = Reserve("a")
    await mediator.send(message)
    exporter.clear()
    await mediator.send(message)
    [send] = exporter.get_finished_spans()
    assert send.name == "send stock.reserve"
    assert dict(send.attributes or {})["catga.from_cache"] is True


async def test_nested_sends_are_children_of_the_handler_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    mediator = catga.Mediator(config=Config.default().with_(tracing=Tracing(tracer_provider=provider)))

    @mediator.handler
    async def reserve(cmd: Reserve) -> str:
        count = await mediator.send(Count(cmd.item))
        return f"{cmd.item}:{count}"

    mediator.register(Count, lambda query: 3)
    outer = Reserve("a")
    assert await mediator.send(outer) == "a:3"
    finished = exporter.get_finished_spans()
    [handle_reserve] = by_name(finished, "handle stock.reserve")
    [send_count] = by_name(finished, "send stock.count")
    [handle_count] = by_name(finished, "handle stock.count")
    assert send_count.parent is not None
    assert send_count.parent.span_id == handle_reserve.context.span_id
    assert handle_count.parent is not None
    assert handle_count.parent.span_id == send_count.context.span_id
    assert len({span.context.trace_id for span in finished}) == 1
    # The nested query's correlation id is the outer message's id (API.md section 1).
    assert dict(send_count.attributes or {})["catga.correlation_id"] == outer.message_id


async def test_a_failure_is_recorded_on_the_spans(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = spans
    config = Config.default().with_(tracing=Tracing(tracer_provider=provider), retry=None)
    mediator = catga.Mediator(config=config)

    @mediator.handler
    def reserve(cmd: Reserve) -> str:
        raise ValueError("no stock")

    with pytest.raises(ValueError, match="no stock"):
        await mediator.send(Reserve("a"))
    for span in exporter.get_finished_spans():
        assert span.status.status_code == StatusCode.ERROR
        assert dict(span.attributes or {})["catga.outcome"] == "failure"
        assert any(event.name == "exception" for event in span.events)


@pytest.mark.parametrize("strategy", ["sequential", "concurrent"])
async def test_spans_of_a_publish(spans: tuple[TracerProvider, InMemorySpanExporter], strategy: Any) -> None:
    provider, exporter = spans
    mediator = catga.Mediator(
        config=Config.default().with_(tracing=Tracing(tracer_provider=provider)), publish=strategy
    )
    for _ in range(3):
        mediator.register(Reserved, _async_noop)
    await mediator.publish(Reserved("a"))
    finished = exporter.get_finished_spans()
    [publish] = by_name(finished, "publish stock.reserved")
    handles = by_name(finished, "handle stock.reserved")
    assert len(handles) == 3
    assert all(h.parent is not None and h.parent.span_id == publish.context.span_id for h in handles)
    assert len({dict(h.attributes or {})["catga.handler"] for h in handles}) == 3


async def test_no_tracer_provider_no_spans_and_no_cost_of_python() -> None:
    # The global provider is never set in the test process: the default Tracing is not live.
    import opentelemetry.trace

    assert opentelemetry.trace._TRACER_PROVIDER is None
    mediator = catga.Mediator()
    mediator.register(Reserve, lambda cmd: "ok")
    assert await mediator.send(Reserve("a")) == "ok"


async def test_a_broken_tracer_never_breaks_a_send(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenProvider:
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter misconfigured")

    mediator = catga.Mediator(config=Config.default().with_(tracing=Tracing(tracer_provider=BrokenProvider())))
    mediator.register(Reserve, lambda cmd: "ok")
    with caplog.at_level(logging.WARNING, logger="catga.observability"):
        assert await mediator.send(Reserve("a")) == "ok"
    assert any("span" in record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------------------------- logging


async def test_logging_sees_refusals_and_replays(caplog: pytest.LogCaptureFixture) -> None:
    clock = lambda: 0.0  # noqa: E731
    config = Config.default().with_(
        logging=Logging(level="INFO"), rate_limit=RateLimit(rate=1.0, burst=1.0, clock=clock)
    )
    mediator = catga.Mediator(config=config)
    mediator.register(Reserve, lambda cmd: "ok")
    message = Reserve("a")
    with caplog.at_level(logging.INFO, logger="catga"):
        await mediator.send(message)
        await mediator.send(message)  # a replay: no token taken
        with pytest.raises(catga.RateLimited):
            await mediator.send(Reserve("b"))
    records = [r for r in caplog.records if r.name == "catga"]
    assert [r.outcome for r in records] == ["success", "success", "failure"]  # type: ignore[attr-defined]
    assert [r.from_cache for r in records] == [False, True, False]  # type: ignore[attr-defined]
    assert records[2].error.startswith("RateLimited")  # type: ignore[attr-defined]
    assert records[0].message_id == message.message_id  # type: ignore[attr-defined]
    assert records[0].correlation_id == message.message_id  # type: ignore[attr-defined]
    assert records[0].message_type == "stock.reserve"  # type: ignore[attr-defined]


async def test_logging_level_changes_apply_after_the_mediator_is_built(caplog: pytest.LogCaptureFixture) -> None:
    mediator = catga.Mediator(config=Config.default().with_(logging=Logging(level="INFO")))
    mediator.register(Reserve, lambda cmd: "ok")
    with caplog.at_level(logging.WARNING, logger="catga"):
        await mediator.send(Reserve("quiet"))
    assert not [r for r in caplog.records if r.name == "catga"]
    with caplog.at_level(logging.INFO, logger="catga"):
        await mediator.send(Reserve("loud"))
    assert len([r for r in caplog.records if r.name == "catga"]) == 1


async def test_logging_one_record_per_event_handler(caplog: pytest.LogCaptureFixture) -> None:
    mediator = catga.Mediator(config=Config.default().with_(logging=Logging(level="INFO")))
    mediator.register(Reserved, _async_noop)
    mediator.register(Reserved, lambda event: None)
    with caplog.at_level(logging.INFO, logger="catga"):
        await mediator.publish(Reserved("a"))
    records = [r for r in caplog.records if r.name == "catga"]
    assert len(records) == 2
    assert all(r.handler for r in records)  # type: ignore[attr-defined]


def test_a_tracer_provider_set_after_the_mediator_is_built_is_picked_up() -> None:
    # `set_tracer_provider` works once per process: in a process of its own.
    code = textwrap.dedent(
        """
        import asyncio
        import catga
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        class Ping(catga.Command[str], tag="late.ping"):
            pass

        mediator = catga.Mediator()
        mediator.register(Ping, lambda ping: "pong")
        asyncio.run(mediator.send(Ping()))  # no provider yet: no spans
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        asyncio.run(mediator.send(Ping()))
        print(sorted(span.name for span in exporter.get_finished_spans()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['handle late.ping', 'send late.ping']"


def test_the_default_registry_reaches_a_meter_provider_set_later() -> None:
    code = textwrap.dedent(
        """
        import asyncio
        import catga
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        class Ping(catga.Command[str], tag="late.ping"):
            pass

        mediator = catga.Mediator()
        mediator.register(Ping, lambda ping: "pong")
        for _ in range(3):
            asyncio.run(mediator.send(Ping()))
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        data = reader.get_metrics_data()
        print(sum(
            point.value
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics if metric.name == "catga.messages"
            for point in metric.data.data_points
        ))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


# ---------------------------------------------------------------------------------- bad settings


def test_bad_observability_settings_fail_where_they_are_written() -> None:
    with pytest.raises(TypeError, match="`tracer_provider` must be an OpenTelemetry `TracerProvider`, got `'jaeger'`"):
        Tracing(tracer_provider="jaeger")
    with pytest.raises(TypeError, match=r"`registry` must be a `catga.observability.MetricsRegistry`, got `\{\}`"):
        Metrics(registry={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`level` must be a logging level"):
        Logging(level="LOUD")


def test_observing_builtins_compare_by_settings() -> None:
    registry = MetricsRegistry()
    assert Metrics(registry=registry) == Metrics(registry=registry)
    assert Metrics(registry=registry) != Metrics(registry=MetricsRegistry())
    assert Metrics() == Metrics()  # both the default registry
    assert repr(Metrics()) == "Metrics()"
    assert repr(Tracing()) == "Tracing()"


async def test_a_broken_log_handler_never_breaks_a_send(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("the log pipeline is down")

    mediator = catga.Mediator(config=Config.default().with_(logging=Logging(level="INFO")))
    mediator.register(Reserve, lambda cmd: "ok")
    logger = logging.getLogger("catga")
    broken = Broken()
    logger.addFilter(broken)
    try:
        with caplog.at_level(logging.INFO, logger="catga"):
            assert await mediator.send(Reserve("a")) == "ok"
    finally:
        logger.removeFilter(broken)
    assert any("could not write the log record" in r.getMessage() for r in caplog.records)


def test_a_send_closed_before_it_ran_counts_nothing(registry: MetricsRegistry) -> None:
    mediator = catga.Mediator(config=Config.minimal().with_(metrics=Metrics(registry=registry)))
    mediator.register(Reserve, lambda cmd: "ok")
    mediator.register(Reserved, _async_noop)
    for pending in (mediator.send(Reserve("a")), mediator.publish(Reserved("a"))):
        pending.close()  # type: ignore[attr-defined]
    for stats in registry.snapshot():
        assert stats["messages"] == {"success": 0, "failure": 0, "cancelled": 0}, stats
        assert stats["publish_handlers"] == {"success": 0, "failure": 0, "cancelled": 0}, stats
        assert stats["active"] == 0
