"""The process's worker-id lease (API.md section 2), whichever backend it comes from.

A process leases one worker id and every id it makes carries it, so there is one lease per process
however many transports and mediators want one: the first to `acquire_shared()` leases it from its
backend (the NATS KV bucket for a `catga.nats.NatsTransport`, Redis for a mediator on Redis stores),
every later one takes a reference to that same lease, whatever its own backend, and the last
`release_shared()` frees it.

The backends' lease classes (`catga.nats._worker_id`, `catga.redis._worker_id`) subclass
`WorkerIdLeaseBase`, which does what leasing means the same way for both (which ids to try,
stamping the generator, renewing every TTL/3, reporting a lapse, leasing again after a loss) and
leaves them only their storage operations and the words that name their place in messages. This
module imports neither backend (neither nats-py nor redis-py is needed here).
"""

import asyncio
import logging
import math
import os
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol
from weakref import WeakKeyDictionary

from catga._core import IdGenerator, default_generator
from catga._errors import CatgaError

__all__ = [
    "SharedLease",
    "WorkerIdLeaseBase",
    "acquire_shared",
    "describe",
    "hold",
    "release_shared",
    "shared_lease",
    "shared_worker_id",
    "worker_id_pinned",
]

_logger: Final = logging.getLogger("catga")


def worker_id_pinned() -> bool:
    """Whether `CATGA_WORKER_ID` pins this process's worker id (set and not blank): then no lease."""
    return bool(os.environ.get("CATGA_WORKER_ID", "").strip())


def describe(exc: BaseException) -> str:
    """An exception as the leases' messages name it: its type in backticks, then its text if any.

    >>> describe(ConnectionRefusedError("refused"))
    '`ConnectionRefusedError` refused'
    >>> describe(TimeoutError())
    '`TimeoutError`'
    """
    text = str(exc)
    return f"`{type(exc).__name__}` {text}" if text else f"`{type(exc).__name__}`"


# ------------------------------------------------------------------------------------ the lease


class WorkerIdLeaseBase(ABC):
    """A worker id leased from a backend and renewed until released: what every backend shares.

    The public side is the leases' (`catga.nats.WorkerIdLease`, `catga.redis.RedisWorkerIdLease`):
    `acquire()` claims the first free id of the generator's worker bits starting at a random one
    (so processes starting together rarely race for the same key), stamps it into the generator
    with `set_worker_id` and renews it every TTL/3 in a background task; `release()` stops
    renewing and frees the id if it is still ours. A renewal that finds the key gone or taken
    logs an ERROR and leases again (the same id if it is free); one that cannot reach the backend
    for longer than the TTL logs an ERROR once per outage.

    A subclass passes its checked arguments to `__init__` and supplies the rest:

    - `_logger`, `_error` (the error type `acquire()` raises) and `_unreachable` (the exceptions
      that mean the backend cannot be reached now: `acquire()` turns them into `_error`, a
      renewal retries);
    - `_place` and `_full_place`, the backend's place in words for messages (the full one names
      the keys too), `_details()` for the errors' details and `_shown` (the attribute that
      `repr()` shows);
    - the storage operations: `_prepare()` before the first claim, `_claim_one()` to create one
      id's key, `_extend()` to renew it and `_free()` to delete it.
    """

    _logger: ClassVar[logging.Logger]
    _error: ClassVar[type[CatgaError]]
    _unreachable: ClassVar[tuple[type[Exception], ...]]
    _shown: ClassVar[str]

    def __init__(
        self,
        *,
        service: str,
        ttl: float,
        generator: IdGenerator | None,
        timeout: float,
        worker_bits: int | None,
    ) -> None:
        if not isinstance(service, str):
            raise TypeError(f"`service` must be a str, got `{service!r}`")
        self._generator = default_generator() if generator is None else generator
        bits = self._generator.layout[1]
        if worker_bits is not None:  # tests: a smaller id space, to fill it
            if not 0 <= worker_bits <= bits:
                raise ValueError(f"`_worker_bits` must be an int from 0 to `{bits}`, got `{worker_bits!r}`")
            bits = worker_bits
        self.service = service
        self.ttl = _seconds("ttl", ttl)
        self.timeout = _seconds("timeout", timeout)
        self.id_count = 1 << bits
        """How many worker ids the lease chooses from (`2 ** worker_bits`)."""
        # The token tells our key from one another holder wrote, also within one process.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{service}:{secrets.token_hex(4)}"
        """What the lease writes into its key: `host:pid:service:token`."""
        self._value = self.holder.encode()
        self._renew_every = self.ttl / 3
        self._worker_id: int | None = None
        self._held = False  # False while the id is not (known to be) ours
        self._renewal: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "released" if self._worker_id is None else f"worker_id={self._worker_id}"
        return f"<{type(self).__name__} {self._shown}={getattr(self, self._shown)!r} {state}>"

    @property
    def worker_id(self) -> int | None:
        """The leased worker id, or `None` before `acquire()` and after `release()`."""
        return self._worker_id

    async def acquire(self) -> int:
        """Lease a free worker id, stamp it into the generator and start renewing it; returns it."""
        if self._worker_id is not None:
            return self._worker_id
        try:
            await self._prepare()
            worker_id = await self._claim(prefer=None, renewing=False)
        except self._unreachable as exc:
            raise self._error(
                f"cannot lease a worker id from {self._full_place}: {describe(exc)} "
                f"({self._advice(exc)}set `CATGA_WORKER_ID` to pin one, or pass `lease_worker_id=False`)",
                **self._details(),
            ) from exc
        if worker_id is None:
            raise self._error(
                f"no free worker id in {self._full_place}: all `{self.id_count}` ids tried are leased by live "
                f"processes (a stopped process frees its id within `{self._lease_ttl():g}` s; "
                "or pin one with `CATGA_WORKER_ID`)",
                **self._details(),
                tried=self.id_count,
            )
        self._generator.set_worker_id(worker_id)
        self._worker_id = worker_id
        self._renewal = asyncio.ensure_future(self._renew_forever())
        self._logger.info("leased worker id `%d` from %s as `%s`", worker_id, self._place, self.holder)
        return worker_id

    async def release(self) -> None:
        """Stop renewing and free the id now (the key is deleted only if it is still ours)."""
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        worker_id, held = self._worker_id, self._held
        self._worker_id = None
        self._held = False
        if worker_id is None or not held:
            return
        await self._free(worker_id)

    # ------------------------------------------------------------------ what a backend supplies

    @property
    @abstractmethod
    def _place(self) -> str:
        """Where the ids are leased, for messages: "the NATS KV bucket `catga_worker_ids`"."""

    @property
    def _full_place(self) -> str:
        """`_place` as errors and tools show it: naming the keys too, where `_place` does not."""
        return self._place

    @abstractmethod
    def _details(self) -> dict[str, object]:
        """The details of the errors `acquire()` raises that name the place."""

    def _advice(self, exc: Exception) -> str:
        """Why `exc` may have happened, ending in "; " (or nothing), for the error of `acquire()`."""
        return ""

    def _lease_ttl(self) -> float:
        """Seconds after which a key that is not renewed expires (`ttl`, unless the backend's rules)."""
        return self.ttl

    @property
    def _renewal_timeout(self) -> float:
        # Renewals must give up before the next one is due; the first lease may take `timeout`.
        return min(self.timeout, self._renew_every)

    async def _prepare(self) -> None:  # noqa: B027 (optional: a no-op unless the backend needs a step)
        """Get the backend ready for the first claim (e.g. the bucket); raises `_unreachable` errors."""

    @abstractmethod
    async def _claim_one(self, worker_id: int, *, renewing: bool) -> bool:
        """Create the key of `worker_id` with our value, atomically; `False` while someone holds it.

        `renewing`: whether the call is one of the renewals (which must give up within
        `_renewal_timeout`) rather than the first lease (which may take `timeout`).
        """

    @abstractmethod
    async def _extend(self, worker_id: int) -> str | None:
        """Renew the key of `worker_id` if it is still ours: `None` when renewed (ours after all too).

        Else who holds the key now, as its value in text (`""` when nobody does: it expired).
        """

    @abstractmethod
    async def _free(self, worker_id: int) -> None:
        """Delete the key of `worker_id` only if it is still ours; logs (never raises) a failure."""

    # ------------------------------------------------------------------------------- helpers

    async def _claim(self, *, prefer: int | None, renewing: bool) -> int | None:
        """Claim the first free id (`prefer` first, then from a random offset), or `None`."""
        count = self.id_count
        start = secrets.randbelow(count)
        order = [(start + step) % count for step in range(count)]
        if prefer is not None and prefer < count:
            order.remove(prefer)
            order.insert(0, prefer)
        for worker_id in order:
            if await self._claim_one(worker_id, renewing=renewing):
                self._held = True
                return worker_id
        return None  # every one is leased by a live process

    async def _renew_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last_renewed = loop.time()
        reported = False
        while True:
            await asyncio.sleep(self._renew_every)
            worker_id = self._worker_id
            assert worker_id is not None, "renewing a released lease"
            try:
                await self._renew_once(worker_id)
            except self._unreachable as exc:
                overdue = loop.time() - last_renewed
                if overdue > self._lease_ttl() and not reported:
                    reported = True
                    self._logger.error(
                        "could not renew worker id `%d` in %s for `%.1f` s, longer than its `%g` s TTL: "
                        "another process may lease it now, and message ids may collide: %s",
                        worker_id,
                        self._place,
                        overdue,
                        self._lease_ttl(),
                        describe(exc),
                    )
                continue
            except Exception:  # a bug must not end the renewals silently: the id would lapse
                self._logger.exception("renewing worker id `%d` in %s failed", worker_id, self._place)
                continue
            if self._held:
                last_renewed = loop.time()
                reported = False

    async def _renew_once(self, worker_id: int) -> None:
        if not self._held:  # lost earlier, and no id was free then
            await self._reclaim(worker_id)
            return
        holder = await self._extend(worker_id)
        if holder is None:
            return
        # The key is gone (expired, deleted) or another process holds it: our lease is lost.
        self._held = False
        self._logger.error(
            "lost the lease of worker id `%d` in %s (%s): message ids made meanwhile may "
            "collide with another process's; leasing one again",
            worker_id,
            self._place,
            f"now held by `{holder}`" if holder else "it expired",
        )
        await self._reclaim(worker_id)

    async def _reclaim(self, worker_id: int) -> None:
        """Lease again after a loss, keeping the same id if it is free."""
        new_id = await self._claim(prefer=worker_id, renewing=True)
        if new_id is None:
            self._logger.error(
                "no free worker id in %s to replace the lost `%d`: still using it, retrying in `%g` s",
                self._full_place,
                worker_id,
                self._renew_every,
            )
            return
        if new_id != worker_id:
            self._generator.set_worker_id(new_id)
            self._worker_id = new_id
        self._logger.warning("leased worker id `%d` again from %s", new_id, self._place)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number of seconds, got `{value!r}`")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be positive and finite, got `{value!r}`")
    return float(value)


# ---------------------------------------------------------------------- the process-wide lease


class SharedLease(Protocol):
    """A held lease as the process-wide slot keeps it: its id, where it is from, and how to end it."""

    @property
    def worker_id(self) -> int | None:
        """The leased id (`None` only once closed)."""
        ...

    @property
    def backend(self) -> str:
        """Where the id is leased, for logs and tools (e.g. "the NATS KV bucket `catga_worker_ids`")."""
        ...

    async def close(self) -> None:
        """Release the id and close whatever the lease opened (its own connection)."""
        ...


class _Held:
    """A `WorkerIdLeaseBase` held for the process-wide slot, with what to close after releasing it."""

    def __init__(self, lease: WorkerIdLeaseBase, closing: Callable[[], Awaitable[None]] | None) -> None:
        self.lease = lease
        self.closing = closing

    @property
    def worker_id(self) -> int | None:
        return self.lease.worker_id

    @property
    def backend(self) -> str:
        return self.lease._full_place

    async def close(self) -> None:
        try:
            await self.lease.release()
        finally:
            if self.closing is not None:
                await self.closing()


async def hold(lease: WorkerIdLeaseBase, *, closing: Callable[[], Awaitable[None]] | None = None) -> SharedLease:
    """Acquire `lease` as the process-wide one: what an `open_lease` of `acquire_shared()` returns.

    `closing` closes what the lease was opened on for itself (a connection of its own), after the
    release, or at once when `acquire()` raises; `None` when the lease borrows its client.
    """
    try:
        await lease.acquire()
    except BaseException:
        if closing is not None:
            await closing()
        raise
    return _Held(lease, closing)


@dataclass
class _Shared:
    lease: SharedLease
    loop: asyncio.AbstractEventLoop
    users: int = 0


_shared: _Shared | None = None
_locks: "WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = WeakKeyDictionary()


def _forget_in_child() -> None:
    # A forked child holds no lease (its parent does, and renews it); it picks a random worker id
    # (see catga's id generator) and leases its own when it starts a transport or a mediator.
    global _shared
    _shared = None
    _locks.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


async def acquire_shared(open_lease: Callable[[], Awaitable[SharedLease]]) -> int:
    """Take a reference to the process's worker-id lease; `open_lease()` leases it if nobody holds it.

    A lease already held, from any backend, is shared (`open_lease` is not called). `open_lease`
    returns a lease that holds its id, or raises (then no reference is taken). Pair every call
    with `release_shared()`.
    """
    global _shared
    async with _lock():
        shared = _shared
        if shared is not None and shared.loop.is_closed():
            # An event loop ended without stopping its users: that lease renews no more.
            _logger.warning(
                "dropped the worker-id lease of a closed event loop (worker id `%s` from %s)",
                shared.lease.worker_id,
                shared.lease.backend,
            )
            _shared = shared = None
        if shared is None:
            lease = await open_lease()
            shared = _shared = _Shared(lease, asyncio.get_running_loop())
        shared.users += 1
        worker_id = shared.lease.worker_id
    assert worker_id is not None, "a shared lease is always held"
    return worker_id


async def release_shared() -> None:
    """Drop a reference taken by `acquire_shared()`; the last one releases the lease."""
    global _shared
    async with _lock():
        shared = _shared
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        _shared = None
    if shared.loop is asyncio.get_running_loop():
        await shared.lease.close()
    elif shared.loop.is_running():  # taken on another thread's loop: its tasks live there
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(shared.lease.close(), shared.loop))


def shared_lease() -> SharedLease | None:
    """The process-wide lease, or `None` when none is held (for tests and tools)."""
    shared = _shared
    return None if shared is None else shared.lease


def shared_worker_id() -> int | None:
    """The worker id of the process-wide lease, or `None` when none is held (for tests and tools)."""
    shared = _shared
    return None if shared is None else shared.lease.worker_id
