"""`Mediator`: registration, route compilation and the async glue around the core dispatcher.

The hot path lives in the core (`catga._core.Dispatcher`): `send` and `publish` are the core's own
methods, not redefined here, so `mediator.send(request)` is one call into the core with no Python
frame of ours. This module turns registrations into the `Route` tuples the core runs
(docs/internals.md): it finds a type's handler (exact type, then the nearest base in the MRO),
composes its user behaviours into one chain, wraps that in the built-ins that run in Python (the
middle chain, `catga.behaviors._chain`), adds the `Hooks` of the bookkeeping built-ins that the
core runs (`catga.behaviors._hooks`), and says whether the target is async and needs the context.
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

from catga import _core
from catga._config import Config
from catga._core import CURRENT_MESSAGE, Dispatcher, Route
from catga._dead_letters import DeadLetterRecord, DeadLetters
from catga._errors import CatgaError, DuplicateHandler, HandlerFailed, HandlerNotFound, PublishError
from catga._hook_runner import run_hooks, run_hooks_sync
from catga._messages import Event, Message, Request, wire_name
from catga._remote import Remote, served_types
from catga._result import _FROM_CACHE, _NO_METADATA, Result
from catga._result import _make as _make_result
from catga._worker_lease import release_shared, worker_id_pinned
from catga.behaviors import _hooks
from catga.behaviors._chain import HandlerInfo, compose
from catga.behaviors._hooks import BuiltinPlan, plan_builtins
from catga.behaviors._observe import message_kind, observation_hooks
from catga.behaviors._store_layers import FromCacheScope
from catga.behaviors._validation import ValidationPlan, Validator
from catga.memory._cache import MemoryCacheStore
from catga.memory._dead_letters import MemoryDeadLetterStore
from catga.memory._idempotency import MemoryIdempotencyStore
from catga.transports import Transport

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
_HookedHandler = tuple[Any, ...]
"""A route handler entry: `(target, is_async, with_context)` or `(target, is_async, with_context, hooks)`."""

_PARTIAL_TYPES: Final = (functools.partial,)

# The concurrent publish starts every handler at once. 3.12+ starts each in an eager Task: its first
# step runs right away, inside the task (so `current_task()`, `asyncio.timeout` and task groups see
# the right task), and a handler that finishes without suspending never reaches the event loop.
# 3.11 has no eager tasks; stepping the coroutine inline there would bind a timeout or task group
# entered before the first `await` to the publisher's task (a timeout would cancel the publish, not
# the handler), so on 3.11 every async handler gets a plain Task: correct, at 3-6 us a handler.
_EAGER_TASKS: Final = sys.version_info >= (3, 12)


class _Handler:
    """One registered handler: how to call it, and what to call it in messages and keys."""

    __slots__ = ("call", "is_async", "key", "name", "remote")

    def __init__(
        self, call: _Target, is_async: bool, name: str, key: str | None = None, *, remote: bool = False
    ) -> None:
        self.call = call  # call(message) -> result, or an awaitable of it when is_async
        self.is_async = is_async
        self.name = name
        # Sends over the transport: the service that handles the message keeps its idempotency
        # entry (a second claim here, in a store both share, would make the handler's a conflict).
        self.remote = remote
        # `module.QualName`: keys an event handler's idempotency entries and breaker, so it must be
        # the same in every process.
        self.key = key if key is not None else name


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
        transport: Transport | None = None,
        lease_worker_id: bool = True,
    ) -> None:
        """Build a mediator.

        `config`: the built-in behaviours (`Config.default()` when `None`). `publish`:
        `"sequential"` runs event handlers one after another; `"concurrent"` starts them all eagerly
        and turns only those that suspend into tasks. `transport`: a
        `catga.transports.Transport` (e.g. `catga.nats.NatsTransport`): requests with no handler
        here go to the service that has one, events also go to every other service, and `start()`
        serves this mediator's handlers over it (API.md section 7). `lease_worker_id`: whether
        `start()` leases the process's worker id from the Redis store of `config`, if it has one
        (API.md section 2; see `start`); `False` opts out (a `catga.nats.NatsTransport` has its own
        `lease_worker_id`).
        """
        super().__init__()
        if config is None:
            config = Config.default()
        elif not isinstance(config, Config):
            raise TypeError(f"`config` must be a `catga.Config`, got `{config!r}`")
        if publish not in ("sequential", "concurrent"):
            raise ValueError(f"`publish` must be `sequential` or `concurrent`, got `{publish!r}`")
        if not isinstance(lease_worker_id, bool):
            raise TypeError(f"`lease_worker_id` must be a bool, got `{lease_worker_id!r}`")
        self._config: Final = config
        self._publish_strategy: Final = publish
        dead_letter = config.dead_letter
        if dead_letter is None:
            dead_letter_store: Any = MemoryDeadLetterStore()
        elif dead_letter.store is None:
            dead_letter_store = MemoryDeadLetterStore(dead_letter.max_size)
        else:
            dead_letter_store = dead_letter.store
        # `mediator.dead_letters` always exists; the DeadLetter behaviour decides what goes in.
        self._dead_letters: Final = DeadLetters(dead_letter_store, self._resend)
        self._dead_letter_store: Final = dead_letter_store if dead_letter is not None else None
        # Any built-in on makes every route run with the message context (API.md section 1).
        self._any_builtin: Final = bool(config._enabled())
        # A remote idempotency or cache store runs as Python layers, which report a stored result
        # to `send_result` through a `FromCacheScope`.
        self._store_layers: Final = _has_remote_store(config)
        self._validators: list[tuple[type, Validator]] = []
        # send_sync's variant of each request route whose pipeline differs from the core's target:
        # message type -> (the route, the sync target or the TypeError that forbids one).
        self._sync_targets: dict[type, tuple[Route, _Target | TypeError]] = {}
        self._requests: dict[type, _Handler] = {}
        # Event handlers in registration order, with the type each was registered for: a route
        # takes every entry whose type is the event's type or one of its bases.
        self._events: list[tuple[type, _Handler]] = []
        # Plain (non-`Message`) types registered with `kind="event"`.
        self._event_types: set[type] = set()
        self._behaviors: list[tuple[Behavior, type | None, bool]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self._lease_worker_id: Final = lease_worker_id
        self._leased = False  # holds a reference to the process's worker-id lease (`catga._worker_lease`)
        # Set last: `Remote` reads the mediator's registrations when it starts.
        self._remote = None if transport is None else Remote(self, transport)
        if publish == "concurrent":
            # An instance attribute shadows the core's sequential `publish`.
            self.publish = self._publish_concurrent  # type: ignore[method-assign]

    @property
    def config(self) -> Config:
        """The built-in behaviours this mediator was built with."""
        return self._config

    @property
    def dead_letters(self) -> DeadLetters:
        """The messages that finally failed: `list`, `get`, `retry`, `delete`, `purge` (all async).

        Always there: in memory (the newest 1000) unless `DeadLetter(store=...)` names a store.
        Only the DeadLetter behaviour puts records in.
        """
        return self._dead_letters

    def _invalidate(self) -> None:
        """Forget every compiled route (the core's table and the `send_sync` variants)."""
        super()._invalidate()
        self._sync_targets.clear()

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

    @overload
    def validator(self, message_type: type[Any], /) -> Callable[[H], H]: ...
    @overload
    def validator(self, message_type: type[Any], validator: H, /) -> H: ...
    @overload
    def validator(self, validator: H, /) -> H: ...
    def validator(self, target: Any, validator: Any = None, /) -> Any:
        """Register a validator of a message type (and its subclasses), as a decorator.

        A validator takes the message and returns a list of error strings (empty or `None`: valid),
        or raises `ValidationError`; it may be async. With the Validation behaviour on, the errors of
        every validator, of the message's own `validate()` method and of its msgspec constraints are
        collected, and any error fails the send with `ValidationError` before the handler runs.
        `@mediator.validator` alone takes the type from the first parameter's annotation.

        >>> import catga
        >>> class Deposit(catga.Command[None]):
        ...     amount: int
        >>> mediator = catga.Mediator()
        >>> @mediator.validator(Deposit)
        ... def positive(cmd: Deposit) -> list[str]:
        ...     return [] if cmd.amount > 0 else [f"`amount` must be positive, got `{cmd.amount}`"]
        """
        caller = sys._getframe(1).f_locals
        if isinstance(target, type) and validator is None:
            message_type: type = target

            def decorate(function: H) -> H:
                self._add_validator(message_type, function, None)
                return function

            return decorate
        if validator is not None:
            if not isinstance(target, type):
                raise TypeError(f"`message_type` must be a class, got `{target!r}`")
            self._add_validator(target, validator, None)
            return validator
        self._add_validator(None, target, caller)
        return target

    # ------------------------------------------------------------------------------------- cache

    def cache(self, message_type: type, *, ttl: float) -> None:
        """Cache the results of a query type for `ttl` seconds (API.md section 6).

        The same as `__catga_cache_ttl__ = ttl` in the class body, and wins over it. Needs the Cache
        behaviour (on by default): `ValueError` when it is off; `TypeError` for a type that is not
        a `catga.Query`.
        """
        _hooks.opt_in_cache(self._config.cache, message_type, ttl)
        self._invalidate()

    def invalidate(self, message_type: type, /, **fields: Any) -> int:
        """Drop cached results of a query type: all of them, or those whose fields equal `fields`.

        Synchronous, for the in-memory cache store; a remote store raises `TypeError` (use
        `ainvalidate`). Returns how many entries were dropped.
        """
        return _hooks.invalidate(self._config.cache, message_type, **fields)

    async def ainvalidate(self, message_type: type, /, **fields: Any) -> None:
        """`invalidate` through the cache store's async protocol: works with every store."""
        await _hooks.ainvalidate(self._config.cache, message_type, **fields)

    def _add_validator(self, message_type: type | None, validator: object, localns: dict[str, Any] | None) -> None:
        if not callable(validator):
            raise TypeError(f"validator `{validator!r}` is not callable: it must be `(message) -> list[str]`")
        name = _name(validator)
        param = _first_parameter(validator, f"validator {name}")
        if message_type is None:
            message_type = _infer_message_type(name, _Annotated(validator, param), localns)
        self._validators.append((message_type, validator))
        self._invalidate()

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
        """Build the route of a type: each handler with its user behaviours, the middle chain of
        built-ins around them, and its hooks (see docs/internals.md)."""
        if message_type is type(None):
            raise HandlerNotFound(
                "no handler for `NoneType`: send a message instance, got `None`", message_type="builtins.NoneType"
            )
        if issubclass(message_type, Event) or (
            not issubclass(message_type, Message) and self._is_plain_event(message_type)
        ):
            behaviors = self._behaviors_for(message_type)
            entries = [entry for registered, entry in self._events if issubclass(message_type, registered)]
            validation = self._validation_plan(message_type, bool(entries))
            if self._remote is not None and issubclass(message_type, Message):
                # Last, after the local handlers: the other services get the event too.
                # Keyed by the type (idempotency, breaker): a derived event may reuse the id of the
                # message that caused it (examples/shop), so an id alone does not name one message.
                key = f"catga.transports.publish:{wire_name(message_type)}"
                entries.append(_Handler(self._remote.publish_handler(), True, key, remote=True))
            keys = _unique_keys(entries)
            handlers = tuple(
                self._compile_handler(message_type, entry, key, behaviors, validation, is_event=True)[0]
                for entry, key in zip(entries, keys, strict=True)
            )
            observe = observation_hooks(self._config, message_type, wire_name(message_type), None, "publish")
            return (True, handlers, _core.Hooks(**observe)) if observe else (True, handlers)
        requests = self._requests
        for base in message_type.__mro__:
            entry = requests.get(base)
            if entry is not None:
                validation = self._validation_plan(message_type, True)
                handler, sync_target = self._compile_handler(
                    message_type, entry, entry.key, self._behaviors_for(message_type), validation, is_event=False
                )
                route: Route = (False, (handler,))
                if sync_target is not None:
                    self._sync_targets[message_type] = (route, sync_target)
                return route
        if self._remote is not None and issubclass(message_type, Request):
            # No handler here: another service handles it, over the transport.
            remote_send = self._remote.request_handler(message_type)
            entry = _Handler(remote_send, True, f"remote:{wire_name(message_type)}", remote=True)
            validation = self._validation_plan(message_type, True)
            handler, _ = self._compile_handler(
                message_type, entry, entry.key, self._behaviors_for(message_type), validation, is_event=False
            )
            return (False, (handler,))
        if issubclass(message_type, type):
            # A class was sent instead of an instance. The route is keyed by the metaclass, so the
            # target (which gets the class itself) names it.
            return (False, ((_class_sent, False, False),))
        raise HandlerNotFound(f"no handler for `{message_type.__qualname__}`", message_type=wire_name(message_type))

    def _validation_plan(self, message_type: type, needed: bool) -> ValidationPlan | None:
        if self._config.validation is None or not needed:
            return None
        validators = [validator for registered, validator in self._validators if issubclass(message_type, registered)]
        plan = ValidationPlan(message_type, wire_name(message_type), validators)
        return None if plan.empty else plan

    def _compile_handler(
        self,
        message_type: type,
        entry: _Handler,
        key: str,
        behaviors: list[tuple[Behavior, bool]],
        validation: ValidationPlan | None,
        *,
        is_event: bool,
    ) -> tuple[_HookedHandler, _Target | TypeError | None]:
        """One route handler entry, and for a request the `send_sync` target when it differs
        from the entry's (`None`: the same, or none at all)."""
        config = self._config
        plan: BuiltinPlan = plan_builtins(
            config,
            message_type,
            key,
            is_event=is_event,
            has_message_id=issubclass(message_type, Message) and not entry.remote,
        )
        if plan.cache is not None:  # a remote cache store: between Timeout and the user behaviours
            behaviors = [(plan.cache, True), *behaviors]
        inner, inner_async, inner_context = _route_handler(entry, behaviors)
        wire = wire_name(message_type)
        info = HandlerInfo(message_type.__qualname__, wire, key if is_event else None)
        metrics = None
        if config.metrics is not None:
            metrics = config.metrics.registry.for_type(message_kind(message_type, is_event), wire)
        layers: dict[str, Any] = {
            "metrics": metrics,
            "outer": plan.outer,
            "validation": validation,
            "dead_letter_store": self._dead_letter_store,
            "retry": config.retry,
            "timeout": config.timeout,
        }
        target, is_async = compose(inner, inner_async, info, sync=False, **layers)
        with_context = inner_context or self._any_builtin or plan.hooks is not None
        handler: _HookedHandler = (target, is_async, with_context)
        if plan.hooks is not None:
            handler += (plan.hooks,)
        sync_target: _Target | TypeError | None = None
        if not is_event and is_async:
            try:
                sync_target, _ = compose(inner, inner_async, info, sync=True, **layers)
            except TypeError as exc:
                # Kept without its traceback, whose frames would hold the message being sent.
                sync_target = TypeError(*exc.args)
        return handler, sync_target

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
            if self._store_layers:
                with FromCacheScope(request) as scope:
                    value, from_cache = await self.send_meta(request)
                from_cache = from_cache or scope.hit
            else:
                value, from_cache = await self.send_meta(request)
        except CatgaError as exc:
            return _make_result(None, exc, _NO_METADATA)
        except Exception as exc:
            return _make_result(None, _handler_failed(request, exc), _NO_METADATA)
        # `Result.success(value[, from_cache=True])` without its keyword handling.
        return _make_result(value, None, _FROM_CACHE if from_cache else _NO_METADATA)

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

        The same built-ins run as for `send`; one that must wait blocks (Retry sleeps with
        `time.sleep`). Raises `TypeError` if the handler, a user behaviour or a validator is async,
        or a configured store needs an event loop.
        """
        message_type = type(request)
        route = self._route(message_type)
        is_event, handlers = route[0], route[1]
        if is_event:
            raise TypeError(f"`{message_type.__qualname__}` is an event: publish it with `publish`, not `send_sync`")
        handler: _HookedHandler = handlers[0]
        target, is_async, with_context = handler[:3]
        if is_async:
            variant = self._sync_targets.get(message_type)
            if variant is None or variant[0] is not route:
                raise TypeError(
                    f"`{message_type.__qualname__}` has an async handler or behaviour: "
                    "use `await mediator.send(...)`, not `send_sync`"
                )
            sync_target = variant[1]
            if isinstance(sync_target, TypeError):
                raise TypeError(*sync_target.args)  # a fresh one each time: no traceback piles up
            target = sync_target
        hooks = handler[3] if len(handler) > 3 else None
        if hooks is not None:
            return run_hooks_sync(hooks, target, request)
        if not with_context:
            return target(request)
        token = CURRENT_MESSAGE.set(request)
        try:
            return target(request)
        finally:
            CURRENT_MESSAGE.reset(token)

    async def _resend(self, record: DeadLetterRecord, message: object) -> Result[Any]:
        """Send a dead letter's message again (`dead_letters.retry`): a request through `send_result`,
        an event to the one handler that failed (with its hooks and middle chain)."""
        if record.handler is None:
            if self._route(type(message))[0]:  # an event kept whole (its final delivery failed)
                try:
                    await self.publish(message)
                except CatgaError as exc:
                    return Result.failure(exc)
                return Result.success(None)
            return await self.send_result(message)
        message_type = type(message)
        try:
            route = self._route(message_type)
            is_event, handlers = route[0], route[1]
            entries = [entry for registered, entry in self._events if issubclass(message_type, registered)]
            keys = _unique_keys(entries)
            if not is_event or record.handler not in keys:
                raise HandlerNotFound(
                    f"`{message_type.__qualname__}` has no handler `{record.handler}` any more",
                    message_type=record.message_type,
                    handler=record.handler,
                )
            handler: _HookedHandler = handlers[keys.index(record.handler)]
            target, is_async = handler[0], handler[1]
            if len(handler) > 3 and handler[3] is not None:
                value, from_cache = await run_hooks(handler[3], target, is_async, message)
            else:
                from_cache = False
                token = CURRENT_MESSAGE.set(message)
                try:
                    value = target(message)
                    if is_async:
                        value = await value
                finally:
                    CURRENT_MESSAGE.reset(token)
        except CatgaError as exc:
            return Result.failure(exc)
        except Exception as exc:
            return Result.failure(_handler_failed(message, exc))
        return Result.success(value, from_cache=True) if from_cache else Result.success(value)

    async def _publish_concurrent(self, event: object, /) -> None:
        """`publish` for `Mediator(publish="concurrent")`: every handler starts at once.

        Each handler runs in a task of its own; on 3.12+ the task starts eagerly, so a handler that
        finishes without suspending never waits for the event loop. Tasks still running are
        awaited together.
        Failures are raised as for the sequential publish; cancelling the publish cancels the
        handlers still running and waits for them.
        """
        event_type = type(event)
        route = self._route(event_type)
        if not route[0]:
            raise TypeError(f"`{event_type.__qualname__}` is a request: send it with `send`, not `publish`")
        handlers: tuple[_HookedHandler, ...] = route[1]
        observer = route[2] if len(route) > 2 else None
        if observer is not None:  # the publish observed as a whole, as the core does for a sequential one
            fan_out = functools.partial(self._fan_out, handlers)
            await run_hooks(observer, fan_out, True, event)
        else:
            await self._fan_out(handlers, event)

    async def _fan_out(self, handlers: "tuple[_HookedHandler, ...]", event: object) -> None:
        event_type = type(event)
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
        handlers: tuple[_HookedHandler, ...],
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

    @property
    def running(self) -> bool:
        """Whether `start()` ran and `stop()` has not (the health checks' "mediator started")."""
        return self._running

    @property
    def transport(self) -> Transport | None:
        """The transport this mediator sends and serves over, or `None` (in process only)."""
        return None if self._remote is None else self._remote.transport

    def _attach_transport(self, transport: Transport) -> None:
        """Give a mediator built without a transport one (what `catga worker --nats` does)."""
        if self._remote is not None:
            raise ValueError(f"the mediator already has the transport `{self._remote.transport!r}`")
        if self._running:
            raise RuntimeError("attach a transport before `start()`")
        self._remote = Remote(self, transport)
        self._invalidate()  # routes compiled without it would not reach the other services

    def _served_requests(self) -> list[type]:
        """The request types this mediator handles itself (what it serves over its transport)."""
        return served_types(self._requests)

    def _served_events(self) -> list[type]:
        """The event types this mediator has handlers for (what it subscribes to)."""
        return served_types(registered for registered, _ in self._events)

    async def start(self) -> None:
        """Connect the transport (if any) and serve this mediator's handlers over it.

        In process only, a state flag (the health checks' "mediator started").

        Worker id (API.md section 2): when `config` uses a Redis store (idempotency, cache,
        dead letters or `RedisRateLimit`), `CATGA_WORKER_ID` is not set and `lease_worker_id` is on,
        `start()` takes a reference to the process's worker-id lease: the one the process already
        holds (a `NatsTransport`'s, or another mediator's), else a new one from that Redis
        (`catga.redis.RedisWorkerIdLease`). `stop()` drops it; the last reference frees the id. When
        no id is free, or Redis cannot be reached, `start()` raises `catga.PersistenceError` and
        stops the transport it started.
        """
        if self._running:
            return  # already started: a second `start()` would serve every handler twice
        if self._remote is not None:
            await self._remote.start()  # a NatsTransport leases its worker id here (from NATS)
        try:
            await self._lease_worker_id_from_stores()
        except BaseException:
            if self._remote is not None and not self._running:
                await self._remote.stop()  # nothing stays half-started
            raise
        self._running = True

    async def _lease_worker_id_from_stores(self) -> None:
        """Take a reference to the process's worker-id lease if this mediator's stores are in Redis."""
        if self._leased or not self._lease_worker_id or worker_id_pinned():
            return
        # Looked up, not imported: without `catga.redis` imported no store of the config is a Redis
        # one, and a mediator must not need redis-py. It is loaded with `catga.redis`.
        redis_ids = sys.modules.get("catga.redis._worker_id")
        if redis_ids is None:
            return
        service = (self._remote.service if self._remote is not None else None) or ""
        # Shares the lease the process holds (the transport's, taken just above), else leases from Redis.
        self._leased = bool(await redis_ids.acquire_for_config(self._config, service=service))

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
        try:
            if self._remote is not None:
                await self._remote.stop()
        finally:
            if self._leased:  # after the transport: ids made while draining still carry the leased id
                self._leased = False
                await release_shared()
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


def _unique_keys(entries: list[_Handler]) -> list[str]:
    """The keys of an event's handlers, made unique: a second handler with the same
    `module.QualName` (two lambdas, say) gets `#2`, by registration order, the same in every process."""
    seen: dict[str, int] = {}
    keys: list[str] = []
    for entry in entries:
        count = seen[entry.key] = seen.get(entry.key, 0) + 1
        keys.append(entry.key if count == 1 else f"{entry.key}#{count}")
    return keys


def _has_remote_store(config: Config) -> bool:
    """Whether Idempotency or Cache keep their state in a store the core cannot call."""
    idempotency, cache = config.idempotency, config.cache
    return (
        idempotency is not None
        and idempotency.store is not None
        and not isinstance(idempotency.store, MemoryIdempotencyStore)
    ) or (cache is not None and cache.store is not None and not isinstance(cache.store, MemoryCacheStore))


def _qualified(obj: object, name: str) -> str:
    """`module.QualName` of a handler (its `name` is the QualName)."""
    if isinstance(obj, _PARTIAL_TYPES):
        obj = obj.func
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        module = type(obj).__module__
    return f"{module}.{name}"


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

    return _Handler(call, _is_async_callable(method), name, _qualified(make, name)), _Annotated(method, param)


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
    return _Handler(handler, _is_async_callable(handler), name, _qualified(handler, name)), _Annotated(annotated, param)


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

    return _Handler(call_any, True, name, _qualified(factory, name)), _Annotated(None, None)


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


def _first_step(handler: _HookedHandler, event: object, deferred: bool) -> "asyncio.Task[Any] | None":
    """Start one handler in the current (the handler's own) context.

    Returns `None` if it finished, else the Task that goes on with it; a failure is raised here.
    `deferred` (3.11 only): an earlier handler starts on the next loop cycle, so this one does too.
    """
    target, is_async, with_context = handler[:3]
    hooks = handler[3] if len(handler) > 3 else None
    if hooks is not None:  # the hooks run here, as the core runs them for a sequential publish
        target = functools.partial(run_hooks, hooks, target, is_async)
        is_async, with_context = True, False  # `run_hooks` sets the context around the target
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
