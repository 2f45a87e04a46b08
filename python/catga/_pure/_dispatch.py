"""The dispatch table and pipeline executor: the pure-Python twin of the native `Dispatcher`.

See docs/internals.md, "Dispatcher". `send` and `publish` are plain `def`s that return a coroutine:
an `async def send` would add a frame (+60-110 ns) to every send, and on the hot path (an async
handler without context) `send` returns the handler's own coroutine with no wrapper at all. Every
other case returns a small coroutine from a private `async def`, so failures surface on await and
`send`/`throw`/`close`, cancellation and the reuse error behave as for any coroutine.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Final, NoReturn

from catga._pure._observe import (
    COUNTER_CONCURRENCY_REJECTED,
    COUNTER_IDEMPOTENCY_HITS,
    COUNTER_IDEMPOTENCY_MISSES,
    COUNTER_RATE_LIMIT_REJECTED,
    Observation,
    observe,
)

__all__ = ["CURRENT_MESSAGE", "Dispatcher", "Hooks", "Route"]

CURRENT_MESSAGE: Final[ContextVar[object | None]] = ContextVar("catga_current_message", default=None)
"""The message whose handler is running, set by every pipeline that has behaviours."""

Route = tuple[Any, ...]
"""A compiled route: `(is_event, ((target, is_async, with_context[, hooks]), ...)[, observer])`.

`target(message)` runs the handler with its user behaviours and returns a coroutine when `is_async`,
else the result. `with_context` sets `CURRENT_MESSAGE` while it runs. `observer`: an event route's
`Hooks` that observe the whole publish (docs/internals.md, "Observation").
"""

# A handler as the send path reads it: the route's entry with its hooks made explicit.
_Handler = tuple[Callable[[Any], Any], bool, bool, "Hooks | None"]
# The table's value: (is_event, handlers, the route `_compile_route` returned, the publish observer).
_Compiled = tuple[bool, tuple[_Handler, ...], Route, "Hooks | None"]

_COMPLETED: Final = 2  # IdempotencyTable.claim statuses (the stores' CLAIMED / IN_FLIGHT / COMPLETED)
_IN_FLIGHT: Final = 1

_logger = logging.getLogger("catga")


class Hooks:
    """The built-ins of one route handler that the core runs around its target.

    See docs/internals.md, "Built-in behaviours" and "Observation": each argument is `None` when
    that behaviour is off for the route, and `errors` makes the errors the bookkeeping hooks raise.
    """

    __slots__ = (
        "breaker",
        "cache",
        "concurrency",
        "errors",
        "idempotency",
        "logging",
        "metrics",
        "rate_limit",
        "tracing",
    )

    def __init__(
        self,
        *,
        logging: tuple[Any, int, Callable[..., Any]] | None = None,
        tracing: tuple[Any, Any, Any, str | None, str | None] | None = None,
        metrics: tuple[Any, str] | None = None,
        idempotency: tuple[Any, int] | None = None,
        rate_limit: tuple[Any, bool, float | None] | None = None,
        concurrency: tuple[Any, Any] | None = None,
        breaker: Any = None,
        cache: tuple[Any, int, Callable[[Any], bytes], float] | None = None,
        errors: Any = None,
    ) -> None:
        _check_hook("logging", logging, 3)
        _check_hook("tracing", tracing, 5)
        _check_hook("metrics", metrics, 2)
        if metrics is not None and metrics[1] not in ("message", "handler"):
            raise ValueError(f"the `metrics` role must be `message` or `handler`, got `{metrics[1]!r}`")
        _check_hook("idempotency", idempotency, 2)
        _check_hook("rate_limit", rate_limit, 3)
        _check_hook("concurrency", concurrency, 2)
        _check_hook("cache", cache, 4)
        if errors is None and any(h is not None for h in (idempotency, rate_limit, concurrency, breaker, cache)):
            raise TypeError("`Hooks` needs `errors` when any hook is set")
        self.logging = logging
        self.tracing = tracing
        self.metrics = metrics
        self.idempotency = idempotency
        self.rate_limit = rate_limit
        self.concurrency = concurrency
        self.breaker = breaker
        self.cache = cache
        self.errors = errors

    def __repr__(self) -> str:
        on = [name for name in _HOOK_NAMES if getattr(self, name) is not None]
        return f"Hooks({', '.join(on)})"


_HOOK_NAMES: Final = ("logging", "tracing", "metrics", "idempotency", "rate_limit", "concurrency", "breaker", "cache")


def _check_hook(name: str, value: object, size: int) -> None:
    if value is not None and not (isinstance(value, tuple) and len(value) == size):
        raise TypeError(f"hook `{name}` must be a tuple of {size} items or None, got `{value!r}`")


class Dispatcher:
    """The dispatch table and pipeline executor that `catga.Mediator` subclasses.

    Routes are compiled once per message type by calling `self._compile_route(message_type)`, which
    the subclass implements (returning a `Route` or raising `HandlerNotFound`), on the first send or
    publish of that type, and then looked up by the type's identity. The subclass calls
    `_invalidate()` whenever a registration changes a route.
    """

    # Subclasses get a `__dict__`; the route table is a slot so the hot path reads it fast.
    __slots__ = ("_catga_routes",)

    _catga_routes: dict[type, _Compiled]

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
        target, is_async, with_context, hooks = route[1][0]
        if hooks is not None:
            return _run_hooks(hooks, target, is_async, message, False)
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
        observer = route[3]
        if observer is not None:
            return _run_hooks(observer, functools.partial(_publish_sequential, route[1]), True, event, False)
        return _publish_sequential(route[1], event)

    def send_meta(self, message: Any, /) -> Awaitable[tuple[Any, bool]]:
        """`send`, resolving to `(result, from_cache)`: whether the result was stored, not computed."""
        route = self._catga_routes.get(type(message))
        if route is None:
            try:
                route = _compile(self, type(message))
            except BaseException as exc:
                return _raise(exc)
        if not route[0]:
            target, is_async, _, hooks = route[1][0]
            if hooks is not None:
                return _run_hooks(hooks, target, is_async, message, True)
        return _not_from_cache(self.send(message))

    def _route(self, message_type: type, /) -> Route:
        """The compiled route of a type (compiling it on a miss)."""
        route = self._catga_routes.get(message_type)
        if route is None:
            route = _compile(self, message_type)
        return route[2]

    def _invalidate(self) -> None:
        """Forget every compiled route."""
        # A new table rather than `.clear()`: a compile that raced with this invalidation stores its
        # (possibly stale) route into the old table, which nobody reads any more.
        self._catga_routes = {}


def _compile(dispatcher: Dispatcher, message_type: type) -> _Compiled:
    routes = dispatcher._catga_routes
    # Defined by the subclass only (as for the native class): without it this is an AttributeError.
    route: Route = dispatcher._compile_route(message_type)  # type: ignore[attr-defined]
    _check_route(route, message_type)
    is_event, handlers = route[:2]
    observer = route[2] if len(route) == 3 else None
    compiled: _Compiled = (is_event, tuple(_handler(entry) for entry in handlers), route, observer)
    routes[message_type] = compiled
    return compiled


def _handler(entry: tuple[Any, ...]) -> _Handler:
    target, is_async, with_context, hooks = entry if len(entry) == 4 else (*entry, None)
    # A route with hooks always runs with context (docs/internals.md).
    return (target, is_async, with_context or hooks is not None, hooks)


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
    if len(route) not in (2, 3):
        return "expected `(is_event, handlers)` or `(is_event, handlers, observer)`"
    is_event, handlers = route[:2]
    if len(route) == 3 and route[2] is not None:
        problem = _observer_problem(route[2], is_event)
        if problem is not None:
            return problem
    if type(is_event) is not bool:
        return "`is_event` must be a bool"
    if not isinstance(handlers, tuple):
        return "`handlers` must be a tuple"
    for handler in handlers:
        problem = _handler_problem(handler)
        if problem is not None:
            return problem
    if not is_event and len(handlers) != 1:
        return "a request route needs exactly one handler"
    return None


def _observer_problem(observer: object, is_event: object) -> str | None:
    if not isinstance(observer, Hooks):
        return "`observer` must be a `Hooks` or None"
    if not is_event:
        return "only an event route has an observer (a request's goes in its handler's hooks)"
    return None


def _handler_problem(handler: object) -> str | None:
    if not isinstance(handler, tuple):
        return "each handler must be a tuple"
    if len(handler) not in (3, 4):
        return "each handler must be `(target, is_async, with_context)` or `(..., hooks)`"
    if type(handler[1]) is not bool or type(handler[2]) is not bool:
        return "handler flags must be bools"
    if len(handler) == 4 and handler[3] is not None and not isinstance(handler[3], Hooks):
        return "`hooks` must be a `Hooks` or None"
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
    for target, is_async, with_context, hooks in handlers:
        token = CURRENT_MESSAGE.set(event) if with_context and hooks is None else None
        try:
            if hooks is not None:
                await _run_hooks(hooks, target, is_async, event, False)
            elif is_async:
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


async def _not_from_cache(send: Awaitable[Any]) -> tuple[Any, bool]:
    return (await send, False)


async def _run_hooks(
    hooks: Any,
    target: Callable[[Any], Any],
    is_async: bool,
    message: Any,
    meta: bool,
    current: ContextVar[Any] = CURRENT_MESSAGE,
) -> Any:
    """Run a target inside its route's hooks: docs/internals.md, "Observation" and steps 1-7.

    Also runs the native core's `Hooks` (their fields read alike) for the paths the mediator
    drives itself (`catga._hook_runner`), which pass the native `current` message variable.
    """
    observation, inner = observe(hooks, message)
    if observation is None:
        result, from_cache = await _run_bookkeeping(hooks, target, is_async, message, None, None, current)
    else:
        try:
            result, from_cache = await _run_bookkeeping(hooks, target, is_async, message, observation, inner, current)
        except BaseException as exc:
            observation.finish(exc, False)
            raise
        observation.finish(None, from_cache)
    return (result, from_cache) if meta else result


async def _run_bookkeeping(
    hooks: Any,
    target: Callable[[Any], Any],
    is_async: bool,
    message: Any,
    observation: Observation | None,
    inner: str | None,
    current: ContextVar[Any],
) -> tuple[Any, bool]:
    """Steps 1-7: `(result, from_cache)`."""
    errors = hooks.errors
    claim = None
    if hooks.idempotency is not None:
        table, handler = hooks.idempotency
        status, stored = table.claim(message.message_id, handler)
        if status == _COMPLETED:
            if observation is not None:
                observation.count(COUNTER_IDEMPOTENCY_HITS)
            return stored, True
        if status == _IN_FLIGHT:
            raise errors.conflict(message)
        if observation is not None:
            observation.count(COUNTER_IDEMPOTENCY_MISSES)
        claim = (table, message.message_id, handler)
    held = _Held(claim)
    try:
        await held.enter(hooks, errors, observation)
        result, from_cache = await _run_cached(hooks.cache, target, is_async, message, observation, inner, current)
    except BaseException as exc:
        held.settle_failure(exc, errors)
        raise
    held.settle_success(result)
    return result, from_cache


class _Held:
    """What a send through hooks holds (a claim, a permit, the breaker's consent) until it ends."""

    __slots__ = ("breaker", "claim", "permit")

    def __init__(self, claim: tuple[Any, int, int] | None) -> None:
        self.claim = claim
        self.permit: tuple[Any, Any] | None = None
        self.breaker: Any = None

    async def enter(self, hooks: Any, errors: Any, observation: Observation | None) -> None:
        if hooks.rate_limit is not None:
            try:
                await _take_token(hooks.rate_limit, errors)
            except Exception:
                if observation is not None:
                    observation.count(COUNTER_RATE_LIMIT_REJECTED)
                raise
        if hooks.concurrency is not None:
            try:
                await _take_permit(hooks.concurrency, errors)
            except Exception:
                if observation is not None:
                    observation.count(COUNTER_CONCURRENCY_REJECTED)
                raise
            self.permit = hooks.concurrency
        if hooks.breaker is not None:
            retry_after = hooks.breaker.allow()
            if retry_after > 0.0:
                raise errors.circuit_open(retry_after)
            self.breaker = hooks.breaker

    def settle_failure(self, exc: BaseException, errors: Any) -> None:
        if self.breaker is not None:
            # Cancellation and errors that do not count (validation, conflicts) free a half-open probe.
            if isinstance(exc, Exception) and not errors.is_ignored(exc):
                self.breaker.record_failure()
            else:
                self.breaker.record_ignored()
        if self.permit is not None:
            _release_permit(self.permit)
        if self.claim is not None:
            table, message_id, handler = self.claim
            table.release(message_id, handler)

    def settle_success(self, result: Any) -> None:
        if self.breaker is not None:
            self.breaker.record_success()
        if self.permit is not None:
            _release_permit(self.permit)
        if self.claim is not None:
            table, message_id, handler = self.claim
            if not _keep("idempotency", table.complete, message_id, handler, result):
                table.release(message_id, handler)


async def _run_cached(
    cache: tuple[Any, int, Callable[[Any], bytes], float] | None,
    target: Callable[[Any], Any],
    is_async: bool,
    message: Any,
    observation: Observation | None,
    inner: str | None,
    current: ContextVar[Any],
) -> tuple[Any, bool]:
    """The target's result and whether it came from the cache; a computed result is stored."""
    if cache is not None:
        table, group, key_of, ttl = cache
        key = key_of(message)
        hit, stored = table.get(group, key)
        if hit:
            return stored, True
    token = current.set(message)
    try:
        if observation is not None:
            observation.start_inner(inner)
        result = (await target(message)) if is_async else target(message)
    except BaseException as exc:
        if observation is not None:
            observation.end_inner(exc)
        raise
    finally:
        current.reset(token)
    if observation is not None:
        observation.end_inner(None)
    if cache is not None:
        _keep("cache", table.put, group, key, result, ttl)
    return result, False


async def _take_token(rate_limit: tuple[Any, bool, float | None], errors: Any) -> None:
    bucket, wait, max_wait = rate_limit
    while True:
        due = bucket.try_acquire(1)
        if due == 0.0:
            return
        if not wait or (max_wait is not None and due > max_wait):
            raise errors.rate_limited(due)
        await asyncio.sleep(due)


async def _take_permit(concurrency: tuple[Any, Any], errors: Any) -> None:
    limiter, permits = concurrency
    if limiter.try_acquire():
        return
    if permits is None:
        limiter.note_rejected()
        raise errors.concurrency_limited()
    await permits.acquire()


def _release_permit(concurrency: tuple[Any, Any]) -> None:
    limiter, permits = concurrency
    if permits is None:
        limiter.release()
    else:
        permits.release()


def _keep(store: str, put: Callable[..., object], *args: Any) -> bool:
    """Store a result; a store that cannot keep it must not fail the send (issue 3, "Bad input")."""
    try:
        put(*args)
    except Exception:
        _logger.warning("the %s store could not keep a result; it is not cached", store, exc_info=True)
        return False
    return True
