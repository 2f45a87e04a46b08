"""The process's worker-id lease (API.md section 2), whichever backend it comes from.

A process leases one worker id and every id it makes carries it, so there is one lease per process
however many transports and mediators want one: the first to `acquire_shared()` leases it from its
backend (the NATS KV bucket for a `catga.nats.NatsTransport`, Redis for a mediator on Redis stores),
every later one takes a reference to that same lease, whatever its own backend, and the last
`release_shared()` frees it. The backends' lease classes live in `catga.nats._worker_id` and
`catga.redis._worker_id`; this module only keeps the process-wide reference count, without
importing either (neither nats-py nor redis-py is needed here).
"""

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol
from weakref import WeakKeyDictionary

__all__ = ["SharedLease", "acquire_shared", "release_shared", "shared_lease", "shared_worker_id", "worker_id_pinned"]

_logger: Final = logging.getLogger("catga")


def worker_id_pinned() -> bool:
    """Whether `CATGA_WORKER_ID` pins this process's worker id (set and not blank): then no lease."""
    return bool(os.environ.get("CATGA_WORKER_ID", "").strip())


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
