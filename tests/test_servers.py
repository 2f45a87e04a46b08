"""The test servers themselves (tests/_servers.py, fixtures in conftest.py): NATS request/reply and
JetStream, Redis SET NX PX, PostgreSQL over asyncpg, restarts on the same port, per-test Redis flush and
PostgreSQL schema reset, and the skip/fail rule for a missing binary."""

import asyncio
from pathlib import Path

import asyncpg
import nats
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from nats.js.api import PubAck

import _servers
from _servers import REQUIRE_ENV, PostgresServer, Server, require, spawn_postgres


async def test_nats_request_reply(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    try:

        async def echo(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(b"pong:" + msg.data)

        await nc.subscribe(f"catga.test.{unique}", cb=echo)
        reply = await nc.request(f"catga.test.{unique}", b"ping", timeout=2)
        assert reply.data == b"pong:ping"
    finally:
        await nc.close()


async def test_jetstream_publish_acks(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=f"T{unique}", subjects=[f"catga.js.{unique}.>"])
        ack = await js.publish(f"catga.js.{unique}.a", b"event", timeout=2)
        assert isinstance(ack, PubAck)
        assert (ack.stream, ack.seq) == (f"T{unique}", 1)
        await js.delete_stream(f"T{unique}")
    finally:
        await nc.close()


async def test_redis_set_nx_px_and_get(redis_url: str, unique: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        key = f"catga:test:{unique}"
        assert await client.set(key, b"first", nx=True, px=10_000) is True
        assert await client.set(key, b"second", nx=True, px=10_000) is None  # NX: the first write wins
        assert await client.get(key) == b"first"
        assert 0 < await client.pttl(key) <= 10_000
    finally:
        await client.aclose()


async def test_nats_restart_keeps_port_and_streams(nats_server: Server, nats_url: str, unique: str) -> None:
    port = nats_server.port
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(nats_url, reconnect_time_wait=0.05, max_reconnect_attempts=-1, reconnected_cb=on_reconnect)
    try:
        js = nc.jetstream()
        await js.add_stream(name=f"R{unique}", subjects=[f"catga.restart.{unique}"])
        assert (await js.publish(f"catga.restart.{unique}", b"before", timeout=2)).seq == 1

        await asyncio.to_thread(nats_server.restart)
        assert nats_server.running
        assert (nats_server.port, nats_server.url) == (port, nats_url)

        await asyncio.wait_for(reconnected.wait(), 10)
        # Same data dir: the stream came back with its message.
        assert (await js.publish(f"catga.restart.{unique}", b"after", timeout=2)).seq == 2
        await js.delete_stream(f"R{unique}")
    finally:
        await nc.close()


async def test_redis_kill_and_start_keeps_port(redis_server: Server, redis_url: str, unique: str) -> None:
    port = redis_server.port
    client = aioredis.from_url(redis_url)
    try:
        await client.set(f"catga:test:{unique}", b"v")
        redis_server.kill()
        assert not redis_server.running
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()

        redis_server.start()
        assert (redis_server.port, redis_server.url) == (port, redis_url)
        assert await client.ping() is True  # the same client reconnects
        assert await client.get(f"catga:test:{unique}") is None  # no persistence: keys are gone
    finally:
        await client.aclose()


async def test_nats_url_restarts_a_stopped_server(request: pytest.FixtureRequest, nats_server: Server) -> None:
    nats_server.stop()
    assert not nats_server.running
    nats_url = request.getfixturevalue("nats_url")  # what the next test's fixture does
    assert nats_server.running
    nc = await nats.connect(nats_url)
    await nc.close()


async def test_redis_url_flushes(request: pytest.FixtureRequest, redis_server: Server) -> None:
    redis_server.start()
    client = aioredis.from_url(redis_server.url)
    try:
        await client.set("catga:test:left-over", b"v")
        assert await client.dbsize() == 1
        request.getfixturevalue("redis_url")  # what the next test's fixture does
        assert await client.dbsize() == 0
    finally:
        await client.aclose()


@pytest.mark.parametrize("round_", [1, 2])
async def test_redis_starts_empty_in_every_test(redis_url: str, round_: int) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("catga:test:isolation", round_)  # the other round must not see it
    finally:
        await client.aclose()


def test_require_finds_a_binary() -> None:
    assert require("sh", "dash").endswith("/sh")


def test_require_skips_without_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs catga-no-package: apt-get install catga-no-package"):
        require("catga-no-such-binary", "catga-no-package")
    monkeypatch.setenv(REQUIRE_ENV, "0")
    with pytest.raises(pytest.skip.Exception, match="catga-no-package"):
        require("catga-no-such-binary", "catga-no-package")


def test_require_fails_without_the_binary_when_services_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y catga-no-package") as info:
        require("catga-no-such-binary", "catga-no-package")
    assert "catga-no-such-binary not found" in str(info.value)


async def test_postgres_create_insert_select(postgres_dsn: str) -> None:
    assert postgres_dsn.startswith("postgresql://catga@127.0.0.1:")
    assert not postgres_dsn.startswith("postgresql://catga@127.0.0.1:5432/")  # never the machine's cluster
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(
            "CREATE TABLE events (stream_id text, version int, data bytea, PRIMARY KEY (stream_id, version))"
        )
        await conn.executemany(
            "INSERT INTO events VALUES ($1, $2, $3)", [("order-1", 1, b"created"), ("order-1", 2, b"paid")]
        )
        with pytest.raises(asyncpg.UniqueViolationError):  # the optimistic lock the event store relies on
            await conn.execute("INSERT INTO events VALUES ('order-1', 2, 'x')")
        rows = await conn.fetch("SELECT version, data FROM events WHERE stream_id = $1 ORDER BY version", "order-1")
        assert [(r["version"], r["data"]) for r in rows] == [(1, b"created"), (2, b"paid")]
        assert await conn.fetchval("SELECT current_database() || ' ' || current_user") == "catga catga"
    finally:
        await conn.close()


@pytest.mark.parametrize("round_", [1, 2])
async def test_postgres_starts_empty_in_every_test(postgres_dsn: str, round_: int) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        tables = await conn.fetchval("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert tables == 0
        await conn.execute("CREATE TABLE isolation (round int)")  # the other round must not see it
        await conn.execute("INSERT INTO isolation VALUES ($1)", round_)
    finally:
        await conn.close()


async def test_postgres_dsn_resets_schema_and_closes_left_over_connections(
    request: pytest.FixtureRequest, postgres_server: PostgresServer
) -> None:
    postgres_server.start()
    left_over = await asyncpg.connect(postgres_server.dsn)
    try:
        await left_over.execute("CREATE TABLE left_over (id int)")
        await left_over.execute("BEGIN")
        await left_over.execute("LOCK TABLE left_over")  # an idle transaction would block DROP SCHEMA
        dsn = request.getfixturevalue("postgres_dsn")  # what the next test's fixture does
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass('public.left_over')") is None
        finally:
            await conn.close()
    finally:
        left_over.terminate()


async def test_postgres_restart_keeps_port_and_data(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    port, pid = postgres_server.port, postgres_server.pid
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("CREATE TABLE kept (id int)")
        await conn.execute("INSERT INTO kept VALUES (1)")
        # SIGINT: a fast shutdown, which does not wait for this open connection.
        await asyncio.to_thread(postgres_server.restart)
    finally:
        conn.terminate()
    assert postgres_server.running
    assert postgres_server.pid != pid
    assert (postgres_server.port, postgres_server.dsn) == (port, postgres_dsn)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM kept") == 1
    finally:
        await conn.close()


async def test_postgres_kill_and_start_keeps_committed_data(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("CREATE TABLE crashed (id int)")
        await conn.execute("INSERT INTO crashed VALUES (1)")
        postgres_server.kill()  # the postmaster only; its backends exit by themselves
        assert not postgres_server.running
        with pytest.raises((asyncpg.PostgresConnectionError, ConnectionError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()
    await asyncio.to_thread(postgres_server.start)  # crash recovery replays the WAL
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM crashed") == 1
    finally:
        await conn.close()


def test_postgres_cluster_lives_outside_pytest_and_belongs_to_postgres(postgres_server: PostgresServer) -> None:
    assert postgres_server.scratch is not None
    assert postgres_server.scratch.name.startswith("catga-pg-")
    assert postgres_server.data.is_relative_to(postgres_server.scratch)
    expected = "postgres" if _servers.os.geteuid() == 0 else None
    assert postgres_server.user == expected


@pytest.fixture
def no_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide every PostgreSQL install: Debian's bin dirs, PATH and the usual bin dirs."""
    monkeypatch.setattr(_servers, "POSTGRES_BIN_GLOB", str(tmp_path / "no-postgresql" / "*" / "bin"))
    monkeypatch.setattr(_servers, "_EXTRA_BIN_DIRS", ())
    monkeypatch.setenv("PATH", str(tmp_path))


@pytest.mark.usefixtures("no_postgres")
def test_postgres_skips_without_the_binaries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs postgresql: apt-get install postgresql"):
        spawn_postgres(tmp_path / "pg")


@pytest.mark.usefixtures("no_postgres")
def test_postgres_fails_without_the_binaries_when_services_are_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y postgresql") as info:
        spawn_postgres(tmp_path / "pg")
    assert "initdb not found" in str(info.value)
