"""Structured logging: `JsonFormatter`, `CorrelationIdFilter`, `configure_logging`."""

import doctest
import importlib
import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace

import catga
from catga import Config
from catga.behaviors import Logging
from catga.observability import CorrelationIdFilter, JsonFormatter, configure_logging


def make_record(
    msg: str = "hello %s",
    args: tuple[object, ...] = ("world",),
    *,
    name: str = "catga.test",
    level: int = logging.INFO,
    exc_info: object = None,
    **extra: object,
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 10, msg, args, exc_info)  # type: ignore[arg-type]
    for key, value in extra.items():
        setattr(record, key, value)
    return record


class Capture(logging.Handler):
    """A handler with a `CorrelationIdFilter` that keeps the records it gets (after filtering)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []
        self.addFilter(CorrelationIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def capture() -> Iterator[Capture]:
    """A `Capture` on the root logger, which is set to DEBUG meanwhile."""
    root = logging.getLogger()
    handler, level = Capture(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# ----------------------------------------------------------------------------------- JsonFormatter


def test_json_formatter_writes_the_standard_fields() -> None:
    record = make_record()
    record.created, record.msecs = 1_700_000_000.25, 250.0
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "timestamp": "2023-11-14T22:13:20.250Z",
        "level": "INFO",
        "logger": "catga.test",
        "message": "hello world",
    }


def test_timestamp_is_iso_8601_utc_with_milliseconds() -> None:
    out = json.loads(JsonFormatter().format(make_record()))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["timestamp"])


def test_json_formatter_writes_catga_fields_and_leaves_out_none() -> None:
    record = make_record(
        message_type="orders.create",
        message_id=11,
        correlation_id=7,
        duration=0.0125,
        outcome="failure",
        error="ValueError: bad",
        handler=None,  # a request: the Logging behaviour sets it to None
        trace_id="0" * 31 + "1",
        span_id="0" * 15 + "2",
    )
    out = json.loads(JsonFormatter().format(record))
    assert out["message_type"] == "orders.create"
    assert out["message_id"] == 11
    assert out["correlation_id"] == 7
    assert out["duration"] == 0.0125
    assert out["outcome"] == "failure"
    assert out["error"] == "ValueError: bad"
    assert out["trace_id"] == "0" * 31 + "1"
    assert out["span_id"] == "0" * 15 + "2"
    assert "handler" not in out


def test_json_formatter_writes_user_extras_and_reprs_what_json_cannot_take() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque 1>"

    logger = logging.getLogger("catga.test.extras")
    handler = Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("placed", extra={"order": "o-1", "amount": 3, "tags": ["a"], "thing": Opaque(), "none": None})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    [record] = handler.records
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "placed"
    assert out["order"] == "o-1"
    assert out["amount"] == 3
    assert out["tags"] == ["a"]
    assert out["thing"] == "<Opaque 1>"
    assert out["none"] is None  # the caller's own extras are kept as given
    # No standard LogRecord attribute leaks in.
    assert not {"args", "msg", "levelno", "pathname", "lineno", "created", "thread"} & set(out)


def test_json_formatter_survives_values_msgspec_rejects() -> None:
    class Unrepresentable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    record = make_record(huge=2**80, odd_keys={(1, 2): "x"}, broken=Unrepresentable())
    out = json.loads(JsonFormatter().format(record))
    assert out["huge"] == 2**80
    assert out["odd_keys"] == {"(1, 2)": "x"}  # keys msgspec cannot take go in as their repr too
    assert out["broken"].startswith("<unrepresentable ")
    assert out["broken"].endswith(".Unrepresentable>")
    assert out["message"] == "hello world"


def test_json_formatter_writes_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record(exc_info=sys.exc_info())
    out = json.loads(JsonFormatter().format(record))
    assert out["exception"].startswith("Traceback (most recent call last):")
    assert out["exception"].rstrip().endswith("ValueError: boom")
    assert record.exc_text == out["exception"]  # cached for the next handler, like logging does


def test_json_formatter_writes_the_stack_when_asked() -> None:
    record = make_record(stack_info=None)
    record.stack_info = "Stack (most recent call last):\n  here"
    assert json.loads(JsonFormatter().format(record))["stack"].endswith("here")


def test_static_fields_come_after_the_standard_ones_and_yield_to_the_record() -> None:
    formatter = JsonFormatter(static_fields={"service": "orders", "outcome": "static"})
    out = json.loads(formatter.format(make_record(outcome="success")))
    assert list(out)[:5] == ["timestamp", "level", "logger", "message", "service"]
    assert out["service"] == "orders"
    assert out["outcome"] == "success"


def test_non_ascii_message_is_kept() -> None:
    out = json.loads(JsonFormatter().format(make_record("größe %s", ("✓",))))
    assert out["message"] == "größe ✓"


# ------------------------------------------------------------------------------ CorrelationIdFilter


def test_filter_outside_a_handler_adds_nothing_and_keeps_the_record() -> None:
    record = make_record()
    assert CorrelationIdFilter().filter(record) is True
    for name in ("correlation_id", "message_id", "message_type", "trace_id", "span_id"):
        assert not hasattr(record, name)


class Ping(catga.Command[str]):
    pass


class Pinged(catga.Event, tag="tests.observability.pinged"):
    pass


async def test_filter_adds_the_correlation_id_to_a_user_record_inside_a_real_handler(capture: Capture) -> None:
    mediator = catga.Mediator()
    app_logger = logging.getLogger("app.handlers")

    @mediator.handler
    async def ping(cmd: Ping) -> str:
        app_logger.info("handling ping")
        return "pong"

    message = Ping()
    assert await mediator.send(message) == "pong"
    [record] = [r for r in capture.records if r.name == "app.handlers"]
    assert record.correlation_id == message.message_id  # type: ignore[attr-defined]
    assert record.message_id == message.message_id  # type: ignore[attr-defined]
    assert record.message_type == catga.wire_name(Ping)  # type: ignore[attr-defined]


async def test_filter_uses_the_effective_correlation_id(capture: Capture) -> None:
    mediator = catga.Mediator()
    app_logger = logging.getLogger("app.handlers")

    @mediator.handler(Pinged)
    async def on_pinged(event: Pinged) -> None:
        app_logger.warning("pinged")

    event = Pinged(correlation_id=1234)
    await mediator.publish(event)
    [record] = [r for r in capture.records if r.name == "app.handlers"]
    assert record.correlation_id == 1234  # type: ignore[attr-defined]
    assert record.message_id == event.message_id  # type: ignore[attr-defined]
    assert record.message_type == "tests.observability.pinged"  # type: ignore[attr-defined]


async def test_filter_keeps_what_the_logging_behaviour_set(capture: Capture) -> None:
    mediator = catga.Mediator(config=Config.minimal().with_(logging=Logging(level=logging.INFO)))
    mediator.register(Ping, lambda cmd: "pong")
    message = Ping(correlation_id=99)
    await mediator.send(message)
    [record] = [r for r in capture.records if r.name == "catga"]
    assert record.correlation_id == 99  # type: ignore[attr-defined]
    assert record.outcome == "success"  # type: ignore[attr-defined]
    out = json.loads(JsonFormatter().format(record))
    assert out["correlation_id"] == 99
    assert out["message_type"] == catga.wire_name(Ping)
    assert out["outcome"] == "success"
    assert isinstance(out["duration"], float)
    assert "error" not in out


def test_filter_adds_trace_and_span_ids_of_a_valid_current_span() -> None:
    span_context = trace.SpanContext(
        trace_id=0xABC, span_id=0x12, is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)
    )
    record = make_record()
    with trace.use_span(trace.NonRecordingSpan(span_context)):
        CorrelationIdFilter().filter(record)
    assert record.trace_id == f"{0xABC:032x}"  # type: ignore[attr-defined]
    assert record.span_id == f"{0x12:016x}"  # type: ignore[attr-defined]
    assert len(record.trace_id) == 32
    assert len(record.span_id) == 16


# -------------------------------------------------------------------------------- configure_logging


@pytest.fixture
def example_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("catga.test.configured")
    handlers, level = list(logger.handlers), logger.level
    try:
        yield logger
    finally:
        for handler in logger.handlers:
            if handler not in handlers:
                logger.removeHandler(handler)
        logger.setLevel(level)


def test_configure_logging_twice_leaves_one_handler(example_logger: logging.Logger) -> None:
    first_stream, second_stream = io.StringIO(), io.StringIO()
    first = configure_logging(logging.DEBUG, stream=first_stream, logger=example_logger.name)
    second = configure_logging(logging.INFO, stream=second_stream, logger=example_logger.name)
    assert first is not second
    assert example_logger.handlers == [second]
    assert example_logger.level == logging.INFO
    example_logger.info("once", extra={"k": 1})
    assert first_stream.getvalue() == ""
    [line] = second_stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "once"
    assert json.loads(line)["k"] == 1


def test_configure_logging_defaults_to_the_root_logger() -> None:
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(stream=io.StringIO())
    try:
        assert handler in root.handlers
        assert isinstance(handler, logging.StreamHandler)
        assert any(isinstance(f, CorrelationIdFilter) for f in handler.filters)
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_configure_logging_text_format_has_the_correlation_id(example_logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, json=False, logger=example_logger.name)
    example_logger.info("outside")
    mediator = catga.Mediator()

    @mediator.handler
    async def ping(cmd: Ping) -> str:
        example_logger.info("inside")
        return "pong"

    message = Ping()
    await mediator.send(message)
    outside, inside = stream.getvalue().splitlines()
    assert outside.endswith(" INFO catga.test.configured [-] outside")
    assert inside.endswith(f" INFO catga.test.configured [{message.message_id}] inside")


# ------------------------------------------------------------------------------ docstring examples


def test_docstring_examples() -> None:
    module = importlib.import_module("catga.observability._logging")
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(module, module.__name__)
    for name in ("JsonFormatter", "CorrelationIdFilter", "configure_logging"):
        tests += finder.find(getattr(module, name), name, module=False, globs=vars(module))
    assert sum(len(test.examples) for test in tests) > 10
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
