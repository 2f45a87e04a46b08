"""The dispatch table and pipeline executor: the pure-Python twin of the native `Dispatcher`.

See docs/internals.md, "Dispatcher". `send` and `publish` are plain `def`s that return a coroutine:
an `async def send` would add a frame (+60-110 ns) to every send, and on the hot path (an async
handler without context) `send` returns the handler's own coroutine with no wrapper at all. Every
other case returns a small coroutine from a private `async def`, so failures surface on await and
`send`/`throw`/`close`, cancellation and the reuse error behave as for any coroutine.
"""

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Final, NoReturn

__all__ = ["CURRENT_MESSAGE", "Dispatcher", "Route"]

CURRENT_MESSAGE: Final[ContextVar[object | None]] = ContextVar("catga_current_message", default=None)
"""The message whose handler is running, set by every pipeline that has behaviours."""

Route = tuple[bool, tuple[tuple[Callable[[Any], Any], bool, bool], ...]]
"""A compiled route: `(is_event, ((target, is_async, with_context), ...))`.

`target(message)` runs the handler with its user behaviours and returns a coroutine when `is_async`,
else the result. `with_context` sets `CURRENT_MESSAGE` while it runs.
"""

_Handler = tuple[Callable[[Any], Any], bool, bool]


class Dispatcher:
    """The dispatch table and pipeline executor that `catga.Mediator` subclasses.

    Routes are compiled once per message type by calling `self._compile_route(message_type)`, which
    the subclass implements (returning a `Route` or raising `HandlerNotFound`), on the first send or
    publish of that type, and then looked up by the type's identity. The subclass calls
    `_invalidate()` whenever a registration changes a route.
    """

    # Subclasses get a `__dict__`; the route table is a slot so the hot path reads it fast.
    __slots__ = ("_catga_routes",)

    _catga_routes: dict[type, Route]

    def __new__(cls, *args: Any, **kwargs: Any) -> "Dispatcher":
        # The arguments belong to the subclass's `__init__`.
        self = object.__new__(cls)
        self._catga_routes = {}
        return self

    def send(self, message: Any, /) -> Awaitable[Any]:
        """Run the handler of a request through its pipeline. Errors are raised on await."""
        route = self._catga_routes.get(type(message))
        if route is None:
            try:
                route = _compile(self, type(message))
            except BaseException as exc:  # every failure is raised on await
                return _raise(exc)
        if route[0]:
            return _raise(
                TypeError(f"`{type(message).__qualname__}` is an event: publish it with `publish`, not `send`")
            )
        target, is_async, with_context = route[1][0]
        if with_context:
            return _with_context(target, is_async, message)
        if not is_async:
            return _call_sync(target, message)
        try:
            # The hot path: the handler's own coroutine, no wrapper.
            return target(message)  # type: ignore[no-any-return]
        except BaseException as exc:
            return _raise(exc)

    def publish(self, event: Any, /) -> Awaitable[None]:
        """Run every handler of an event, in order; failures are raised together as `PublishError`."""
        route = self._catga_routes.get(type(event))
        if route is None:
            try:
                route = _compile(self, type(event))
            except BaseException as exc:  # every failure is raised on await
                return _raise(exc)
        if not route[0]:
            return _raise(TypeError(f"`{type(event).__qualname__}` is a request: send it with `send`, not `publish`"))
        return _publish_sequential(route[1], event)

    def _route(self, message_type: type, /) -> Route:
        """The compiled route of a type (compiling it on a miss)."""
        route = self._catga_routes.get(message_type)
        if route is None:
            route = _compile(self, message_type)
        return route

    def _invalidate(self) -> None:
        """Forget every compiled route."""
        # A new table rather than `.clear()`: a compile that raced with this invalidation stores its
        # (possibly stale) route into the old table, which nobody reads any more.
        self._catga_routes = {}


def _compile(dispatcher: Dispatcher, message_type: type) -> Route:
    routes = dispatcher._catga_routes
    # Defined by the subclass only (as for the native class): without it this is an AttributeError.
    route: Route = dispatcher._compile_route(message_type)  # type: ignore[attr-defined]
    _check_route(route, message_type)
    routes[message_type] = route
    return route


def _check_route(route: object, message_type: type) -> None:
    # Checked once per compile (as the native core does when it converts the route), so that `send`
    # can index the route without anything that can fail.
    problem = _route_problem(route)
    if problem is not None:
        raise TypeError(
            f"`_compile_route` returned a malformed route for `{message_type.__qualname__}`: {problem}, got `{route!r}`"
        )


def _route_problem(route: object) -> str | None:
    if not isinstance(route, tuple):
        return "expected a tuple"
    if len(route) != 2:
        return "expected `(is_event, handlers)`"
    is_event, handlers = route
    if type(is_event) is not bool:
        return "`is_event` must be a bool"
    if not isinstance(handlers, tuple):
        return "`handlers` must be a tuple"
    for handler in handlers:
        if not isinstance(handler, tuple):
            return "each handler must be a tuple"
        if len(handler) != 3:
            return "each handler must be `(target, is_async, with_context)`"
        if type(handler[1]) is not bool or type(handler[2]) is not bool:
            return "handler flags must be bools"
    if not is_event and len(handlers) != 1:
        return "a request route needs exactly one handler"
    return None


async def _raise(exc: BaseException) -> NoReturn:
    raise exc


async def _call_sync(target: Callable[[Any], Any], message: Any) -> Any:
    return target(message)


async def _with_context(target: Callable[[Any], Any], is_async: bool, message: Any) -> Any:
    token = CURRENT_MESSAGE.set(message)
    try:
        if is_async:
            return await target(message)
        return target(message)
    finally:
        CURRENT_MESSAGE.reset(token)


async def _publish_sequential(handlers: tuple[_Handler, ...], event: Any) -> None:
    failures: list[Exception] | None = None
    for target, is_async, with_context in handlers:
        token = CURRENT_MESSAGE.set(event) if with_context else None
        try:
            if is_async:
                await target(event)
            else:
                target(event)
        except Exception as exc:
            # Only `Exception`s: cancellation, KeyboardInterrupt and SystemExit stop the publish.
            if failures is None:
                failures = []
            failures.append(exc)
        finally:
            if token is not None:
                CURRENT_MESSAGE.reset(token)
    if failures is not None:
        raise _publish_error(event, failures, len(handlers))


def _publish_error(event: Any, failures: list[Exception], total: int) -> Exception:
    # Imported here, on the rare failure path: importing the core must not import the error
    # hierarchy, which may itself import the core.
    from catga._errors import PublishError

    return PublishError(
        f"`{len(failures)}` of `{total}` handlers of `{type(event).__qualname__}` failed",
        failures,
    )
