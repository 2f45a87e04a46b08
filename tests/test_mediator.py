"""`catga.Mediator`: registration, dispatch, `send_result`, `send_many`, `send_sync` (API.md section 3)."""

import asyncio
import functools
import inspect
from dataclasses import dataclass
from typing import Any

import pytest

import catga
from catga._core import CURRENT_MESSAGE, Dispatcher


class PlaceOrder(catga.Command[str]):
    customer: str


class RushOrder(PlaceOrder):
    pass


class VeryRushOrder(RushOrder):
    pass


class GetOrder(catga.Query[dict[str, str]]):
    order_id: str


class OrderPlaced(catga.Event):
    order_id: str


@dataclass
class PlainRequest:
    name: str


async def place_order(cmd: PlaceOrder) -> str:
    return f"order for {cmd.customer}"


# ------------------------------------------------------------------------------------ the class


def test_send_and_publish_are_the_cores_own_methods() -> None:
    # No Python frame of ours on the hot path: the methods are inherited, not redefined.
    assert issubclass(catga.Mediator, Dispatcher)
    assert "send" not in vars(catga.Mediator)
    assert "publish" not in vars(catga.Mediator)
    mediator = catga.Mediator()
    assert type(mediator).send is Dispatcher.send
    assert "publish" not in vars(mediator)


def test_constructor_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="`'parallel'`"):
        catga.Mediator(publish="parallel")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`transport` must be a `catga\.transports\.Transport`"):
        catga.Mediator(transport=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        catga.Mediator(catga.Config())  # type: ignore[call-arg]  # keyword-only


def test_repr() -> None:
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, place_order)
    assert repr(mediator) == "<catga.Mediator: 1 handlers, 0 behaviours, publish='sequential'>"


async def test_built_outside_a_loop_and_used_from_successive_runs() -> None:
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, place_order)

    def use() -> list[str]:
        async def main() -> list[str]:
            async with mediator:
                return [await mediator.send(PlaceOrder("ada")), await mediator.send(PlaceOrder("bob"))]

        return asyncio.run(main())

    loop_free = await asyncio.to_thread(lambda: [use(), use()])
    assert loop_free == [["order for ada", "order for bob"]] * 2


# ------------------------------------------------------------------------------- registration


async def test_decorator_takes_the_type_from_the_annotation() -> None:
    mediator = catga.Mediator()

    @mediator.handler
    async def handle(cmd: PlaceOrder) -> str:
        return cmd.customer

    assert inspect.iscoroutinefunction(handle)  # returned unchanged
    assert await mediator.send(PlaceOrder("ada")) == "ada"


async def test_decorator_with_an_explicit_type() -> None:
    mediator = catga.Mediator()

    @mediator.handler(PlaceOrder)
    async def handle(cmd) -> str:  # type: ignore[no-untyped-def]
        return str(cmd.customer)

    assert await mediator.send(PlaceOrder("ada")) == "ada"
    assert handle.__name__ == "handle"


async def test_string_annotations_resolve_in_module_and_function_scope() -> None:
    mediator = catga.Mediator()

    class LocalQuery(catga.Query[int]):
        pass

    @mediator.handler
    async def module_level(cmd: "PlaceOrder") -> str:
        return "module"

    @mediator.handler
    def local(query: "LocalQuery") -> int:
        return 7

    assert await mediator.send(PlaceOrder("x")) == "module"
    assert await mediator.send(LocalQuery()) == 7


async def test_generic_annotations_use_their_origin() -> None:
    mediator = catga.Mediator()

    @mediator.handler
    async def handle(query: catga.Query[int]) -> int:
        return 1

    class Count(catga.Query[int]):
        pass

    assert await mediator.send(Count()) == 1


async def test_register_a_sync_function() -> None:
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, lambda cmd: cmd.customer.upper())
    assert await mediator.send(PlaceOrder("ada")) == "ADA"


async def test_register_an_object_with_handle() -> None:
    class Handler:
        def __init__(self) -> None:
            self.seen: list[str] = []

        async def handle(self, cmd: PlaceOrder) -> str:
            self.seen.append(cmd.customer)
            return "handled"

    handler = Handler()
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, handler)
    assert await mediator.send(PlaceOrder("ada")) == "handled"
    assert handler.seen == ["ada"]

    other = catga.Mediator()
    other.handler(handler)  # the type comes from `handle`'s annotation
    assert await other.send(PlaceOrder("bob")) == "handled"


async def test_register_a_callable_object() -> None:
    class Callable_:
        def __call__(self, query: GetOrder) -> dict[str, str]:
            return {"id": query.order_id}

    mediator = catga.Mediator()
    mediator.handler(Callable_())
    assert await mediator.send(GetOrder("o-1")) == {"id": "o-1"}


async def test_handler_class_is_instantiated_per_message() -> None:
    made: list[object] = []
    mediator = catga.Mediator()

    @mediator.handler
    class Handler:
        def __init__(self) -> None:
            made.append(self)

        async def handle(self, cmd: PlaceOrder) -> str:
            return cmd.customer

    assert isinstance(Handler, type)
    assert await mediator.send(PlaceOrder("a")) == "a"
    assert await mediator.send(PlaceOrder("b")) == "b"
    assert len(made) == 2
    assert made[0] is not made[1]


async def test_handler_class_with_explicit_type_and_sync_handle() -> None:
    mediator = catga.Mediator()

    @mediator.handler(GetOrder)
    class Handler:
        def handle(self, query):  # type: ignore[no-untyped-def]
            return {"id": query.order_id}

    assert mediator.send_sync(GetOrder("o-1")) == {"id": "o-1"}


async def test_factory_is_called_per_message() -> None:
    calls: list[int] = []

    class Handler:
        async def handle(self, cmd: PlaceOrder) -> str:
            return cmd.customer

    def make() -> Handler:
        calls.append(1)
        return Handler()

    mediator = catga.Mediator()
    mediator.register(PlaceOrder, factory=make)
    assert await mediator.send(PlaceOrder("a")) == "a"
    assert await mediator.send(PlaceOrder("b")) == "b"
    assert calls == [1, 1]


async def test_factory_of_unknown_products() -> None:
    def make_sync_function():  # type: ignore[no-untyped-def]  # no annotation: product unknown
        return lambda query: {"id": query.order_id}

    def make_async_object():  # type: ignore[no-untyped-def]
        class Handler:
            async def handle(self, cmd: PlaceOrder) -> str:
                return "async " + cmd.customer

        return Handler()

    mediator = catga.Mediator()
    mediator.register(GetOrder, factory=make_sync_function)
    mediator.register(PlaceOrder, factory=make_async_object)
    assert await mediator.send(GetOrder("o-1")) == {"id": "o-1"}
    assert await mediator.send(PlaceOrder("ada")) == "async ada"
    # An unknown product might be async: such a route cannot run without a loop.
    with pytest.raises(TypeError, match="async"):
        mediator.send_sync(GetOrder("o-1"))


async def test_factory_annotated_with_a_sync_product_runs_in_send_sync() -> None:
    class Handler:
        def handle(self, query: GetOrder) -> dict[str, str]:
            return {"id": query.order_id}

    def make() -> Handler:
        return Handler()

    mediator = catga.Mediator()
    mediator.register(GetOrder, factory=make)
    assert mediator.send_sync(GetOrder("o-2")) == {"id": "o-2"}
    other = catga.Mediator()
    other.register(GetOrder, factory=Handler)  # a class is a factory too
    assert other.send_sync(GetOrder("o-3")) == {"id": "o-3"}


async def test_partial_handlers() -> None:
    async def handle(prefix: str, cmd: PlaceOrder) -> str:
        return prefix + cmd.customer

    mediator = catga.Mediator()
    mediator.register(PlaceOrder, functools.partial(handle, "to "))
    assert await mediator.send(PlaceOrder("ada")) == "to ada"


async def test_bound_methods() -> None:
    class Service:
        async def place(self, cmd: PlaceOrder) -> str:
            return "placed"

    mediator = catga.Mediator()
    mediator.handler(Service().place)
    assert await mediator.send(PlaceOrder("x")) == "placed"


# ----------------------------------------------------------------------------- bad registrations


def test_non_callable_handler() -> None:
    mediator = catga.Mediator()
    with pytest.raises(TypeError, match="`42` is not callable"):
        mediator.register(PlaceOrder, 42)
    with pytest.raises(TypeError, match="handle"):
        mediator.register(PlaceOrder, type("H", (), {"handle": 5})())


def test_handler_without_parameters() -> None:
    mediator = catga.Mediator()

    async def no_params() -> str:
        return ""

    with pytest.raises(TypeError, match=r"`.*no_params` takes no parameters"):
        mediator.handler(no_params)
    with pytest.raises(TypeError, match="no_params"):
        mediator.register(PlaceOrder, no_params)


def test_unannotated_handler_without_a_type() -> None:
    mediator = catga.Mediator()

    async def unannotated(cmd):  # type: ignore[no-untyped-def]
        return cmd

    with pytest.raises(TypeError, match=r"`.*unannotated` has no type annotation on its first parameter `cmd`"):
        mediator.handler(unannotated)
    mediator.register(PlaceOrder, unannotated)  # fine with an explicit type


def test_unresolvable_or_non_class_annotations() -> None:
    mediator = catga.Mediator()

    async def unknown(cmd: "NoSuchType") -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    async def union(cmd: PlaceOrder | GetOrder) -> None:
        pass

    with pytest.raises(TypeError, match=r"unknown.*NameError"):
        mediator.handler(unknown)
    with pytest.raises(TypeError, match=r"union.*not a class"):
        mediator.handler(union)


def test_handler_with_a_second_required_parameter() -> None:
    async def two(cmd: PlaceOrder, other: int) -> None:
        pass

    async def keyword_only(*, cmd: PlaceOrder) -> None:
        pass

    async def fine(cmd: PlaceOrder, other: int = 0, *args: Any, **kwargs: Any) -> None:
        pass

    mediator = catga.Mediator()
    with pytest.raises(TypeError, match=r"`.*two` has a second required parameter `other`"):
        mediator.handler(two)
    with pytest.raises(TypeError, match=r"keyword_only.*positional"):
        mediator.handler(keyword_only)
    mediator.handler(fine)


def test_handler_class_needing_arguments() -> None:
    class NeedsDb:
        def __init__(self, db: object) -> None:
            self.db = db

        async def handle(self, cmd: PlaceOrder) -> str:
            return ""

    mediator = catga.Mediator()
    with pytest.raises(TypeError, match=r"`.*NeedsDb` needs constructor arguments"):
        mediator.handler(NeedsDb)
    mediator.register(PlaceOrder, NeedsDb(db=None))  # an instance is fine


def test_handler_and_factory_are_exclusive() -> None:
    mediator = catga.Mediator()
    with pytest.raises(TypeError, match="not both"):
        mediator.register(PlaceOrder, place_order, factory=lambda: place_order)
    with pytest.raises(TypeError, match="factory"):
        mediator.register(PlaceOrder)
    with pytest.raises(TypeError, match="not callable"):
        mediator.register(PlaceOrder, factory=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no arguments"):
        mediator.register(PlaceOrder, factory=lambda x: x)  # type: ignore[arg-type,misc]


def test_register_takes_a_class() -> None:
    mediator = catga.Mediator()
    with pytest.raises(TypeError, match="must be a class"):
        mediator.register(PlaceOrder("x"), place_order)  # type: ignore[arg-type]


def test_kinds_are_checked() -> None:
    mediator = catga.Mediator()
    with pytest.raises(ValueError, match="`'events'`"):
        mediator.register(PlaceOrder, place_order, kind="events")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`PlaceOrder` is a request"):
        mediator.register(PlaceOrder, place_order, kind="event")
    with pytest.raises(ValueError, match=r"`OrderPlaced` is a `catga\.Event`"):
        mediator.register(OrderPlaced, lambda evt: None, kind="request")
    mediator.register(PlainRequest, lambda req: None)
    with pytest.raises(ValueError, match="already has a request handler"):
        mediator.register(PlainRequest, lambda req: None, kind="event")


def test_duplicate_request_handler() -> None:
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, place_order)

    async def another(cmd: PlaceOrder) -> str:
        return ""

    with pytest.raises(catga.DuplicateHandler, match="`PlaceOrder` already has a handler, `place_order`") as caught:
        mediator.handler(another)
    assert "another" in str(caught.value)
    mediator.register(RushOrder, another)  # a subclass may have its own


def test_event_types_take_many_handlers() -> None:
    mediator = catga.Mediator()
    mediator.register(OrderPlaced, lambda evt: None)
    mediator.register(OrderPlaced, lambda evt: None)


# ------------------------------------------------------------------------------------- dispatch


async def test_send_returns_the_handlers_value_and_raises_its_exception() -> None:
    mediator = catga.Mediator()
    error = ValueError("amount must be positive")

    @mediator.handler
    async def handle(cmd: PlaceOrder) -> str:
        if cmd.customer == "bad":
            raise error
        return "ok"

    assert await mediator.send(PlaceOrder("ada")) == "ok"
    with pytest.raises(ValueError, match="amount") as caught:
        await mediator.send(PlaceOrder("bad"))
    assert caught.value is error


async def test_sync_handlers_are_called_directly() -> None:
    mediator = catga.Mediator()
    threads: list[object] = []

    @mediator.handler
    def handle(query: GetOrder) -> dict[str, str]:
        threads.append(asyncio.current_task())
        return {"id": query.order_id}

    assert await mediator.send(GetOrder("o-1")) == {"id": "o-1"}
    assert threads == [asyncio.current_task()]  # no thread hop, same task


async def test_no_handler() -> None:
    mediator = catga.Mediator()
    with pytest.raises(catga.HandlerNotFound, match=r"^no handler for `PlaceOrder`$") as caught:
        await mediator.send(PlaceOrder("x"))
    assert isinstance(caught.value, LookupError)
    with pytest.raises(catga.HandlerNotFound, match="no handler for `int`"):
        await mediator.send(5)
    with pytest.raises(catga.HandlerNotFound, match="no handler for `PlainRequest`"):
        await mediator.send(PlainRequest("x"))


async def test_sending_none() -> None:
    mediator = catga.Mediator()
    with pytest.raises(catga.HandlerNotFound, match="no handler for `NoneType`"):
        await mediator.send(None)
    with pytest.raises(catga.HandlerNotFound, match="no handler for `NoneType`"):
        mediator.send_sync(None)


async def test_sending_a_class_instead_of_an_instance() -> None:
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, place_order)
    message = r"^`PlaceOrder` is a class: send an instance, e\.g\. `PlaceOrder\(\.\.\.\)`$"
    with pytest.raises(catga.HandlerNotFound, match=message):
        await mediator.send(PlaceOrder)
    with pytest.raises(catga.HandlerNotFound, match="`GetOrder` is a class"):
        await mediator.send(GetOrder)  # same metaclass, cached route: still names the class sent
    with pytest.raises(catga.HandlerNotFound, match="`PlainRequest` is a class"):
        await mediator.send(PlainRequest)
    with pytest.raises(catga.HandlerNotFound, match="`PlaceOrder` is a class"):
        mediator.send_sync(PlaceOrder)


async def test_dispatch_by_nearest_base_and_invalidation() -> None:
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, lambda cmd: "base")
    assert await mediator.send(VeryRushOrder("x")) == "base"
    assert await mediator.send(RushOrder("x")) == "base"
    mediator.register(RushOrder, lambda cmd: "rush")  # invalidates the cached routes
    assert await mediator.send(VeryRushOrder("x")) == "rush"
    assert await mediator.send(RushOrder("x")) == "rush"
    assert await mediator.send(PlaceOrder("x")) == "base"
    mediator.register(VeryRushOrder, lambda cmd: "very")
    assert await mediator.send(VeryRushOrder("x")) == "very"


async def test_route_is_compiled_once_per_type() -> None:
    mediator = catga.Mediator(config=catga.Config.minimal())
    mediator.register(PlaceOrder, place_order)
    first = mediator._route(PlaceOrder)
    assert mediator._route(PlaceOrder) is first
    assert first == (False, ((place_order, True, False),))  # the handler itself: no wrapper
    mediator.register(GetOrder, lambda query: {})
    assert mediator._route(PlaceOrder) is not first


async def test_a_failed_compile_is_not_cached() -> None:
    mediator = catga.Mediator()
    with pytest.raises(catga.HandlerNotFound):
        await mediator.send(PlaceOrder("x"))
    mediator.register(PlaceOrder, place_order)
    assert await mediator.send(PlaceOrder("ada")) == "order for ada"


async def test_plain_dataclass_requests() -> None:
    mediator = catga.Mediator()

    @mediator.handler
    async def greet(request: PlainRequest) -> str:
        return f"hello {request.name}"

    assert await mediator.send(PlainRequest("ada")) == "hello ada"
    assert mediator._route(PlainRequest)[0] is False


async def test_kind_mismatches_raise_type_error() -> None:
    mediator = catga.Mediator()
    mediator.register(OrderPlaced, lambda evt: None)
    mediator.register(PlaceOrder, place_order)
    with pytest.raises(TypeError, match="`OrderPlaced` is an event: publish it with `publish`, not `send`"):
        await mediator.send(OrderPlaced("o-1"))
    with pytest.raises(TypeError, match="`PlaceOrder` is a request: send it with `send`, not `publish`"):
        await mediator.publish(PlaceOrder("x"))
    with pytest.raises(TypeError, match="`OrderPlaced` is an event"):
        mediator.send_sync(OrderPlaced("o-1"))


async def test_send_raises_only_on_await() -> None:
    mediator = catga.Mediator()
    awaitable = mediator.send(PlaceOrder("nobody handles this"))
    with pytest.raises(catga.HandlerNotFound):
        await awaitable


# ---------------------------------------------------------------------------------- send_result


async def test_send_result_success() -> None:
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, place_order)
    result = await mediator.send_result(PlaceOrder("ada"))
    assert result == catga.Result.success("order for ada")


async def test_send_result_returns_catga_errors_as_they_are() -> None:
    mediator = catga.Mediator(config=catga.Config.minimal())  # no Retry: a Conflict is retryable
    error = catga.Conflict("order `o-1` is in flight")

    @mediator.handler
    async def handle(cmd: PlaceOrder) -> str:
        raise error

    result = await mediator.send_result(PlaceOrder("x"))
    assert result.error is error
    assert result.code is catga.ErrorCode.CONFLICT
    missing = await mediator.send_result(GetOrder("o-1"))
    assert isinstance(missing.error, catga.HandlerNotFound)
    none = await mediator.send_result(None)
    assert isinstance(none.error, catga.HandlerNotFound)


async def test_send_result_wraps_other_exceptions_in_handler_failed() -> None:
    mediator = catga.Mediator()
    cause = ValueError("amount must be positive")

    @mediator.handler
    def handle(cmd: PlaceOrder) -> str:
        raise cause

    result = await mediator.send_result(PlaceOrder("x"))
    assert not result.ok
    assert isinstance(result.error, catga.HandlerFailed)
    assert result.error.__cause__ is cause
    assert result.code is catga.ErrorCode.HANDLER_FAILED
    assert str(result.error) == "handler of `PlaceOrder` raised `ValueError`: amount must be positive"
    assert result.error.details["error_type"] == "builtins.ValueError"
    with pytest.raises(ValueError, match="amount") as caught:
        result.unwrap()
    assert caught.value is cause
    wrong_kind = await mediator.send_result(OrderPlaced("o-1"))
    assert isinstance(wrong_kind.error, catga.HandlerFailed)
    assert isinstance(wrong_kind.error.__cause__, TypeError)


@pytest.mark.parametrize("exc_type", [asyncio.CancelledError, KeyboardInterrupt, SystemExit])
def test_send_result_lets_base_exceptions_through(exc_type: type[BaseException]) -> None:
    mediator = catga.Mediator()

    @mediator.handler
    async def handle(cmd: PlaceOrder) -> str:
        raise exc_type()

    coro = mediator.send_result(PlaceOrder("x"))
    with pytest.raises(exc_type):
        coro.send(None)  # driven by hand: no event loop to trip over KeyboardInterrupt


async def test_send_many_keeps_input_order() -> None:
    mediator = catga.Mediator()
    order: list[str] = []

    @mediator.handler
    async def handle(cmd: PlaceOrder) -> str:
        await asyncio.sleep(0.01 if cmd.customer == "a" else 0)
        order.append(cmd.customer)
        if cmd.customer == "bad":
            raise ValueError("bad")
        return cmd.customer

    results = await mediator.send_many([PlaceOrder("a"), PlaceOrder("bad"), GetOrder("o"), PlaceOrder("c")])
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[0].value == "a"
    assert results[3].value == "c"
    assert isinstance(results[1].error, catga.HandlerFailed)
    assert isinstance(results[2].error, catga.HandlerNotFound)
    assert order == ["a", "bad", "c"]
    assert await mediator.send_many(iter([])) == []


# ------------------------------------------------------------------------------------- send_sync


def test_send_sync_without_a_loop() -> None:
    mediator = catga.Mediator()
    mediator.register(GetOrder, lambda query: {"id": query.order_id})
    assert mediator.send_sync(GetOrder("o-1")) == {"id": "o-1"}
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_send_sync_rejects_async_handlers() -> None:
    mediator = catga.Mediator()
    mediator.register(PlaceOrder, place_order)
    with pytest.raises(TypeError, match="`PlaceOrder` has an async handler or behaviour"):
        mediator.send_sync(PlaceOrder("x"))


def test_send_sync_errors() -> None:
    mediator = catga.Mediator()
    error = KeyError("o-1")

    @mediator.handler
    def handle(query: GetOrder) -> dict[str, str]:
        raise error

    with pytest.raises(KeyError) as caught:
        mediator.send_sync(GetOrder("o-1"))
    assert caught.value is error
    with pytest.raises(catga.HandlerNotFound):
        mediator.send_sync(PlaceOrder("x"))


async def test_send_sync_inside_a_running_loop() -> None:
    mediator = catga.Mediator()
    mediator.register(GetOrder, lambda query: {"id": query.order_id})
    assert mediator.send_sync(GetOrder("o-1")) == {"id": "o-1"}


def test_send_sync_leaves_no_context_behind() -> None:
    mediator = catga.Mediator()
    seen: list[object] = []

    def behavior(message: Any, call_next: Any) -> Any:
        return call_next(message)

    mediator.add_behavior(behavior)

    @mediator.handler
    def handle(query: GetOrder) -> None:
        seen.append(CURRENT_MESSAGE.get())
        raise ValueError("x")

    message = GetOrder("o-1")
    with pytest.raises(ValueError, match="x"):
        mediator.send_sync(message)
    assert seen == [message]
    assert CURRENT_MESSAGE.get() is None


# ------------------------------------------------------------------------------------- lifecycle


async def test_start_stop_and_async_with() -> None:
    mediator = catga.Mediator()
    await mediator.start()
    await mediator.start()  # idempotent
    await mediator.stop()
    await mediator.stop()
    async with mediator as entered:
        assert entered is mediator
