"""The error hierarchy (API.md section 4): codes, retryable flags, bases, data fields, pickling."""

import pickle
import re

import pytest

import catga
from catga import ErrorCode
from catga import _errors as errors_module

# (class, code, retryable, extra stdlib base or None)
HIERARCHY = [
    (catga.ValidationError, ErrorCode.VALIDATION_FAILED, False, None),
    (catga.HandlerNotFound, ErrorCode.HANDLER_NOT_FOUND, False, LookupError),
    (catga.DuplicateHandler, ErrorCode.INTERNAL, False, None),
    (catga.HandlerFailed, ErrorCode.HANDLER_FAILED, False, None),
    (catga.Timeout, ErrorCode.TIMEOUT, True, TimeoutError),
    (catga.RateLimited, ErrorCode.RATE_LIMITED, True, None),
    (catga.ConcurrencyLimited, ErrorCode.CONCURRENCY_LIMITED, True, None),
    (catga.CircuitOpen, ErrorCode.CIRCUIT_OPEN, True, None),
    (catga.Conflict, ErrorCode.CONFLICT, True, None),
    (catga.ConcurrencyConflict, ErrorCode.CONCURRENCY_CONFLICT, False, None),
    (catga.TransportError, ErrorCode.TRANSPORT_FAILED, True, None),
    (catga.SerializationError, ErrorCode.SERIALIZATION_FAILED, False, None),
    (catga.PersistenceError, ErrorCode.PERSISTENCE_FAILED, False, None),
    (catga.PublishError, ErrorCode.HANDLER_FAILED, False, ExceptionGroup),
    (catga.SagaFailed, ErrorCode.HANDLER_FAILED, False, None),
]

RETRYABLE = {"Timeout", "Conflict", "TransportError", "RateLimited", "CircuitOpen", "ConcurrencyLimited"}


def make(cls: type[catga.CatgaError]) -> catga.CatgaError:
    """One instance of each class, built through its public constructor."""
    if cls is catga.ValidationError:
        return catga.ValidationError(["`amount` must be positive, got `0`"], order="o-1")
    if cls in (catga.RateLimited, catga.CircuitOpen):
        return cls(1.5, order="o-1")
    if cls is catga.ConcurrencyConflict:
        return catga.ConcurrencyConflict("order-1", 3, 4, order="o-1")
    if cls is catga.PublishError:
        return catga.PublishError("`1` of `2` handlers of `OrderPlaced` failed", [ValueError("bad")], order="o-1")
    return cls(f"{cls.__name__} of `o-1`", order="o-1")


def test_error_code_is_a_str_enum_of_lowercase_names() -> None:
    names = [
        "VALIDATION_FAILED",
        "HANDLER_NOT_FOUND",
        "HANDLER_FAILED",
        "TIMEOUT",
        "CANCELLED",
        "RATE_LIMITED",
        "CONCURRENCY_LIMITED",
        "CIRCUIT_OPEN",
        "CONFLICT",
        "CONCURRENCY_CONFLICT",
        "TRANSPORT_FAILED",
        "SERIALIZATION_FAILED",
        "PERSISTENCE_FAILED",
        "INTERNAL",
    ]
    assert [code.name for code in ErrorCode] == names
    for code in ErrorCode:
        assert isinstance(code, str)
        assert code == code.name.lower()
        assert ErrorCode(code.name.lower()) is code
    assert f"{ErrorCode.TIMEOUT}" == "timeout"


def test_base_error() -> None:
    err = catga.CatgaError("order `o-1` is locked", order_id="o-1", attempt=2)
    assert isinstance(err, Exception)
    assert err.message == str(err) == "order `o-1` is locked"
    assert err.details == {"order_id": "o-1", "attempt": 2}
    assert err.code is ErrorCode.INTERNAL
    assert err.retryable is False
    assert err.args == ("order `o-1` is locked",)
    assert repr(err) == "CatgaError('order `o-1` is locked', order_id='o-1', attempt=2)"
    assert catga.CatgaError("x").details == {}


@pytest.mark.parametrize(
    ("cls", "code", "retryable", "extra_base"), HIERARCHY, ids=lambda v: getattr(v, "__name__", "")
)
def test_hierarchy(
    cls: type[catga.CatgaError], code: ErrorCode, retryable: bool, extra_base: type[BaseException] | None
) -> None:
    assert issubclass(cls, catga.CatgaError)
    assert cls.code is code
    assert cls.retryable is retryable
    assert retryable == (cls.__name__ in RETRYABLE)
    if extra_base is not None:
        assert issubclass(cls, extra_base)
    assert cls.__doc__, f"{cls.__name__} has no docstring"
    # Declared in one module, re-exported as `catga.X`.
    assert cls.__module__ == "catga"
    assert vars(errors_module)[cls.__name__] is cls
    err = make(cls)
    assert err.code is code
    assert err.retryable is retryable
    assert err.details == {"order": "o-1"}


@pytest.mark.parametrize("cls", [row[0] for row in HIERARCHY], ids=lambda cls: cls.__name__)
def test_messages_follow_the_house_style(cls: type[catga.CatgaError]) -> None:
    message = make(cls).message
    assert not message.endswith(".")
    assert re.search(r"`[^`]+`", message), message


@pytest.mark.parametrize("cls", [catga.CatgaError] + [row[0] for row in HIERARCHY], ids=lambda cls: cls.__name__)
def test_errors_pickle_with_their_data(cls: type[catga.CatgaError]) -> None:
    err = make(cls)
    err.add_note("while handling `o-1`")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls
    assert copy.message == err.message
    assert str(copy) == str(err)
    assert copy.details == err.details
    assert copy.code is err.code
    assert copy.__notes__ == ["while handling `o-1`"]
    for field in ("errors", "retry_after", "stream_id", "expected", "actual"):
        if hasattr(err, field):
            assert getattr(copy, field) == getattr(err, field)
    assert repr(copy) == repr(err)


def test_validation_error() -> None:
    err = catga.ValidationError(errors=["`amount` must be positive, got `0`", "`customer` is empty"])
    assert err.errors == ["`amount` must be positive, got `0`", "`customer` is empty"]
    assert str(err) == "validation failed: `amount` must be positive, got `0`; `customer` is empty"
    assert repr(err) == "ValidationError(['`amount` must be positive, got `0`', '`customer` is empty'])"
    custom = catga.ValidationError(["a"], "order `o-1` is invalid")
    assert str(custom) == "order `o-1` is invalid"
    assert pickle.loads(pickle.dumps(custom)).message == "order `o-1` is invalid"
    assert catga.ValidationError([]).errors == []


def test_retry_after_fields() -> None:
    limited = catga.RateLimited(retry_after=0.25)
    assert limited.retry_after == 0.25
    assert str(limited) == "rate limit exceeded, retry after `0.25` s"
    assert repr(limited) == "RateLimited(0.25)"
    opened = catga.CircuitOpen(30.0)
    assert opened.retry_after == 30.0
    assert str(opened) == "circuit open, retry after `30` s"


def test_concurrency_conflict() -> None:
    err = catga.ConcurrencyConflict(stream_id="order-1", expected=3, actual=4)
    assert (err.stream_id, err.expected, err.actual) == ("order-1", 3, 4)
    assert str(err) == "stream `order-1` is at version `4`, expected `3`"
    assert repr(err) == "ConcurrencyConflict('order-1', 3, 4)"


def test_stdlib_bases_catch_them() -> None:
    with pytest.raises(LookupError):
        raise catga.HandlerNotFound("no handler for `X`")
    with pytest.raises(TimeoutError):
        raise catga.Timeout("`X` timed out after `1` s")
    timeout = catga.Timeout("`X` timed out after `1` s")
    assert str(timeout) == "`X` timed out after `1` s"
    assert timeout.args == ("`X` timed out after `1` s",)


def test_publish_error_is_an_exception_group() -> None:
    first, second = ValueError("bad"), KeyError("missing")
    err = catga.PublishError("`2` of `3` handlers of `OrderPlaced` failed", [first, second], event="e-1")
    assert isinstance(err, ExceptionGroup)
    assert isinstance(err, catga.CatgaError)
    assert err.exceptions == (first, second)
    assert err.message == "`2` of `3` handlers of `OrderPlaced` failed"
    assert str(err) == "`2` of `3` handlers of `OrderPlaced` failed (2 sub-exceptions)"
    assert err.details == {"event": "e-1"}
    assert err.args == ("`2` of `3` handlers of `OrderPlaced` failed", [first, second])

    matched, rest = err.split(ValueError)
    assert type(matched) is catga.PublishError
    assert type(rest) is catga.PublishError
    assert matched is not None
    assert rest is not None
    assert matched.exceptions == (first,)
    assert rest.exceptions == (second,)
    assert matched.details == {"event": "e-1"}
    sub = err.subgroup(KeyError)
    assert type(sub) is catga.PublishError
    assert sub is not None
    assert sub.exceptions == (second,)

    handled = []

    def raise_and_handle_value_errors() -> None:
        try:
            raise err
        except* ValueError as group:
            handled.append(group)

    with pytest.raises(catga.PublishError) as caught:
        raise_and_handle_value_errors()
    assert type(handled[0]) is catga.PublishError
    assert handled[0].exceptions == (first,)
    # What no `except*` clause handled propagates as a `PublishError` too.
    assert caught.value.exceptions == (second,)


def test_publish_error_takes_only_exceptions() -> None:
    with pytest.raises(TypeError):
        catga.PublishError("`1` of `1` handlers of `X` failed", [KeyboardInterrupt()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="non-empty"):
        catga.PublishError("`0` of `1` handlers of `X` failed", [])


def test_handler_failed_keeps_its_cause_through_result() -> None:
    cause = ValueError("boom")
    err = catga.HandlerFailed("handler of `X` raised `ValueError`: boom")
    err.__cause__ = cause
    assert err.__cause__ is cause
