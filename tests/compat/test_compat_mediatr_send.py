"""Sending through catga.compat.mediatr: mediatr's semantics (zero-argument `next()`, behaviour
matching, class handlers built per call through `handler_class_manager`, the static call, the
errors), dispatched by catga's core."""

import asyncio
import gc
import weakref
from typing import Any
from unittest import mock

import pytest

import catga
from catga import _core
from catga.compat import mediatr
from catga.compat.mediatr import GenericQuery, HandlerNotFoundError, InvalidRequest, Mediator


class GetItems:
    def __init__(self, count: int) -> None:
        self.count = count
        self.seen: list[str] = []


class GetMoreItems(GetItems):
    pass


class Unknown:
    pass


async def get_items(request: GetItems) -> list[int]:
    request.seen.append("handler")
    return list(range(request.count))


def trace(name: str) -> Any:
    """An async behaviour for `object` that records itself before and after `next()`."""

    async def behavior(request: object, next: Any) -> Any:
        request.seen.append(f"{name}>")  # type: ignore[attr-defined]
        result = await next()
        request.seen.append(f"<{name}")  # type: ignore[attr-defined]
        return result

    behavior.__qualname__ = name
    return behavior


class SourceHandler:
    """A class handler that answers where its manager built it (`"class"` by default)."""

    def __init__(self, source: str = "class") -> None:
        self.source = source

    def handle(self, request: GetItems) -> str:
        return self.source


def test_requests_go_through_catgas_core() -> None:
    routes = Mediator._catga_routes
    assert isinstance(routes, _core.Dispatcher)
    assert type(routes).__mro__[1] is _core.Dispatcher
    assert (_core.Dispatcher.__module__ == "catga._pure._dispatch") == catga.PURE_PYTHON


async def test_send_async_returns_the_handlers_value() -> None:
    Mediator.register_handler(get_items)
    assert await Mediator().send_async(GetItems(3)) == [0, 1, 2]


async def test_a_sync_handler_works_with_send_async() -> None:
    def count(request: GetItems) -> int:
        return request.count

    Mediator.register_handler(count)
    assert await Mediator().send_async(GetItems(4)) == 4


async def test_an_awaitable_returned_by_a_sync_handler_is_awaited_once() -> None:
    async def inner() -> str:
        return "inner"

    async def nested() -> Any:
        return inner()

    def handler(request: GetItems) -> Any:
        return nested()

    Mediator.register_handler(handler)
    result = await Mediator().send_async(GetItems(1))
    # mediatr awaits each step's result once: the coroutine returned by `nested` stays a coroutine.
    assert asyncio.iscoroutine(result)
    assert await result == "inner"


async def test_behaviours_run_outermost_first_in_key_then_registration_order() -> None:
    Mediator.register_handler(get_items)
    for behavior in (trace("a"), trace("b")):
        Mediator.register_behavior(behavior)

    async def only_items(request: GetItems, next: Any) -> Any:
        request.seen.append("items>")
        return await next()

    Mediator.register_behavior(only_items)
    request = GetItems(2)
    assert await Mediator().send_async(request) == [0, 1]
    # The key `object` was registered first, so its behaviours come before those of `GetItems`.
    assert request.seen == ["a>", "b>", "items>", "handler", "<b", "<a"]


async def test_behaviours_match_the_type_its_subclasses_and_any() -> None:
    calls: list[str] = []

    async def handle(request: GetMoreItems) -> int:
        return 0

    async def for_base(request: GetItems, next: Any) -> Any:
        calls.append("base")
        return await next()

    async def for_any(request: Any, next: Any) -> Any:
        calls.append("any")
        return await next()

    async def for_unknown(request: Unknown, next: Any) -> Any:
        calls.append("unknown")
        return await next()

    Mediator.register_handler(handle)
    for behavior in (for_base, for_any, for_unknown):
        Mediator.register_behavior(behavior)
    await Mediator().send_async(GetMoreItems(0))
    assert calls == ["base", "any"]


async def test_a_behaviour_may_change_the_request_before_and_the_result_after() -> None:
    Mediator.register_handler(get_items)

    def shrink(request: GetItems, next: Any) -> Any:  # sync: returns `next()`'s awaitable
        request.count = 2
        return next()

    async def pad(request: GetItems, next: Any) -> Any:
        return [*(await next()), 0]

    Mediator.register_behavior(shrink)
    Mediator.register_behavior(pad)
    request = GetItems(5)
    assert await Mediator().send_async(request) == [0, 1, 0]
    assert request.count == 2


async def test_a_behaviour_that_skips_next_short_circuits_but_the_handler_class_is_built() -> None:
    built: list[str] = []

    class Handler:
        def __init__(self) -> None:
            built.append("handler")

        def handle(self, request: GetItems) -> str:
            return "handled"

    async def cached(request: GetItems, next: Any) -> str:
        return "cached"

    Mediator.register_handler(Handler)
    Mediator.register_behavior(cached)
    assert await Mediator().send_async(GetItems(1)) == "cached"
    # mediatr builds the handler object before the first behaviour runs.
    assert built == ["handler"]


async def test_next_may_be_called_twice() -> None:
    Mediator.register_handler(get_items)

    async def twice(request: GetItems, next: Any) -> Any:
        return [await next(), await next()]

    Mediator.register_behavior(twice)
    request = GetItems(1)
    assert await Mediator().send_async(request) == [[0], [0]]
    assert request.seen == ["handler", "handler"]


async def test_class_handlers_and_behaviours_are_built_per_call_by_the_manager() -> None:
    made: list[tuple[str, bool]] = []

    def manager(cls: type, is_behavior: bool = False) -> Any:
        made.append((cls.__name__, is_behavior))
        return cls()

    class Handler:
        def handle(self, request: GetItems) -> int:
            return request.count

    class Around:
        async def handle(self, request: GetItems, next: Any) -> Any:
            return (await next()) + 1

    Mediator.register_handler(Handler)
    Mediator.register_behavior(Around)
    mediator = Mediator(manager)
    assert await mediator.send_async(GetItems(1)) == 2
    assert await mediator.send_async(GetItems(2)) == 3
    assert made == [("Handler", False), ("Around", True)] * 2


async def test_a_registered_instance_is_handed_to_the_manager_as_is() -> None:
    class Handler:
        def __init__(self, offset: int) -> None:
            self.offset = offset

        def handle(self, request: GetItems) -> int:
            return request.count + self.offset

    Mediator.register_handler(Handler(10))
    assert await Mediator(lambda handler, is_behavior=False: handler).send_async(GetItems(1)) == 11
    # The default manager calls it, as mediatr's does: an instance that is not callable fails.
    with pytest.raises(TypeError, match="not callable"):
        await Mediator().send_async(GetItems(1))


async def test_the_manager_is_read_when_each_request_is_handled() -> None:
    class Handler:
        def handle(self, request: GetItems) -> str:
            return "default"

    class Replacement:
        def handle(self, request: GetItems) -> str:
            return "replaced"

    Mediator.register_handler(Handler)
    mediator = Mediator()
    assert await mediator.send_async(GetItems(0)) == "default"
    mediator.handler_class_manager = lambda cls, is_behavior=False: Replacement()
    assert await mediator.send_async(GetItems(0)) == "replaced"
    assert await Mediator().send_async(GetItems(0)) == "default"  # other mediators keep the class's


async def test_a_manager_set_on_the_class_reaches_every_mediator(monkeypatch: pytest.MonkeyPatch) -> None:
    Mediator.register_handler(SourceHandler)
    monkeypatch.setattr(Mediator, "handler_class_manager", staticmethod(lambda cls, is_behavior=False: cls("patched")))
    assert await Mediator().send_async(GetItems(0)) == "patched"
    assert Mediator.send(GetItems(0)) == "patched"


async def test_a_subclass_may_override_the_manager_as_a_method() -> None:
    class Handler:
        def __init__(self, source: str) -> None:
            self.source = source

        def handle(self, request: GetItems) -> str:
            return self.source

    class Container(Mediator):
        def __init__(self, name: str) -> None:  # mediatr's __init__ is not called: still works
            self.name = name

        def handler_class_manager(self, cls: type, is_behavior: bool = False) -> Any:
            return cls(self.name)

    Mediator.register_handler(Handler)
    assert await Container("first").send_async(GetItems(0)) == "first"
    assert await Container("second").send_async(GetItems(0)) == "second"
    assert Container("third").send(GetItems(0)) == "third"


def test_mediators_without_their_own_manager_share_one_route_table() -> None:
    assert Mediator()._catga_routes is Mediator()._catga_routes is Mediator._catga_routes
    own = Mediator(lambda cls, is_behavior=False: cls())
    assert own._catga_routes is not Mediator._catga_routes


def test_a_mediator_with_its_own_routes_is_freed() -> None:
    class Handler:
        def handle(self, request: GetItems) -> int:
            return 1

    Mediator.register_handler(Handler)
    mediator = Mediator(lambda cls, is_behavior=False: cls())
    assert mediator.send(GetItems(0)) == 1
    ref = weakref.ref(mediator)
    del mediator
    gc.collect()
    assert ref() is None


def test_send_is_synchronous_and_returns_what_the_chain_returns() -> None:
    def count(request: GetItems) -> int:
        return request.count

    def plus_one(request: GetItems, next: Any) -> int:
        return next() + 1

    Mediator.register_handler(count)
    Mediator.register_behavior(plus_one)
    assert Mediator().send(GetItems(4)) == 5


async def test_send_of_an_async_handler_returns_its_coroutine_unawaited() -> None:
    Mediator.register_handler(get_items)
    result = Mediator().send(GetItems(2))
    assert asyncio.iscoroutine(result)
    assert await result == [0, 1]


async def test_send_and_send_async_may_be_called_on_the_class() -> None:
    Mediator.register_handler(get_items)
    assert await Mediator.send_async(GetItems(2)) == [0, 1]
    assert await Mediator.send(GetItems(1)) == [0]


def test_generic_query_types_the_response() -> None:
    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

    class GetNamed(GenericQuery[Named]):
        def __init__(self, name: str) -> None:
            self.name = name

    class GetNamedHandler:
        def handle(self, request: GetNamed) -> Named:
            return Named(request.name)

    Mediator.register_handler(GetNamedHandler)
    response: Named = Mediator().send(GetNamed("x"))
    assert response.name == "x"


async def test_an_unknown_request_raises_handler_not_found_on_the_await() -> None:
    pending = Mediator().send_async(Unknown())  # no error yet: mediatr raises on the await
    with pytest.raises(HandlerNotFoundError) as caught:
        await pending
    assert isinstance(caught.value.request, Unknown)
    assert "no handler registered for `Unknown`" in str(caught.value)
    with pytest.raises(HandlerNotFoundError):
        Mediator().send(Unknown())


async def test_send_async_without_a_request_sends_the_mediator_itself() -> None:
    mediator = Mediator()
    with pytest.raises(HandlerNotFoundError) as caught:
        await mediator.send_async(None)
    assert caught.value.request is mediator


async def test_none_sent_on_the_class_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="got `None`"):
        await Mediator.send_async(None)
    with pytest.raises(InvalidRequest):
        Mediator.send(None)


async def test_a_falsy_request_is_taken_for_a_missing_one_as_in_mediatr() -> None:
    class Empty:
        def __len__(self) -> int:
            return 0

    async def handle(request: Empty) -> str:
        return "handled"

    Mediator.register_handler(handle)
    mediator = Mediator()
    with pytest.raises(HandlerNotFoundError) as caught:
        await mediator.send_async(Empty())
    assert caught.value.request is mediator


async def test_a_handlers_exception_reaches_the_caller_unchanged_through_behaviours() -> None:
    class Boom(Exception):
        pass

    async def fail(request: GetItems) -> None:
        raise Boom("no items")

    Mediator.register_handler(fail)
    Mediator.register_behavior(trace("outer"))
    with pytest.raises(Boom, match="no items"):
        await Mediator().send_async(GetItems(1))
    with pytest.raises(Boom):
        await Mediator().send(GetItems(1))


async def test_a_handler_registered_later_or_removed_is_seen_by_compiled_routes() -> None:
    mediator = Mediator()
    with pytest.raises(HandlerNotFoundError):
        await mediator.send_async(GetItems(1))  # the miss is compiled into the route table
    Mediator.register_handler(get_items)
    assert await mediator.send_async(GetItems(1)) == [0]
    Mediator.register_behavior(trace("late"))
    request = GetItems(1)
    await mediator.send_async(request)
    assert request.seen == ["late>", "handler", "<late"]
    mediatr.__behaviors__[object].clear()
    request = GetItems(1)
    await mediator.send_async(request)
    assert request.seen == ["handler"]
    mediatr.__handlers__.clear()
    with pytest.raises(HandlerNotFoundError):
        await mediator.send_async(GetItems(1))
    with pytest.raises(HandlerNotFoundError):
        mediator.send(GetItems(1))


async def test_every_dict_operation_on_a_registry_reaches_compiled_routes() -> None:
    async def other(request: GetItems) -> str:
        return "other"

    mediator = Mediator()
    operations = [
        lambda: mediatr.__handlers__.update({GetItems: get_items}),
        lambda: mediatr.__handlers__.pop(GetItems),
        lambda: mediatr.__handlers__.setdefault(GetItems, other),
        lambda: mediatr.__handlers__.popitem(),
        lambda: mediatr.__handlers__.__ior__({"GetItems": get_items}),
    ]
    expected = [[0], None, "other", None, [0]]
    for operation, result in zip(operations, expected, strict=True):
        operation()
        if result is None:
            with pytest.raises(HandlerNotFoundError):
                await mediator.send_async(GetItems(1))
        else:
            assert await mediator.send_async(GetItems(1)) == result


async def test_a_handler_keyed_by_class_name_serves_every_class_of_that_name() -> None:
    mediatr.__handlers__["GetItems"] = get_items
    assert await Mediator().send_async(GetItems(2)) == [0, 1]


async def test_string_annotated_behaviours_match_the_class_and_base_names() -> None:
    calls: list[str] = []

    def behavior_for(name: str) -> Any:
        def behavior(request: Any, next: Any) -> Any:
            calls.append(name)
            return next()

        behavior.__annotations__["request"] = name
        return behavior

    mediatr.__handlers__[GetMoreItems] = get_items  # handlers are found by the exact class
    for name in ("GetItems", "object", "Any", "Unknown"):
        Mediator.register_behavior(behavior_for(name))
    await Mediator().send_async(GetMoreItems(0))
    assert calls == ["GetItems", "object", "Any"]


async def test_a_mock_with_a_spec_reaches_the_handler_of_its_class() -> None:
    Mediator.register_handler(get_items)
    request = mock.Mock(spec=GetItems)
    request.count = 2
    request.seen = []
    assert await Mediator().send_async(request) == [0, 1]
    assert await Mediator().send(request) == [0, 1]


async def test_concurrent_sends_do_not_share_state() -> None:
    Mediator.register_handler(get_items)
    Mediator.register_behavior(trace("t"))
    requests = [GetItems(n) for n in range(20)]
    results = await asyncio.gather(*(Mediator().send_async(request) for request in requests))
    assert results == [list(range(n)) for n in range(20)]
    assert all(request.seen == ["t>", "handler", "<t"] for request in requests)


async def test_a_behaviour_list_stored_by_hand_is_watched() -> None:
    Mediator.register_handler(get_items)
    mediator = Mediator()
    mediatr.__behaviors__[object] = []
    request = GetItems(1)
    await mediator.send_async(request)
    assert request.seen == ["handler"]
    mediatr.__behaviors__[object].append(trace("appended"))
    request = GetItems(1)
    await mediator.send_async(request)
    assert request.seen == ["appended>", "handler", "<appended"]
    mediatr.__behaviors__[object].pop()
    request = GetItems(1)
    await mediator.send_async(request)
    assert request.seen == ["handler"]


async def test_a_subclass_request_does_not_reach_its_bases_handler() -> None:
    Mediator.register_handler(get_items)
    with pytest.raises(HandlerNotFoundError):
        await Mediator().send_async(GetMoreItems(1))


async def test_a_mock_request_uses_the_manager_of_its_mediator() -> None:
    Mediator.register_handler(SourceHandler)
    mediator = Mediator(lambda cls, is_behavior=False: cls("own"))
    request = mock.Mock(spec=GetItems)
    assert await mediator.send_async(request) == "own"
    assert mediator.send(request) == "own"
    assert await Mediator().send_async(request) == "class"
    with pytest.raises(HandlerNotFoundError):
        await mediator.send_async(mock.Mock(spec=Unknown))
