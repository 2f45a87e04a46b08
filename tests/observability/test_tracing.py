"""Tracing: `SpanTracer` (the spans the pipeline opens), `tracing_switch`, W3C propagation."""

import asyncio
import doctest
import gc
import importlib
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import catga
from catga.observability import extract, inject, traceparent
from catga.observability._tracing import SpanTracer, tracing_switch

# The flags are `01` (sampled), or `03` with an SDK that also sets W3C level 2's "random trace id".
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[13]")


def w3c(span_context: trace.SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"


class PlaceOrder(catga.Command[str], tag="test.tracing.orders.place"):
    customer: str = "ada"


class OrderPlaced(catga.Event, tag="test.tracing.orders.placed"):
    order_id: str = "o-1"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def finished(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


# ------------------------------------------------------------------------------------- the spans


def test_send_span_name_and_attributes(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    tracer = SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider)
    message = PlaceOrder()
    tracer.end(tracer.start(message, "send"), None, False)
    [span] = exporter.get_finished_spans()
    assert span.name == "send test.tracing.orders.place"
    assert span.kind is trace.SpanKind.INTERNAL
    assert dict(span.attributes or {}) == {
        "messaging.system": "catga",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "test.tracing.orders.place",
        "messaging.message.id": str(message.message_id),
        "catga.message.kind": "command",
        "catga.message.type": "test.tracing.orders.place",
        "catga.correlation_id": message.message_id,  # a top-level message: its own id
        "catga.outcome": "success",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "catga"
    assert span.instrumentation_scope.version == catga.__version__


def test_publish_and_handle_spans(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    publish = SpanTracer("test.tracing.orders.placed", "event", tracer_provider=provider)
    handle = SpanTracer("test.tracing.orders.placed", "event", handler="mail.send_receipt", tracer_provider=provider)
    event = OrderPlaced(correlation_id=42)
    outer = publish.start(event, "publish")
    handle.end(handle.start(event, "handle"), None, False)
    publish.end(outer, None, False)
    spans = finished(exporter)
    published, handled = spans["publish test.tracing.orders.placed"], spans["handle test.tracing.orders.placed"]
    assert published.attributes is not None
    assert handled.attributes is not None
    assert published.attributes["messaging.operation.type"] == "send"
    assert "catga.handler" not in published.attributes
    assert handled.attributes["messaging.operation.name"] == "handle"
    assert handled.attributes["messaging.operation.type"] == "process"
    assert handled.attributes["catga.handler"] == "mail.send_receipt"
    assert handled.attributes["catga.correlation_id"] == 42  # `correlation_id or message_id`
    assert handled.attributes["messaging.message.id"] == str(event.message_id)


def test_a_plain_message_without_ids_has_no_id_attributes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    class Plain:
        message_id = "not an int"

    tracer = SpanTracer("app.Plain", "request", tracer_provider=provider)
    tracer.end(tracer.start(Plain(), "send"), None, False)
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert "messaging.message.id" not in span.attributes
    assert "catga.correlation_id" not in span.attributes


def test_a_span_started_while_another_is_current_is_its_child(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider)
    message = PlaceOrder()
    outer = tracer.start(message, "send")
    assert trace.get_current_span().get_span_context().is_valid  # made current
    inner = tracer.start(message, "handle")
    tracer.end(inner, None, False)
    tracer.end(outer, None, False)
    assert not trace.get_current_span().get_span_context().is_valid  # and detached again
    spans = finished(exporter)
    send, handle = spans["send test.tracing.orders.place"], spans["handle test.tracing.orders.place"]
    assert handle.parent is not None
    assert handle.parent.span_id == send.context.span_id
    assert handle.context.trace_id == send.context.trace_id
    assert send.parent is None


def test_failure_records_the_exception_and_sets_the_status(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider)
    handle = tracer.start(PlaceOrder(), "send")
    tracer.end(handle, catga.ValidationError(["customer is empty"]), False)
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["catga.outcome"] == "failure"
    assert span.attributes["error.type"] == "catga.ValidationError"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == str(catga.ValidationError(["customer is empty"]))
    [event] = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "catga.ValidationError"  # the SDK agrees on the name


def test_error_type_of_a_builtin_exception_has_no_module(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider)
    tracer.end(tracer.start(PlaceOrder(), "send"), KeyError("k"), False)
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "KeyError"


def test_cancelled_leaves_the_status_unset(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    tracer = SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider)
    tracer.end(tracer.start(PlaceOrder(), "send"), asyncio.CancelledError(), False)
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["catga.outcome"] == "cancelled"
    assert "error.type" not in span.attributes
    assert span.status.status_code is StatusCode.UNSET
    assert not span.events


def test_from_cache_is_marked(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    tracer = SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider)
    tracer.end(tracer.start(PlaceOrder(), "send"), None, True)
    tracer.end(tracer.start(PlaceOrder(), "send"), None, False)
    cached, computed = exporter.get_finished_spans()
    assert cached.attributes is not None
    assert computed.attributes is not None
    assert cached.attributes["catga.from_cache"] is True
    assert "catga.from_cache" not in computed.attributes


def test_an_unknown_operation_is_refused(provider: TracerProvider) -> None:
    with pytest.raises(ValueError, match="operation `receive`"):
        SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider).start(None, "receive")


def test_repr() -> None:
    assert (
        repr(SpanTracer("test.tracing.orders.placed", "event", "mail.send"))
        == "SpanTracer('test.tracing.orders.placed', 'event', handler='mail.send')"
    )


# ------------------------------------------------------------------------------- never raises


@pytest.mark.parametrize("handle", [None, 42, "garbage", (1, 2), (1, 2, 3), object()])
def test_end_never_raises_on_garbage(handle: Any, provider: TracerProvider) -> None:
    SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider).end(handle, None, False)


def test_a_broken_sdk_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenSpan(trace.NonRecordingSpan):
        def end(self, end_time: int | None = None) -> None:
            raise RuntimeError("exporter exploded")

    class BrokenTracer(trace.NoOpTracer):
        def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
            return BrokenSpan(trace.INVALID_SPAN_CONTEXT)

    class BrokenProvider(trace.NoOpTracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return BrokenTracer()

    class WorseProvider(trace.NoOpTracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            raise RuntimeError("no tracer for you")

    caplog.set_level(logging.WARNING, logger="catga.observability")
    broken = SpanTracer("test.tracing.orders.place", "command", tracer_provider=BrokenProvider())
    for _ in range(3):
        broken.end(broken.start(PlaceOrder(), "send"), None, False)
    worse = SpanTracer("test.tracing.orders.place", "command", tracer_provider=WorseProvider())
    handle = worse.start(PlaceOrder(), "send")
    assert handle is None
    worse.end(handle, ValueError("x"), False)
    # Once per tracer (per route), each saying which type and what failed.
    first, second = [r for r in caplog.records if r.name == "catga.observability"]
    assert first.levelno == second.levelno == logging.WARNING
    assert first.getMessage().startswith("tracing failed while ending a span of `test.tracing.orders.place`")
    assert second.getMessage().startswith("tracing failed while starting a span of `test.tracing.orders.place`")
    assert not trace.get_current_span().get_span_context().is_valid  # the context was detached


# ---------------------------------------------------------------------------- the tracer cache


def test_the_tracer_is_cached_per_provider(exporter: InMemorySpanExporter) -> None:
    calls: list[str] = []

    class Counting(TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            calls.append(args[0])
            return super().get_tracer(*args, **kwargs)

    provider = Counting()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider)
    for _ in range(3):
        tracer.end(tracer.start(PlaceOrder(), "send"), None, False)
    assert calls == ["catga"]
    assert len(exporter.get_finished_spans()) == 3
    provider.shutdown()


def test_without_a_provider_spans_are_no_ops() -> None:
    tracer = SpanTracer("test.tracing.orders.place", "command")
    handle = tracer.start(PlaceOrder(), "send")
    assert handle is not None
    tracer.end(handle, None, False)


def run_python(code: str, **env: str) -> str:
    """Run `code` in a fresh interpreter (a global provider can be set only once per process)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment | env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_provider_set_after_import_is_picked_up() -> None:
    out = run_python(
        """
        import catga
        from catga.observability._tracing import SpanTracer, tracing_switch
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        namespace, key = tracing_switch()
        tracer = SpanTracer("test.tracing.orders.place", "command")
        tracer.end(tracer.start(None, "send"), None, False)  # before: no-op, and no tracer kept
        print(namespace.get(key) is None)
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        print(namespace.get(key) is provider)
        tracer.end(tracer.start(None, "send"), None, False)
        print([span.name for span in exporter.get_finished_spans()])
        """
    )
    assert out.splitlines() == ["True", "True", "['send test.tracing.orders.place']"]


def test_tracing_switch_installs_a_provider_named_by_the_environment() -> None:
    out = run_python(
        """
        from catga.observability._tracing import tracing_switch
        namespace, key = tracing_switch()
        print(type(namespace.get(key)).__module__)
        """,
        OTEL_PYTHON_TRACER_PROVIDER="sdk_tracer_provider",
    )
    assert out.strip() == "opentelemetry.sdk.trace"


# ------------------------------------------------------------------------------- tracing_switch


def test_tracing_switch_is_the_api_module_global() -> None:
    switch = tracing_switch()
    assert switch is not None
    namespace, key = switch
    assert namespace is vars(trace)
    assert key == "_TRACER_PROVIDER"
    assert namespace.get(key) is None  # no test sets the global provider


def test_tracing_switch_is_none_when_the_api_lost_its_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(trace, "_TRACER_PROVIDER")
    assert tracing_switch() is None


# --------------------------------------------------------------------------------- propagation


def test_inject_extract_round_trip(provider: TracerProvider) -> None:
    tracer = SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider)
    handle = tracer.start(PlaceOrder(), "send")
    try:
        current = trace.get_current_span().get_span_context()
        headers = inject({"catga-message-id": "1"})
        assert headers["catga-message-id"] == "1"
        assert TRACEPARENT.fullmatch(headers["traceparent"])
        assert headers["traceparent"] == w3c(current)
        assert traceparent() == headers["traceparent"]
    finally:
        tracer.end(handle, None, False)
    assert traceparent() is None
    remote = trace.get_current_span(extract(headers)).get_span_context()
    assert remote.is_remote
    assert (remote.trace_id, remote.span_id) == (current.trace_id, current.span_id)


def test_a_span_started_in_an_extracted_context_continues_the_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with provider.get_tracer("test").start_as_current_span("receive", context=extract(headers)):
        tracer = SpanTracer("test.tracing.orders.place", "command", tracer_provider=provider)
        tracer.end(tracer.start(PlaceOrder(), "handle"), None, False)
    spans = finished(exporter)
    assert spans["handle test.tracing.orders.place"].context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C


def test_inject_with_an_explicit_context_and_a_new_dict() -> None:
    parent = trace.SpanContext(0x1, 0x2, is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    headers = inject(context=trace.set_span_in_context(trace.NonRecordingSpan(parent)))
    assert headers["traceparent"] == f"00-{1:032x}-{2:016x}-01"
    assert inject() == {}


# -------------------------------------------------------------------------- through the pipeline


async def test_a_mediator_with_a_tracer_provider_traces_send_and_handle(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from catga.behaviors import Tracing

    mediator = catga.Mediator(config=catga.Config.default().with_(tracing=Tracing(tracer_provider=provider)))
    seen: list[str | None] = []

    @mediator.handler
    async def place(cmd: PlaceOrder) -> str:
        seen.append(traceparent())
        return "ok"

    message = PlaceOrder()
    assert await mediator.send(message) == "ok"
    spans = finished(exporter)
    send, handle = spans["send test.tracing.orders.place"], spans["handle test.tracing.orders.place"]
    assert handle.parent is not None
    assert handle.parent.span_id == send.context.span_id
    assert seen == [w3c(handle.context)]


# ------------------------------------------------------------------------------ docstring examples


@pytest.mark.parametrize("module_name", ["catga.observability._tracing", "catga.observability._propagation"])
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(module, module_name)
    for name in module.__all__:
        tests += finder.find(getattr(module, name), name, module=False, globs=vars(module))
    assert any(test.examples for test in tests)
    for test in tests:
        runner.run(test)
    gc.collect()
    assert runner.failures == 0
