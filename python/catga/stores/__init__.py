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

`SagaStore` holds saga states (`catga.SagaExecutor`). The event and snapshot stores
(`EventStore`, `SnapshotStore`, `CheckpointStore`) arrive with the issue that defines them.
"""

from catga.stores._protocols import (
    CacheStore,
    ClaimResult,
    ClaimStatus,
    DeadLetterStore,
    IdempotencyKey,
    IdempotencyStore,
    SagaStore,
)

__all__ = [
    "CacheStore",
    "ClaimResult",
    "ClaimStatus",
    "DeadLetterStore",
    "IdempotencyKey",
    "IdempotencyStore",
    "SagaStore",
]

for _cls in (CacheStore, ClaimResult, ClaimStatus, DeadLetterStore, IdempotencyStore, SagaStore):
    _cls.__module__ = __name__
del _cls
