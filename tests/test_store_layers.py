"""`catga.behaviors._store_layers`: the Python layers that replace the hooks for remote stores.

Each layer is called directly as a behaviour `(message, call_next)`, over small async stores
written here (a dict behind the protocol) and the core's state machines; the mediator end to end
is in `test_builtins_bookkeeping.py`.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

import catga
from catga import _core
from catga._errors import HookErrors
from catga._permits import Permits
from catga.behaviors._hooks import cache_key, group_of
from catga.behaviors._store_layers import (
    BreakerLayer,
    CacheLayer,
    ConcurrencyLayer,
    FromCacheScope,
    IdempotencyLayer,
    RateLimitLayer,
)
from catga.stores import CacheStore, ClaimResult, ClaimStatus, IdempotencyStore

ERRORS = HookErrors("`PlaceOrder`", message_type="tests.PlaceOrder")


class PlaceOrder(catga.Command[str]):
    customer: str


class GetOrder(catga.Query[str]):
    order_id: str


class DictIdempotencyStore:
    """An `IdempotencyStore` over a dict, as a remote store would behave (minus the network)."""

    ttl = 60.0

    def __init__(self, keep: bool = True) -> None:
        self.entries: dict[tuple[int, int], tuple[bool, Any]] = {}
        self.keep = keep
        self.calls: list[str] = []

    async def claim(self, key: tuple[int, int]) -> ClaimResult:
        self.calls.append("claim")
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = (False, None)
            return ClaimResult(ClaimStatus.CLAIMED)
        if entry[0]:
            return ClaimResult(ClaimStatus.COMPLETED, entry[1])
        return ClaimResult(ClaimStatus.IN_FLIGHT)

    async def complete(self, key: tuple[int, int], result: Any) -> None:
        self.calls.append("complete")
        if not self.keep:
            raise TypeError(f"cannot encode `{result!r}`")
        self.entries[key] = (True, result)

    async def release(self, key: tuple[int, int]) -> None:
        self.calls.append("release")
        if self.entries.get(key, (True, None))[0] is False:
            del self.entries[key]


class DictCacheStore:
    """A `CacheStore` over a dict; `fail_get`/`fail_put` make it misbehave."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, bytes], tuple[Any, float]] = {}
        self.fail_get = False
        self.fail_put = False

    async def get(self, group: int, key: bytes) -> tuple[bool, Any]:
        if self.fail_get:
            raise ConnectionError("store `down`")
        if (group, key) in self.entries:
            return True, self.entries[(group, key)][0]
        return False, None

    async def put(self, group: int, key: bytes, value: Any, ttl: float) -> None:
        if self.fail_put:
            raise TypeError(f"cannot encode `{value!r}`")
        self.entries[(group, key)] = (value, ttl)

    async def invalidate_group(self, group: int) -> None:
        self.entries = {k: v for k, v in self.entries.items() if k[0] != group}

    async def invalidate_where(self, group: int, predicate: Callable[[bytes], bool]) -> None:
        self.entries = {k: v for k, v in self.entries.items() if not (k[0] == group and predicate(k[1]))}


def test_the_test_stores_are_protocol_stores() -> None:
    assert isinstance(DictIdempotencyStore(), IdempotencyStore)
    assert isinstance(DictCacheStore(), CacheStore)


class Handler:
    """`call_next` for the layers: counts calls, returns or raises what it is told."""

    def __init__(self, result: Any = "ok", error: BaseException | None = None) -> None:
        self.calls = 0
        self.result = result
        self.error = error
        self.gate: asyncio.Event | None = None

    async def __call__(self, message: Any) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.result


# -------------------------------------------------------------------------------- idempotency


async def test_idempotency_layer_runs_once_and_replays() -> None:
    store = DictIdempotencyStore()
    layer = IdempotencyLayer(store, 0, ERRORS)
    handler = Handler("order-1")
    message = PlaceOrder("ada")
    with FromCacheScope(message) as scope:
        assert await layer(message, handler) == "order-1"
    assert not scope.hit
    with FromCacheScope(message) as scope:
        assert await layer(message, handler) == "order-1"
    assert scope.hit
    assert handler.calls == 1
    assert store.calls == ["claim", "complete", "claim"]


async def test_idempotency_layer_keys_event_handlers() -> None:
    store = DictIdempotencyStore()
    key = _core.handler_key("shop.email")
    message = PlaceOrder("ada")
    await IdempotencyLayer(store, key, ERRORS)(message, Handler())
    assert list(store.entries) == [(message.message_id, key)]


async def test_idempotency_layer_stores_none() -> None:
    store = DictIdempotencyStore()
    layer = IdempotencyLayer(store, 0, ERRORS)
    handler = Handler(None)
    message = PlaceOrder("ada")
    assert await layer(message, handler) is None
    with FromCacheScope(message) as scope:
        assert await layer(message, handler) is None
    assert scope.hit
    assert handler.calls == 1


async def test_idempotency_layer_releases_after_a_failure() -> None:
    store = DictIdempotencyStore()
    layer = IdempotencyLayer(store, 0, ERRORS)
    message = PlaceOrder("ada")
    with pytest.raises(ValueError, match="boom"):
        await layer(message, Handler(error=ValueError("boom")))
    assert store.entries == {}
    handler = Handler("second try")
    assert await layer(message, handler) == "second try"
    assert handler.calls == 1


async def test_idempotency_layer_conflict_while_in_flight() -> None:
    store = DictIdempotencyStore()
    layer = IdempotencyLayer(store, 0, ERRORS)
    handler = Handler("done")
    handler.gate = asyncio.Event()
    message = PlaceOrder("ada")
    first = asyncio.create_task(layer(message, handler))
    await asyncio.sleep(0)
    with pytest.raises(catga.Conflict, match=f"message `{message.message_id}` of `PlaceOrder`"):
        await layer(message, handler)
    handler.gate.set()
    assert await first == "done"
    assert handler.calls == 1


async def test_idempotency_layer_releases_when_cancelled() -> None:
    store = DictIdempotencyStore()
    layer = IdempotencyLayer(store, 0, ERRORS)
    handler = Handler()
    handler.gate = asyncio.Event()
    task = asyncio.create_task(layer(PlaceOrder("ada"), handler))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.entries == {}


async def test_a_result_the_store_cannot_keep_is_returned_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    store = DictIdempotencyStore(keep=False)
    layer = IdempotencyLayer(store, 0, ERRORS)
    handler = Handler("unencodable")
    message = PlaceOrder("ada")
    with caplog.at_level(logging.WARNING, logger="catga"):
        assert await layer(message, handler) == "unencodable"
    assert "could not keep the result of `PlaceOrder`" in caplog.text
    assert store.entries == {}  # released: a retry may run it
    assert store.calls == ["claim", "complete", "release"]
    assert await layer(message, handler) == "unencodable"
    assert handler.calls == 2


async def test_from_cache_scope_only_counts_its_own_message() -> None:
    store = DictIdempotencyStore()
    layer = IdempotencyLayer(store, 0, ERRORS)
    inner = PlaceOrder("inner")
    await layer(inner, Handler())
    outer = PlaceOrder("outer")
    with FromCacheScope(outer) as scope:
        await layer(inner, Handler())  # a nested send of another message hits the store
    assert not scope.hit
    await layer(inner, Handler())  # no scope open: nothing to report to


# -------------------------------------------------------------------------------------- cache


async def test_cache_layer_hit_and_miss() -> None:
    store = DictCacheStore()
    layer = CacheLayer(store, group_of(GetOrder), cache_key, 30.0)
    handler = Handler("order o1")
    query = GetOrder("o1")
    with FromCacheScope(query) as scope:
        assert await layer(query, handler) == "order o1"
    assert not scope.hit
    assert store.entries == {(group_of(GetOrder), cache_key(query)): ("order o1", 30.0)}
    again = GetOrder("o1")  # another message, same fields
    with FromCacheScope(again) as scope:
        assert await layer(again, handler) == "order o1"
    assert scope.hit
    assert handler.calls == 1
    await layer(GetOrder("o2"), handler)
    assert handler.calls == 2


async def test_cache_layer_survives_a_failing_store(caplog: pytest.LogCaptureFixture) -> None:
    store = DictCacheStore()
    layer = CacheLayer(store, group_of(GetOrder), cache_key, 30.0)
    handler = Handler("fresh")
    store.fail_put = True
    with caplog.at_level(logging.WARNING, logger="catga"):
        assert await layer(GetOrder("o1"), handler) == "fresh"
    assert "could not keep the result of `GetOrder`; it is not cached" in caplog.text
    store.fail_put = False
    store.fail_get = True
    with caplog.at_level(logging.WARNING, logger="catga"):
        assert await layer(GetOrder("o1"), handler) == "fresh"
    assert "failed to read" in caplog.text
    assert handler.calls == 2


async def test_cache_layer_does_not_store_failures() -> None:
    store = DictCacheStore()
    layer = CacheLayer(store, group_of(GetOrder), cache_key, 30.0)
    with pytest.raises(LookupError):
        await layer(GetOrder("o1"), Handler(error=LookupError("no `o1`")))
    assert store.entries == {}


# ------------------------------------------------------------------------------------ breaker


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def test_breaker_layer_opens_after_the_threshold_and_probes() -> None:
    clock = Clock()
    breaker = _core.CircuitBreaker(2, 10.0, clock=clock)
    layer = BreakerLayer(breaker, ERRORS)
    failing = Handler(error=RuntimeError("down"))
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await layer(PlaceOrder("ada"), failing)
    with pytest.raises(catga.CircuitOpen) as caught:
        await layer(PlaceOrder("ada"), failing)
    assert caught.value.retry_after == pytest.approx(10.0)
    assert failing.calls == 2  # refused without running
    clock.now += 10.0
    ok = Handler("back")
    assert await layer(PlaceOrder("ada"), ok) == "back"  # the half-open probe closes it
    assert breaker.state == "closed"


async def test_breaker_layer_ignores_validation_and_conflicts_and_frees_a_cancelled_probe() -> None:
    clock = Clock()
    breaker = _core.CircuitBreaker(1, 5.0, clock=clock)
    layer = BreakerLayer(breaker, ERRORS)
    for error in (catga.ValidationError(["`customer` is empty"]), catga.Conflict("dup `1`")):
        with pytest.raises(type(error)):
            await layer(PlaceOrder("ada"), Handler(error=error))
    assert breaker.state == "closed"
    with pytest.raises(RuntimeError):
        await layer(PlaceOrder("ada"), Handler(error=RuntimeError("down")))
    assert breaker.state == "open"
    clock.now += 5.0
    slow = Handler()
    slow.gate = asyncio.Event()
    probe = asyncio.create_task(layer(PlaceOrder("ada"), slow))
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    # The cancelled probe counted nothing and freed the slot: the next call is the probe.
    assert await layer(PlaceOrder("ada"), Handler("ok")) == "ok"
    assert breaker.state == "closed"


# --------------------------------------------------------------------------------- rate limit


async def test_rate_limit_layer_rejects_with_retry_after() -> None:
    clock = Clock()
    bucket = _core.TokenBucket(1.0, 2.0, clock=clock)
    layer = RateLimitLayer(bucket, False, None, ERRORS)
    handler = Handler()
    await layer(PlaceOrder("a"), handler)
    await layer(PlaceOrder("b"), handler)
    with pytest.raises(catga.RateLimited) as caught:
        await layer(PlaceOrder("c"), handler)
    assert caught.value.retry_after == pytest.approx(1.0)
    assert handler.calls == 2
    clock.now += 1.0
    await layer(PlaceOrder("d"), handler)
    assert handler.calls == 3


async def test_rate_limit_layer_waits_up_to_max_wait() -> None:
    bucket = _core.TokenBucket(50.0, 1.0)  # a token every 20 ms, real time
    waiting = RateLimitLayer(bucket, True, 1.0, ERRORS)
    handler = Handler()
    loop = asyncio.get_running_loop()
    await waiting(PlaceOrder("a"), handler)
    started = loop.time()
    await waiting(PlaceOrder("b"), handler)
    assert loop.time() - started >= 0.01
    impatient = RateLimitLayer(bucket, True, 0.001, ERRORS)
    with pytest.raises(catga.RateLimited):
        await impatient(PlaceOrder("c"), handler)
    assert handler.calls == 2


# -------------------------------------------------------------------------------- concurrency


async def test_concurrency_layer_serialises_and_releases() -> None:
    limiter = _core.ConcurrencyLimiter(1)
    layer = ConcurrencyLayer(limiter, Permits(limiter, 1.0, ERRORS), ERRORS)
    running = 0
    peak = 0

    async def handler(message: Any) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1
        return str(message.customer)

    results = await asyncio.gather(*(layer(PlaceOrder(str(n)), handler) for n in range(5)))
    assert results == ["0", "1", "2", "3", "4"]
    assert peak == 1
    assert limiter.in_flight == 0


async def test_concurrency_layer_rejects_without_a_waiting_room() -> None:
    limiter = _core.ConcurrencyLimiter(1)
    layer = ConcurrencyLayer(limiter, None, ERRORS)
    handler = Handler()
    handler.gate = asyncio.Event()
    first = asyncio.create_task(layer(PlaceOrder("a"), handler))
    await asyncio.sleep(0)
    with pytest.raises(catga.ConcurrencyLimited):
        await layer(PlaceOrder("b"), Handler())
    assert limiter.rejected == 1
    handler.gate.set()
    await first
    assert limiter.in_flight == 0


async def test_concurrency_layer_times_out_waiting() -> None:
    limiter = _core.ConcurrencyLimiter(1)
    layer = ConcurrencyLayer(limiter, Permits(limiter, 0.02, ERRORS), ERRORS)
    handler = Handler()
    handler.gate = asyncio.Event()
    first = asyncio.create_task(layer(PlaceOrder("a"), handler))
    await asyncio.sleep(0)
    with pytest.raises(catga.ConcurrencyLimited):
        await layer(PlaceOrder("b"), Handler())
    handler.gate.set()
    await first
    assert (limiter.in_flight, limiter.rejected) == (0, 1)


def test_reprs() -> None:
    limiter = _core.ConcurrencyLimiter(1)
    assert repr(IdempotencyLayer(DictIdempotencyStore(), 3, ERRORS)).startswith("IdempotencyLayer(")
    bucket = _core.TokenBucket(1.0, 1.0)
    assert repr(RateLimitLayer(bucket, True, 2.0, ERRORS)) == "RateLimitLayer(wait=True, max_wait=2.0)"
    assert repr(ConcurrencyLayer(limiter, None, ERRORS)).startswith("ConcurrencyLayer(")
    assert repr(BreakerLayer(_core.CircuitBreaker(1, 1.0), ERRORS)).startswith("BreakerLayer(")
    assert repr(CacheLayer(DictCacheStore(), 1, cache_key, 2.0)).endswith("ttl=2.0)")
