"""Redis stores (API.md section 8): the built-in behaviours' state, shared by a whole cluster.

`RedisIdempotencyStore`, `RedisCacheStore`, `RedisDeadLetterStore`, `RedisSagaStore` and the event
sourcing stores (`RedisEventStore`, `RedisSnapshotStore`, `RedisCheckpointStore`) implement
the protocols of `catga.stores` (and pass the same contract tests as `catga.memory`'s);
`RedisRateLimit` is the cluster-wide token bucket, usable wherever `catga.behaviors.RateLimit` is.
Each takes a `redis://` URL (the object then owns its client: `await x.aclose()`) or a
`redis.asyncio.Redis` you own and close. They use redis-py's asyncio client (with hiredis when
installed): `pip install catga[redis]`.

>>> import catga
>>> from catga.behaviors import Cache, DeadLetter, Idempotency
>>> url = "redis://127.0.0.1:6379/0"
>>> config = catga.Config.default().with_(
...     idempotency=Idempotency(store=RedisIdempotencyStore(url)),
...     cache=Cache(store=RedisCacheStore(url)),
...     dead_letter=DeadLetter(store=RedisDeadLetterStore(url)),
...     rate_limit=RedisRateLimit(url, rate=500.0, burst=100.0),
... )

Worker ids (API.md section 2): `Mediator.start()` of a mediator on a Redis store leases the process's
id-generator worker id from that store's server (`RedisWorkerIdLease`, keys `catga:worker_ids:*`)
unless `CATGA_WORKER_ID` pins it, the process already holds a lease (from a NATS transport), or
`Mediator(lease_worker_id=False)`.

Stores that are not in memory run as Python layers of the pipeline (one Redis round trip each per
message) instead of the core's native hooks. Server errors raise `catga.PersistenceError` naming
the server (never its password); values that cannot be encoded raise `catga.SerializationError`.
"""

try:
    import redis.asyncio  # noqa: F401  # checked here so the error names the extra to install
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError("`catga.redis` needs the `redis` extra: pip install catga[redis]") from exc

from catga.redis._cache import RedisCacheStore
from catga.redis._dead_letters import RedisDeadLetterStore
from catga.redis._events import RedisCheckpointStore, RedisEventStore, RedisSnapshotStore
from catga.redis._idempotency import RedisIdempotencyStore
from catga.redis._rate_limit import RedisRateLimit
from catga.redis._sagas import RedisSagaStore
from catga.redis._worker_id import RedisWorkerIdLease

__all__ = [
    "RedisCacheStore",
    "RedisCheckpointStore",
    "RedisDeadLetterStore",
    "RedisEventStore",
    "RedisIdempotencyStore",
    "RedisRateLimit",
    "RedisSagaStore",
    "RedisSnapshotStore",
    "RedisWorkerIdLease",
]

for _cls in (
    RedisCacheStore,
    RedisCheckpointStore,
    RedisDeadLetterStore,
    RedisEventStore,
    RedisIdempotencyStore,
    RedisRateLimit,
    RedisSagaStore,
    RedisSnapshotStore,
    RedisWorkerIdLease,
):
    _cls.__module__ = __name__
del _cls
