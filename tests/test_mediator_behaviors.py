"""User behaviours, the message context, correlation and cancellation (API.md sections 1, 3, 5)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import catga
from catga._core import CURRENT_MESSAGE

Next = Callable[[Any], Awaitable[Any]]


class PlaceOrder(catga.Command[str]):
    customer: str


class GetOrder(catga.Query[str]):
    order_id: str


class OrderPlaced(catga.Event):
    order_id: str


def tracer(log: list[str], name: str) -> Callable[[Any, Next], Awaitable[Any]]:
    async def behavior(message: Any, call_next: Next) -> Any:
        log.append(f"{name}>")
        try:
            return await call_next(message)
        finally:
            log.append(f"<{name}")

    behavior.__qualname__ = name
    return behavior


async def test_behaviours_run_outermost_first_in_registration_order() -> None:
    log: list[str] = []
    mediator = catga.Mediator()
    mediator.add_behavior(tracer(log, "a"))
    mediator.add_behavior(tracer(log, "b"))

    @mediator.handler
    async def handle(cmd: PlaceOrder) -> str:
        log.append("handler")
        return "done"

    assert await mediator.send(PlaceOrder("x")) == "done"
    assert log == ["a>", "b>", "handler", "<b", "<a"]


async def test_for_type_matches_subclasses() -> None:
    log: list[str] = []
    mediator = catga.Mediator()
    mediator.add_behavior(tracer(log, "commands"), for_type=catga.Command)
    mediator.add_behavior(tracer(log, "queries"), for_type=GetOrder)
    mediator.register(PlaceOrder, lambda cmd: "placed")
    mediator.register(GetOrder, lambda query: "got")
    assert await mediator.send(PlaceOrder("x")) == "placed"
    assert log == ["commands>", "<commands"]
    log.clear()
    assert await mediator.send(GetOrder("o")) == "got"
    assert log == ["queries>", "<queries"]


async def test_a_behaviour_may_replace_the_message_or_short_circuit() -> None:
    mediator = catga.Mediator()

    async def rename(message: Any, call_next: Next) -> Any:
        if isinstance(message, PlaceOrder) and message.customer == "cached":
            return "from the behaviour"
        return await call_next(PlaceOrder(message.customer.upper()))

    mediator.add_behavior(rename)
    calls: list[str] = []

    @mediator.handler
    async def handle(cmd: PlaceOrder) -> str:
        calls.append(cmd.customer)
        return cmd.customer

    assert await mediator.send(PlaceOrder("ada")) == "ADA"
    assert await mediator.send(PlaceOrder("cached")) == "from the behaviour"
    assert calls == ["ADA"]


async def test_adding_a_behaviour_recompiles_routes() -> None:
    log: list[str] = []
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, lambda cmd: "x")
    assert await mediator.send(PlaceOrder("x")) == "x"
    mediator.add_behavior(tracer(log, "late"))
    assert await mediator.send(PlaceOrder("x")) == "x"
    assert log == ["late>", "<late"]


async def test_a_raising_behaviour() -> None:
    error = PermissionError("customer `x` may not order")
    mediator = catga.Mediator()

    async def deny(message: Any, call_next: Next) -> Any:
        raise error

    mediator.add_behavior(deny)
    mediator.register(PlaceOrder, lambda cmd: "never")
    with pytest.raises(PermissionError) as caught:
        await mediator.send(PlaceOrder("x"))
    assert caught.value is error
    result = await mediator.send_result(PlaceOrder("x"))
    assert isinstance(result.error, catga.HandlerFailed)
    assert result.error.__cause__ is error
    with pytest.raises(PermissionError):
        result.unwrap()


async def test_sync_handler_under_an_async_behaviour() -> None:
    log: list[str] = []
    mediator = catga.Mediator(config=catga.Config.minimal())
    mediator.add_behavior(tracer(log, "t"))
    mediator.register(PlaceOrder, lambda cmd: "sync")
    assert await mediator.send(PlaceOrder("x")) == "sync"
    _, is_async, with_context = mediator._route(PlaceOrder)[1][0]
    assert (is_async, with_context) == (True, True)
    with pytest.raises(TypeError, match="async"):
        mediator.send_sync(PlaceOrder("x"))


async def test_sync_behaviours() -> None:
    log: list[str] = []

    def sync_behavior(message: Any, call_next: Callable[[Any], Any]) -> Any:
        log.append("sync>")
        return call_next(message)

    def short_circuit(message: Any, call_next: Callable[[Any], Any]) -> Any:
        return "short" if message.order_id == "cached" else call_next(message)

    mediator = catga.Mediator(config=catga.Config.minimal())
    mediator.add_behavior(sync_behavior)
    mediator.add_behavior(short_circuit, for_type=GetOrder)
    mediator.register(GetOrder, lambda query: "sync handler")
    assert mediator._route(GetOrder)[1][0][1:] == (False, True)  # a sync route, with context
    assert mediator.send_sync(GetOrder("o")) == "sync handler"
    assert mediator.send_sync(GetOrder("cached")) == "short"
    assert await mediator.send(GetOrder("o")) == "sync handler"

    async def handle(query: GetOrder) -> str:
        return "async handler"

    other = catga.Mediator()
    other.add_behavior(sync_behavior)
    other.add_behavior(short_circuit)
    other.register(GetOrder, handle)
    assert await other.send(GetOrder("o")) == "async handler"  # the sync behaviour returns the awaitable
    assert await other.send(GetOrder("cached")) == "short"
    assert log == ["sync>", "sync>", "sync>", "sync>", "sync>"]


async def test_behaviour_objects() -> None:
    class Counter:
        def __init__(self) -> None:
            self.count = 0

        async def __call__(self, message: Any, call_next: Next) -> Any:
            self.count += 1
            return await call_next(message)

    counter = Counter()
    mediator = catga.Mediator()
    assert mediator.add_behavior(counter) is counter
    mediator.register(PlaceOrder, lambda cmd: "x")
    await mediator.send(PlaceOrder("x"))
    assert counter.count == 1
    assert mediator._route(PlaceOrder)[1][0][1] is True


def test_bad_behaviours() -> None:
    mediator = catga.Mediator()
    with pytest.raises(TypeError, match="`5` is not callable"):
        mediator.add_behavior(5)

    async def one_param(message: Any) -> Any:
        return message

    with pytest.raises(TypeError, match=r"`.*one_param` must take two positional parameters"):
        mediator.add_behavior(one_param)
    with pytest.raises(TypeError, match="`for_type`"):
        mediator.add_behavior(tracer([], "x"), for_type="Command")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- the context


async def test_context_is_set_only_under_behaviours() -> None:
    seen: list[catga.MessageContext | None] = []
    mediator = catga.Mediator(config=catga.Config.minimal())

    @mediator.handler
    async def handle(cmd: PlaceOrder) -> str:
        seen.append(catga.current_context())
        return ""

    message = PlaceOrder("x")
    await mediator.send(message)
    assert seen == [None]  # no behaviour, no frame to set it in

    mediator.add_behavior(tracer([], "t"))
    await mediator.send(message)
    context = seen[1]
    assert context is not None
    assert context.message is message
    assert context.message_id == message.message_id
    assert context.correlation_id == message.message_id
    assert catga.current_context() is None


async def test_builtins_set_the_context_without_user_behaviours() -> None:
    seen: list[catga.MessageContext | None] = []
    mediator = catga.Mediator()  # the default pipeline: built-ins on

    @mediator.handler
    async def handle(cmd: PlaceOrder) -> str:
        seen.append(catga.current_context())
        return ""

    message = PlaceOrder("x")
    await mediator.send(message)
    assert seen[0] is not None
    assert seen[0].message is message
    assert catga.current_context() is None


async def test_correlation_flows_to_messages_made_in_handlers() -> None:
    mediator = catga.Mediator()
    mediator.add_behavior(tracer([], "t"))
    made: list[catga.Message] = []

    @mediator.handler
    async def place(cmd: PlaceOrder) -> str:
        event = OrderPlaced("o-1")
        made.append(event)
        await mediator.publish(event)
        return "o-1"

    @mediator.handler
    async def on_placed(evt: OrderPlaced) -> None:
        made.append(GetOrder(evt.order_id))

    root = PlaceOrder("ada")
    await mediator.send(root)
    event, query = made
    assert root.correlation_id is None
    assert event.correlation_id == root.message_id
    assert query.correlation_id == root.message_id  # the event's effective correlation id

    made.clear()
    await mediator.send(PlaceOrder("bob", correlation_id=1234))
    assert [m.correlation_id for m in made] == [1234, 1234]


async def test_without_behaviours_new_messages_are_top_level() -> None:
    mediator = catga.Mediator(config=catga.Config.minimal())
    made: list[catga.Message] = []

    @mediator.handler
    async def place(cmd: PlaceOrder) -> str:
        made.append(OrderPlaced("o-1"))
        return ""

    await mediator.send(PlaceOrder("ada"))
    assert made[0].correlation_id is None


async def test_context_is_reset_after_failures() -> None:
    mediator = catga.Mediator()
    mediator.add_behavior(tracer([], "t"))

    @mediator.handler
    async def fail(cmd: PlaceOrder) -> str:
        await asyncio.sleep(0)
        raise ValueError("x")

    with pytest.raises(ValueError, match="x"):
        await mediator.send(PlaceOrder("x"))
    assert CURRENT_MESSAGE.get() is None


# -------------------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("with_behaviour", [False, True])
async def test_cancelling_a_send_cancels_the_handler_and_leaks_nothing(with_behaviour: bool) -> None:
    mediator = catga.Mediator()
    log: list[str] = []
    if with_behaviour:
        mediator.add_behavior(tracer(log, "t"))
    started = asyncio.Event()
    never = asyncio.Event()

    @mediator.handler
    async def slow(cmd: PlaceOrder) -> str:
        started.set()
        try:
            await never.wait()
        finally:
            log.append("handler cleanup")
        return "never"

    task = asyncio.create_task(mediator.send(PlaceOrder("x")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "handler cleanup" in log
    if with_behaviour:
        assert log == ["t>", "handler cleanup", "<t"]
    assert CURRENT_MESSAGE.get() is None
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_cancelling_send_result_propagates() -> None:
    mediator = catga.Mediator()
    mediator.add_behavior(tracer([], "t"))
    started = asyncio.Event()

    @mediator.handler
    async def slow(cmd: PlaceOrder) -> str:
        started.set()
        await asyncio.Event().wait()
        return ""

    task = asyncio.create_task(mediator.send_result(PlaceOrder("x")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert CURRENT_MESSAGE.get() is None


async def test_behaviours_apply_to_each_event_handler() -> None:
    log: list[str] = []
    mediator = catga.Mediator()
    mediator.add_behavior(tracer(log, "t"))
    contexts: list[object] = []

    @mediator.handler
    async def first(evt: OrderPlaced) -> None:
        contexts.append(CURRENT_MESSAGE.get())

    @mediator.handler
    def second(evt: OrderPlaced) -> None:
        contexts.append(CURRENT_MESSAGE.get())

    event = OrderPlaced("o-1")
    await mediator.publish(event)
    assert log == ["t>", "<t", "t>", "<t"]
    assert contexts == [event, event]
    assert CURRENT_MESSAGE.get() is None
