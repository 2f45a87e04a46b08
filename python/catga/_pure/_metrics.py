"""Per-message-type metrics: the pure-Python twin of `rust/core/src/metrics.rs` (read its module docs
for the design) and of the binding in `rust/py/src/metrics.rs`.

Same numbers, same snapshot dicts, same errors:

- `seconds` becomes whole nanoseconds rounded half up, `floor(seconds * 1e9 + 0.5)` in doubles,
  saturating at `2**64 - 1` (so a duration that was whole nanoseconds comes back as the same ones);
  NaN, infinite and negative seconds are refused;
- a duration counts in the first bucket whose bound is `>=` it (`bisect_left`), else in the
  overflow bucket; the count of durations is the sum of the buckets;
- the sum of durations and the counters saturate at `2**64 - 1`.

Where the native core adds to atomics, this twin takes one `threading.Lock` per `TypeMetrics`.
"""

import bisect
import math
import operator
import threading
from typing import Any, Final, final

__all__ = [
    "COUNTER_CONCURRENCY_REJECTED",
    "COUNTER_DEAD_LETTERS",
    "COUNTER_IDEMPOTENCY_HITS",
    "COUNTER_IDEMPOTENCY_MISSES",
    "COUNTER_RATE_LIMIT_REJECTED",
    "COUNTER_RETRY_ATTEMPTS",
    "DURATION_BUCKETS",
    "OUTCOME_CANCELLED",
    "OUTCOME_FAILURE",
    "OUTCOME_SUCCESS",
    "MetricsRegistry",
    "TypeMetrics",
]

OUTCOME_SUCCESS: Final = 0
"""`TypeMetrics.leave`/`handler_done` outcome: the handler returned."""
OUTCOME_FAILURE: Final = 1
"""`TypeMetrics.leave`/`handler_done` outcome: the handler raised."""
OUTCOME_CANCELLED: Final = 2
"""`TypeMetrics.leave`/`handler_done` outcome: the handler was cancelled."""

COUNTER_RETRY_ATTEMPTS: Final = 0
"""`TypeMetrics.count` counter: attempts the Retry behaviour made after the first."""
COUNTER_IDEMPOTENCY_HITS: Final = 1
"""`TypeMetrics.count` counter: messages answered from the idempotency table."""
COUNTER_IDEMPOTENCY_MISSES: Final = 2
"""`TypeMetrics.count` counter: messages the idempotency table let through to the handler."""
COUNTER_RATE_LIMIT_REJECTED: Final = 3
"""`TypeMetrics.count` counter: messages the rate limit refused."""
COUNTER_CONCURRENCY_REJECTED: Final = 4
"""`TypeMetrics.count` counter: messages the concurrency limit refused."""
COUNTER_DEAD_LETTERS: Final = 5
"""`TypeMetrics.count` counter: messages sent to the dead-letter store."""

_BUCKETS_NS: Final = (
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
)

DURATION_BUCKETS: Final[tuple[float, ...]] = tuple(ns / 1e9 for ns in _BUCKETS_NS)
"""Upper bounds (Prometheus `le`, inclusive) of the duration histogram, in seconds: 5µs to 10s."""

_OUTCOMES: Final = ("success", "failure", "cancelled")
_COUNTERS: Final = (
    "retry_attempts",
    "idempotency_hits",
    "idempotency_misses",
    "rate_limit_rejected",
    "concurrency_rejected",
    "dead_letters",
)

_U64_MAX: Final = (1 << 64) - 1
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
_TWO_64: Final = 2.0**64

_OUTCOME_REQUIREMENT: Final = "must be 0, 1 or 2"
_COUNTER_REQUIREMENT: Final = "must be between 0 and 5"
_SECONDS_REQUIREMENT: Final = "must be a finite number >= 0"


# ------------------------------------------------------------------------------ argument checks


def _int_arg(name: str, value: object, requirement: str) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"`{name}` `{value!r}` must be an int") from None
    if not _I64_MIN <= number <= _I64_MAX:
        raise ValueError(f"`{name}` `{value}` {requirement}")
    return number


def _outcome_arg(value: object) -> int:
    outcome = _int_arg("outcome", value, _OUTCOME_REQUIREMENT)
    if not 0 <= outcome <= 2:
        raise ValueError(f"`outcome` `{outcome}` {_OUTCOME_REQUIREMENT}")
    return outcome


def _counter_arg(value: object) -> int:
    counter = _int_arg("counter", value, _COUNTER_REQUIREMENT)
    if not 0 <= counter <= 5:
        raise ValueError(f"`counter` `{counter}` {_COUNTER_REQUIREMENT}")
    return counter


def _n_arg(value: object) -> int:
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"`n` `{value!r}` must be an int") from None
    if n < 0:
        shown = n if n >= _I64_MIN else value
        raise ValueError(f"`n` `{shown}` must be zero or positive")
    if n > _I64_MAX:
        raise ValueError(f"`n` `{value}` must be at most {_I64_MAX}")
    return n


def _seconds_ns(value: object) -> int:
    # What the native core's float conversion takes: a float, or anything with `__float__` or
    # `__index__` (not a string, which `float()` would parse).
    if type(value) is float:
        seconds = value
    elif isinstance(value, str | bytes | bytearray):
        raise TypeError(f"`seconds` `{value!r}` must be a number")
    else:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"`seconds` `{value!r}` must be a number") from None
        except OverflowError:
            raise ValueError(f"`seconds` `{value}` {_SECONDS_REQUIREMENT}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"`seconds` `{seconds!r}` {_SECONDS_REQUIREMENT}")
    ns = seconds * 1e9 + 0.5
    return _U64_MAX if ns >= _TWO_64 else math.floor(ns)


def _str_arg(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` `{value!r}` must be a str")
    value.encode()  # a lone surrogate raises `UnicodeEncodeError`, as in the native core
    return value


def _by_outcome(counts: list[int]) -> dict[str, int]:
    return dict(zip(_OUTCOMES, counts, strict=True))


# ------------------------------------------------------------------------------------ TypeMetrics


@final
class TypeMetrics:
    """The metrics of one message type: messages by outcome, their durations, those running, event
    handlers by outcome, and the behaviours' counters.

    >>> metrics = TypeMetrics("command", "orders.create")
    >>> metrics.enter()
    >>> metrics.leave(OUTCOME_SUCCESS, 0.002)
    >>> metrics.snapshot()["messages"]
    {'success': 1, 'failure': 0, 'cancelled': 0}
    """

    __slots__ = ("_active", "_buckets", "_counters", "_handlers", "_kind", "_lock", "_messages", "_name", "_sum_ns")

    _kind: str
    _name: str
    _messages: list[int]
    _buckets: list[int]
    _sum_ns: int
    _active: int
    _handlers: list[int]
    _counters: list[int]
    _lock: threading.Lock

    def __new__(cls, kind: str, type: str, /) -> "TypeMetrics":
        kind = _str_arg("kind", kind)
        name = _str_arg("type", type)
        self = object.__new__(cls)
        self._kind = kind
        self._name = name
        self._messages = [0, 0, 0]
        self._buckets = [0] * (len(_BUCKETS_NS) + 1)
        self._sum_ns = 0
        self._active = 0
        self._handlers = [0, 0, 0]
        self._counters = [0] * len(_COUNTERS)
        self._lock = threading.Lock()
        return self

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("type `TypeMetrics` is not an acceptable base type")

    @property
    def kind(self) -> str:
        """The kind of message: `"command"`, `"query"`, `"event"`, ..."""
        return self._kind

    @property
    def type(self) -> str:
        """The message type's name."""
        return self._name

    def enter(self) -> None:
        """A message starts."""
        with self._lock:
            self._active += 1

    def leave(self, outcome: int, seconds: float) -> None:
        """A message ends with `outcome` after `seconds`."""
        outcome = _outcome_arg(outcome)
        ns = _seconds_ns(seconds)
        bucket = bisect.bisect_left(_BUCKETS_NS, ns)
        with self._lock:
            self._active -= 1
            self._messages[outcome] += 1
            self._buckets[bucket] += 1
            self._sum_ns = min(self._sum_ns + ns, _U64_MAX)

    def handler_done(self, outcome: int) -> None:
        """One event handler of a publish finished with `outcome`."""
        outcome = _outcome_arg(outcome)
        with self._lock:
            self._handlers[outcome] += 1

    def count(self, counter: int, n: int = 1) -> None:
        """Add `n` to `counter`."""
        counter = _counter_arg(counter)
        n = _n_arg(n)
        with self._lock:
            self._counters[counter] = min(self._counters[counter] + n, _U64_MAX)

    def snapshot(self) -> dict[str, Any]:
        """The numbers now, as a dict."""
        with self._lock:
            messages = self._messages.copy()
            buckets = self._buckets.copy()
            sum_ns = self._sum_ns
            active = self._active
            handlers = self._handlers.copy()
            counters = self._counters.copy()
        snapshot: dict[str, Any] = {
            "kind": self._kind,
            "type": self._name,
            "messages": _by_outcome(messages),
            "duration": {"buckets": buckets, "sum": sum_ns / 1e9, "count": min(sum(buckets), _U64_MAX)},
            "active": active,
            "publish_handlers": _by_outcome(handlers),
        }
        snapshot.update(zip(_COUNTERS, counters, strict=True))
        return snapshot

    def __repr__(self) -> str:
        return f"TypeMetrics(kind={self._kind!r}, type={self._name!r})"


# -------------------------------------------------------------------------------- MetricsRegistry


@final
class MetricsRegistry:
    """The metrics of every message type, created on first use.

    >>> registry = MetricsRegistry()
    >>> registry.for_type("command", "orders.create") is registry.for_type("command", "orders.create")
    True
    """

    __slots__ = ("_lock", "_types")

    _types: dict[tuple[str, str], TypeMetrics]
    _lock: threading.Lock

    def __new__(cls) -> "MetricsRegistry":
        self = object.__new__(cls)
        self._types = {}
        self._lock = threading.Lock()
        return self

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("type `MetricsRegistry` is not an acceptable base type")

    def for_type(self, kind: str, type: str, /) -> TypeMetrics:
        """The metrics of `(kind, type)`: the same object every time, created on the first call."""
        kind = _str_arg("kind", kind)
        key = (_str_arg("type", type), kind)
        with self._lock:
            metrics = self._types.get(key)
            if metrics is None:
                metrics = self._types[key] = TypeMetrics(kind, type)
            return metrics

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per type (see `TypeMetrics.snapshot`), sorted by `(type, kind)`."""
        with self._lock:
            types = sorted(self._types.items())
        return [metrics.snapshot() for _, metrics in types]

    def __len__(self) -> int:
        return len(self._types)

    def __repr__(self) -> str:
        return f"MetricsRegistry(types={len(self._types)})"
