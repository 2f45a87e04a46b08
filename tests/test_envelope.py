"""EnvelopeCodec: messages and replies to envelopes and back, and every way that can fail."""

from typing import Any

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import catga
from catga.transports import Envelope, EnvelopeCodec


class Line(msgspec.Struct):
    sku: str
    qty: int


class Address(msgspec.Struct):
    city: str
    lines: list[Line]


class PlaceOrder(catga.Command[str], tag="test.envelope.place"):
    customer: str
    address: Address
    tags: dict[str, int] = msgspec.field(default_factory=dict)


class OrderPlaced(catga.Event):
    order_id: str


def _order() -> PlaceOrder:
    return PlaceOrder("ada", Address("Paris", [Line("a", 1), Line("b", 2)]), tags={"x": 1})


@pytest.mark.parametrize(
    ("serializer", "content_type"), [("msgpack", "application/msgpack"), ("json", "application/json")]
)
def test_round_trip_with_nested_structs(serializer: Any, content_type: str) -> None:
    codec = EnvelopeCodec(serializer)
    message = _order()
    envelope = codec.encode(message)
    assert envelope.headers == {
        "catga-message-id": str(message.message_id),
        "catga-correlation-id": str(message.message_id),  # top level: effective = its own id
        "catga-type": "test.envelope.place",
        "content-type": content_type,
    }
    decoded = codec.decode(envelope)
    assert type(decoded) is PlaceOrder
    assert decoded == message
    assert decoded.address.lines[1] == Line("b", 2)


def test_correlation_id_and_default_wire_name() -> None:
    codec = EnvelopeCodec()
    event = OrderPlaced("o-1", message_id=5, correlation_id=42)
    envelope = codec.encode(event)
    assert envelope.headers["catga-message-id"] == "5"
    assert envelope.headers["catga-correlation-id"] == "42"
    assert envelope.headers["catga-type"] == catga.wire_name(OrderPlaced) == f"{__name__}.OrderPlaced"
    decoded = codec.decode(envelope)
    assert (decoded.message_id, decoded.correlation_id) == (5, 42)


def test_either_codec_decodes_either_content_type() -> None:
    message = _order()
    assert EnvelopeCodec("msgpack").decode(EnvelopeCodec("json").encode(message)) == message
    assert EnvelopeCodec("json").decode(EnvelopeCodec("msgpack").encode(message)) == message


def test_traceparent_of_the_current_span() -> None:
    provider = TracerProvider()  # passed explicitly: the global provider stays untouched
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("send") as span:
        envelope = EnvelopeCodec().encode(_order())
    context = span.get_span_context()
    assert (
        envelope.headers["traceparent"]
        == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert "tracestate" not in envelope.headers
    provider.shutdown()


def test_tracestate_rides_along() -> None:
    provider = TracerProvider()
    parent = trace.SpanContext(
        0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(1), trace_state=trace.TraceState([("vendor", "v1")])
    )
    with provider.get_tracer("test").start_as_current_span(
        "send", context=trace.set_span_in_context(trace.NonRecordingSpan(parent))
    ):
        envelope = EnvelopeCodec().encode(_order())
    assert envelope.headers["traceparent"].startswith(f"00-{0xABC:032x}-")
    assert envelope.headers["tracestate"] == "vendor=v1"
    provider.shutdown()


def test_no_trace_headers_without_a_span() -> None:
    assert "traceparent" not in EnvelopeCodec().encode(_order()).headers


# ------------------------------------------------------------------------------------- errors


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`'xml'`"):
        EnvelopeCodec("xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`max_size`.*`0`"):
        EnvelopeCodec(max_size=0)


def test_plain_object_cannot_be_encoded() -> None:
    class Plain:
        pass

    with pytest.raises(
        catga.SerializationError, match=r"`test_plain_object_cannot_be_encoded.<locals>.Plain` object.*no wire name"
    ):
        EnvelopeCodec().encode(Plain())


def test_unencodable_field_value() -> None:
    class Holder(catga.Command[None]):
        value: Any

    with pytest.raises(catga.SerializationError, match=r"cannot encode message `.*Holder`") as info:
        EnvelopeCodec().encode(Holder(object()))
    assert isinstance(info.value.__cause__, TypeError)


def test_unknown_wire_name() -> None:
    envelope = EnvelopeCodec().encode(_order())
    envelope.headers["catga-type"] = "nobody.has.this"
    with pytest.raises(catga.SerializationError, match=r"unknown wire name `nobody.has.this`") as info:
        EnvelopeCodec().decode(envelope)
    assert info.value.details == {"wire_name": "nobody.has.this"}


def test_missing_type_header() -> None:
    with pytest.raises(catga.SerializationError, match=r"no `catga-type` header.*`\['content-type'\]`"):
        EnvelopeCodec().decode(Envelope({"content-type": "application/json"}, b"{}"))


def test_unknown_content_type() -> None:
    envelope = EnvelopeCodec().encode(_order())
    envelope.headers["content-type"] = "text/xml"
    with pytest.raises(catga.SerializationError, match="unknown content type `text/xml`"):
        EnvelopeCodec().decode(envelope)


def test_content_type_parameters_are_ignored_and_a_missing_one_means_ours() -> None:
    envelope = EnvelopeCodec("json").encode(_order())
    envelope.headers["content-type"] = "application/json; charset=utf-8"
    assert EnvelopeCodec().decode(envelope) == envelope_message(envelope)
    del envelope.headers["content-type"]
    decoded = EnvelopeCodec("json").decode(envelope)
    assert isinstance(decoded, PlaceOrder)
    assert decoded.customer == "ada"


def envelope_message(envelope: Envelope) -> catga.Message:
    return EnvelopeCodec("json").decode(
        Envelope({**envelope.headers, "content-type": "application/json"}, envelope.body)
    )


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_body_that_does_not_decode(serializer: Any) -> None:
    envelope = EnvelopeCodec(serializer).encode(_order())
    broken = Envelope(envelope.headers, b"\xc1garbage")
    with pytest.raises(catga.SerializationError, match=r"cannot decode message `test.envelope.place`.*garbage") as info:
        EnvelopeCodec().decode(broken)
    assert isinstance(info.value.__cause__, msgspec.DecodeError)


def test_body_of_the_wrong_shape() -> None:
    codec = EnvelopeCodec("json")
    headers = codec.encode(_order()).headers
    body = b'{"$type":"test.envelope.place","customer":3,"address":{"city":"P","lines":[]}}'
    with pytest.raises(catga.SerializationError, match=r"Expected `str`, got `int` - at `\$.customer`") as info:
        codec.decode(Envelope(headers, body))
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


def test_body_of_another_type_than_the_header_says() -> None:
    codec = EnvelopeCodec()
    envelope = codec.encode(OrderPlaced("o-1"))
    envelope.headers["catga-type"] = "test.envelope.place"
    with pytest.raises(catga.SerializationError, match=r"cannot decode message `test.envelope.place`"):
        codec.decode(envelope)


def test_large_bodies_are_refused_both_ways() -> None:
    codec = EnvelopeCodec()
    big = PlaceOrder("x" * 10_000_000, Address("P", []))
    with pytest.raises(catga.SerializationError, match=r"too large: `10000\d{3}` bytes.*`max_size=1048576`"):
        codec.encode(big)
    envelope = EnvelopeCodec(max_size=20_000_000).encode(big)
    with pytest.raises(catga.SerializationError, match=r"message `test.envelope.place` is too large") as info:
        codec.decode(envelope)
    assert info.value.__cause__ is None  # refused before any decoding
    assert info.value.details["max_size"] == 1_048_576


# -------------------------------------------------------------------------------------- replies


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_reply_values(serializer: Any) -> None:
    codec = EnvelopeCodec(serializer)
    assert codec.decode_reply(codec.encode_reply("o-1")) == "o-1"
    assert codec.decode_reply(codec.encode_reply()) is None
    assert codec.decode_reply(codec.encode_reply({"a": [1, 2]})) == {"a": [1, 2]}
    # A struct arrives as plain values, or as the struct when the caller names the type.
    reply = codec.encode_reply(Line("a", 1))
    assert codec.decode_reply(reply) == {"sku": "a", "qty": 1}
    assert codec.decode_reply(reply, Line) == Line("a", 1)
    assert codec.decode_reply(reply, list[int] | Line) == Line("a", 1)
    assert codec.encode_reply("x").headers == {
        "content-type": codec.encode(_order()).headers["content-type"],
        "catga-reply": "ok",
    }


def test_reply_value_that_cannot_be_encoded_or_decoded() -> None:
    codec = EnvelopeCodec()
    with pytest.raises(catga.SerializationError, match="reply value of type `object`"):
        codec.encode_reply(object())
    with pytest.raises(catga.SerializationError, match="cannot decode reply value"):
        codec.decode_reply(codec.encode_reply("text"), int)
    with pytest.raises(catga.SerializationError, match="header `catga-reply` is `None`"):
        codec.decode_reply(codec.encode(_order()))
    with pytest.raises(ValueError, match="got both: `1`"):
        codec.encode_reply(1, error=catga.Timeout("late"))


def _round_trip(error: BaseException, serializer: Any = "msgpack") -> catga.CatgaError:
    codec = EnvelopeCodec(serializer)
    envelope = codec.encode_reply(error=error)
    assert envelope.headers["catga-reply"] == "error"
    with pytest.raises(catga.CatgaError) as info:
        codec.decode_reply(envelope)
    return info.value


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_error_replies_keep_class_and_fields(serializer: Any) -> None:
    err = _round_trip(catga.ValidationError(["`amount` must be positive"], order="o-1"), serializer)
    assert type(err) is catga.ValidationError
    assert (err.errors, err.details, err.retryable) == (["`amount` must be positive"], {"order": "o-1"}, False)
    assert str(err) == "validation failed: `amount` must be positive"

    err = _round_trip(catga.RateLimited(0.25), serializer)
    assert isinstance(err, catga.RateLimited)
    assert (err.retry_after, err.retryable, str(err)) == (0.25, True, "rate limit exceeded, retry after `0.25` s")

    err = _round_trip(catga.CircuitOpen(30.0, "circuit of `X` is open"), serializer)
    assert isinstance(err, catga.CircuitOpen)
    assert (type(err), err.retry_after, str(err)) == (catga.CircuitOpen, 30.0, "circuit of `X` is open")

    err = _round_trip(catga.ConcurrencyConflict("order-1", None, 4), serializer)
    assert type(err) is catga.ConcurrencyConflict
    assert (err.stream_id, err.expected, err.actual) == ("order-1", None, 4)

    err = _round_trip(catga.Timeout("slow", seconds=2.0), serializer)
    assert type(err) is catga.Timeout
    assert isinstance(err, TimeoutError)
    assert (err.retryable, err.details) == (True, {"seconds": 2.0})


@pytest.mark.parametrize(
    "error",
    [
        catga.HandlerNotFound("no handler for `X`"),
        catga.DuplicateHandler("twice"),
        catga.ConcurrencyLimited("busy"),
        catga.Conflict("dup", message_id=3),
        catga.TransportError("down"),
        catga.SerializationError("bad"),
        catga.PersistenceError("db"),
        catga.SagaFailed("saga"),
        catga.CatgaError("plain", k=[1, 2]),
    ],
)
def test_every_error_class_round_trips(error: catga.CatgaError) -> None:
    err = _round_trip(error)
    assert type(err) is type(error)
    assert (err.code, err.message, err.retryable, err.details) == (
        error.code,
        error.message,
        error.retryable,
        error.details,
    )


def test_publish_error_keeps_its_exceptions() -> None:
    err = _round_trip(catga.PublishError("`2` handlers failed", [catga.Timeout("t"), ValueError("v")]))
    assert isinstance(err, catga.PublishError)
    assert [type(exc) for exc in err.exceptions] == [catga.Timeout, catga.HandlerFailed]


def test_foreign_exception_arrives_as_handler_failed_naming_its_type() -> None:
    err = _round_trip(KeyError("o-1"))
    assert type(err) is catga.HandlerFailed
    assert str(err) == "handler raised `builtins.KeyError`: 'o-1'"
    assert err.details == {"error_type": "builtins.KeyError"}

    wrapped = catga.HandlerFailed("handler of `X` failed")
    wrapped.__cause__ = ValueError("boom")
    err = _round_trip(wrapped)
    assert (type(err), err.message, err.details) == (
        catga.HandlerFailed,
        "handler of `X` failed",
        {"error_type": "builtins.ValueError"},
    )


def test_retryable_override_and_unknown_details_survive() -> None:
    error = catga.TransportError("down", thing=object())
    error.retryable = False
    err = _round_trip(error)
    assert err.retryable is False
    assert err.details["thing"].startswith("<object object at")  # unencodable: its repr


def test_cancelled_code_without_a_class() -> None:
    error = catga.CatgaError("gone")
    error.code = catga.ErrorCode.CANCELLED
    err = _round_trip(error)
    assert (type(err), err.code) == (catga.CatgaError, catga.ErrorCode.CANCELLED)


def test_malformed_error_reply() -> None:
    codec = EnvelopeCodec("json")
    envelope = Envelope({"content-type": "application/json", "catga-reply": "error"}, b'{"code":"timeout"}')
    with pytest.raises(catga.SerializationError, match=r"cannot decode error reply.*missing required field"):
        codec.decode_reply(envelope)
