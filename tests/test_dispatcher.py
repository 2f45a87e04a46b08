"""The dispatcher alone (docs/internals.md "Dispatcher"), through whichever core `catga._core` picked.

`Table` is the smallest possible subclass: its `_compile_route` reads a dict of prebuilt routes, so
these tests exercise the dispatch table and the awaitables without `catga.Mediator`.
"""

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import pytest

from catga._core import CURRENT_MESSAGE, Dispatcher

REUSE = "cannot reuse already awaited coroutine"


class Ping:
    pass


class SubPing(Ping):
    pass


class Happened:
    pass


class Table(Dispatcher):
    def __init__(self, routes: dict[type, Any] | None = None) -> None:
        self.routes: dict[type, Any] = dict(routes or {})
        self.compiled: list[type] = []

    def _compile_route(self, message_type: type, /) -> Any:
        self.compiled.append(message_type)
        route = self.routes[message_type]
        if isinstance(route, BaseException):
            raise route
        return route


def request(target: Callable[[Any], Any], *, is_async: bool = True, with_context: bool = False) -> Any:
    return (False, ((target, is_async, with_context),))


def event(*handlers: tuple[Callable[[Any], Any], bool, bool]) -> Any:
    return (True, tuple(handlers))


def run(awaitable: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await awaitable

    return asyncio.run(main())


class Suspend:
    """Suspends once without an event loop: lets a test drive an awaitable by hand."""

    def __await__(self) -> Generator[str, Any, Any]:
        return (yield "suspended")


def step(awaitable: Awaitable[Any]) -> Generator[Any, Any, Any]:
    return awaitable.__await__()


# -- construction and the route table ------------------------------------------------------------


def test_new_accepts_and_ignores_arguments() -> None:
    class WithArgs(Dispatcher):
        def __init__(self, a: int, *, b: int) -> None:
            self.a, self.b = a, b

    d = WithArgs(1, b=2)
    assert (d.a, d.b) == (1, 2)
    assert isinstance(Dispatcher(1, x=2), Dispatcher)


def test_current_message_default() -> None:
    assert CURRENT_MESSAGE.name == "catga_current_message"
    assert CURRENT_MESSAGE.get() is None


def test_base_dispatcher_has_no_routes() -> None:
    # `_compile_route` is the subclass's: the base class has none, and the failure waits for await.
    aw = Dispatcher().send(Ping())
    with pytest.raises(AttributeError, match="_compile_route"):
        run(aw)


def test_cache_hit_does_not_compile_again() -> None:
    async def handle(m: Ping) -> str:
        return "pong"

    d = Table({Ping: request(handle)})
    assert [run(d.send(Ping())) for _ in range(3)] == ["pong"] * 3
    assert d.compiled == [Ping]


def test_routes_are_keyed_by_exact_type() -> None:
    async def handle(m: Ping) -> str:
        return type(m).__name__

    d = Table({Ping: request(handle), SubPing: request(handle)})
    assert run(d.send(SubPing())) == "SubPing"
    assert run(d.send(Ping())) == "Ping"
    assert run(d.send(SubPing())) == "SubPing"
    assert d.compiled == [SubPing, Ping]


def test_invalidate_compiles_again() -> None:
    async def first(m: Ping) -> int:
        return 1

    async def second(m: Ping) -> int:
        return 2

    d = Table({Ping: request(first)})
    assert run(d.send(Ping())) == 1
    d.routes[Ping] = request(second)
    assert run(d.send(Ping())) == 1  # still cached
    d._invalidate()
    assert run(d.send(Ping())) == 2
    assert d.compiled == [Ping, Ping]


def test_route_returns_the_compiled_object() -> None:
    async def handle(m: Ping) -> None:
        return None

    route = request(handle)
    d = Table({Ping: route})
    assert d._route(Ping) is route
    assert d._route(Ping) is route
    assert d.compiled == [Ping]
    run(d.send(Ping()))  # the route `_route` cached serves `send` too
    assert d.compiled == [Ping]


def test_route_raises_compile_errors_directly() -> None:
    d = Table({Ping: LookupError("no handler for Ping")})
    with pytest.raises(LookupError, match="no handler for Ping"):
        d._route(Ping)
    with pytest.raises(KeyError):
        d._route(Happened)


# -- send ----------------------------------------------------------------------------------------


def test_async_target_coroutine_is_returned_as_is() -> None:
    made: list[Any] = []

    async def handle(m: Ping) -> str:
        return "pong"

    def target(m: Ping) -> Any:
        coro = handle(m)
        made.append(coro)
        return coro

    d = Table({Ping: request(target)})
    aw = d.send(Ping())
    assert inspect.iscoroutine(aw)
    assert made == [aw]
    assert run(aw) == "pong"


def test_sync_target_is_called_on_await_only() -> None:
    calls: list[Ping] = []

    def handle(m: Ping) -> str:
        calls.append(m)
        return "pong"

    d = Table({Ping: request(handle, is_async=False)})
    m = Ping()
    aw = d.send(m)
    assert calls == []
    assert inspect.isawaitable(aw)
    assert run(aw) == "pong"
    assert calls == [m]

    unawaited = d.send(Ping())
    unawaited.close()  # type: ignore[attr-defined]
    assert calls == [m]


def test_sync_target_error_is_raised_on_await() -> None:
    def handle(m: Ping) -> str:
        raise ValueError("bad ping")

    d = Table({Ping: request(handle, is_async=False)})
    aw = d.send(Ping())
    with pytest.raises(ValueError, match="bad ping"):
        run(aw)


def test_target_raising_when_called_is_raised_on_await() -> None:
    def factory_failed(m: Ping) -> Any:
        raise RuntimeError("factory failed")

    d = Table({Ping: request(factory_failed)})
    aw = d.send(Ping())
    with pytest.raises(RuntimeError, match="factory failed"):
        run(aw)


def test_bare_async_route_sets_no_context() -> None:
    async def handle(m: Ping) -> object:
        return CURRENT_MESSAGE.get()

    d = Table({Ping: request(handle)})
    assert run(d.send(Ping())) is None


@pytest.mark.parametrize("is_async", [True, False])
def test_with_context_sets_and_resets_current_message(is_async: bool) -> None:
    seen: list[object] = []

    if is_async:

        async def handle(m: Ping) -> str:
            seen.append(CURRENT_MESSAGE.get())
            await asyncio.sleep(0)
            seen.append(CURRENT_MESSAGE.get())
            return "pong"
    else:

        def handle(m: Ping) -> str:  # type: ignore[misc]
            seen.append(CURRENT_MESSAGE.get())
            return "pong"

    d = Table({Ping: request(handle, is_async=is_async, with_context=True)})
    m = Ping()

    async def main() -> object:
        CURRENT_MESSAGE.set("outer")
        aw = d.send(m)
        assert CURRENT_MESSAGE.get() == "outer"  # nothing ran yet
        result = await aw
        return result, CURRENT_MESSAGE.get()

    assert asyncio.run(main()) == ("pong", "outer")
    assert seen
    assert all(s is m for s in seen)
    assert CURRENT_MESSAGE.get() is None


@pytest.mark.parametrize("is_async", [True, False])
def test_with_context_resets_on_error(is_async: bool) -> None:
    if is_async:

        async def handle(m: Ping) -> str:
            raise ValueError("boom")
    else:

        def handle(m: Ping) -> str:  # type: ignore[misc]
            raise ValueError("boom")

    d = Table({Ping: request(handle, is_async=is_async, with_context=True)})

    async def main() -> object:
        with pytest.raises(ValueError, match="boom"):
            await d.send(Ping())
        return CURRENT_MESSAGE.get()

    assert asyncio.run(main()) is None


def test_event_route_via_send_raises_type_error_on_await() -> None:
    d = Table({Happened: event()})
    aw = d.send(Happened())
    with pytest.raises(TypeError, match=r"^`Happened` is an event: publish it with `publish`, not `send`$"):
        run(aw)


def test_compile_error_is_raised_on_await_and_not_cached() -> None:
    error = LookupError("no handler for `Ping`")
    d = Table({Ping: error})
    aw = d.send(Ping())
    assert d.compiled == [Ping]
    with pytest.raises(LookupError) as info:
        run(aw)
    assert info.value is error
    aw = d.send(Ping())
    with pytest.raises(LookupError):
        run(aw)
    assert d.compiled == [Ping, Ping]

    async def handle(m: Ping) -> str:
        return "pong"

    d.routes[Ping] = request(handle)
    assert run(d.send(Ping())) == "pong"
    assert d.compiled == [Ping, Ping, Ping]


async def some_handler(m: object) -> None:
    return None


@pytest.mark.parametrize(
    "route",
    [
        None,
        (False,),
        (0, ((some_handler, True, False),)),
        (False, [(some_handler, True, False)]),
        (False, ((some_handler, True),)),
        (False, ((some_handler, 1, 0),)),
        (False, ()),
        (False, ((some_handler, True, False), (some_handler, True, False))),
    ],
)
def test_malformed_route_is_a_type_error_on_await(route: object) -> None:
    d = Table({Ping: route})
    aw = d.send(Ping())
    with pytest.raises(TypeError, match=r"^`_compile_route` returned a malformed route for `Ping`: "):
        run(aw)
    assert d.compiled == [Ping]
    with pytest.raises(TypeError):
        run(d.send(Ping()))
    assert d.compiled == [Ping, Ping]  # not cached


def test_base_exception_at_call_time_is_raised_on_await() -> None:
    def interrupted(m: Ping) -> Any:
        raise KeyboardInterrupt

    d = Table({Ping: request(interrupted)})
    aw = d.send(Ping())
    with pytest.raises(KeyboardInterrupt):
        step(aw).send(None)


# -- the coroutine protocol of what send returns -------------------------------------------------


def routes_of_every_kind() -> dict[str, tuple[Table, Any]]:
    async def bare(m: Ping) -> str:
        return "bare"

    def sync(m: Ping) -> str:
        return "sync"

    async def ctx(m: Ping) -> str:
        return "ctx"

    def failing_factory(m: Ping) -> Any:
        raise RuntimeError("factory")

    return {
        "bare": (Table({Ping: request(bare)}), "bare"),
        "sync": (Table({Ping: request(sync, is_async=False)}), "sync"),
        "context": (Table({Ping: request(ctx, with_context=True)}), "ctx"),
        "sync-context": (Table({Ping: request(sync, is_async=False, with_context=True)}), "sync"),
        "call-error": (Table({Ping: request(failing_factory)}), RuntimeError),
        "compile-error": (Table({Ping: LookupError("none")}), LookupError),
        "event": (Table({Ping: event()}), TypeError),
    }


@pytest.mark.parametrize("kind", list(routes_of_every_kind()))
def test_send_result_is_coroutine_like_and_single_use(kind: str) -> None:
    d, expected = routes_of_every_kind()[kind]
    aw = d.send(Ping())
    for method in ("__await__", "send", "throw", "close"):
        assert callable(getattr(aw, method)), method

    async def main() -> None:
        if isinstance(expected, type):
            with pytest.raises(expected):
                await aw
        else:
            assert await aw == expected
        with pytest.raises(RuntimeError, match=REUSE):
            await aw

    asyncio.run(main())


@pytest.mark.parametrize("with_context", [False, True])
def test_throw_and_close_reach_the_handler(with_context: bool) -> None:
    log: list[object] = []

    async def handle(m: Ping) -> str:
        try:
            await Suspend()
        except ValueError as exc:
            log.append(("caught", str(exc), CURRENT_MESSAGE.get()))
            await Suspend()
            return "recovered"
        finally:
            log.append("finally")
        return "done"

    m = Ping()
    d = Table({Ping: request(handle, with_context=with_context)})

    it = step(d.send(m))
    assert it.send(None) == "suspended"
    assert it.throw(ValueError("x")) == "suspended"
    assert log == [("caught", "x", m if with_context else None)]
    with pytest.raises(StopIteration) as stop:
        it.send(None)
    assert stop.value.value == "recovered"
    assert log[-1] == "finally"

    log.clear()
    it = step(d.send(m))
    assert it.send(None) == "suspended"
    it.close()
    assert log == ["finally"]
    assert CURRENT_MESSAGE.get() is None


@pytest.mark.parametrize("with_context", [False, True])
def test_cancelling_the_awaiting_task_cancels_the_handler(with_context: bool) -> None:
    log: list[object] = []

    async def handle(m: Ping) -> str:
        try:
            await asyncio.sleep(3600)
        finally:
            log.append(("finally", CURRENT_MESSAGE.get() is m))
        return "never"

    d = Table({Ping: request(handle, with_context=with_context)})

    async def main() -> None:
        started = asyncio.Event()

        async def caller() -> None:
            started.set()
            try:
                await d.send(Ping())
            except asyncio.CancelledError:
                log.append(("after", CURRENT_MESSAGE.get()))
                raise

        task = asyncio.create_task(caller())
        await started.wait()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert log == [("finally", with_context), ("after", None)]


# -- publish -------------------------------------------------------------------------------------


def test_publish_runs_handlers_sequentially_in_route_order() -> None:
    log: list[str] = []

    def make(name: str) -> Callable[[Happened], Any]:
        async def handle(e: Happened) -> None:
            log.append(f"{name} start")
            await asyncio.sleep(0)
            log.append(f"{name} end")

        return handle

    def sync(e: Happened) -> str:
        log.append("sync")
        return "ignored"

    d = Table({Happened: event((make("a"), True, False), (sync, False, False), (make("b"), True, False))})
    aw = d.publish(Happened())
    assert log == []
    assert run(aw) is None
    assert log == ["a start", "a end", "sync", "b start", "b end"]


def test_publish_sets_context_only_for_context_handlers() -> None:
    seen: list[tuple[str, object]] = []

    async def plain(e: Happened) -> None:
        seen.append(("plain", CURRENT_MESSAGE.get()))

    async def ctx(e: Happened) -> None:
        await asyncio.sleep(0)
        seen.append(("ctx", CURRENT_MESSAGE.get()))

    def sync_ctx(e: Happened) -> None:
        seen.append(("sync_ctx", CURRENT_MESSAGE.get()))

    d = Table({Happened: event((plain, True, False), (ctx, True, True), (sync_ctx, False, True), (plain, True, False))})
    e = Happened()

    async def main() -> object:
        CURRENT_MESSAGE.set("outer")
        await d.publish(e)
        return CURRENT_MESSAGE.get()

    assert asyncio.run(main()) == "outer"
    assert seen == [("plain", "outer"), ("ctx", e), ("sync_ctx", e), ("plain", "outer")]


def test_publish_with_no_handlers_returns_none() -> None:
    d = Table({Happened: event()})
    aw = d.publish(Happened())
    assert inspect.isawaitable(aw)
    assert run(aw) is None


def test_publish_collects_failures_and_raises_publish_error() -> None:
    ran: list[str] = []
    first = ValueError("first")
    second = KeyError("second")
    third = RuntimeError("third")

    async def ok(e: Happened) -> None:
        ran.append("ok")

    async def fails_async(e: Happened) -> None:
        ran.append("async")
        await asyncio.sleep(0)
        raise first

    def fails_sync(e: Happened) -> None:
        ran.append("sync")
        raise second

    def fails_on_call(e: Happened) -> Any:
        ran.append("call")
        raise third

    d = Table(
        {
            Happened: event(
                (ok, True, False),
                (fails_async, True, True),
                (fails_sync, False, False),
                (fails_on_call, True, False),
                (ok, True, True),
            )
        }
    )

    async def main() -> BaseException:
        with pytest.raises(ExceptionGroup) as info:
            await d.publish(Happened())
        assert CURRENT_MESSAGE.get() is None
        return info.value

    exc = asyncio.run(main())
    assert ran == ["ok", "async", "sync", "call", "ok"]
    assert isinstance(exc, ExceptionGroup)
    assert exc.exceptions == (first, second, third)
    assert all(a is b for a, b in zip(exc.exceptions, (first, second, third), strict=True))
    assert exc.message == "`3` of `5` handlers of `Happened` failed"
    assert str(exc).startswith("`3` of `5` handlers of `Happened` failed")

    import catga._errors

    assert isinstance(exc, catga._errors.PublishError)


def test_publish_error_names_the_qualified_type() -> None:
    class Local:
        pass

    def fails(e: Local) -> None:
        raise ValueError("x")

    d = Table({Local: event((fails, False, False))})
    with pytest.raises(ExceptionGroup) as info:
        run(d.publish(Local()))
    assert info.value.message == (
        "`1` of `1` handlers of `test_publish_error_names_the_qualified_type.<locals>.Local` failed"
    )


def test_cancellation_in_a_publish_handler_stops_the_publish() -> None:
    ran: list[str] = []

    async def first(e: Happened) -> None:
        ran.append("first")

    async def cancelled(e: Happened) -> None:
        ran.append("cancelled")
        raise asyncio.CancelledError

    async def later(e: Happened) -> None:
        ran.append("later")

    d = Table({Happened: event((first, True, False), (cancelled, True, True), (later, True, False))})

    async def main() -> object:
        with pytest.raises(asyncio.CancelledError):
            await d.publish(Happened())
        return CURRENT_MESSAGE.get()

    assert asyncio.run(main()) is None
    assert ran == ["first", "cancelled"]


def test_keyboard_interrupt_in_a_publish_handler_propagates_at_once() -> None:
    ran: list[str] = []

    def failing(e: Happened) -> None:
        ran.append("failing")
        raise ValueError("collected, not raised")

    def interrupted(e: Happened) -> None:
        ran.append("interrupted")
        raise KeyboardInterrupt

    def later(e: Happened) -> None:
        ran.append("later")

    d = Table({Happened: event((failing, False, False), (interrupted, False, False), (later, False, False))})
    with pytest.raises(KeyboardInterrupt):
        step(d.publish(Happened())).send(None)
    assert ran == ["failing", "interrupted"]


def test_cancelling_the_publishing_task_cancels_the_running_handler() -> None:
    log: list[str] = []

    async def slow(e: Happened) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            log.append("finally")

    async def later(e: Happened) -> None:
        log.append("later")

    d = Table({Happened: event((slow, True, True), (later, True, False))})

    async def main() -> None:
        # ensure_future, not create_task: the awaitable need not be a coroutine.
        task = asyncio.ensure_future(d.publish(Happened()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert log == ["finally"]


def test_request_route_via_publish_raises_type_error_on_await() -> None:
    async def handle(m: Ping) -> None:
        return None

    d = Table({Ping: request(handle)})
    aw = d.publish(Ping())
    with pytest.raises(TypeError, match=r"^`Ping` is a request: send it with `send`, not `publish`$"):
        run(aw)


def test_publish_compile_error_is_raised_on_await_and_not_cached() -> None:
    d = Table({Happened: LookupError("nothing")})
    aw = d.publish(Happened())
    with pytest.raises(LookupError, match="nothing"):
        run(aw)
    with pytest.raises(LookupError):
        run(d.publish(Happened()))
    assert d.compiled == [Happened, Happened]


def test_publish_result_is_single_use() -> None:
    async def handle(e: Happened) -> None:
        return None

    d = Table({Happened: event((handle, True, False))})

    async def main() -> None:
        aw = d.publish(Happened())
        await aw
        with pytest.raises(RuntimeError, match=REUSE):
            await aw

    asyncio.run(main())
