"""Running a route handler's `Hooks` from Python: for `send_sync`, the concurrent publish and
`dead_letters.retry` of an event handler.

`send` and the sequential `publish` run the hooks inside the core (docs/internals.md, "Observation"
and "Built-in behaviours", steps 1-7). The paths that the mediator drives itself run the same steps
here: the async runner is the pure core's (one handler of a concurrent publish, a dead letter's
handler, the observer of a concurrent publish), and a sync one (`send_sync`, where a built-in that
must wait blocks: a rate limit sleeps with `time.sleep`, a concurrency limit polls for a free permit
up to its `wait_timeout`).
"""

import logging
import time
from collections.abc import Callable
from typing import Any, Final

from catga._core import CURRENT_MESSAGE
from catga._pure._dispatch import _run_hooks
from catga._pure._observe import (
    COUNTER_CONCURRENCY_REJECTED,
    COUNTER_IDEMPOTENCY_HITS,
    COUNTER_IDEMPOTENCY_MISSES,
    COUNTER_RATE_LIMIT_REJECTED,
    Observation,
    observe,
)

__all__ = ["run_hooks", "run_hooks_sync"]

_IN_FLIGHT: Final = 1  # IdempotencyTable.claim statuses (catga.stores.ClaimStatus)
_COMPLETED: Final = 2
_PERMIT_POLL: Final = 0.001  # seconds between tries for a permit in `send_sync`

_logger = logging.getLogger("catga")


class _Held:
    """What a run holds (an idempotency claim, a permit, the breaker's consent) until it ends."""

    __slots__ = ("breaker", "claim", "permit")

    def __init__(self) -> None:
        self.claim: tuple[Any, int, int] | None = None
        self.permit: tuple[Any, Any] | None = None
        self.breaker: Any = None

    def claim_id(self, hooks: Any, message: Any) -> tuple[bool, Any]:
        """Step 1: `(True, stored result)` for a completed message, else `(False, None)`."""
        table, handler = hooks.idempotency
        message_id = message.message_id
        status, stored = table.claim(message_id, handler)
        if status == _COMPLETED:
            return True, stored
        if status == _IN_FLIGHT:
            raise hooks.errors.conflict(message)
        self.claim = (table, message_id, handler)
        return False, None

    def check_breaker(self, hooks: Any) -> None:
        retry_after = hooks.breaker.allow()
        if retry_after > 0.0:
            raise hooks.errors.circuit_open(retry_after)
        self.breaker = hooks.breaker

    def failed(self, error: BaseException, errors: Any) -> None:
        if self.breaker is not None:
            # Cancellation and the errors that do not count (validation, conflicts) free a probe.
            if isinstance(error, Exception) and not errors.is_ignored(error):
                self.breaker.record_failure()
            else:
                self.breaker.record_ignored()
        self._release_permit()
        if self.claim is not None:
            table, message_id, handler = self.claim
            table.release(message_id, handler)

    def succeeded(self, result: Any) -> None:
        if self.breaker is not None:
            self.breaker.record_success()
        self._release_permit()
        if self.claim is not None:
            table, message_id, handler = self.claim
            if not _keep("idempotency", table.complete, message_id, handler, result):
                table.release(message_id, handler)

    def _release_permit(self) -> None:
        if self.permit is not None:
            limiter, permits = self.permit
            if permits is None:
                limiter.release()
            else:
                permits.release()


def _keep(store: str, put: Callable[..., object], *args: Any) -> bool:
    """Store a result; a store that cannot keep it does not fail the send (issue 3, "Bad input")."""
    try:
        put(*args)
    except Exception:
        _logger.warning("the %s store could not keep a result; it is not cached", store, exc_info=True)
        return False
    return True


# ------------------------------------------------------------------------------------------ async


async def run_hooks(hooks: Any, target: Callable[[Any], Any], is_async: bool, message: Any) -> tuple[Any, bool]:
    """Run `target(message)` inside its hooks; `(result, from_cache)`.

    The pure core's runner, which reads the native `Hooks` alike, with the core's message variable.
    """
    result: tuple[Any, bool] = await _run_hooks(hooks, target, is_async, message, True, CURRENT_MESSAGE)
    return result


# ------------------------------------------------------------------------------------------- sync


def run_hooks_sync(hooks: Any, target: Callable[[Any], Any], message: Any) -> Any:
    """Run the sync `target(message)` inside its hooks, without an event loop; its result."""
    observation, inner = observe(hooks, message)
    if observation is None:
        return _bookkeeping_sync(hooks, target, message, None, None)[0]
    try:
        result, from_cache = _bookkeeping_sync(hooks, target, message, observation, inner)
    except BaseException as exc:
        observation.finish(exc, False)
        raise
    observation.finish(None, from_cache)
    return result


def _bookkeeping_sync(
    hooks: Any, target: Callable[[Any], Any], message: Any, observation: Observation | None, inner: str | None
) -> tuple[Any, bool]:
    held = _Held()
    errors = hooks.errors
    if hooks.idempotency is not None:
        hit, stored = held.claim_id(hooks, message)
        if observation is not None:
            observation.count(COUNTER_IDEMPOTENCY_HITS if hit else COUNTER_IDEMPOTENCY_MISSES)
        if hit:
            return stored, True
    try:
        _enter_sync(hooks, held, observation)
        result, from_cache = _cached_sync(hooks.cache, target, message, observation, inner)
    except BaseException as exc:
        held.failed(exc, errors)
        raise
    held.succeeded(result)
    return result, from_cache


def _enter_sync(hooks: Any, held: _Held, observation: Observation | None) -> None:
    """Steps 2-4 without a loop: a rate limit that may wait sleeps, a permit is polled for."""
    errors = hooks.errors
    if hooks.rate_limit is not None:
        bucket, wait, max_wait = hooks.rate_limit
        while (due := bucket.try_acquire(1)) != 0.0:
            if not wait or (max_wait is not None and due > max_wait):
                if observation is not None:
                    observation.count(COUNTER_RATE_LIMIT_REJECTED)
                raise errors.rate_limited(due)
            time.sleep(due)
    if hooks.concurrency is not None:
        try:
            _take_permit_sync(hooks.concurrency, errors)
        except Exception:
            if observation is not None:
                observation.count(COUNTER_CONCURRENCY_REJECTED)
            raise
        held.permit = hooks.concurrency
    if hooks.breaker is not None:
        held.check_breaker(hooks)


def _cached_sync(
    cache: Any, target: Callable[[Any], Any], message: Any, observation: Observation | None, inner: str | None
) -> tuple[Any, bool]:
    if cache is None:
        return _call_with_context(target, message, observation, inner), False
    table, group, key_of, ttl = cache
    key = key_of(message)
    hit, stored = table.get(group, key)
    if hit:
        return stored, True
    result = _call_with_context(target, message, observation, inner)
    _keep("cache", table.put, group, key, result, ttl)
    return result, False


def _call_with_context(
    target: Callable[[Any], Any], message: Any, observation: Observation | None, inner: str | None
) -> Any:
    token = CURRENT_MESSAGE.set(message)
    try:
        if observation is None:
            return target(message)
        observation.start_inner(inner)
        try:
            result = target(message)
        except BaseException as exc:
            observation.end_inner(exc)
            raise
        observation.end_inner(None)
        return result
    finally:
        CURRENT_MESSAGE.reset(token)


def _take_permit_sync(concurrency: tuple[Any, Any], errors: Any) -> None:
    limiter, permits = concurrency
    if limiter.try_acquire():
        return
    if permits is not None:
        deadline = time.monotonic() + permits.wait_timeout
        while time.monotonic() < deadline:
            time.sleep(_PERMIT_POLL)
            if limiter.try_acquire():
                return
    limiter.note_rejected()
    raise errors.concurrency_limited()
