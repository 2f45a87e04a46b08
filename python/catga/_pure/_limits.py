"""Token bucket, concurrency limiter and circuit breaker: the pure-Python twins of `rust/core`'s
`limiter.rs`, `concurrency.rs` and `breaker.rs` (read their module docs for the design).

Same arithmetic, step by step, so both cores make the same decision at the same nanosecond:

- time is whole nanoseconds since the object's first clock reading, `floor((now - origin) * 1e9)`
  in floats, clamped to `[0, 2**64 - 1]`;
- the bucket counts refill in units of `1/U` token (`U = 10**d`, the largest `d <= 9` with
  `rate * U <= 1e9`) on the unit clock `floor(t * rate * U / 1e9)`, exact with `Fraction(rate)`,
  and keeps one number, `full_at`, the unit-clock reading at which it is full again (GCRA);
- the breaker keeps its state, count or time, and probe flag, with the native core's limits.

Where the native core uses one atomic word, this twin takes one `threading.Lock` per call.
"""

import math
import operator
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Final, final

__all__ = ["CircuitBreaker", "ConcurrencyLimiter", "TokenBucket"]

_Clock = Callable[[], float]

_U64_MAX: Final = (1 << 64) - 1
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
_TWO_64: Final = 2.0**64

_MAX_RATE: Final = 1e9
_MAX_ELAPSED_NS: Final = (1 << 63) - 1
_MAX_CAPACITY: Final = 1 << 62

_PAYLOAD: Final = (1 << 61) - 1
_MAX_RESET_TIMEOUT: Final = 1e9
_CLOSED: Final = "closed"
_OPEN: Final = "open"
_HALF_OPEN: Final = "half_open"


# ------------------------------------------------------------------------------ argument checks


def _float_arg(name: str, value: object) -> float:
    # What the native core's float conversion takes: a float, or anything with `__float__` or
    # `__index__` (not a string, which `float()` would parse).
    if type(value) is float:
        return value
    if not isinstance(value, str | bytes | bytearray):
        try:
            return float(value)  # type: ignore[arg-type]
        except Exception:  # any failure is "not a number", as in the native core
            pass
    raise ValueError(f"{name} `{value}` must be a number")


def _int_arg(name: str, value: object) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or not _I64_MIN <= number <= _I64_MAX:
        raise ValueError(f"{name} `{value}` must be an int in the range of a 64-bit integer")
    return number


def _read(clock: _Clock) -> float:
    value: object = clock()
    if type(value) is not float:
        if isinstance(value, str | bytes | bytearray):
            raise TypeError(f"clock must return monotonic seconds as a float, got `{value!r}`")
        try:
            value = float(value)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"clock must return monotonic seconds as a float, got `{value!r}`") from None
    if not math.isfinite(value):
        raise ValueError(f"clock reading `{value!r}` must be a finite number of seconds")
    return value


def _elapsed_ns(now: float, origin: float) -> int:
    ns = (now - origin) * 1e9
    if ns <= 0:
        return 0
    if ns >= _TWO_64:
        return _U64_MAX
    return int(ns)


class _Timed:
    """The clock part shared by the bucket and the breaker: a callable and its first reading."""

    __slots__ = ("_clock", "_origin")

    _clock: _Clock
    _origin: float

    def _start_clock(self, clock: _Clock | None) -> None:
        self._clock = time.monotonic if clock is None else clock
        self._origin = _read(self._clock)

    def _now_ns(self) -> int:
        return _elapsed_ns(_read(self._clock), self._origin)


# ------------------------------------------------------------------------------------ TokenBucket


@final
class TokenBucket(_Timed):
    """A token bucket: `rate` tokens per second, at most `burst`, starting full, refilled
    continuously with no fraction lost.

    >>> bucket = TokenBucket(rate=1.0, burst=2.0)
    >>> bucket.try_acquire(), bucket.try_acquire(), bucket.try_acquire() > 0
    (0.0, 0.0, True)
    """

    __slots__ = ("_burst", "_capacity", "_full_at", "_lock", "_p", "_q", "_rate", "_unit")

    _rate: float
    _burst: float
    _unit: int
    _capacity: int
    _p: int
    _q: int
    _full_at: int
    _lock: threading.Lock

    def __new__(cls, rate: float, burst: float, clock: _Clock | None = None) -> "TokenBucket":
        rate = _float_arg("rate", rate)
        burst = _float_arg("burst", burst)
        if math.isnan(rate) or rate <= 0:
            raise ValueError(f"rate `{rate!r}` must be > 0")
        if rate > _MAX_RATE:
            raise ValueError(f"rate `{rate!r}` must be at most 1e9 tokens per second")
        if math.isnan(burst) or burst <= 0:
            raise ValueError(f"burst `{burst!r}` must be > 0")
        k = next(k for k in range(10) if rate <= 10**k)
        unit = 10 ** (9 - k)
        capacity = _MAX_CAPACITY + 1 if burst > _MAX_CAPACITY else math.floor(Fraction(burst) * unit)
        if capacity > _MAX_CAPACITY:
            raise ValueError(f"burst `{burst!r}` must be at most {_MAX_CAPACITY // unit} tokens at rate `{rate!r}`")
        per_ns = Fraction(rate) * unit / 1_000_000_000

        self = object.__new__(cls)
        self._rate = rate
        self._burst = burst
        self._unit = unit
        self._capacity = capacity
        self._p = per_ns.numerator
        self._q = per_ns.denominator
        self._full_at = 0
        self._lock = threading.Lock()
        self._start_clock(clock)
        return self

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("type `TokenBucket` is not an acceptable base type")

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """The capacity in tokens."""
        return self._burst

    @property
    def available(self) -> float:
        """Tokens available now, in `[0, burst]`."""
        now = min(self._now_ns(), _MAX_ELAPSED_NS)
        clock = now * self._p // self._q
        units = max(0, clock + self._capacity - max(self._full_at, clock))
        return float(units) / self._unit

    def try_acquire(self, n: int = 1) -> float:
        """Take `n` tokens: `0.0` when taken, else the seconds until `n` are available (> 0, nothing
        taken). `n` above the burst can never succeed and raises `ValueError`."""
        n = _int_arg("n", n)
        now = min(self._now_ns(), _MAX_ELAPSED_NS)
        if n < 1:
            raise ValueError(f"n `{n}` must be at least 1")
        cost = n * self._unit
        if cost > self._capacity:
            raise ValueError(f"n `{n}` exceeds the burst `{self._burst!r}`: it can never be acquired")
        clock = now * self._p // self._q
        capacity = self._capacity
        with self._lock:
            after = max(self._full_at, clock) + cost
            if after <= clock + capacity:
                self._full_at = after
                return 0.0
        # The first nanosecond at which the unit clock reaches `after - capacity`.
        due = -(-(after - capacity) * self._q // self._p)
        wait = _U64_MAX if due > _MAX_ELAPSED_NS else due - now
        return wait / 1e9

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate!r}, burst={self._burst!r})"


# ----------------------------------------------------------------------------- ConcurrencyLimiter


@final
class ConcurrencyLimiter:
    """At most `max_concurrent` permits out at once, with counters. Waiting is the caller's.

    >>> limiter = ConcurrencyLimiter(1)
    >>> limiter.try_acquire(), limiter.try_acquire()
    (True, False)
    """

    __slots__ = ("_in_flight", "_lock", "_max", "_rejected")

    _max: int
    _in_flight: int
    _rejected: int
    _lock: threading.Lock

    def __new__(cls, max_concurrent: int) -> "ConcurrencyLimiter":
        max_concurrent = _int_arg("max_concurrent", max_concurrent)
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent `{max_concurrent}` must be > 0")
        self = object.__new__(cls)
        self._max = max_concurrent
        self._in_flight = 0
        self._rejected = 0
        self._lock = threading.Lock()
        return self

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("type `ConcurrencyLimiter` is not an acceptable base type")

    def try_acquire(self) -> bool:
        """Take a permit if one is free."""
        with self._lock:
            if self._in_flight < self._max:
                self._in_flight += 1
                return True
            return False

    def release(self) -> None:
        """Give a permit back. Releasing more than was acquired is a bug; the count stays at 0."""
        with self._lock:
            if self._in_flight > 0:
                self._in_flight -= 1

    def note_rejected(self) -> None:
        """Count a caller that gave up waiting for a permit."""
        with self._lock:
            self._rejected += 1

    @property
    def in_flight(self) -> int:
        """Permits out now."""
        return self._in_flight

    @property
    def rejected(self) -> int:
        """Callers that gave up, as reported by `note_rejected`."""
        return self._rejected

    @property
    def max_concurrent(self) -> int:
        """The number of permits."""
        return self._max

    def __repr__(self) -> str:
        return f"ConcurrencyLimiter(max_concurrent={self._max})"


# -------------------------------------------------------------------------------- CircuitBreaker


@final
class CircuitBreaker(_Timed):
    """Closed, open, half-open with a single probe (API.md section 6).

    >>> breaker = CircuitBreaker(failure_threshold=1, reset_timeout=30.0)
    >>> breaker.record_failure()
    >>> breaker.state, breaker.allow() > 0
    ('open', True)
    """

    __slots__ = (
        "_changes",
        "_count",
        "_lock",
        "_probe",
        "_reset_ns",
        "_reset_timeout",
        "_since",
        "_state",
        "_threshold",
    )

    _threshold: int
    _reset_timeout: float
    _reset_ns: int
    _state: str
    _count: int
    _since: int
    _probe: bool
    _changes: int
    _lock: threading.Lock

    def __new__(
        cls, failure_threshold: int = 5, reset_timeout: float = 30.0, clock: _Clock | None = None
    ) -> "CircuitBreaker":
        failure_threshold = _int_arg("failure_threshold", failure_threshold)
        reset_timeout = _float_arg("reset_timeout", reset_timeout)
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold `{failure_threshold}` must be > 0")
        if math.isnan(reset_timeout) or reset_timeout <= 0:
            raise ValueError(f"reset_timeout `{reset_timeout!r}` must be > 0")
        if reset_timeout > _MAX_RESET_TIMEOUT:
            raise ValueError(f"reset_timeout `{reset_timeout!r}` must be at most 1e9 seconds")
        self = object.__new__(cls)
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._reset_ns = math.ceil(reset_timeout * 1e9)
        self._state = _CLOSED
        self._count = 0
        self._since = 0
        self._probe = False
        self._changes = 0
        self._lock = threading.Lock()
        self._start_clock(clock)
        return self

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("type `CircuitBreaker` is not an acceptable base type")

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self._changes += 1

    def allow(self) -> float:
        """`0.0` when the call may go ahead (in half-open, as the probe), else the seconds to wait."""
        now = min(self._now_ns(), _PAYLOAD)
        reset = self._reset_ns
        with self._lock:
            state, since = self._state, self._since
            if state == _CLOSED:
                return 0.0
            if state == _HALF_OPEN and not self._probe:
                wait = 0
            elif now < since:
                # The clock stepped back past the opening (or the probe's start): count from now.
                wait = reset
            elif now - since >= reset:
                # Open long enough: probe. Half-open with a probe out that long: it is presumed lost.
                wait = 0
            else:
                return (since + reset - now) / 1e9
            self._since = now
            if wait == 0:
                self._set(_HALF_OPEN)
                self._probe = True
            return wait / 1e9

    def record_success(self) -> None:
        """The call succeeded: closed → count reset; half-open → closed; open → nothing."""
        with self._lock:
            if self._state != _OPEN:
                self._set(_CLOSED)
                self._count = 0
                self._probe = False

    def record_failure(self) -> None:
        """The call failed: closed → count + 1, opening at the threshold; half-open → open again
        from now; open → nothing."""
        now = min(self._now_ns(), _PAYLOAD)
        with self._lock:
            if self._state == _CLOSED:
                self._count = min(self._count + 1, _PAYLOAD)
                if self._count < self._threshold:
                    return
            elif self._state == _OPEN:
                return
            self._set(_OPEN)
            self._since = now
            self._count = 0
            self._probe = False

    def record_ignored(self) -> None:
        """The call ended in a way that says nothing about the downstream (a validation error, a
        conflict, a cancellation): half-open frees the probe slot; otherwise nothing."""
        with self._lock:
            if self._state == _HALF_OPEN:
                self._probe = False

    @property
    def state(self) -> str:
        """`"closed"`, `"open"` or `"half_open"`."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row while closed; `failure_threshold` while open or half-open."""
        with self._lock:
            return self._count if self._state == _CLOSED else self._threshold

    @property
    def state_changes(self) -> int:
        """Transitions between states so far."""
        return self._changes

    @property
    def failure_threshold(self) -> int:
        """Consecutive failures that open the circuit."""
        return self._threshold

    @property
    def reset_timeout(self) -> float:
        """Seconds from opening until a probe is let through."""
        return self._reset_timeout

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(failure_threshold={self._threshold}, reset_timeout={self._reset_timeout!r}, "
            f"state='{self._state}')"
        )
