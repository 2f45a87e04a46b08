"""Python layers for bookkeeping built-ins whose store is remote (a user's store, Redis).

The core's hooks call the in-memory tables synchronously; an async store cannot be called there.
For a route whose idempotency or cache store is remote, `catga.behaviors._hooks.plan_builtins`
returns these layers instead: each is a behaviour `(message, call_next) -> awaitable` doing what
its hook does (docs/internals.md, "Built-in behaviours", steps 1-7) over the same state machines.
The mediator puts `plan.outer` outermost in the middle chain (outside Validation) and `plan.cache`
between Timeout and the user behaviours, so the contract order holds.

A result served by a layer from its store is reported to `send_result` through `FromCacheScope`
(`metadata["from_cache"]`), since the core only knows about its own hooks.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Final

from catga._core import (
    COUNTER_CONCURRENCY_REJECTED,
    COUNTER_IDEMPOTENCY_HITS,
    COUNTER_IDEMPOTENCY_MISSES,
    COUNTER_RATE_LIMIT_REJECTED,
)
from catga.stores._protocols import CacheStore, ClaimStatus, IdempotencyStore

__all__ = [
    "AsyncRateLimitLayer",
    "BreakerLayer",
    "CacheLayer",
    "ConcurrencyLayer",
    "FromCacheScope",
    "IdempotencyLayer",
    "Layer",
    "RateLimitLayer",
]

CallNext = Callable[[Any], Awaitable[Any]]
Layer = Callable[[Any, CallNext], Awaitable[Any]]
"""A behaviour of the middle chain: `layer(message, call_next)` returns an awaitable result."""

_logger = logging.getLogger("catga")


# --------------------------------------------------------------------------- from-cache reporting


class FromCacheScope:
    """Tells whether a layer served `message` from its store while the scope was open.

    The mediator's `send_result` wraps its send in one (only needed for routes with layers):

        with FromCacheScope(message) as scope:
            value, from_cache = await mediator.send_meta(message)
        from_cache = from_cache or scope.hit

    Only a hit for this very message counts: a nested send of another message from its handler
    does not mark the outer one.
    """

    __slots__ = ("_token", "hit", "message")

    message: object
    hit: bool

    def __init__(self, message: object) -> None:
        self.message = message
        self.hit = False
        self._token: Token[FromCacheScope | None] | None = None

    def __enter__(self) -> "FromCacheScope":
        self._token = _SCOPE.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _SCOPE.reset(self._token)
            self._token = None


_SCOPE: Final[ContextVar[FromCacheScope | None]] = ContextVar("catga_from_cache_scope", default=None)


def _count(metrics: Any, counter: int) -> None:
    if metrics is not None:
        metrics.count(counter)


def _mark_from_cache(message: object) -> None:
    scope = _SCOPE.get()
    if scope is not None and scope.message is message:
        scope.hit = True


# ---------------------------------------------------------------------------------- the layers


class IdempotencyLayer:
    """Step 1 and its outcome over an async `IdempotencyStore`: claim, then complete or release.

    A completed key returns its stored result (marked from cache) without calling `call_next`; a
    claim in flight raises `errors.conflict(message)`. A result the store cannot keep is returned
    all the same, with a warning, and the claim released.
    """

    __slots__ = ("errors", "handler_key", "metrics", "store")

    def __init__(self, store: IdempotencyStore, handler_key: int, errors: Any, metrics: Any = None) -> None:
        self.store = store
        self.handler_key = handler_key
        self.errors = errors
        self.metrics = metrics  # the route's `TypeMetrics`, counting hits and misses, or None

    async def __call__(self, message: Any, call_next: CallNext) -> Any:
        key = (message.message_id, self.handler_key)
        status, value = await self.store.claim(key)
        if status == ClaimStatus.COMPLETED:
            _count(self.metrics, COUNTER_IDEMPOTENCY_HITS)
            _mark_from_cache(message)
            return value
        if status == ClaimStatus.IN_FLIGHT:
            raise self.errors.conflict(message)
        _count(self.metrics, COUNTER_IDEMPOTENCY_MISSES)
        try:
            result = await call_next(message)
        except BaseException:
            await self._release(key)
            raise
        try:
            await self.store.complete(key, result)
        except Exception:
            _logger.warning(
                "the idempotency store `%r` could not keep the result of `%s`; it is not stored",
                self.store,
                type(message).__qualname__,
                exc_info=True,
            )
            await self._release(key)
        return result

    async def _release(self, key: tuple[int, int]) -> None:
        try:
            await self.store.release(key)
        except Exception:
            # The claim then expires with the store's TTL; the handler's own outcome goes on.
            _logger.warning("the idempotency store `%r` could not release a claim", self.store, exc_info=True)

    def __repr__(self) -> str:
        return f"IdempotencyLayer({self.store!r}, handler_key={self.handler_key!r})"


class RateLimitLayer:
    """Step 2: take a token from the bucket, or wait for one (up to `max_wait`), or raise."""

    __slots__ = ("bucket", "errors", "max_wait", "metrics", "wait")

    def __init__(self, bucket: Any, wait: bool, max_wait: float | None, errors: Any, metrics: Any = None) -> None:
        self.bucket = bucket
        self.wait = wait
        self.max_wait = max_wait
        self.errors = errors
        self.metrics = metrics

    async def __call__(self, message: Any, call_next: CallNext) -> Any:
        while True:
            due: float = self.bucket.try_acquire(1)
            if due == 0.0:
                break
            if not self.wait or (self.max_wait is not None and due > self.max_wait):
                _count(self.metrics, COUNTER_RATE_LIMIT_REJECTED)
                raise self.errors.rate_limited(due)
            await asyncio.sleep(due)
        return await call_next(message)

    def __repr__(self) -> str:
        return f"RateLimitLayer(wait={self.wait!r}, max_wait={self.max_wait!r})"


class AsyncRateLimitLayer(RateLimitLayer):
    """Step 2 over an async bucket (`await bucket.try_acquire(1)`), e.g. `catga.redis.RedisRateLimit`'s
    shared one. A class of its own so the synchronous layer keeps its await-free path."""

    __slots__ = ()

    async def __call__(self, message: Any, call_next: CallNext) -> Any:
        while True:
            due: float = await self.bucket.try_acquire(1)
            if due == 0.0:
                break
            if not self.wait or (self.max_wait is not None and due > self.max_wait):
                _count(self.metrics, COUNTER_RATE_LIMIT_REJECTED)
                raise self.errors.rate_limited(due)
            await asyncio.sleep(due)
        return await call_next(message)

    def __repr__(self) -> str:
        return f"AsyncRateLimitLayer({self.bucket!r}, wait={self.wait!r}, max_wait={self.max_wait!r})"


class ConcurrencyLayer:
    """Step 3: hold a permit while the rest runs (waiting through `permits`, when given)."""

    __slots__ = ("errors", "limiter", "metrics", "permits")

    def __init__(self, limiter: Any, permits: Any, errors: Any, metrics: Any = None) -> None:
        self.limiter = limiter
        self.permits = permits
        self.errors = errors
        self.metrics = metrics

    async def __call__(self, message: Any, call_next: CallNext) -> Any:
        if not self.limiter.try_acquire():
            if self.permits is None:
                self.limiter.note_rejected()
                _count(self.metrics, COUNTER_CONCURRENCY_REJECTED)
                raise self.errors.concurrency_limited()
            try:
                await self.permits.acquire()
            except Exception:
                _count(self.metrics, COUNTER_CONCURRENCY_REJECTED)
                raise
        try:
            return await call_next(message)
        finally:
            if self.permits is None:
                self.limiter.release()
            else:
                self.permits.release()

    def __repr__(self) -> str:
        return f"ConcurrencyLayer({self.limiter!r})"


class BreakerLayer:
    """Step 4 and its outcome: ask the breaker, then record success, failure or an ignored error."""

    __slots__ = ("breaker", "errors")

    def __init__(self, breaker: Any, errors: Any) -> None:
        self.breaker = breaker
        self.errors = errors

    async def __call__(self, message: Any, call_next: CallNext) -> Any:
        retry_after: float = self.breaker.allow()
        if retry_after > 0.0:
            raise self.errors.circuit_open(retry_after)
        try:
            result = await call_next(message)
        except Exception as exc:
            if self.errors.is_ignored(exc):
                self.breaker.record_ignored()
            else:
                self.breaker.record_failure()
            raise
        except BaseException:
            self.breaker.record_ignored()  # cancelled: frees a half-open probe, counts nothing
            raise
        self.breaker.record_success()
        return result

    def __repr__(self) -> str:
        return f"BreakerLayer({self.breaker!r})"


class CacheLayer:
    """Step 5 and its outcome over an async `CacheStore`: a hit returns the stored value (marked
    from cache); a miss runs the rest and stores its result for `ttl` seconds.

    A store that fails to read or to keep a value does not fail the query: a warning is logged.
    """

    __slots__ = ("group", "key", "store", "ttl")

    def __init__(self, store: CacheStore, group: int, key: Callable[[Any], bytes], ttl: float) -> None:
        self.store = store
        self.group = group
        self.key = key
        self.ttl = ttl

    async def __call__(self, message: Any, call_next: CallNext) -> Any:
        key = self.key(message)
        try:
            hit, value = await self.store.get(self.group, key)
        except Exception:
            _logger.warning("the cache store `%r` failed to read; running the handler", self.store, exc_info=True)
            hit, value = False, None
        if hit:
            _mark_from_cache(message)
            return value
        result = await call_next(message)
        try:
            await self.store.put(self.group, key, result, self.ttl)
        except Exception:
            _logger.warning(
                "the cache store `%r` could not keep the result of `%s`; it is not cached",
                self.store,
                type(message).__qualname__,
                exc_info=True,
            )
        return result

    def __repr__(self) -> str:
        return f"CacheLayer({self.store!r}, ttl={self.ttl!r})"
