"""Argument checks and record helpers shared by the remote event stores (`catga.redis`,
`catga.postgres`): what a caller may pass, and how metadata and timestamps are kept."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from catga._errors import SerializationError

__all__ = [
    "check_expected",
    "check_limit",
    "check_name",
    "check_position",
    "check_stream_id",
    "check_until",
    "check_version",
    "decode_metadata",
    "encode_metadata",
    "from_micros",
    "to_micros",
]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO: Final = timedelta(microseconds=1)
_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(dict[str, Any])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_stream_id(stream_id: object) -> str:
    if not isinstance(stream_id, str):
        raise TypeError(f"`stream_id` must be a str, got `{stream_id!r}`")
    if not stream_id:
        raise ValueError("`stream_id` must not be empty")
    return stream_id


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got `{name!r}`")
    if not name:
        raise ValueError("`name` must not be empty")
    return name


def check_expected(expected_version: object) -> int | None:
    if expected_version is None:
        return None
    if not _is_int(expected_version):
        raise TypeError(f"`expected_version` must be an int or None, got `{expected_version!r}`")
    assert isinstance(expected_version, int)
    if expected_version < 0:
        raise ValueError(f"`expected_version` must be >= 0 or None, got `{expected_version!r}`")
    return expected_version


def check_events(events: object) -> Sequence[object]:
    """The events of an `append`: a sequence (a string or bytes is not one)."""
    if isinstance(events, str | bytes) or not isinstance(events, Sequence):
        raise TypeError(f"`events` must be a sequence of events, got `{events!r}`")
    return events


def check_version(name: str, value: object, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not _is_int(value):
        raise TypeError(f"`{name}` must be an int{' or None' if optional else ''}, got `{value!r}`")
    assert isinstance(value, int)
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0, got `{value!r}`")
    return value


def check_position(value: object) -> int:
    if not _is_int(value):
        raise TypeError(f"`from_position` must be an int, got `{value!r}`")
    assert isinstance(value, int)
    if value < 0:
        raise ValueError(f"`from_position` must be >= 0, got `{value!r}`")
    return max(value, 1)


def check_limit(limit: object) -> int | None:
    if limit is not None and not _is_int(limit):
        raise TypeError(f"`limit` must be an int or None, got `{limit!r}`")
    if limit is not None and limit < 0:  # type: ignore[operator]
        raise ValueError(f"`limit` must be >= 0 or None, got `{limit!r}`")
    return limit  # type: ignore[return-value]


def check_until(until: object) -> datetime | None:
    """`until` as an aware datetime (a naive one is taken as UTC)."""
    if until is None:
        return None
    if not isinstance(until, datetime):
        raise TypeError(f"`until` must be a datetime or None, got `{until!r}`")
    return until if until.tzinfo is not None else until.replace(tzinfo=UTC)


def to_micros(when: datetime) -> int:
    """Microseconds since the UNIX epoch of an aware datetime."""
    return (when - EPOCH) // _MICRO


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def encode_metadata(metadata: object) -> bytes:
    """The msgpack of `metadata` (`b""` when empty or None); `SerializationError` when it does not
    encode (it must hold plain values)."""
    if metadata is None:
        return b""
    if not isinstance(metadata, dict):
        raise TypeError(f"`metadata` must be a dict or None, got `{metadata!r}`")
    if not metadata:
        return b""
    try:
        return _encoder.encode(metadata)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot encode the events' metadata: {exc}") from exc


def decode_metadata(stream_id: str, version: int, raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SerializationError(
            f"cannot read the metadata at version `{version}` of stream `{stream_id}`: {exc}"
        ) from exc
