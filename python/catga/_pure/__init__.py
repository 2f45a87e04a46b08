"""The pure-Python core of catga: the same interface and behaviour as the native `catga._catga`.

Private: `catga._core` picks this package or the extension; import the public names from `catga`.
"""

from importlib.metadata import PackageNotFoundError, version

from catga._pure._dispatch import CURRENT_MESSAGE, Dispatcher, Hooks, Route
from catga._pure._ids import DEFAULT_EPOCH_MS, IdGenerator, IdParts, default_generator, new_id, parse_id
from catga._pure._limits import CircuitBreaker, ConcurrencyLimiter, TokenBucket
from catga._pure._metrics import (
    COUNTER_CONCURRENCY_REJECTED,
    COUNTER_DEAD_LETTERS,
    COUNTER_IDEMPOTENCY_HITS,
    COUNTER_IDEMPOTENCY_MISSES,
    COUNTER_RATE_LIMIT_REJECTED,
    COUNTER_RETRY_ATTEMPTS,
    DURATION_BUCKETS,
    OUTCOME_CANCELLED,
    OUTCOME_FAILURE,
    OUTCOME_SUCCESS,
    MetricsRegistry,
    TypeMetrics,
)
from catga._pure._stores import CLAIMED, COMPLETED, IN_FLIGHT, CacheTable, IdempotencyTable, handler_key

__all__ = [
    "CLAIMED",
    "COMPLETED",
    "COUNTER_CONCURRENCY_REJECTED",
    "COUNTER_DEAD_LETTERS",
    "COUNTER_IDEMPOTENCY_HITS",
    "COUNTER_IDEMPOTENCY_MISSES",
    "COUNTER_RATE_LIMIT_REJECTED",
    "COUNTER_RETRY_ATTEMPTS",
    "CURRENT_MESSAGE",
    "DEFAULT_EPOCH_MS",
    "DURATION_BUCKETS",
    "IN_FLIGHT",
    "OUTCOME_CANCELLED",
    "OUTCOME_FAILURE",
    "OUTCOME_SUCCESS",
    "CacheTable",
    "CircuitBreaker",
    "ConcurrencyLimiter",
    "Dispatcher",
    "Hooks",
    "IdGenerator",
    "IdParts",
    "IdempotencyTable",
    "MetricsRegistry",
    "Route",
    "TokenBucket",
    "TypeMetrics",
    "__version__",
    "default_generator",
    "handler_key",
    "new_id",
    "parse_id",
]

try:
    __version__: str = version("catga")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0.0.0"
