"""The circuit breaker (rust/core/src/breaker.rs, catga/_pure/_limits.py, API.md section 6),
through whichever core `catga._core` picked, on an injected clock."""

import gc
import math
import re
import threading
import weakref

import pytest

from catga._core import CircuitBreaker


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def open_breaker(threshold: int = 1, reset_timeout: float = 10.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock(500.0)
    breaker = CircuitBreaker(threshold, reset_timeout, clock=clock)
    for _ in range(threshold):
        breaker.record_failure()
    assert breaker.state == "open"
    return breaker, clock


def test_defaults() -> None:
    breaker = CircuitBreaker()
    assert (breaker.failure_threshold, breaker.reset_timeout) == (5, 30.0)
    assert (breaker.state, breaker.consecutive_failures, breaker.state_changes) == ("closed", 0, 0)
    assert breaker.allow() == 0.0
    assert repr(breaker) == "CircuitBreaker(failure_threshold=5, reset_timeout=30.0, state='closed')"
    with pytest.raises(TypeError):
        type("Sub", (CircuitBreaker,), {})


def test_opens_after_exactly_the_threshold_and_refuses_the_next_call() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=30.0, clock=clock)
    for count in (1, 2):
        assert breaker.allow() == 0.0
        breaker.record_failure()
        assert (breaker.state, breaker.consecutive_failures) == ("closed", count)
    assert breaker.allow() == 0.0
    breaker.record_failure()
    assert (breaker.state, breaker.consecutive_failures, breaker.state_changes) == ("open", 3, 1)
    assert breaker.allow() == 30.0
    clock.advance(10.0)
    assert breaker.allow() == pytest.approx(20.0)
    assert breaker.state == "open"


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"


def test_half_open_probe_success_closes() -> None:
    breaker, clock = open_breaker(threshold=2)
    clock.advance(10.0)
    assert breaker.allow() == 0.0
    assert breaker.state == "half_open"
    breaker.record_success()
    assert (breaker.state, breaker.consecutive_failures, breaker.state_changes) == ("closed", 0, 3)
    assert breaker.allow() == 0.0


def test_half_open_probe_failure_reopens_at_once_from_now() -> None:
    breaker, clock = open_breaker(threshold=2)
    clock.advance(15.0)
    assert breaker.allow() == 0.0
    clock.advance(2.0)
    breaker.record_failure()
    assert (breaker.state, breaker.consecutive_failures, breaker.state_changes) == ("open", 2, 3)
    assert breaker.allow() == 10.0
    clock.advance(10.0)
    assert breaker.allow() == 0.0
    assert breaker.state_changes == 4


def test_only_one_probe_in_half_open() -> None:
    breaker, clock = open_breaker()
    clock.advance(10.0)
    assert breaker.allow() == 0.0
    # The others are refused until the probe's slot would be reclaimed at the latest.
    assert breaker.allow() == 10.0
    clock.advance(4.0)
    assert breaker.allow() == pytest.approx(6.0)
    assert breaker.state == "half_open"


def test_ignored_outcomes() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=1.0, clock=(clock := FakeClock()))
    breaker.record_failure()
    breaker.record_ignored()  # closed: the count stays
    assert (breaker.state, breaker.consecutive_failures) == ("closed", 1)
    breaker.record_failure()
    breaker.record_ignored()  # open: nothing
    assert breaker.state == "open"
    clock.advance(1.0)
    assert breaker.allow() == 0.0
    assert breaker.allow() > 0.0
    breaker.record_ignored()  # half-open: the probe slot is free again
    assert breaker.state == "half_open"
    assert breaker.allow() == 0.0
    assert breaker.allow() > 0.0
    assert breaker.state_changes == 2


def test_outcomes_while_open_change_nothing() -> None:
    breaker, _ = open_breaker(reset_timeout=5.0)
    breaker.record_success()
    breaker.record_failure()
    breaker.record_ignored()
    assert (breaker.state, breaker.state_changes) == ("open", 1)
    assert breaker.allow() == 5.0


def test_a_lost_probe_is_reclaimed_after_the_reset_timeout() -> None:
    breaker, clock = open_breaker(reset_timeout=2.0)
    clock.advance(2.0)
    assert breaker.allow() == 0.0
    clock.advance(1.5)
    assert breaker.allow() == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.allow() == 0.0
    assert breaker.allow() == 2.0
    assert breaker.state_changes == 2


def test_clock_going_backwards_never_keeps_it_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10.0, clock=clock)
    clock.advance(1000.0)
    breaker.record_failure()
    clock.now = 100.0  # far back: open for reset_timeout on the clock as it now reads
    assert breaker.allow() == 10.0
    clock.advance(5.0)
    assert breaker.allow() == pytest.approx(5.0)
    clock.advance(5.0)
    assert breaker.allow() == 0.0
    clock.now -= 50.0  # back again while the probe is out
    assert breaker.allow() == 10.0
    clock.advance(10.0)
    assert breaker.allow() == 0.0  # the probe is presumed lost
    for wait in (breaker.allow(), breaker.allow()):
        assert wait > 0.0
    assert breaker.state_changes == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1.0), "failure_threshold `0` must be > 0"),
        ((-3, 1.0), "failure_threshold `-3` must be > 0"),
        ((2.5, 1.0), "failure_threshold `2.5` must be an int in the range of a 64-bit integer"),
        ((1, 0), "reset_timeout `0.0` must be > 0"),
        ((1, -1.0), "reset_timeout `-1.0` must be > 0"),
        ((1, math.nan), "reset_timeout `nan` must be > 0"),
        ((1, math.inf), "reset_timeout `inf` must be at most 1e9 seconds"),
        ((1, "1s"), "reset_timeout `1s` must be a number"),
    ],
)
def test_parameter_validation(args: tuple[object, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        CircuitBreaker(*args)  # type: ignore[arg-type]


def test_clock_must_return_finite_seconds() -> None:
    with pytest.raises(TypeError, match=r"clock must return monotonic seconds as a float, got `None`"):
        CircuitBreaker(clock=lambda: None)  # type: ignore[arg-type,return-value]
    readings = iter([0.0, math.inf])
    breaker = CircuitBreaker(clock=lambda: next(readings))
    with pytest.raises(ValueError, match=r"^clock reading `inf` must be a finite number of seconds$"):
        breaker.record_failure()


def test_a_clock_that_refers_back_to_the_breaker_is_collected() -> None:
    clock = FakeClock()
    clock.owner = CircuitBreaker(clock=clock)  # type: ignore[attr-defined]
    alive = weakref.ref(clock)
    del clock
    gc.collect()
    assert alive() is None


# ------------------------------------------------------------------------------- 8 threads


def test_eight_threads_race_for_exactly_one_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    rounds, threads = 30, 8
    barrier = threading.Barrier(threads + 1)
    probes = [0] * threads

    def work(index: int) -> None:
        for _ in range(rounds):
            barrier.wait()
            breaker.record_failure()  # all at once: one opens it (or reopens it from half-open)
            barrier.wait()
            barrier.wait()  # the clock has moved past the reset timeout
            if breaker.allow() == 0.0:
                probes[index] += 1
            barrier.wait()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for _ in range(rounds):
        barrier.wait()
        barrier.wait()  # everyone has failed: open since now
        clock.advance(1.0)
        barrier.wait()
        barrier.wait()  # everyone has asked
        clock.advance(0.25)
    for worker in workers:
        worker.join()
    assert sum(probes) == rounds
    assert breaker.state_changes == 2 * rounds
    assert breaker.state == "half_open"


def test_eight_threads_count_failures_exactly() -> None:
    per_thread, threads = 500, 8
    breaker = CircuitBreaker(failure_threshold=per_thread * threads + 1, clock=FakeClock())
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            breaker.record_failure()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert (breaker.state, breaker.consecutive_failures) == ("closed", per_thread * threads)
    breaker.record_failure()
    assert (breaker.state, breaker.state_changes) == ("open", 1)
