"""The core runs a route's bookkeeping hooks around its target (docs/internals.md, steps 1-7).

These tests drive `_core.Dispatcher` directly with hand-made routes and duck-typed stand-ins for
the state machines, recording every call, so they pin down what the core does and in which order,
independently of the real tables, buckets and breakers (tested in their own files).
"""

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Any

import pytest

from catga import _core

CLAIMED, IN_FLIGHT, COMPLETED = 0, 1, 2


class Calls(list[tuple[Any, ...]]):
    def names(self) -> list[str]:
        return [call[0] for call in self]


class Table:
    """An idempotency table answering `claim` with a fixed status."""

    def __init__(self, calls: Calls, status: int = CLAIMED, stored: object = None, fail_complete: bool = False) -> None:
        self.calls, self.status, self.stored, self.fail_complete = calls, status, stored, fail_complete

    def claim(self, message_id: int, handler: int) -> tuple[int, object]:
        self.calls.append(("claim", message_id, handler))
        return self.status, self.stored

    def complete(self, message_id: int, handler: int, result: object) -> None:
        self.calls.append(("complete", message_id, handler, result))
        if self.fail_complete:
            raise TypeError("cannot keep this result")

    def release(self, message_id: int, handler: int) -> None:
        self.calls.append(("release", message_id, handler))


class Bucket:
    def __init__(self, calls: Calls, waits: list[float]) -> None:
        self.calls, self.waits = calls, waits

    def try_acquire(self, n: int = 1) -> float:
        self.calls.append(("try_acquire", n))
        return self.waits.pop(0) if self.waits else 0.0


class Limiter:
    def __init__(self, calls: Calls, free: bool = True) -> None:
        self.calls, self.free = calls, free

    def try_acquire(self) -> bool:
        self.calls.append(("limiter.try_acquire",))
        return self.free

    def release(self) -> None:
        self.calls.append(("limiter.release",))

    def note_rejected(self) -> None:
        self.calls.append(("limiter.note_rejected",))


class Permits:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def acquire(self) -> None:
        self.calls.append(("permits.acquire",))
        await asyncio.sleep(0)

    def release(self) -> None:
        self.calls.append(("permits.release",))


class Breaker:
    def __init__(self, calls: Calls, retry_after: float = 0.0) -> None:
        self.calls, self.retry_after = calls, retry_after

    def allow(self) -> float:
        self.calls.append(("allow",))
        return self.retry_after

    def record_success(self) -> None:
        self.calls.append(("record_success",))

    def record_failure(self) -> None:
        self.calls.append(("record_failure",))

    def record_ignored(self) -> None:
        self.calls.append(("record_ignored",))


class Cache:
    def __init__(self, calls: Calls, stored: dict[bytes, object] | None = None) -> None:
        self.calls, self.stored = calls, stored or {}

    def get(self, group: int, key: bytes) -> tuple[bool, object]:
        self.calls.append(("cache.get", group, key))
        return (key in self.stored, self.stored.get(key))

    def put(self, group: int, key: bytes, value: object, ttl: float) -> None:
        self.calls.append(("cache.put", group, key, value, ttl))
        self.stored[key] = value


class Ignored(Exception):
    """Stands for the errors the breaker does not count (validation, conflicts)."""


class Errors:
    def rate_limited(self, retry_after: float) -> Exception:
        return LookupError(f"rate limited `{retry_after}`")

    def concurrency_limited(self) -> Exception:
        return LookupError("concurrency limited")

    def circuit_open(self, retry_after: float) -> Exception:
        return LookupError(f"circuit open `{retry_after}`")

    def conflict(self, message: object) -> Exception:
        return LookupError(f"conflict `{type(message).__name__}`")

    def is_ignored(self, error: BaseException) -> bool:
        return isinstance(error, Ignored)


class Msg:
    def __init__(self, message_id: int = 7) -> None:
        self.message_id = message_id


class Evt(Msg):
    pass


class Routes(_core.Dispatcher):  # type: ignore[misc]
    routes: dict[type, Any]

    def _compile_route(self, message_type: type) -> Any:
        return self.routes[message_type]


def dispatcher(target: Callable[[Any], Any], hooks: Any, is_async: bool = True) -> Routes:
    routes = Routes()
    routes.routes = {Msg: (False, ((target, is_async, False, hooks),))}
    return routes


def run(awaitable: Any) -> Any:
    async def main() -> Any:
        return await awaitable

    return asyncio.run(main())


def recording_target(calls: Calls, result: object = "done") -> Callable[[Any], Any]:
    async def target(message: Any) -> object:
        calls.append(("target", _core.CURRENT_MESSAGE.get() is message))
        return result

    return target


def failing_target(calls: Calls, error: BaseException) -> Callable[[Any], Any]:
    async def target(message: Any) -> object:
        calls.append(("target",))
        raise error

    return target


def test_a_claimed_message_runs_and_is_completed_with_its_result() -> None:
    calls = Calls()
    hooks = _core.Hooks(idempotency=(Table(calls), 5), errors=Errors())
    assert run(dispatcher(recording_target(calls), hooks).send(Msg(7))) == "done"
    assert calls == [("claim", 7, 5), ("target", True), ("complete", 7, 5, "done")]


def test_a_completed_message_returns_the_stored_result_without_running() -> None:
    calls = Calls()
    hooks = _core.Hooks(idempotency=(Table(calls, COMPLETED, stored=None), 0), errors=Errors())
    routes = dispatcher(recording_target(calls), hooks)
    assert run(routes.send(Msg())) is None
    assert run(routes.send_meta(Msg())) == (None, True)
    assert calls.names() == ["claim", "claim"]


def test_a_message_in_flight_is_a_conflict() -> None:
    calls = Calls()
    hooks = _core.Hooks(idempotency=(Table(calls, IN_FLIGHT), 0), errors=Errors())
    with pytest.raises(LookupError, match="conflict `Msg`"):
        run(dispatcher(recording_target(calls), hooks).send(Msg()))
    assert calls.names() == ["claim"]


def test_a_failure_releases_the_claim_and_counts_for_the_breaker() -> None:
    calls = Calls()
    hooks = _core.Hooks(idempotency=(Table(calls), 0), breaker=Breaker(calls), errors=Errors())
    with pytest.raises(ValueError, match="boom"):
        run(dispatcher(failing_target(calls, ValueError("boom")), hooks).send(Msg()))
    assert calls.names() == ["claim", "allow", "target", "record_failure", "release"]


def test_an_ignored_error_does_not_count_for_the_breaker() -> None:
    calls = Calls()
    hooks = _core.Hooks(breaker=Breaker(calls), errors=Errors())
    with pytest.raises(Ignored):
        run(dispatcher(failing_target(calls, Ignored()), hooks).send(Msg()))
    assert calls.names() == ["allow", "target", "record_ignored"]


def test_an_open_breaker_refuses_and_gives_back_what_was_taken() -> None:
    calls = Calls()
    hooks = _core.Hooks(
        idempotency=(Table(calls), 0),
        concurrency=(Limiter(calls), None),
        breaker=Breaker(calls, retry_after=2.5),
        errors=Errors(),
    )
    with pytest.raises(LookupError, match=r"circuit open `2.5`"):
        run(dispatcher(recording_target(calls), hooks).send(Msg()))
    assert calls.names() == ["claim", "limiter.try_acquire", "allow", "limiter.release", "release"]


def test_success_runs_the_outcome_steps_in_order() -> None:
    calls = Calls()
    hooks = _core.Hooks(
        idempotency=(Table(calls), 0),
        rate_limit=(Bucket(calls, []), False, None),
        concurrency=(Limiter(calls), None),
        breaker=Breaker(calls),
        cache=(Cache(calls), 3, lambda message: b"key", 30.0),
        errors=Errors(),
    )
    assert run(dispatcher(recording_target(calls), hooks).send_meta(Msg())) == ("done", False)
    assert calls.names() == [
        "claim",
        "try_acquire",
        "limiter.try_acquire",
        "allow",
        "cache.get",
        "target",
        "cache.put",
        "record_success",
        "limiter.release",
        "complete",
    ]
    assert ("cache.put", 3, b"key", "done", 30.0) in calls


def test_a_cache_hit_skips_the_target_and_counts_as_a_success() -> None:
    calls = Calls()
    hooks = _core.Hooks(
        breaker=Breaker(calls), cache=(Cache(calls, {b"k": "cached"}), 1, lambda m: b"k", 5.0), errors=Errors()
    )
    assert run(dispatcher(recording_target(calls), hooks).send_meta(Msg())) == ("cached", True)
    assert calls.names() == ["allow", "cache.get", "record_success"]


def test_an_empty_bucket_rejects_with_the_wait() -> None:
    calls = Calls()
    hooks = _core.Hooks(idempotency=(Table(calls), 0), rate_limit=(Bucket(calls, [1.5]), False, None), errors=Errors())
    with pytest.raises(LookupError, match=r"rate limited `1.5`"):
        run(dispatcher(recording_target(calls), hooks).send(Msg()))
    assert calls.names() == ["claim", "try_acquire", "release"]


def test_a_waiting_rate_limit_sleeps_then_tries_again() -> None:
    calls = Calls()
    hooks = _core.Hooks(rate_limit=(Bucket(calls, [0.01, 0.01]), True, 1.0), errors=Errors())
    assert run(dispatcher(recording_target(calls), hooks).send(Msg())) == "done"
    assert calls.names() == ["try_acquire", "try_acquire", "try_acquire", "target"]


def test_a_wait_beyond_max_wait_rejects() -> None:
    calls = Calls()
    hooks = _core.Hooks(rate_limit=(Bucket(calls, [2.0]), True, 1.0), errors=Errors())
    with pytest.raises(LookupError, match=r"rate limited `2.0`"):
        run(dispatcher(recording_target(calls), hooks).send(Msg()))


def test_no_free_permit_without_waiting_rejects() -> None:
    calls = Calls()
    hooks = _core.Hooks(concurrency=(Limiter(calls, free=False), None), errors=Errors())
    with pytest.raises(LookupError, match="concurrency limited"):
        run(dispatcher(recording_target(calls), hooks).send(Msg()))
    assert calls.names() == ["limiter.try_acquire", "limiter.note_rejected"]


def test_a_permit_waited_for_is_given_back_through_the_permits() -> None:
    calls = Calls()
    hooks = _core.Hooks(concurrency=(Limiter(calls, free=False), Permits(calls)), errors=Errors())
    assert run(dispatcher(recording_target(calls), hooks).send(Msg())) == "done"
    assert calls.names() == ["limiter.try_acquire", "permits.acquire", "target", "permits.release"]


def test_sync_targets_run_inside_the_hooks() -> None:
    calls = Calls()

    def target(message: Any) -> str:
        calls.append(("target", _core.CURRENT_MESSAGE.get() is message))
        return "sync"

    hooks = _core.Hooks(breaker=Breaker(calls), errors=Errors())
    assert run(dispatcher(target, hooks, is_async=False).send(Msg())) == "sync"
    assert calls == [("allow",), ("target", True), ("record_success",)]
    assert _core.CURRENT_MESSAGE.get() is None


def test_a_result_the_table_cannot_keep_still_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    calls = Calls()
    hooks = _core.Hooks(idempotency=(Table(calls, fail_complete=True), 0), errors=Errors())
    with caplog.at_level(logging.WARNING, logger="catga"):
        assert run(dispatcher(recording_target(calls), hooks).send(Msg())) == "done"
    assert calls.names() == ["claim", "target", "complete", "release"]
    assert "could not keep a result" in caplog.text


def test_cancelling_gives_back_everything() -> None:
    calls = Calls()
    started = asyncio.Event()

    async def slow(message: Any) -> None:
        started.set()
        await asyncio.sleep(10)

    hooks = _core.Hooks(
        idempotency=(Table(calls), 0), concurrency=(Limiter(calls), None), breaker=Breaker(calls), errors=Errors()
    )
    routes = dispatcher(slow, hooks)

    async def main() -> None:
        task = asyncio.ensure_future(routes.send(Msg()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert calls.names() == ["claim", "limiter.try_acquire", "allow", "record_ignored", "limiter.release", "release"]
    assert _core.CURRENT_MESSAGE.get() is None


def test_publish_runs_each_handler_inside_its_own_hooks() -> None:
    calls = Calls()

    async def first(event: Any) -> None:
        calls.append(("first",))

    async def second(event: Any) -> None:
        calls.append(("second",))
        raise ValueError("second failed")

    routes = Routes()
    routes.routes = {
        Evt: (
            True,
            (
                (first, True, False, _core.Hooks(idempotency=(Table(calls, COMPLETED), 1), errors=Errors())),
                (second, True, False, _core.Hooks(idempotency=(Table(calls), 2), errors=Errors())),
            ),
        )
    }
    with pytest.raises(ExceptionGroup) as caught:
        run(routes.publish(Evt(9)))
    assert [str(error) for error in caught.value.exceptions] == ["second failed"]
    assert calls == [("claim", 9, 1), ("claim", 9, 2), ("second",), ("release", 9, 2)]


def test_a_route_without_hooks_reports_results_as_computed() -> None:
    routes = Routes()

    async def target(message: Any) -> int:
        return 3

    routes.routes = {Msg: (False, ((target, True, False),))}
    assert run(routes.send_meta(Msg())) == (3, False)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"idempotency": (1, 2, 3), "errors": Errors()}, r"hook `idempotency` must be a tuple of 2 items or None"),
        ({"cache": "no", "errors": Errors()}, r"hook `cache` must be a tuple of 4 items or None"),
        ({"breaker": object()}, r"`Hooks` needs `errors` when any hook is set"),
    ],
)
def test_hooks_check_their_arguments(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        _core.Hooks(**arguments)


def test_a_malformed_hooks_entry_is_rejected_on_await() -> None:
    routes = Routes()
    routes.routes = {Msg: (False, ((recording_target(Calls()), True, False, "not hooks"),))}
    with pytest.raises(TypeError, match=r"`hooks` must be a `Hooks` or None"):
        run(routes.send(Msg()))


def test_an_awaitable_dropped_while_its_handler_is_suspended_gives_back_what_it_holds() -> None:
    calls = Calls()

    async def slow(message: Any) -> None:
        calls.append(("target",))
        await asyncio.sleep(10)

    hooks = _core.Hooks(idempotency=(Table(calls), 0), breaker=Breaker(calls), errors=Errors())
    routes = dispatcher(slow, hooks)

    async def main() -> None:
        pending = routes.send(Msg())
        pending.send(None)  # type: ignore[attr-defined]  # runs up to the handler's first suspension
        assert calls.names() == ["claim", "allow", "target"]
        del pending  # never resumed: collecting it must still release the claim and the probe
        gc.collect()

    asyncio.run(main())
    assert calls.names() == ["claim", "allow", "target", "record_ignored", "release"]
    assert _core.CURRENT_MESSAGE.get() is None
