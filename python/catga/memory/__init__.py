"""In-process stores (API.md section 8): the defaults of the built-in behaviours.

`MemoryIdempotencyStore` and `MemoryCacheStore` keep their entries in the core's tables (Rust, or
the pure-Python twin), which the behaviours use synchronously, without a Python frame;
`MemoryDeadLetterStore` keeps the last dead letters, `MemorySagaStore` saga states,
`MemoryEventStore`, `MemorySnapshotStore` and `MemoryCheckpointStore` event streams, snapshots and projection
checkpoints (issue 7). Each implements its protocol of
`catga.stores`, and is safe to share between threads and event loops.

>>> import catga
>>> from catga.behaviors import Idempotency
>>> store = catga.memory.MemoryIdempotencyStore(max_entries=10_000, ttl=3600.0)
>>> config = catga.Config.default().with_(idempotency=Idempotency(store=store))
"""

from catga.memory._cache import MemoryCacheStore
from catga.memory._dead_letters import MemoryDeadLetterStore
from catga.memory._events import MemoryCheckpointStore, MemoryEventStore, MemorySnapshotStore
from catga.memory._idempotency import MemoryIdempotencyStore
from catga.memory._sagas import MemorySagaStore

__all__ = [
    "MemoryCacheStore",
    "MemoryCheckpointStore",
    "MemoryDeadLetterStore",
    "MemoryEventStore",
    "MemoryIdempotencyStore",
    "MemorySagaStore",
    "MemorySnapshotStore",
]

for _cls in (
    MemoryCacheStore,
    MemoryCheckpointStore,
    MemoryDeadLetterStore,
    MemoryEventStore,
    MemoryIdempotencyStore,
    MemorySagaStore,
    MemorySnapshotStore,
):
    _cls.__module__ = __name__
del _cls
