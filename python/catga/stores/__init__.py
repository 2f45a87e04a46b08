"""Store protocols (API.md section 8): the shared state of the built-in behaviours, by backend.

`IdempotencyStore`, `CacheStore` and `DeadLetterStore` are runtime-checkable `typing.Protocol`s
with async methods; each method's docstring says what consistency it guarantees, which every
backend must keep. The in-process implementations are in `catga.memory` (the defaults); the Redis
ones come with the distributed issue. Pass one to a behaviour to use it:

>>> import catga
>>> from catga.behaviors import Idempotency
>>> store = catga.memory.MemoryIdempotencyStore(max_entries=10_000)
>>> isinstance(store, catga.stores.IdempotencyStore)
True
>>> config = catga.Config.default().with_(idempotency=Idempotency(store=store))

`SagaStore` holds saga states (`catga.SagaExecutor`); `EventStore`, `SnapshotStore` and
`CheckpointStore` hold event-sourced streams, aggregate snapshots and projection checkpoints.
"""

from catga.stores._protocols import (
    CacheStore,
    CheckpointStore,
    ClaimResult,
    ClaimStatus,
    DeadLetterStore,
    EventStore,
    IdempotencyKey,
    IdempotencyStore,
    SagaStore,
    SnapshotStore,
)

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

for _cls in (
    CacheStore,
    CheckpointStore,
    ClaimResult,
    ClaimStatus,
    DeadLetterStore,
    EventStore,
    IdempotencyStore,
    SagaStore,
    SnapshotStore,
):
    _cls.__module__ = __name__
del _cls
