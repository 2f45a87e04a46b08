"""`catga.Result` (API.md section 4)."""

import pickle

import pytest

import catga
from catga import ErrorCode, Result
from catga._result import _FROM_CACHE, _NO_METADATA, _make


def test_success() -> None:
    result = Result.success(42)
    assert result.ok is True
    assert result.value == 42
    assert result.error is None
    assert result.code is None
    assert result.metadata == {}
    assert result.unwrap() == 42
    assert repr(result) == "Result.success(42)"


def test_success_with_metadata_is_read_only() -> None:
    result = Result.success(None, from_cache=True)
    assert result.ok
    assert result.value is None
    assert result.unwrap() is None
    assert result.metadata == {"from_cache": True}
    with pytest.raises(TypeError):
        result.metadata["from_cache"] = False  # type: ignore[index]
    assert repr(result) == "Result.success(None, from_cache=True)"


def test_failure() -> None:
    error = catga.HandlerNotFound("no handler for `GetOrder`")
    result = Result.failure(error)
    assert result.ok is False
    assert result.value is None
    assert result.error is error
    assert result.code is ErrorCode.HANDLER_NOT_FOUND
    assert repr(result) == "Result.failure(HandlerNotFound('no handler for `GetOrder`'))"
    with pytest.raises(catga.HandlerNotFound) as caught:
        result.unwrap()
    assert caught.value is error


def test_unwrap_raises_the_cause_of_handler_failed() -> None:
    cause = ValueError("boom")
    error = catga.HandlerFailed("handler of `X` raised `ValueError`: boom")
    error.__cause__ = cause
    with pytest.raises(ValueError, match="boom") as caught:
        Result.failure(error).unwrap()
    assert caught.value is cause


def test_unwrap_raises_handler_failed_without_cause() -> None:
    error = catga.HandlerFailed("handler of `X` failed")
    with pytest.raises(catga.HandlerFailed) as caught:
        Result.failure(error).unwrap()
    assert caught.value is error


def test_failure_takes_only_catga_errors() -> None:
    with pytest.raises(TypeError, match="HandlerFailed"):
        Result.failure(ValueError("boom"))  # type: ignore[arg-type]


def test_result_is_immutable() -> None:
    result = Result.success(1)
    with pytest.raises(AttributeError, match="immutable"):
        result.value = 2  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        result._value = 2
    with pytest.raises(AttributeError, match="immutable"):
        del result._value
    with pytest.raises(AttributeError):
        result.__dict__  # noqa: B018 - slots, no instance dict
    assert result.value == 1


def test_every_constructor_seals_the_result() -> None:
    # The constructors fill a private twin class and then switch it to `Result` (see `_Unsealed`).
    error = catga.Conflict("message `1` is in flight")
    results = [
        Result.success(1),
        Result.success(1, from_cache=True),
        Result.failure(error),
        Result.failure(error, attempt=2),
        _make(1, None, _NO_METADATA),
        _make(1, None, _FROM_CACHE),
        _make(None, error, _NO_METADATA),
    ]
    for result in results:
        assert type(result) is Result
        assert isinstance(result, Result)
        with pytest.raises(AttributeError, match="immutable"):
            result._error = None
        with pytest.raises(TypeError):
            result.metadata["from_cache"] = False  # type: ignore[index]
    assert results[4] == results[0]
    assert results[5] == results[1]
    assert results[5].metadata == {"from_cache": True}
    assert results[6] == results[2]


def test_results_are_built_by_the_class_methods() -> None:
    with pytest.raises(TypeError, match=r"Result\.success"):
        Result()


def test_equality_and_hash() -> None:
    error = catga.Conflict("message `1` is in flight")
    assert Result.success(1) == Result.success(1)
    assert Result.success(1) != Result.success(2)
    assert Result.success(1) != Result.success(1, from_cache=True)
    assert Result.failure(error) == Result.failure(error)
    assert Result.failure(error) != Result.failure(catga.Conflict("message `1` is in flight"))
    assert Result.success(None) != Result.failure(error)
    assert hash(Result.success(1)) == hash(Result.success(1))
    assert Result.success(1) != 1
    with pytest.raises(TypeError):
        hash(Result.success([1]))


def test_generic_alias() -> None:
    alias = Result[int]
    assert alias.success(3) == Result.success(3)


def test_pickle() -> None:
    ok = Result.success({"id": 1}, from_cache=True)
    assert pickle.loads(pickle.dumps(ok)) == ok
    failed = pickle.loads(pickle.dumps(Result.failure(catga.RateLimited(0.5))))
    assert failed.code is ErrorCode.RATE_LIMITED
    assert isinstance(failed.error, catga.RateLimited)
    assert failed.error.retry_after == 0.5


def test_repr_names_the_public_class() -> None:
    assert Result.__module__ == "catga"
    assert Result.__qualname__ == "Result"
