"""The native core of catga (Rust, PyO3). Private: import the public names from `catga`.

`catga._pure` implements exactly this interface in Python; `catga._core` picks one of the two.
"""

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Final, final

from typing_extensions import disjoint_base

__version__: Final[str]

CURRENT_MESSAGE: Final[ContextVar[object | None]]
"""The message whose handler is running, set by every pipeline that has behaviours."""

DEFAULT_EPOCH_MS: Final[int]
"""2024-01-01T00:00:00Z in Unix milliseconds, the default epoch of message ids."""

@final
class IdParts:
    """The fields of a message id, see `IdGenerator.parse`."""

    @property
    def timestamp_ms(self) -> int:
        """Unix milliseconds at which the id was made."""
    @property
    def worker_id(self) -> int:
        """The worker id of the process that made the id."""
    @property
    def sequence(self) -> int:
        """The sequence number within the millisecond."""
    @property
    def datetime(self) -> datetime:
        """`timestamp_ms` as a timezone-aware UTC datetime."""

@final
class IdGenerator:
    """A lock-free snowflake id generator: 63-bit ids, strictly increasing within the process.

    The layout is `(timestamp_bits, worker_bits, sequence_bits)`, summing to 63. A sequence overflow
    borrows the next millisecond instead of spinning.

    >>> gen = IdGenerator(worker_id=7)
    >>> a, b = gen.next(), gen.next()
    >>> a < b and gen.parse(a).worker_id == 7
    True
    """

    def __new__(
        cls,
        worker_id: int = 0,
        epoch_ms: int = 1704067200000,
        layout: tuple[int, int, int] = (44, 8, 11),
    ) -> IdGenerator: ...
    @property
    def worker_id(self) -> int:
        """The worker id stamped into every id."""
    @property
    def epoch_ms(self) -> int:
        """The epoch in Unix milliseconds."""
    @property
    def layout(self) -> tuple[int, int, int]:
        """`(timestamp_bits, worker_bits, sequence_bits)`."""
    def set_worker_id(self, worker_id: int) -> None:
        """Stamp a new worker id into the ids from now on (a leased id, a forked child).

        The current millisecond is marked spent first, so ids stay increasing across the change;
        call it before other threads make ids.
        """
    def next(self) -> int:
        """A new id, greater than every id this generator returned before."""
    def next_many(self, n: int) -> list[int]:
        """`n` new ids in increasing order (`n >= 1`)."""
    def parse(self, id: int) -> IdParts:
        """Split an id made with this generator's layout and epoch into its fields."""

def new_id() -> int:
    """A new message id from the process-wide generator (worker id from `CATGA_WORKER_ID`)."""

def parse_id(id: int) -> IdParts:
    """Split an id of the default layout and epoch into its fields."""

def default_generator() -> IdGenerator:
    """The process-wide generator that `new_id()` uses."""

Route = tuple[Any, ...]
"""A compiled route: `(is_event, ((target, is_async, with_context[, hooks]), ...)[, observer])`.

`target(message)` runs the handler with its user behaviours and returns a coroutine when `is_async`,
else the result. `with_context` sets `CURRENT_MESSAGE` while it runs. A handler entry may carry a
fourth item, its `Hooks` (or `None`); an event route may carry a third, the `Hooks` that observe the
whole publish (or `None`). See docs/internals.md.
"""

@final
class Hooks:
    """The built-ins of one route handler that the core runs around its target.

    Each argument is `None` when that behaviour is off for the route. Observing (docs/internals.md,
    "Observation"): `logging=(logger, level, log)`, `tracing=(switch, key, tracer, outer, inner)`,
    `metrics=(type_metrics, "message" | "handler")`. Bookkeeping ("Built-in behaviours"):
    `idempotency=(table, handler_key)`, `rate_limit=(bucket, wait, max_wait)`,
    `concurrency=(limiter, permits_or_None)`, `breaker=breaker`, `cache=(table, group, key, ttl)`;
    `errors` makes the errors they raise and is required when any bookkeeping hook is set.
    """

    def __new__(
        cls,
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
    ) -> Hooks: ...
    @property
    def logging(self) -> tuple[Any, int, Callable[..., Any]] | None: ...
    @property
    def tracing(self) -> tuple[Any, Any, Any, str | None, str | None] | None: ...
    @property
    def metrics(self) -> tuple[Any, str] | None: ...
    @property
    def idempotency(self) -> tuple[Any, int] | None: ...
    @property
    def rate_limit(self) -> tuple[Any, bool, float | None] | None: ...
    @property
    def concurrency(self) -> tuple[Any, Any] | None: ...
    @property
    def breaker(self) -> Any: ...
    @property
    def cache(self) -> tuple[Any, int, Callable[[Any], bytes], float] | None: ...
    @property
    def errors(self) -> Any: ...

@disjoint_base
class Dispatcher:
    """The dispatch table and pipeline executor that `catga.Mediator` subclasses.

    Routes are compiled once per message type by calling `self._compile_route(message_type)`, which
    the subclass implements (returning a `Route` or raising `HandlerNotFound`), on the first send or
    publish of that type, and then looked up by the type's identity. The subclass calls
    `_invalidate()` whenever a registration changes a route.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Dispatcher: ...
    def send(self, message: Any, /) -> Awaitable[Any]:
        """Run the handler of a request through its pipeline. Errors are raised on await."""
    def send_meta(self, message: Any, /) -> Awaitable[tuple[Any, bool]]:
        """`send`, resolving to `(result, from_cache)`: whether the result was stored, not computed."""
    def publish(self, event: Any, /) -> Awaitable[None]:
        """Run every handler of an event, in order; failures are raised together as `PublishError`."""
    def _route(self, message_type: type, /) -> Route:
        """The compiled route of a type (compiling it on a miss)."""
    def _invalidate(self) -> None:
        """Forget every compiled route."""

# ------------------------------------------------------------------- idempotency and cache tables

CLAIMED: Final[int]
"""`IdempotencyTable.claim` status: the caller now owns the key and must `complete` or `release` it."""

IN_FLIGHT: Final[int]
"""`IdempotencyTable.claim` status: another caller holds the claim and has not finished."""

COMPLETED: Final[int]
"""`IdempotencyTable.claim` status: the handler ran already; the result comes with it."""

def handler_key(name: str) -> int:
    """The 64-bit key of an event handler for the idempotency table.

    FNV-1a of the UTF-8 bytes of its qualified name: the same in every process and version (never 0,
    which means "a request").
    """

@final
class IdempotencyTable:
    """A sharded, bounded table of idempotency claims and results.

    Keys are `(message_id, handler)`: handler 0 for a request, `handler_key(qualified name)` for an
    event handler. An entry expires `ttl` seconds after it was claimed or completed (an expired entry
    counts as absent; expired entries are swept as new ones come in). Capacity is per shard
    (`ceil(max_entries / shards)`); a full shard evicts its oldest completed entry, and only when all
    its entries are in flight, its oldest claim. `clock` returns monotonic seconds (for tests; the
    default is the process's monotonic clock). Invalid arguments raise `ValueError` naming them.

    >>> table = IdempotencyTable(ttl=60.0)
    >>> table.claim(42)
    (0, None)
    >>> table.complete(42, 0, "done")
    >>> table.claim(42)
    (2, 'done')
    """

    def __new__(
        cls,
        max_entries: int = 100000,
        ttl: float = 86400.0,
        shards: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> IdempotencyTable: ...
    def claim(self, message_id: int, handler: int = 0) -> tuple[int, Any]:
        """`(CLAIMED, None)`: the caller runs the handler and must `complete` or `release`;
        `(IN_FLIGHT, None)`: another caller is running it; `(COMPLETED, result)`: it ran already."""
    def complete(self, message_id: int, handler: int, result: Any) -> None:
        """Store the result of a claimed key; it is returned by `claim` until `ttl` from now.

        Stored whatever became of the claim (expired, evicted, released): the handler did run.
        """
    def release(self, message_id: int, handler: int = 0) -> None:
        """Drop the claim of a key whose handler failed; a completed entry is left alone."""
    @property
    def hits(self) -> int:
        """Claims that found a completed entry."""
    @property
    def misses(self) -> int:
        """Claims that found nothing (or an expired entry) and so were granted."""
    @property
    def evictions(self) -> int:
        """Live entries dropped to make room."""
    @property
    def max_entries(self) -> int:
        """The capacity asked for (each shard holds `ceil(max_entries / shards)`)."""
    @property
    def ttl(self) -> float:
        """Seconds an entry lives after it was claimed or completed."""
    @property
    def shards(self) -> int:
        """The number of shards, a power of two."""
    def __len__(self) -> int:
        """Entries held, expired ones not yet swept included."""
    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
    def purge_expired(self) -> int:
        """Drop every expired entry now; returns how many were dropped."""

@final
class CacheTable:
    """A bounded cache of query results with a TTL per entry.

    Entries are keyed by `(group, key bytes)`: the query type and its encoded fields. An expired
    entry counts as absent; a full cache evicts the entry put longest ago. `clock` returns monotonic
    seconds (for tests; the default is the process's monotonic clock).

    >>> cache = CacheTable()
    >>> cache.put(1, b"order-1", {"total": 3}, ttl=30.0)
    >>> cache.get(1, b"order-1")
    (True, {'total': 3})
    """

    def __new__(cls, max_entries: int = 10000, clock: Callable[[], float] | None = None) -> CacheTable: ...
    def get(self, group: int, key: bytes) -> tuple[bool, Any]:
        """`(True, value)` when `(group, key)` holds a live entry, else `(False, None)`."""
    def put(self, group: int, key: bytes, value: Any, ttl: float) -> None:
        """Cache `value` under `(group, key)` for `ttl` seconds, replacing what was there."""
    def invalidate_group(self, group: int) -> int:
        """Drop every entry of `group`; returns how many were dropped."""
    def invalidate_where(self, group: int, predicate: Callable[[bytes], bool]) -> int:
        """Drop the entries of `group` whose key bytes `predicate` is true for; returns how many.

        The predicate runs outside the cache's lock, on a snapshot of the group's keys; if it raises,
        nothing is dropped.
        """
    @property
    def hits(self) -> int:
        """Lookups that found a live entry."""
    @property
    def misses(self) -> int:
        """Lookups that found nothing or an expired entry."""
    @property
    def evictions(self) -> int:
        """Live entries dropped to make room."""
    @property
    def max_entries(self) -> int:
        """The most entries the cache holds."""
    def __len__(self) -> int:
        """Entries held, expired ones not yet swept included."""
    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
    def purge_expired(self) -> int:
        """Drop every expired entry now; returns how many were dropped."""

# ------------------------------------------------------------------- limiters and circuit breaker
# `clock`: a callable returning monotonic seconds (for tests); `None` is the process's monotonic
# clock (in the native core `std::time::Instant`, read without a Python call). Times are counted
# in whole nanoseconds from the first reading.

@final
class TokenBucket:
    """A lock-free token bucket: `rate` tokens per second, at most `burst`, starting full.

    Refill is continuous and exact: over any span of `T` seconds the tokens granted never exceed
    `burst + rate * T`, and a caller that keeps asking gets each token at the nanosecond it is due
    (no fraction is lost to rounding). `0 < rate <= 1e9`; `burst > 0`. A clock that steps back makes
    the bucket wait for it to catch up; it never over-grants.

    >>> bucket = TokenBucket(rate=1.0, burst=2.0)
    >>> bucket.try_acquire(), bucket.try_acquire(), bucket.try_acquire() > 0
    (0.0, 0.0, True)
    """

    def __new__(cls, rate: float, burst: float, clock: Callable[[], float] | None = None) -> TokenBucket: ...
    def try_acquire(self, n: int = 1) -> float:
        """Take `n` tokens: `0.0` when taken, else the seconds until `n` are available (> 0, nothing
        taken). `n` above the burst can never succeed and raises `ValueError`."""
    @property
    def available(self) -> float:
        """Tokens available now, in `[0, burst]`."""
    @property
    def rate(self) -> float:
        """Tokens per second."""
    @property
    def burst(self) -> float:
        """The capacity in tokens."""

@final
class ConcurrencyLimiter:
    """At most `max_concurrent` permits out at once, with counters; lock-free.

    Waiting for a permit is the caller's business; `note_rejected` counts the callers that gave up.
    Releasing more permits than were acquired is a bug (`in_flight` stays at 0).

    >>> limiter = ConcurrencyLimiter(1)
    >>> limiter.try_acquire(), limiter.try_acquire()
    (True, False)
    """

    def __new__(cls, max_concurrent: int) -> ConcurrencyLimiter: ...
    def try_acquire(self) -> bool:
        """Take a permit if one is free."""
    def release(self) -> None:
        """Give a permit back."""
    def note_rejected(self) -> None:
        """Count a caller that gave up waiting for a permit."""
    @property
    def in_flight(self) -> int:
        """Permits out now."""
    @property
    def rejected(self) -> int:
        """Callers that gave up, as reported by `note_rejected`."""
    @property
    def max_concurrent(self) -> int:
        """The number of permits."""

@final
class CircuitBreaker:
    """A lock-free circuit breaker: closed, open, half-open with a single probe (API.md section 6).

    `failure_threshold` failures in a row open it; a success while closed resets the count. Open, it
    refuses calls until `reset_timeout` seconds have passed; then the first `allow()` is the probe
    (half-open) and every other caller is refused. The probe's success closes it, its failure
    reopens it at once; an ignored outcome frees the probe slot. A probe that never reports is
    presumed lost `reset_timeout` after it started. A clock that steps back never keeps it open
    longer than `reset_timeout` on the clock as it then reads.

    >>> breaker = CircuitBreaker(failure_threshold=1, reset_timeout=30.0)
    >>> breaker.record_failure()
    >>> breaker.state, breaker.allow() > 0
    ('open', True)
    """

    def __new__(
        cls, failure_threshold: int = 5, reset_timeout: float = 30.0, clock: Callable[[], float] | None = None
    ) -> CircuitBreaker: ...
    def allow(self) -> float:
        """`0.0` when the call may go ahead (in half-open, as the probe), else the seconds to wait."""
    def record_success(self) -> None:
        """The call succeeded: closed → count reset; half-open → closed; open → nothing."""
    def record_failure(self) -> None:
        """The call failed: closed → count + 1, opening at the threshold; half-open → open again
        from now; open → nothing."""
    def record_ignored(self) -> None:
        """The call ended in a way that says nothing about the downstream (a validation error, a
        conflict, a cancellation): half-open frees the probe slot; otherwise nothing."""
    @property
    def state(self) -> str:
        """`"closed"`, `"open"` or `"half_open"`."""
    @property
    def consecutive_failures(self) -> int:
        """Failures in a row while closed; `failure_threshold` while open or half-open."""
    @property
    def state_changes(self) -> int:
        """Transitions between states so far."""
    @property
    def failure_threshold(self) -> int:
        """Consecutive failures that open the circuit."""
    @property
    def reset_timeout(self) -> float:
        """Seconds from opening until a probe is let through."""

# ------------------------------------------------------------------------------------------ metrics
# The pipeline records per-message metrics from the core without a Python call; these classes are
# where they go, and how exporters read them. Recording is lock-free in the native core.

OUTCOME_SUCCESS: Final[int]
"""`TypeMetrics.leave`/`handler_done` outcome: the handler returned."""

OUTCOME_FAILURE: Final[int]
"""`TypeMetrics.leave`/`handler_done` outcome: the handler raised."""

OUTCOME_CANCELLED: Final[int]
"""`TypeMetrics.leave`/`handler_done` outcome: the handler was cancelled."""

COUNTER_RETRY_ATTEMPTS: Final[int]
"""`TypeMetrics.count` counter: attempts the Retry behaviour made after the first."""

COUNTER_IDEMPOTENCY_HITS: Final[int]
"""`TypeMetrics.count` counter: messages answered from the idempotency table."""

COUNTER_IDEMPOTENCY_MISSES: Final[int]
"""`TypeMetrics.count` counter: messages the idempotency table let through to the handler."""

COUNTER_RATE_LIMIT_REJECTED: Final[int]
"""`TypeMetrics.count` counter: messages the rate limit refused."""

COUNTER_CONCURRENCY_REJECTED: Final[int]
"""`TypeMetrics.count` counter: messages the concurrency limit refused."""

COUNTER_DEAD_LETTERS: Final[int]
"""`TypeMetrics.count` counter: messages sent to the dead-letter store."""

DURATION_BUCKETS: Final[tuple[float, ...]]
"""Upper bounds (Prometheus `le`, inclusive) of the duration histogram, in seconds: 5µs, 10µs, 25µs,
50µs, 100µs, 250µs, 500µs, 1ms, 2.5ms, 5ms, 10ms, 25ms, 50ms, 100ms, 250ms, 500ms, 1s, 2.5s, 5s, 10s."""

@final
class TypeMetrics:
    """The metrics of one message type: messages by outcome, their durations, those running, event
    handlers by outcome, and the behaviours' counters.

    `seconds` is rounded half up to whole nanoseconds (`floor(seconds * 1e9 + 0.5)`, saturating at
    `2**64 - 1`) and counted in the first bucket whose bound is `>=` it, or the overflow bucket.
    Outcomes are `OUTCOME_*` (0-2) and counters `COUNTER_*` (0-5); another int raises `ValueError`,
    a value that is not an int `TypeError`; so do NaN, infinite and negative `seconds` and a
    negative `n`. Sums and counters saturate at `2**64 - 1`. Usually made by
    `MetricsRegistry.for_type`; one made directly belongs to no registry.

    `snapshot()` returns `{"kind", "type", "messages": {"success", "failure", "cancelled"},
    "duration": {"buckets": [21 counts, non-cumulative, the last above 10 s], "sum": seconds,
    "count"}, "active", "publish_handlers": {"success", "failure", "cancelled"}, "retry_attempts",
    "idempotency_hits", "idempotency_misses", "rate_limit_rejected", "concurrency_rejected",
    "dead_letters"}`. A snapshot taken while messages are recorded may be mid-message (counted
    and not yet timed); each number is exact once its writers are done.
    """

    def __new__(cls, kind: str, type: str, /) -> TypeMetrics: ...
    @property
    def kind(self) -> str:
        """The kind of message: `"command"`, `"query"`, `"event"`, ..."""
    @property
    def type(self) -> str:
        """The message type's name."""
    def enter(self) -> None:
        """A message starts."""
    def leave(self, outcome: int, seconds: float) -> None:
        """A message ends with `outcome` after `seconds`."""
    def handler_done(self, outcome: int) -> None:
        """One event handler of a publish finished with `outcome`."""
    def count(self, counter: int, n: int = 1) -> None:
        """Add `n` to `counter`."""
    def snapshot(self) -> dict[str, Any]:
        """The numbers now, as a dict."""

@final
class MetricsRegistry:
    """The metrics of every message type, created on first use.

    >>> registry = MetricsRegistry()
    >>> registry.for_type("command", "orders.create") is registry.for_type("command", "orders.create")
    True
    """

    def __new__(cls) -> MetricsRegistry: ...
    def for_type(self, kind: str, type: str, /) -> TypeMetrics:
        """The metrics of `(kind, type)`: the same object every time, created on the first call."""
    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per type (see `TypeMetrics.snapshot`), sorted by `(type, kind)`."""
    def __len__(self) -> int:
        """The number of types."""
