"""`catga.behaviors._hooks`: what the bookkeeping built-ins become for each config and route.

`plan_builtins` (and `build_hooks`) turn Idempotency, RateLimit, ConcurrencyLimit, CircuitBreaker
and Cache into the core's `Hooks`, or into Python layers when a store is remote; their state lives
on the behaviour instances. Also the cache keys, groups, opt-in and invalidation helpers, and the
hooks' error factory.
"""

import logging
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

import catga
from catga import _core
from catga._errors import HOOK_ERRORS, HookErrors
from catga._permits import Permits
from catga.behaviors import Cache, CircuitBreaker, ConcurrencyLimit, Idempotency, RateLimit
from catga.behaviors._hooks import (
    ainvalidate,
    build_hooks,
    cache_key,
    cache_ttl,
    group_of,
    invalidate,
    opt_in_cache,
    plan_builtins,
)
from catga.behaviors._store_layers import (
    BreakerLayer,
    CacheLayer,
    ConcurrencyLayer,
    IdempotencyLayer,
    RateLimitLayer,
)
from catga.memory import MemoryIdempotencyStore
from catga.stores import ClaimResult, ClaimStatus


class CreateOrder(catga.Command[str]):
    customer: str


class CancelOrder(catga.Command[None]):
    order_id: str


class GetOrder(catga.Query[dict[str, Any]]):
    __catga_cache_ttl__ = 30

    order_id: str
    detail: bool = False


class GetCustomer(catga.Query[str]):
    customer_id: str


class ListOrders(catga.Query[list[str]]):
    __catga_cache_ttl__ = 5.0


class OrderPlaced(catga.Event):
    order_id: str


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


MINIMAL = catga.Config.minimal()
EMAIL = "shop.handlers.email_customer"
AUDIT = "shop.handlers.audit"


def plan(config: catga.Config, message_type: type, handler: str = "shop.handle", **kwargs: Any) -> Any:
    kwargs.setdefault("is_event", issubclass(message_type, catga.Event))
    kwargs.setdefault("has_message_id", issubclass(message_type, catga.Message))
    return plan_builtins(config, message_type, handler, **kwargs)


def hooks(config: catga.Config, message_type: type, handler: str = "shop.handle", **kwargs: Any) -> Any:
    kwargs.setdefault("is_event", issubclass(message_type, catga.Event))
    kwargs.setdefault("has_message_id", issubclass(message_type, catga.Message))
    return build_hooks(config, message_type, handler, **kwargs)


# ------------------------------------------------------------------------------------ skips


def test_no_bookkeeping_no_hooks() -> None:
    assert hooks(MINIMAL, CreateOrder) is None
    assert plan(MINIMAL, CreateOrder) == (None, (), None)
    # Validation, Retry... are the middle chain's, not hooks.
    config = catga.Config.default().with_(idempotency=None, logging=None, tracing=None, metrics=None)
    assert hooks(config, CreateOrder) is None


def test_observing_builtins_are_hooks() -> None:
    config = catga.Config.default().with_(idempotency=None)
    built = hooks(config, CreateOrder)
    assert isinstance(built, _core.Hooks)
    assert repr(built) == "Hooks(logging, tracing, metrics)"
    assert built.idempotency is None
    logger, level, log = built.logging
    assert (logger.name, level, callable(log)) == ("catga", logging.DEBUG, True)
    metrics, role = built.metrics
    assert (metrics.kind, metrics.type, role) == ("command", catga.wire_name(CreateOrder), "message")
    tracer_outer_inner = built.tracing[3:]
    assert tracer_outer_inner == ("send", "handle")


def test_idempotency_needs_a_message_id() -> None:
    config = MINIMAL.with_(idempotency=Idempotency())
    assert hooks(config, CreateOrder, has_message_id=False) is None
    built = hooks(config, CreateOrder)
    assert isinstance(built, _core.Hooks)
    assert built.idempotency is not None
    assert (built.rate_limit, built.concurrency, built.breaker, built.cache) == (None, None, None, None)


def test_cache_only_for_opted_in_queries() -> None:
    config = MINIMAL.with_(cache=Cache())
    assert hooks(config, CreateOrder) is None
    assert hooks(config, GetCustomer) is None  # a query that did not opt in
    assert hooks(config, OrderPlaced, is_event=True) is None
    built = hooks(config, GetOrder)
    assert built.cache is not None
    assert built.idempotency is None


# ------------------------------------------------------------------------------- idempotency


def test_requests_share_the_default_store_with_handler_key_zero() -> None:
    behavior = Idempotency(ttl=120.0)
    config = MINIMAL.with_(idempotency=behavior)
    first = hooks(config, CreateOrder).idempotency
    second = hooks(config, CancelOrder).idempotency
    table, handler = first
    assert handler == 0
    assert isinstance(table, _core.IdempotencyTable)
    assert table.ttl == 120.0
    assert second[0] is table  # one store per behaviour, made once
    assert hooks(config, CreateOrder).idempotency[0] is table  # a recompile reuses it


def test_event_handlers_are_keyed_by_their_qualified_name() -> None:
    config = MINIMAL.with_(idempotency=Idempotency())
    email = hooks(config, OrderPlaced, EMAIL).idempotency
    audit = hooks(config, OrderPlaced, AUDIT).idempotency
    assert email[1] == _core.handler_key(EMAIL)
    assert audit[1] == _core.handler_key(AUDIT)
    assert email[1] != audit[1]
    assert email[0] is audit[0]


def test_each_behaviour_gets_its_own_default_store() -> None:
    one = hooks(MINIMAL.with_(idempotency=Idempotency()), CreateOrder).idempotency[0]
    two = hooks(MINIMAL.with_(idempotency=Idempotency()), CreateOrder).idempotency[0]
    assert one is not two


def test_a_memory_store_is_used_natively() -> None:
    store = MemoryIdempotencyStore(max_entries=10, ttl=60.0)
    built = hooks(MINIMAL.with_(idempotency=Idempotency(store=store, ttl=60.0)), CreateOrder)
    assert built.idempotency == (store.table, 0)


def test_the_clock_reaches_the_default_store() -> None:
    clock = FakeClock()
    config = MINIMAL.with_(idempotency=Idempotency(ttl=10.0, clock=clock))
    table = hooks(config, CreateOrder).idempotency[0]
    table.claim(1, 0)
    assert table.claim(1, 0)[0] == _core.IN_FLIGHT
    clock.now += 11
    assert table.claim(1, 0)[0] == _core.CLAIMED


def test_a_store_that_is_not_one_is_rejected_at_construction() -> None:
    with pytest.raises(TypeError, match=r"`Idempotency\(store=...\)` must be a `catga.stores.IdempotencyStore`"):
        Idempotency(store=object())


def test_a_ttl_that_contradicts_the_store_is_rejected_at_construction() -> None:
    store = MemoryIdempotencyStore(ttl=60.0)
    with pytest.raises(ValueError, match=r"`Idempotency\(ttl=30.0\)` differs from the `ttl` of its store"):
        Idempotency(store=store, ttl=30.0)
    # The default ttl leaves the store's in charge.
    assert hooks(MINIMAL.with_(idempotency=Idempotency(store=store)), CreateOrder).idempotency[0] is store.table


# -------------------------------------------------------------------------------- rate limit


def test_one_bucket_for_every_type() -> None:
    behavior = RateLimit(rate=10.0, burst=5.0, wait=True, max_wait=2.0)
    config = MINIMAL.with_(rate_limit=behavior)
    bucket, wait, max_wait = hooks(config, CreateOrder).rate_limit
    assert isinstance(bucket, _core.TokenBucket)
    assert (bucket.rate, bucket.burst) == (10.0, 5.0)
    assert (wait, max_wait) == (True, 2.0)
    assert hooks(config, CancelOrder).rate_limit[0] is bucket
    assert hooks(config, OrderPlaced, EMAIL).rate_limit[0] is bucket


def test_per_type_buckets() -> None:
    config = MINIMAL.with_(rate_limit=RateLimit(rate=1.0, burst=2.0, per_type=True))
    create = hooks(config, CreateOrder).rate_limit[0]
    cancel = hooks(config, CancelOrder).rate_limit[0]
    assert create is not cancel
    assert hooks(config, CreateOrder).rate_limit[0] is create
    # Two handlers of one event share their type's bucket.
    assert hooks(config, OrderPlaced, EMAIL).rate_limit[0] is hooks(config, OrderPlaced, AUDIT).rate_limit[0]
    assert hooks(config, CreateOrder).rate_limit[1:] == (False, None)


def test_the_clock_reaches_the_bucket() -> None:
    clock = FakeClock()
    bucket = hooks(MINIMAL.with_(rate_limit=RateLimit(rate=1.0, burst=2.0, clock=clock)), CreateOrder).rate_limit[0]
    assert bucket.try_acquire(1) == 0.0
    assert bucket.try_acquire(1) == 0.0
    assert bucket.try_acquire(1) == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.try_acquire(1) == 0.0


# ------------------------------------------------------------------------------- concurrency


def test_one_limiter_and_waiting_room_per_behaviour() -> None:
    config = MINIMAL.with_(concurrency_limit=ConcurrencyLimit(max_concurrent=3, wait_timeout=0.5))
    limiter, permits = hooks(config, CreateOrder).concurrency
    assert isinstance(limiter, _core.ConcurrencyLimiter)
    assert limiter.max_concurrent == 3
    assert isinstance(permits, Permits)
    assert permits.wait_timeout == 0.5
    assert hooks(config, GetCustomer).concurrency == (limiter, permits)


# ----------------------------------------------------------------------------------- breaker


def test_one_breaker_per_request_type() -> None:
    clock = FakeClock()
    config = MINIMAL.with_(circuit_breaker=CircuitBreaker(failure_threshold=2, reset_timeout=7.0, clock=clock))
    create = hooks(config, CreateOrder).breaker
    assert isinstance(create, _core.CircuitBreaker)
    assert (create.failure_threshold, create.reset_timeout) == (2, 7.0)
    assert hooks(config, CancelOrder).breaker is not create
    assert hooks(config, CreateOrder).breaker is create  # kept across recompiles
    create.record_failure()
    create.record_failure()
    assert create.allow() == pytest.approx(7.0)  # open, on the injected clock
    clock.now += 7.0
    assert create.allow() == 0.0


def test_one_breaker_per_event_handler() -> None:
    config = MINIMAL.with_(circuit_breaker=CircuitBreaker())
    email = hooks(config, OrderPlaced, EMAIL).breaker
    audit = hooks(config, OrderPlaced, AUDIT).breaker
    assert email is not audit
    assert hooks(config, OrderPlaced, EMAIL).breaker is email


# ------------------------------------------------------------------------------------- cache


def test_cache_hook_for_a_query_that_declares_a_ttl() -> None:
    behavior = Cache()
    table, group, key, ttl = hooks(MINIMAL.with_(cache=behavior), GetOrder).cache
    assert isinstance(table, _core.CacheTable)
    assert group == group_of(GetOrder) == _core.handler_key(catga.wire_name(GetOrder))
    assert ttl == 30.0
    assert key(GetOrder("o1")) == cache_key(GetOrder("o1"))
    assert hooks(MINIMAL.with_(cache=behavior), ListOrders).cache[0] is table


def test_opt_in_with_a_ttl_and_override() -> None:
    behavior = Cache()
    config = MINIMAL.with_(cache=behavior)
    assert cache_ttl(behavior, GetCustomer) is None
    opt_in_cache(behavior, GetCustomer, 12)
    assert cache_ttl(behavior, GetCustomer) == 12.0
    assert hooks(config, GetCustomer).cache[3] == 12.0
    opt_in_cache(behavior, GetOrder, 3)  # wins over `__catga_cache_ttl__`
    assert hooks(config, GetOrder).cache[3] == 3.0
    # Another behaviour instance has its own registry.
    assert cache_ttl(Cache(), GetCustomer) is None


def test_opt_in_checks() -> None:
    with pytest.raises(TypeError, match=r"only `catga\.Query` types are cached"):
        opt_in_cache(Cache(), CreateOrder, 10)
    with pytest.raises(ValueError, match="`ttl` must be positive, got `0`"):
        opt_in_cache(Cache(), GetCustomer, 0)
    with pytest.raises(TypeError, match="`ttl` must be a number of seconds"):
        opt_in_cache(Cache(), GetCustomer, "10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the `Cache` behaviour is off"):
        opt_in_cache(None, GetCustomer, 10)
    assert cache_ttl(None, GetOrder) is None


def test_a_bad_declared_ttl_fails_the_compile() -> None:
    class GetBad(catga.Query[int]):
        __catga_cache_ttl__ = -1

    with pytest.raises(ValueError, match=r"GetBad\.__catga_cache_ttl__` must be positive, got `-1`"):
        hooks(MINIMAL.with_(cache=Cache()), GetBad)


def test_cache_keys_ignore_ids_and_encode_fields() -> None:
    a = GetOrder("o1", message_id=1, correlation_id=5)
    b = GetOrder("o1", message_id=2)
    assert cache_key(a) == cache_key(b)
    assert cache_key(GetOrder("o1")) != cache_key(GetOrder("o2"))
    assert cache_key(GetOrder("o1")) != cache_key(GetOrder("o1", detail=True))
    assert msgspec.msgpack.decode(cache_key(a)) == [catga.wire_name(GetOrder), "o1", False]
    assert msgspec.msgpack.decode(cache_key(ListOrders())) == [catga.wire_name(ListOrders)]


def test_cache_keys_are_deterministic_for_mappings() -> None:
    class Search(catga.Query[list[str]]):
        filters: dict[str, int]

    assert cache_key(Search({"a": 1, "b": 2})) == cache_key(Search({"b": 2, "a": 1}))


def test_cache_key_of_an_unencodable_field() -> None:
    class Odd(catga.Query[int]):
        thing: object

    with pytest.raises(catga.SerializationError, match=r"cannot make the cache key of `.*Odd`"):
        cache_key(Odd(object()))


# -------------------------------------------------------------------------------- invalidation


def fill(behavior: Cache) -> Any:
    table = hooks(MINIMAL.with_(cache=behavior), GetOrder).cache[0]
    group = group_of(GetOrder)
    for order_id in ("o1", "o2"):
        for detail in (False, True):
            query = GetOrder(order_id, detail=detail)
            table.put(group, cache_key(query), (order_id, detail), 30.0)
    table.put(group_of(ListOrders), cache_key(ListOrders()), ["o1", "o2"], 30.0)
    return table


def cached(table: Any, query: Any) -> bool:
    hit, _ = table.get(group_of(type(query)), cache_key(query))
    return bool(hit)


def test_invalidate_a_type() -> None:
    behavior = Cache()
    table = fill(behavior)
    assert invalidate(behavior, GetOrder) == 4
    assert not cached(table, GetOrder("o1"))
    assert cached(table, ListOrders())


def test_invalidate_by_fields() -> None:
    behavior = Cache()
    table = fill(behavior)
    assert invalidate(behavior, GetOrder, order_id="o1") == 2
    assert not cached(table, GetOrder("o1"))
    assert not cached(table, GetOrder("o1", detail=True))
    assert cached(table, GetOrder("o2"))
    assert invalidate(behavior, GetOrder, order_id="o2", detail=True) == 1
    assert cached(table, GetOrder("o2"))
    assert not cached(table, GetOrder("o2", detail=True))


def test_invalidate_checks_the_fields() -> None:
    with pytest.raises(TypeError, match="cannot invalidate `GetOrder` by `customer`: its key fields are"):
        invalidate(Cache(), GetOrder, customer="ada")
    with pytest.raises(TypeError, match="ids are not part of the cache key"):
        invalidate(Cache(), GetOrder, message_id=1)
    with pytest.raises(TypeError, match=r"only `catga\.Query` types are cached"):
        invalidate(Cache(), CreateOrder)
    assert invalidate(None, GetOrder, order_id="o1") == 0  # the cache is off: nothing to drop


class DictCacheStore:
    """A remote-like `CacheStore`: async methods over a dict."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, bytes], Any] = {}

    async def get(self, group: int, key: bytes) -> tuple[bool, Any]:
        if (group, key) in self.entries:
            return True, self.entries[(group, key)]
        return False, None

    async def put(self, group: int, key: bytes, value: Any, ttl: float) -> None:
        self.entries[(group, key)] = value

    async def invalidate_group(self, group: int) -> None:
        self.entries = {k: v for k, v in self.entries.items() if k[0] != group}

    async def invalidate_where(self, group: int, predicate: Callable[[bytes], bool]) -> None:
        self.entries = {k: v for k, v in self.entries.items() if not (k[0] == group and predicate(k[1]))}


async def test_ainvalidate_works_on_a_remote_store() -> None:
    store = DictCacheStore()
    behavior = Cache(store=store)
    for order_id in ("o1", "o2"):
        await store.put(group_of(GetOrder), cache_key(GetOrder(order_id)), order_id, 30.0)
    await store.put(group_of(ListOrders), cache_key(ListOrders()), [], 30.0)
    with pytest.raises(TypeError, match=r"is remote: invalidate it with `await mediator\.ainvalidate"):
        invalidate(behavior, GetOrder)
    await ainvalidate(behavior, GetOrder, order_id="o1")
    assert list(store.entries.values()) == ["o2", []]
    await ainvalidate(behavior, GetOrder)
    assert list(store.entries.values()) == [[]]
    await ainvalidate(None, GetOrder)


async def test_ainvalidate_on_the_memory_store() -> None:
    behavior = Cache()
    table = fill(behavior)
    await ainvalidate(behavior, GetOrder, order_id="o2")
    assert cached(table, GetOrder("o1"))
    assert not cached(table, GetOrder("o2"))


# ------------------------------------------------------------------------------ remote stores


class DictIdempotencyStore:
    """A remote-like `IdempotencyStore`."""

    ttl = 86400.0

    def __init__(self) -> None:
        self.entries: dict[tuple[int, int], tuple[bool, Any]] = {}

    async def claim(self, key: tuple[int, int]) -> ClaimResult:
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = (False, None)
            return ClaimResult(ClaimStatus.CLAIMED)
        if entry[0]:
            return ClaimResult(ClaimStatus.COMPLETED, entry[1])
        return ClaimResult(ClaimStatus.IN_FLIGHT)

    async def complete(self, key: tuple[int, int], result: Any) -> None:
        self.entries[key] = (True, result)

    async def release(self, key: tuple[int, int]) -> None:
        if self.entries.get(key, (True,))[0] is False:
            del self.entries[key]


def full() -> dict[str, Any]:
    """Fresh RateLimit, ConcurrencyLimit and CircuitBreaker behaviours."""
    return {
        "rate_limit": RateLimit(rate=10.0, burst=10.0),
        "concurrency_limit": ConcurrencyLimit(max_concurrent=4),
        "circuit_breaker": CircuitBreaker(),
    }


def test_a_remote_idempotency_store_turns_every_bookkeeping_behaviour_into_layers() -> None:
    store = DictIdempotencyStore()
    config = MINIMAL.with_(idempotency=Idempotency(store=store), cache=Cache(), **full())
    built = plan(config, GetOrder)
    assert built.hooks is None
    assert [type(layer) for layer in built.outer] == [IdempotencyLayer, RateLimitLayer, ConcurrencyLayer, BreakerLayer]
    idempotency_layer = built.outer[0]
    assert (idempotency_layer.store, idempotency_layer.handler_key) == (store, 0)
    # The cache comes after the idempotency layer in the contract order: a layer too, over the
    # same memory table.
    assert isinstance(built.cache, CacheLayer)
    assert built.cache.ttl == 30.0
    # The layers use the behaviours' state, as the hooks do.
    assert built.outer[1].bucket is plan(MINIMAL.with_(rate_limit=config.rate_limit), GetOrder).hooks.rate_limit[0]
    assert built.outer[2].permits is plan(config, CreateOrder).outer[2].permits
    assert built.outer[3].breaker is plan(config, GetOrder).outer[3].breaker


def test_an_event_handler_over_a_remote_store_keeps_its_handler_key() -> None:
    config = MINIMAL.with_(idempotency=Idempotency(store=DictIdempotencyStore()))
    built = plan(config, OrderPlaced, EMAIL)
    assert built.outer[0].handler_key == _core.handler_key(EMAIL)


def test_a_remote_cache_store_is_a_layer_and_the_rest_stay_hooks() -> None:
    store = DictCacheStore()
    config = MINIMAL.with_(idempotency=Idempotency(), cache=Cache(store=store), **full())
    built = plan(config, GetOrder)
    assert built.outer == ()
    assert built.hooks.idempotency is not None
    assert built.hooks.rate_limit is not None
    assert built.hooks.concurrency is not None
    assert built.hooks.breaker is not None
    assert built.hooks.cache is None
    assert isinstance(built.cache, CacheLayer)
    assert built.cache.store is store
    assert built.cache.group == group_of(GetOrder)


def test_a_cache_store_that_is_not_one() -> None:
    with pytest.raises(TypeError, match=r"`Cache\(store=...\)` must be a `catga.stores.CacheStore`"):
        plan(MINIMAL.with_(cache=Cache(store=42)), GetOrder)


# ------------------------------------------------------------------------------------ errors


def test_hooks_carry_errors_naming_the_route() -> None:
    config = MINIMAL.with_(**full())
    errors = hooks(config, CreateOrder).errors
    assert isinstance(errors, HookErrors)
    limited = errors.rate_limited(0.25)
    assert isinstance(limited, catga.RateLimited)
    assert limited.retry_after == 0.25
    assert str(limited) == "rate limit of `CreateOrder` exceeded, retry after `0.25` s"
    assert limited.details == {"message_type": catga.wire_name(CreateOrder)}
    opened = errors.circuit_open(3.0)
    assert isinstance(opened, catga.CircuitOpen)
    assert str(opened) == "circuit of `CreateOrder` is open, retry after `3` s"
    message = CreateOrder("ada", message_id=77)
    conflict = errors.conflict(message)
    assert isinstance(conflict, catga.Conflict)
    assert str(conflict) == "message `77` of `CreateOrder` is still being handled: a duplicate in flight"
    assert conflict.details["message_id"] == 77
    assert isinstance(errors.concurrency_limited(), catga.ConcurrencyLimited)
    event_errors = hooks(config, OrderPlaced, EMAIL).errors
    assert "`OrderPlaced` handler `shop.handlers.email_customer`" in str(event_errors.circuit_open(1.0))
    assert event_errors.circuit_open(1.0).details["handler"] == EMAIL


def test_the_waiting_room_error_names_the_limit() -> None:
    permits = hooks(MINIMAL.with_(**full()), CreateOrder).concurrency[1]
    error = permits._errors.concurrency_limited()
    assert str(error) == "concurrency limit of `max_concurrent=4` reached: no permit freed up in time"
    assert error.details == {"max_concurrent": 4, "wait_timeout": 5.0}


def test_the_default_error_factory() -> None:
    assert str(HOOK_ERRORS.rate_limited(1.5)) == "rate limit exceeded, retry after `1.5` s"
    assert str(HOOK_ERRORS.circuit_open(2.0)) == "circuit open, retry after `2` s"
    assert "`GetOrder`" in str(HOOK_ERRORS.conflict(GetOrder("o1", message_id=5)))
    assert HOOK_ERRORS.is_ignored(catga.ValidationError(["bad"]))
    assert HOOK_ERRORS.is_ignored(catga.Conflict("dup `1`"))
    assert not HOOK_ERRORS.is_ignored(catga.Timeout("slow `1`"))
    assert not HOOK_ERRORS.is_ignored(ValueError("boom"))
    assert repr(HOOK_ERRORS) == "HookErrors()"
