"""`Config`: which built-in behaviours a `Mediator` runs, and their settings (API.md section 5)."""

import dataclasses
from typing import Final, Self

from catga.behaviors import (
    Cache,
    CircuitBreaker,
    ConcurrencyLimit,
    DeadLetter,
    Idempotency,
    Logging,
    Metrics,
    RateLimit,
    Retry,
    Timeout,
    Tracing,
    Validation,
)
from catga.behaviors._builtins import BuiltinBehavior

__all__ = ["Config"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The built-in behaviours of a `Mediator`: each field holds a behaviour or `None` (off).

    `Config()` is `Config.default()`: Logging, Tracing, Metrics, Validation, Retry, Idempotency and
    Cache on, the rest off; keyword arguments change single fields. Every call builds fresh behaviour
    instances, so mediators never share state (a behaviour instance passed to two mediators is
    shared: one token bucket, one breaker per type).

    >>> from catga.behaviors import Retry
    >>> config = Config.minimal().with_(retry=Retry(max_attempts=5))
    >>> config.retry
    Retry(max_attempts=5, base_delay=0.1, max_delay=10.0, jitter=0.15, retry_on=())
    >>> config.with_(retries=None)
    Traceback (most recent call last):
    ...
    TypeError: `Config` has no field `retries`; its fields are `logging`, `tracing`, `metrics`, `rate_limit`, \
`concurrency_limit`, `circuit_breaker`, `validation`, `dead_letter`, `retry`, `timeout`, `idempotency`, `cache`
    """

    logging: Logging | None = dataclasses.field(default_factory=Logging)
    tracing: Tracing | None = dataclasses.field(default_factory=Tracing)
    metrics: Metrics | None = dataclasses.field(default_factory=Metrics)
    rate_limit: RateLimit | None = None
    concurrency_limit: ConcurrencyLimit | None = None
    circuit_breaker: CircuitBreaker | None = None
    validation: Validation | None = dataclasses.field(default_factory=Validation)
    dead_letter: DeadLetter | None = None
    retry: Retry | None = dataclasses.field(default_factory=Retry)
    timeout: Timeout | None = None
    idempotency: Idempotency | None = dataclasses.field(default_factory=Idempotency)
    cache: Cache | None = dataclasses.field(default_factory=Cache)

    def __post_init__(self) -> None:
        for name, cls in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"`{name}` must be a `catga.behaviors.{cls.__name__}` or `None`, got `{value!r}`")

    @classmethod
    def default(cls) -> Self:
        """The default pipeline: Logging (DEBUG), Tracing, Metrics (the default registry),
        Validation, Retry (3 attempts), Idempotency (24 h, in memory) and Cache (for queries that
        opt in)."""
        return cls()

    @classmethod
    def minimal(cls) -> Self:
        """No built-in behaviours: the fastest pipeline (only user behaviours run)."""
        return cls(**dict.fromkeys(_FIELD_TYPES))

    @classmethod
    def resilient(cls) -> Self:
        """Every built-in on, with sane limits.

        Rate limit 1000 messages/s (burst 1000), 100 in flight (5 s wait), breaker 5 failures /
        30 s, timeout 30 s, plus everything `default()` has and dead letters (in memory, 1000).
        """
        return cls(
            logging=Logging(),
            tracing=Tracing(),
            metrics=Metrics(),
            rate_limit=RateLimit(rate=1000.0, burst=1000.0),
            concurrency_limit=ConcurrencyLimit(max_concurrent=100, wait_timeout=5.0),
            circuit_breaker=CircuitBreaker(failure_threshold=5, reset_timeout=30.0),
            validation=Validation(),
            dead_letter=DeadLetter(),
            retry=Retry(),
            timeout=Timeout(30.0),
            idempotency=Idempotency(),
            cache=Cache(),
        )

    def with_(self, **changes: BuiltinBehavior | None) -> Self:
        """A copy with the given fields replaced, e.g. `config.with_(retry=None)`."""
        for name in changes:
            if name not in _FIELD_TYPES:
                fields = ", ".join(f"`{field}`" for field in _FIELD_TYPES)
                raise TypeError(f"`Config` has no field `{name}`; its fields are {fields}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # checked by __post_init__

    def _enabled(self) -> dict[str, BuiltinBehavior]:
        """The behaviours that are on, by field name, in field order."""
        return {name: value for name in _FIELD_TYPES if (value := getattr(self, name)) is not None}


_FIELD_TYPES: Final[dict[str, type[BuiltinBehavior]]] = {
    "logging": Logging,
    "tracing": Tracing,
    "metrics": Metrics,
    "rate_limit": RateLimit,
    "concurrency_limit": ConcurrencyLimit,
    "circuit_breaker": CircuitBreaker,
    "validation": Validation,
    "dead_letter": DeadLetter,
    "retry": Retry,
    "timeout": Timeout,
    "idempotency": Idempotency,
    "cache": Cache,
}
