"""catga.compat.mediatr against the `mediatr` package itself (1.3.2, a dev dependency): the same
programs run on both, and what they observe (results, the order things ran in, the requests'
changes, which exception) must be the same."""

import __future__

import importlib
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import pytest

upstream = pytest.importorskip("mediatr", reason="the `mediatr` package is a dev dependency: `make venv`")
compat = importlib.import_module("catga.compat.mediatr")

Program = Callable[[ModuleType, list[str]], Awaitable[Any]]
PROGRAMS: dict[str, Program] = {}


def program(function: Program) -> Program:
    PROGRAMS[function.__name__] = function
    return function


class Query:
    def __init__(self, count: int) -> None:
        self.count = count


class SubQuery(Query):
    pass


class Other:
    pass


@program
async def function_handler_and_mixed_behaviours(lib: ModuleType, log: list[str]) -> Any:
    async def handle(request: Query) -> list[int]:
        log.append(f"handle {request.count}")
        return list(range(request.count))

    def set_four(request: Query, next: Any) -> Any:
        request.count = 4
        log.append("set_four")
        return next()

    async def set_three(request: Query, next: Any) -> Any:
        request.count = 3
        log.append("set_three")
        return await next()

    async def pad(request: Query, next: Any) -> Any:
        result = await next()
        log.append("pad")
        return [*result, 0, 0]

    lib.Mediator.register_handler(handle)
    for behavior in (set_four, set_three, pad):
        lib.Mediator.register_behavior(behavior)
    request = Query(5)
    return await lib.Mediator().send_async(request), request.count


@program
async def class_handler_class_behaviour_and_manager(lib: ModuleType, log: list[str]) -> Any:
    class Handler:
        def handle(self, request: Query) -> int:
            log.append("handle")
            return request.count

    class Around:
        def handle(self, request: Query, next: Any) -> Any:
            log.append("around")
            return next()

    async def everywhere(request: object, next: Any) -> Any:
        log.append("everywhere")
        return (await next()) * 10

    def manager(cls: type, is_behavior: bool = False) -> Any:
        log.append(f"build {cls.__name__} {is_behavior}")
        return cls()

    lib.Mediator.register_handler(Handler)
    lib.Mediator.register_behavior(everywhere)
    lib.Mediator.register_behavior(Around)
    mediator = lib.Mediator(manager)
    return await mediator.send_async(Query(2))


@program
async def sync_send_with_sync_chain(lib: ModuleType, log: list[str]) -> Any:
    def handle(request: Query) -> int:
        log.append("handle")
        return request.count

    def tag(request: object, next: Any) -> Any:
        request.tagged = True  # type: ignore[attr-defined]
        return next() + 1

    lib.Mediator.register_handler(handle)
    lib.Mediator.register_behavior(tag)
    request = Query(7)
    return lib.Mediator().send(request), lib.Mediator.send(Query(1)), request.tagged  # type: ignore[attr-defined]


@program
async def sync_send_of_an_async_chain_returns_a_coroutine(lib: ModuleType, log: list[str]) -> Any:
    async def handle(request: Query) -> int:
        return request.count

    lib.Mediator.register_handler(handle)
    pending = lib.Mediator().send(Query(2))
    return type(pending).__name__, await pending


@program
async def first_registration_wins(lib: ModuleType, log: list[str]) -> Any:
    def first(request: Query) -> str:
        return "first"

    def second(request: Query) -> str:
        return "second"

    lib.Mediator.register_handler(first)
    lib.Mediator.register_handler(second)
    return await lib.Mediator().send_async(Query(0)), len(lib.__handlers__)


@program
async def postponed_annotation_matches_the_class_name(lib: ModuleType, log: list[str]) -> Any:
    namespace: dict[str, Any] = {"Query": Query}
    source = "class Handler:\n    def handle(self, request: Query) -> str:\n        return 'by name'\n"
    exec(compile(source, "<postponed>", "exec", flags=__future__.annotations.compiler_flag), namespace)
    lib.Mediator.register_handler(namespace["Handler"])
    return list(lib.__handlers__), await lib.Mediator().send_async(Query(0))


@program
async def subclass_request_gets_base_behaviours_but_not_the_base_handler(lib: ModuleType, log: list[str]) -> Any:
    async def handle(request: Query) -> str:
        return "base"

    async def for_base(request: Query, next: Any) -> Any:
        log.append("for_base")
        return await next()

    async def for_sub(request: SubQuery) -> str:
        return "sub"

    lib.Mediator.register_handler(handle)
    lib.Mediator.register_behavior(for_base)
    outcome = [type(await _error(lib.Mediator().send_async(SubQuery(0)))).__name__]
    lib.Mediator.register_handler(for_sub)
    outcome.append(await lib.Mediator().send_async(SubQuery(0)))
    return outcome


@program
async def any_behaviour_and_repeated_registration(lib: ModuleType, log: list[str]) -> Any:
    async def handle(request: Other) -> int:
        return 1

    async def anything(request: Any, next: Any) -> Any:
        log.append("anything")
        return (await next()) + 1

    lib.Mediator.register_handler(handle)
    lib.Mediator.register_behavior(anything)
    lib.Mediator.register_behavior(anything)
    return await lib.Mediator().send_async(Other()), lib.find_behaviors(Other()) == [anything]


@program
async def short_circuit_still_builds_the_handler(lib: ModuleType, log: list[str]) -> Any:
    class Handler:
        def __init__(self) -> None:
            log.append("built")

        def handle(self, request: Query) -> str:
            log.append("handled")
            return "handled"

    async def stop(request: Query, next: Any) -> str:
        return "stopped"

    lib.Mediator.register_handler(Handler)
    lib.Mediator.register_behavior(stop)
    return await lib.Mediator().send_async(Query(0))


@program
async def errors(lib: ModuleType, log: list[str]) -> Any:
    class Boom(Exception):
        pass

    async def fail(request: Query) -> None:
        raise Boom

    async def around(request: Query, next: Any) -> Any:
        return await next()

    lib.Mediator.register_handler(fail)
    lib.Mediator.register_behavior(around)
    mediator = lib.Mediator()

    class Falsy:
        def __bool__(self) -> bool:
            return False

    outcome = [
        type(await _error(mediator.send_async(Query(0)))).__name__,
        type(await _error(mediator.send_async(Other()))).__name__,
        (await _error(mediator.send_async(None))).request is mediator,
        (await _error(mediator.send_async(Falsy()))).request is mediator,
        type(await _error(lib.Mediator.send_async(None))).__name__,
    ]
    for call in (lambda: mediator.send(Other()), lambda: lib.Mediator.send(None)):
        try:
            call()
        except Exception as exc:
            outcome.append(type(exc).__name__)
    return outcome


@program
async def registration_errors(lib: ModuleType, log: list[str]) -> Any:
    class NoHandle:
        pass

    class Instance:
        def handle(self, request: Query, next: Any) -> Any:
            return next()

    attempts = [
        (lib.Mediator.register_handler, lambda a, b: None),
        (lib.Mediator.register_handler, NoHandle),
        (lib.Mediator.register_behavior, lambda request: None),
        (lib.Mediator.register_behavior, Instance()),
    ]
    outcome = []
    for register, candidate in attempts:
        try:
            register(candidate)
        except Exception as exc:
            outcome.append((type(exc).__name__, sorted(set(vars(exc)) - {"__traceback__"})))
    return outcome, len(lib.__handlers__), len(lib.__behaviors__)


@program
async def generic_query(lib: ModuleType, log: list[str]) -> Any:
    class Response:
        def __init__(self, name: str) -> None:
            self.name = name

    class GetResponse(lib.GenericQuery[Response]):  # type: ignore[name-defined,misc]
        def __init__(self, name: str) -> None:
            self.name = name

    class Handler:
        def handle(self, request: GetResponse) -> Response:
            return Response(request.name)

    lib.Mediator.register_handler(Handler)
    return lib.Mediator().send(GetResponse("x")).name, lib.extract_request_type(Handler) is GetResponse


async def _error(awaitable: Awaitable[Any]) -> BaseException:
    try:
        await awaitable
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


@pytest.fixture(autouse=True)
def empty_upstream_registries() -> Any:
    upstream.__handlers__.clear()
    upstream.__behaviors__.clear()
    yield
    upstream.__handlers__.clear()
    upstream.__behaviors__.clear()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
async def test_compat_observes_what_mediatr_observes(name: str) -> None:
    run = PROGRAMS[name]
    upstream_log: list[str] = []
    compat_log: list[str] = []
    expected = await run(upstream, upstream_log)
    actual = await run(compat, compat_log)
    assert actual == expected
    assert compat_log == upstream_log
