"""`MemoryEventStore`, `MemorySnapshotStore` and `MemoryCheckpointStore`: event sourcing in this process (issue 7)."""

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from catga._errors import ConcurrencyConflict
from catga._event_records import StoredEvent, decode_event, encode_event
from catga._event_store_checks import (
    check_expected,
    check_limit,
    check_name,
    check_position,
    check_stream_id,
    check_until,
    check_version,
    decode_metadata,
    encode_metadata,
)

__all__ = ["MemoryCheckpointStore", "MemoryEventStore", "MemorySnapshotStore"]


class _Record(NamedTuple):
    stream_id: str
    version: int
    position: int
    type: str
    schema: int
    body: bytes
    metadata: bytes
    timestamp: datetime


class MemoryEventStore:
    """The in-process `catga.stores.EventStore`: every event, encoded, in a list of this process.

    Events are kept as their wire name, schema and msgpack body (like the remote stores), so a
    reader decodes them afresh (upcasting old schemas) and what a caller changes in an event it
    holds never changes the store. Appends are atomic under one lock; subscribers are woken when
    events are appended, from any thread or event loop. Everything is forgotten when the process
    ends: it suits tests and single-process applications.

    >>> import asyncio, catga
    >>> class Deposited(catga.Event, tag="docs.memory.deposited"):
    ...     amount: int
    >>> store = MemoryEventStore()
    >>> asyncio.run(store.append("account-1", [Deposited(amount=5), Deposited(amount=7)]))
    2
    >>> [(e.version, e.event.amount) for e in asyncio.run(store.read("account-1"))]
    [(1, 5), (2, 7)]
    >>> asyncio.run(store.append("account-1", [Deposited(amount=1)], expected_version=1))
    Traceback (most recent call last):
    ...
    catga.ConcurrencyConflict: stream `account-1` is at version `2`, expected `1`
    """

    __slots__ = ("_lock", "_log", "_streams", "_waiters")

    def __init__(self) -> None:
        self._log: list[_Record] = []  # position p is self._log[p - 1]
        self._streams: dict[str, list[int]] = {}  # stream id -> positions, version v at index v - 1
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._log)

    def __repr__(self) -> str:
        with self._lock:
            return f"<MemoryEventStore streams={len(self._streams)} events={len(self._log)}>"

    async def aclose(self) -> None:
        """Nothing to release (for symmetry with the remote stores)."""

    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Append `events` atomically; the stream's new version (see `catga.stores.EventStore.append`)."""
        check_stream_id(stream_id)
        expected = check_expected(expected_version)
        encoded = [encode_event(event) for event in events]  # SerializationError before any write
        raw_metadata = encode_metadata(metadata)
        return self._write(stream_id, [(wire, schema, body) for wire, schema, body in encoded], expected, raw_metadata)

    def _write(
        self, stream_id: str, encoded: Sequence[tuple[str, int, bytes]], expected: int | None, raw_metadata: bytes
    ) -> int:
        with self._lock:
            positions = self._streams.get(stream_id, [])
            current = len(positions)
            if expected is not None and expected != current:
                raise ConcurrencyConflict(stream_id, expected, current)
            if not encoded:
                return current
            now = datetime.now(UTC)
            if self._log and now < self._log[-1].timestamp:  # the clock stepped back: never decrease
                now = self._log[-1].timestamp
            positions = self._streams.setdefault(stream_id, positions)
            for wire, schema, body in encoded:
                position = len(self._log) + 1
                current += 1
                self._log.append(_Record(stream_id, current, position, wire, schema, body, raw_metadata, now))
                positions.append(position)
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: its subscriber is gone
                loop.call_soon_threadsafe(event.set)
        return current

    def _append_raw(self, stream_id: str, wire: str, schema: int, body: bytes) -> int:
        """Write one already-encoded event (tests: records of an older or newer schema)."""
        return self._write(stream_id, [(wire, schema, body)], None, b"")

    @staticmethod
    def _decode(record: _Record) -> StoredEvent:
        return StoredEvent(
            stream_id=record.stream_id,
            version=record.version,
            position=record.position,
            type=record.type,
            event=decode_event(record.stream_id, record.version, record.type, record.schema, record.body),
            timestamp=record.timestamp,
            metadata=decode_metadata(record.stream_id, record.version, record.metadata),
        )

    async def read(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """The stream's events from `from_version` to `to_version` (inclusive), appended at or
        before `until`, at most `limit`, in version order."""
        check_stream_id(stream_id)
        start = max(check_version("from_version", from_version) or 1, 1)
        stop = check_version("to_version", to_version, optional=True)
        when = check_until(until)
        most = check_limit(limit)
        with self._lock:
            positions = self._streams.get(stream_id, [])
            end = len(positions) if stop is None else min(stop, len(positions))
            records = [self._log[position - 1] for position in positions[start - 1 : end]]
        if when is not None:
            records = [record for record in records if record.timestamp <= when]
        if most is not None:
            records = records[:most]
        return [self._decode(record) for record in records]

    async def version(self, stream_id: str) -> int:
        """The stream's version (0: empty)."""
        check_stream_id(stream_id)
        with self._lock:
            return len(self._streams.get(stream_id, ()))

    def _slice(self, start: int, most: int | None) -> list[_Record]:
        with self._lock:
            end = len(self._log) if most is None else min(len(self._log), start - 1 + most)
            return self._log[start - 1 : end]

    async def read_all(self, from_position: int = 0, limit: int | None = None) -> list[StoredEvent]:
        """The global log from `from_position` (inclusive; 0 and 1 both mean the start) on, at most
        `limit`, in position order."""
        start = check_position(from_position)
        most = check_limit(limit)
        return [self._decode(record) for record in self._slice(start, most)]

    async def subscribe(self, from_position: int = 0) -> AsyncGenerator[StoredEvent, None]:
        """Every event from `from_position` on: the stored ones, then each one as it is appended."""
        start = check_position(from_position)
        wake = asyncio.Event()
        waiter = (asyncio.get_running_loop(), wake)
        with self._lock:
            self._waiters.add(waiter)
        try:
            while True:
                wake.clear()
                records = self._slice(start, 100)
                if not records:
                    await wake.wait()
                    continue
                for record in records:
                    yield self._decode(record)
                    start = record.position + 1
        finally:
            with self._lock:
                self._waiters.discard(waiter)


class MemorySnapshotStore:
    """The in-process `catga.stores.SnapshotStore`: the latest snapshot of each stream.

    >>> import asyncio
    >>> snapshots = MemorySnapshotStore()
    >>> asyncio.run(snapshots.save("o-1", 3, b"state"))
    >>> asyncio.run(snapshots.latest("o-1")), asyncio.run(snapshots.latest("o-2"))
    ((3, b'state'), None)
    """

    __slots__ = ("_lock", "_snapshots")

    def __init__(self) -> None:
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        with self._lock:
            return f"<MemorySnapshotStore streams={len(self._snapshots)}>"

    async def aclose(self) -> None:
        """Nothing to release (for symmetry with the remote stores)."""

    async def save(self, stream_id: str, version: int, state: bytes) -> None:
        """Keep `state` as the stream's snapshot at `version`, unless a newer one is kept."""
        check_stream_id(stream_id)
        check_version("version", version)
        if not isinstance(state, bytes | bytearray | memoryview):
            raise TypeError(f"`state` must be bytes, got `{type(state).__qualname__}`")
        with self._lock:
            kept = self._snapshots.get(stream_id)
            if kept is None or kept[0] <= version:
                self._snapshots[stream_id] = (version, bytes(state))

    async def latest(self, stream_id: str) -> tuple[int, bytes] | None:
        """`(version, state)` of the stream's latest snapshot, or `None`."""
        check_stream_id(stream_id)
        with self._lock:
            return self._snapshots.get(stream_id)


class MemoryCheckpointStore:
    """The in-process `catga.stores.CheckpointStore`: how far each projection has read.

    >>> import asyncio
    >>> checkpoints = MemoryCheckpointStore()
    >>> asyncio.run(checkpoints.set("orders", 7))
    >>> asyncio.run(checkpoints.get("orders")), asyncio.run(checkpoints.get("totals"))
    (7, 0)
    """

    __slots__ = ("_lock", "_positions")

    def __init__(self) -> None:
        self._positions: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        with self._lock:
            return f"<MemoryCheckpointStore {self._positions!r}>"

    async def aclose(self) -> None:
        """Nothing to release (for symmetry with the remote stores)."""

    async def get(self, name: str) -> int:
        """The last position `name` has handled (0: none)."""
        check_name(name)
        with self._lock:
            return self._positions.get(name, 0)

    async def set(self, name: str, position: int) -> None:
        """Record that `name` has handled everything up to `position`."""
        check_name(name)
        check_version("position", position)
        with self._lock:
            self._positions[name] = position
