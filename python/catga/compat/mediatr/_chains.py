"""mediatr's pipeline, composed once per request type instead of once per call.

mediatr runs `behavior(request, next)` for each matching behaviour, outermost first, then the
handler; `next()` takes no argument and runs the rest. `send_async` awaits whatever each step
returns once, if it is awaitable; the synchronous `send` returns it as is. Class handlers and class
behaviours are built on every call with `handler_class_manager(cls)` / `(cls, True)`, read from the
mediator at that moment.

Here the chain is built once, when the core compiles the request type's route: one function per
behaviour, linked at compile time, so a call only makes the `next` of each level (a
`functools.partial`, which calls straight into the next level without a frame of its own).
"""

from collections.abc import Callable, Sequence
from functools import partial
from inspect import isawaitable, iscoroutinefunction, isfunction
from typing import Any

__all__ = ["ManagerOwner", "async_target", "sync_target"]

# `level(handle, request)`: one behaviour and everything inside it, for the handler `handle`. The
# handle comes first so that `partial(level, handle)` is a route target.
_Level = Callable[[Any, Callable[[Any], Any]], Any]


# What `handler_class_manager` is read from on each call: a mediator, or the `Mediator` class.
ManagerOwner = Any


async def _run_handle(handle: Callable[[Any], Any], request: Any) -> Any:
    # mediatr's `__return_await__`: each step's result is awaited once, if it is awaitable.
    result = handle(request)
    return (await result) if isawaitable(result) else result


def async_target(handler: Any, behaviors: Sequence[Any], owner: ManagerOwner) -> Callable[[Any], Any]:
    """The core route target of `send_async`: `target(request)` returns an awaitable of the result."""
    is_function = isfunction(handler)
    # NOTE: an `async def` handler reached without behaviours is the target itself, so the core
    # hands its coroutine back untouched: `send_async` then costs the call into the core and the
    # route lookup, no frame of catga's (see BENCHMARKS.md, "compat").
    direct = is_function and iscoroutinefunction(handler)
    if not behaviors:
        if direct:
            return handler  # type: ignore[no-any-return]
        if is_function:
            return partial(_run_handle, handler)

        async def run_class_handler(request: Any) -> Any:
            result = owner.handler_class_manager(handler).handle(request)
            return (await result) if isawaitable(result) else result

        return run_class_handler

    first = _async_chain(behaviors, None if direct else _run_handle, owner)
    if is_function:
        return partial(first, handler)

    async def run_class_chain(request: Any) -> Any:
        # Built on the await, as mediatr builds it (not when `send_async` is called).
        return await first(owner.handler_class_manager(handler).handle, request)

    return run_class_chain


def _async_chain(behaviors: Sequence[Any], innermost: _Level | None, owner: ManagerOwner) -> _Level:
    """The levels from the innermost out; `innermost=None`: the last `next()` is the handler's own
    coroutine (`partial(handle, request)`)."""
    step = innermost
    for behavior in reversed(behaviors):
        step = _async_level(behavior, step, owner)
    assert step is not None  # at least one behaviour
    return step


def _async_level(behavior: Any, step: _Level | None, owner: ManagerOwner) -> _Level:
    def next_of(handle: Callable[[Any], Any], request: Any) -> Callable[[], Any]:
        return partial(handle, request) if step is None else partial(step, handle, request)

    if isfunction(behavior):
        if iscoroutinefunction(behavior):
            # NOTE: a plain `def` that returns the behaviour's coroutine: awaiting `next()` awaits
            # the behaviour itself, with no wrapping frame per level.
            if step is None:

                def last_async_level(handle: Callable[[Any], Any], request: Any) -> Any:
                    return behavior(request, partial(handle, request))

                return last_async_level

            def async_level(handle: Callable[[Any], Any], request: Any) -> Any:
                return behavior(request, partial(step, handle, request))

            return async_level

        async def sync_level(handle: Callable[[Any], Any], request: Any) -> Any:
            result = behavior(request, next_of(handle, request))
            return (await result) if isawaitable(result) else result

        return sync_level

    async def class_level(handle: Callable[[Any], Any], request: Any) -> Any:
        result = owner.handler_class_manager(behavior, True).handle(request, next_of(handle, request))
        return (await result) if isawaitable(result) else result

    return class_level


def sync_target(handler: Any, behaviors: Sequence[Any], owner: ManagerOwner) -> Callable[[Any], Any]:
    """The chain of the synchronous `send`: `target(request)` returns what the chain returns (a
    coroutine, when an async handler or behaviour is reached: mediatr's `send` does not await)."""
    is_function = isfunction(handler)
    if not behaviors:
        if is_function:
            return handler  # type: ignore[no-any-return]

        def run_class_handler(request: Any) -> Any:
            return owner.handler_class_manager(handler).handle(request)

        return run_class_handler

    step: _Level | None = None
    for behavior in reversed(behaviors):
        step = _sync_level(behavior, step, owner)
    first = step
    assert first is not None
    if is_function:
        return partial(first, handler)

    def run_class_chain(request: Any) -> Any:
        return first(owner.handler_class_manager(handler).handle, request)

    return run_class_chain


def _sync_level(behavior: Any, step: _Level | None, owner: ManagerOwner) -> _Level:
    if isfunction(behavior):
        if step is None:

            def last_level(handle: Callable[[Any], Any], request: Any) -> Any:
                return behavior(request, partial(handle, request))

            return last_level

        def level(handle: Callable[[Any], Any], request: Any) -> Any:
            return behavior(request, partial(step, handle, request))

        return level

    def class_level(handle: Callable[[Any], Any], request: Any) -> Any:
        call_next = partial(handle, request) if step is None else partial(step, handle, request)
        return owner.handler_class_manager(behavior, True).handle(request, call_next)

    return class_level
