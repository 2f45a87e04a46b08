"""`Permits`: the waiting room of a `ConcurrencyLimit` (docs/internals.md, "Built-in behaviours").

The core's `ConcurrencyLimiter` hands out permits without waiting (`try_acquire() -> bool`). When
none is free and the behaviour may wait, the core awaits `Permits.acquire()`, which queues the
caller; a finishing message calls `Permits.release()`, which hands its permit straight to the
oldest waiter (so a newcomer cannot take it first) or, when nobody waits, gives it back to the
limiter. A permit handed over is never counted free in between: `limiter.in_flight` stays put.

Not bound to an event loop: each waiter is a future of the loop it waits on, made when it starts
waiting, so one `Permits` serves successive `asyncio.run` calls (and loops in other threads: a
handover to another loop goes through `call_soon_threadsafe`).
"""

import asyncio
import contextlib
import threading
from collections import deque
from typing import Any, Protocol

__all__ = ["Permits"]


class _Limiter(Protocol):
    """What `Permits` uses of the core's `ConcurrencyLimiter`."""

    def try_acquire(self) -> bool: ...
    def release(self) -> None: ...
    def note_rejected(self) -> None: ...


class _Errors(Protocol):
    """What `Permits` uses of the hooks' error factory (`catga._errors.HookErrors`)."""

    def concurrency_limited(self) -> BaseException: ...


# A waiter's future resolves to GRANTED (it now holds a permit) or EXPIRED (it waited too long).
_GRANTED = True
_EXPIRED = False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Permits:
    """FIFO waiters for the permits of one `ConcurrencyLimiter`.

    `acquire()` waits up to `wait_timeout` seconds for a permit; on timeout it calls
    `limiter.note_rejected()` and raises `errors.concurrency_limited()`. Cancelled while waiting, it
    leaves the queue, and a permit handed to it in the meantime goes on to the next waiter, so none
    leaks. `release()` gives a held permit to the oldest live waiter, else back to the limiter.
    """

    __slots__ = ("_errors", "_limiter", "_lock", "_waiters", "wait_timeout")

    wait_timeout: float

    def __init__(self, limiter: _Limiter, wait_timeout: float, errors: _Errors) -> None:
        if isinstance(wait_timeout, bool) or not isinstance(wait_timeout, int | float):
            raise TypeError(f"`wait_timeout` must be a number, got `{wait_timeout!r}`")
        if not wait_timeout > 0:
            raise ValueError(f"`wait_timeout` must be positive, got `{wait_timeout!r}`")
        self._limiter = limiter
        self._errors = errors
        self.wait_timeout = float(wait_timeout)
        # Live waiters, oldest first. Guarded by `_lock`, which also covers the limiter calls that
        # decide between "a permit is free" and "queue up", so a release cannot slip in between
        # (a waiter queued after a release went to the limiter would wait for nothing).
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """How many callers wait for a permit right now."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Wait for a permit, up to `wait_timeout` seconds; on return the caller holds one.

        Raises the `ConcurrencyLimited` error of `errors` on timeout (after
        `limiter.note_rejected()`).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            # The core tried the limiter just before; a permit may have come back since (another
            # thread, or a caller that does not go through the core).
            if self._limiter.try_acquire():
                return
            waiter: asyncio.Future[bool] = loop.create_future()
            self._waiters.append(waiter)
        timer = loop.call_later(self.wait_timeout, self._expire, waiter)
        try:
            outcome = await waiter
        except BaseException:
            # Cancelled (or something was thrown in): leave the queue; a permit already handed to
            # this waiter belongs to nobody now, so pass it on.
            timer.cancel()
            self._abandon(waiter)
            raise
        timer.cancel()
        if outcome is _EXPIRED:
            self._limiter.note_rejected()
            raise self._errors.concurrency_limited()

    def release(self) -> None:
        """Give up a held permit: to the oldest waiter still waiting, else back to the limiter."""
        loop = _running_loop()
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if waiter.done():  # cancelled or expired, not yet removed
                    continue
                owner = waiter.get_loop()
                if owner is loop:
                    waiter.set_result(_GRANTED)
                    return
                try:
                    owner.call_soon_threadsafe(self._hand_over, waiter)
                except RuntimeError:  # its loop is closed: nobody will ever take it
                    continue
                return
            self._limiter.release()

    def _hand_over(self, waiter: "asyncio.Future[bool]") -> None:
        """Finish a handover on the waiter's own loop (it was made from another thread)."""
        if waiter.done():  # cancelled while the permit was on its way: pass it on
            self.release()
        else:
            waiter.set_result(_GRANTED)

    def _expire(self, waiter: "asyncio.Future[bool]") -> None:
        """The waiter's time is up (a timer on its loop)."""
        with self._lock:
            if waiter.done():
                return
            self._remove(waiter)
            waiter.set_result(_EXPIRED)

    def _abandon(self, waiter: "asyncio.Future[bool]") -> None:
        with self._lock:
            self._remove(waiter)
            granted = waiter.done() and not waiter.cancelled() and waiter.result() is _GRANTED
        if granted:
            self.release()

    def _remove(self, waiter: "asyncio.Future[Any]") -> None:
        with contextlib.suppress(ValueError):  # already handed over (popped) or never queued
            self._waiters.remove(waiter)

    def __repr__(self) -> str:
        return f"Permits(wait_timeout={self.wait_timeout!r}, waiting={self.waiting})"
