"""The error hierarchy of catga: every failure catga produces is a `CatgaError` subclass.

All classes live in this one module, so the native core, the transports (which rebuild a remote
error from its code and data fields) and users have one place to look. This module imports nothing
from the rest of catga: the cores import it lazily, on their failure paths.

Messages follow one style: what failed, the offending value in backticks, no trailing period.
"""

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final, Self

__all__ = [
    "CatgaError",
    "CircuitOpen",
    "ConcurrencyConflict",
    "ConcurrencyLimited",
    "Conflict",
    "DuplicateHandler",
    "ErrorCode",
    "HandlerFailed",
    "HandlerNotFound",
    "PersistenceError",
    "PublishError",
    "RateLimited",
    "SagaFailed",
    "SerializationError",
    "Timeout",
    "TransportError",
    "ValidationError",
]


class ErrorCode(StrEnum):
    """The machine-readable kind of a failure: `CatgaError.code` and `Result.code`.

    A `str` enum whose values are the lower-case names (`ErrorCode.TIMEOUT == "timeout"`), so codes
    read well in logs, JSON and replies that cross a transport.

    >>> ErrorCode.HANDLER_NOT_FOUND
    <ErrorCode.HANDLER_NOT_FOUND: 'handler_not_found'>
    >>> ErrorCode("timeout") is ErrorCode.TIMEOUT
    True
    """

    VALIDATION_FAILED = "validation_failed"
    HANDLER_NOT_FOUND = "handler_not_found"
    HANDLER_FAILED = "handler_failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    RATE_LIMITED = "rate_limited"
    CONCURRENCY_LIMITED = "concurrency_limited"
    CIRCUIT_OPEN = "circuit_open"
    CONFLICT = "conflict"
    CONCURRENCY_CONFLICT = "concurrency_conflict"
    TRANSPORT_FAILED = "transport_failed"
    SERIALIZATION_FAILED = "serialization_failed"
    PERSISTENCE_FAILED = "persistence_failed"
    INTERNAL = "internal"


def _rebuild(cls: type["CatgaError"], args: tuple[Any, ...], details: dict[str, Any]) -> "CatgaError":
    """Unpickle an error: call the constructor again (see `CatgaError.__reduce__`)."""
    return cls(*args, **details)


class CatgaError(Exception):
    """The base of every error catga raises or returns in a `Result`.

    `code` says what kind of failure it is, `retryable` whether trying again later may succeed
    (the Retry behaviour and remote callers use it), `details` carries extra context as keyword
    arguments. Errors pickle with all of that, so they survive a trip through a transport.

    >>> err = CatgaError("order `o-1` is locked", order_id="o-1")
    >>> err.code, err.retryable, err.details
    (<ErrorCode.INTERNAL: 'internal'>, False, {'order_id': 'o-1'})
    >>> str(err)
    'order `o-1` is locked'
    """

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False
    message: str
    details: dict[str, Any]

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def _args(self) -> tuple[Any, ...]:
        """The positional constructor arguments that rebuild this error (with `details`)."""
        return (self.message,)

    def __reduce__(self) -> tuple[Any, ...]:
        # `BaseException.__reduce__` would call `cls(*self.args)`, which loses `details` and breaks
        # every subclass whose constructor takes data fields. The instance `__dict__` rides along as
        # state, so attributes set after construction (`__notes__`, say) survive too.
        state = {k: v for k, v in self.__dict__.items() if k not in ("message", "details")}
        return (_rebuild, (type(self), self._args(), self.details), state or None)

    def __repr__(self) -> str:
        parts = [repr(arg) for arg in self._args()]
        parts += [f"{key}={value!r}" for key, value in self.details.items()]
        return f"{type(self).__name__}({', '.join(parts)})"


# ---------------------------------------------------------------------------------- dispatch errors


class HandlerNotFound(CatgaError, LookupError):
    """No handler is registered for the message's type (nor for any of its base classes).

    Also a `LookupError`. Raised by `send` for a request nobody handles, for `None`, and for a
    message class sent instead of an instance.
    """

    code = ErrorCode.HANDLER_NOT_FOUND


class DuplicateHandler(CatgaError):
    """A second handler was registered for a request type, which has exactly one handler.

    Raised at registration, never while dispatching. Event types take any number of handlers.
    """

    code = ErrorCode.INTERNAL


class HandlerFailed(CatgaError):
    """A handler raised an exception that is not a `CatgaError`: its `__cause__` is that exception.

    Only `send_result` (and transports) wrap exceptions this way; `send` raises the handler's own
    exception unchanged, and `Result.unwrap()` re-raises the cause.
    """

    code = ErrorCode.HANDLER_FAILED


class PublishError(CatgaError, ExceptionGroup):
    """One or more handlers of a published event failed; `exceptions` holds them in run order.

    An `ExceptionGroup`, so `except* SomeError:` picks out the failures of one kind; `split` and
    `subgroup` return `PublishError`s too. Raised only after every handler ran.

    >>> err = PublishError("`1` of `2` handlers of `OrderPlaced` failed", [ValueError("bad")])
    >>> err.exceptions
    (ValueError('bad'),)
    """

    code = ErrorCode.HANDLER_FAILED

    def __new__(cls, message: str, exceptions: Sequence[Exception], **details: Any) -> Self:
        # `BaseExceptionGroup.__new__` takes exactly `(message, exceptions)`.
        return super().__new__(cls, message, exceptions)

    def __init__(self, message: str, exceptions: Sequence[Exception], **details: Any) -> None:
        # Not `CatgaError.__init__`: `message` is the read-only attribute of `BaseExceptionGroup`
        # (the same string), and `args` must stay `(message, exceptions)` as for any group.
        ExceptionGroup.__init__(self, message, exceptions)
        self.details = details

    def _args(self) -> tuple[Any, ...]:
        return (self.message, list(self.exceptions))

    def __reduce__(self) -> tuple[Any, ...]:
        state = {k: v for k, v in self.__dict__.items() if k != "details"}
        return (_rebuild, (type(self), self._args(), self.details), state or None)

    def derive(self, excs: Sequence[Exception], /) -> "PublishError":  # type: ignore[override]
        """Make a group of the same type and details around `excs` (used by `split`/`subgroup`)."""
        return type(self)(self.message, excs, **self.details)


class SagaFailed(CatgaError):
    """A saga failed: a step failed after its retries, and the completed steps were compensated."""

    code = ErrorCode.HANDLER_FAILED


# ------------------------------------------------------------------------------ pipeline errors


class ValidationError(CatgaError):
    """The message is invalid: `errors` lists every problem found (never retried or dead-lettered).

    >>> err = ValidationError(["`amount` must be positive, got `0`"])
    >>> err.errors
    ['`amount` must be positive, got `0`']
    >>> str(err)
    'validation failed: `amount` must be positive, got `0`'
    """

    code = ErrorCode.VALIDATION_FAILED
    errors: list[str]

    def __init__(self, errors: Sequence[str], message: str | None = None, **details: Any) -> None:
        self.errors = list(errors)
        super().__init__(message if message is not None else _validation_message(self.errors), **details)

    def _args(self) -> tuple[Any, ...]:
        default = _validation_message(self.errors)
        return (self.errors,) if self.message == default else (self.errors, self.message)


def _validation_message(errors: list[str]) -> str:
    return "validation failed: " + ("; ".join(errors) if errors else "no details")


class Timeout(CatgaError, TimeoutError):
    """The handler did not finish in time and was cancelled. Also a builtin `TimeoutError`. Retryable."""

    code = ErrorCode.TIMEOUT
    retryable = True


class RateLimited(CatgaError):
    """The rate limit is spent; `retry_after` says in how many seconds a token is free. Retryable.

    >>> RateLimited(0.25).retry_after
    0.25
    """

    code = ErrorCode.RATE_LIMITED
    retryable = True
    retry_after: float

    def __init__(self, retry_after: float, message: str | None = None, **details: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message if message is not None else _rate_limited_message(retry_after), **details)

    def _args(self) -> tuple[Any, ...]:
        if self.message == _rate_limited_message(self.retry_after):
            return (self.retry_after,)
        return (self.retry_after, self.message)


def _rate_limited_message(retry_after: float) -> str:
    return f"rate limit exceeded, retry after `{retry_after:g}` s"


class ConcurrencyLimited(CatgaError):
    """Too many messages are in flight, and a slot did not free up within `wait_timeout`. Retryable."""

    code = ErrorCode.CONCURRENCY_LIMITED
    retryable = True


class CircuitOpen(CatgaError):
    """The circuit breaker is open; `retry_after` says when it lets a probe through. Retryable.

    >>> CircuitOpen(30.0).retry_after
    30.0
    """

    code = ErrorCode.CIRCUIT_OPEN
    retryable = True
    retry_after: float

    def __init__(self, retry_after: float, message: str | None = None, **details: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message if message is not None else _circuit_open_message(retry_after), **details)

    def _args(self) -> tuple[Any, ...]:
        if self.message == _circuit_open_message(self.retry_after):
            return (self.retry_after,)
        return (self.retry_after, self.message)


def _circuit_open_message(retry_after: float) -> str:
    return f"circuit open, retry after `{retry_after:g}` s"


class Conflict(CatgaError):
    """A message with the same id is still being handled (a duplicate in flight). Retryable."""

    code = ErrorCode.CONFLICT
    retryable = True


class ConcurrencyConflict(CatgaError):
    """An event stream was not at the expected version when appending (optimistic concurrency).

    >>> err = ConcurrencyConflict("order-1", 3, 4)
    >>> err.stream_id, err.expected, err.actual
    ('order-1', 3, 4)
    >>> str(err)
    'stream `order-1` is at version `4`, expected `3`'
    """

    code = ErrorCode.CONCURRENCY_CONFLICT
    stream_id: str
    expected: int | None
    actual: int | None

    def __init__(
        self,
        stream_id: str,
        expected: int | None,
        actual: int | None,
        message: str | None = None,
        **details: Any,
    ) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        default = _conflict_message(stream_id, expected, actual)
        super().__init__(message if message is not None else default, **details)

    def _args(self) -> tuple[Any, ...]:
        args: tuple[Any, ...] = (self.stream_id, self.expected, self.actual)
        if self.message != _conflict_message(self.stream_id, self.expected, self.actual):
            args += (self.message,)
        return args


def _conflict_message(stream_id: str, expected: int | None, actual: int | None) -> str:
    return f"stream `{stream_id}` is at version `{actual}`, expected `{expected}`"


# ------------------------------------------------------------------------- infrastructure errors


class TransportError(CatgaError):
    """The transport failed to deliver a message or its reply (connection lost, no responder). Retryable."""

    code = ErrorCode.TRANSPORT_FAILED
    retryable = True


class SerializationError(CatgaError):
    """A message could not be encoded or decoded (unknown wire name, malformed body)."""

    code = ErrorCode.SERIALIZATION_FAILED


class PersistenceError(CatgaError):
    """A store failed to read or write (database down, schema missing)."""

    code = ErrorCode.PERSISTENCE_FAILED


# --------------------------------------------------------------------------- the hooks' factory


class HookErrors:
    """The error factory of the native hooks (docs/internals.md, "Built-in behaviours").

    The core calls it when a bookkeeping behaviour refuses a message, so the errors it raises are
    the same on both cores and name what was refused. `subject` names the route in messages (the
    message type, with the handler for an event: "`OrderPlaced` handler `notify`"); `details` go
    into every error's `details` (e.g. `message_type=` the wire name). `HOOK_ERRORS` is the one
    without a subject.

    >>> errors = HookErrors("`CreateOrder`", message_type="orders.create")
    >>> err = errors.rate_limited(0.5)
    >>> str(err), err.retry_after, err.details
    ('rate limit of `CreateOrder` exceeded, retry after `0.5` s', 0.5, {'message_type': 'orders.create'})
    >>> errors.is_ignored(ValidationError(["bad"])), errors.is_ignored(ValueError("bad"))
    (True, False)
    """

    __slots__ = ("details", "subject")

    subject: str | None
    details: dict[str, Any]

    def __init__(self, subject: str | None = None, **details: Any) -> None:
        self.subject = subject
        self.details = details

    def rate_limited(self, retry_after: float) -> RateLimited:
        """The token bucket is empty; a token is due in `retry_after` seconds."""
        if self.subject is None:
            return RateLimited(retry_after, **self.details)
        message = f"rate limit of {self.subject} exceeded, retry after `{retry_after:g}` s"
        return RateLimited(retry_after, message, **self.details)

    def concurrency_limited(self) -> ConcurrencyLimited:
        """Every permit is taken, and none was handed over within the wait timeout."""
        of = "" if self.subject is None else f" of {self.subject}"
        return ConcurrencyLimited(f"concurrency limit{of} reached: no permit freed up in time", **self.details)

    def circuit_open(self, retry_after: float) -> CircuitOpen:
        """The breaker is open; it lets a probe through in `retry_after` seconds."""
        if self.subject is None:
            return CircuitOpen(retry_after, **self.details)
        message = f"circuit of {self.subject} is open, retry after `{retry_after:g}` s"
        return CircuitOpen(retry_after, message, **self.details)

    def conflict(self, message: object) -> Conflict:
        """`message` is a duplicate of one still being handled (its claim is in flight)."""
        message_id = getattr(message, "message_id", None)
        subject = self.subject if self.subject is not None else f"`{type(message).__qualname__}`"
        return Conflict(
            f"message `{message_id}` of {subject} is still being handled: a duplicate in flight",
            message_id=message_id,
            **self.details,
        )

    def is_ignored(self, error: BaseException) -> bool:
        """Whether the breaker leaves `error` out of its count: validation failures and conflicts."""
        return isinstance(error, ValidationError | Conflict)

    def __repr__(self) -> str:
        return f"HookErrors({self.subject!r})" if self.subject is not None else "HookErrors()"


HOOK_ERRORS: Final = HookErrors()
"""The error factory the cores' hooks take when no route-specific one is given."""
