"""PostgreSQL stores (API.md section 8): state that must outlive every process, in tables.

`PostgresSagaStore` implements `catga.stores.SagaStore` (and passes the same contract tests as
`catga.memory.MemorySagaStore` and `catga.redis.RedisSagaStore`); `PostgresEventStore`,
`PostgresSnapshotStore` and `PostgresCheckpointStore` implement the event sourcing protocols. Each store takes a
`postgresql://` DSN (the store then makes and owns an asyncpg pool: `await store.aclose()`) or an
`asyncpg.Pool` you own and close, and `await store.migrate()` creates its table (idempotent).
They use asyncpg: `pip install catga[postgres]`.

>>> import catga
>>> store = PostgresSagaStore("postgresql://catga:secret@127.0.0.1:5432/catga")
>>> store.table
'catga_sagas'

Server errors raise `catga.PersistenceError` naming the server (never its password); a table that
was never created raises one saying to call `await store.migrate()`.
"""

try:
    import asyncpg  # type: ignore[import-untyped]  # noqa: F401  # checked here: the error names the extra
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError("`catga.postgres` needs the `postgres` extra: pip install catga[postgres]") from exc

from catga.postgres._events import PostgresCheckpointStore, PostgresEventStore, PostgresSnapshotStore
from catga.postgres._sagas import PostgresSagaStore

__all__ = ["PostgresCheckpointStore", "PostgresEventStore", "PostgresSagaStore", "PostgresSnapshotStore"]

for _cls in (PostgresCheckpointStore, PostgresEventStore, PostgresSagaStore, PostgresSnapshotStore):
    _cls.__module__ = __name__
del _cls
