"""`MemoryIdempotencyStore`: the default idempotency store, over the core's sharded table."""

from collections.abc import Callable
from typing import Any

from catga import _core
from catga.stores._protocols import ClaimResult, ClaimStatus, IdempotencyKey

__all__ = ["MemoryIdempotencyStore"]

_STATUS = (ClaimStatus.CLAIMED, ClaimStatus.IN_FLIGHT, ClaimStatus.COMPLETED)


class MemoryIdempotencyStore:
    """The in-process `IdempotencyStore`: a sharded table in the core (Rust, or its pure twin).

    At most about `max_entries` entries (the capacity is split over the shards); a full shard drops
    its expired entries, then evicts its oldest completed entry (counted in `evictions`). Entries,
    claims included, expire `ttl` seconds after they were claimed or completed. `clock` (monotonic
    seconds) replaces `time.monotonic` in tests. Safe to share between threads and event loops.

    The idempotency behaviour reads `table` directly, synchronously and without a Python frame; the
    async methods are the `catga.stores.IdempotencyStore` protocol, for code written against any
    store.

    >>> import asyncio
    >>> store = MemoryIdempotencyStore(max_entries=1000, ttl=60.0)
    >>> asyncio.run(store.claim((42, 0)))
    ClaimResult(status=<ClaimStatus.CLAIMED: 0>, value=None)
    >>> asyncio.run(store.complete((42, 0), "done"))
    >>> asyncio.run(store.claim((42, 0)))
    ClaimResult(status=<ClaimStatus.COMPLETED: 2>, value='done')
    """

    __slots__ = ("table",)

    table: _core.IdempotencyTable
    """The core's `IdempotencyTable`: `claim(message_id, handler)`, `complete`, `release`, counters."""

    def __init__(
        self,
        max_entries: int = 100_000,
        ttl: float = 86400.0,
        *,
        shards: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.table = _core.IdempotencyTable(max_entries=max_entries, ttl=ttl, shards=shards, clock=clock)

    @property
    def ttl(self) -> float:
        """Seconds an entry (a claim or a result) is kept."""
        return self.table.ttl

    @property
    def max_entries(self) -> int:
        """The capacity asked for (held per shard, rounded up)."""
        return self.table.max_entries

    @property
    def hits(self) -> int:
        """Claims that found a completed entry."""
        return self.table.hits

    @property
    def misses(self) -> int:
        """Claims that did not find a completed entry (claimed, or in flight)."""
        return self.table.misses

    @property
    def evictions(self) -> int:
        """Live entries dropped to make room."""
        return self.table.evictions

    def __len__(self) -> int:
        return len(self.table)

    async def claim(self, key: IdempotencyKey) -> ClaimResult:
        """Claim `key`, atomically: see `catga.stores.IdempotencyStore.claim`."""
        status, value = self.table.claim(*key)
        return ClaimResult(_STATUS[status], value)

    async def complete(self, key: IdempotencyKey, result: Any) -> None:
        """Store `result` for `key` until the store's `ttl` runs out; the claim ends."""
        self.table.complete(key[0], key[1], result)

    async def release(self, key: IdempotencyKey) -> None:
        """End the claim on `key` without a result; a completed entry stays."""
        self.table.release(key[0], key[1])

    def __repr__(self) -> str:
        return f"MemoryIdempotencyStore(max_entries={self.max_entries!r}, ttl={self.ttl!r})"
