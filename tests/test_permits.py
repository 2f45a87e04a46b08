"""`catga._permits.Permits`: the FIFO waiting room of a ConcurrencyLimit, over the core's limiter.

Handover order, timeouts, cancellation while waiting (also right after a permit was handed over),
use from successive event loops and from another thread, and that no permit ever leaks.
"""

import asyncio
import random
import threading

import pytest

from catga import ConcurrencyLimited, _core
from catga._errors import HookErrors
from catga._permits import Permits

ERRORS = HookErrors("`max_concurrent=1`")


def make(max_concurrent: int = 1, wait_timeout: float = 5.0) -> tuple[Permits, object]:
    limiter = _core.ConcurrencyLimiter(max_concurrent)
    return Permits(limiter, wait_timeout, ERRORS), limiter


async def hold(permits: Permits, limiter: object) -> None:
    """Take a permit the way the core does: the limiter first, then the waiting room."""
    if not limiter.try_acquire():  # type: ignore[attr-defined]
        await permits.acquire()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_bad_wait_timeout() -> None:
    limiter = _core.ConcurrencyLimiter(1)
    with pytest.raises(ValueError, match="`wait_timeout` must be positive, got `0`"):
        Permits(limiter, 0, ERRORS)
    with pytest.raises(ValueError, match="`wait_timeout`"):
        Permits(limiter, float("nan"), ERRORS)
    with pytest.raises(TypeError, match="`wait_timeout` must be a number"):
        Permits(limiter, True, ERRORS)  # type: ignore[arg-type]
    assert repr(Permits(limiter, 2, ERRORS)) == "Permits(wait_timeout=2.0, waiting=0)"


async def test_acquire_takes_a_free_permit_at_once() -> None:
    permits, limiter = make(2)
    await permits.acquire()
    await permits.acquire()
    assert limiter.in_flight == 2
    assert permits.waiting == 0
    permits.release()
    permits.release()
    assert limiter.in_flight == 0


async def test_release_hands_the_permit_to_the_oldest_waiter_in_order() -> None:
    permits, limiter = make(1)
    await hold(permits, limiter)
    order: list[int] = []

    async def worker(n: int) -> None:
        await hold(permits, limiter)
        order.append(n)

    tasks = [asyncio.create_task(worker(n)) for n in range(4)]
    await settle()
    assert permits.waiting == 4
    for expected in range(4):
        permits.release()
        # The permit goes straight to the waiter: it is never free in between.
        assert limiter.in_flight == 1
        assert not limiter.try_acquire()
        await settle()
        assert order == list(range(expected + 1))
    await asyncio.gather(*tasks)
    permits.release()
    assert limiter.in_flight == 0
    assert permits.waiting == 0
    assert limiter.rejected == 0


async def test_a_newcomer_does_not_jump_the_queue() -> None:
    permits, limiter = make(1)
    await hold(permits, limiter)
    waiter = asyncio.create_task(hold(permits, limiter))
    await settle()
    permits.release()  # handed to the waiter, which has not run yet
    assert not limiter.try_acquire()  # a newcomer finds no free permit
    await waiter
    permits.release()
    assert limiter.in_flight == 0


async def test_waiting_longer_than_the_timeout_is_concurrency_limited() -> None:
    permits, limiter = make(1, wait_timeout=0.05)
    await hold(permits, limiter)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConcurrencyLimited, match="`max_concurrent=1`") as caught:
        await hold(permits, limiter)
    assert loop.time() - started >= 0.04
    assert caught.value.retryable
    assert limiter.rejected == 1
    assert permits.waiting == 0
    # The timed-out waiter is gone: the held permit goes back to the limiter.
    permits.release()
    assert limiter.in_flight == 0


async def test_timeouts_count_each_rejection_and_leave_the_rest_waiting() -> None:
    permits, limiter = make(1)
    await hold(permits, limiter)
    short = Permits(limiter, 0.03, ERRORS)
    patient = asyncio.create_task(hold(permits, limiter))
    impatient = asyncio.create_task(hold(short, limiter))
    await asyncio.sleep(0.08)
    with pytest.raises(ConcurrencyLimited):
        await impatient
    assert not patient.done()
    permits.release()
    await patient
    assert limiter.in_flight == 1
    permits.release()
    assert limiter.in_flight == 0
    assert limiter.rejected == 1


async def test_a_permit_handed_over_just_before_the_timeout_is_kept() -> None:
    permits, limiter = make(1, wait_timeout=0.02)
    await hold(permits, limiter)
    waiter = asyncio.create_task(hold(permits, limiter))
    await settle()
    permits.release()
    await asyncio.sleep(0.05)  # the timer would have fired by now
    await waiter  # no ConcurrencyLimited: it got the permit in time
    assert limiter.rejected == 0
    assert limiter.in_flight == 1
    permits.release()
    assert limiter.in_flight == 0


async def test_cancelled_while_waiting_leaves_the_queue() -> None:
    permits, limiter = make(1)
    await hold(permits, limiter)
    waiter = asyncio.create_task(hold(permits, limiter))
    await settle()
    assert permits.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert permits.waiting == 0
    permits.release()
    assert limiter.in_flight == 0
    assert limiter.rejected == 0  # a cancellation is not a rejection


async def test_cancelled_after_the_handover_passes_the_permit_on() -> None:
    permits, limiter = make(1)
    await hold(permits, limiter)
    first = asyncio.create_task(hold(permits, limiter))
    second = asyncio.create_task(hold(permits, limiter))
    await settle()
    permits.release()  # handed to `first`, which has not resumed yet
    first.cancel()  # ... and is cancelled before it does
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the permit went on to the next waiter
    assert limiter.in_flight == 1
    permits.release()
    assert limiter.in_flight == 0


async def test_cancelled_after_the_handover_with_nobody_waiting_returns_the_permit() -> None:
    permits, limiter = make(1)
    await hold(permits, limiter)
    only = asyncio.create_task(hold(permits, limiter))
    await settle()
    permits.release()
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    assert limiter.in_flight == 0
    assert limiter.try_acquire()
    limiter.release()


async def test_a_cancelled_waiter_in_the_middle_is_skipped() -> None:
    permits, limiter = make(1)
    await hold(permits, limiter)
    got: list[str] = []

    async def worker(name: str) -> None:
        await hold(permits, limiter)
        got.append(name)

    a, b, c = (asyncio.create_task(worker(name)) for name in "abc")
    await settle()
    b.cancel()
    await settle()
    assert permits.waiting == 2
    permits.release()
    await a
    permits.release()
    await c
    assert got == ["a", "c"]
    permits.release()
    assert limiter.in_flight == 0


def test_not_bound_to_an_event_loop() -> None:
    permits, limiter = make(1, wait_timeout=0.03)

    async def one_run() -> None:
        await hold(permits, limiter)
        waiter = asyncio.create_task(hold(permits, limiter))
        await settle()
        permits.release()
        await waiter
        with pytest.raises(ConcurrencyLimited):
            await hold(permits, limiter)
        permits.release()

    asyncio.run(one_run())
    asyncio.run(one_run())
    assert limiter.in_flight == 0
    assert limiter.rejected == 2


def test_a_release_from_another_thread_wakes_the_waiter() -> None:
    permits, limiter = make(1)
    assert limiter.try_acquire()  # held by the main thread
    ready = threading.Event()
    outcome: list[object] = []

    async def wait_in_thread() -> None:
        task = asyncio.create_task(permits.acquire())
        await settle()
        ready.set()
        await task
        outcome.append("acquired")
        permits.release()

    thread = threading.Thread(target=lambda: asyncio.run(wait_in_thread()))
    thread.start()
    assert ready.wait(5)
    permits.release()  # no running loop here: handed over through the waiter's loop
    thread.join(5)
    assert outcome == ["acquired"]
    assert limiter.in_flight == 0


def test_a_handover_to_a_closed_loop_goes_to_the_next_waiter() -> None:
    permits, limiter = make(1)
    assert limiter.try_acquire()
    # A waiter whose loop is gone (its `asyncio.run` ended without cancelling it) never takes a permit.
    dead_loop = asyncio.new_event_loop()
    dead = dead_loop.create_future()
    dead_loop.close()
    permits._waiters.append(dead)
    permits.release()
    assert limiter.in_flight == 0
    assert permits.waiting == 0


async def test_stress_no_permit_leaks_and_the_limit_holds() -> None:
    permits, limiter = make(3, wait_timeout=0.02)
    rng = random.Random(7)
    running = 0
    peak = 0
    outcomes = {"ok": 0, "limited": 0, "cancelled": 0}

    async def worker() -> None:
        nonlocal running, peak
        try:
            await hold(permits, limiter)
        except ConcurrencyLimited:
            outcomes["limited"] += 1
            return
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005]))
        finally:
            running -= 1
            permits.release()
        outcomes["ok"] += 1

    tasks = [asyncio.create_task(worker()) for _ in range(200)]
    for task in rng.sample(tasks, 40):
        await asyncio.sleep(0)
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes["cancelled"] = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert peak <= 3
    assert limiter.in_flight == 0
    assert permits.waiting == 0
    assert limiter.rejected == outcomes["limited"]
    assert sum(outcomes.values()) == 200
    assert outcomes["ok"] > 0
