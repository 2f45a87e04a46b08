"""The token bucket (rust/core/src/limiter.rs, catga/_pure/_limits.py), through whichever core
`catga._core` picked, on an injected clock."""

import gc
import math
import re
import threading
import weakref
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catga import _core
from catga._core import TokenBucket


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_burst_two_at_one_per_second() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucket(1.0, 2.0, clock=clock)
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == pytest.approx(1.0)
    clock.advance(1.0)
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == pytest.approx(1.0)


def test_a_refused_call_takes_nothing_and_gets_the_exact_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4.0, burst=1.0, clock=clock)
    assert bucket.try_acquire() == 0.0
    assert bucket.available == 0.0
    clock.advance(0.125)
    assert bucket.available == 0.5
    for _ in range(3):
        assert bucket.try_acquire() == 0.125
    assert bucket.available == 0.5
    clock.advance(0.125)
    assert bucket.try_acquire() == 0.0


def test_several_tokens_at_once() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, 4.0, clock=clock)
    assert bucket.try_acquire(3) == 0.0
    assert bucket.try_acquire(2) == 0.5
    assert bucket.try_acquire(1) == 0.0
    assert bucket.try_acquire(4) == 2.0
    clock.advance(2.0)
    assert bucket.try_acquire(n=4) == 0.0


def test_fractions_are_never_lost() -> None:
    # 3 tokens/s, one at a time: every token arrives on the exact schedule ceil(k / 3 s), however
    # the waits round; the clock ticks in 1/1024 s steps, which convert to nanoseconds exactly. (A
    # burst of 2, emptied first, so that the bucket never fills up between ticks: a full bucket
    # rightly drops what it cannot hold.)
    ticks = 0
    clock = FakeClock()
    bucket = TokenBucket(3.0, 2.0, clock=clock)
    assert bucket.try_acquire(2) == 0.0
    for k in range(1, 301):
        while (wait := bucket.try_acquire()) > 0:
            ticks += max(1, math.floor(wait * 1024))
            clock.now = ticks / 1024
        # Granted at the first tick at or after token k was due.
        assert ticks == math.ceil(Fraction(k, 3) * 1024), k
    assert ticks == 100 * 1024


def test_an_idle_bucket_is_simply_full() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000.0, 5.0, clock=clock)
    assert bucket.try_acquire(5) == 0.0
    clock.advance(1e9)  # 31 years
    assert bucket.available == 5.0
    assert bucket.try_acquire(5) == 0.0
    assert bucket.try_acquire() == pytest.approx(0.001)


def test_clock_going_backwards_never_over_grants_nor_waits_negatively() -> None:
    clock = FakeClock(1000.0)
    bucket = TokenBucket(1.0, 1.0, clock=clock)
    clock.advance(10.0)
    assert bucket.try_acquire() == 0.0
    clock.now = 1005.0  # five seconds back: the next token is due at 1011 on this clock
    assert bucket.try_acquire() == pytest.approx(6.0)
    assert bucket.available == 0.0
    clock.now = 0.0  # before the bucket was made: counts as its first instant
    assert bucket.try_acquire() == pytest.approx(11.0)
    clock.now = 1011.0
    assert bucket.try_acquire() == 0.0


def test_properties_and_repr() -> None:
    bucket = TokenBucket(2, 3)
    assert (bucket.rate, bucket.burst) == (2.0, 3.0)
    assert isinstance(bucket.rate, float)
    assert bucket.available == 3.0  # the default monotonic clock
    assert bucket.try_acquire() == 0.0
    assert 2.0 <= bucket.available < 3.0
    assert repr(bucket) == "TokenBucket(rate=2.0, burst=3.0)"
    with pytest.raises(TypeError):
        type("Sub", (TokenBucket,), {})


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0, 1, "rate `0.0` must be > 0"),
        (-1.5, 1, "rate `-1.5` must be > 0"),
        (math.nan, 1, "rate `nan` must be > 0"),
        (2e9, 1, "rate `2000000000.0` must be at most 1e9 tokens per second"),
        (math.inf, 1, "rate `inf` must be at most 1e9 tokens per second"),
        (1, 0, "burst `0.0` must be > 0"),
        (1, -2, "burst `-2.0` must be > 0"),
        (1, 1e10, "burst `10000000000.0` must be at most 4611686018 tokens at rate `1.0`"),
        ("fast", 1, "rate `fast` must be a number"),
        (1, None, "burst `None` must be a number"),
    ],
)
def test_parameter_validation(rate: object, burst: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TokenBucket(rate, burst)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "message"),
    [
        (0, "n `0` must be at least 1"),
        (-1, "n `-1` must be at least 1"),
        (3, "n `3` exceeds the burst `2.5`: it can never be acquired"),
        (2**70, f"n `{2**70}` must be an int in the range of a 64-bit integer"),
        (1.0, "n `1.0` must be an int in the range of a 64-bit integer"),
    ],
)
def test_token_count_validation(n: object, message: str) -> None:
    bucket = TokenBucket(1.0, 2.5)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        bucket.try_acquire(n)  # type: ignore[arg-type]
    assert bucket.available == 2.5


def test_clock_must_return_finite_seconds() -> None:
    with pytest.raises(TypeError, match=r"clock must return monotonic seconds as a float, got `'soon'`"):
        TokenBucket(1.0, 1.0, clock=lambda: "soon")  # type: ignore[arg-type,return-value]
    readings = iter([0.0, math.nan])
    bucket = TokenBucket(1.0, 1.0, clock=lambda: next(readings))
    with pytest.raises(ValueError, match=r"^clock reading `nan` must be a finite number of seconds$"):
        bucket.try_acquire()
    # Ints are seconds too.
    assert TokenBucket(1.0, 1.0, clock=lambda: 5).try_acquire() == 0.0  # type: ignore[arg-type,return-value]


# ------------------------------------------------------------------- property: an exact model

# Rates and a 1/64 s time grid on which the bucket's nanosecond arithmetic is exact, so its every
# answer must equal the textbook continuous bucket computed in fractions.
EXACT_RATES = [Fraction(k, 8) for k in range(1, 9)] + [Fraction(r) for r in (2, 3, 7, 10, 60, 999, 1000)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.sampled_from(EXACT_RATES),
    burst=st.integers(1, 6),
    steps=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 6)), min_size=1, max_size=40),
)
def test_matches_an_exact_model(rate: Fraction, burst: int, steps: list[tuple[int, int]]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(float(rate), float(burst), clock=clock)
    level, now, granted = Fraction(burst), Fraction(0), 0
    for ticks, wanted in steps:
        step = Fraction(ticks, 64)
        now += step
        clock.now = float(now)
        level = min(Fraction(burst), level + rate * step)
        n = min(wanted, burst)
        if level >= n:
            level -= n
            granted += n
            expected = 0.0
        else:
            expected = math.ceil((n - level) / rate * 10**9) / 1e9
        assert bucket.try_acquire(n) == expected
        assert bucket.available == float(level)
        assert granted <= burst + rate * now


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.floats(0.01, 1e6),
    burst=st.floats(1.0, 50.0),
    steps=st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(1, 50)), min_size=1, max_size=30),
)
def test_never_over_grants_and_delivers_when_due(rate: float, burst: float, steps: list[tuple[float, int]]) -> None:
    clock = FakeClock(50.0)
    bucket = TokenBucket(rate, burst, clock=clock)
    granted = 0
    for advance, wanted in steps:
        clock.advance(advance)
        n = min(wanted, math.floor(burst))
        wait = bucket.try_acquire(n)
        assert wait >= 0.0
        assert 0.0 <= bucket.available <= burst
        if wait == 0.0:
            granted += n
        else:
            # Nothing earlier than due, and exactly then (with a microsecond of float slack).
            if wait > 1e-6:
                clock.advance(wait - 1e-6)
                assert bucket.try_acquire(n) > 0.0
                clock.advance(1e-6)
            else:
                clock.advance(wait)
            clock.advance(1e-6)
            assert bucket.try_acquire(n) == 0.0
            granted += n
        elapsed = Fraction(clock.now) - 50
        # A thousandth of a token of slack for the float clock readings' rounding.
        assert granted <= Fraction(burst) + Fraction(rate) * elapsed + Fraction(1, 1000)


def test_a_clock_that_refers_back_to_the_bucket_is_collected() -> None:
    clock = FakeClock()
    clock.owner = TokenBucket(1.0, 1.0, clock=clock)  # type: ignore[attr-defined]
    alive = weakref.ref(clock)
    del clock
    gc.collect()
    assert alive() is None


# ------------------------------------------------------------------------------- 8 threads


def test_eight_threads_get_exactly_what_is_due() -> None:
    clock = FakeClock()
    bucket = _core.TokenBucket(1000.0, 100.0, clock=clock)
    rounds, threads = 40, 8
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads

    def work(index: int) -> None:
        for _ in range(rounds):
            barrier.wait()
            while bucket.try_acquire() == 0.0:
                counts[index] += 1
            barrier.wait()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for round_ in range(1, rounds + 1):
        barrier.wait()  # the threads drain the bucket at this instant
        barrier.wait()
        clock.now = round_ * 3 / 64  # 46.875 tokens per round: the fractions carry over
    for worker in workers:
        worker.join()
    # The burst, plus every whole token due by the last instant the threads drained at.
    assert sum(counts) == 100 + math.floor(1000 * (rounds - 1) * Fraction(3, 64))
