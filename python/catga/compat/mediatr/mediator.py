"""`Mediator` and the registries of mediatr 1.3.2, dispatched through catga's core.

What mediatr does on every send (look the handler up by the request's class, then by its class
name; collect the behaviours whose key is the class, a base of it, or `Any`; link them with
zero-argument `next()` functions) happens here once per request type, when catga's core compiles
the type's route; the registries drop the compiled routes whenever they change
(`_registry.py`), so the result is the same as mediatr's at every moment.

Deliberate differences, each where mediatr fails:

- a behaviour annotated with a string (`from __future__ import annotations`) matches a request
  whose class, or a base class, has that name (`"object"` and `"Any"` match every request);
  mediatr raises `TypeError` from `issubclass` on every send once one is registered;
- `send_async(req)` of a request that is `== None` without being `None` is sent (mediatr's check
  is `request == None`).

And one that comes with watching the registries: a plain list stored in `__behaviors__` is stored
as a watched copy, so changing the original list object afterwards does not reach the registry.

Beyond mediatr: `register_event_handler` / `@Mediator.event_handler`, `publish_async` and
`publish` (docs/migrating.md).
"""

import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, TypeVar, overload

from catga import _core
from catga._errors import PublishError
from catga.compat.mediatr._chains import async_target, sync_target
from catga.compat.mediatr._registry import Registry, WatchedList, watch
from catga.compat.mediatr.exceptions import (
    HandlerNotFoundError,
    InvalidRequest,
    raise_if_behavior_is_invalid,
    raise_if_handler_is_invalid,
)

__all__ = [
    "GenericQuery",
    "Mediator",
    "__behaviors__",
    "__event_handlers__",
    "__handlers__",
    "default_handler_class_manager",
    "extract_request_type",
    "find_behaviors",
    "find_event_handlers",
]

TResponse = TypeVar("TResponse")

# Request type (or class name) -> its handler; the first registration of a type wins.
__handlers__: dict[Any, Any] = Registry()
# Request type (or class name, or `Any`) -> its behaviours, in registration order.
__behaviors__: dict[Any, list[Any]] = Registry()
# Event type (or class name, or `Any`) -> its handlers, in registration order (not in mediatr).
__event_handlers__: dict[Any, list[Any]] = Registry()


class GenericQuery(Generic[TResponse]):
    """A request whose handler returns a `TResponse`: `send` and `send_async` are typed by it.

    >>> class GetUser(GenericQuery[str]):
    ...     def __init__(self, user_id: int) -> None:
    ...         self.user_id = user_id
    """


def default_handler_class_manager(handler_class: Any, is_behavior: bool = False) -> Any:
    """Build a class handler or class behaviour for one call: `handler_class()`."""
    return handler_class()


def extract_request_type(handler: Any, is_behavior: bool = False) -> Any:
    """The annotation of the request parameter of a handler or behaviour: its registry key.

    A function's first parameter, or the first after `self` of a class's (or an instance's)
    `handle`. The annotation as written: a class, a string under `from __future__ import
    annotations`, `inspect.Parameter.empty` when there is none. Raises `InvalidHandlerError` /
    `InvalidBehaviorError` for a callable of the wrong shape.

    >>> class Ping: ...
    >>> async def pong(request: Ping) -> str: ...
    >>> extract_request_type(pong) is Ping
    True
    """
    if is_behavior:
        raise_if_behavior_is_invalid(handler)
    else:
        raise_if_handler_is_invalid(handler)
    is_function = inspect.isfunction(handler)
    func = handler if is_function else _handle_function(handler)
    parameters = list(inspect.signature(func).parameters.values())
    return parameters[0 if is_function else 1].annotation


def _handle_function(handler: Any) -> Any:
    handle = handler.handle
    return handle if inspect.isfunction(handle) else type(handler).handle


def find_behaviors(request: Any) -> list[Any]:
    """The behaviours that run around `request`'s handler, outermost first (a new list).

    Those registered for its class, a base class of it, or `typing.Any`, grouped by key in the
    order the keys were first registered.
    """
    return _matching(__behaviors__, request.__class__)


def find_event_handlers(event: Any) -> list[Any]:
    """The handlers `publish` runs for `event`, in order (a new list; not in mediatr): those
    registered for its class, a base class of it, or `typing.Any`, grouped like behaviours."""
    return _matching(__event_handlers__, event.__class__)


def _matching(registry: dict[Any, list[Any]], request_type: type) -> list[Any]:
    found: list[Any] = []
    for key, values in registry.items():
        if _key_matches(key, request_type):
            found += values
    return found


def _key_matches(key: Any, request_type: type) -> bool:
    if key is Any or key == request_type:
        return True
    if isinstance(key, str):
        return key in ("Any", "typing.Any") or any(base.__name__ == key for base in request_type.__mro__)
    # As mediatr: a key that is no class (say `Optional[X]`) makes `issubclass` raise TypeError.
    return issubclass(request_type, key)


def _find_handler(request_type: type) -> Any:
    # As mediatr: by the class, then by the class name (a string annotation); falsy means none.
    return __handlers__.get(request_type) or __handlers__.get(request_type.__name__)


class _RequestRoutes(_core.Dispatcher):
    """The compiled routes of one manager owner: requests in this dispatcher (catga's core),
    events in `events`, and the chains of the synchronous calls in two dicts."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.events = _EventRoutes(owner)
        self.sync: dict[type, Callable[[Any], Any]] = {}
        self.sync_events: dict[type, list[tuple[Any, Callable[[Any], Any]]]] = {}
        watch(self)

    def _compile_route(self, request_type: type, /) -> Any:
        handler = _find_handler(request_type)
        if not handler:
            # Kept in the table like any route (dropped on the next registration): an unknown
            # type costs a lookup, not a compile, every time.
            return (False, ((partial(_not_found, self), True, False),))
        target = async_target(handler, _matching(__behaviors__, request_type), self.owner)
        return (False, ((target, True, False),))

    def sync_chain(self, request_type: type) -> Callable[[Any], Any]:
        chain = self.sync.get(request_type)
        if chain is None:
            handler = _find_handler(request_type)
            if not handler:
                return _raise_not_found
            chain = sync_target(handler, _matching(__behaviors__, request_type), self.owner)
            self.sync[request_type] = chain
        return chain

    def sync_event_chains(self, event_type: type) -> list[tuple[Any, Callable[[Any], Any]]]:
        chains = self.sync_events.get(event_type)
        if chains is None:
            behaviors = _matching(__behaviors__, event_type)
            chains = [
                (handler, sync_target(handler, behaviors, self.owner))
                for handler in _matching(__event_handlers__, event_type)
            ]
            self.sync_events[event_type] = chains
        return chains

    def _forget_routes(self) -> None:
        self._invalidate()
        self.events._invalidate()
        self.sync = {}
        self.sync_events = {}


class _EventRoutes(_core.Dispatcher):
    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def _compile_route(self, event_type: type, /) -> Any:
        behaviors = _matching(__behaviors__, event_type)
        handlers = _matching(__event_handlers__, event_type)
        return (True, tuple((async_target(handler, behaviors, self.owner), True, False) for handler in handlers))


async def _not_found(routes: _RequestRoutes, request: Any) -> Any:
    request_type = request.__class__
    if request_type is not type(request):
        # A proxy (`unittest.mock.Mock(spec=Query)`): mediatr looks up `request.__class__`, and
        # so does this slow path (the core's table is keyed by the type).
        handler = _find_handler(request_type)
        if handler:
            result = async_target(handler, _matching(__behaviors__, request_type), routes.owner)(request)
            return (await result) if inspect.isawaitable(result) else result
    raise HandlerNotFoundError(request)


def _raise_not_found(request: Any) -> Any:
    raise HandlerNotFoundError(request)


async def _raise(error: BaseException) -> Any:
    raise error


class Mediator:
    """mediatr's mediator: handlers and behaviours in module-level registries, requests sent
    through catga's core.

    >>> import asyncio
    >>> class Ping:
    ...     pass
    >>> @Mediator.handler
    ... async def pong(request: Ping) -> str:
    ...     return "pong"
    >>> asyncio.run(Mediator().send_async(Ping()))
    'pong'
    >>> __handlers__.clear()
    """

    handler_class_manager: Callable[..., Any] = staticmethod(default_handler_class_manager)

    # The routes of every mediator whose `handler_class_manager` is the class's: one table for
    # all of them and for `Mediator.send(req)` on the class, so `Mediator()` per request costs
    # nothing. A mediator given its own manager (or of a subclass that overrides it) gets its own.
    _catga_routes: _RequestRoutes | None

    def __init__(self, handler_class_manager: Callable[..., Any] | None = None) -> None:
        if handler_class_manager:
            self.handler_class_manager = handler_class_manager

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "handler_class_manager" in cls.__dict__:
            cls._catga_routes = None  # each instance reads its own manager: its own routes

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "handler_class_manager":
            object.__setattr__(self, "_catga_routes", _RequestRoutes(self))

    def _routes(self) -> _RequestRoutes:
        routes = self._catga_routes
        if routes is None:
            routes = _RequestRoutes(self)
            object.__setattr__(self, "_catga_routes", routes)
        return routes

    @overload
    def send_async(self, request: GenericQuery[TResponse]) -> Awaitable[TResponse]: ...
    @overload
    def send_async(self, request: Any) -> Awaitable[Any]: ...
    def send_async(self: Any, request: Any = None) -> Awaitable[Any]:
        """Send `request` to its handler through its behaviours; await the result.

        Also `Mediator.send_async(request)` on the class. Errors are raised on the await, as
        mediatr raises them (`HandlerNotFoundError`, the handler's own exceptions).
        """
        # NOTE: `_resolve` inlined: a helper's frame would add ~40 ns to the hot path.
        routes: _RequestRoutes | None
        if request:
            routes = self._catga_routes
            if routes is None:  # a subclass that overrides `handler_class_manager`
                routes = self._routes()
        else:
            # mediatr: no request means the call was made on the class, with the request in `self`.
            request = self
            routes = _SHARED
            if request is None:
                return _raise(InvalidRequest())
        return routes.send(request)

    @overload
    def send(self, request: GenericQuery[TResponse]) -> TResponse: ...
    @overload
    def send(self, request: Any) -> Any: ...
    def send(self: Any, request: Any = None) -> Any:
        """Send `request` synchronously: returns what the chain returns, unawaited (a coroutine
        when an async handler or behaviour is reached, as in mediatr).

        Also `Mediator.send(request)` on the class.
        """
        routes, request = _resolve(self, request)
        # `__class__`, not `type()`, as mediatr: a `Mock(spec=Query)` reaches Query's handler.
        return routes.sync_chain(request.__class__)(request)

    def publish_async(self: Any, event: Any = None) -> Awaitable[None]:
        """Run every handler of `event` (not in mediatr), in registration order, each through the
        behaviours that match the event; await it.

        Every handler runs even when one fails; then the failures are raised together as
        `catga.PublishError` (an `ExceptionGroup`). No handler: nothing happens.
        Also `Mediator.publish_async(event)` on the class.
        """
        # NOTE: `_resolve` inlined, as in `send_async`: publish is a hot path too.
        routes: _RequestRoutes | None
        if event:
            routes = self._catga_routes
            if routes is None:  # a subclass that overrides `handler_class_manager`
                routes = self._routes()
        else:
            event = self
            routes = _SHARED
            if event is None:
                return _raise(InvalidRequest())
        return routes.events.publish(event)

    def publish(self: Any, event: Any = None) -> None:
        """`publish_async` without an event loop, for synchronous handlers and behaviours (not
        in mediatr). A handler that returns an awaitable fails with `TypeError` (its coroutine is
        closed, never run half-way): publish it with `publish_async`.
        """
        routes, event = _resolve(self, event)
        chains = routes.sync_event_chains(type(event))
        failures: list[Exception] = []
        for handler, chain in chains:
            try:
                result = chain(event)
            except Exception as exc:
                failures.append(exc)
                continue
            if inspect.isawaitable(result):
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                failures.append(
                    TypeError(
                        f"`{getattr(handler, '__qualname__', handler)!r}` returned an awaitable for "
                        f"`{type(event).__qualname__}`: `publish` runs synchronous handlers, use `publish_async`"
                    )
                )
        if failures:
            raise PublishError(
                f"`{len(failures)}` of `{len(chains)}` handlers of `{type(event).__qualname__}` failed", failures
            )

    @staticmethod
    def register_handler(handler: Any) -> None:
        """Register a request handler under its request type; a type's first handler wins.

        A function `(request)` or a class with `handle(self, request)` (built per call through
        `handler_class_manager`), or an instance (handed to `handler_class_manager` as is).
        """
        request_type = extract_request_type(handler)
        if not __handlers__.get(request_type):
            __handlers__[request_type] = handler

    @staticmethod
    def register_behavior(behavior: Any) -> None:
        """Register a behaviour `(request, next)` (or a class with `handle(self, request, next)`)
        for its request type, a base class, or `typing.Any`; registering one twice is a no-op."""
        request_type = extract_request_type(behavior, True)
        _append_once(__behaviors__, request_type, behavior)

    @staticmethod
    def register_event_handler(handler: Any) -> None:
        """Register a handler of an event type (not in mediatr): any number per type, each run by
        `publish`; registering one twice is a no-op."""
        event_type = extract_request_type(handler)
        _append_once(__event_handlers__, event_type, handler)

    @staticmethod
    def handler(handler: Any) -> Any:
        """`register_handler` as a decorator; returns the handler."""
        Mediator.register_handler(handler)
        return handler

    @staticmethod
    def behavior(behavior: Any) -> Any:
        """`register_behavior` as a decorator; returns the behaviour."""
        Mediator.register_behavior(behavior)
        return behavior

    @staticmethod
    def event_handler(handler: Any) -> Any:
        """`register_event_handler` as a decorator; returns the handler."""
        Mediator.register_event_handler(handler)
        return handler


def _resolve(mediator: Any, request: Any) -> tuple[_RequestRoutes, Any]:
    """The routes and the request of a call `mediator.method(request)`, or of `Mediator.method(request)`
    on the class, where the request arrives in `mediator` (mediatr's `request or self`)."""
    if request:
        routes = mediator._catga_routes
        if routes is None:  # a subclass that overrides `handler_class_manager`
            routes = mediator._routes()
        return routes, request
    if mediator is None:
        raise InvalidRequest()
    return _SHARED, mediator


def _append_once(registry: dict[Any, list[Any]], key: Any, value: Any) -> None:
    values = registry.get(key)
    if not values:
        registry[key] = values = WatchedList()
    if not any(existing == value for existing in values):
        values.append(value)


# `Mediator.send(req)` and every mediator using the class's manager share these routes; their
# class handlers are built with `Mediator.handler_class_manager`, read on each call.
_SHARED = _RequestRoutes(Mediator)
Mediator._catga_routes = _SHARED
