"""The settings of the built-in behaviours: constructors, parameter checks and reprs.

Each class here is what a `catga.Config` field holds. The code that runs per message lives in
`catga.behaviors._chain` (Logging, Validation, DeadLetter, Retry, Timeout: the Python middle chain)
and in the cores' hooks (Idempotency, RateLimit, ConcurrencyLimit, CircuitBreaker, Cache), see
docs/internals.md.
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from catga.observability import MetricsRegistry

__all__ = [
    "BuiltinBehavior",
    "Cache",
    "CircuitBreaker",
    "ConcurrencyLimit",
    "DeadLetter",
    "Idempotency",
    "Logging",
    "Metrics",
    "RateLimit",
    "Retry",
    "Timeout",
    "Tracing",
    "Validation",
]

Clock = Callable[[], float]
"""Monotonic seconds, like `time.monotonic`: injectable so tests need not sleep."""


class BuiltinBehavior:
    """The base of the built-in behaviours' settings classes (private to catga).

    Two behaviours are equal when they are of one class with equal settings (their state, such as
    a token bucket's tokens, does not count), so `Mediator().config == Config.default()`.
    """

    # `_state`: what the behaviour keeps while it runs (a token bucket, breakers, its store), made
    # on first use by `catga.behaviors._hooks` and shared by every route (and mediator) using it.
    __slots__ = ("_state",)

    _params: ClassVar[tuple[str, ...]] = ()
    """The constructor parameters shown by `repr`, in order."""

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._params)
        return f"{type(self).__name__}({args})"

    def _settings(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in (*self._params, "clock") if hasattr(self, name))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, BuiltinBehavior)
        return self._settings() == other._settings()

    def __hash__(self) -> int:
        return hash((type(self), self._settings()))


# -------------------------------------------------------------------------------- parameter checks


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number, got `{value!r}`")
    return value


def _positive(name: str, value: object) -> float:
    number = _number(name, value)
    if not number > 0:  # also rejects NaN
        raise ValueError(f"`{name}` must be positive, got `{value!r}`")
    return number


def _non_negative(name: str, value: object) -> float:
    number = _number(name, value)
    if not number >= 0:
        raise ValueError(f"`{name}` must be zero or positive, got `{value!r}`")
    return number


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got `{value!r}`")
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got `{value!r}`")
    return value


def _clock(value: object) -> Clock | None:
    if value is not None and not callable(value):
        raise TypeError(f"`clock` must be a callable returning monotonic seconds, got `{value!r}`")
    return value


def _level(value: object) -> int:
    if isinstance(value, str):
        number = logging.getLevelName(value.upper())
        if isinstance(number, int):
            return number
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"`level` must be a logging level (an int or a name like `INFO`), got `{value!r}`")


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    items: Iterable[object]
    if isinstance(value, type):
        items = (value,)
    elif isinstance(value, Iterable):
        items = value
    else:
        raise TypeError(f"`retry_on` must be an exception class or a tuple of them, got `{value!r}`")
    types: list[type[BaseException]] = []
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"`retry_on` must hold exception classes, got `{item!r}`")
        types.append(item)
    return tuple(types)


# ----------------------------------------------------------------------------------- the behaviours


class Logging(BuiltinBehavior):
    """Log every message on the `catga` logger at `level`, with its type, ids, duration and outcome.

    One record per handled message (per handler, for an event), at `level` whatever the outcome,
    with the `extra` attributes `message_type`, `message_id`, `correlation_id`, `duration`
    (seconds), `outcome` (`"success"`, `"failure"` or `"cancelled"`), `error` and `handler`. The
    outermost built-in: it also logs refusals (rate limit, open breaker) and idempotency replays
    (`from_cache` in the extras). The level is checked once per message, in the core, reading the
    logger's own cache of `isEnabledFor` answers: level changes apply at once, and when the logger
    does not take `level` nothing is measured or built.

    >>> Logging(level="INFO").level
    20
    """

    __slots__ = ("level",)
    _params = ("level",)

    level: int

    def __init__(self, level: int | str = logging.DEBUG) -> None:
        self.level = _level(level)


class Tracing(BuiltinBehavior):
    """Wrap every message in OpenTelemetry spans: `send {wire name}` (or `publish ...`) around its
    pipeline and `handle {wire name}` around each handler (catga.observability, docs/observability.md).

    `tracer_provider=None` uses the global provider, looked up per message, so a provider set after
    `import catga` is picked up; until one is set, a send pays one dictionary look-up.

    >>> Tracing()
    Tracing()
    """

    __slots__ = ("tracer_provider",)
    _params = ("tracer_provider",)

    tracer_provider: object | None

    def __init__(self, tracer_provider: object | None = None) -> None:
        if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
            raise TypeError(f"`tracer_provider` must be an OpenTelemetry `TracerProvider`, got `{tracer_provider!r}`")
        self.tracer_provider = tracer_provider

    def __repr__(self) -> str:
        return "Tracing()" if self.tracer_provider is None else f"Tracing(tracer_provider={self.tracer_provider!r})"


class Metrics(BuiltinBehavior):
    """Count every message and time it, in the core, without a Python call per message.

    Records into `registry` (a `catga.observability.MetricsRegistry`; `None`: the process-wide
    `catga.observability.default_registry()`), which `catga.asgi.app` serves as Prometheus text and
    `registry.instrument()` exports through OpenTelemetry (docs/observability.md lists the
    instruments).

    >>> Metrics()
    Metrics()
    """

    __slots__ = ("_given", "_registry")
    _params = ("registry",)

    def __init__(self, registry: "MetricsRegistry | None" = None) -> None:
        if registry is not None:
            from catga.observability import MetricsRegistry  # here: catga.observability imports catga

            if not isinstance(registry, MetricsRegistry):
                raise TypeError(f"`registry` must be a `catga.observability.MetricsRegistry`, got `{registry!r}`")
        self._given = registry
        self._registry = registry

    @property
    def registry(self) -> "MetricsRegistry":
        """The registry recorded into: the one given, else the process-wide default."""
        if self._registry is None:
            from catga.observability import default_registry

            self._registry = default_registry()
        return self._registry

    def __repr__(self) -> str:
        return "Metrics()" if self._given is None else f"Metrics(registry={self._given!r})"

    def _settings(self) -> tuple[object, ...]:
        return (self.registry,)


class Idempotency(BuiltinBehavior):
    """Run a message (an event handler, for events) at most once per `message_id`, within `ttl` seconds.

    A replay returns the stored result with `metadata["from_cache"] = True`; a duplicate still in
    flight gets `Conflict`. `store=None` means the in-memory store.
    """

    __slots__ = ("clock", "store", "ttl")
    _params = ("store", "ttl")

    store: object | None
    ttl: float
    clock: Clock | None

    def __init__(self, store: object | None = None, ttl: float = 86400.0, *, clock: Clock | None = None) -> None:
        self.store = store
        self.ttl = _positive("ttl", ttl)
        self.clock = _clock(clock)
        if store is not None:
            _check_idempotency_store(store, self.ttl)


def _check_idempotency_store(store: object, ttl: float) -> None:
    """Bad settings fail where they are written, not at the first send."""
    from catga.stores import IdempotencyStore  # here: catga.stores imports the behaviours' module

    if not isinstance(store, IdempotencyStore):
        raise TypeError(f"`Idempotency(store=...)` must be a `catga.stores.IdempotencyStore`, got `{store!r}`")
    store_ttl = getattr(store, "ttl", None)
    if ttl != 86400.0 and store_ttl is not None and ttl != store_ttl:
        raise ValueError(
            f"`Idempotency(ttl={ttl!r})` differs from the `ttl` of its store `{store!r}`: "
            "the store's TTL applies, set it there"
        )


class RateLimit(BuiltinBehavior):
    """A token bucket: `rate` tokens per second, `burst` at most, starting full.

    An empty bucket fails the message with `RateLimited`, or with `wait=True` waits for a token up
    to `max_wait` seconds (`None`: as long as it takes). `per_type=True` keeps one bucket per type.
    """

    __slots__ = ("burst", "clock", "max_wait", "per_type", "rate", "wait")
    _params = ("rate", "burst", "wait", "max_wait", "per_type")

    rate: float
    burst: float
    wait: bool
    max_wait: float | None
    per_type: bool
    clock: Clock | None

    def __init__(
        self,
        rate: float,
        burst: float,
        wait: bool = False,
        max_wait: float | None = None,
        per_type: bool = False,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.rate = _positive("rate", rate)
        self.burst = _positive("burst", burst)
        self.wait = bool(wait)
        self.max_wait = None if max_wait is None else _positive("max_wait", max_wait)
        self.per_type = bool(per_type)
        self.clock = _clock(clock)


class ConcurrencyLimit(BuiltinBehavior):
    """At most `max_concurrent` messages in flight; waiting longer than `wait_timeout` fails with
    `ConcurrencyLimited`."""

    __slots__ = ("max_concurrent", "wait_timeout")
    _params = ("max_concurrent", "wait_timeout")

    max_concurrent: int
    wait_timeout: float

    def __init__(self, max_concurrent: int, wait_timeout: float = 5.0) -> None:
        self.max_concurrent = _positive_int("max_concurrent", max_concurrent)
        self.wait_timeout = _positive("wait_timeout", wait_timeout)


class CircuitBreaker(BuiltinBehavior):
    """Fail fast with `CircuitOpen` after `failure_threshold` consecutive failures of a type.

    After `reset_timeout` seconds one probe is let through: success closes the circuit, failure
    opens it again.
    """

    __slots__ = ("clock", "failure_threshold", "reset_timeout")
    _params = ("failure_threshold", "reset_timeout")

    failure_threshold: int
    reset_timeout: float
    clock: Clock | None

    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 30.0, *, clock: Clock | None = None) -> None:
        self.failure_threshold = _positive_int("failure_threshold", failure_threshold)
        self.reset_timeout = _positive("reset_timeout", reset_timeout)
        self.clock = _clock(clock)


class Validation(BuiltinBehavior):
    """Check a message before its handler runs: registered validators, `validate(self)`, msgspec
    constraints. Any error fails it with `ValidationError` (never retried nor dead-lettered).

    A type with no validator, no `validate` method and no msgspec constraint gets no validation
    step at all.
    """

    __slots__ = ()


class DeadLetter(BuiltinBehavior):
    """Record messages that finally failed (after retries) in `mediator.dead_letters`.

    `store=None` keeps the last `max_size` records in memory (`catga.memory.MemoryDeadLetterStore`);
    any object with the methods of `catga.stores.DeadLetterStore` may be passed instead.
    `ValidationError`s are never recorded.
    """

    __slots__ = ("max_size", "store")
    _params = ("store", "max_size")

    store: object | None
    max_size: int

    def __init__(self, store: object | None = None, max_size: int = 1000) -> None:
        if store is not None:
            missing = [name for name in _DEAD_LETTER_STORE_METHODS if not callable(getattr(store, name, None))]
            if missing:
                names = ", ".join(f"`{name}`" for name in missing)
                raise TypeError(f"`store` must be a dead-letter store, `{store!r}` has no {names}")
        self.store = store
        self.max_size = _positive_int("max_size", max_size)


_DEAD_LETTER_STORE_METHODS = ("add", "list", "get", "update", "delete", "purge")


class Retry(BuiltinBehavior):
    """Run a failing handler again, up to `max_attempts` attempts in total.

    Retries retryable `CatgaError`s and the exception types in `retry_on`. The delay before attempt
    `n + 1` is `base_delay * 2**(n-1)`, capped at `max_delay`, randomised by ±`jitter` (a fraction).

    A `retry_after` carried by the error (`RateLimited`, `CircuitOpen`) lengthens the delay to it,
    up to `max_delay`. Other errors are raised at once; `ValidationError` is never retried.

    The waits go through the private attributes `_sleep` (`asyncio.sleep`, for `send`) and
    `_sleep_sync` (`time.sleep`, for `send_sync`), which tests may replace; `_random` gives the
    jitter (`random.random`).

    >>> Retry(retry_on=ConnectionError).retry_on
    (<class 'ConnectionError'>,)
    """

    __slots__ = ("_random", "_sleep", "_sleep_sync", "base_delay", "jitter", "max_attempts", "max_delay", "retry_on")
    _params = ("max_attempts", "base_delay", "max_delay", "jitter", "retry_on")

    max_attempts: int
    base_delay: float
    max_delay: float
    jitter: float
    retry_on: tuple[type[BaseException], ...]

    def __init__(
        self,
        max_attempts: int = 3,
        base_delay: float = 0.1,
        max_delay: float = 10.0,
        jitter: float = 0.15,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise TypeError(f"`max_attempts` must be an int, got `{max_attempts!r}`")
        if max_attempts < 1:
            raise ValueError(f"`max_attempts` must be at least 1, got `{max_attempts!r}`")
        self.max_attempts = max_attempts
        self.base_delay = _non_negative("base_delay", base_delay)
        self.max_delay = _non_negative("max_delay", max_delay)
        self.jitter = _non_negative("jitter", jitter)
        if self.jitter > 1:
            raise ValueError(f"`jitter` must be a fraction between 0 and 1, got `{jitter!r}`")
        self.retry_on = _exception_types(retry_on)
        self._sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
        self._sleep_sync: Callable[[float], object] = time.sleep
        self._random: Callable[[], float] = random.random

    def _delay(self, attempt: int, error: BaseException | None) -> float:
        """The wait after failed attempt number `attempt` (1-based) before the next one."""
        max_delay = self.max_delay
        delay = min(self.base_delay * 2.0 ** min(attempt - 1, 64), max_delay)
        if self.jitter:
            delay *= 1.0 + self.jitter * (2.0 * self._random() - 1.0)
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > delay:
            delay = min(float(retry_after), max(max_delay, delay))
        return max(delay, 0.0)


class Timeout(BuiltinBehavior):
    """Cancel a handler that runs longer than `seconds`; the caller gets `catga.Timeout`.

    Each attempt of Retry gets its own `seconds` (Timeout sits inside Retry), and `catga.Timeout`
    is retryable. A route whose handler and user behaviours are all sync cannot be interrupted:
    Timeout leaves it alone.
    """

    __slots__ = ("seconds",)
    _params = ("seconds",)

    seconds: float

    def __init__(self, seconds: float) -> None:
        self.seconds = _positive("seconds", seconds)


class Cache(BuiltinBehavior):
    """Serve repeated queries of opted-in types from a cache (`__catga_cache_ttl__` on the class).

    `store=None` means the in-memory store.
    """

    __slots__ = ("clock", "store")
    _params = ("store",)

    store: object | None
    clock: Clock | None

    def __init__(self, store: object | None = None, *, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = _clock(clock)
