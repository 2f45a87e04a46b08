"""`MemoryCacheStore`: the default cache of query results, over the core's cache table."""

from collections.abc import Callable
from typing import Any

from catga import _core

__all__ = ["MemoryCacheStore"]


class MemoryCacheStore:
    """The in-process `CacheStore`: one table in the core (Rust, or its pure twin).

    At most `max_entries` entries, each with its own TTL; a full table evicts the entry put longest
    ago (counted in `evictions`). `clock` (monotonic seconds) replaces `time.monotonic` in tests.
    Safe to share between threads and event loops.

    The cache behaviour reads `table` directly, synchronously and without a Python frame; the
    async methods are the `catga.stores.CacheStore` protocol.

    >>> import asyncio
    >>> store = MemoryCacheStore(max_entries=100)
    >>> asyncio.run(store.put(1, b"key", {"total": 3}, ttl=30.0))
    >>> asyncio.run(store.get(1, b"key"))
    (True, {'total': 3})
    """

    __slots__ = ("table",)

    table: _core.CacheTable
    """The core's `CacheTable`: `get(group, key)`, `put(group, key, value, ttl)`, invalidation."""

    def __init__(self, max_entries: int = 10_000, *, clock: Callable[[], float] | None = None) -> None:
        self.table = _core.CacheTable(max_entries=max_entries, clock=clock)

    @property
    def max_entries(self) -> int:
        """The most entries kept at once."""
        return self.table.max_entries

    @property
    def hits(self) -> int:
        """Lookups that found a live entry."""
        return self.table.hits

    @property
    def misses(self) -> int:
        """Lookups that found none."""
        return self.table.misses

    @property
    def evictions(self) -> int:
        """Live entries dropped to make room."""
        return self.table.evictions

    def __len__(self) -> int:
        return len(self.table)

    async def get(self, group: int, key: bytes) -> tuple[bool, Any]:
        """`(True, value)` for a live entry, else `(False, None)`."""
        hit, value = self.table.get(group, key)
        return (bool(hit), value)

    async def put(self, group: int, key: bytes, value: Any, ttl: float) -> None:
        """Keep `value` under `(group, key)` for `ttl` seconds, replacing what was there."""
        self.table.put(group, key, value, ttl)

    async def invalidate_group(self, group: int) -> None:
        """Drop every entry of `group`."""
        self.table.invalidate_group(group)

    async def invalidate_where(self, group: int, predicate: Callable[[bytes], bool]) -> None:
        """Drop the entries of `group` whose key satisfies `predicate`."""
        self.table.invalidate_where(group, predicate)

    def __repr__(self) -> str:
        return f"MemoryCacheStore(max_entries={self.max_entries!r})"
