"""catga's event stores against the raw clients, each beside its floor in the same run (issue 7).

Scenarios (every side in this process, on one event loop, over loopback to a `redis-server` and a
PostgreSQL cluster this module starts on free ports, as the tests do); all per event:

- `es-append-redis`: `RedisEventStore.append` of one event with `expected_version` (one Lua
  script) against a raw `XADD` of the same msgpack body; `es-append-redis-100`: one append of 100
  events against a pipeline (MULTI/EXEC) of 100 raw `XADD`s.
- `es-append-postgres`: `PostgresEventStore.append` of one event (a transaction: advisory lock,
  version check, insert) against one raw asyncpg `INSERT` into a table of the same shape;
  `es-append-postgres-100`: one append of 100 events against `copy_records_to_table` of 100 rows.
- `es-read-redis`, `es-read-postgres`: `read` of a 1,000-event stream against `XRANGE` / a raw
  `SELECT` of the same rows, each body decoded with msgspec into the event class.
- `aggregate-load`: `AggregateRepository.load` of a 10,000-event PostgreSQL stream from a snapshot
  at version 10,000 (case `catga-rust`) against the same load without snapshots (the floor), so
  the ratio is the saving. 100 events when the benchmarks are disabled (the `make test` smoke run).
"""

import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import catga
from _report import Measurement, measure_beside_floor
from catga._event_records import encode_event

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _servers import Server, spawn_postgres, spawn_redis  # the tests' server fixtures

ROUNDS = max(int(os.environ.get("CATGA_BENCH_ROUNDS", "300")) // 10, 3)
WARMUP = 2
APPENDS = 100  # single-event appends per round
BATCHES = 10  # appends of 100 events per round
READ_EVENTS = 1_000
LOAD_EVENTS = 10_000

Op = Callable[[], Awaitable[Any]]


class Deposited(catga.Event, tag="bench.es.deposited"):
    amount: int


class Account(catga.Aggregate):
    balance: int = 0
    deposits: int = 0

    @catga.applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount
        self.deposits += 1


EVENT = Deposited(amount=1)
WIRE, SCHEMA, BODY = encode_event(EVENT)
DECODER = msgspec.msgpack.Decoder(Deposited)
RAW_TABLE = "bench_raw_events"
RAW_COLUMNS = ["stream_id", "version", "type", "schema", "body"]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Any]]:
    with tempfile.TemporaryDirectory(prefix="catga-bench-es-") as directory:
        redis = spawn_redis(Path(directory) / "redis")
        try:
            postgres = spawn_postgres(Path(directory) / "postgres")
        except BaseException:
            redis.stop()
            raise
        try:
            yield redis, postgres
        finally:
            postgres.close()
            redis.stop()


def measure(
    benchmark: Any,
    record: Callable[[Measurement], None],
    scenario: str,
    case: str,
    batch: Callable[[], None],
    floor: Callable[[], None],
    per: int,
) -> None:
    """Time `batch` (`per` events) beside its floor; see `_report.measure_beside_floor`."""
    measure_beside_floor(benchmark, record, scenario, case, batch, floor, per=per, rounds=ROUNDS, warmup=WARMUP)


def _repeat(loop: asyncio.AbstractEventLoop, op: Op, times: int) -> Callable[[], None]:
    async def run() -> None:
        for _ in range(times):
            await op()

    return lambda: loop.run_until_complete(run())


def _counter() -> Callable[[], int]:
    """The next version of a stream, from 1."""
    state = [0]

    def step() -> int:
        state[0] += 1
        return state[0]

    return step


# ------------------------------------------------------------------------------------- the stores


@pytest.fixture(scope="module")
def redis_side(loop: asyncio.AbstractEventLoop, servers: tuple[Server, Any]) -> Iterator[tuple[Any, Any]]:
    import redis.asyncio

    from catga.redis import RedisEventStore

    store = RedisEventStore(servers[0].url)
    raw = redis.asyncio.from_url(servers[0].url)
    yield store, raw
    loop.run_until_complete(store.aclose())
    loop.run_until_complete(raw.aclose())


@pytest.fixture(scope="module")
def postgres_side(loop: asyncio.AbstractEventLoop, servers: tuple[Server, Any]) -> Iterator[tuple[Any, Any]]:
    import asyncpg  # type: ignore[import-untyped]

    from catga.postgres import PostgresEventStore

    store = PostgresEventStore(servers[1].dsn)
    # The raw table has the store's shape (columns, keys, defaults): a second store migrates it.
    raw_schema = PostgresEventStore(servers[1].dsn, table=RAW_TABLE)

    async def start() -> Any:
        await store.migrate()
        await raw_schema.migrate()
        await raw_schema.aclose()
        return await asyncpg.connect(servers[1].dsn)

    raw = loop.run_until_complete(start())
    yield store, raw
    loop.run_until_complete(raw.close())
    loop.run_until_complete(store.aclose())


# ------------------------------------------------------------------------------------- the appends


def test_append_redis(benchmark: Any, record: Any, loop: Any, redis_side: tuple[Any, Any]) -> None:
    store, raw = redis_side
    version, events = _counter(), [EVENT]

    async def append() -> None:
        expected = version() - 1
        await store.append("bench-append-1", events, expected_version=expected)

    async def xadd() -> None:
        await raw.xadd("bench:raw:append-1", {"type": WIRE, "schema": SCHEMA, "body": BODY})

    measure(
        benchmark,
        record,
        "es-append-redis",
        "catga-rust",
        _repeat(loop, append, APPENDS),
        _repeat(loop, xadd, APPENDS),
        APPENDS,
    )


def test_append_redis_100(benchmark: Any, record: Any, loop: Any, redis_side: tuple[Any, Any]) -> None:
    store, raw = redis_side
    events = [EVENT] * 100
    stream_version = [0]

    async def append() -> None:
        stream_version[0] = await store.append("bench-append-100", events, expected_version=stream_version[0])

    async def xadd_100() -> None:
        pipe = raw.pipeline()  # MULTI/EXEC: all or none, as an append is
        for _ in range(100):
            pipe.xadd("bench:raw:append-100", {"type": WIRE, "schema": SCHEMA, "body": BODY})
        await pipe.execute()

    measure(
        benchmark,
        record,
        "es-append-redis-100",
        "catga-rust",
        _repeat(loop, append, BATCHES),
        _repeat(loop, xadd_100, BATCHES),
        BATCHES * 100,
    )


def test_append_postgres(benchmark: Any, record: Any, loop: Any, postgres_side: tuple[Any, Any]) -> None:
    store, raw = postgres_side
    version, raw_version, events = _counter(), _counter(), [EVENT]
    insert = f"INSERT INTO {RAW_TABLE} (stream_id, version, type, schema, body) VALUES ($1, $2, $3, $4, $5)"

    async def append() -> None:
        expected = version() - 1
        await store.append("bench-append-1", events, expected_version=expected)

    async def raw_insert() -> None:
        await raw.execute(insert, "bench-append-1", raw_version(), WIRE, SCHEMA, BODY)

    measure(
        benchmark,
        record,
        "es-append-postgres",
        "catga-rust",
        _repeat(loop, append, APPENDS),
        _repeat(loop, raw_insert, APPENDS),
        APPENDS,
    )


def test_append_postgres_100(benchmark: Any, record: Any, loop: Any, postgres_side: tuple[Any, Any]) -> None:
    store, raw = postgres_side
    events = [EVENT] * 100
    stream_version, raw_version = [0], [0]

    async def append() -> None:
        stream_version[0] = await store.append("bench-append-100", events, expected_version=stream_version[0])

    async def copy_100() -> None:
        first = raw_version[0]
        raw_version[0] += 100
        rows = [("bench-append-100", first + i, WIRE, SCHEMA, BODY) for i in range(1, 101)]
        await raw.copy_records_to_table(RAW_TABLE, records=rows, columns=RAW_COLUMNS)

    measure(
        benchmark,
        record,
        "es-append-postgres-100",
        "catga-rust",
        _repeat(loop, append, BATCHES),
        _repeat(loop, copy_100, BATCHES),
        BATCHES * 100,
    )


# --------------------------------------------------------------------------------------- the reads


def test_read_redis(benchmark: Any, record: Any, loop: Any, redis_side: tuple[Any, Any]) -> None:
    store, raw = redis_side

    async def fill() -> None:
        await store.append("bench-read", [EVENT] * READ_EVENTS, expected_version=0)
        pipe = raw.pipeline()
        for _ in range(READ_EVENTS):
            pipe.xadd("bench:raw:read", {"type": WIRE, "schema": SCHEMA, "body": BODY})
        await pipe.execute()

    loop.run_until_complete(fill())

    async def read() -> None:
        events = await store.read("bench-read")
        assert len(events) == READ_EVENTS

    async def xrange() -> None:
        entries = await raw.xrange("bench:raw:read")
        decoded = [DECODER.decode(fields[b"body"]) for _, fields in entries]
        assert len(decoded) == READ_EVENTS

    measure(
        benchmark, record, "es-read-redis", "catga-rust", _repeat(loop, read, 1), _repeat(loop, xrange, 1), READ_EVENTS
    )


def test_read_postgres(benchmark: Any, record: Any, loop: Any, postgres_side: tuple[Any, Any]) -> None:
    store, raw = postgres_side
    select = f"""
        SELECT position, stream_id, version, type, schema, body, metadata, timestamp FROM {RAW_TABLE}
        WHERE stream_id = $1 ORDER BY version
    """

    async def fill() -> None:
        await store.append("bench-read", [EVENT] * READ_EVENTS, expected_version=0)
        rows = [("bench-read", version, WIRE, SCHEMA, BODY) for version in range(1, READ_EVENTS + 1)]
        await raw.copy_records_to_table(RAW_TABLE, records=rows, columns=RAW_COLUMNS)

    loop.run_until_complete(fill())

    async def read() -> None:
        events = await store.read("bench-read")
        assert len(events) == READ_EVENTS

    async def raw_select() -> None:
        rows = await raw.fetch(select, "bench-read")
        decoded = [DECODER.decode(row[5]) for row in rows]
        assert len(decoded) == READ_EVENTS

    measure(
        benchmark,
        record,
        "es-read-postgres",
        "catga-rust",
        _repeat(loop, read, 1),
        _repeat(loop, raw_select, 1),
        READ_EVENTS,
    )


# ------------------------------------------------------------------------------- aggregate loading


def test_aggregate_load(
    benchmark: Any, record: Any, loop: Any, servers: tuple[Server, Any], postgres_side: tuple[Any, Any]
) -> None:
    from catga.postgres import PostgresSnapshotStore

    store = postgres_side[0]
    events = 100 if benchmark.disabled else LOAD_EVENTS
    snapshots = PostgresSnapshotStore(servers[1].dsn)
    writer = catga.AggregateRepository(Account, store, snapshots=snapshots, snapshot_every=events)
    plain = catga.AggregateRepository(Account, store)
    with_snapshots = catga.AggregateRepository(Account, store, snapshots=snapshots, snapshot_every=events)

    async def write() -> None:
        await snapshots.migrate()
        account = await writer.load("bench-account")
        for _ in range(events // 100):  # saved 100 at a time; the last save stores the snapshot
            for _ in range(100):
                account.raise_event(EVENT)
            await writer.save(account)
        assert await snapshots.latest("bench-account") is not None

    loop.run_until_complete(write())

    async def load_plain() -> None:
        account = await plain.load("bench-account")
        assert account.version == account.deposits == events

    async def load_snapshot() -> None:
        account = await with_snapshots.load("bench-account")
        assert account.version == account.deposits == events

    try:
        measure(
            benchmark,
            record,
            "aggregate-load",
            "catga-rust",
            _repeat(loop, load_snapshot, 1),
            _repeat(loop, load_plain, 1),
            1,
        )
    finally:
        loop.run_until_complete(snapshots.aclose())
