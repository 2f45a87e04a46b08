"""The envelope: a message (or a reply) as headers plus bytes, and the codec that makes it.

A transport moves `Envelope`s and knows nothing about messages; `EnvelopeCodec` turns a
`catga.Message` into one and back (API.md section 7). The body is the msgspec encoding of the
message struct (msgpack by default, JSON on request); the headers say what it is without decoding
it: message id, effective correlation id, wire name, content type and the W3C trace context.

>>> import catga
>>> class Ping(catga.Command[str], tag="doc.ping"):
...     text: str
>>> codec = EnvelopeCodec("json")
>>> envelope = codec.encode(Ping("hi", message_id=7))
>>> envelope.headers["catga-type"], envelope.headers["catga-correlation-id"], envelope.body
('doc.ping', '7', b'{"$type":"doc.ping","text":"hi","message_id":7,"correlation_id":null}')
>>> codec.decode(envelope) == Ping("hi", message_id=7)
True
"""

import functools
from typing import Any, Final, Literal, TypeAlias

import msgspec

from catga._errors import (
    CatgaError,
    CircuitOpen,
    ConcurrencyConflict,
    ConcurrencyLimited,
    Conflict,
    DuplicateHandler,
    ErrorCode,
    HandlerFailed,
    HandlerNotFound,
    PersistenceError,
    PublishError,
    RateLimited,
    SagaFailed,
    SerializationError,
    Timeout,
    TransportError,
    ValidationError,
)
from catga._messages import Message, _lookup_wire_name, wire_name
from catga.observability._propagation import inject

__all__ = [
    "CONTENT_TYPE_HEADER",
    "CORRELATION_ID_HEADER",
    "MESSAGE_ID_HEADER",
    "REPLY_HEADER",
    "TYPE_HEADER",
    "Envelope",
    "EnvelopeCodec",
    "Serializer",
]

MESSAGE_ID_HEADER: Final = "catga-message-id"
CORRELATION_ID_HEADER: Final = "catga-correlation-id"
TYPE_HEADER: Final = "catga-type"
CONTENT_TYPE_HEADER: Final = "content-type"
REPLY_HEADER: Final = "catga-reply"
DELIVERY_HEADER: Final = "catga-delivery"
"""The 1-based delivery count of an envelope, added by the transport before the handler runs."""
FINAL_DELIVERY_HEADER: Final = "catga-final-delivery"
"""`"1"` when the transport will not deliver this envelope again (its handler dead-letters it if it fails)."""
"""On a reply: `ok` (the body is the value) or `error` (the body is the error's fields)."""

Serializer: TypeAlias = Literal["msgpack", "json"]

_CONTENT_TYPES: Final[dict[str, Serializer]] = {
    "application/msgpack": "msgpack",
    "application/json": "json",
}
_CONTENT_TYPE_OF: Final[dict[Serializer, str]] = {v: k for k, v in _CONTENT_TYPES.items()}

_ENCODERS: Final[dict[Serializer, msgspec.msgpack.Encoder | msgspec.json.Encoder]] = {
    "msgpack": msgspec.msgpack.Encoder(),
    "json": msgspec.json.Encoder(),
}


def _repr_hook(value: object) -> str:
    return repr(value)


# Error details are free-form (`CatgaError("...", order=some_object)`): a value msgspec cannot
# encode travels as its repr rather than turning the error reply itself into a failure.
_LENIENT_ENCODERS: Final[dict[Serializer, msgspec.msgpack.Encoder | msgspec.json.Encoder]] = {
    "msgpack": msgspec.msgpack.Encoder(enc_hook=_repr_hook),
    "json": msgspec.json.Encoder(enc_hook=_repr_hook),
}


# Bounded, so that classes defined and dropped at run time (in tests, say) are not pinned forever;
# a service has far fewer message types than this.
@functools.lru_cache(maxsize=1024)
def _decoder(type_: Any, serializer: Serializer) -> msgspec.msgpack.Decoder[Any] | msgspec.json.Decoder[Any]:
    if serializer == "msgpack":
        return msgspec.msgpack.Decoder(type_)
    return msgspec.json.Decoder(type_)


class Envelope(msgspec.Struct, frozen=True):
    """What a transport carries: string `headers` and an opaque `body`.

    >>> Envelope({"content-type": "application/json"}, b"1").body
    b'1'
    """

    headers: dict[str, str]
    body: bytes


class _WireError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A `CatgaError` in a reply: its code, message, retryable flag and data fields (API.md §7)."""

    code: str
    message: str
    retryable: bool
    # module.QualName of the exception the handler raised (of the cause, for a `HandlerFailed`).
    type: str
    errors: list[str] | None = None
    retry_after: float | None = None
    stream_id: str | None = None
    expected: int | None = None
    actual: int | None = None
    details: dict[str, Any] = {}
    exceptions: list["_WireError"] | None = None


# Several classes share a code (`HandlerFailed`, `PublishError` and `SagaFailed` are all
# `handler_failed`): the class name on the wire picks among them, the code decides otherwise.
_ERROR_CLASSES: Final[dict[str, type[CatgaError]]] = {
    cls.__name__: cls
    for cls in (
        CatgaError,
        CircuitOpen,
        ConcurrencyConflict,
        ConcurrencyLimited,
        Conflict,
        DuplicateHandler,
        HandlerFailed,
        HandlerNotFound,
        PersistenceError,
        PublishError,
        RateLimited,
        SagaFailed,
        SerializationError,
        Timeout,
        TransportError,
        ValidationError,
    )
}
_CLASS_OF_CODE: Final[dict[str, type[CatgaError]]] = {
    ErrorCode.VALIDATION_FAILED: ValidationError,
    ErrorCode.HANDLER_NOT_FOUND: HandlerNotFound,
    ErrorCode.HANDLER_FAILED: HandlerFailed,
    ErrorCode.TIMEOUT: Timeout,
    ErrorCode.RATE_LIMITED: RateLimited,
    ErrorCode.CONCURRENCY_LIMITED: ConcurrencyLimited,
    ErrorCode.CIRCUIT_OPEN: CircuitOpen,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.CONCURRENCY_CONFLICT: ConcurrencyConflict,
    ErrorCode.TRANSPORT_FAILED: TransportError,
    ErrorCode.SERIALIZATION_FAILED: SerializationError,
    ErrorCode.PERSISTENCE_FAILED: PersistenceError,
}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _to_wire(error: BaseException) -> _WireError:
    if not isinstance(error, CatgaError):
        name = _qualified(type(error))
        return _WireError(
            code=ErrorCode.HANDLER_FAILED,
            message=f"handler raised `{name}`: {error}",
            retryable=False,
            type=name,
        )
    cause = error.__cause__
    if isinstance(error, HandlerFailed) and cause is not None and not isinstance(cause, CatgaError):
        origin = _qualified(type(cause))  # what the handler raised, not catga's wrapper
    else:
        origin = _qualified(type(error))
    wire = _WireError(
        code=str(error.code),
        message=error.message,
        retryable=error.retryable,
        type=origin,
        details=error.details,
    )
    if isinstance(error, ValidationError):
        wire.errors = error.errors
    elif isinstance(error, RateLimited | CircuitOpen):
        wire.retry_after = error.retry_after
    elif isinstance(error, ConcurrencyConflict):
        wire.stream_id, wire.expected, wire.actual = error.stream_id, error.expected, error.actual
    elif isinstance(error, PublishError):
        wire.exceptions = [_to_wire(exc) for exc in error.exceptions]
    return wire


def _from_wire(wire: _WireError) -> CatgaError:
    module, _, name = wire.type.rpartition(".")
    cls = _ERROR_CLASSES.get(name) if module == "catga._errors" or module == "catga" else None
    if cls is None or str(cls.code) != wire.code:
        cls = _CLASS_OF_CODE.get(wire.code, CatgaError)
    details = dict(wire.details)
    error: CatgaError
    if cls is ValidationError:
        error = ValidationError(wire.errors or [], wire.message, **details)
    elif cls is RateLimited or cls is CircuitOpen:
        error = cls(wire.retry_after or 0.0, wire.message, **details)
    elif cls is ConcurrencyConflict:
        error = ConcurrencyConflict(wire.stream_id or "", wire.expected, wire.actual, wire.message, **details)
    elif cls is PublishError:
        inner = [_from_wire(exc) for exc in wire.exceptions or ()]
        # An `ExceptionGroup` needs at least one exception; a group that arrives without any is
        # told apart by its code alone.
        error = PublishError(wire.message, inner, **details) if inner else HandlerFailed(wire.message, **details)
    else:
        if cls is HandlerFailed and not wire.type.startswith("catga."):
            details.setdefault("error_type", wire.type)
        error = cls(wire.message, **details)
    # A code without a class of its own (`cancelled`, a newer peer's) and a retryable flag the
    # sender overrode are kept as the sender reported them.
    if str(error.code) != wire.code:
        try:
            error.code = ErrorCode(wire.code)
        except ValueError:
            error.details.setdefault("remote_code", wire.code)
    if error.retryable != wire.retryable:
        error.retryable = wire.retryable
    return error


class EnvelopeCodec:
    """Encodes messages and replies into `Envelope`s and decodes them back (API.md section 7).

    `serializer` is the body format of what this codec encodes (`"msgpack"` or `"json"`); it
    decodes either, by the envelope's `content-type`. Bodies larger than `max_size` bytes are
    refused both ways (checked before decoding), with `catga.SerializationError` like every other
    failure here. Decoding finds the class by the `catga-type` header in the wire-name registry
    (`catga.wire_name`), so the module that defines a message must be imported to receive it.

    >>> import catga
    >>> class Add(catga.Query[int], tag="doc.add"):
    ...     a: int
    ...     b: int
    >>> codec = EnvelopeCodec()
    >>> envelope = codec.encode(Add(1, 2))
    >>> envelope.headers["content-type"]
    'application/msgpack'
    >>> decoded = codec.decode(envelope)
    >>> decoded.a + decoded.b
    3
    >>> codec.decode_reply(codec.encode_reply(3))
    3
    >>> codec.decode_reply(codec.encode_reply(error=catga.RateLimited(0.5)))
    Traceback (most recent call last):
    ...
    catga.RateLimited: rate limit exceeded, retry after `0.5` s
    """

    __slots__ = ("_content_type", "_encoder", "_lenient", "max_size", "serializer")

    serializer: Serializer
    max_size: int

    def __init__(self, serializer: Serializer = "msgpack", *, max_size: int = 1_048_576) -> None:
        if serializer not in _CONTENT_TYPE_OF:
            raise ValueError(f"unknown serializer `{serializer!r}`: use `'msgpack'` or `'json'`")
        if max_size <= 0:
            raise ValueError(f"`max_size` must be a positive int, got `{max_size!r}`")
        self.serializer = serializer
        self.max_size = max_size
        self._content_type = _CONTENT_TYPE_OF[serializer]
        self._encoder = _ENCODERS[serializer]
        self._lenient = _LENIENT_ENCODERS[serializer]

    def __repr__(self) -> str:
        return f"EnvelopeCodec({self.serializer!r}, max_size={self.max_size})"

    # ------------------------------------------------------------------------------- messages

    def encode(self, message: object) -> Envelope:
        """The envelope of `message`, with the trace context of the current span (if any)."""
        if not isinstance(message, Message):
            raise SerializationError(
                f"cannot encode `{type(message).__qualname__}` object: only `catga.Message` subclasses "
                "can travel over a transport (plain objects have no wire name and no ids)",
                message_type=_qualified(type(message)),
            )
        name = wire_name(type(message))
        body = self._encode_body(message, f"message `{name}`")
        self._check_size(len(body), f"message `{name}`")
        headers = {
            MESSAGE_ID_HEADER: str(message.message_id),
            CORRELATION_ID_HEADER: str(message.correlation_id or message.message_id),
            TYPE_HEADER: name,
            CONTENT_TYPE_HEADER: self._content_type,
        }
        inject(headers)
        return Envelope(headers, body)

    def decode(self, envelope: Envelope) -> Message:
        """The message in `envelope`, as an instance of the class its `catga-type` names."""
        name = envelope.headers.get(TYPE_HEADER)
        if name is None:
            raise SerializationError(
                f"envelope has no `{TYPE_HEADER}` header: cannot tell which message it holds "
                f"(headers: `{sorted(envelope.headers)}`)"
            )
        self._check_size(len(envelope.body), f"message `{name}`")
        serializer = self._serializer_of(envelope, f"message `{name}`")
        try:
            cls = _lookup_wire_name(name)
        except KeyError:
            raise SerializationError(
                f"unknown wire name `{name}`: no message class is registered under it in this process "
                "(is the module that defines it imported?)",
                wire_name=name,
            ) from None
        message: Message = self._decode_body(envelope.body, cls, serializer, f"message `{name}`")
        return message

    # -------------------------------------------------------------------------------- replies

    def encode_reply(self, value: object = None, error: BaseException | None = None) -> Envelope:
        """The reply to a request: its result `value`, or the `error` it failed with.

        A `CatgaError` keeps its class, code, message, retryable flag and data fields; any other
        exception travels as `HandlerFailed` naming its type. `decode_reply` undoes this.
        """
        headers = {CONTENT_TYPE_HEADER: self._content_type}
        if error is not None:
            if value is not None:
                raise ValueError(f"a reply carries a value or an error, got both: `{value!r}` and `{error!r}`")
            headers[REPLY_HEADER] = "error"
            # The lenient encoder cannot fail on a detail value; the error's own fields are plain.
            body = self._lenient.encode(_to_wire(error))
            subject = f"error reply `{type(error).__qualname__}`"
        else:
            headers[REPLY_HEADER] = "ok"
            subject = f"reply value of type `{type(value).__qualname__}`"
            body = self._encode_body(value, subject)
        self._check_size(len(body), subject)
        return Envelope(headers, body)

    def decode_reply(self, envelope: Envelope, type: Any = Any) -> Any:
        """The value a reply carries, decoded as `type` (default: plain msgspec values), or raises
        the error it carries as the same `CatgaError` subclass with its data fields."""
        status = envelope.headers.get(REPLY_HEADER)
        if status not in ("ok", "error"):
            raise SerializationError(
                f"envelope is not a reply: header `{REPLY_HEADER}` is `{status}`, expected `ok` or `error`"
            )
        subject = "error reply" if status == "error" else "reply value"
        self._check_size(len(envelope.body), subject)
        serializer = self._serializer_of(envelope, subject)
        if status == "ok":
            return self._decode_body(envelope.body, type, serializer, subject)
        wire: _WireError = self._decode_body(envelope.body, _WireError, serializer, subject)
        raise _from_wire(wire)

    # -------------------------------------------------------------------------------- helpers

    def _encode_body(self, value: object, subject: str) -> bytes:
        try:
            return self._encoder.encode(value)
        except (TypeError, ValueError, OverflowError) as exc:  # msgspec.EncodeError is a ValueError
            raise SerializationError(f"cannot encode {subject} as {self.serializer}: {exc}") from exc

    def _decode_body(self, body: bytes, type_: Any, serializer: Serializer, subject: str) -> Any:
        try:
            decoder = _decoder(type_, serializer)
        except TypeError:  # an unhashable type annotation: no cache, still decodable
            decoder = _decoder.__wrapped__(type_, serializer)
        try:
            return decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            preview = bytes(body[:64])
            raise SerializationError(
                f"cannot decode {subject} from {serializer} body `{preview!r}`{'...' if len(body) > 64 else ''}: {exc}",
            ) from exc

    def _serializer_of(self, envelope: Envelope, subject: str) -> Serializer:
        content_type = envelope.headers.get(CONTENT_TYPE_HEADER)
        if content_type is None:
            return self.serializer  # a sender that does not say: assume it speaks like us
        serializer = _CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())
        if serializer is None:
            raise SerializationError(
                f"unknown content type `{content_type}` of {subject}: expected one of `{', '.join(_CONTENT_TYPES)}`",
                content_type=content_type,
            )
        return serializer

    def _check_size(self, size: int, subject: str) -> None:
        if size > self.max_size:
            raise SerializationError(
                f"{subject} is too large: `{size}` bytes, more than `max_size={self.max_size}`",
                size=size,
                max_size=self.max_size,
            )
