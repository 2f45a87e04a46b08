"""The built-in behaviours of the pipeline, configured through `catga.Config` (API.md section 5).

They run in this fixed order, outermost first, with the user behaviours inside them:
`Logging → Tracing → Idempotency → RateLimit → ConcurrencyLimit → CircuitBreaker → Validation →
DeadLetter → Retry → Timeout → Cache → user behaviours → handler`; `Metrics` (not in API.md's
list, which it extends) observes at Logging's place, outermost.

Each class holds and checks the settings of one built-in; a `catga.Config` field holds an instance
(or `None`: off). Validation, DeadLetter, Retry and Timeout run in Python around the handler (the
middle chain, composed once per route); Logging, Tracing, Metrics, Idempotency, RateLimit,
ConcurrencyLimit, CircuitBreaker and Cache run inside the core, without a Python frame (Logging
and Tracing call Python only when their logger takes the level or a tracer provider is set).
docs/behaviors.md and docs/observability.md explain each with an example.

>>> from catga.behaviors import Retry
>>> Retry(max_attempts=5)
Retry(max_attempts=5, base_delay=0.1, max_delay=10.0, jitter=0.15, retry_on=())
>>> Retry(max_attempts=0)
Traceback (most recent call last):
...
ValueError: `max_attempts` must be at least 1, got `0`
"""

from catga.behaviors._builtins import (
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

__all__ = [
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

for _cls in (
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
):
    _cls.__module__ = __name__
del _cls
