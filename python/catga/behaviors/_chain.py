"""The Python middle chain of a route handler: Logging → Validation → DeadLetter → Retry → Timeout.

`compose` wraps a handler's inner chain (its user behaviours and the handler, composed by
`catga._mediator`) in the built-ins that run in Python, outermost first, once per route:

    Logging → [Tracing: compiled away] → Validation → DeadLetter → Retry → Timeout → inner

(the bookkeeping built-ins between Tracing and Validation run in the core as hooks, around this
chain: docs/internals.md, "Built-in behaviours"; when one of their stores is remote, they come as
Python layers instead, `outer`, which go between Logging and Validation). Each layer is present
only when configured and needed: no Validation layer for a type with nothing to check, no Retry
layer for `max_attempts=1`, no Timeout layer around an inner chain that is all sync (sync code
cannot be interrupted). A layer that never needs to await is a plain function that returns the awaitable of
the layer inside it, so it adds no coroutine: Validation with sync checks, and Logging whenever the
`catga` logger does not take its level (checked per message, so level changes apply at once).

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
from time import perf_counter
from typing import Any, Final

from catga._dead_letters import REDELIVERY, make_record
from catga._errors import CatgaError, Timeout, ValidationError
from catga.behaviors._builtins import Logging, Retry
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
    logging_: Logging | None,
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
        call, is_async = _retry_layer(call, is_async, retry, sync)
    if dead_letter_store is not None:
        call, is_async = _dead_letter_layer(call, is_async, dead_letter_store, info, with_retry, sync)
    if validation is not None and not validation.empty:
        call, is_async = _validation_layer(call, is_async, validation)
    if outer:
        call, is_async = _outer_layers(call, is_async, outer), True
    if logging_ is not None:
        call, is_async = _logging_layer(call, is_async, logging_.level, info)
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


def _retry_layer(call_next: _Call, call_next_async: bool, retry: Retry, sync: bool) -> tuple[_Call, bool]:
    if sync:
        return _retry_blocking(call_next, retry), False
    if call_next_async:
        return _retry_async(call_next, retry), True
    return _retry_async_over_sync(call_next, retry), True


def _failed_attempt(
    error: Exception, attempt: int, retry: Retry, first_failed_at: datetime | None
) -> tuple[datetime, float | None]:
    """After failed attempt number `attempt`: `(first_failed_at, delay before the next attempt)`,
    the delay `None` when Retry gives up (it then notes the attempts on `error`)."""
    failed_at = datetime.now(UTC)
    if first_failed_at is None:
        first_failed_at = failed_at
    if attempt >= retry.max_attempts or not _retryable(error, retry.retry_on):
        _note_attempts(error, attempt, first_failed_at, failed_at)
        return first_failed_at, None
    return first_failed_at, retry._delay(attempt, error)


def _retry_async(call_next: _Call, retry: Retry) -> _Call:
    async def run(message: Any) -> Any:
        attempt, first_failed_at = 1, None
        while True:
            try:
                return await call_next(message)
            except Exception as exc:
                first_failed_at, delay = _failed_attempt(exc, attempt, retry, first_failed_at)
                if delay is None:
                    raise
            attempt += 1
            await retry._sleep(delay)  # looked up per wait: tests may replace it

    return run


def _retry_async_over_sync(call_next: _Call, retry: Retry) -> _Call:
    """A sync inner chain under `send`: the waits must not block the loop."""

    async def run(message: Any) -> Any:
        attempt, first_failed_at = 1, None
        while True:
            try:
                return call_next(message)
            except Exception as exc:
                first_failed_at, delay = _failed_attempt(exc, attempt, retry, first_failed_at)
                if delay is None:
                    raise
            attempt += 1
            await retry._sleep(delay)

    return run


def _retry_blocking(call_next: _Call, retry: Retry) -> _Call:
    """For `send_sync`: the waits block."""

    def run(message: Any) -> Any:
        attempt, first_failed_at = 1, None
        while True:
            try:
                return call_next(message)
            except Exception as exc:
                first_failed_at, delay = _failed_attempt(exc, attempt, retry, first_failed_at)
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
    call_next: _Call, call_next_async: bool, store: Any, info: HandlerInfo, with_retry: bool, sync: bool
) -> tuple[_Call, bool]:
    if sync:
        return _dead_letter_blocking(call_next, store, info, with_retry), False
    return _dead_letter_async(call_next, call_next_async, store, info, with_retry), True


def _dead_letter_async(
    call_next: _Call, call_next_async: bool, store: Any, info: HandlerInfo, with_retry: bool
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
            raise

    return run


def _dead_letter_blocking(call_next: _Call, store: Any, info: HandlerInfo, with_retry: bool) -> _Call:
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


# -------------------------------------------------------------------------------------- Logging


def _log(level: int, info: HandlerInfo, message: Any, started: float, error: BaseException | None) -> None:
    duration = perf_counter() - started
    message_id = getattr(message, "message_id", None)
    if not isinstance(message_id, int):
        message_id = None
    correlation_id = getattr(message, "correlation_id", None)
    if not isinstance(correlation_id, int):
        correlation_id = None
    correlation_id = correlation_id or message_id
    if error is None:
        outcome, text = "success", None
    elif isinstance(error, asyncio.CancelledError):
        outcome, text = "cancelled", None
    else:
        outcome, text = "failure", f"{type(error).__qualname__}: {error}" if str(error) else type(error).__qualname__
    extra = {
        "message_type": info.wire_name,
        "message_id": message_id,
        "correlation_id": correlation_id,
        "duration": duration,
        "outcome": outcome,
        "error": text,
        "handler": info.handler,
    }
    where = f" by `{info.handler}`" if info.handler else ""
    if text is None:
        _logger.log(level, "`%s`%s: %s in %.3f ms", info.name, where, outcome, duration * 1000.0, extra=extra)
    else:
        _logger.log(level, "`%s`%s: %s in %.3f ms: %s", info.name, where, outcome, duration * 1000.0, text, extra=extra)


def _answers() -> Callable[[int], bool | None]:
    """A fast look-up of `logger.isEnabledFor(level)`: `None` when it must be asked.

    `Logger.isEnabledFor` memoises its answers in `Logger._cache`, a dict that `setLevel`,
    `logging.disable` and logging configuration clear in place, so reading it directly sees every
    level change and saves most of the check's cost (about 70 ns a message). A missing entry is
    asked for with `isEnabledFor`, which fills it again. A stale `True` (a logger disabled by
    `dictConfig`) only costs a record that `Logger.log` drops.
    """
    cache = getattr(_logger, "_cache", None)
    if isinstance(cache, dict):
        return cache.get
    return lambda level: None  # not CPython's logging: always ask


def _logging_layer(call_next: _Call, call_next_async: bool, level: int, info: HandlerInfo) -> tuple[_Call, bool]:
    if call_next_async:
        return _logging_async(call_next, level, info), True
    return _logging_sync(call_next, level, info), False


def _logging_sync(call_next: _Call, level: int, info: HandlerInfo) -> _Call:
    cached = _answers()
    is_enabled_for = _logger.isEnabledFor

    def run(message: Any) -> Any:
        enabled = cached(level)
        if enabled is None:
            enabled = is_enabled_for(level)
        if not enabled:
            return call_next(message)
        started = perf_counter()
        try:
            result = call_next(message)
        except Exception as exc:
            _log(level, info, message, started, exc)
            raise
        _log(level, info, message, started, None)
        return result

    return run


def _logging_async(call_next: _Call, level: int, info: HandlerInfo) -> _Call:
    cached = _answers()
    is_enabled_for = _logger.isEnabledFor

    async def logged(message: Any) -> Any:
        started = perf_counter()
        try:
            result = await call_next(message)
        except (Exception, asyncio.CancelledError) as exc:
            _log(level, info, message, started, exc)
            raise
        _log(level, info, message, started, None)
        return result

    # A plain function: with the level off it hands back the inner awaitable, adding no coroutine.
    def run(message: Any) -> Any:
        enabled = cached(level)
        if enabled is None:
            enabled = is_enabled_for(level)
        if enabled:
            return logged(message)
        return call_next(message)

    return run
