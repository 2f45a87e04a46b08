"""How the Redis stores turn results into bytes and back (msgspec msgpack).

The in-memory stores keep the Python object itself; a shared store can only keep bytes, and must
hand back an equal value in any process. A value is one kind byte, then its encoding:

- `M`: a catga message (`catga.Message` subclass): `[wire name, msgpack body]`, decoded into the
  class registered under that wire name in the reading process;
- `T`: another class msgspec encodes as a whole (a `msgspec.Struct`, a dataclass, an attrs class):
  `["module:QualName", msgpack body]`, decoded into that class when its module is loaded (nothing
  is imported on behalf of data read from the server);
- `V`: a plain value (`None`, bools, numbers, strings, bytes, lists, dicts, datetimes, ...) as
  msgpack: it comes back equal, except that a tuple or set comes back as a list and an object
  nested in a container comes back as what msgspec decodes it to (a dict for a struct).

A value msgspec cannot encode raises `catga.SerializationError` naming its type.
"""

import dataclasses
import sys
from typing import Any, Final

import msgspec

from catga._errors import SerializationError
from catga._messages import Message, _lookup_wire_name, wire_name

__all__ = ["decode_value", "encode_value"]

_encode: Final = msgspec.msgpack.Encoder().encode
_decode_any: Final = msgspec.msgpack.Decoder().decode
_decode_pair: Final = msgspec.msgpack.Decoder(tuple[str, bytes]).decode

_MESSAGE: Final = b"M"
_TYPED: Final = b"T"
_PLAIN: Final = b"V"


def encode_value(value: Any) -> bytes:
    """The bytes a Redis store keeps for `value`.

    >>> decode_value(encode_value({"order": "o-1", "items": [1, 2]}))
    {'order': 'o-1', 'items': [1, 2]}
    """
    cls = type(value)
    try:
        if isinstance(value, Message):
            return _MESSAGE + _encode((wire_name(cls), _encode(value)))
        if isinstance(value, msgspec.Struct) or dataclasses.is_dataclass(value) or hasattr(cls, "__attrs_attrs__"):
            return _TYPED + _encode((_class_path(cls), _encode(value)))
        return _PLAIN + _encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"cannot encode a `{cls.__module__}.{cls.__qualname__}` for Redis: {exc}", value_type=cls.__qualname__
        ) from exc


def decode_value(data: bytes) -> Any:
    """The value `encode_value` made `data` from (`SerializationError` when it cannot be rebuilt)."""
    kind, body = data[:1], data[1:]
    try:
        if kind == _PLAIN:
            return _decode_any(body)
        if kind == _MESSAGE:
            name, encoded = _decode_pair(body)
            try:
                cls = _lookup_wire_name(name)
            except KeyError:
                raise SerializationError(
                    f"cannot decode a stored result: no message class has the wire name `{name}` in this process",
                    message_type=name,
                ) from None
            return msgspec.msgpack.decode(encoded, type=cls)
        if kind == _TYPED:
            path, encoded = _decode_pair(body)
            return msgspec.msgpack.decode(encoded, type=_loaded_class(path))
    except msgspec.DecodeError as exc:
        raise SerializationError(f"cannot decode a stored result: {exc}") from exc
    raise SerializationError(f"cannot decode a stored result: unknown kind byte `{kind!r}`")


def _class_path(cls: type) -> str:
    """`module:QualName`, checked to lead back to `cls` (a class made in a function cannot be found
    again by name, so it is refused at once rather than stored unreadable)."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    if _find_class(cls.__module__, cls.__qualname__) is not cls:
        raise TypeError(f"the class `{path}` cannot be found by its name (define it at module level)")
    return path


def _loaded_class(path: str) -> type:
    module, _, qualname = path.partition(":")
    cls = _find_class(module, qualname)
    if cls is None:
        raise SerializationError(f"cannot decode a stored result: the class `{path}` is not loaded in this process")
    return cls


def _find_class(module: str, qualname: str) -> type | None:
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found if isinstance(found, type) else None
