"""`publish_async` / `publish` of catga.compat.mediatr (not in mediatr): any number of handlers
per event type, run in order through the matching behaviours; failures raised together."""

import asyncio
import gc
from typing import Any

import pytest

import catga
from catga.compat import mediatr
from catga.compat.mediatr import InvalidRequest, Mediator


class OrderPlaced:
    def __init__(self, order_id: str) -> None:
        self.order_id = order_id


class BigOrderPlaced(OrderPlaced):
    pass


class Unrelated:
    pass


def recorder(log: list[str], name: str, *, is_async: bool = True) -> Any:
    if is_async:

        async def on_event(event: OrderPlaced) -> None:
            log.append(f"{name}:{event.order_id}")

    else:

        def on_event(event: OrderPlaced) -> None:  # type: ignore[misc]
            log.append(f"{name}:{event.order_id}")

    on_event.__qualname__ = name
    return on_event


async def test_every_handler_runs_in_registration_order() -> None:
    log: list[str] = []
    for name in ("email", "stock", "audit"):
        Mediator.register_event_handler(recorder(log, name))
    assert await Mediator().publish_async(OrderPlaced("o-1")) is None
    assert log == ["email:o-1", "stock:o-1", "audit:o-1"]


async def test_handlers_of_a_base_class_and_of_any_get_the_event() -> None:
    log: list[str] = []
    Mediator.register_event_handler(recorder(log, "base"))

    async def anything(event: Any) -> None:
        log.append("any")

    async def unrelated(event: Unrelated) -> None:
        log.append("unrelated")

    Mediator.register_event_handler(anything)
    Mediator.register_event_handler(unrelated)
    await Mediator().publish_async(BigOrderPlaced("o-2"))
    assert log == ["base:o-2", "any"]


async def test_no_handler_is_a_no_op() -> None:
    await Mediator().publish_async(Unrelated())
    Mediator().publish(Unrelated())


async def test_a_handler_registered_twice_runs_once() -> None:
    log: list[str] = []
    handler = recorder(log, "once")
    Mediator.register_event_handler(handler)
    Mediator.register_event_handler(handler)
    await Mediator().publish_async(OrderPlaced("o-3"))
    assert log == ["once:o-3"]


async def test_behaviours_run_around_each_handler() -> None:
    log: list[str] = []
    Mediator.register_event_handler(recorder(log, "first"))
    Mediator.register_event_handler(recorder(log, "second"))

    async def around(event: OrderPlaced, next: Any) -> Any:
        log.append("before")
        await next()
        log.append("after")

    Mediator.register_behavior(around)
    await Mediator().publish_async(OrderPlaced("o-4"))
    assert log == ["before", "first:o-4", "after", "before", "second:o-4", "after"]


async def test_a_failing_handler_does_not_stop_the_others() -> None:
    log: list[str] = []

    async def broken(event: OrderPlaced) -> None:
        raise ValueError(f"cannot email about {event.order_id}")

    Mediator.register_event_handler(broken)
    Mediator.register_event_handler(recorder(log, "stock"))
    with pytest.raises(catga.PublishError) as caught:
        await Mediator().publish_async(OrderPlaced("o-5"))
    assert log == ["stock:o-5"]
    assert [str(error) for error in caught.value.exceptions] == ["cannot email about o-5"]
    assert "`1` of `2` handlers of `OrderPlaced` failed" in str(caught.value)


async def test_class_event_handlers_are_built_per_event_by_the_manager() -> None:
    built: list[type] = []

    class OnOrder:
        async def handle(self, event: OrderPlaced) -> None:
            built.append(type(self))

    def manager(cls: type, is_behavior: bool = False) -> Any:
        built.append(cls)
        return cls()

    Mediator.register_event_handler(OnOrder)
    mediator = Mediator(manager)
    await mediator.publish_async(OrderPlaced("a"))
    await mediator.publish_async(OrderPlaced("b"))
    assert built == [OnOrder] * 4


async def test_a_type_may_have_a_request_handler_and_event_handlers() -> None:
    log: list[str] = []

    async def handle(request: OrderPlaced) -> str:
        return "sent"

    Mediator.register_handler(handle)
    Mediator.register_event_handler(recorder(log, "published"))
    mediator = Mediator()
    assert await mediator.send_async(OrderPlaced("o-6")) == "sent"
    await mediator.publish_async(OrderPlaced("o-6"))
    assert log == ["published:o-6"]


async def test_handlers_registered_after_a_publish_are_seen() -> None:
    log: list[str] = []
    mediator = Mediator()
    await mediator.publish_async(OrderPlaced("before"))
    Mediator.register_event_handler(recorder(log, "late"))
    await mediator.publish_async(OrderPlaced("after"))
    mediatr.__event_handlers__.clear()
    await mediator.publish_async(OrderPlaced("cleared"))
    assert log == ["late:after"]


def test_publish_runs_sync_handlers_without_an_event_loop() -> None:
    log: list[str] = []
    Mediator.register_event_handler(recorder(log, "sync", is_async=False))
    Mediator.publish(OrderPlaced("o-7"))
    assert log == ["sync:o-7"]


def test_publish_refuses_an_async_handler_and_still_runs_the_others() -> None:
    log: list[str] = []
    Mediator.register_event_handler(recorder(log, "async"))
    Mediator.register_event_handler(recorder(log, "sync", is_async=False))
    with pytest.raises(catga.PublishError) as caught:
        Mediator().publish(OrderPlaced("o-8"))
    gc.collect()  # the async handler's coroutine was closed: no "never awaited" warning
    assert log == ["sync:o-8"]
    (error,) = caught.value.exceptions
    assert isinstance(error, TypeError)
    assert "`'async'` returned an awaitable for `OrderPlaced`" in str(error)
    assert "publish_async" in str(error)


async def test_publish_on_the_class_and_with_nothing() -> None:
    log: list[str] = []
    Mediator.register_event_handler(recorder(log, "static"))
    await Mediator.publish_async(OrderPlaced("o-9"))
    assert log == ["static:o-9"]
    with pytest.raises(InvalidRequest):
        await Mediator.publish_async(None)
    with pytest.raises(InvalidRequest):
        Mediator.publish(None)


async def test_publish_concurrently_from_many_tasks() -> None:
    log: list[str] = []
    Mediator.register_event_handler(recorder(log, "h"))
    await asyncio.gather(*(Mediator().publish_async(OrderPlaced(str(n))) for n in range(50)))
    assert sorted(log) == sorted(f"h:{n}" for n in range(50))


def test_find_event_handlers_lists_them_in_order() -> None:
    log: list[str] = []
    first, second = recorder(log, "a"), recorder(log, "b")
    Mediator.register_event_handler(first)
    Mediator.register_event_handler(second)
    assert mediatr.find_event_handlers(BigOrderPlaced("x")) == [first, second]
    assert mediatr.find_event_handlers(Unrelated()) == []
