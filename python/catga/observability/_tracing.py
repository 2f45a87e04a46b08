"""OpenTelemetry spans around messages: what the pipeline's Tracing layer calls per message.

Only `opentelemetry-api` is used; which SDK (if any) records the spans is the application's choice.
Spans follow the OpenTelemetry semantic conventions for messaging where they apply
(`messaging.system`, `messaging.operation.name`/`.type`, `messaging.destination.name`,
`messaging.message.id`, `error.type`) and add `catga.*` attributes for what those do not cover.

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> exporter = InMemorySpanExporter()
>>> provider = TracerProvider()
>>> provider.add_span_processor(SimpleSpanProcessor(exporter))
>>> tracer = SpanTracer("orders.create", "command", tracer_provider=provider)
>>> handle = tracer.start(None, "send")
>>> tracer.end(handle, None, False)
>>> [(span.name, span.attributes["catga.outcome"]) for span in exporter.get_finished_spans()]
[('send orders.create', 'success')]
"""

import logging
import os
from contextvars import Token
from typing import Final, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from catga._core import __version__
from catga._messages import message_ids

__all__ = ["SpanTracer", "tracing_switch"]

_logger: Final = logging.getLogger("catga.observability")

_OPERATION_TYPES: Final = {"send": "send", "publish": "send", "handle": "process"}
"""`messaging.operation.type` of each operation: sending and publishing create a message for
someone else ("send" in the conventions), a handler consumes one ("process")."""


def _error_type(error: BaseException) -> str:
    """`error.type`: the exception's fully qualified class name (a builtin's without `builtins.`).

    Low cardinality by construction, as the conventions require (a class, never the message text).
    """
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class SpanTracer:
    """Starts and ends the spans of one message type (and, for events, one handler).

    `kind` is the message kind (`"command"`, `"query"`, `"event"`, ...), `handler` the qualified
    name of an event handler (only `handle` spans carry it). With `tracer_provider=None` the global
    provider is looked up when each span starts, so a provider set after `import catga`
    (`trace.set_tracer_provider`) is picked up; the tracer is cached per provider object.

    `start` returns an opaque handle for `end`. Neither raises: a failing SDK is logged on the
    `catga.observability` logger, once per `SpanTracer` (that is, per route: a broken exporter
    must not flood the log, nor hide which message types it broke), and the message goes on.

    >>> tracer = SpanTracer("orders.placed", "event", handler="mail.send_receipt")
    >>> tracer.end(tracer.start(None, "handle"), None, False)  # no provider set: a no-op span
    """

    __slots__ = ("_cached", "_handler", "_kind", "_provider", "_warned", "_wire_name")

    def __init__(
        self,
        wire_name: str,
        kind: str,
        handler: str | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._wire_name = wire_name
        self._kind = kind
        self._handler = handler
        self._provider = tracer_provider
        # (provider, its tracer) in one attribute, so that threads never pair a tracer with
        # another provider.
        self._cached: tuple[TracerProvider, Tracer] | None = None
        self._warned = False

    def __repr__(self) -> str:
        handler = f", handler={self._handler!r}" if self._handler is not None else ""
        return f"SpanTracer({self._wire_name!r}, {self._kind!r}{handler})"

    def _warn_once(self, doing: str) -> None:
        if not self._warned:
            self._warned = True
            _logger.warning(
                "tracing failed while %s a span of `%s`; the message is unaffected (logged once per route)",
                doing,
                self._wire_name,
                exc_info=True,
            )

    def _get_tracer(self) -> Tracer:
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        cached = self._cached
        if cached is not None and cached[0] is provider:
            return cached[1]
        tracer = provider.get_tracer("catga", __version__)
        self._cached = (provider, tracer)
        return tracer

    def start(self, message: object, operation: str) -> object:
        """Start the span of `operation` (`"send"`, `"publish"` or `"handle"`) on `message` and make
        it current; returns the handle to pass to `end`."""
        operation_type = _OPERATION_TYPES.get(operation)
        if operation_type is None:
            raise ValueError(f"operation `{operation}` must be `send`, `publish` or `handle`")
        attributes: dict[str, str | int] = {
            "messaging.system": "catga",
            "messaging.operation.name": operation,
            "messaging.operation.type": operation_type,
            "messaging.destination.name": self._wire_name,
            "catga.message.kind": self._kind,
            "catga.message.type": self._wire_name,  # as on the metrics, for joins across signals
        }
        message_id, correlation_id = message_ids(message)
        if message_id is not None:
            # The conventions make message ids strings (brokers' ids often are).
            attributes["messaging.message.id"] = str(message_id)
        if correlation_id is not None:
            attributes["catga.correlation_id"] = correlation_id
        if operation == "handle" and self._handler is not None:
            attributes["catga.handler"] = self._handler
        try:
            # INTERNAL, not PRODUCER/CONSUMER: in-process dispatch has no broker and no remote
            # peer, and backends pair PRODUCER/CONSUMER spans across processes (a lone PRODUCER
            # span looks like a message that was never received). A transport that does cross a
            # process boundary adds its own PRODUCER/CONSUMER spans around these.
            span = self._get_tracer().start_span(
                f"{operation} {self._wire_name}", kind=SpanKind.INTERNAL, attributes=attributes
            )
            token = otel_context.attach(trace.set_span_in_context(span))
        except Exception:
            self._warn_once("starting")
            return None
        return (span, token)

    def end(self, handle: object, error: BaseException | None, from_cache: bool) -> None:
        """Detach the span of `handle` from the context, record the outcome and end it. Never raises."""
        if handle is None:  # `start` failed (and said so)
            return
        try:
            span, token = cast("tuple[Span, Token[Context]]", handle)
            otel_context.detach(token)
            _finish(span, error, from_cache)
        except Exception:
            self._warn_once("ending")


def _finish(span: Span, error: BaseException | None, from_cache: bool) -> None:
    if error is None:
        span.set_attribute("catga.outcome", "success")
    elif not isinstance(error, Exception):
        # Cancellation (or an interpreter exit: KeyboardInterrupt, SystemExit, a closed coroutine's
        # GeneratorExit) is not the handler failing: no ERROR status; logs and metrics agree.
        span.set_attribute("catga.outcome", "cancelled")
    else:
        span.set_attribute("catga.outcome", "failure")
        span.record_exception(error)
        span.set_attribute("error.type", _error_type(error))
        span.set_status(Status(StatusCode.ERROR, str(error)))
    if from_cache:
        span.set_attribute("catga.from_cache", True)
    span.end()


def tracing_switch() -> tuple[dict[str, object], str] | None:
    """The pipeline's fast test of whether tracing is live: `(namespace, key)` or `None`.

    A span costs far more than the 30 ns budget of an untraced send, and with no tracer provider
    set every span would be a no-op anyway. So the pipeline skips tracing while
    `namespace.get(key) is None`: `namespace` is the module dict of `opentelemetry.trace` and `key`
    its global `_TRACER_PROVIDER`, which stays `None` until an application sets a provider (a dict
    look-up of a few ns, and it sees a provider set at any time after `import catga`).
    `_TRACER_PROVIDER` is private to the API, so if a future API no longer has it this returns
    `None`, and the pipeline then treats tracing as always live: correct, only slower.

    A provider named by the environment (`OTEL_PYTHON_TRACER_PROVIDER`) is installed by the API
    lazily, on the first `trace.get_tracer_provider()`, which nothing might call before the first
    message; so when that variable is set this calls it once first, or tracing would look off.

    >>> namespace, key = tracing_switch()
    >>> key
    '_TRACER_PROVIDER'
    """
    if os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"):
        trace.get_tracer_provider()
    namespace: dict[str, object] = vars(trace)
    if "_TRACER_PROVIDER" not in namespace:
        return None
    return namespace, "_TRACER_PROVIDER"
