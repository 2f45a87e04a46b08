"""The concurrency limiter (rust/core/src/concurrency.rs, catga/_pure/_limits.py), through
whichever core `catga._core` picked."""

import re
import threading

import pytest

from catga._core import ConcurrencyLimiter


def test_grants_up_to_the_limit() -> None:
    limiter = ConcurrencyLimiter(2)
    assert (limiter.max_concurrent, limiter.in_flight, limiter.rejected) == (2, 0, 0)
    assert limiter.try_acquire()
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    assert limiter.in_flight == 2
    limiter.release()
    assert limiter.in_flight == 1
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    limiter.release()
    limiter.release()
    assert limiter.in_flight == 0


def test_one_permit_serialises() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    limiter.release()
    assert limiter.try_acquire()


def test_rejections_are_counted_when_noted() -> None:
    limiter = ConcurrencyLimiter(1)
    limiter.try_acquire()
    assert not limiter.try_acquire()
    # A refusal is not a rejection: the caller may still wait for a permit.
    assert limiter.rejected == 0
    limiter.note_rejected()
    limiter.note_rejected()
    assert limiter.rejected == 2
    assert limiter.in_flight == 1


def test_repr_and_no_subclasses() -> None:
    assert repr(ConcurrencyLimiter(3)) == "ConcurrencyLimiter(max_concurrent=3)"
    with pytest.raises(TypeError):
        type("Sub", (ConcurrencyLimiter,), {})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "max_concurrent `0` must be > 0"),
        (-1, "max_concurrent `-1` must be > 0"),
        (1.5, "max_concurrent `1.5` must be an int in the range of a 64-bit integer"),
        ("4", "max_concurrent `4` must be an int in the range of a 64-bit integer"),
        (2**64, f"max_concurrent `{2**64}` must be an int in the range of a 64-bit integer"),
    ],
)
def test_parameter_validation(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ConcurrencyLimiter(value)  # type: ignore[arg-type]


def test_eight_threads_never_exceed_the_limit_and_counts_add_up() -> None:
    limiter = ConcurrencyLimiter(3)
    threads, per_thread = 8, 2_000
    start = threading.Barrier(threads)
    lock = threading.Lock()
    holding = [0]
    most = [0]
    results: list[tuple[int, int]] = []

    def work() -> None:
        granted = refused = 0
        start.wait()
        for _ in range(per_thread):
            if limiter.try_acquire():
                granted += 1
                with lock:
                    holding[0] += 1
                    most[0] = max(most[0], holding[0])
                with lock:
                    holding[0] -= 1
                limiter.release()
            else:
                refused += 1
                limiter.note_rejected()
        with lock:
            results.append((granted, refused))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(results) == threads
    assert sum(g + r for g, r in results) == threads * per_thread
    assert limiter.rejected == sum(r for _, r in results)
    assert 1 <= most[0] <= 3
    assert limiter.in_flight == 0
