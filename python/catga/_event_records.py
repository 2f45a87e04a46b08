"""How event stores keep events (issue 7): `StoredEvent`, and the encoding every backend shares.

An event is stored as its wire name, its schema number and its msgspec msgpack body, so a store
needs no Python class to hold it, and a reader decodes it with the class the wire-name registry
names. A type's schema number is its class attribute `__catga_schema__` (1 when absent); a payload
written under an older schema goes through the upcasters registered with `@catga.upcaster(wire
name, from_schema)`, one schema step at a time, before it is decoded. Whatever cannot be decoded is
a `SerializationError` naming the stream and the version.
"""

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import msgspec

from catga._errors import SerializationError
from catga._messages import Message, _lookup_wire_name, wire_name

__all__ = ["StoredEvent", "decode_event", "encode_event", "schema_of", "upcaster"]


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as an event store holds it.

    `version` is its place in its stream (1-based); `position` its place in the store's global log
    (1-based, increasing in append order across every stream); `type` its wire name; `event` the
    decoded event; `timestamp` when it was appended (timezone-aware UTC); `metadata` what the
    appender attached (correlation id, causation, user: plain values).
    """

    stream_id: str
    version: int
    position: int
    type: str
    event: Any
    timestamp: datetime
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (wire name, from schema) -> the function turning a payload of that schema into the next one.
_upcasters: Final[dict[tuple[str, int], Upcaster]] = {}

_encoder: Final = msgspec.msgpack.Encoder()
_raw_decoder: Final = msgspec.msgpack.Decoder(dict[str, Any])


def upcaster(wire: object, from_schema: object) -> Callable[[Upcaster], Upcaster]:
    """Register `function(payload) -> payload` turning schema `from_schema` of `wire` into the next.

    >>> @upcaster("docs.renamed", 1)
    ... def rename_total(payload):
    ...     payload["amount"] = payload.pop("total")
    ...     return payload
    """
    if not isinstance(wire, str) or not wire:
        raise TypeError(f"`wire` must be a wire name, got `{wire!r}`")
    if isinstance(from_schema, bool) or not isinstance(from_schema, int) or from_schema < 1:
        raise ValueError(f"`from_schema` must be an int of at least 1, got `{from_schema!r}`")
    name, schema = wire, from_schema

    def register(function: Upcaster) -> Upcaster:
        if not callable(function):
            raise TypeError(f"an upcaster must be callable, got `{function!r}`")
        _upcasters[(name, schema)] = function
        return function

    return register


def schema_of(event_type: type) -> int:
    schema = getattr(event_type, "__catga_schema__", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise TypeError(f"`{event_type.__qualname__}.__catga_schema__` must be an int >= 1, got `{schema!r}`")
    return schema


def encode_event(event: object) -> tuple[str, int, bytes]:
    """`(wire name, schema, body)` of an event to store; `SerializationError` before anything is
    written when it has no wire registration (not a `catga.Message`) or does not encode."""
    if not isinstance(event, Message):
        raise SerializationError(
            f"cannot store `{type(event).__qualname__}`: only `catga.Message` subclasses have a wire name",
            message_type=f"{type(event).__module__}.{type(event).__qualname__}",
        )
    wire = wire_name(type(event))
    try:
        body = _encoder.encode(event)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot encode event `{wire}`: {exc}", message_type=wire) from exc
    return wire, schema_of(type(event)), body


def decode_event(stream_id: str, version: int, wire: str, schema: int, body: bytes) -> Any:
    """The event stored as `(wire, schema, body)` at `stream_id`/`version`, upcast to the current
    schema; `SerializationError` naming the stream and version when that cannot be done."""
    where = f"event `{wire}` at version `{version}` of stream `{stream_id}`"
    try:
        cls = _lookup_wire_name(wire)
    except KeyError:
        raise SerializationError(
            f"cannot read {where}: no class has that wire name in this process", message_type=wire
        ) from None
    current = schema_of(cls)
    try:
        if schema == current:
            return msgspec.msgpack.decode(body, type=cls)
        if schema > current:
            raise SerializationError(
                f"cannot read {where}: it was written by schema `{schema}`, newer than this reader's `{current}`",
                message_type=wire,
            )
        payload = _raw_decoder.decode(body)
        for step in range(schema, current):
            function = _upcasters.get((wire, step))
            if function is None:
                raise SerializationError(
                    f"cannot read {where}: schema `{step}` needs an upcaster (`@catga.upcaster({wire!r}, {step})`)",
                    message_type=wire,
                )
            payload = function(payload)
        return msgspec.convert(payload, type=cls)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SerializationError(f"cannot read {where}: {exc}", message_type=wire) from exc
