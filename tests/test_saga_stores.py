"""The contract of `catga.stores.SagaStore`, run against every implementation, then what is proper to
the remote ones.

Backends: `catga.memory.MemorySagaStore`, `catga.redis.RedisSagaStore` (on the session's throw-away
redis-server: the `redis_url` fixture, flushed per test) and `catga.postgres.PostgresSagaStore` (on
the session's throw-away PostgreSQL: the `postgres_dsn` fixture, a fresh schema per test). A missing
server binary skips its cases (or fails them under CATGA_REQUIRE_SERVICES=1). Each backend also has
a backdoor that writes a corrupt record, to check that one bad record names its saga and breaks
nothing else.
"""

import asyncio
import doctest
import importlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import catga
import catga.memory
from catga._saga_state import HistoryEntry, SagaState, SagaStatus, StepRecord, StepStatus, encode_state
from catga.stores import SagaStore

RUNNING, COMPENSATING, COMPLETED = SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.COMPLETED
COMPENSATED, FAILED = SagaStatus.COMPENSATED, SagaStatus.FAILED

BASE = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
NOW = 1_750_000_000.0


def make_state(
    saga_id: str,
    *,
    status: SagaStatus = RUNNING,
    age: float = 0.0,
    lease: float | None = None,
    version: int = 1,
    name: str = "place-order",
) -> SagaState:
    """A state created `age` seconds after BASE (the listings sort on it)."""
    when = BASE + timedelta(seconds=age)
    return SagaState(
        saga_id=saga_id,
        name=name,
        status=status,
        data={"order": saga_id, "amount": 12.5, "items": [1, 2, 3], "note": "é ✓"},
        steps=[StepRecord(name="reserve"), StepRecord(name="charge")],
        version=version,
        step="reserve",
        owner="host:1:abc",
        lease_expires=lease,
        created_at=when,
        updated_at=when,
    )


def advanced(state: SagaState, **changes: Any) -> SagaState:
    """The next version of `state`, as an executor writes it."""
    import msgspec

    return msgspec.structs.replace(state, version=state.version + 1, **changes)


def ids(states: Any) -> list[str]:
    return [state.saga_id for state in states]


# --------------------------------------------------------------------------------- the backends


@dataclass
class Backend:
    store: Any
    corrupt: Callable[[str], Awaitable[None]]  # writes garbage as the saga's stored state


async def memory_backend(request: pytest.FixtureRequest, closing: list[Any]) -> Backend:
    if not hasattr(catga.memory, "MemorySagaStore"):
        pytest.skip("catga.memory.MemorySagaStore does not exist yet")
    store = catga.memory.MemorySagaStore()

    async def corrupt(saga_id: str) -> None:
        store._records[saga_id] = b'{"saga_id": 42, "garbage"'

    return Backend(store, corrupt)


async def redis_backend(request: pytest.FixtureRequest, closing: list[Any]) -> Backend:
    from catga.redis import RedisSagaStore

    store = RedisSagaStore(request.getfixturevalue("redis_url"))
    closing.append(store)

    async def corrupt(saga_id: str) -> None:
        await store.client.hset(f"{store.prefix}s:{saga_id}", "state", b"\xff not json")

    return Backend(store, corrupt)


def postgres_dsn(request: pytest.FixtureRequest) -> str:
    try:
        dsn: str = request.getfixturevalue("postgres_dsn")
    except pytest.FixtureLookupError:
        pytest.skip("no `postgres_dsn` fixture in tests/conftest.py yet")
    return dsn


async def postgres_backend(request: pytest.FixtureRequest, closing: list[Any]) -> Backend:
    import asyncpg  # type: ignore[import-untyped]

    from catga.postgres import PostgresSagaStore

    dsn = postgres_dsn(request)
    store = PostgresSagaStore(dsn)
    closing.append(store)
    await store.migrate()

    async def corrupt(saga_id: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"UPDATE {store.table} SET state = $2 WHERE saga_id = $1", saga_id, b'{"version": "x"}')
        finally:
            await conn.close()

    return Backend(store, corrupt)


BACKENDS = [
    pytest.param(memory_backend, id="memory"),
    pytest.param(redis_backend, id="redis"),
    pytest.param(postgres_backend, id="postgres"),
]
REMOTE_BACKENDS = BACKENDS[1:]


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


@pytest.fixture(params=REMOTE_BACKENDS)
async def remote(request: pytest.FixtureRequest, closing: list[Any]) -> Backend:
    made: Backend = await request.param(request, closing)
    return made


# ----------------------------------------------------------------------------------- the contract


async def test_it_is_a_saga_store(backend: Backend) -> None:
    assert isinstance(backend.store, SagaStore)


async def test_create_stores_once(backend: Backend) -> None:
    store = backend.store
    first = make_state("s-1")
    assert await store.create(first) is True
    assert await store.create(make_state("s-1", name="other")) is False
    got = await store.get("s-1")
    assert got is not None
    assert encode_state(got) == encode_state(first)
    assert got == first


async def test_get_of_a_missing_saga_is_none(backend: Backend) -> None:
    assert await backend.store.get("nope") is None


async def test_a_state_reads_back_whole(backend: Backend) -> None:
    state = make_state("s-1", lease=NOW + 30)
    state.history.append(HistoryEntry(at=BASE, event="step_started", step="reserve", attempt=1))
    state.steps[0].status = StepStatus.RUNNING
    state.steps[0].attempts = 1
    state.steps[0].started_at = BASE
    await backend.store.create(state)
    got = await backend.store.get("s-1")
    assert got is not None
    assert encode_state(got) == encode_state(state)


async def test_save_at_the_expected_version_replaces(backend: Backend) -> None:
    store = backend.store
    state = make_state("s-1", lease=NOW + 30)
    await store.create(state)
    new = advanced(state, status=COMPENSATING, step="charge", error="Boom: no", data={"x": [1]})
    assert await store.save(new, 1) is True
    got = await store.get("s-1")
    assert got is not None
    assert encode_state(got) == encode_state(new)
    assert got.version == 2
    newer = advanced(new, status=COMPENSATED, lease_expires=None)
    assert await store.save(newer, 2) is True
    got = await store.get("s-1")
    assert got is not None
    assert got.version == 3
    assert got.status is COMPENSATED


async def test_save_at_a_stale_version_changes_nothing(backend: Backend) -> None:
    store = backend.store
    state = make_state("s-1")
    await store.create(state)
    current = advanced(state, step="charge")
    assert await store.save(current, 1) is True
    stale = advanced(state, status=COMPLETED)  # version 2 again, over expected 1
    assert await store.save(stale, 1) is False
    got = await store.get("s-1")
    assert got is not None
    assert encode_state(got) == encode_state(current)
    assert await store.list(COMPLETED) == []


async def test_save_of_a_missing_saga_is_false(backend: Backend) -> None:
    assert await backend.store.save(make_state("ghost", version=2), 1) is False
    assert await backend.store.get("ghost") is None


async def test_concurrent_saves_of_one_version_have_one_winner(backend: Backend) -> None:
    store = backend.store
    state = make_state("s-1")
    await store.create(state)
    contenders = [advanced(state, owner=f"host:{n}:t") for n in range(8)]
    won = await asyncio.gather(*(store.save(contender, 1) for contender in contenders))
    assert won.count(True) == 1
    got = await store.get("s-1")
    assert got is not None
    assert got.owner == contenders[won.index(True)].owner


async def test_list_by_status_oldest_first_with_a_limit(backend: Backend) -> None:
    store = backend.store
    # Created out of order: the listings sort on created_at, not on insertion.
    for saga_id, status, age in [
        ("c", RUNNING, 30),
        ("a", RUNNING, 10),
        ("e", COMPLETED, 50),
        ("b", COMPLETED, 20),
        ("d", FAILED, 40),
    ]:
        assert await store.create(make_state(saga_id, status=status, age=age))
    assert ids(await store.list()) == ["a", "b", "c", "d", "e"]
    assert ids(await store.list(limit=None)) == ["a", "b", "c", "d", "e"]
    assert ids(await store.list(limit=2)) == ["a", "b"]
    assert ids(await store.list(limit=0)) == []
    assert ids(await store.list(RUNNING)) == ["a", "c"]
    assert ids(await store.list(COMPLETED, limit=1)) == ["b"]
    assert ids(await store.list(COMPENSATING)) == []
    assert ids(await store.list(status=FAILED, limit=None)) == ["d"]


async def test_a_save_moves_a_saga_between_statuses(backend: Backend) -> None:
    store = backend.store
    state = make_state("s-1")
    await store.create(state)
    await store.create(make_state("s-0", age=-1))
    assert await store.save(advanced(state, status=COMPLETED, lease_expires=None), 1)
    assert ids(await store.list(RUNNING)) == ["s-0"]
    assert ids(await store.list(COMPLETED)) == ["s-1"]
    assert ids(await store.list()) == ["s-0", "s-1"]


async def test_expired_lists_in_progress_sagas_without_a_live_lease(backend: Backend) -> None:
    store = backend.store
    for saga_id, status, lease, age in [
        ("no-lease", RUNNING, None, 10),
        ("expired", RUNNING, NOW - 5, 20),
        ("live", RUNNING, NOW + 5, 30),
        ("at-now", RUNNING, NOW, 35),  # expires at `now`: not before it
        ("compensating", COMPENSATING, NOW - 1, 5),
        ("compensating-live", COMPENSATING, NOW + 60, 1),
        ("done", COMPLETED, NOW - 100, 0),
        ("done-no-lease", COMPENSATED, None, 2),
        ("failed", FAILED, NOW - 100, 3),
    ]:
        assert await store.create(make_state(saga_id, status=status, lease=lease, age=age))
    assert ids(await store.expired(NOW)) == ["compensating", "no-lease", "expired"]
    assert ids(await store.expired(NOW, limit=None)) == ["compensating", "no-lease", "expired"]
    assert ids(await store.expired(NOW, limit=2)) == ["compensating", "no-lease"]
    assert ids(await store.expired(NOW, limit=0)) == []
    assert ids(await store.expired(NOW + 10)) == ["compensating", "no-lease", "expired", "live", "at-now"]
    assert ids(await store.expired(0)) == ["no-lease"]


async def test_a_renewed_or_finished_lease_leaves_expired(backend: Backend) -> None:
    store = backend.store
    first = make_state("s-1", lease=NOW - 1)
    second = make_state("s-2", lease=NOW - 1, age=1)
    await store.create(first)
    await store.create(second)
    assert ids(await store.expired(NOW)) == ["s-1", "s-2"]
    assert await store.save(advanced(first, lease_expires=NOW + 30), 1)
    assert await store.save(advanced(second, status=COMPLETED), 1)
    assert ids(await store.expired(NOW)) == []
    assert ids(await store.expired(NOW + 31)) == ["s-1"]


async def test_delete(backend: Backend) -> None:
    store = backend.store
    await store.create(make_state("s-1"))
    await store.create(make_state("s-2", age=1))
    assert await store.delete("s-1") is True
    assert await store.delete("s-1") is False
    assert await store.delete("never") is False
    assert await store.get("s-1") is None
    assert ids(await store.list()) == ["s-2"]
    assert ids(await store.list(RUNNING)) == ["s-2"]
    assert ids(await store.expired(NOW)) == ["s-2"]
    assert await store.save(make_state("s-1", version=2), 1) is False
    assert await store.create(make_state("s-1", name="again")) is True  # the id is free again
    got = await store.get("s-1")
    assert got is not None
    assert got.name == "again"


async def test_a_corrupt_record_names_its_saga_and_spoils_nothing_else(backend: Backend) -> None:
    store = backend.store
    await store.create(make_state("good", age=0))
    await store.create(make_state("bad", age=1))
    await store.create(make_state("fine", age=2))
    await backend.corrupt("bad")
    with pytest.raises(catga.PersistenceError, match="`bad`") as caught:
        await store.get("bad")
    assert caught.value.details.get("saga_id") == "bad"
    for saga_id in ("good", "fine"):
        got = await store.get(saga_id)
        assert got is not None
        assert got.saga_id == saga_id
    # The listings skip nothing silently: they name the saga.
    with pytest.raises(catga.PersistenceError, match="`bad`"):
        await store.list()
    # It can still be removed, and then everything reads.
    assert await store.delete("bad") is True
    assert ids(await store.list()) == ["good", "fine"]


# ------------------------------------------------------------------------- the Redis and PostgreSQL stores


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda store: store.get(42), TypeError, "`saga_id`"),
        (lambda store: store.delete(None), TypeError, "`saga_id`"),
        (lambda store: store.create({"saga_id": "x"}), TypeError, "`catga.SagaState`"),
        (lambda store: store.create(make_state("x", version=2)), ValueError, "version 1"),
        (lambda store: store.save(make_state("x", version=2), "1"), TypeError, "`expected_version`"),
        (lambda store: store.save(make_state("x", version=2), True), TypeError, "`expected_version`"),
        (lambda store: store.save(make_state("x", version=2), 2), ValueError, "`expected_version`"),
        (lambda store: store.list(42), TypeError, "`status`"),
        (lambda store: store.list("asleep"), ValueError, "`status`"),
        (lambda store: store.list(limit=-1), ValueError, "`limit`"),
        (lambda store: store.list(limit=1.5), TypeError, "`limit`"),
        (lambda store: store.expired("now"), TypeError, "`now`"),
        (lambda store: store.expired(NOW, limit="10"), TypeError, "`limit`"),
    ],
)
async def test_bad_arguments_are_named(
    remote: Backend, call: Callable[[Any], Awaitable[Any]], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await call(remote.store)


async def test_a_status_may_be_given_by_value(remote: Backend) -> None:
    await remote.store.create(make_state("s-1"))
    assert ids(await remote.store.list("running")) == ["s-1"]


async def test_ping(remote: Backend) -> None:
    assert await remote.store.ping() is True


def test_redis_constructor_arguments_are_named() -> None:
    from catga.redis import RedisSagaStore

    with pytest.raises(TypeError, match="`RedisSagaStore` needs a `redis://` URL"):
        RedisSagaStore(42)
    with pytest.raises(TypeError, match="`prefix`"):
        RedisSagaStore("redis://127.0.0.1:6379/0", prefix=b"x")  # type: ignore[arg-type]
    assert repr(RedisSagaStore("redis://:pw@127.0.0.1:6379/2")) == (
        "RedisSagaStore('redis://127.0.0.1:6379/2', prefix='catga:saga:')"
    )


def test_postgres_constructor_arguments_are_named() -> None:
    from catga.postgres import PostgresSagaStore

    with pytest.raises(TypeError, match=r"`PostgresSagaStore` needs a `postgresql://` DSN or an `asyncpg\.Pool`"):
        PostgresSagaStore(42)
    with pytest.raises(ValueError, match="got `localhost:5432/db`"):
        PostgresSagaStore("localhost:5432/db")
    for table in ("sagas; DROP TABLE x", "1sagas", "a.b.c", "", "s" * 64):
        with pytest.raises(ValueError, match="`table`"):
            PostgresSagaStore("postgresql://127.0.0.1/catga", table=table)
    with pytest.raises(TypeError, match="`table`"):
        PostgresSagaStore("postgresql://127.0.0.1/catga", table=None)  # type: ignore[arg-type]
    store = PostgresSagaStore("postgresql://ada:hunter2@127.0.0.1:5433/shop?sslmode=disable", table="app.sagas")
    assert repr(store) == "PostgresSagaStore('postgresql://ada@127.0.0.1:5433/shop', table='app.sagas')"


async def test_redis_keeps_readable_json_and_a_version_field(redis_url: str, closing: list[Any]) -> None:
    import redis.asyncio

    from catga.redis import RedisSagaStore

    client = redis.asyncio.Redis.from_url(redis_url)
    store = RedisSagaStore(client, prefix="app:sagas:")
    closing.append(store)
    state = make_state("s-1", lease=NOW)
    await store.create(state)
    assert await store.save(advanced(state), 1)
    stored = await client.hgetall("app:sagas:s:s-1")
    assert stored[b"version"] == b"2"
    assert stored[b"status"] == b"running"
    assert stored[b"state"] == encode_state(advanced(state))
    assert await client.zrange("app:sagas:index", 0, -1) == [b"s-1"]
    assert await client.zscore("app:sagas:leases", "s-1") == NOW
    await store.aclose()
    assert await client.ping()  # a client passed in stays open
    await client.aclose()


async def test_redis_unreachable_server_is_named(closing: list[Any]) -> None:
    from _servers import free_port
    from catga.redis import RedisSagaStore

    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisSagaStore(url)
    closing.append(store)
    for call in (
        store.create(make_state("s-1")),
        store.get("s-1"),
        store.save(make_state("s-1", version=2), 1),
        store.list(),
        store.expired(NOW),
        store.delete("s-1"),
        store.ping(),
    ):
        with pytest.raises(catga.PersistenceError, match=f"`{url}`") as caught:
            await call
        assert caught.value.details == {"url": url}


async def test_postgres_unreachable_server_is_named(closing: list[Any]) -> None:
    from _servers import free_port
    from catga.postgres import PostgresSagaStore

    where = f"postgresql://catga@127.0.0.1:{free_port()}/catga"
    store = PostgresSagaStore(where.replace("catga@", "catga:hunter2@"))
    closing.append(store)
    for call in (store.migrate(), store.get("s-1"), store.list(), store.ping()):
        with pytest.raises(catga.PersistenceError, match=f"`{where}`") as caught:
            await call
        assert "hunter2" not in str(caught.value)
        assert caught.value.details == {"url": where}


async def test_postgres_without_migrate_says_to_call_it(request: pytest.FixtureRequest, closing: list[Any]) -> None:
    from catga.postgres import PostgresSagaStore

    store = PostgresSagaStore(postgres_dsn(request), table="never_made")
    closing.append(store)
    for call in (store.create(make_state("s-1")), store.get("s-1"), store.list(), store.expired(NOW)):
        with pytest.raises(catga.PersistenceError, match=r"no table `never_made`: call `await store.migrate\(\)`"):
            await call
    await store.migrate()
    assert await store.create(make_state("s-1"))


async def test_postgres_migrate_twice_and_at_once(request: pytest.FixtureRequest, closing: list[Any]) -> None:
    from catga.postgres import PostgresSagaStore

    dsn = postgres_dsn(request)
    stores = [PostgresSagaStore(dsn, table="sagas") for _ in range(3)]
    closing.extend(stores)
    await asyncio.gather(*(store.migrate() for store in stores))
    await stores[0].create(make_state("s-1"))
    await stores[0].migrate()  # keeps what is stored
    assert ids(await stores[1].list()) == ["s-1"]


async def test_postgres_uses_a_pool_passed_in_and_leaves_it_open(request: pytest.FixtureRequest) -> None:
    import asyncpg

    from catga.postgres import PostgresSagaStore

    dsn = postgres_dsn(request)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        store = PostgresSagaStore(pool)
        assert store.url.startswith("postgresql://")
        await store.migrate()
        await store.create(make_state("s-1"))
        await store.aclose()
        assert await pool.fetchval("SELECT count(*) FROM catga_sagas") == 1
        # The columns beside the state are there for queries.
        row = await pool.fetchrow("SELECT name, status, version, lease_expires, created_at FROM catga_sagas")
        assert dict(row) == {
            "name": "place-order",
            "status": "running",
            "version": 1,
            "lease_expires": None,
            "created_at": BASE,
        }
    finally:
        await pool.close()


def test_catga_postgres_names_the_extra_when_asyncpg_is_missing() -> None:
    code = (
        "import sys; sys.modules['asyncpg'] = None\n"
        "try:\n    import catga.postgres\nexcept ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install catga[postgres]" in out.stdout
    code = (
        "import sys; sys.modules['asyncpg'] = None\nimport catga\n"
        "try:\n    catga.postgres\nexcept ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install catga[postgres]" in out.stdout


def test_catga_postgres_is_reachable_from_catga() -> None:
    from catga.postgres import PostgresSagaStore

    assert catga.postgres.PostgresSagaStore is PostgresSagaStore
    assert PostgresSagaStore.__module__ == "catga.postgres"


@pytest.mark.parametrize("module_name", ["catga.postgres", "catga.postgres._sagas", "catga.redis._sagas"])
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs = vars(module) | {"catga": catga}
    tests = finder.find(module, module_name, globs=globs)
    for value in vars(module).values():  # re-exported classes carry the public module
        if isinstance(value, type) and value.__module__ in ("catga.postgres", "catga.redis"):
            tests += finder.find(value, module_name, module=False, globs=globs)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
    assert runner.tries > 0
