"""Trace context in message headers (W3C Trace Context), for the transports.

A transport calls `inject` on the headers of a message it sends and `extract` on the headers of a
message it receives, and starts the receiving span in the extracted context, so that one trace
follows a message across processes. Both use the global text-map propagator of
`opentelemetry-api` (W3C `traceparent`/`tracestate` and baggage unless the application configured
another, e.g. with `OTEL_PROPAGATORS`).

>>> from opentelemetry import trace
>>> parent = trace.SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=trace.TraceFlags(1))
>>> headers = inject({"x-app": "1"}, context=trace.set_span_in_context(trace.NonRecordingSpan(parent)))
>>> headers["traceparent"]
'00-00000000000000000000000000001234-0000000000005678-01'
>>> trace.get_current_span(extract(headers)).get_span_context().trace_id == 0x1234
True
"""

from collections.abc import Mapping
from typing import Final

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["extract", "inject", "traceparent"]

# `traceparent()` promises W3C whatever the global propagator is (B3, Jaeger...): the envelope
# header of API.md section 7 has that name and format.
_W3C: Final = TraceContextTextMapPropagator()


def inject(headers: dict[str, str] | None = None, *, context: Context | None = None) -> dict[str, str]:
    """Write the trace context of `context` (default: the current one) into `headers`, returning them.

    With `headers=None` a new dict is made. Nothing is written when there is no valid span.

    >>> inject()  # no span is current
    {}
    """
    carrier: dict[str, str] = {} if headers is None else headers
    propagate.inject(carrier, context=context)
    return carrier


def extract(headers: Mapping[str, str]) -> Context:
    """The context carried by `headers` (a received message's), to start its span in.

    Headers without a (valid) trace context give a context without a span: a new trace starts.

    >>> from opentelemetry import trace
    >>> trace.get_current_span(extract({})).get_span_context().is_valid
    False
    """
    return propagate.extract(headers)


def traceparent() -> str | None:
    """The W3C `traceparent` of the current span, or `None` when no valid span is current.

    >>> traceparent() is None
    True
    """
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")
