"""Retry and Timeout (API.md section 6), and the order of the middle chain."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import catga
from catga import Config
from catga.behaviors import Retry, Timeout, Validation


class Charge(catga.Command[str]):
    amount: int


class Charged(catga.Event):
    amount: int


class Flaky:
    """A handler that fails with `errors` in turn, then returns `"ok"`."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, cmd: Charge) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def fake_retry(delays: list[float] | None = None, **kwargs: Any) -> Retry:
    """A Retry whose waits are recorded instead of slept (jitter off unless given)."""
    retry = Retry(**{"jitter": 0.0, **kwargs})
    waits = delays if delays is not None else []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    retry._sleep = sleep
    retry._sleep_sync = waits.append
    return retry


def mediator_with(**changes: Any) -> catga.Mediator:
    return catga.Mediator(config=Config.minimal().with_(**changes))


# ------------------------------------------------------------------------------------------ Retry


async def test_a_retryable_error_twice_then_success_makes_three_calls() -> None:
    delays: list[float] = []
    mediator = mediator_with(retry=fake_retry(delays))
    handler = Flaky(catga.TransportError("down"), catga.Timeout("slow"))
    mediator.register(Charge, handler)
    assert await mediator.send(Charge(1)) == "ok"
    assert handler.calls == 3
    assert delays == [0.1, 0.2]  # base_delay * 2**(n-1)


async def test_a_non_retryable_error_makes_one_call() -> None:
    delays: list[float] = []
    mediator = mediator_with(retry=fake_retry(delays))
    error = ValueError("bad amount")
    handler = Flaky(error)
    mediator.register(Charge, handler)
    with pytest.raises(ValueError, match="bad amount") as caught:
        await mediator.send(Charge(1))
    assert caught.value is error
    assert handler.calls == 1
    assert delays == []
    handler = Flaky(catga.HandlerNotFound("x"))  # a catga error that is not retryable
    other = mediator_with(retry=fake_retry())
    other.register(Charge, handler)
    with pytest.raises(catga.HandlerNotFound):
        await other.send(Charge(1))
    assert handler.calls == 1


async def test_retry_on_lists_more_exception_types() -> None:
    mediator = mediator_with(retry=fake_retry(retry_on=(ConnectionError,)))
    handler = Flaky(ConnectionResetError("reset"), ConnectionError("refused"))
    mediator.register(Charge, handler)
    assert await mediator.send(Charge(1)) == "ok"
    assert handler.calls == 3


async def test_the_last_error_is_raised_after_max_attempts() -> None:
    delays: list[float] = []
    mediator = mediator_with(retry=fake_retry(delays, max_attempts=4))
    errors = [catga.TransportError(f"down {i}") for i in range(8)]
    handler = Flaky(*errors)
    mediator.register(Charge, handler)
    with pytest.raises(catga.TransportError) as caught:
        await mediator.send(Charge(1))
    assert caught.value is errors[3]
    assert handler.calls == 4
    assert len(delays) == 3
    result = await mediator.send_result(Charge(1))
    assert result.error is errors[7]


async def test_backoff_doubles_and_is_capped() -> None:
    delays: list[float] = []
    mediator = mediator_with(retry=fake_retry(delays, max_attempts=6, base_delay=1.0, max_delay=5.0))
    mediator.register(Charge, Flaky(*[catga.TransportError("down")] * 5))
    assert await mediator.send(Charge(1)) == "ok"
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize(("random", "factor"), [(0.0, 0.75), (0.5, 1.0), (1.0, 1.25)])
async def test_jitter_spreads_the_delay(random: float, factor: float) -> None:
    delays: list[float] = []
    retry = fake_retry(delays, base_delay=2.0, jitter=0.25)
    retry._random = lambda: random
    mediator = mediator_with(retry=retry)
    mediator.register(Charge, Flaky(catga.TransportError("down")))
    assert await mediator.send(Charge(1)) == "ok"
    assert delays == [pytest.approx(2.0 * factor)]


async def test_jitter_uses_the_random_source_by_default() -> None:
    delays: list[float] = []
    mediator = mediator_with(retry=fake_retry(delays, base_delay=1.0, jitter=0.5, max_attempts=30))
    mediator.register(Charge, Flaky(*[catga.TransportError("down")] * 20))
    assert await mediator.send(Charge(1)) == "ok"
    assert 0.5 <= delays[0] <= 1.5
    assert len(set(delays)) > 1


async def test_a_retry_after_lengthens_the_delay() -> None:
    delays: list[float] = []
    mediator = mediator_with(retry=fake_retry(delays, max_delay=2.0))
    mediator.register(Charge, Flaky(catga.RateLimited(0.7), catga.CircuitOpen(60.0)))
    assert await mediator.send(Charge(1)) == "ok"
    assert delays == [0.7, 2.0]  # at least retry_after, at most max_delay


def test_retry_sleeps_with_asyncio_and_time_by_default() -> None:
    retry = Retry()
    assert retry._sleep is asyncio.sleep
    assert retry._sleep_sync is time.sleep


async def test_retry_really_sleeps_on_the_loop() -> None:
    mediator = mediator_with(retry=Retry(base_delay=0.001, jitter=0.0))
    handler = Flaky(catga.TransportError("down"))
    mediator.register(Charge, handler)
    assert await mediator.send(Charge(1)) == "ok"
    assert handler.calls == 2


async def test_a_sync_handler_is_retried_with_the_async_sleep_in_send() -> None:
    delays: list[float] = []
    mediator = mediator_with(retry=fake_retry(delays))
    calls: list[int] = []

    def handle(cmd: Charge) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise catga.TransportError("down")
        return "ok"

    mediator.register(Charge, handle)
    assert mediator._route(Charge)[1][0][1] is True  # async for send: it must not block the loop
    assert await mediator.send(Charge(1)) == "ok"
    assert len(calls) == 3
    assert delays == [0.1, 0.2]


def test_send_sync_retries_with_the_blocking_sleep() -> None:
    waits: list[float] = []
    retry = fake_retry()

    async def never(delay: float) -> None:
        raise AssertionError("the async sleep is not for send_sync")

    retry._sleep = never
    retry._sleep_sync = waits.append
    mediator = mediator_with(retry=retry)
    calls: list[int] = []

    def handle(cmd: Charge) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise catga.TransportError("down")
        return "ok"

    mediator.register(Charge, handle)
    assert mediator.send_sync(Charge(1)) == "ok"
    assert waits == [0.1, 0.2]


async def test_cancelling_during_the_backoff_stops_retrying() -> None:
    retry = Retry(base_delay=10.0, jitter=0.0)
    mediator = mediator_with(retry=retry)
    handler = Flaky(catga.TransportError("down"))
    mediator.register(Charge, handler)
    task = asyncio.create_task(mediator.send(Charge(1)))
    while handler.calls == 0:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handler.calls == 1


def test_one_attempt_adds_no_retry_step() -> None:
    async def handle(cmd: Charge) -> str:
        return "ok"

    mediator = mediator_with(retry=Retry(max_attempts=1))
    mediator.register(Charge, handle)
    assert mediator._route(Charge)[1][0][0] is handle


async def test_event_handlers_are_retried_each() -> None:
    mediator = catga.Mediator(config=Config.minimal().with_(retry=fake_retry()))
    calls: list[str] = []

    async def flaky(evt: Charged) -> None:
        calls.append("flaky")
        if calls.count("flaky") < 2:
            raise catga.TransportError("down")

    async def steady(evt: Charged) -> None:
        calls.append("steady")

    mediator.register(Charged, flaky)
    mediator.register(Charged, steady)
    await mediator.publish(Charged(1))
    assert calls == ["flaky", "flaky", "steady"]


# ---------------------------------------------------------------------------------------- Timeout


async def test_a_timeout_cancels_the_handler_and_raises_catga_timeout() -> None:
    mediator = mediator_with(timeout=Timeout(0.01))
    cleaned: list[str] = []

    @mediator.handler
    async def slow(cmd: Charge) -> str:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally ran")
        return "never"

    with pytest.raises(catga.Timeout) as caught:
        await mediator.send(Charge(1))
    assert cleaned == ["finally ran"]
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.retryable
    assert caught.value.code is catga.ErrorCode.TIMEOUT
    assert "`0.01` s" in str(caught.value)
    assert isinstance(caught.value.__cause__, TimeoutError)
    result = await mediator.send_result(Charge(1))
    assert isinstance(result.error, catga.Timeout)


async def test_a_fast_handler_is_untouched() -> None:
    mediator = mediator_with(timeout=Timeout(5.0))
    mediator.register(Charge, Flaky())
    assert await mediator.send(Charge(1)) == "ok"


async def test_the_handlers_own_timeout_error_is_not_converted() -> None:
    mediator = mediator_with(timeout=Timeout(5.0))
    error = TimeoutError("the database timed out")
    mediator.register(Charge, Flaky(error))
    with pytest.raises(TimeoutError) as caught:
        await mediator.send(Charge(1))
    assert caught.value is error


async def test_a_timed_out_attempt_is_retried_each_with_its_own_deadline() -> None:
    delays: list[float] = []
    mediator = mediator_with(timeout=Timeout(0.01), retry=fake_retry(delays))
    calls: list[int] = []

    @mediator.handler
    async def slow_then_fast(cmd: Charge) -> str:
        calls.append(1)
        if len(calls) < 3:
            await asyncio.Event().wait()
        return "ok"

    assert await mediator.send(Charge(1)) == "ok"
    assert len(calls) == 3
    assert delays == [0.1, 0.2]


async def test_a_sync_pipeline_cannot_be_interrupted_so_has_no_timeout() -> None:
    def handle(cmd: Charge) -> str:
        return "ok"

    mediator = mediator_with(timeout=Timeout(0.001))
    mediator.register(Charge, handle)
    assert mediator._route(Charge)[1][0][0] is handle
    assert mediator.send_sync(Charge(1)) == "ok"


async def test_timeout_covers_async_user_behaviours() -> None:
    mediator = mediator_with(timeout=Timeout(0.01))

    async def stalls(message: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        await asyncio.Event().wait()

    mediator.add_behavior(stalls)
    mediator.register(Charge, lambda cmd: "ok")
    with pytest.raises(catga.Timeout):
        await mediator.send(Charge(1))


# --------------------------------------------------------------------------------------- order


async def test_validation_then_retry_then_timeout_then_user_behaviours() -> None:
    log: list[str] = []
    mediator = mediator_with(validation=Validation(), retry=fake_retry(), timeout=Timeout(5.0))

    def validator(cmd: Charge) -> list[str]:
        log.append("validate")
        return []

    async def user(message: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        log.append("user")
        return await call_next(message)

    mediator.validator(Charge, validator)
    mediator.add_behavior(user)
    handler = Flaky(catga.TransportError("down"))
    mediator.register(Charge, handler)
    assert await mediator.send(Charge(1)) == "ok"
    # Validated once, outside Retry; the user behaviour runs inside it, once per attempt.
    assert log == ["validate", "user", "user"]
    assert handler.calls == 2
