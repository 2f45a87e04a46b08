"""Dead letters: the record of a message that finally failed, and `mediator.dead_letters`.

The DeadLetter behaviour (`catga.behaviors.DeadLetter`, API.md section 6) turns a message whose
handler failed for good (after Retry gave up; never a `ValidationError`) into a `DeadLetterRecord`
and adds it to a dead-letter store. `Mediator.dead_letters` (a `DeadLetters`) always exists: it
lists, shows, retries and deletes those records, whether or not the behaviour is on.
"""

import logging
import traceback as traceback_module
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import msgspec

from catga._core import new_id
from catga._errors import HandlerFailed, SerializationError
from catga._result import Result

__all__ = ["DeadLetterRecord", "DeadLetters"]

_logger = logging.getLogger("catga")
_encoder: Final = msgspec.msgpack.Encoder()


class DeadLetterRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A message that finally failed, as `mediator.dead_letters` keeps it.

    `id` is the record's own id (a snowflake, `catga.new_id()`); `message_type` the message's wire
    name; `message` the message object (when it could be decoded); `body` its msgpack encoding
    (`b""` when it cannot be encoded); `error_type` the exception's `module.QualName`;
    `error_message` its text; `traceback` the formatted traceback; `attempts` the handler attempts
    made, retries included; `first_failed_at` and `last_failed_at` timezone-aware UTC datetimes;
    `handler` the qualified name of the event handler that failed (`None` for a request).
    """

    id: int
    message_type: str
    message: Any = None
    body: bytes = b""
    error_type: str
    error_message: str
    traceback: str = ""
    attempts: int = 1
    first_failed_at: datetime
    last_failed_at: datetime
    handler: str | None = None


class _Store(Protocol):
    """The methods of `catga.stores.DeadLetterStore` that `DeadLetters` calls."""

    async def add(self, record: DeadLetterRecord, /) -> None: ...
    async def list(self, limit: int | None = 100, /) -> list[DeadLetterRecord]: ...
    async def get(self, id: int, /) -> DeadLetterRecord | None: ...
    async def update(self, record: DeadLetterRecord, /) -> None: ...
    async def delete(self, id: int, /) -> bool: ...
    async def purge(self) -> int: ...


# ------------------------------------------------------------------------------- making records


def _utcnow() -> datetime:
    return datetime.now(UTC)


def error_type_name(error: BaseException) -> str:
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def _format_traceback(error: BaseException) -> str:
    return "".join(traceback_module.format_exception(error))


def encode_body(message: object) -> bytes:
    """The message's msgpack encoding, or `b""` when msgspec cannot encode it."""
    try:
        return _encoder.encode(message)
    except Exception:
        return b""


def make_record(
    message: object,
    message_type: str,
    error: BaseException,
    attempts: int,
    first_failed_at: datetime | None,
    last_failed_at: datetime | None,
    handler: str | None,
) -> DeadLetterRecord:
    """A new record for `message`, which failed with `error` after `attempts` handler attempts
    (failure times `None`: now)."""
    now = last_failed_at or _utcnow()
    return DeadLetterRecord(
        id=new_id(),
        message_type=message_type,
        message=message,
        body=encode_body(message),
        error_type=error_type_name(error),
        error_message=str(error),
        traceback=_format_traceback(error),
        attempts=attempts,
        first_failed_at=first_failed_at or now,
        last_failed_at=now,
        handler=handler,
    )


def _failed_again(record: DeadLetterRecord, error: BaseException, attempts: int) -> DeadLetterRecord:
    return msgspec.structs.replace(
        record,
        error_type=error_type_name(error),
        error_message=str(error),
        traceback=_format_traceback(error),
        attempts=record.attempts + attempts,
        last_failed_at=_utcnow(),
    )


# ---------------------------------------------------------------------------------- redelivery


class Redelivery:
    """A `dead_letters.retry` in progress: its message passes the DeadLetter behaviour unrecorded,
    which notes here how it failed instead."""

    __slots__ = ("attempts", "error", "message")

    def __init__(self, message: object) -> None:
        self.message = message
        self.attempts = 0  # handler attempts made; 0 when the handler never ran
        self.error: BaseException | None = None


REDELIVERY: Final[ContextVar[Redelivery | None]] = ContextVar("catga_dead_letter_redelivery", default=None)
"""Set while `dead_letters.retry` re-sends a message; the DeadLetter behaviour matches it by identity
(so messages the handler sends in turn are dead-lettered as usual)."""


# ------------------------------------------------------------------------------- the public face

Resend = Callable[[DeadLetterRecord, object], Coroutine[Any, Any, Result[Any]]]
"""How a mediator re-sends a dead letter's message (past the DeadLetter behaviour)."""


class DeadLetters:
    """`mediator.dead_letters`: the messages that finally failed, in a dead-letter store.

    The store is the DeadLetter behaviour's (`DeadLetter(store=...)`), else an in-memory one that
    keeps the newest 1000 records. All methods are coroutines.
    """

    __slots__ = ("_resend", "_store")

    def __init__(self, store: Any, resend: Resend) -> None:
        self._store: _Store = store
        self._resend = resend

    @property
    def store(self) -> Any:
        """The dead-letter store the records are kept in."""
        return self._store

    async def list(self, limit: int | None = 100) -> list[DeadLetterRecord]:
        """Up to `limit` records (`None`: all), oldest first."""
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"`limit` must be an int >= 0 or `None`, got `{limit!r}`")
        return await self._store.list(limit)

    async def get(self, id: int) -> DeadLetterRecord | None:
        """The record with this id, or `None`."""
        return await self._store.get(id)

    async def delete(self, id: int) -> bool:
        """Drop a record; whether it existed."""
        return await self._store.delete(id)

    async def purge(self) -> int:
        """Drop every record; how many there were."""
        return await self._store.purge()

    async def count(self) -> int:
        """How many records the store holds."""
        count = getattr(self._store, "count", None)
        if count is not None:
            return int(await count())
        return len(await self._store.list(None))

    async def retry(self, id: int) -> Result[Any]:
        """Send the record's message again, past the DeadLetter behaviour, and return its `Result`.

        On success the record is removed; on failure it is kept, with the new error, `attempts`
        increased by the attempts made now, and `last_failed_at` updated. An event's record re-runs
        the one handler that failed. `KeyError` if there is no such record.
        """
        record = await self._store.get(id)
        if record is None:
            raise KeyError(f"no dead letter with id `{id}`")
        message = record.message
        if message is None:
            try:
                message = decode_body(record)
            except SerializationError as exc:
                return Result.failure(exc)
        redelivery = Redelivery(message)
        token = REDELIVERY.set(redelivery)
        try:
            result = await self._resend(record, message)
        finally:
            REDELIVERY.reset(token)
        if result.ok:
            await self._store.delete(id)
            return result
        error: BaseException | None = redelivery.error
        if error is None:  # failed before the handler ran (a hook, validation, no handler)
            assert result.error is not None
            failure = result.error
            error = failure.__cause__ if isinstance(failure, HandlerFailed) and failure.__cause__ else failure
        await self._store.update(_failed_again(record, error, redelivery.attempts))
        return result

    def __repr__(self) -> str:
        return f"<catga.DeadLetters in {self._store!r}>"


def decode_body(record: DeadLetterRecord) -> object:
    """Rebuild the message of a record from its body and wire name (`SerializationError` if not)."""
    from catga._messages import _lookup_wire_name

    try:
        cls = _lookup_wire_name(record.message_type)
    except KeyError:
        raise SerializationError(
            f"cannot decode dead letter `{record.id}`: no message class has the wire name `{record.message_type}`",
            message_type=record.message_type,
        ) from None
    if not record.body:
        raise SerializationError(
            f"cannot decode dead letter `{record.id}`: it has no body", message_type=record.message_type
        )
    try:
        return msgspec.msgpack.decode(record.body, type=cls)
    except (msgspec.DecodeError, TypeError) as exc:
        raise SerializationError(
            f"cannot decode dead letter `{record.id}` as `{record.message_type}`: {exc}",
            message_type=record.message_type,
        ) from exc
