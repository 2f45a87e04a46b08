"""Pick the core: the native extension `catga._catga` or its pure-Python twin `catga._pure`.

`CATGA_PURE_PYTHON=1` selects the pure core; `=0` requires the native one (its import error
propagates); unset or empty: native if it imports, else pure with one `RuntimeWarning`. Everything
else in catga imports core names from here, never from either core directly.
"""

import os
import warnings
from typing import TYPE_CHECKING

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
    "PURE_PYTHON",
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

if TYPE_CHECKING:
    # Type checkers see the interface the stub declares; both cores implement it.
    from catga._catga import (
        CLAIMED,
        COMPLETED,
        COUNTER_CONCURRENCY_REJECTED,
        COUNTER_DEAD_LETTERS,
        COUNTER_IDEMPOTENCY_HITS,
        COUNTER_IDEMPOTENCY_MISSES,
        COUNTER_RATE_LIMIT_REJECTED,
        COUNTER_RETRY_ATTEMPTS,
        CURRENT_MESSAGE,
        DEFAULT_EPOCH_MS,
        DURATION_BUCKETS,
        IN_FLIGHT,
        OUTCOME_CANCELLED,
        OUTCOME_FAILURE,
        OUTCOME_SUCCESS,
        CacheTable,
        CircuitBreaker,
        ConcurrencyLimiter,
        Dispatcher,
        Hooks,
        IdempotencyTable,
        IdGenerator,
        IdParts,
        MetricsRegistry,
        Route,
        TokenBucket,
        TypeMetrics,
        __version__,
        default_generator,
        handler_key,
        new_id,
        parse_id,
    )

    PURE_PYTHON: bool
else:

    def _load():
        choice = os.environ.get("CATGA_PURE_PYTHON", "")
        if choice == "1":
            from catga import _pure

            return _pure, True
        if choice == "0":
            from catga import _catga

            return _catga, False
        if choice:
            raise ValueError(f"`CATGA_PURE_PYTHON` must be `1`, `0` or unset, got `{choice}`")
        try:
            from catga import _catga
        except ImportError as exc:
            warnings.warn(
                f"the native core `catga._catga` failed to import (`{exc}`), using the pure-Python core: "
                "set `CATGA_PURE_PYTHON=1` to choose it explicitly",
                RuntimeWarning,
                stacklevel=2,
            )
            from catga import _pure

            return _pure, True
        return _catga, False

    _impl, PURE_PYTHON = _load()

    # Every name of the interface (`__all__`, which the TYPE_CHECKING imports above mirror).
    globals().update({name: getattr(_impl, name) for name in __all__ if name != "PURE_PYTHON"})

    del _impl, _load
