"""`PostgresSagaStore`: the saga states of every process of a cluster, in one table."""

from collections.abc import Sequence
from datetime import UTC
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from catga._errors import PersistenceError
from catga._saga_checks import (
    IN_PROGRESS,
    check_expected_version,
    check_limit,
    check_now,
    check_saga_id,
    check_state,
    check_status,
    created_at,
)
from catga._saga_state import SagaState, SagaStatus, decode_state, encode_state
from catga.postgres._client import PostgresError, PostgresStore, check_table

__all__ = ["PostgresSagaStore"]

_IN_PROGRESS_SQL: Final = ", ".join(f"'{status.value}'" for status in sorted(IN_PROGRESS))
# The listings' order: oldest first, ties by id in byte order (as the Redis store's sorted sets).
_ORDER: Final = 'ORDER BY created_at, saga_id COLLATE "C"'


class PostgresSagaStore(PostgresStore):
    """The `catga.stores.SagaStore` on PostgreSQL: one row per saga in `table`.

    `dsn_or_pool` is a `postgresql://` DSN (the store makes its own asyncpg pool on first use and
    closes it in `aclose()`) or an `asyncpg.Pool` (yours: the store never closes it). Call
    `await store.migrate()` once (it is idempotent, and safe from several processes at once) to
    create the table and its indexes; without it every call raises `catga.PersistenceError` saying
    so. The columns:

    - `saga_id` (the primary key), `name`, `status`, `version`, `lease_expires` (UNIX seconds,
      NULL without a lease), `created_at`, `updated_at`: copies of the state's fields, for the
      indexes and for queries;
    - `state`: the JSON of `catga.encode_state`, as `bytea` (kept byte for byte; read it in `psql`
      with `convert_from(state, 'UTF8')::jsonb`).

    `create` is an `INSERT ... ON CONFLICT DO NOTHING`; `save` an `UPDATE ... WHERE saga_id = $1
    AND version = $2` whose row count says whether it won (two processes saving the same version:
    the second waits for the first's row lock, then finds the version gone). `list` and `expired`
    are oldest first (`created_at`, ties by id). A record that does not decode raises
    `catga.PersistenceError` naming the saga; a server error raises `catga.PersistenceError`
    naming the server (never its password).

    >>> store = PostgresSagaStore("postgresql://catga:secret@127.0.0.1:5432/catga")
    >>> store
    PostgresSagaStore('postgresql://catga@127.0.0.1:5432/catga', table='catga_sagas')
    """

    __slots__ = ("_sql", "table")

    table: str

    def __init__(self, dsn_or_pool: Any, *, table: str = "catga_sagas") -> None:
        self.table = check_table(table)
        super().__init__(dsn_or_pool)
        index = table.rpartition(".")[2]
        columns = "saga_id, name, status, version, lease_expires, created_at, updated_at, state"
        self._sql = {
            "migrate": f"""
                CREATE TABLE IF NOT EXISTS {table} (
                    saga_id text PRIMARY KEY,
                    name text NOT NULL,
                    status text NOT NULL,
                    version integer NOT NULL,
                    lease_expires double precision,
                    created_at timestamptz NOT NULL,
                    updated_at timestamptz NOT NULL,
                    state bytea NOT NULL
                );
                CREATE INDEX IF NOT EXISTS {index}_created ON {table} (created_at, saga_id COLLATE "C");
                CREATE INDEX IF NOT EXISTS {index}_status ON {table} (status, created_at, saga_id COLLATE "C");
                CREATE INDEX IF NOT EXISTS {index}_lease ON {table} (lease_expires)
                    WHERE status IN ({_IN_PROGRESS_SQL});
            """,
            "create": f"""
                INSERT INTO {table} ({columns}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (saga_id) DO NOTHING
            """,
            "get": f"SELECT state FROM {table} WHERE saga_id = $1",
            "save": f"""
                UPDATE {table} SET name = $3, status = $4, version = $5, lease_expires = $6, created_at = $7,
                    updated_at = $8, state = $9
                WHERE saga_id = $1 AND version = $2
            """,
            "list": f"SELECT saga_id, state FROM {table} {_ORDER} LIMIT $1",
            "list_status": f"SELECT saga_id, state FROM {table} WHERE status = $1 {_ORDER} LIMIT $2",
            "expired": f"""
                SELECT saga_id, state FROM {table}
                WHERE status IN ({_IN_PROGRESS_SQL}) AND (lease_expires IS NULL OR lease_expires < $1)
                {_ORDER} LIMIT $2
            """,
            "delete": f"DELETE FROM {table} WHERE saga_id = $1",
        }

    async def migrate(self) -> None:
        """Create the table and its indexes if they are missing (idempotent; concurrent calls wait
        for each other on an advisory lock)."""
        pool = await self.pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"catga:migrate:{self.table}")
                await conn.execute(self._sql["migrate"])
        except PostgresError as exc:
            self.fail(f"create the table `{self.table}`", exc)

    async def _run(self, method: str, doing: str, *args: Any) -> Any:
        """`pool.<method>(sql, *args)` for the statement `doing` names; errors → `PersistenceError`."""
        pool = await self.pool()
        try:
            return await getattr(pool, method)(self._sql[doing], *args)
        except asyncpg.UndefinedTableError as exc:
            raise PersistenceError(
                f"PostgreSQL at `{self.where}` has no table `{self.table}`: call `await store.migrate()` first",
                url=self.where,
                table=self.table,
            ) from exc
        except PostgresError as exc:
            self.fail(_DOING[doing].format(*args), exc)

    async def create(self, state: SagaState) -> bool:
        """Store a new saga (`state.version == 1`); `False`, storing nothing, when the id exists."""
        check_state(state)
        if state.version != 1:
            raise ValueError(f"a new saga is at version 1, `{state.saga_id}` is at `{state.version!r}`")
        status = await self._run("execute", "create", *_row(state))
        return bool(status == "INSERT 0 1")

    async def get(self, saga_id: str) -> SagaState | None:
        """The saga's state, or `None`; a corrupt record raises `PersistenceError` naming the saga."""
        check_saga_id(saga_id)
        raw = await self._run("fetchval", "get", saga_id)
        return None if raw is None else decode_state(saga_id, raw)

    async def save(self, state: SagaState, expected_version: int) -> bool:
        """Replace the stored state if it is at `expected_version` (`state.version` must be the next
        one); whether it was replaced."""
        check_state(state)
        check_expected_version(state, expected_version)
        saga_id, *values = _row(state)
        status = await self._run("execute", "save", saga_id, expected_version, *values)
        return bool(status == "UPDATE 1")

    async def list(self, status: SagaStatus | None = None, limit: int | None = 100) -> Sequence[SagaState]:
        """Up to `limit` sagas (`None`: all), with that status if given, oldest first."""
        status = check_status(status)
        check_limit(limit)
        if status is None:
            rows = await self._run("fetch", "list", limit)
        else:
            rows = await self._run("fetch", "list_status", status.value, limit)
        return _decode_rows(rows)

    async def expired(self, now: float, limit: int | None = 100) -> Sequence[SagaState]:
        """In-progress sagas (`RUNNING`, `COMPENSATING`) whose `lease_expires` is before `now` (UNIX
        seconds), or that have no lease, oldest first: the ones `recover()` may take over."""
        now = check_now(now)
        check_limit(limit)
        return _decode_rows(await self._run("fetch", "expired", now, limit))

    async def delete(self, saga_id: str) -> bool:
        """Remove a saga; whether there was one."""
        check_saga_id(saga_id)
        status = await self._run("execute", "delete", saga_id)
        return bool(status == "DELETE 1")

    def __repr__(self) -> str:
        return f"PostgresSagaStore({self.url!r}, table={self.table!r})"


# What each statement does, for error messages (formatted with the statement's arguments).
_DOING: Final = {
    "create": "create saga `{0}`",
    "get": "read saga `{0}`",
    "save": "save saga `{0}`",
    "list": "list sagas",
    "list_status": "list sagas",
    "expired": "list expired sagas",
    "delete": "delete saga `{0}`",
}


def _row(state: SagaState) -> tuple[Any, ...]:
    """`saga_id, name, status, version, lease_expires, created_at, updated_at, state` of a state."""
    updated = state.updated_at if state.updated_at.tzinfo is not None else state.updated_at.replace(tzinfo=UTC)
    lease = None if state.lease_expires is None else float(state.lease_expires)
    return (
        state.saga_id,
        state.name,
        state.status.value,
        state.version,
        lease,
        created_at(state),
        updated,
        encode_state(state),
    )


def _decode_rows(rows: list[Any]) -> list[SagaState]:
    return [decode_state(row["saga_id"], row["state"]) for row in rows]
