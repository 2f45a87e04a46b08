"""`PostgresEventStore`, `PostgresSnapshotStore` and `PostgresCheckpointStore`: event sourcing on
PostgreSQL."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Final, cast

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from catga._errors import ConcurrencyConflict, PersistenceError
from catga._event_records import StoredEvent, decode_event, encode_event
from catga._event_store_checks import (
    check_events,
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
from catga.postgres._client import PostgresError, PostgresStore, check_table

__all__ = ["PostgresCheckpointStore", "PostgresEventStore", "PostgresSnapshotStore"]

_BATCH: Final = 500  # events per query while a subscription catches up


class _TableStore(PostgresStore):
    """A store over one table: `migrate()` and `_run`, which says to migrate when it is missing."""

    __slots__ = ("_migrate_sql", "table")

    table: str

    def __init__(self, dsn_or_pool: Any, table: str, migrate_sql: str) -> None:
        self.table = check_table(table)
        super().__init__(dsn_or_pool)
        self._migrate_sql = migrate_sql

    async def migrate(self) -> None:
        """Create the table and its indexes if they are missing (idempotent; concurrent calls wait
        for each other on an advisory lock)."""
        pool = await self.pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"catga:migrate:{self.table}")
                await conn.execute(self._migrate_sql)
        except PostgresError as exc:
            self.fail(f"create the table `{self.table}`", exc)

    def _missing(self, exc: BaseException) -> PersistenceError:
        return PersistenceError(
            f"PostgreSQL at `{self.where}` has no table `{self.table}`: call `await store.migrate()` first",
            url=self.where,
            table=self.table,
        )

    async def _run(self, method: str, doing: str, sql: str, *args: Any) -> Any:
        pool = await self.pool()
        try:
            return await getattr(pool, method)(sql, *args)
        except asyncpg.UndefinedTableError as exc:
            raise self._missing(exc) from exc
        except PostgresError as exc:
            self.fail(doing, exc)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, table={self.table!r})"


class PostgresEventStore(_TableStore):
    """The `catga.stores.EventStore` on PostgreSQL: one row per event in `table`.

    `dsn_or_pool` is a `postgresql://` DSN (the store makes its own asyncpg pool on first use and
    closes it in `aclose()`) or an `asyncpg.Pool` (yours: the store never closes it). Call
    `await store.migrate()` once (idempotent, safe from several processes at once) to create the
    table; without it every call raises `catga.PersistenceError` saying so. The columns:
    `position` (a `bigserial` primary key: the global log), `stream_id`, `version` (unique per
    stream), `type` (the wire name), `schema`, `body` (the msgspec msgpack of the event),
    `metadata` (msgpack, empty when none) and `timestamp` (`clock_timestamp()` at the append).

    `append` is one transaction that first takes a transaction-level advisory lock on the table,
    then reads the stream's version, checks `expected_version` and inserts every event in one
    statement: appends are serialised, so positions are taken and committed in the same order
    and a subscriber polling `position > last` never skips an event that commits later with a
    smaller position (positions only leave gaps when an insert fails after taking one, e.g. the
    server going down mid-append; the unique `(stream_id, version)` is the last line of defence
    and turns into `ConcurrencyConflict`). The price is one append at a time per table.
    `subscribe` catches up, then polls every `poll_interval` seconds.

    >>> store = PostgresEventStore("postgresql://catga:secret@127.0.0.1:5432/catga")
    >>> store
    PostgresEventStore('postgresql://catga@127.0.0.1:5432/catga', table='catga_events')
    """

    __slots__ = ("_sql", "poll_interval")

    poll_interval: float

    def __init__(self, dsn_or_pool: Any, *, table: str = "catga_events", poll_interval: float = 0.1) -> None:
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float):
            raise TypeError(f"`poll_interval` must be a number of seconds, got `{poll_interval!r}`")
        if not poll_interval > 0:
            raise ValueError(f"`poll_interval` must be positive, got `{poll_interval!r}`")
        index = check_table(table).rpartition(".")[2]
        super().__init__(
            dsn_or_pool,
            table,
            f"""
                CREATE TABLE IF NOT EXISTS {table} (
                    position bigserial PRIMARY KEY,
                    stream_id text NOT NULL,
                    version integer NOT NULL,
                    type text NOT NULL,
                    schema integer NOT NULL,
                    body bytea NOT NULL,
                    metadata bytea NOT NULL DEFAULT ''::bytea,
                    timestamp timestamptz NOT NULL DEFAULT clock_timestamp(),
                    CONSTRAINT {index}_stream_version UNIQUE (stream_id, version)
                );
            """,
        )
        self.poll_interval = float(poll_interval)
        columns = "position, stream_id, version, type, schema, body, metadata, timestamp"
        self._sql = {
            "lock": "SELECT pg_advisory_xact_lock(hashtext($1))",
            "version": f"SELECT coalesce(max(version), 0) FROM {table} WHERE stream_id = $1",
            "insert": f"""
                INSERT INTO {table} (stream_id, version, type, schema, body, metadata, timestamp)
                SELECT $1, $2 + e.ord, e.type, e.schema, e.body, $6, clock_timestamp()
                FROM unnest($3::text[], $4::integer[], $5::bytea[]) WITH ORDINALITY AS e(type, schema, body, ord)
                ORDER BY e.ord
            """,
            "read": f"""
                SELECT {columns} FROM {table}
                WHERE stream_id = $1 AND version >= $2 AND ($3::integer IS NULL OR version <= $3)
                    AND ($4::timestamptz IS NULL OR timestamp <= $4)
                ORDER BY version LIMIT $5
            """,
            "read_all": f"SELECT {columns} FROM {table} WHERE position >= $1 ORDER BY position LIMIT $2",
        }

    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Append `events` atomically (all or none); the stream's new version.

        `expected_version=None` appends whatever the version; an int must equal the stream's
        version, else `catga.ConcurrencyConflict` and nothing is written. An empty `events` writes
        nothing and returns the current version; an event that is not a `catga.Message` (or does
        not encode) raises `SerializationError` before anything is written.
        """
        check_stream_id(stream_id)
        expected = check_expected(expected_version)
        events = check_events(events)
        encoded = [encode_event(event) for event in events]
        meta = encode_metadata(metadata)
        if not encoded:
            return await self.version(stream_id)
        pool = await self.pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(self._sql["lock"], f"catga:events:{self.table}")
                current = int(await conn.fetchval(self._sql["version"], stream_id))
                if expected is not None and expected != current:
                    raise ConcurrencyConflict(stream_id, expected, current)
                await conn.execute(
                    self._sql["insert"],
                    stream_id,
                    current,
                    [wire for wire, _, _ in encoded],
                    [schema for _, schema, _ in encoded],
                    [body for _, _, body in encoded],
                    meta,
                )
        except asyncpg.UniqueViolationError as exc:  # pragma: no cover - the lock prevents it
            actual = await self.version(stream_id)
            raise ConcurrencyConflict(stream_id, expected, actual) from exc
        except asyncpg.UndefinedTableError as exc:
            raise self._missing(exc) from exc
        except PostgresError as exc:
            self.fail(f"append to stream `{stream_id}`", exc)
        return current + len(encoded)

    async def version(self, stream_id: str) -> int:
        """The stream's version (0: empty)."""
        check_stream_id(stream_id)
        sql = self._sql["version"]
        return int(await self._run("fetchval", f"read the version of stream `{stream_id}`", sql, stream_id))

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
        first = max(cast(int, check_version("from_version", from_version)), 1)
        last = check_version("to_version", to_version, optional=True)
        when = check_until(until)
        limit = check_limit(limit)
        rows = await self._run(
            "fetch", f"read stream `{stream_id}`", self._sql["read"], stream_id, first, last, when, limit
        )
        return [_decode(row) for row in rows]

    async def read_all(self, from_position: int = 0, limit: int | None = None) -> list[StoredEvent]:
        """The global log from `from_position` (inclusive) on, at most `limit`, in position order."""
        first = check_position(from_position)
        limit = check_limit(limit)
        rows = await self._run("fetch", "read the event log", self._sql["read_all"], first, limit)
        return [_decode(row) for row in rows]

    async def subscribe(self, from_position: int = 0) -> AsyncIterator[StoredEvent]:
        """Every event from `from_position` on: catches up on the stored ones, then follows new
        ones (polling every `poll_interval` seconds) until the consumer stops iterating."""
        following = check_position(from_position)
        while True:
            batch = await self.read_all(following, _BATCH)
            for event in batch:
                yield event
                following = event.position + 1
            if len(batch) < _BATCH:
                await asyncio.sleep(self.poll_interval)


def _decode(row: Any) -> StoredEvent:
    position, stream_id, version, wire, schema, body, metadata, timestamp = row
    return StoredEvent(
        stream_id=stream_id,
        version=version,
        position=position,
        type=wire,
        event=decode_event(stream_id, version, wire, schema, body),
        timestamp=timestamp,
        metadata=decode_metadata(stream_id, version, metadata),
    )


class PostgresSnapshotStore(_TableStore):
    """The `catga.stores.SnapshotStore` on PostgreSQL: one row per stream in `table` (`stream_id`
    primary key, `version`, `state` bytea, `updated_at`); an older snapshot never replaces a newer
    one. Call `await store.migrate()` first."""

    __slots__ = ()

    def __init__(self, dsn_or_pool: Any, *, table: str = "catga_snapshots") -> None:
        super().__init__(
            dsn_or_pool,
            table,
            f"""
                CREATE TABLE IF NOT EXISTS {check_table(table)} (
                    stream_id text PRIMARY KEY,
                    version integer NOT NULL,
                    state bytea NOT NULL,
                    updated_at timestamptz NOT NULL DEFAULT now()
                );
            """,
        )

    async def save(self, stream_id: str, version: int, state: bytes) -> None:
        """Keep `state` as the stream's snapshot at `version` (unless a newer one is stored)."""
        check_stream_id(stream_id)
        check_version("version", version)
        if not isinstance(state, bytes | bytearray | memoryview):
            raise TypeError(f"`state` must be bytes, got `{state!r}`")
        sql = f"""
            INSERT INTO {self.table} (stream_id, version, state) VALUES ($1, $2, $3)
            ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state,
                updated_at = now()
            WHERE {self.table}.version <= excluded.version
        """
        await self._run("execute", f"save the snapshot of stream `{stream_id}`", sql, stream_id, version, bytes(state))

    async def latest(self, stream_id: str) -> tuple[int, bytes] | None:
        """`(version, state)` of the stream's latest snapshot, or `None`."""
        check_stream_id(stream_id)
        sql = f"SELECT version, state FROM {self.table} WHERE stream_id = $1"
        row = await self._run("fetchrow", f"read the snapshot of stream `{stream_id}`", sql, stream_id)
        return None if row is None else (int(row[0]), bytes(row[1]))


class PostgresCheckpointStore(_TableStore):
    """The `catga.stores.CheckpointStore` on PostgreSQL: one row per projection in `table` (`name`
    primary key, `position`, `updated_at`). Call `await store.migrate()` first.

    `transaction()` and `set_in(connection, name, position)` let a checkpoint share a transaction
    with a read model in the same database: `catga.ProjectionRunner` uses them to handle each batch
    and store its checkpoint in one transaction (see `catga.current_transaction`)."""

    __slots__ = ()

    def __init__(self, dsn_or_pool: Any, *, table: str = "catga_checkpoints") -> None:
        super().__init__(
            dsn_or_pool,
            table,
            f"""
                CREATE TABLE IF NOT EXISTS {check_table(table)} (
                    name text PRIMARY KEY,
                    position bigint NOT NULL,
                    updated_at timestamptz NOT NULL DEFAULT now()
                );
            """,
        )

    async def get(self, name: str) -> int:
        """The last position `name` has handled (0: none)."""
        check_name(name)
        sql = f"SELECT position FROM {self.table} WHERE name = $1"
        position = await self._run("fetchval", f"read checkpoint `{name}`", sql, name)
        return 0 if position is None else int(position)

    def _set_sql(self, name: str, position: int) -> str:
        check_name(name)
        check_version("position", position)
        return f"""
            INSERT INTO {self.table} (name, position) VALUES ($1, $2)
            ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()
        """

    async def set(self, name: str, position: int) -> None:
        """Record that `name` has handled everything up to `position`."""
        sql = self._set_sql(name, position)
        await self._run("execute", f"write checkpoint `{name}`", sql, name, position)

    async def set_in(self, connection: Any, name: str, position: int) -> None:
        """`set`, on `connection` (from `transaction()`): kept only if that transaction commits."""
        sql = self._set_sql(name, position)
        try:
            await connection.execute(sql, name, position)
        except asyncpg.UndefinedTableError as exc:
            raise self._missing(exc) from exc
        except PostgresError as exc:
            self.fail(f"write checkpoint `{name}`", exc)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """A pool connection inside a transaction, committed when the block ends and rolled back
        when it raises (the block's error propagates unchanged). Failing to begin or commit raises
        `catga.PersistenceError`."""
        pool = await self.pool()
        try:
            connection = await pool.acquire()
        except PostgresError as exc:
            self.fail("acquire a connection", exc)
        try:
            transaction = connection.transaction()
            try:
                await transaction.start()
            except PostgresError as exc:
                self.fail("begin a transaction", exc)
            try:
                yield connection
            except BaseException:
                with contextlib.suppress(*PostgresError):
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except PostgresError as exc:
                self.fail("commit a transaction", exc)
        finally:
            await pool.release(connection)
