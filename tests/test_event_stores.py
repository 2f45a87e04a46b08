"""The contract of `catga.stores.EventStore` (issue 7), run against every implementation, then what
is proper to the remote ones (snapshots, checkpoints, unreachable servers, a missing table).

Backends: `catga.memory.MemoryEventStore` (skipped while it does not exist), `catga.redis.RedisEventStore`
(on the session's throw-away redis-server: `redis_url`, flushed per test) and
`catga.postgres.PostgresEventStore` (on the session's throw-away PostgreSQL: `postgres_dsn`, a fresh
schema per test). Each remote backend has a backdoor that writes a corrupt record, to check that it
is reported as a `SerializationError` naming the stream and the version.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import catga
import catga.memory
from catga._event_records import StoredEvent
from catga.stores import CheckpointStore, EventStore, SnapshotStore


class Placed(catga.Event, tag="tests.es.placed"):
    order_id: str
    total: int


class Shipped(catga.Event, tag="tests.es.shipped"):
    order_id: str


def placed(n: int, order: str = "o-1") -> Placed:
    return Placed(order_id=order, total=n)


# --------------------------------------------------------------------------------- the backends


@dataclass
class Backend:
    store: Any
    corrupt: Callable[[str, int], Awaitable[None]] | None  # garbles the body of stream/version


async def memory_backend(request: pytest.FixtureRequest, closing: list[Any]) -> Backend:
    if not hasattr(catga.memory, "MemoryEventStore"):
        pytest.skip("catga.memory.MemoryEventStore does not exist yet")
    return Backend(catga.memory.MemoryEventStore(), None)


async def redis_backend(request: pytest.FixtureRequest, closing: list[Any]) -> Backend:
    from catga.redis import RedisEventStore

    store = RedisEventStore(request.getfixturevalue("redis_url"), poll_interval=0.02)
    closing.append(store)

    async def corrupt(stream_id: str, version: int) -> None:
        position = int(await store.client.lindex(f"{store.prefix}s:{stream_id}", version - 1) or 0)
        await store.client.hset(f"{store.prefix}e:{position}", "body", b"\xc1 not msgpack")

    return Backend(store, corrupt)


async def postgres_backend(request: pytest.FixtureRequest, closing: list[Any]) -> Backend:
    import asyncpg  # type: ignore[import-untyped]

    from catga.postgres import PostgresEventStore

    dsn: str = request.getfixturevalue("postgres_dsn")
    store = PostgresEventStore(dsn, poll_interval=0.02)
    closing.append(store)
    await store.migrate()

    async def corrupt(stream_id: str, version: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                f"UPDATE {store.table} SET body = $3 WHERE stream_id = $1 AND version = $2",
                stream_id,
                version,
                b"\xc1 not msgpack",
            )
        finally:
            await conn.close()

    return Backend(store, corrupt)


BACKENDS = [
    pytest.param(memory_backend, id="memory"),
    pytest.param(redis_backend, id="redis"),
    pytest.param(postgres_backend, id="postgres"),
]


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Stores appended here are closed after the test, in its event loop."""
    opened: list[Any] = []
    yield opened
    for item in opened:
        await item.aclose()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, closing: list[Any]) -> Backend:
    made: Backend = await request.param(request, closing)
    return made


def versions(events: list[StoredEvent]) -> list[int]:
    return [event.version for event in events]


# ----------------------------------------------------------------------------------- the contract


async def test_it_is_an_event_store(backend: Backend) -> None:
    assert isinstance(backend.store, EventStore)


async def test_a_new_stream_is_at_version_zero(backend: Backend) -> None:
    store = backend.store
    assert await store.version("nothing") == 0
    assert await store.read("nothing") == []
    assert await store.read_all() == []


async def test_append_returns_the_new_version_and_read_decodes(backend: Backend) -> None:
    store = backend.store
    before = datetime.now(UTC) - timedelta(seconds=5)
    sent = [placed(1), placed(2), Shipped(order_id="o-1")]
    assert await store.append("o-1", sent[:1]) == 1
    assert await store.append("o-1", sent[1:], metadata={"user": "ann", "n": 3}) == 3
    assert await store.version("o-1") == 3
    events = await store.read("o-1")
    assert versions(events) == [1, 2, 3]
    assert [event.event for event in events] == sent
    assert [event.type for event in events] == ["tests.es.placed", "tests.es.placed", "tests.es.shipped"]
    assert {event.stream_id for event in events} == {"o-1"}
    assert events[0].metadata == {}
    assert events[1].metadata == events[2].metadata == {"user": "ann", "n": 3}
    after = datetime.now(UTC) + timedelta(seconds=5)
    for event in events:
        assert event.timestamp.tzinfo is not None
        assert before <= event.timestamp <= after
    assert events[0].timestamp <= events[1].timestamp <= events[2].timestamp


async def test_expected_version_must_match(backend: Backend) -> None:
    store = backend.store
    assert await store.append("o-1", [placed(1)], expected_version=0) == 1
    assert await store.append("o-1", [placed(2)], expected_version=1) == 2
    for wrong in (0, 1, 3, 7):
        with pytest.raises(catga.ConcurrencyConflict) as caught:
            await store.append("o-1", [placed(99), placed(100)], expected_version=wrong)
        assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == ("o-1", wrong, 2)
    with pytest.raises(catga.ConcurrencyConflict) as caught:
        await store.append("fresh", [placed(1)], expected_version=1)
    assert caught.value.actual == 0
    assert await store.version("o-1") == 2
    assert await store.version("fresh") == 0
    assert [event.event.total for event in await store.read("o-1")] == [1, 2]
    assert len(await store.read_all()) == 2


async def test_an_empty_append_writes_nothing(backend: Backend) -> None:
    store = backend.store
    assert await store.append("o-1", []) == 0
    assert await store.append("o-1", [placed(1), placed(2)]) == 2
    assert await store.append("o-1", []) == 2
    assert await store.append("o-1", [], expected_version=2) == 2
    assert len(await store.read_all()) == 2


async def test_a_non_message_writes_nothing(backend: Backend) -> None:
    store = backend.store
    await store.append("o-1", [placed(1)])
    with pytest.raises(catga.SerializationError):
        await store.append("o-1", [placed(2), {"not": "an event"}, placed(3)])
    with pytest.raises(catga.SerializationError):
        await store.append("o-1", [object()], expected_version=1)
    assert await store.version("o-1") == 1
    assert len(await store.read_all()) == 1


async def test_a_batch_is_atomic_and_contiguous(backend: Backend) -> None:
    store = backend.store
    assert await store.append("o-1", [placed(n) for n in range(1, 51)]) == 50
    events = await store.read("o-1")
    assert versions(events) == list(range(1, 51))
    assert [event.event.total for event in events] == list(range(1, 51))
    assert [event.position for event in events] == list(range(1, 51))


async def test_read_ranges_and_limit(backend: Backend) -> None:
    store = backend.store
    await store.append("o-1", [placed(n) for n in range(1, 11)])
    await store.append("o-2", [placed(n, "o-2") for n in range(1, 4)])
    assert versions(await store.read("o-1", 4)) == [4, 5, 6, 7, 8, 9, 10]
    assert versions(await store.read("o-1", 4, 6)) == [4, 5, 6]
    assert versions(await store.read("o-1", 3, limit=2)) == [3, 4]
    assert versions(await store.read("o-1", limit=0)) == []
    assert versions(await store.read("o-1", 9, 20)) == [9, 10]
    assert versions(await store.read("o-1", 11)) == []
    assert versions(await store.read("o-1", 6, 5)) == []
    assert versions(await store.read("o-2")) == [1, 2, 3]
    assert {event.stream_id for event in await store.read("o-2")} == {"o-2"}


async def test_read_until_travels_in_time(backend: Backend) -> None:
    store = backend.store
    await store.append("o-1", [placed(1), placed(2)])
    await asyncio.sleep(0.05)
    first = await store.read("o-1")
    middle = first[-1].timestamp + timedelta(microseconds=1)
    await asyncio.sleep(0.05)
    await store.append("o-1", [placed(3)])
    third = (await store.read("o-1"))[-1]
    assert third.timestamp > first[-1].timestamp
    assert versions(await store.read("o-1", until=middle)) == [1, 2]
    assert versions(await store.read("o-1", until=first[-1].timestamp)) == [1, 2]
    assert versions(await store.read("o-1", until=third.timestamp)) == [1, 2, 3]
    assert versions(await store.read("o-1", until=first[0].timestamp - timedelta(seconds=1))) == []
    assert versions(await store.read("o-1", 2, until=middle, limit=5)) == [2]


async def test_read_all_is_the_global_order(backend: Backend) -> None:
    store = backend.store
    await store.append("a", [placed(1, "a")])
    await store.append("b", [placed(1, "b"), placed(2, "b")])
    await store.append("a", [placed(2, "a")])
    await store.append("c", [placed(1, "c")])
    log = await store.read_all()
    assert [(event.stream_id, event.version) for event in log] == [("a", 1), ("b", 1), ("b", 2), ("a", 2), ("c", 1)]
    assert [event.position for event in log] == [1, 2, 3, 4, 5]
    assert [event.position for event in await store.read_all(3)] == [3, 4, 5]
    assert [event.position for event in await store.read_all(2, limit=2)] == [2, 3]
    assert [event.position for event in await store.read_all(1)] == [1, 2, 3, 4, 5]
    assert await store.read_all(6) == []
    assert await store.read_all(limit=0) == []
    assert [event.position for event in await store.read("b")] == [2, 3]


async def test_subscribe_catches_up_then_follows(backend: Backend) -> None:
    store = backend.store
    await store.append("a", [placed(1, "a"), placed(2, "a")])
    await store.append("b", [placed(1, "b")])
    seen: list[StoredEvent] = []
    got_three = asyncio.Event()
    got_five = asyncio.Event()

    async def follow() -> None:
        async for event in store.subscribe():
            seen.append(event)
            if len(seen) == 3:
                got_three.set()
            if len(seen) == 5:
                got_five.set()
                return

    task = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(got_three.wait(), 5)
        await store.append("b", [placed(2, "b")])
        await store.append("c", [placed(1, "c")])
        await asyncio.wait_for(got_five.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [(event.stream_id, event.version, event.position) for event in seen] == [
        ("a", 1, 1),
        ("a", 2, 2),
        ("b", 1, 3),
        ("b", 2, 4),
        ("c", 1, 5),
    ]


async def test_subscribe_from_a_position(backend: Backend) -> None:
    store = backend.store
    await store.append("a", [placed(n, "a") for n in range(1, 5)])
    stream = store.subscribe(3)
    try:
        first = await asyncio.wait_for(anext(stream), 5)
        second = await asyncio.wait_for(anext(stream), 5)
    finally:
        await stream.aclose()
    assert (first.position, second.position) == (3, 4)


async def test_concurrent_appenders_never_share_a_version(backend: Backend) -> None:
    store = backend.store
    actuals: list[tuple[int, int | None]] = []  # (expected, actual) of each conflict

    async def appender(worker: int) -> None:
        for n in range(2):
            while True:
                current = await store.version("race")
                await asyncio.sleep(0)
                try:
                    await store.append("race", [placed(worker * 10 + n, "race")], expected_version=current)
                    break
                except catga.ConcurrencyConflict as exc:
                    actuals.append((current, exc.actual))

    await asyncio.wait_for(asyncio.gather(*(appender(worker) for worker in range(10))), 30)
    assert actuals  # they did race
    assert all(actual is not None and actual > expected for expected, actual in actuals)
    events = await store.read("race")
    assert versions(events) == list(range(1, 21))
    assert sorted(event.event.total for event in events) == sorted(w * 10 + n for w in range(10) for n in range(2))
    assert [event.position for event in await store.read_all()] == list(range(1, 21))
    assert await store.version("race") == 20


async def test_a_corrupt_record_names_its_stream_and_version(backend: Backend) -> None:
    if backend.corrupt is None:
        pytest.skip("no backdoor into this backend's records")
    store = backend.store
    await store.append("o-1", [placed(1), placed(2), placed(3)])
    await backend.corrupt("o-1", 2)
    for call in (store.read("o-1"), store.read_all()):
        with pytest.raises(catga.SerializationError, match=r"version `2` of stream `o-1`"):
            await call
    assert versions(await store.read("o-1", 3)) == [3]
    assert versions(await store.read("o-1", to_version=1)) == [1]


# ------------------------------------------------------------------- snapshots and checkpoints


async def _snapshot_store(kind: str, request: pytest.FixtureRequest, closing: list[Any]) -> Any:
    if kind == "redis":
        from catga.redis import RedisSnapshotStore

        store: Any = RedisSnapshotStore(request.getfixturevalue("redis_url"))
    else:
        from catga.postgres import PostgresSnapshotStore

        store = PostgresSnapshotStore(request.getfixturevalue("postgres_dsn"))
        await store.migrate()
    closing.append(store)
    return store


async def _checkpoint_store(kind: str, request: pytest.FixtureRequest, closing: list[Any]) -> Any:
    if kind == "redis":
        from catga.redis import RedisCheckpointStore

        store: Any = RedisCheckpointStore(request.getfixturevalue("redis_url"))
    else:
        from catga.postgres import PostgresCheckpointStore

        store = PostgresCheckpointStore(request.getfixturevalue("postgres_dsn"))
        await store.migrate()
    closing.append(store)
    return store


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_snapshots_keep_the_latest(kind: str, request: pytest.FixtureRequest, closing: list[Any]) -> None:
    store = await _snapshot_store(kind, request, closing)
    assert isinstance(store, SnapshotStore)
    assert await store.latest("o-1") is None
    await store.save("o-1", 3, b"three")
    assert await store.latest("o-1") == (3, b"three")
    await store.save("o-1", 5, b"five\x00\xff")
    assert await store.latest("o-1") == (5, b"five\x00\xff")
    await store.save("o-1", 4, b"older")
    assert await store.latest("o-1") == (5, b"five\x00\xff")
    assert await store.latest("o-2") is None


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_checkpoints(kind: str, request: pytest.FixtureRequest, closing: list[Any]) -> None:
    store = await _checkpoint_store(kind, request, closing)
    assert isinstance(store, CheckpointStore)
    assert await store.get("orders") == 0
    await store.set("orders", 7)
    await store.set("totals", 2)
    assert await store.get("orders") == 7
    await store.set("orders", 9)
    assert (await store.get("orders"), await store.get("totals")) == (9, 2)


# --------------------------------------------------------------------------------- failures


async def test_redis_unreachable_server_is_named(closing: list[Any]) -> None:
    from _servers import free_port
    from catga.redis import RedisCheckpointStore, RedisEventStore, RedisSnapshotStore

    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisEventStore(url)
    snapshots = RedisSnapshotStore(url)
    checkpoints = RedisCheckpointStore(url)
    closing.extend([store, snapshots, checkpoints])
    for call in (
        store.append("o-1", [placed(1)]),
        store.read("o-1"),
        store.version("o-1"),
        store.read_all(),
        anext(store.subscribe()),
        snapshots.save("o-1", 1, b"x"),
        snapshots.latest("o-1"),
        checkpoints.get("p"),
        checkpoints.set("p", 1),
    ):
        with pytest.raises(catga.PersistenceError, match=f"`{url}`") as caught:
            await call
        assert caught.value.details == {"url": url}


async def test_postgres_unreachable_server_is_named(closing: list[Any]) -> None:
    from _servers import free_port
    from catga.postgres import PostgresCheckpointStore, PostgresEventStore, PostgresSnapshotStore

    where = f"postgresql://catga@127.0.0.1:{free_port()}/catga"
    dsn = where.replace("catga@", "catga:hunter2@")
    store = PostgresEventStore(dsn)
    snapshots = PostgresSnapshotStore(dsn)
    checkpoints = PostgresCheckpointStore(dsn)
    closing.extend([store, snapshots, checkpoints])
    for call in (
        store.migrate(),
        store.append("o-1", [placed(1)]),
        store.read("o-1"),
        store.version("o-1"),
        store.read_all(),
        anext(store.subscribe()),
        snapshots.latest("o-1"),
        checkpoints.get("p"),
    ):
        with pytest.raises(catga.PersistenceError, match=f"`{where}`") as caught:
            await call
        assert "hunter2" not in str(caught.value)
        assert caught.value.details == {"url": where}


async def test_postgres_without_migrate_says_to_call_it(request: pytest.FixtureRequest, closing: list[Any]) -> None:
    from catga.postgres import PostgresEventStore

    store = PostgresEventStore(request.getfixturevalue("postgres_dsn"), table="never_made")
    closing.append(store)
    for call in (store.append("o-1", [placed(1)]), store.read("o-1"), store.version("o-1"), store.read_all()):
        with pytest.raises(catga.PersistenceError, match=r"no table `never_made`: call `await store.migrate\(\)`"):
            await call


async def test_postgres_migrate_is_idempotent(request: pytest.FixtureRequest, closing: list[Any]) -> None:
    from catga.postgres import PostgresEventStore

    store = PostgresEventStore(request.getfixturevalue("postgres_dsn"))
    closing.append(store)
    await asyncio.gather(store.migrate(), store.migrate())
    await store.migrate()
    assert await store.append("o-1", [placed(1)]) == 1


def test_reprs_and_argument_checks() -> None:
    from catga.redis import RedisEventStore

    store = RedisEventStore("redis://127.0.0.1:6379/0")
    assert repr(store) == "RedisEventStore('redis://127.0.0.1:6379/0', prefix='catga:es:')"
    assert RedisEventStore.__module__ == "catga.redis"
    with pytest.raises(TypeError, match="prefix"):
        RedisEventStore("redis://127.0.0.1:6379/0", prefix=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="poll_interval"):
        RedisEventStore("redis://127.0.0.1:6379/0", poll_interval=0)


async def test_bad_arguments_are_refused(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(TypeError):
        await store.append(42, [placed(1)])
    with pytest.raises((TypeError, ValueError)):
        await store.append("o-1", [placed(1)], expected_version=-1)
    with pytest.raises((TypeError, ValueError)):
        await store.read("o-1", limit=-1)
    assert await store.version("o-1") == 0


def test_public_names() -> None:
    import catga.postgres
    import catga.redis

    for name in ("RedisEventStore", "RedisSnapshotStore", "RedisCheckpointStore"):
        assert name in catga.redis.__all__
        assert getattr(catga.redis, name).__module__ == "catga.redis"
    for name in ("PostgresEventStore", "PostgresSnapshotStore", "PostgresCheckpointStore"):
        assert name in catga.postgres.__all__
        assert getattr(catga.postgres, name).__module__ == "catga.postgres"


@pytest.mark.parametrize("module_name", ["catga.redis._events", "catga.postgres._events"])
def test_docstring_examples(module_name: str) -> None:
    import doctest
    import importlib

    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs = vars(module) | {"catga": catga}
    tests = finder.find(module, module_name, globs=globs)
    for name, value in vars(module).items():  # re-exported classes carry the public module
        if isinstance(value, type) and value.__module__ in ("catga.postgres", "catga.redis"):
            tests += finder.find(value, f"{module_name}.{name}", module=False, globs=globs)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
    assert runner.tries > 0
