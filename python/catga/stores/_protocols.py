"""The store protocols: what a backend must offer, and guarantee, to hold catga's shared state.

Each protocol is a runtime-checkable `typing.Protocol` with async methods. `catga.memory` has the
in-process implementations (the defaults); the Redis ones of the distributed issue implement the
same protocols and pass the same contract tests (`tests/test_stores_contract.py`). The consistency
each method promises is written in its docstring: a backend that cannot keep it is not a store.
"""

import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from catga._dead_letters import DeadLetterRecord
    from catga._event_records import StoredEvent
    from catga._saga_state import SagaState, SagaStatus

__all__ = [
    "CacheStore",
    "CheckpointStore",
    "ClaimResult",
    "ClaimStatus",
    "DeadLetterStore",
    "EventStore",
    "IdempotencyKey",
    "IdempotencyStore",
    "SagaStore",
    "SnapshotStore",
]

IdempotencyKey: TypeAlias = tuple[int, int]
"""`(message_id, handler_key)`: the handler key is 0 for a request, and for an event handler a
stable 64-bit hash of the handler's qualified name (the same in every process)."""


class ClaimStatus(enum.IntEnum):
    """What `IdempotencyStore.claim` found (the values of the core's `CLAIMED`, `IN_FLIGHT`, `COMPLETED`)."""

    CLAIMED = 0
    """The key was free: the caller now holds the claim and must `complete` or `release` it."""
    IN_FLIGHT = 1
    """Another caller holds the claim: the message is being handled right now."""
    COMPLETED = 2
    """The message was handled: `ClaimResult.value` is the stored result."""


class ClaimResult(NamedTuple):
    """The answer of `IdempotencyStore.claim`: a status and, when `COMPLETED`, the stored result.

    A tuple, so `status, value = await store.claim(key)` works, as it does on the core's table.

    >>> ClaimResult(ClaimStatus.COMPLETED, "order-1")
    ClaimResult(status=<ClaimStatus.COMPLETED: 2>, value='order-1')
    """

    status: ClaimStatus
    value: Any = None


@runtime_checkable
class IdempotencyStore(Protocol):
    """Remembers which messages were handled, and their results, so each is handled at most once.

    A key goes through `free → claimed → completed` (and `claimed → free` on `release`). Entries
    expire `ttl` seconds after they were claimed or completed, and the key is then free again: a
    completed message may run again after `ttl`, and a claim that is never completed or released
    (its holder crashed) stops blocking its message. `ttl` is the store's (every implementation
    takes it at construction), so a claim's lease and a result's lifetime are one setting.
    """

    @property
    def ttl(self) -> float:
        """Seconds an entry, a claim or a result, is kept."""
        ...

    async def claim(self, key: IdempotencyKey) -> ClaimResult:
        """Claim `key` for handling, atomically.

        Of any number of concurrent callers, in any number of processes sharing the store, exactly
        one gets `CLAIMED` for a free key; the others get `IN_FLIGHT` until it is completed or
        released. A completed key answers `COMPLETED` with the stored result (also `None`) until it
        expires. Each call counts as a hit (`COMPLETED`) or a miss (otherwise) where the store
        keeps counters.
        """
        ...

    async def complete(self, key: IdempotencyKey, result: Any) -> None:
        """Store `result` for `key`, for the store's `ttl`; the claim ends.

        The result is stored whatever the key's state (its claim may have expired or been
        released): the handler did run. Every `claim` that starts after this returns sees
        `COMPLETED` with `result` (read your writes, across processes for a shared store). A store
        that cannot keep `result` (it cannot be encoded, say) raises and stores nothing; the
        caller then releases the claim and logs a warning.
        """
        ...

    async def release(self, key: IdempotencyKey) -> None:
        """End the claim on `key` without a result (the handler failed): the key is free again.

        Releasing a key that is not claimed does nothing; a completed entry is not removed.
        """
        ...


@runtime_checkable
class CacheStore(Protocol):
    """Query results by `(group, key)`, each kept for its own TTL.

    `group` identifies a query type (`catga.behaviors._hooks.group_of`), `key` is the query's
    encoded fields (`cache_key`), so a store can drop a whole type at once. Reads may be stale by
    at most the entry's TTL unless an invalidation ran; there is no claim: two concurrent misses
    both run the handler and the later `put` wins.
    """

    async def get(self, group: int, key: bytes) -> tuple[bool, Any]:
        """`(True, value)` for a live entry (also when `value` is `None`), else `(False, None)`."""
        ...

    async def put(self, group: int, key: bytes, value: Any, ttl: float) -> None:
        """Store `value`, replacing an entry under the same key, for `ttl` seconds.

        A `get` that starts after this returns sees it. A value the store cannot keep raises; the
        caller logs a warning and the query still succeeds.
        """
        ...

    async def invalidate_group(self, group: int) -> None:
        """Drop every entry of `group`: no `get` that starts after this returns sees one."""
        ...

    async def invalidate_where(self, group: int, predicate: Callable[[bytes], bool]) -> None:
        """Drop the entries of `group` whose key satisfies `predicate` (called once per key).

        No `get` that starts after this returns sees a dropped entry; entries put meanwhile may be
        kept.
        """
        ...


@runtime_checkable
class DeadLetterStore(Protocol):
    """Messages that finally failed, as `catga.DeadLetterRecord`s, oldest first.

    Bounded: adding to a full store evicts the oldest record. A record's `id` is unique in the
    store (adding a record whose `id` is stored replaces it, as the newest); `add`, `update` and
    `delete` are atomic per record: a reader sees a record whole, before or after a change, and a
    change is seen by every read that starts after it returned.
    """

    async def add(self, record: "DeadLetterRecord") -> None:
        """Keep `record` as the newest, evicting the oldest when the store is full."""
        ...

    async def list(self, limit: int | None = 100) -> Sequence["DeadLetterRecord"]:
        """Up to `limit` records (`None`: all), oldest first."""
        ...

    async def get(self, id: int) -> "DeadLetterRecord | None":
        """The record with this `id`, or `None`."""
        ...

    async def update(self, record: "DeadLetterRecord") -> None:
        """Replace the stored record with `record.id` (its place in the order is kept).

        Updating a record that is no longer stored (deleted, evicted) does nothing.
        """
        ...

    async def delete(self, id: int) -> bool:
        """Remove the record with this `id`; whether there was one."""
        ...

    async def purge(self) -> int:
        """Remove every record; how many there were."""
        ...

    async def count(self) -> int:
        """How many records are stored."""
        ...


@runtime_checkable
class SagaStore(Protocol):
    """Saga states by `saga_id` (issue 6), each written with a compare-and-set on its `version`.

    Every write of a running saga goes through `save(state, expected_version)`: it stores `state`
    (whose `version` is `expected_version + 1`) only if the stored one is still at
    `expected_version`, so two processes never both advance or take over one saga. A record that
    cannot be decoded raises `catga.PersistenceError` naming the saga, from `get` and from the
    listings (which skip nothing silently: the error names the saga, the caller decides).
    """

    async def create(self, state: "SagaState") -> bool:
        """Store a new saga (`state.version == 1`); `False`, storing nothing, when the id exists."""
        ...

    async def get(self, saga_id: str) -> "SagaState | None":
        """The saga's state, or `None`."""
        ...

    async def save(self, state: "SagaState", expected_version: int) -> bool:
        """Replace the stored state if it is at `expected_version`; whether it was replaced."""
        ...

    async def list(self, status: "SagaStatus | None" = None, limit: int | None = 100) -> "Sequence[SagaState]":
        """Up to `limit` sagas (`None`: all), with that status if given, oldest first."""
        ...

    async def expired(self, now: float, limit: int | None = 100) -> "Sequence[SagaState]":
        """In-progress sagas (`RUNNING`, `COMPENSATING`) whose `lease_expires` is before `now`
        (UNIX seconds), or that have no lease: the ones `recover()` may take over."""
        ...

    async def delete(self, saga_id: str) -> bool:
        """Remove a saga; whether there was one."""
        ...


@runtime_checkable
class EventStore(Protocol):
    """Event streams and the global log (issue 7). Versions are 1-based per stream (an empty stream
    is at 0); positions are 1-based and increase in append order across all streams."""

    async def append(
        self,
        stream_id: str,
        events: "Sequence[object]",
        expected_version: int | None = None,
        *,
        metadata: "dict[str, Any] | None" = None,
    ) -> int:
        """Append `events` atomically (all or none); the stream's new version.

        `expected_version=None` appends whatever the version; an int must equal the stream's
        version, else `catga.ConcurrencyConflict(stream_id, expected, actual)` and nothing is
        written. An empty `events` writes nothing and returns the current version. An event that
        cannot be stored raises `SerializationError` before anything is written.
        """
        ...

    async def read(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until: "datetime | None" = None,
        limit: int | None = None,
    ) -> "list[StoredEvent]":
        """The stream's events from `from_version` to `to_version` (inclusive), appended at or before
        `until` (time travel), at most `limit`, in version order."""
        ...

    async def version(self, stream_id: str) -> int:
        """The stream's version (0: empty)."""
        ...

    async def read_all(self, from_position: int = 0, limit: int | None = None) -> "list[StoredEvent]":
        """The global log from `from_position` (inclusive) on, at most `limit`, in position order."""
        ...

    def subscribe(self, from_position: int = 0) -> "AsyncIterator[StoredEvent]":
        """Every event from `from_position` on: catches up on the stored ones, then follows new ones."""
        ...


@runtime_checkable
class SnapshotStore(Protocol):
    """The latest snapshot of each stream: its version and the aggregate's encoded state."""

    async def save(self, stream_id: str, version: int, state: bytes) -> None:
        """Keep `state` as the stream's snapshot at `version` (a newer one replaces an older one)."""
        ...

    async def latest(self, stream_id: str) -> "tuple[int, bytes] | None":
        """`(version, state)` of the stream's latest snapshot, or `None`."""
        ...


@runtime_checkable
class CheckpointStore(Protocol):
    """How far each projection has read the global log."""

    async def get(self, name: str) -> int:
        """The last position `name` has handled (0: none)."""
        ...

    async def set(self, name: str, position: int) -> None:
        """Record that `name` has handled everything up to `position`."""
        ...
