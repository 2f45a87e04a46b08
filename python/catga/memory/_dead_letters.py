"""`MemoryDeadLetterStore`: the default dead-letter store, the newest `max_size` records in memory."""

import threading
from collections.abc import Iterator
from itertools import islice

from catga._dead_letters import DeadLetterRecord

__all__ = ["MemoryDeadLetterStore"]


class MemoryDeadLetterStore:
    """The in-process `DeadLetterStore`: the newest `max_size` records, oldest first.

    Adding to a full store evicts the oldest record (counted in `evictions`). Safe to share between
    threads and event loops; `send_sync` records into it without an event loop.

    >>> import asyncio
    >>> store = MemoryDeadLetterStore(max_size=100)
    >>> asyncio.run(store.count())
    0
    """

    __slots__ = ("_lock", "_records", "evictions", "max_size")

    max_size: int
    evictions: int
    """Records dropped to make room for newer ones."""

    def __init__(self, max_size: int = 1000) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int):
            raise TypeError(f"`max_size` must be an int, got `{max_size!r}`")
        if max_size <= 0:
            raise ValueError(f"`max_size` must be positive, got `{max_size!r}`")
        self.max_size = max_size
        self.evictions = 0
        self._records: dict[int, DeadLetterRecord] = {}  # insertion order: oldest first
        self._lock = threading.Lock()

    def add_nowait(self, record: DeadLetterRecord) -> None:
        """`add` without an event loop (what `send_sync` uses)."""
        with self._lock:
            records = self._records
            records.pop(record.id, None)
            records[record.id] = record
            while len(records) > self.max_size:
                del records[next(iter(records))]
                self.evictions += 1

    async def add(self, record: DeadLetterRecord) -> None:
        """Keep `record` as the newest, evicting the oldest when the store is full."""
        self.add_nowait(record)

    async def list(self, limit: int | None = 100) -> list[DeadLetterRecord]:
        """Up to `limit` records (`None`: all), oldest first."""
        with self._lock:
            values = self._records.values()
            return list(values) if limit is None else list(islice(values, limit))

    async def get(self, id: int) -> DeadLetterRecord | None:
        """The record with this `id`, or `None`."""
        return self._records.get(id)

    async def update(self, record: DeadLetterRecord) -> None:
        """Replace the stored record with `record.id`, keeping its place; nothing if it is gone."""
        with self._lock:
            if record.id in self._records:
                self._records[record.id] = record

    async def delete(self, id: int) -> bool:
        """Remove the record with this `id`; whether there was one."""
        with self._lock:
            return self._records.pop(id, None) is not None

    async def purge(self) -> int:
        """Remove every record; how many there were."""
        with self._lock:
            count = len(self._records)
            self._records.clear()
            return count

    async def count(self) -> int:
        """How many records are stored."""
        return len(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[DeadLetterRecord]:
        with self._lock:
            return iter(list(self._records.values()))

    def __repr__(self) -> str:
        return f"MemoryDeadLetterStore(max_size={self.max_size}, records={len(self._records)})"
