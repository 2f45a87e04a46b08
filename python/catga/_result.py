"""`Result`: the outcome of `Mediator.send_result`, a value or a `CatgaError`, never both."""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Generic, NoReturn, TypeVar, final

from catga._errors import CatgaError, ErrorCode, HandlerFailed

__all__ = ["Result"]

T = TypeVar("T", covariant=True)
V = TypeVar("V")

_NO_METADATA: Mapping[str, object] = MappingProxyType({})


@final
class Result(Generic[T]):
    """The outcome of a request: `ok` with a `value`, or not `ok` with an `error`.

    Immutable. Build one with `Result.success(value, **metadata)` or `Result.failure(error)`;
    `unwrap()` returns the value or raises what `send` would have raised.

    >>> ok = Result.success(42, from_cache=True)
    >>> ok.ok, ok.value, ok.error, ok.metadata["from_cache"]
    (True, 42, None, True)
    >>> failed = Result.failure(HandlerNotFound("no handler for `GetOrder`"))
    >>> failed.ok, failed.code
    (False, <ErrorCode.HANDLER_NOT_FOUND: 'handler_not_found'>)
    >>> failed.unwrap()
    Traceback (most recent call last):
    ...
    catga.HandlerNotFound: no handler for `GetOrder`
    """

    __slots__ = ("_error", "_metadata", "_value")

    _value: T | None
    _error: CatgaError | None
    _metadata: Mapping[str, object]

    def __init__(self) -> None:
        raise TypeError("build a `Result` with `Result.success(value)` or `Result.failure(error)`")

    @classmethod
    def success(cls, value: V, /, **metadata: object) -> "Result[V]":
        """A successful result carrying `value`; keyword arguments become its `metadata`."""
        # Built unsealed and then sealed: see `_Unsealed` (inlined here, a call costs ~50 ns).
        self: _Unsealed[Any] = _Unsealed()
        self._value = value
        self._error = None
        self._metadata = MappingProxyType(metadata) if metadata else _NO_METADATA
        self.__class__ = Result  # type: ignore[assignment]
        return self  # type: ignore[return-value]

    @classmethod
    def failure(cls, error: CatgaError, /, **metadata: object) -> "Result[Any]":
        """A failed result carrying `error` (a `CatgaError`; wrap other exceptions in `HandlerFailed`)."""
        if not isinstance(error, CatgaError):
            raise TypeError(
                f"`Result.failure` takes a `CatgaError`, got `{error!r}`: wrap other exceptions in `HandlerFailed`"
            )
        self: _Unsealed[Any] = _Unsealed()
        self._value = None
        self._error = error
        self._metadata = MappingProxyType(metadata) if metadata else _NO_METADATA
        self.__class__ = Result  # type: ignore[assignment]
        return self  # type: ignore[return-value]

    @property
    def ok(self) -> bool:
        """Whether the request succeeded."""
        return self._error is None

    @property
    def value(self) -> T | None:
        """The handler's return value, or `None` for a failure."""
        return self._value

    @property
    def error(self) -> CatgaError | None:
        """The failure, or `None` for a success."""
        return self._error

    @property
    def code(self) -> ErrorCode | None:
        """The failure's `ErrorCode`, or `None` for a success."""
        return None if self._error is None else self._error.code

    @property
    def metadata(self) -> Mapping[str, object]:
        """Read-only facts about how the result was produced, e.g. `{"from_cache": True}`."""
        return self._metadata

    def unwrap(self) -> T:
        """The value, or raise what `send` would have raised.

        For a `HandlerFailed` that is the handler's own exception (its `__cause__`), else the error.
        """
        error = self._error
        if error is None:
            return self._value  # type: ignore[return-value]  # None only when T admits it
        _raise(error)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"`Result` is immutable: cannot set `{name}`")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"`Result` is immutable: cannot delete `{name}`")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return (
            self._error is other._error
            and (self._value is other._value or self._value == other._value)
            and self._metadata == other._metadata
        )

    def __hash__(self) -> int:
        # Like a tuple: hashable when the value is.
        return hash((self._value, self._error, tuple(self._metadata.items())))

    def __repr__(self) -> str:
        extra = "".join(f", {key}={value!r}" for key, value in self._metadata.items())
        if self._error is None:
            return f"Result.success({self._value!r}{extra})"
        return f"Result.failure({self._error!r}{extra})"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._error is None:
            return (_success, (self._value, dict(self._metadata)))
        return (_failure, (self._error, dict(self._metadata)))


class _Unsealed(Generic[T]):
    """A `Result` under construction: the same slots, without the guard against assignment.

    `Result.__setattr__` makes every store into a `Result` a Python call, and bypassing it with
    `object.__setattr__` costs ~100 ns a field. So the constructors fill an `_Unsealed` with plain
    slot stores and then set its `__class__` to `Result`, which CPython allows between classes of
    one layout (same base, same `__slots__` in the same order): ~2x faster than three
    `object.__setattr__` calls. Never escapes this module unsealed.
    """

    __slots__ = Result.__slots__

    _value: Any
    _error: CatgaError | None
    _metadata: Mapping[str, object]


_FROM_CACHE: Mapping[str, object] = MappingProxyType({"from_cache": True})


def _make(value: object, error: CatgaError | None, metadata: Mapping[str, object]) -> Result[Any]:
    """A `Result` from checked parts, for catga's hot paths (`send_result`): no argument checks.

    `error` must be a `CatgaError` or `None` (then `value` is the value), `metadata` a read-only
    mapping such as `_NO_METADATA` or `_FROM_CACHE`.
    """
    self: _Unsealed[Any] = _Unsealed()
    self._value = value
    self._error = error
    self._metadata = metadata
    self.__class__ = Result  # type: ignore[assignment]
    return self  # type: ignore[return-value]


def _raise(error: CatgaError) -> NoReturn:
    if isinstance(error, HandlerFailed) and error.__cause__ is not None:
        raise error.__cause__
    raise error


def _success(value: object, metadata: dict[str, object]) -> Result[object]:
    return Result.success(value, **metadata)


def _failure(error: CatgaError, metadata: dict[str, object]) -> Result[Any]:
    return Result.failure(error, **metadata)
