"""Projections whose read model and checkpoint share a PostgreSQL transaction (issue 7): a handler
that raises rolls back the batch's rows and its checkpoint, and the next run redoes the batch, so
each event leaves exactly one row."""

import asyncio
from typing import Any

import pytest

import catga
from catga.memory import MemoryCheckpointStore, MemoryEventStore

asyncpg = pytest.importorskip("asyncpg")
postgres = pytest.importorskip("catga.postgres")


class Counted(catga.Event, tag="tests.projection_tx.counted"):
    n: int


class Rows(catga.Projection):
    """Writes one row per event to `projection_rows` through the runner's transaction; raises on
    the event whose `n` is `fail_on`."""

    name = "rows"

    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on = fail_on

    @catga.applies(Counted)
    async def _counted(self, event: Counted, stored: catga.StoredEvent) -> None:
        connection = catga.current_transaction()
        assert connection is not None
        await connection.execute(
            "INSERT INTO projection_rows (event_id, position) VALUES ($1, $2)",
            f"{stored.stream_id}:{stored.version}",
            stored.position,
        )
        if event.n == self.fail_on:
            raise RuntimeError(f"boom on {event.n}")

    async def reset(self) -> None:
        await catga.current_transaction().execute("DELETE FROM projection_rows")


async def _rows(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch("SELECT event_id, count(*) AS n FROM projection_rows GROUP BY event_id")
    finally:
        await conn.close()
    return {str(record["event_id"]): int(record["n"]) for record in records}


async def _until(checkpoints: Any, position: int) -> None:
    for _ in range(500):
        if await checkpoints.get("rows") >= position:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the checkpoint never reached {position}")


async def _setup(dsn: str) -> tuple[MemoryEventStore, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE projection_rows (event_id text NOT NULL, position bigint NOT NULL)")
    finally:
        await conn.close()
    checkpoints = postgres.PostgresCheckpointStore(dsn)
    await checkpoints.migrate()
    return MemoryEventStore(), checkpoints


async def test_a_failing_batch_leaves_nothing_and_the_next_run_writes_each_event_once(postgres_dsn: str) -> None:
    store, checkpoints = await _setup(postgres_dsn)
    async with checkpoints:
        await store.append("s-1", [Counted(n=i) for i in range(1, 11)])  # positions 1..10
        ids = [f"s-1:{version}" for version in range(1, 11)]

        # batches [1-4], [5-8], [9-10]: the second fails on its third event (n=7)
        runner = catga.ProjectionRunner(store, checkpoints, [Rows(fail_on=7)], batch_size=4)
        with pytest.raises(RuntimeError, match="boom on 7"):
            await runner.catch_up()
        assert catga.current_transaction() is None
        assert await checkpoints.get("rows") == 4
        first = await _rows(postgres_dsn)
        assert first == dict.fromkeys(ids[:4], 1)  # nothing of batch 5-8

        # fixed: the next run redoes batch 5-8 and goes on
        fixed = catga.ProjectionRunner(store, checkpoints, [Rows()], batch_size=4)
        assert await fixed.catch_up() == 10
        assert await checkpoints.get("rows") == 10
        assert await _rows(postgres_dsn) == dict.fromkeys(ids, 1)

        # a rebuild resets the rows and the checkpoint together, then replays: still once each
        assert await fixed.rebuild(fixed.projections[0]) == 10
        assert await _rows(postgres_dsn) == dict.fromkeys(ids, 1)


async def test_run_follows_the_log_one_transaction_per_event(postgres_dsn: str) -> None:
    store, checkpoints = await _setup(postgres_dsn)
    async with checkpoints:
        await store.append("s-1", [Counted(n=1)])
        runner = catga.ProjectionRunner(store, checkpoints, [Rows(fail_on=3)])
        task = asyncio.create_task(runner.run())
        await _until(checkpoints, 1)  # caught up: now following
        await store.append("s-1", [Counted(n=2)], expected_version=1)
        await _until(checkpoints, 2)
        await store.append("s-1", [Counted(n=3)], expected_version=2)
        with pytest.raises(RuntimeError, match="boom on 3"):
            await asyncio.wait_for(task, 5)
        assert await checkpoints.get("rows") == 2
        assert await _rows(postgres_dsn) == {"s-1:1": 1, "s-1:2": 1}


async def test_the_transaction_only_exists_with_a_transactional_checkpoint_store() -> None:
    seen: list[object] = []

    class Looks(catga.Projection):
        @catga.applies(Counted)
        def _counted(self, event: Counted) -> None:
            seen.append(catga.current_transaction())

    store = MemoryEventStore()
    await store.append("s-1", [Counted(n=1)])
    await catga.ProjectionRunner(store, MemoryCheckpointStore(), [Looks()]).catch_up()
    assert seen == [None]


async def test_checkpoint_errors_in_the_transaction_name_the_table(postgres_dsn: str) -> None:
    checkpoints = postgres.PostgresCheckpointStore(postgres_dsn)  # not migrated
    async with checkpoints:
        with pytest.raises(catga.PersistenceError, match="no table `catga_checkpoints`"):
            async with checkpoints.transaction() as connection:
                await checkpoints.set_in(connection, "rows", 1)
