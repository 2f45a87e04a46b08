"""Structured logging: a JSON formatter, a correlation-id filter and a one-call set-up.

catga logs on the `catga` logger hierarchy; the Logging behaviour's records carry the `extra`
fields `message_type`, `message_id`, `correlation_id`, `duration`, `outcome`, `error` (and
`handler` for event handlers). `CorrelationIdFilter` adds the ids of the message being handled to
every record, the application's own included, so one correlation id ties together everything a
message caused; `JsonFormatter` writes each record as one JSON object per line.

>>> import io, logging
>>> stream = io.StringIO()
>>> handler = configure_logging(logging.INFO, stream=stream, logger="example")
>>> logging.getLogger("example").info("hello %s", "world", extra={"order": 7})
>>> print(stream.getvalue())  # doctest: +ELLIPSIS
{"timestamp":"...Z","level":"INFO","logger":"example","message":"hello world","order":7}
<BLANKLINE>
>>> logging.getLogger("example").removeHandler(handler)
"""

import copy
import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Final

import msgspec
from opentelemetry import trace

from catga._messages import current_context, wire_name

__all__ = ["CorrelationIdFilter", "JsonFormatter", "configure_logging"]

CATGA_FIELDS: Final = (
    "message_type",
    "message_id",
    "correlation_id",
    "duration",
    "outcome",
    "error",
    "handler",
    "from_cache",
    "trace_id",
    "span_id",
)
"""The `extra` fields catga (its Logging behaviour and `CorrelationIdFilter`) puts on records."""

# Everything a plain LogRecord has (3.12 added `taskName`), plus what formatters add to it: the
# rest of a record's attributes are the caller's `extra`.
_STANDARD: Final = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", (), None)),
        "message",
        "asctime",
        "taskName",
    }
)
_SKIP: Final = _STANDARD | frozenset(CATGA_FIELDS)

_encode: Final = msgspec.json.Encoder(enc_hook=repr).encode
"""Values msgspec cannot encode (any object without a JSON form) go in as their `repr`."""


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _safe(value: object) -> object:
    """`value` if it encodes on its own, else its `repr` (or a marker if even that fails)."""
    try:
        _encode(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__qualname__}>"
    return value


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON.

    Keys, in order: `timestamp` (ISO 8601, UTC, milliseconds), `level`, `logger`, `message` (the
    formatted message), `static_fields` (e.g. the service name), catga's fields present on the
    record (`message_type`, `message_id`, `correlation_id`, `duration`, `outcome`, `error`,
    `handler`, `from_cache`, `trace_id`, `span_id`; the ones that are `None` are left out), the caller's other
    `extra` attributes (a value JSON cannot take becomes its `repr`), and `exception` (the
    traceback) / `stack` when the record has them. A record's own fields win over static ones.

    >>> import json, logging
    >>> record = logging.LogRecord("catga", logging.INFO, __file__, 1, "sent %s", ("x",), None)
    >>> record.created, record.msecs, record.correlation_id = 0.0, 0.0, 42
    >>> json.loads(JsonFormatter(static_fields={"service": "orders"}).format(record))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'timestamp': '1970-01-01T00:00:00.000Z', 'level': 'INFO', 'logger': 'catga', 'message': 'sent x',
     'service': 'orders', 'correlation_id': 42}
    """

    def __init__(self, *, static_fields: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.static_fields: dict[str, object] = dict(static_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields.update(self.static_fields)
        attributes = vars(record)
        for name in CATGA_FIELDS:
            value = attributes.get(name)
            if value is not None:
                fields[name] = value
        for name, value in attributes.items():
            if name not in _SKIP:
                fields[name] = value
        if record.exc_info and not record.exc_text:
            # Cached on the record like `logging.Formatter.format` does, for the next handler.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        try:
            return _encode(fields).decode()
        except Exception:
            # Rare (an int beyond 64 bits, a dict with odd keys): encode what can be, `repr` the rest.
            return _encode({name: _safe(value) for name, value in fields.items()}).decode()


class CorrelationIdFilter(logging.Filter):
    """Adds the ids of the message being handled, and of the current span, to every record.

    From `catga.current_context()`: `correlation_id` (the effective one), `message_id` and
    `message_type` (the wire name), each only when the record does not carry it already (the
    Logging behaviour's records do). From the current OpenTelemetry span, when it is valid:
    `trace_id` (32 lowercase hex digits) and `span_id` (16). Never drops a record.

    Put it on a *handler* (`handler.addFilter(CorrelationIdFilter())`), not on a logger: a logger's
    filters only see records logged on that very logger, a handler's see the records of every
    logger that reaches it, the application's own included. `configure_logging` does this.

    >>> import logging
    >>> record = logging.LogRecord("app", logging.INFO, __file__, 1, "outside a handler", (), None)
    >>> CorrelationIdFilter().filter(record), hasattr(record, "correlation_id")
    (True, False)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        attributes = vars(record)
        context = current_context()
        if context is not None:
            if attributes.get("correlation_id") is None:
                record.correlation_id = context.correlation_id
            if attributes.get("message_id") is None:
                record.message_id = context.message_id
            if attributes.get("message_type") is None:
                record.message_type = wire_name(type(context.message))
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            if attributes.get("trace_id") is None:
                record.trace_id = format(span_context.trace_id, "032x")
            if attributes.get("span_id") is None:
                record.span_id = format(span_context.span_id, "016x")
        return True


TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s"
"""The line `configure_logging(json=False)` writes; `-` stands for "no correlation id"."""


class _TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, with `-` where a record has no correlation id (absent or `None`)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, "correlation_id", None) is None:
            # A copy: the record goes on to other handlers, which must see it unchanged.
            record = copy.copy(record)
            record.correlation_id = "-"
        return super().formatMessage(record)


# The handler `configure_logging` added, by logger name: calling it again replaces that one.
_configured: dict[str, logging.Handler] = {}


def configure_logging(
    level: int | str = logging.INFO,
    *,
    json: bool = True,
    stream: IO[str] | None = None,
    logger: str = "",
) -> logging.Handler:
    """Log to `stream` (default `sys.stderr`) with correlation ids: a convenience for applications.

    Adds a `StreamHandler` with `CorrelationIdFilter` and a `JsonFormatter` (or, with
    `json=False`, the text line `TEXT_FORMAT`) to the logger named `logger` (the root logger by
    default, so the application's records get correlation ids too), sets that logger's level, and
    returns the handler. Calling it again for the same logger replaces the handler it added before
    instead of adding a second one. Applications with their own logging configuration use the
    formatter and the filter directly instead.

    >>> import io, logging
    >>> first = configure_logging(stream=io.StringIO(), logger="example", json=False)
    >>> second = configure_logging(stream=io.StringIO(), logger="example")
    >>> logging.getLogger("example").handlers == [second]
    True
    >>> logging.getLogger("example").removeHandler(second)
    """
    target = logging.getLogger(logger or None)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else _TextFormatter())
    handler.addFilter(CorrelationIdFilter())
    previous = _configured.get(target.name)
    if previous is not None:
        target.removeHandler(previous)
        previous.close()  # a StreamHandler leaves its stream open: this only unregisters it
    target.addHandler(handler)
    target.setLevel(level)
    _configured[target.name] = handler
    return handler
