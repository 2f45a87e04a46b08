"""`publish`, sequential (the core's) and concurrent (`Mediator(publish="concurrent")`), API.md section 3."""

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

import catga
from catga._core import CURRENT_MESSAGE

STRATEGIES = ["sequential", "concurrent"]


class OrderPlaced(catga.Event):
    order_id: str


class RushOrderPlaced(OrderPlaced):
    pass


class PlaceOrder(catga.Command[str]):
    customer: str


@dataclass
class PlainEvent:
    name: str


@dataclass
class PlainSubEvent(PlainEvent):
    pass


def mediator_for(strategy: str) -> catga.Mediator:
    return catga.Mediator(publish=strategy)  # type: ignore[arg-type]


@pytest.fixture(params=STRATEGIES)
def mediator(request: pytest.FixtureRequest) -> catga.Mediator:
    return mediator_for(request.param)


async def test_publish_strategy_binding() -> None:
    sequential, concurrent = mediator_for("sequential"), mediator_for("concurrent")
    assert "publish" not in vars(sequential)  # the core's own method
    assert concurrent.publish == concurrent._publish_concurrent


async def test_no_handlers_is_a_no_op(mediator: catga.Mediator) -> None:
    await mediator.publish(OrderPlaced("o-1"))


async def test_every_handler_runs_in_registration_order(mediator: catga.Mediator) -> None:
    log: list[str] = []

    @mediator.handler
    async def first(evt: OrderPlaced) -> None:
        log.append("first")

    @mediator.handler
    def second(evt: OrderPlaced) -> None:
        log.append("second")

    @mediator.handler(OrderPlaced)
    async def third(evt: Any) -> None:
        log.append("third")

    await mediator.publish(OrderPlaced("o-1"))
    assert log == ["first", "second", "third"]


async def test_handlers_of_base_types_run_too(mediator: catga.Mediator) -> None:
    log: list[str] = []

    @mediator.handler
    async def on_any(evt: catga.Event) -> None:
        log.append("event")

    @mediator.handler
    async def on_placed(evt: OrderPlaced) -> None:
        log.append("placed")

    @mediator.handler
    async def on_rush(evt: RushOrderPlaced) -> None:
        log.append("rush")

    await mediator.publish(RushOrderPlaced("o-1"))
    assert log == ["event", "placed", "rush"]
    log.clear()
    await mediator.publish(OrderPlaced("o-1"))
    assert log == ["event", "placed"]


async def test_failures_are_raised_together_after_all_ran(mediator: catga.Mediator) -> None:
    log: list[str] = []
    # A catga error that the default Retry does not retry.
    first_error, second_error = ValueError("first"), catga.SerializationError("`o-1` is not encodable")

    @mediator.handler
    async def fails_at_once(evt: OrderPlaced) -> None:
        log.append("a")
        raise first_error

    @mediator.handler
    async def succeeds(evt: OrderPlaced) -> None:
        await asyncio.sleep(0)
        log.append("b")

    @mediator.handler
    async def fails_later(evt: OrderPlaced) -> None:
        await asyncio.sleep(0)
        log.append("c")
        raise second_error

    @mediator.handler
    def sync_ok(evt: OrderPlaced) -> None:
        log.append("d")

    with pytest.raises(catga.PublishError) as caught:
        await mediator.publish(OrderPlaced("o-1"))
    assert sorted(log) == ["a", "b", "c", "d"]
    assert caught.value.exceptions == (first_error, second_error)  # in run order
    assert str(caught.value) == "`2` of `4` handlers of `OrderPlaced` failed (2 sub-exceptions)"
    assert isinstance(caught.value, ExceptionGroup)


async def test_except_star_picks_failures(mediator: catga.Mediator) -> None:
    mediator.register(OrderPlaced, lambda evt: (_ for _ in ()).throw(KeyError("k")))
    caught: list[BaseException] = []
    try:
        await mediator.publish(OrderPlaced("o-1"))
    except* KeyError as group:
        caught.extend(group.exceptions)
    assert len(caught) == 1
    assert isinstance(caught[0], KeyError)


async def test_publishing_a_request_raises_type_error(mediator: catga.Mediator) -> None:
    mediator.register(PlaceOrder, lambda cmd: "")
    with pytest.raises(TypeError, match="`PlaceOrder` is a request: send it with `send`, not `publish`"):
        await mediator.publish(PlaceOrder("x"))


async def test_publishing_an_unknown_plain_object(mediator: catga.Mediator) -> None:
    with pytest.raises(catga.HandlerNotFound, match="`PlainEvent`"):
        await mediator.publish(PlainEvent("x"))
    with pytest.raises(catga.HandlerNotFound, match="`NoneType`"):
        await mediator.publish(None)


async def test_plain_types_registered_as_events(mediator: catga.Mediator) -> None:
    log: list[str] = []
    mediator.register(PlainEvent, lambda evt: log.append(f"plain {evt.name}"), kind="event")

    @mediator.handler(kind="event")
    async def on_sub(evt: PlainSubEvent) -> None:
        log.append(f"sub {evt.name}")

    mediator.register(PlainEvent, lambda evt: log.append("second"))  # kind inherited: another handler
    await mediator.publish(PlainSubEvent("x"))
    assert log == ["plain x", "sub x", "second"]
    with pytest.raises(TypeError, match="`PlainSubEvent` is an event"):
        await mediator.send(PlainSubEvent("x"))
    with pytest.raises(ValueError, match="`PlainSubEvent` is an event"):
        mediator.register(PlainSubEvent, lambda evt: None, kind="request")


async def test_context_around_each_handler_with_behaviours(mediator: catga.Mediator) -> None:
    seen: list[object] = []

    async def behavior(message: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        return await call_next(message)

    mediator.add_behavior(behavior)

    @mediator.handler
    async def first(evt: OrderPlaced) -> None:
        await asyncio.sleep(0)
        seen.append(CURRENT_MESSAGE.get())

    @mediator.handler
    def second(evt: OrderPlaced) -> None:
        seen.append(CURRENT_MESSAGE.get())

    event = OrderPlaced("o-1")
    await mediator.publish(event)
    assert seen == [event, event] or seen == [event, event][::-1]
    assert CURRENT_MESSAGE.get() is None


async def test_a_handler_raising_cancelled_error_stops_the_publish(mediator: catga.Mediator) -> None:
    @mediator.handler
    async def cancels(evt: OrderPlaced) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await mediator.publish(OrderPlaced("o-1"))


# --------------------------------------------------------------------------- concurrent publish


async def test_concurrent_handlers_overlap() -> None:
    mediator = mediator_for("concurrent")
    first_ran, second_ran = asyncio.Event(), asyncio.Event()

    # Each waits for the other: sequentially this would never finish.
    @mediator.handler
    async def first(evt: OrderPlaced) -> None:
        first_ran.set()
        await second_ran.wait()

    @mediator.handler
    async def second(evt: OrderPlaced) -> None:
        second_ran.set()
        await first_ran.wait()

    await asyncio.wait_for(mediator.publish(OrderPlaced("o-1")), timeout=5)


@pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="3.11 has no eager tasks: every async handler runs in a task of its own (docs/decisions.md)",
)
async def test_concurrent_publish_yields_to_the_loop_only_for_handlers_that_suspend() -> None:
    mediator = mediator_for("concurrent")
    loop = asyncio.get_running_loop()
    log: list[str] = []

    @mediator.handler
    async def quick(evt: OrderPlaced) -> None:
        log.append("quick")

    @mediator.handler
    def sync(evt: OrderPlaced) -> None:
        log.append("sync")

    # A callback scheduled before the publish runs only if the publish gives the loop a cycle.
    loop.call_soon(log.append, "loop")
    await mediator.publish(OrderPlaced("o-1"))
    assert log == ["quick", "sync"]
    await asyncio.sleep(0)
    assert log == ["quick", "sync", "loop"]

    @mediator.handler
    async def slow(evt: OrderPlaced) -> None:
        await asyncio.sleep(0)
        log.append("slow")

    log.clear()
    loop.call_soon(log.append, "loop")
    await mediator.publish(OrderPlaced("o-2"))
    assert log == ["quick", "sync", "loop", "slow"]


async def test_concurrent_publish_forwards_sent_values_and_thrown_errors() -> None:
    mediator = mediator_for("concurrent")
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    failing: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    results: list[object] = []

    @mediator.handler
    async def waits_for_value(evt: OrderPlaced) -> None:
        results.append(await future)
        results.append(await asyncio.sleep(0, "again"))

    @mediator.handler
    async def waits_for_error(evt: OrderPlaced) -> None:
        try:
            await failing
        except LookupError as exc:
            results.append(exc)
            raise

    async def resolve() -> None:
        await asyncio.sleep(0)
        future.set_result(42)
        failing.set_exception(LookupError("missing"))

    resolver = asyncio.create_task(resolve())
    with pytest.raises(catga.PublishError) as caught:
        await mediator.publish(OrderPlaced("o-1"))
    await resolver
    assert results.index(42) < results.index("again")
    assert any(isinstance(item, LookupError) for item in results)
    assert [type(e) for e in caught.value.exceptions] == [LookupError]


async def test_concurrent_handlers_have_contexts_of_their_own() -> None:
    mediator = mediator_for("concurrent")
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="publisher")
    seen: list[str] = []

    @mediator.handler
    async def first(evt: OrderPlaced) -> None:
        var.set("first")
        await asyncio.sleep(0)
        seen.append(var.get())

    @mediator.handler
    def second(evt: OrderPlaced) -> None:
        seen.append(var.get())
        var.set("second")

    await mediator.publish(OrderPlaced("o-1"))
    assert seen == ["publisher", "first"]
    assert var.get() == "publisher"


async def test_cancelling_a_concurrent_publish_cancels_its_handlers() -> None:
    mediator = mediator_for("concurrent")

    async def behavior(message: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        return await call_next(message)

    mediator.add_behavior(behavior)
    started = asyncio.Event()
    cleaned: list[str] = []

    @mediator.handler
    async def quick(evt: OrderPlaced) -> None:
        cleaned.append("quick done")

    @mediator.handler
    async def slow(evt: OrderPlaced) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(f"slow cleanup, context {CURRENT_MESSAGE.get() is not None}")

    task = asyncio.create_task(mediator.publish(OrderPlaced("o-1")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["quick done", "slow cleanup, context True"]
    assert CURRENT_MESSAGE.get() is None
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert not mediator._tasks


async def test_concurrent_publish_with_a_failing_first_step_and_suspended_handlers() -> None:
    mediator = mediator_for("concurrent")
    error = RuntimeError("boom")
    done: list[str] = []

    @mediator.handler
    async def suspended(evt: OrderPlaced) -> None:
        await asyncio.sleep(0.01)
        done.append("suspended")

    @mediator.handler
    def sync_fails(evt: OrderPlaced) -> None:
        raise error

    with pytest.raises(catga.PublishError) as caught:
        await mediator.publish(OrderPlaced("o-1"))
    assert caught.value.exceptions == (error,)
    assert done == ["suspended"]
    assert str(caught.value).startswith("`1` of `2` handlers of `OrderPlaced` failed")


async def test_concurrent_publish_of_a_non_coroutine_awaitable() -> None:
    mediator = mediator_for("concurrent")
    loop = asyncio.get_running_loop()

    def returns_future(evt: OrderPlaced) -> "asyncio.Future[None]":
        future: asyncio.Future[None] = loop.create_future()
        loop.call_soon(future.set_result, None)
        return future

    mediator.register(OrderPlaced, factory=lambda: returns_future)  # an async route of unknown product
    await mediator.publish(OrderPlaced("o-1"))


async def test_stop_waits_for_background_handlers() -> None:
    mediator = mediator_for("concurrent")
    release = asyncio.Event()
    finished: list[str] = []

    @mediator.handler
    async def slow(evt: OrderPlaced) -> None:
        await release.wait()
        finished.append("slow")

    publish = asyncio.create_task(mediator.publish(OrderPlaced("o-1")))
    await asyncio.sleep(0)
    assert len(mediator._tasks) == 1
    asyncio.get_running_loop().call_later(0.01, release.set)
    await mediator.stop(timeout=5)
    assert finished == ["slow"]
    await publish


async def test_stop_cancels_handlers_that_outlive_the_timeout() -> None:
    mediator = mediator_for("concurrent")

    @mediator.handler
    async def stuck(evt: OrderPlaced) -> None:
        await asyncio.Event().wait()

    publish = asyncio.create_task(mediator.publish(OrderPlaced("o-1")))
    await asyncio.sleep(0)
    await mediator.stop(timeout=0.01)
    with pytest.raises(asyncio.CancelledError):
        await publish
    assert not mediator._tasks


async def test_concurrent_handler_with_a_timeout_that_does_not_fire() -> None:
    mediator = mediator_for("concurrent")
    done: list[str] = []

    @mediator.handler
    async def bounded(evt: OrderPlaced) -> None:
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        done.append("bounded")

    await mediator.publish(OrderPlaced("o-1"))
    assert done == ["bounded"]


async def test_concurrent_handler_whose_timeout_fires() -> None:
    mediator = mediator_for("concurrent")

    @mediator.handler
    async def too_slow(evt: OrderPlaced) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)

    with pytest.raises(catga.PublishError) as caught:
        await mediator.publish(OrderPlaced("o-1"))
    assert [type(exc) for exc in caught.value.exceptions] == [TimeoutError]
