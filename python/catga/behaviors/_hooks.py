"""The core-run built-ins of a route: the core's `Hooks`, or Python layers for remote stores.

`Mediator._compile_route` calls `plan_builtins` once per route handler. The observing built-ins
(Logging, Tracing, Metrics: `catga.behaviors._observe`) and the bookkeeping ones (Idempotency,
RateLimit, ConcurrencyLimit, CircuitBreaker and Cache) become one `catga._core.Hooks`, which the
core runs synchronously around the target, without a Python frame (docs/internals.md,
"Observation" and "Built-in behaviours").
Their state lives on the behaviour instances, made on first use and kept across recompiles: one
token bucket per `RateLimit` (one per message type with `per_type=True`), one limiter and its
`Permits` per `ConcurrencyLimit`, one breaker per message type (per event handler) per
`CircuitBreaker`, the store of `Idempotency` and `Cache` (a fresh in-memory one per behaviour when
`store=None`).

A store that is not an in-memory one (a user's, Redis) is async, so the core cannot call it: that
behaviour, and every bookkeeping behaviour after it in the contract order, become Python layers of
the middle chain instead (`catga.behaviors._store_layers`), over the same state machines.

Cache keys: a query type's group is `group_of(type)`, a stable hash of its wire name, and a query's
key is `cache_key(query)`, the deterministic msgpack encoding of `[wire name, *fields]` without
`message_id` and `correlation_id`, so equal queries share an entry whatever their ids.
"""

import math
import operator
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeVar

import msgspec

from catga import _core
from catga._errors import HookErrors, SerializationError
from catga._messages import Query, wire_name
from catga._permits import Permits
from catga.behaviors._builtins import BuiltinBehavior, Cache, CircuitBreaker, ConcurrencyLimit, Idempotency, RateLimit
from catga.behaviors._observe import observation_hooks
from catga.behaviors._store_layers import (
    AsyncRateLimitLayer,
    BreakerLayer,
    CacheLayer,
    ConcurrencyLayer,
    IdempotencyLayer,
    Layer,
    RateLimitLayer,
)
from catga.memory._cache import MemoryCacheStore
from catga.memory._idempotency import MemoryIdempotencyStore
from catga.stores._protocols import CacheStore, IdempotencyStore

__all__ = [
    "BuiltinPlan",
    "ainvalidate",
    "build_hooks",
    "cache_key",
    "cache_ttl",
    "group_of",
    "invalidate",
    "opt_in_cache",
    "plan_builtins",
]

KeyFunction = Callable[[Any], bytes]

_ID_FIELDS: Final = frozenset({"message_id", "correlation_id"})
_DEFAULT_IDEMPOTENCY_TTL: Final = 86400.0

_encode = msgspec.msgpack.Encoder(order="deterministic").encode
_decode = msgspec.msgpack.Decoder().decode


class BuiltinPlan(NamedTuple):
    """What the bookkeeping built-ins add to one route handler.

    `hooks`: the core's `Hooks` (the fourth item of the route's handler entry), or `None`.
    `outer`: Python layers `(message, call_next) -> awaitable`, outermost first, to put outside
    Validation (the outermost layers of the middle chain), present only when a store is remote.
    `cache`: a Python cache layer to put between Timeout and the user behaviours, or `None`.
    """

    hooks: _core.Hooks | None
    outer: tuple[Layer, ...]
    cache: Layer | None


_NO_PLAN: Final = BuiltinPlan(None, (), None)


# ------------------------------------------------------------------------------ the state


_state_lock = threading.Lock()

S = TypeVar("S")


def _state(behavior: BuiltinBehavior, make: Callable[[Any], S]) -> S:
    """The state of a behaviour instance, made once (under a lock: mediators may share a config)."""
    state: S | None = getattr(behavior, "_state", None)
    if state is None:
        with _state_lock:
            state = getattr(behavior, "_state", None)
            if state is None:
                state = make(behavior)
                behavior._state = state  # type: ignore[attr-defined]  # a slot of BuiltinBehavior
    return state


class _RateLimitState:
    """The bucket of a `RateLimit`, or with `per_type=True` one bucket per message type."""

    __slots__ = ("bucket", "buckets", "clock", "lock", "rate_burst")

    def __init__(self, behavior: RateLimit) -> None:
        # The settings, not the behaviour: the state hangs off the behaviour, so no cycle.
        self.rate_burst = (behavior.rate, behavior.burst)
        self.clock = behavior.clock
        self.bucket = None if behavior.per_type else self._new_bucket()
        self.buckets: weakref.WeakKeyDictionary[type, _core.TokenBucket] = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()

    def _new_bucket(self) -> _core.TokenBucket:
        rate, burst = self.rate_burst
        return _core.TokenBucket(rate, burst, clock=self.clock)

    def bucket_for(self, message_type: type) -> _core.TokenBucket:
        if self.bucket is not None:
            return self.bucket
        with self.lock:
            bucket = self.buckets.get(message_type)
            if bucket is None:
                bucket = self.buckets[message_type] = self._new_bucket()
            return bucket


class _ConcurrencyState:
    """The limiter of a `ConcurrencyLimit` and its waiting room."""

    __slots__ = ("limiter", "permits")

    def __init__(self, behavior: ConcurrencyLimit) -> None:
        n = behavior.max_concurrent
        self.limiter = _core.ConcurrencyLimiter(n)
        errors = HookErrors(f"`max_concurrent={n}`", max_concurrent=n, wait_timeout=behavior.wait_timeout)
        self.permits = Permits(self.limiter, behavior.wait_timeout, errors)


class _BreakerState:
    """The breakers of a `CircuitBreaker`: per message type, per `(event type, handler)`."""

    __slots__ = ("breakers", "clock", "lock", "settings")

    def __init__(self, behavior: CircuitBreaker) -> None:
        self.settings = (behavior.failure_threshold, behavior.reset_timeout)
        self.clock = behavior.clock
        self.breakers: dict[object, _core.CircuitBreaker] = {}
        self.lock = threading.Lock()

    def breaker_for(self, key: object) -> _core.CircuitBreaker:
        with self.lock:
            breaker = self.breakers.get(key)
            if breaker is None:
                threshold, reset_timeout = self.settings
                breaker = self.breakers[key] = _core.CircuitBreaker(threshold, reset_timeout, clock=self.clock)
            return breaker


def _idempotency_store(behavior: Idempotency) -> IdempotencyStore:
    store = behavior.store
    if store is None:
        return MemoryIdempotencyStore(ttl=behavior.ttl, clock=behavior.clock)
    if not isinstance(store, IdempotencyStore):
        raise TypeError(f"`Idempotency(store=...)` must be a `catga.stores.IdempotencyStore`, got `{store!r}`")
    ttl = store.ttl
    if behavior.ttl != _DEFAULT_IDEMPOTENCY_TTL and behavior.ttl != ttl:
        raise ValueError(
            f"`Idempotency(ttl={behavior.ttl!r})` differs from the `ttl` of its store `{store!r}`: "
            "the store's TTL applies, set it there"
        )
    return store


class _CacheState:
    """The store of a `Cache`, and the types opted in with `mediator.cache(T, ttl=...)`."""

    __slots__ = ("lock", "store", "ttls")

    def __init__(self, behavior: Cache) -> None:
        store = behavior.store
        if store is None:
            store = MemoryCacheStore(clock=behavior.clock)
        elif not isinstance(store, CacheStore):
            raise TypeError(f"`Cache(store=...)` must be a `catga.stores.CacheStore`, got `{store!r}`")
        self.store: CacheStore = store
        # TTLs set with `mediator.cache(T, ttl=...)`; they win over `__catga_cache_ttl__`.
        self.ttls: weakref.WeakKeyDictionary[type, float] = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()


def _cache_state(cache: Cache) -> _CacheState:
    return _state(cache, _CacheState)


# ------------------------------------------------------------------------------- cache keys


_key_functions: "weakref.WeakKeyDictionary[type, tuple[tuple[str, ...], KeyFunction]]" = weakref.WeakKeyDictionary()
_key_lock = threading.Lock()


def _key_spec(message_type: type) -> tuple[tuple[str, ...], KeyFunction]:
    """The key fields of a query type and its key function, made once per type."""
    spec = _key_functions.get(message_type)
    if spec is None:
        fields = getattr(message_type, "__struct_fields__", None)
        if fields is None:
            raise TypeError(f"`{message_type.__qualname__}` is not a `catga.Query`: only queries are cached")
        names = tuple(name for name in fields if name not in _ID_FIELDS)
        spec = (names, _make_key_function(message_type, names))
        with _key_lock:
            spec = _key_functions.setdefault(message_type, spec)
    return spec


def _make_key_function(message_type: type, names: tuple[str, ...]) -> KeyFunction:
    wire = wire_name(message_type)
    if not names:
        constant = _encode([wire])
        return lambda message: constant
    get = operator.attrgetter(*names)
    single = len(names) == 1

    def key(message: Any) -> bytes:
        try:
            return _encode((wire, get(message)) if single else (wire, *get(message)))
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot make the cache key of `{type(message).__qualname__}`: {exc}", message_type=wire
            ) from exc

    key.__qualname__ = f"cache_key[{message_type.__qualname__}]"
    return key


def cache_key(message: Any) -> bytes:
    """The cache key of a query: msgpack of `[wire name, *fields]` without the ids.

    Equal queries get equal keys whatever their ids (dicts and sets are encoded in sorted order).

    >>> import catga
    >>> class GetOrder(catga.Query[dict]):
    ...     order_id: str
    >>> cache_key(GetOrder("o1")) == cache_key(GetOrder("o1", message_id=7))
    True
    >>> msgspec.msgpack.decode(cache_key(GetOrder("o1")))[1:]
    ['o1']
    """
    return _key_spec(type(message))[1](message)


def group_of(message_type: type) -> int:
    """The cache group of a query type: the 64-bit hash of its wire name (stable across processes)."""
    group: int = _core.handler_key(wire_name(message_type))
    return group


def _check_ttl(name: str, ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"`{name}` must be a number of seconds, got `{ttl!r}`")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"`{name}` must be positive, got `{ttl!r}`")
    return float(ttl)


def _check_query(message_type: object) -> type:
    if not (isinstance(message_type, type) and issubclass(message_type, Query)):
        raise TypeError(f"only `catga.Query` types are cached, got `{message_type!r}`")
    return message_type


def opt_in_cache(cache: Cache | None, message_type: type, ttl: float) -> None:
    """Cache the results of `message_type` for `ttl` seconds (what `mediator.cache(T, ttl=...)` does).

    Wins over the type's `__catga_cache_ttl__`. The caller recompiles its routes. `cache` is the
    config's `Cache` behaviour; `None` (the cache is off) raises `ValueError`.
    """
    message_type = _check_query(message_type)
    seconds = _check_ttl("ttl", ttl)
    if cache is None:
        raise ValueError(
            f"cannot cache `{message_type.__qualname__}`: the `Cache` behaviour is off in this mediator's config"
        )
    state = _cache_state(cache)
    with state.lock:
        state.ttls[message_type] = seconds


def cache_ttl(cache: Cache | None, message_type: object) -> float | None:
    """The TTL under which `cache` keeps results of `message_type`, or `None` (not cached).

    Queries only: set with `opt_in_cache`, else the type's `__catga_cache_ttl__` (inherited).
    """
    if cache is None or not (isinstance(message_type, type) and issubclass(message_type, Query)):
        return None
    state = _cache_state(cache)
    ttl = state.ttls.get(message_type)
    if ttl is not None:
        return ttl
    declared = getattr(message_type, "__catga_cache_ttl__", None)
    if declared is None:
        return None
    return _check_ttl(f"{message_type.__qualname__}.__catga_cache_ttl__", declared)


def _matcher(message_type: type, fields: dict[str, Any]) -> Callable[[bytes], bool] | None:
    """A predicate on key bytes for the entries whose fields equal `fields` (`None`: all of them)."""
    names, _ = _key_spec(_check_query(message_type))
    wanted: list[tuple[int, Any]] = []
    for name, value in fields.items():
        if name not in names:
            known = ", ".join(f"`{n}`" for n in names) or "none"
            why = "ids are not part of the cache key" if name in _ID_FIELDS else f"its key fields are {known}"
            raise TypeError(f"cannot invalidate `{message_type.__qualname__}` by `{name}`: {why}")
        try:
            normal = _decode(_encode(value))  # as a stored key holds it: a Struct is a dict, a tuple a list
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"cannot invalidate `{message_type.__qualname__}` by `{name}={value!r}`: {exc}") from exc
        wanted.append((names.index(name) + 1, normal))
    if not wanted:
        return None

    def matches(key: bytes) -> bool:
        try:
            decoded = _decode(key)
        except msgspec.DecodeError:
            return False
        return isinstance(decoded, list) and all(i < len(decoded) and decoded[i] == v for i, v in wanted)

    return matches


def invalidate(cache: Cache | None, message_type: type, /, **fields: Any) -> int:
    """Drop the cached results of `message_type`: all, or those whose fields equal `fields`.

    Synchronous, over the in-memory table (`mediator.invalidate`); a remote store raises
    `TypeError` (use `ainvalidate`). `cache=None` (the cache is off): nothing to drop. Returns how
    many entries were dropped.
    """
    match = _matcher(message_type, fields)
    if cache is None:
        return 0
    store = _cache_state(cache).store
    if not isinstance(store, MemoryCacheStore):
        raise TypeError(f"the cache store `{store!r}` is remote: invalidate it with `await mediator.ainvalidate(...)`")
    group = group_of(message_type)
    dropped: int = store.table.invalidate_group(group) if match is None else store.table.invalidate_where(group, match)
    return dropped


async def ainvalidate(cache: Cache | None, message_type: type, /, **fields: Any) -> None:
    """`invalidate` through the store's async protocol: works with every `CacheStore`."""
    match = _matcher(message_type, fields)
    if cache is None:
        return
    store = _cache_state(cache).store
    group = group_of(message_type)
    if match is None:
        await store.invalidate_group(group)
    else:
        await store.invalidate_where(group, match)


# ------------------------------------------------------------------------------ the plan


def _subject(message_type: type, handler_name: str, is_event: bool) -> str:
    if is_event:
        return f"`{message_type.__qualname__}` handler `{handler_name}`"
    return f"`{message_type.__qualname__}`"


def plan_builtins(
    config: Any,
    message_type: type,
    handler_name: str,
    *,
    is_event: bool,
    has_message_id: bool,
) -> BuiltinPlan:
    """The core-run built-ins of one route handler: its `Hooks` and, for remote stores, layers.

    `config`: the mediator's `catga.Config`. `handler_name`: the handler's qualified name
    (`module.QualName`; it keys event handlers' idempotency entries and breakers, and must be the
    same in every process). `is_event`: the route is an event's. `has_message_id`: the route's
    messages carry an int `message_id` (catga messages do; plain objects do not), without which
    Idempotency is skipped. Cache applies to opted-in `catga.Query` types only.
    """
    idempotency: Idempotency | None = config.idempotency if has_message_id else None
    cache: Cache | None = config.cache
    cache_seconds = None if is_event else cache_ttl(cache, message_type)
    bookkeeping = (config.rate_limit, config.concurrency_limit, config.circuit_breaker)
    wire = wire_name(message_type)
    observe = observation_hooks(
        config, message_type, wire, handler_name if is_event else None, "handler" if is_event else "send"
    )
    if not observe and idempotency is None and cache_seconds is None and all(b is None for b in bookkeeping):
        return _NO_PLAN

    errors = HookErrors(
        _subject(message_type, handler_name, is_event),
        message_type=wire,
        **({"handler": handler_name} if is_event else {}),
    )
    plan = _Planner(errors, observe)
    if idempotency is not None:
        _plan_idempotency(plan, idempotency, handler_name, is_event)
    if config.rate_limit is not None:
        _plan_rate_limit(plan, config.rate_limit, message_type)
    if config.concurrency_limit is not None:
        _plan_concurrency(plan, config.concurrency_limit)
    if config.circuit_breaker is not None:
        breaker = _plan_breaker(
            plan, config.circuit_breaker, (message_type, handler_name) if is_event else message_type
        )
        if config.metrics is not None:
            config.metrics.registry.track_breaker(wire, breaker)
    cache_layer: Layer | None = None
    if cache is not None and cache_seconds is not None:
        cache_layer = _plan_cache(plan, cache, message_type, cache_seconds)
    return plan.finish(cache_layer)


def _plan_idempotency(plan: "_Planner", idempotency: Idempotency, handler_name: str, is_event: bool) -> None:
    store = _state(idempotency, _idempotency_store)
    handler = _core.handler_key(handler_name) if is_event else 0
    if isinstance(store, MemoryIdempotencyStore):
        plan.hook("idempotency", (store.table, handler))
    else:
        plan.layer(IdempotencyLayer(store, handler, plan.errors, plan.metrics))


def _plan_rate_limit(plan: "_Planner", rate_limit: RateLimit, message_type: type) -> None:
    # A rate limit whose bucket is remote (`catga.redis.RedisRateLimit`) names it through
    # `remote_bucket`; its `try_acquire` is async, so it can only run as a Python layer.
    remote_bucket = getattr(rate_limit, "remote_bucket", None)
    if remote_bucket is not None:
        layer = AsyncRateLimitLayer(
            remote_bucket(message_type), rate_limit.wait, rate_limit.max_wait, plan.errors, plan.metrics
        )
        plan.layer(layer)
        return
    bucket = _state(rate_limit, _RateLimitState).bucket_for(message_type)
    if not plan.hook("rate_limit", (bucket, rate_limit.wait, rate_limit.max_wait)):
        plan.layer(RateLimitLayer(bucket, rate_limit.wait, rate_limit.max_wait, plan.errors, plan.metrics))


def _plan_concurrency(plan: "_Planner", concurrency: ConcurrencyLimit) -> None:
    limits = _state(concurrency, _ConcurrencyState)
    if not plan.hook("concurrency", (limits.limiter, limits.permits)):
        plan.layer(ConcurrencyLayer(limits.limiter, limits.permits, plan.errors, plan.metrics))


def _plan_breaker(plan: "_Planner", circuit_breaker: CircuitBreaker, key: object) -> _core.CircuitBreaker:
    breaker = _state(circuit_breaker, _BreakerState).breaker_for(key)
    if not plan.hook("breaker", breaker):
        plan.layer(BreakerLayer(breaker, plan.errors))
    return breaker


def _plan_cache(plan: "_Planner", cache: Cache, message_type: type, ttl: float) -> Layer | None:
    """A cache hook (`None` returned), or the Python layer for a remote store or after layers."""
    store = _cache_state(cache).store
    group = group_of(message_type)
    key_function = _key_spec(message_type)[1]
    if isinstance(store, MemoryCacheStore) and plan.hook("cache", (store.table, group, key_function, ttl)):
        return None
    return CacheLayer(store, group, key_function, ttl)


class _Planner:
    """Collects hooks until one behaviour needs a Python layer; from then on, layers only (the hooks
    all run before the target, so a hook after a layer would break the contract order)."""

    __slots__ = ("errors", "hooks", "layers", "metrics", "observe")

    def __init__(self, errors: HookErrors, observe: dict[str, Any]) -> None:
        self.errors = errors
        self.observe = observe  # the observing hooks (behaviors._observe): always in the `Hooks`
        metrics = observe.get("metrics")
        self.metrics = None if metrics is None else metrics[0]  # for the layers' counters
        self.hooks: dict[str, Any] = {}
        self.layers: list[Layer] = []

    def hook(self, name: str, value: object) -> bool:
        """Add a hook, unless layers have started; whether it was added."""
        if self.layers:
            return False
        self.hooks[name] = value
        return True

    def layer(self, layer: Layer) -> None:
        self.layers.append(layer)

    def finish(self, cache_layer: Layer | None) -> BuiltinPlan:
        hooks = _core.Hooks(**self.observe, **self.hooks, errors=self.errors) if self.hooks or self.observe else None
        return BuiltinPlan(hooks, tuple(self.layers), cache_layer)


def build_hooks(
    config: Any,
    message_type: type,
    handler_name: str,
    *,
    is_event: bool,
    has_message_id: bool,
) -> _core.Hooks | None:
    """The `Hooks` of a route handler, or `None`: `plan_builtins(...).hooks`.

    Only the whole story when every configured store is in memory: see `plan_builtins` for the
    Python layers that remote stores need.
    """
    return plan_builtins(config, message_type, handler_name, is_event=is_event, has_message_id=has_message_id).hooks
