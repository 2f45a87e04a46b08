"""The Python middle chain of a route handler: Validation → DeadLetter → Retry → Timeout.

`compose` wraps a handler's inner chain (its user behaviours and the handler, composed by
`catga._mediator`) in the built-ins that run in Python, outermost first, once per route:

    Validation → DeadLetter → Retry → Timeout → inner

(Logging, Tracing, Metrics and the bookkeeping built-ins run in the core as hooks, around this
chain: docs/internals.md, "Observation" and "Built-in behaviours"; when a bookkeeping store is
remote, those built-ins come as Python layers instead, `outer`, which go outside Validation). Each
layer is present only when configured and needed: no Validation layer for a type with nothing to
check, no Retry layer for `max_attempts=1`, no Timeout layer around an inner chain that is all
sync (sync code cannot be interrupted). A layer that never needs to await is a plain function that
returns the awaitable of the layer inside it, so it adds no coroutine: Validation with sync checks.
Retry and DeadLetter count their retries and dead letters in the route's `TypeMetrics`, when given.

The same chain is built in two modes: `sync=False` for `send`/`publish` (Retry sleeps with
`Retry._sleep`, normally `asyncio.sleep`), and `sync=True` for `send_sync` (Retry sleeps with
`Retry._sleep_sync`, normally `time.sleep`; an async validator, or a dead-letter store that cannot
record without an event loop, makes that mode a `TypeError`).
"""

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from catga._core import COUNTER_DEAD_LETTERS, COUNTER_RETRY_ATTEMPTS
from catga._dead_letters import REDELIVERY, make_record
from catga._errors import CatgaError, Timeout, ValidationError
from catga.behaviors._builtins import Retry
from catga.behaviors._builtins import Timeout as TimeoutBehavior
from catga.behaviors._validation import ValidationPlan

__all__ = ["HandlerInfo", "compose"]

_logger: Final = logging.getLogger("catga")

_Call = Callable[[Any], Any]

ATTEMPTS_ATTRIBUTE: Final = "_catga_attempts"
"""Set by Retry on the exception it gives up on: `(attempts, first_failed_at, last_failed_at)`."""


class HandlerInfo:
    """What the layers say about the handler they wrap, in errors, logs and dead letters."""

    __slots__ = ("handler", "name", "wire_name")

    def __init__(self, name: str, wire_name: str, handler: str | None) -> None:
        self.name = name  # the message type's __qualname__
        self.wire_name = wire_name
        self.handler = handler  # the event handler's qualified name; None for a request


def compose(
    inner: _Call,
    inner_async: bool,
    info: HandlerInfo,
    *,
    metrics: Any = None,
    outer: tuple[Any, ...] = (),
    validation: ValidationPlan | None,
    dead_letter_store: Any,
    retry: Retry | None,
    timeout: TimeoutBehavior | None,
    sync: bool,
) -> tuple[_Call, bool]:
    """`(target, is_async)`: `inner` wrapped in the configured layers.

    With `sync=True` the result is sync (for `send_sync`); a piece that cannot run without an event
    loop raises `TypeError` here.
    """
    if sync:
        _check_sync(info, inner_async, validation, outer)
    call, is_async = inner, inner_async
    if timeout is not None and is_async and not math.isinf(timeout.seconds):
        call = _timeout_layer(call, timeout.seconds, info)
    with_retry = retry is not None and retry.max_attempts > 1
    if retry is not None and with_retry:
        call, is_async = _retry_layer(call, is_async, retry, sync, metrics)
    if dead_letter_store is not None:
        call, is_async = _dead_letter_layer(call, is_async, dead_letter_store, info, with_retry, sync, metrics)
    if validation is not None and not validation.empty:
        call, is_async = _validation_layer(call, is_async, validation)
    if outer:
        call, is_async = _outer_layers(call, is_async, outer), True
    return call, is_async


def _check_sync(
    info: HandlerInfo, inner_async: bool, validation: ValidationPlan | None, outer: tuple[Any, ...]
) -> None:
    """`TypeError` when a piece of the chain cannot run without an event loop."""
    instead = "use `await mediator.send(...)`, not `send_sync`"
    if inner_async:
        raise TypeError(f"`{info.name}` has an async handler or behaviour: {instead}")
    if validation is not None and validation.is_async:
        raise TypeError(f"`{info.name}` has an async validator: {instead}")
    if outer:
        raise TypeError(f"`{info.name}` uses a remote idempotency or cache store: {instead}")


def _outer_layers(call: _Call, is_async: bool, outer: tuple[Any, ...]) -> _Call:
    if not is_async:
        call = _async(call)
    for layer in reversed(outer):
        call = _link(layer, call)
    return call


def _async(call_next: _Call) -> _Call:
    async def run(message: Any) -> Any:
        return call_next(message)

    return run


def _link(layer: Callable[[Any, _Call], Any], call_next: _Call) -> _Call:
    def run(message: Any) -> Any:
        return layer(message, call_next)

    return run


# -------------------------------------------------------------------------------------- Timeout


def _timeout_layer(call_next: _Call, seconds: float, info: HandlerInfo) -> _Call:
    timeout = asyncio.timeout

    async def run(message: Any) -> Any:
        scope = timeout(seconds)
        try:
            async with scope:
                return await call_next(message)
        except TimeoutError as exc:
            if scope.expired():  # our deadline, not a TimeoutError of the handler's own
                raise Timeout(
                    f"handler of `{info.name}` did not finish within `{seconds:g}` s",
                    message_type=info.wire_name,
                    seconds=seconds,
                ) from exc
            raise

    return run


# ---------------------------------------------------------------------------------------- Retry


def _retryable(error: Exception, retry_on: tuple[type[BaseException], ...]) -> bool:
    if isinstance(error, ValidationError):
        return False
    if isinstance(error, CatgaError) and error.retryable:
        return True
    return bool(retry_on) and isinstance(error, retry_on)


def _note_attempts(error: Exception, attempts: int, first_failed_at: datetime, last_failed_at: datetime) -> None:
    with contextlib.suppress(AttributeError, TypeError):  # an exception without a __dict__ goes unnoted
        setattr(error, ATTEMPTS_ATTRIBUTE, (attempts, first_failed_at, last_failed_at))


def _retry_layer(call_next: _Call, call_next_async: bool, retry: Retry, sync: bool, metrics: Any) -> tuple[_Call, bool]:
    if sync:
        return _retry_blocking(call_next, retry, metrics), False
    if call_next_async:
        return _retry_async(call_next, retry, metrics), True
    return _retry_async_over_sync(call_next, retry, metrics), True


def _failed_attempt(
    error: Exception, attempt: int, retry: Retry, first_failed_at: datetime | None, metrics: Any
) -> tuple[datetime, float | None]:
    """After failed attempt number `attempt`: `(first_failed_at, delay before the next attempt)`,
    the delay `None` when Retry gives up (it then notes the attempts on `error`). A retry to come
    is counted in `metrics` (and noted on the current span, when tracing)."""
    failed_at = datetime.now(UTC)
    if first_failed_at is None:
        first_failed_at = failed_at
    if attempt >= retry.max_attempts or not _retryable(error, retry.retry_on):
        _note_attempts(error, attempt, first_failed_at, failed_at)
        return first_failed_at, None
    if metrics is not None:
        metrics.count(COUNTER_RETRY_ATTEMPTS)
    return first_failed_at, retry._delay(attempt, error)


def _retry_async(call_next: _Call, retry: Retry, metrics: Any) -> _Call:
    async def run(message: Any) -> Any:
        attempt, first_failed_at = 1, None
        while True:
            try:
                return await call_next(message)
            except Exception as exc:
                first_failed_at, delay = _failed_attempt(exc, attempt, retry, first_failed_at, metrics)
                if delay is None:
                    raise
            attempt += 1
            await retry._sleep(delay)  # looked up per wait: tests may replace it

    return run


def _retry_async_over_sync(call_next: _Call, retry: Retry, metrics: Any) -> _Call:
    """A sync inner chain under `send`: the waits must not block the loop."""

    async def run(message: Any) -> Any:
        attempt, first_failed_at = 1, None
        while True:
            try:
                return call_next(message)
            except Exception as exc:
                first_failed_at, delay = _failed_attempt(exc, attempt, retry, first_failed_at, metrics)
                if delay is None:
                    raise
            attempt += 1
            await retry._sleep(delay)

    return run


def _retry_blocking(call_next: _Call, retry: Retry, metrics: Any) -> _Call:
    """For `send_sync`: the waits block."""

    def run(message: Any) -> Any:
        attempt, first_failed_at = 1, None
        while True:
            try:
                return call_next(message)
            except Exception as exc:
                first_failed_at, delay = _failed_attempt(exc, attempt, retry, first_failed_at, metrics)
                if delay is None:
                    raise
            attempt += 1
            retry._sleep_sync(delay)

    return run


# ----------------------------------------------------------------------------------- DeadLetter


def _attempts(error: Exception, with_retry: bool) -> tuple[int, datetime | None, datetime | None]:
    """`(attempts, first_failed_at, last_failed_at)` of a final failure (times `None`: now)."""
    if with_retry:
        noted = getattr(error, ATTEMPTS_ATTRIBUTE, None)
        if isinstance(noted, tuple) and len(noted) == 3:
            return noted
    return 1, None, None


def _dead_letter_layer(
    call_next: _Call,
    call_next_async: bool,
    store: Any,
    info: HandlerInfo,
    with_retry: bool,
    sync: bool,
    metrics: Any,
) -> tuple[_Call, bool]:
    if sync:
        return _dead_letter_blocking(call_next, store, info, with_retry, metrics), False
    return _dead_letter_async(call_next, call_next_async, store, info, with_retry, metrics), True


def _dead_letter_async(
    call_next: _Call, call_next_async: bool, store: Any, info: HandlerInfo, with_retry: bool, metrics: Any
) -> _Call:
    async def run(message: Any) -> Any:
        try:
            result = call_next(message)
            return (await result) if call_next_async else result
        except ValidationError:
            raise
        except Exception as exc:
            record = _failed(message, exc, info, with_retry)
            if record is not None:
                try:
                    await store.add(record)
                except Exception:
                    _logger.warning("could not record a dead letter of `%s`", info.name, exc_info=True)
                else:
                    _count_dead_letter(metrics)
            raise

    return run


def _count_dead_letter(metrics: Any) -> None:
    if metrics is not None:
        metrics.count(COUNTER_DEAD_LETTERS)


def _dead_letter_blocking(call_next: _Call, store: Any, info: HandlerInfo, with_retry: bool, metrics: Any) -> _Call:
    add_nowait = getattr(store, "add_nowait", None)
    if add_nowait is None:
        raise TypeError(
            f"the dead-letter store `{store!r}` needs an event loop: use `await mediator.send(...)`, not `send_sync`"
        )

    def run(message: Any) -> Any:
        try:
            return call_next(message)
        except ValidationError:
            raise
        except Exception as exc:
            record = _failed(message, exc, info, with_retry)
            if record is not None:
                try:
                    add_nowait(record)
                except Exception:
                    _logger.warning("could not record a dead letter of `%s`", info.name, exc_info=True)
                else:
                    _count_dead_letter(metrics)
            raise

    return run


def _failed(message: Any, error: Exception, info: HandlerInfo, with_retry: bool) -> Any:
    """The record of a final failure, or `None` for a `dead_letters.retry`, which is told instead."""
    attempts, first_failed_at, last_failed_at = _attempts(error, with_retry)
    redelivery = REDELIVERY.get()
    if redelivery is not None and redelivery.message is message:
        redelivery.attempts = attempts
        redelivery.error = error
        return None
    return make_record(message, info.wire_name, error, attempts, first_failed_at, last_failed_at, info.handler)


# ----------------------------------------------------------------------------------- Validation


def _validation_layer(call_next: _Call, call_next_async: bool, plan: ValidationPlan) -> tuple[_Call, bool]:
    if plan.is_async:

        async def run(message: Any) -> Any:
            errors = await plan.check(message)
            if errors:
                raise plan.error(errors)
            result = call_next(message)
            return (await result) if call_next_async else result

        return run, True

    check = plan.check_sync

    # Sync: raising here, before any awaitable exists, is what the core expects of a target
    # (it raises the error on await), so an async route pays no coroutine for validation.
    def run_sync(message: Any) -> Any:
        errors = check(message)
        if errors:
            raise plan.error(errors)
        return call_next(message)

    return run_sync, call_next_async
