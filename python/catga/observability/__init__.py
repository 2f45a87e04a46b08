"""Observability: structured logging, OpenTelemetry tracing and metrics, Prometheus text.

- Logging: catga logs on the `catga` logger hierarchy with structured `extra` fields.
  `configure_logging()` sets up JSON lines with correlation ids in one call; `JsonFormatter` and
  `CorrelationIdFilter` are the pieces, for applications with their own logging configuration.
- Tracing: the Tracing behaviour (on by default) wraps each message in an OpenTelemetry span as
  soon as the application sets a tracer provider (only `opentelemetry-api` is required; the SDK
  is the application's choice). `inject`, `extract` and `traceparent` carry the trace context in
  message headers (W3C Trace Context).
- Metrics: counted lock-free in the core, per message type; `default_registry()` reads them as
  Prometheus text (`prometheus_text()`) or exports them through OpenTelemetry (`instrument()`).

>>> import catga.observability as obs
>>> "catga_messages_total" in obs.default_registry().prometheus_text()
True
"""

from catga.observability._logging import CorrelationIdFilter, JsonFormatter, configure_logging
from catga.observability._prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from catga.observability._propagation import extract, inject, traceparent
from catga.observability._registry import MetricsRegistry, default_registry

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "CorrelationIdFilter",
    "JsonFormatter",
    "MetricsRegistry",
    "configure_logging",
    "default_registry",
    "extract",
    "inject",
    "traceparent",
]

# Shown as `catga.observability.X` in reprs, tracebacks and docs (as `catga` does for its names).
for _value in (
    CorrelationIdFilter,
    JsonFormatter,
    MetricsRegistry,
    configure_logging,
    default_registry,
    extract,
    inject,
    traceparent,
):
    _value.__module__ = __name__
del _value
