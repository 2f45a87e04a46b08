"""`Mediator`: registration, route compilation and the async glue around the core dispatcher.

The hot path lives in the core (`catga._core.Dispatcher`): `send` and `publish` are the core's own
methods, not redefined here, so `mediator.send(request)` is one call into the core with no Python
frame of ours. This module turns registrations into the `Route` tuples the core runs
(docs/internals.md): it finds a type's handler (exact type, then the nearest base in the MRO),
composes its user behaviours into one chain, and says whether that chain is async and whether it
needs the message context.
"""

import asyncio
import functools
import inspect
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import copy_context
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self, TypeVar, overload

from catga._config import Config
from catga._core import CURRENT_MESSAGE, Dispatcher, Route
from catga._errors import CatgaError, DuplicateHandler, HandlerFailed, HandlerNotFound, PublishError
from catga._messages import Event, Message, Request, wire_name
from catga._result import Result

__all__ = ["Mediator"]

T = TypeVar("T")
H = TypeVar("H")
B = TypeVar("B")


class _SupportsHandle(Protocol):
    """An object that handles messages through a `handle` method."""

    def handle(self, message: Any, /) -> Any: ...


HC = TypeVar("HC", bound=_SupportsHandle)

Kind = Literal["request", "event"]
PublishStrategy = Literal["sequential", "concurrent"]
Behavior = Callable[[Any, Callable[[Any], Any]], Any]
"""`(message, call_next) -> result`: async (normally) or sync; see `Mediator.add_behavior`."""

_Target = Callable[[Any], Any]
_RouteHandler = tuple[_Target, bool, bool]

_PARTIAL_TYPES: Final = (functools.partial,)

# The concurrent publish starts every handler at once. 3.12+ starts each in an eager Task: its first
# step runs right away, inside the task (so `current_task()`, `asyncio.timeout` and task groups see
# the right task), and a handler that finishes without suspending never reaches the event loop.
# 3.11 has no eager tasks; stepping the coroutine inline there would bind a timeout or task group
# entered before the first `await` to the publisher's task (a timeout would cancel the publish, not
# the handler), so on 3.11 every async handler gets a plain Task: correct, at 3-6 us a handler.
_EAGER_TASKS: Final = sys.version_info >= (3, 12)


class _Handler:
    """One registered handler: how to call it, and what to call it in messages."""

    __slots__ = ("call", "is_async", "name")

    def __init__(self, call: _Target, is_async: bool, name: str) -> None:
        self.call = call  # call(message) -> result, or an awaitable of it when is_async
        self.is_async = is_async
        self.name = name


class Mediator(Dispatcher):
    """Sends requests to their one handler and publishes events to all of theirs, in process.

    Handlers are async or sync functions, objects or classes with a `handle` method, or factories
    called per message. `send`, `publish` and the rest are described in API.md section 3.

    >>> import asyncio, catga
    >>> class Greet(catga.Query[str]):
    ...     name: str
    >>> mediator = catga.Mediator()
    >>> @mediator.handler
    ... async def greet(query: Greet) -> str:
    ...     return f"hello {query.name}"
    >>> asyncio.run(mediator.send(Greet("ada")))
    'hello ada'
    """

    if TYPE_CHECKING:
        # Bound straight to the core's methods at runtime (defining them here would add a Python
        # frame to every call); these declarations only give type checkers the response types.
        @overload
        def send(self, message: Request[T], /) -> Coroutine[Any, Any, T]: ...
        @overload
        def send(self, message: object, /) -> Coroutine[Any, Any, Any]: ...
        def send(self, message: object, /) -> Coroutine[Any, Any, Any]:
            """Run the request's handler through its pipeline and return its value.

            Raises the handler's own exception unchanged, or a `CatgaError` for a failure catga
            produced (`HandlerNotFound`, ...). An event raises `TypeError`: publish it instead.
            """

        def publish(self, event: object, /) -> Coroutine[Any, Any, None]:
            """Run every handler of the event's type and base types; a failing handler never stops
            the others, and failures are raised together as `PublishError` after all ran."""

    def __init__(
        self,
        *,
        config: Config | None = None,
        publish: PublishStrategy = "sequential",
        transport: object | None = None,
    ) -> None:
        """Build a mediator.

        `config`: the built-in behaviours (`Config.default()` when `None`). `publish`:
        `"sequential"` runs event handlers one after another; `"concurrent"` starts them all eagerly
        and turns only those that suspend into tasks. `transport`: not implemented yet.
        """
        super().__init__()
        if config is None:
            config = Config.default()
        elif not isinstance(config, Config):
            raise TypeError(f"`config` must be a `catga.Config`, got `{config!r}`")
        missing = [name for name, behavior in config._enabled().items() if not type(behavior).implemented]
        if missing:
            names = ", ".join(f"`{name}`" for name in missing)
            raise NotImplementedError(
                f"built-in behaviours not implemented yet: {names}; leave them out of the config "
                "(`Config.default()` and `Config.minimal()` do)"
            )
        if publish not in ("sequential", "concurrent"):
            raise ValueError(f"`publish` must be `sequential` or `concurrent`, got `{publish!r}`")
        if transport is not None:
            raise NotImplementedError(f"transports are not implemented yet, got `{transport!r}`")
        self._config: Final = config
        self._publish_strategy: Final = publish
        self._requests: dict[type, _Handler] = {}
        # Event handlers in registration order, with the type each was registered for: a route
        # takes every entry whose type is the event's type or one of its bases.
        self._events: list[tuple[type, _Handler]] = []
        # Plain (non-`Message`) types registered with `kind="event"`.
        self._event_types: set[type] = set()
        self._behaviors: list[tuple[Behavior, type | None, bool]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        if publish == "concurrent":
            # An instance attribute shadows the core's sequential `publish`.
            self.publish = self._publish_concurrent  # type: ignore[method-assign]

    @property
    def config(self) -> Config:
        """The built-in behaviours this mediator was built with."""
        return self._config

    def __repr__(self) -> str:
        handlers = len(self._requests) + len(self._events)
        return (
            f"<catga.Mediator: {handlers} handlers, {len(self._behaviors)} behaviours, "
            f"publish={self._publish_strategy!r}>"
        )

    # ------------------------------------------------------------------------------ registration

    # For type checkers a class is callable too: a class with `handle` is a handler, any other
    # class a message type. The order of these overloads makes that distinction.
    @overload
    def handler(self, handler: type[HC], /) -> type[HC]: ...
    @overload
    def handler(self, message_type: type[Any], /, *, kind: Kind | None = None) -> Callable[[H], H]: ...
    @overload
    def handler(self, handler: H, /) -> H: ...
    @overload
    def handler(self, *, kind: Kind | None = None) -> Callable[[H], H]: ...
    def handler(self, target: Any = None, *, kind: Kind | None = None) -> Any:  # no `/`: mypy rejects it here
        """Register a handler, as a decorator; returns the handler unchanged.

        `@mediator.handler` takes the message type from the annotation of the handler's first
        parameter (for a class, of its `handle` method's); `@mediator.handler(CreateOrder)` names
        it. `kind="event"` registers a plain (non-`Message`) type as an event.

        >>> import catga
        >>> class Ping(catga.Command[str]):
        ...     pass
        >>> mediator = catga.Mediator()
        >>> @mediator.handler
        ... async def pong(cmd: Ping) -> str:
        ...     return "pong"
        """
        caller = sys._getframe(1).f_locals
        if target is None or (isinstance(target, type) and not _is_handler_class(target)):
            message_type: type | None = target

            def decorate(handler: H) -> H:
                self._add(message_type, handler, None, kind, sys._getframe(1).f_locals)
                return handler

            return decorate
        self._add(None, target, None, kind, caller)
        return target

    def register(
        self,
        message_type: type,
        handler: object = None,
        *,
        factory: Callable[[], object] | None = None,
        kind: Kind | None = None,
    ) -> None:
        """Register a handler (or a factory of handlers) for `message_type`.

        `handler`: an async or sync callable taking the message, an object with a `handle` method,
        or a class with one (instantiated per message). `factory`: called with no arguments per
        message, returns a handler (a callable or an object with `handle`); for DI containers.
        `kind="event"` makes a plain type an event. A second handler for a request type raises
        `DuplicateHandler`.
        """
        if not isinstance(message_type, type):
            raise TypeError(f"`message_type` must be a class, got `{message_type!r}`")
        self._add(message_type, handler, factory, kind, None)

    def add_behavior(self, behavior: B, for_type: type | None = None) -> B:
        """Add a user behaviour, run around the handler of every message (or of `for_type` and
        its subclasses). Returns it, so it also works as a decorator.

        A behaviour is `async def behavior(message, call_next)`: `await call_next(message)` runs the
        rest of the pipeline (possibly with a replaced message); not calling it short-circuits.
        Behaviours run in registration order, outermost first. A sync behaviour suits routes whose
        handler is sync too (`send_sync`); on an async route its `call_next` returns an awaitable,
        which it must return.
        """
        if not callable(behavior):
            raise TypeError(f"behaviour `{behavior!r}` is not callable: it must be `(message, call_next) -> result`")
        if for_type is not None and not isinstance(for_type, type):
            raise TypeError(f"`for_type` must be a class or `None`, got `{for_type!r}`")
        name = _name(behavior)
        try:
            signature = inspect.signature(behavior)
        except (TypeError, ValueError):  # some builtins have none; trust them
            pass
        else:
            try:
                signature.bind(None, None)
            except TypeError:
                raise TypeError(
                    f"behaviour `{name}` must take two positional parameters `(message, call_next)`, "
                    f"its signature is `{signature}`"
                ) from None
        self._behaviors.append((behavior, for_type, _is_async_callable(behavior)))
        self._invalidate()
        return behavior

    def _add(
        self,
        message_type: type | None,
        handler: object,
        factory: Callable[[], object] | None,
        kind: Kind | None,
        localns: dict[str, Any] | None,
    ) -> None:
        if factory is None:
            if handler is None:
                raise TypeError("pass a handler or a `factory=`")
            entry, first_param = _adapt_handler(handler)
        elif handler is None:
            entry, first_param = _adapt_factory(factory)
        else:
            raise TypeError("pass a handler or a `factory=`, not both")
        if message_type is None:
            message_type = _infer_message_type(entry.name, first_param, localns)
        if self._resolve_kind(message_type, kind) == "event":
            self._events.append((message_type, entry))
        else:
            existing = self._requests.get(message_type)
            if existing is not None:
                raise DuplicateHandler(
                    f"`{message_type.__qualname__}` already has a handler, `{existing.name}`: "
                    f"a request type has exactly one (registering `{entry.name}`)",
                    message_type=wire_name(message_type),
                )
            self._requests[message_type] = entry
        self._invalidate()

    def _resolve_kind(self, message_type: type, kind: Kind | None) -> Kind:
        if kind not in (None, "request", "event"):
            raise ValueError(f"`kind` must be `request`, `event` or `None`, got `{kind!r}`")
        name = message_type.__qualname__
        if issubclass(message_type, Event):
            if kind == "request":
                raise ValueError(f"`{name}` is a `catga.Event`: it cannot be registered with kind `request`")
            return "event"
        if issubclass(message_type, Message):
            if kind == "event":
                raise ValueError(
                    f"`{name}` is a request (a `catga.Message` that is not an `Event`): only plain types "
                    "take kind `event`; subclass `catga.Event` for an event"
                )
            return "request"
        inherited: Kind = "event" if self._is_plain_event(message_type) else "request"
        if kind is None:
            return inherited
        if kind == "request" and inherited == "event":
            raise ValueError(f"`{name}` is an event (a base class was registered with kind `event`)")
        if kind == "event" and inherited == "request":
            if message_type in self._requests:
                raise ValueError(f"`{name}` already has a request handler: it cannot also be an event")
            self._event_types.add(message_type)
        return kind

    def _is_plain_event(self, message_type: type) -> bool:
        event_types = self._event_types
        return bool(event_types) and any(base in event_types for base in message_type.__mro__)

    # ------------------------------------------------------------------------------------ routes

    def _compile_route(self, message_type: type, /) -> Route:
        """Build the route of a type: its handler(s) with their user behaviours (see internals.md)."""
        if message_type is type(None):
            raise HandlerNotFound(
                "no handler for `NoneType`: send a message instance, got `None`", message_type="builtins.NoneType"
            )
        if issubclass(message_type, Event) or (
            not issubclass(message_type, Message) and self._is_plain_event(message_type)
        ):
            behaviors = self._behaviors_for(message_type)
            handlers = tuple(
                _route_handler(entry, behaviors)
                for registered, entry in self._events
                if issubclass(message_type, registered)
            )
            return (True, handlers)
        requests = self._requests
        for base in message_type.__mro__:
            entry = requests.get(base)
            if entry is not None:
                return (False, (_route_handler(entry, self._behaviors_for(message_type)),))
        if issubclass(message_type, type):
            # A class was sent instead of an instance. The route is keyed by the metaclass, so the
            # target (which gets the class itself) names it.
            return (False, ((_class_sent, False, False),))
        raise HandlerNotFound(f"no handler for `{message_type.__qualname__}`", message_type=wire_name(message_type))

    def _behaviors_for(self, message_type: type) -> list[tuple[Behavior, bool]]:
        return [
            (behavior, is_async)
            for behavior, for_type, is_async in self._behaviors
            if for_type is None or issubclass(message_type, for_type)
        ]

    # ---------------------------------------------------------------------------------- dispatch

    @overload
    async def send_result(self, request: Request[T], /) -> Result[T]: ...
    @overload
    async def send_result(self, request: object, /) -> Result[Any]: ...
    async def send_result(self, request: object, /) -> Result[Any]:
        """Like `send`, but returns a `Result` instead of raising.

        A handler's own `CatgaError` is returned as is; any other exception becomes a
        `HandlerFailed` whose `__cause__` is the original. Only `asyncio.CancelledError`,
        `KeyboardInterrupt` and `SystemExit` propagate.
        """
        try:
            value = await self.send(request)
        except CatgaError as exc:
            return Result.failure(exc)
        except Exception as exc:
            return Result.failure(_handler_failed(request, exc))
        return Result.success(value)

    @overload
    async def send_many(self, requests: Iterable[Request[T]], /) -> list[Result[T]]: ...
    @overload
    async def send_many(self, requests: Iterable[object], /) -> list[Result[Any]]: ...
    async def send_many(self, requests: Iterable[object], /) -> list[Result[Any]]:
        """Send each request in turn (one after another) and return their results in input order."""
        results: list[Result[Any]] = []
        for request in requests:
            results.append(await self.send_result(request))
        return results

    @overload
    def send_sync(self, request: Request[T], /) -> T: ...
    @overload
    def send_sync(self, request: object, /) -> Any: ...
    def send_sync(self, request: object, /) -> Any:
        """Run the request's pipeline and handler without an event loop and return the value.

        Raises `TypeError` if the handler or one of its user behaviours is async.
        """
        message_type = type(request)
        is_event, handlers = self._route(message_type)
        if is_event:
            raise TypeError(f"`{message_type.__qualname__}` is an event: publish it with `publish`, not `send_sync`")
        target, is_async, with_context = handlers[0]
        if is_async:
            raise TypeError(
                f"`{message_type.__qualname__}` has an async handler or behaviour: "
                "use `await mediator.send(...)`, not `send_sync`"
            )
        if not with_context:
            return target(request)
        token = CURRENT_MESSAGE.set(request)
        try:
            return target(request)
        finally:
            CURRENT_MESSAGE.reset(token)

    async def _publish_concurrent(self, event: object, /) -> None:
        """`publish` for `Mediator(publish="concurrent")`: every handler starts at once.

        Each handler runs in a task of its own; on 3.12+ the task starts eagerly, so a handler that
        finishes without suspending never waits for the event loop. Tasks still running are
        awaited together.
        Failures are raised as for the sequential publish; cancelling the publish cancels the
        handlers still running and waits for them.
        """
        event_type = type(event)
        is_event, handlers = self._route(event_type)
        if not is_event:
            raise TypeError(f"`{event_type.__qualname__}` is a request: send it with `send`, not `publish`")
        failures: list[tuple[int, Exception]] = []
        pending: dict[asyncio.Task[Any], int] = {}
        try:
            self._start_handlers(handlers, event, failures, pending)
            if pending:
                await asyncio.wait(pending)
        except BaseException:
            if pending:
                for task in pending:
                    task.cancel()
                # Let them run their cleanup before the publish ends; a second cancellation
                # interrupts this wait.
                await asyncio.wait(pending)
                for task in pending:
                    if not task.cancelled():
                        task.exception()  # retrieved: the exception that ends the publish wins
            raise
        _collect_failures(pending, failures)
        if failures:
            failures.sort(key=lambda failure: failure[0])
            raise PublishError(
                f"`{len(failures)}` of `{len(handlers)}` handlers of `{event_type.__qualname__}` failed",
                [error for _, error in failures],
            )

    def _start_handlers(
        self,
        handlers: tuple[_RouteHandler, ...],
        event: object,
        failures: list[tuple[int, Exception]],
        pending: dict[asyncio.Task[Any], int],
    ) -> None:
        """Run each handler's first step; collect first-step failures and the tasks that go on."""
        # On 3.11 an async handler starts in a plain task, on the next loop cycle; handlers after
        # it then start there too, so that handlers start in registration order.
        deferred = False
        for index, handler in enumerate(handlers):
            try:
                # Each handler runs in a context of its own, as a task would: what one handler
                # sets there is not seen by the others, nor by the publisher.
                task = copy_context().run(_first_step, handler, event, deferred)
            except Exception as exc:
                failures.append((index, exc))
                continue
            if task is not None:
                deferred = not _EAGER_TASKS
                pending[task] = index
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # --------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the mediator's transports and background work (none in process: a state flag)."""
        self._running = True

    async def stop(self, timeout: float | None = 30.0) -> None:
        """Wait up to `timeout` seconds for the background tasks the mediator started (handlers of
        a concurrent publish still running), then cancel those left and wait for their cleanup.

        Requests in flight are awaited by their callers, not tracked here.
        """
        loop = asyncio.get_running_loop()
        tasks = {task for task in self._tasks if task.get_loop() is loop and not task.done()}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        self._running = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


# ------------------------------------------------------------------------------- handler adapters


def _name(obj: object) -> str:
    name = getattr(obj, "__qualname__", None)
    return name if isinstance(name, str) else type(obj).__qualname__


def _is_async_callable(obj: object) -> bool:
    """Whether calling `obj` returns a coroutine, judged from the callable itself."""
    if inspect.iscoroutinefunction(obj):  # functions, methods, partials, markcoroutinefunction
        return True
    if inspect.isroutine(obj) or isinstance(obj, type):
        return False
    return inspect.iscoroutinefunction(getattr(obj, "__call__", None))  # noqa: B004  # a callable object


def _is_handler_class(cls: type) -> bool:
    """A class whose instances handle messages: it has a `handle` method."""
    return callable(getattr(cls, "handle", None))


def _instances_callable(cls: type) -> bool:
    return any("__call__" in vars(base) for base in cls.__mro__[:-1])


def _first_parameter(function: object, name: str, *, skip: int = 0) -> inspect.Parameter | None:
    """The parameter that receives the message; `TypeError` if the handler cannot take it alone."""
    try:
        signature = inspect.signature(function)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return None
    params = list(signature.parameters.values())[skip:]
    if not params:
        raise TypeError(f"handler `{name}` takes no parameters: its first parameter must receive the message")
    first = params[0]
    if first.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD):
        raise TypeError(f"handler `{name}`: its first parameter `{first.name}` must be positional, it gets the message")
    for param in params[1:]:
        required = param.default is inspect.Parameter.empty
        if required and param.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(
                f"handler `{name}` has a second required parameter `{param.name}`: it is called with the message only"
            )
    return first


class _Annotated:
    """Where the message type of a handler is written: a function and its message parameter."""

    __slots__ = ("function", "parameter")

    def __init__(self, function: object, parameter: inspect.Parameter | None) -> None:
        self.function = function
        self.parameter = parameter


def _class_handler(cls: type, name: str, make: Callable[[], Any] | None = None) -> tuple[_Handler, _Annotated]:
    """Handlers made per message: by calling `cls()` (a handler class), or `make()` (a factory
    annotated to return `cls`). The handler is the new object's `handle`, or the object itself."""
    if make is None:
        try:
            inspect.signature(cls).bind()
        except TypeError:
            raise TypeError(
                f"handler class `{name}` needs constructor arguments: register an instance, or a `factory=`"
            ) from None
        except ValueError:
            pass
        make = cls
    attribute = "handle" if _is_handler_class(cls) else "__call__"
    if attribute == "__call__" and not _instances_callable(cls):
        raise TypeError(f"handler class `{name}` has no `handle` method and its instances are not callable")
    method = getattr(cls, attribute)
    skip = 0 if isinstance(inspect.getattr_static(cls, attribute), staticmethod | classmethod) else 1
    param = _first_parameter(method, f"{cls.__qualname__}.{attribute}", skip=skip)
    if attribute == "handle":

        def call(message: Any, _make: Callable[[], Any] = make) -> Any:
            return _make().handle(message)

    else:

        def call(message: Any, _make: Callable[[], Any] = make) -> Any:
            return _make()(message)

    return _Handler(call, _is_async_callable(method), name), _Annotated(method, param)


def _adapt_handler(handler: object) -> tuple[_Handler, _Annotated]:
    name = _name(handler)
    if isinstance(handler, type):
        return _class_handler(handler, name)
    is_function = inspect.isroutine(handler) or isinstance(handler, _PARTIAL_TYPES)
    handle = None if is_function else getattr(handler, "handle", None)
    if handle is not None:
        if not callable(handle):
            raise TypeError(f"handler `{name}`: its `handle` attribute is not callable")
        name = _name(handle)
        handler = handle
        is_function = True
    if not callable(handler):
        raise TypeError(f"handler `{handler!r}` is not callable and has no `handle` method")
    param = _first_parameter(handler, name)
    # A callable object's annotations live on its class's `__call__`.
    annotated = handler if is_function else type(handler).__call__
    return _Handler(handler, _is_async_callable(handler), name), _Annotated(annotated, param)


def _adapt_factory(factory: Callable[[], object]) -> tuple[_Handler, _Annotated]:
    name = _name(factory)
    if not callable(factory):
        raise TypeError(f"factory `{factory!r}` is not callable")
    if isinstance(factory, type):
        return _class_handler(factory, name)
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise TypeError(f"factory `{name}` must be callable with no arguments") from None
    except ValueError:
        pass
    product = _return_class(factory)
    if product is not None and (_is_handler_class(product) or _instances_callable(product)):
        # The factory says what it makes: the route knows whether the handler is async.
        entry, annotated = _class_handler(product, name, factory)
        return entry, annotated

    # The product is unknown until called: an async adapter that awaits the handler's result when
    # it is awaitable.
    async def call_any(message: Any, _factory: Callable[[], Any] = factory) -> Any:
        product = _factory()
        handle = getattr(product, "handle", None)
        result = handle(message) if handle is not None else product(message)
        if inspect.isawaitable(result):
            return await result
        return result

    return _Handler(call_any, True, name), _Annotated(None, None)


def _return_class(factory: object) -> type | None:
    try:
        hints = typing.get_type_hints(factory)
    except Exception:
        return None
    result = hints.get("return")
    return result if isinstance(result, type) else None


def _infer_message_type(name: str, annotated: _Annotated, localns: dict[str, Any] | None) -> type:
    param = annotated.parameter
    if annotated.function is None or param is None:
        raise TypeError(f"cannot tell the message type of `{name}`: pass it, e.g. `@mediator.handler(CreateOrder)`")
    function = annotated.function
    if isinstance(function, _PARTIAL_TYPES):
        function = function.func
    try:
        hints = typing.get_type_hints(function, localns=localns)
    except Exception as exc:
        raise TypeError(
            f"cannot resolve the annotation of `{param.name}` in handler `{name}` ({type(exc).__name__}: {exc}): "
            f"pass the message type, e.g. `@mediator.handler(CreateOrder)`"
        ) from exc
    hint = hints.get(param.name)
    if hint is None:
        raise TypeError(
            f"handler `{name}` has no type annotation on its first parameter `{param.name}`: "
            "annotate it, or pass the message type, e.g. `@mediator.handler(CreateOrder)`"
        )
    origin = typing.get_origin(hint)
    message_type = hint if origin is None else origin  # `Query[int]` -> `Query`
    if origin in (typing.Union, types.UnionType) or not isinstance(message_type, type):
        raise TypeError(
            f"handler `{name}`: the annotation `{hint!r}` of `{param.name}` is not a class: "
            "annotate it with one message type, or pass the type, e.g. `@mediator.handler(CreateOrder)`"
        )
    return message_type


def _class_sent(cls: type) -> typing.NoReturn:
    name = getattr(cls, "__qualname__", repr(cls))
    raise HandlerNotFound(f"`{name}` is a class: send an instance, e.g. `{name}(...)`", message_type=wire_name(cls))


def _handler_failed(request: object, exc: Exception) -> HandlerFailed:
    error_type = type(exc)
    text = str(exc)
    error = HandlerFailed(
        f"handler of `{type(request).__qualname__}` raised `{error_type.__qualname__}`" + (f": {text}" if text else ""),
        message_type=wire_name(type(request)),
        error_type=f"{error_type.__module__}.{error_type.__qualname__}",
    )
    error.__cause__ = exc
    error.__suppress_context__ = True
    return error


# ---------------------------------------------------------------------------------- composition


def _route_handler(entry: _Handler, behaviors: list[tuple[Behavior, bool]]) -> _RouteHandler:
    """`(target, is_async, with_context)` for one handler under its user behaviours.

    The chain is composed here, once per route: each link is a closure that calls its behaviour
    with the next link as `call_next`, so a send costs one call per behaviour and the coroutines
    the behaviours themselves create, nothing else.
    """
    if not behaviors:
        # No frame to set the context in (API.md section 1): the handler itself is the target.
        return (entry.call, entry.is_async, False)
    if not entry.is_async and not any(is_async for _, is_async in behaviors):
        call = entry.call
        for behavior, _ in reversed(behaviors):
            call = _link(behavior, call)
        return (call, False, True)
    call = entry.call if entry.is_async else _async_adapter(entry.call)
    for behavior, is_async in reversed(behaviors):
        call = _link(behavior, call) if is_async else _sync_link_in_async_chain(behavior, call)
    return (call, True, True)


def _link(behavior: Behavior, call_next: _Target) -> _Target:
    def step(message: Any) -> Any:
        return behavior(message, call_next)

    return step


def _sync_link_in_async_chain(behavior: Behavior, call_next: _Target) -> _Target:
    async def step(message: Any) -> Any:
        result = behavior(message, call_next)
        if inspect.isawaitable(result):
            return await result
        return result

    return step


def _async_adapter(call: _Target) -> _Target:
    """A sync handler under async behaviours: `call_next` must return an awaitable."""

    async def run(message: Any) -> Any:
        return call(message)

    return run


# ------------------------------------------------------------------------------ concurrent publish


def _collect_failures(tasks: dict["asyncio.Task[Any]", int], failures: list[tuple[int, Exception]]) -> None:
    """Add the failures of finished handler tasks; re-raise a cancellation or a `BaseException`."""
    for task, index in tasks.items():
        if task.cancelled():
            # Like a handler raising `CancelledError` in the sequential publish: it stops the publish.
            raise asyncio.CancelledError("a handler of the published event was cancelled")
        error = task.exception()
        if error is None:
            continue
        if not isinstance(error, Exception):
            raise error
        failures.append((index, error))


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _first_step(handler: _RouteHandler, event: object, deferred: bool) -> "asyncio.Task[Any] | None":
    """Start one handler in the current (the handler's own) context.

    Returns `None` if it finished, else the Task that goes on with it; a failure is raised here.
    `deferred` (3.11 only): an earlier handler starts on the next loop cycle, so this one does too.
    """
    target, is_async, with_context = handler
    loop = asyncio.get_running_loop()
    if deferred:
        return loop.create_task(_run_handler(target, is_async, with_context, event))
    if with_context:
        CURRENT_MESSAGE.set(event)  # no reset: this context belongs to the handler
    result = target(event)
    if not is_async:
        return None
    coro = result if type(result) is types.CoroutineType or isinstance(result, Coroutine) else _await(result)
    if not _EAGER_TASKS:  # 3.11: see `_EAGER_TASKS`
        return loop.create_task(coro)
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    if not task.done():
        return task
    error = task.exception()  # raises CancelledError if it cancelled itself
    if error is not None:
        raise error
    return None


async def _run_handler(target: _Target, is_async: bool, with_context: bool, event: object) -> Any:
    """A handler started in a task of its own (3.11, after an earlier async handler)."""
    if with_context:
        CURRENT_MESSAGE.set(event)  # no reset: this task's context belongs to the handler
    result = target(event)
    return await result if is_async else result
