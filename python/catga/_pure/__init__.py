"""The pure-Python core of catga: the same interface and behaviour as the native `catga._catga`.

Private: `catga._core` picks this package or the extension; import the public names from `catga`.
"""

from importlib.metadata import PackageNotFoundError, version

from catga._pure._dispatch import CURRENT_MESSAGE, Dispatcher, Hooks, Route
from catga._pure._ids import DEFAULT_EPOCH_MS, IdGenerator, IdParts, default_generator, new_id, parse_id
from catga._pure._limits import CircuitBreaker, ConcurrencyLimiter, TokenBucket
from catga._pure._stores import CLAIMED, COMPLETED, IN_FLIGHT, CacheTable, IdempotencyTable, handler_key

__all__ = [
    "CLAIMED",
    "COMPLETED",
    "CURRENT_MESSAGE",
    "DEFAULT_EPOCH_MS",
    "IN_FLIGHT",
    "CacheTable",
    "CircuitBreaker",
    "ConcurrencyLimiter",
    "Dispatcher",
    "Hooks",
    "IdGenerator",
    "IdParts",
    "IdempotencyTable",
    "Route",
    "TokenBucket",
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
