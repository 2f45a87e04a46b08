"""Worker-id leases in Redis (API.md section 2) against a real redis-server.

`RedisWorkerIdLease` on its own first (two leases on two clients stand for two processes; each
takes a fresh `IdGenerator` unless the test is about the process-wide one), then the hook in
`Mediator.start()`/`stop()`: which mediators lease, sharing one lease per process (also with a
NATS transport's), failures, and two real processes. Redis is flushed before every test
(`redis_url`), so the default key prefix is free. The process-wide generator's worker id is
restored after every test, and every test must leave no process-wide lease behind.
"""

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

import catga
from _servers import Server, free_port
from catga import _worker_lease
from catga._core import default_generator
from catga.behaviors import Cache, DeadLetter, Idempotency
from catga.memory import MemoryCacheStore, MemoryIdempotencyStore
from catga.redis import (
    RedisCacheStore,
    RedisDeadLetterStore,
    RedisIdempotencyStore,
    RedisRateLimit,
    RedisWorkerIdLease,
)
from catga.redis import _worker_id as redis_worker_id
from catga.transports import InProcessTransport

PREFIX = "catga:worker_ids:"
MINIMAL = catga.Config.minimal()


class Ping(catga.Command[str]):
    pass


@pytest.fixture(autouse=True)
def _restore_worker_id(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CATGA_WORKER_ID", raising=False)
    generator = default_generator()
    before = generator.worker_id
    yield
    generator.set_worker_id(before)
    assert _worker_lease.shared_lease() is None, "a test left the process-wide lease held"


@pytest.fixture
async def connect(redis_url: str) -> AsyncIterator[Callable[[], "redis.asyncio.Redis"]]:
    """Clients for a test (one per simulated process), closed at the end."""
    clients: list[redis.asyncio.Redis] = []

    def open_one() -> "redis.asyncio.Redis":
        client = redis.asyncio.Redis.from_url(redis_url)
        clients.append(client)
        return client

    yield open_one
    for client in clients:
        await client.aclose()


def _lease(client: "redis.asyncio.Redis", **kwargs: Any) -> RedisWorkerIdLease:
    kwargs.setdefault("generator", catga.IdGenerator())
    return RedisWorkerIdLease(client, service="test", **kwargs)


async def _keys(client: "redis.asyncio.Redis") -> dict[str, bytes]:
    """The lease keys on the server: worker id (as a str) -> holder."""
    keys = sorted([key.decode() async for key in client.scan_iter(match=f"{PREFIX}*")])
    values: list[Any] = await client.mget(keys) if keys else []
    return {key.removeprefix(PREFIX): value for key, value in zip(keys, values, strict=True)}


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "catga.redis" and r.levelno == logging.ERROR]


# ----------------------------------------------------------------------------------- the lease


async def test_acquire_stamps_the_process_generator(connect: Any) -> None:
    client = connect()
    lease = RedisWorkerIdLease(client, service="billing")
    assert repr(lease) == f"<RedisWorkerIdLease prefix={PREFIX!r} released>"
    worker_id = await lease.acquire()
    try:
        assert 0 <= worker_id <= 255
        assert lease.worker_id == worker_id
        assert repr(lease) == f"<RedisWorkerIdLease prefix={PREFIX!r} worker_id={worker_id}>"
        assert await lease.acquire() == worker_id  # idempotent
        assert default_generator().worker_id == worker_id
        assert catga.parse_id(catga.new_id()).worker_id == worker_id
        assert await _keys(client) == {str(worker_id): lease.holder.encode()}
        assert lease.holder.split(":")[1:3] == [str(os.getpid()), "billing"]
        assert 29_000 < await client.pttl(lease.key(worker_id)) <= 30_000
        assert lease.url == f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
    finally:
        await lease.release()
    assert await _keys(client) == {}
    assert repr(lease) == f"<RedisWorkerIdLease prefix={PREFIX!r} released>"


async def test_two_processes_get_different_ids(connect: Any) -> None:
    first, second = _lease(connect()), _lease(connect())
    a, b = await first.acquire(), await second.acquire()
    assert a != b
    assert first._generator.worker_id == a
    assert second._generator.worker_id == b
    await first.release()
    await second.release()


async def test_a_full_id_space_fails_with_a_clear_error(connect: Any) -> None:
    client = connect()
    leases = [_lease(client, _worker_bits=1) for _ in range(3)]
    assert {await leases[0].acquire(), await leases[1].acquire()} == {0, 1}
    generator = leases[2]._generator
    before = generator.worker_id
    with pytest.raises(catga.PersistenceError, match=f"no free worker id.*`{PREFIX}\\*`.*`2` ids") as info:
        await leases[2].acquire()
    assert "CATGA_WORKER_ID" in str(info.value)
    assert info.value.details == {"url": leases[2].url, "prefix": PREFIX, "tried": 2}
    assert leases[2].worker_id is None
    assert leases[2]._renewal is None
    assert generator.worker_id == before
    for lease in leases[:2]:
        await lease.release()


async def test_release_frees_the_id_at_once(connect: Any) -> None:
    client = connect()
    first, second = _lease(client, _worker_bits=0), _lease(client, _worker_bits=0)
    assert await first.acquire() == 0
    with pytest.raises(catga.PersistenceError, match="`1` ids"):
        await second.acquire()
    await first.release()
    assert await second.acquire() == 0
    await first.release()  # twice: a no-op, and the id stays with `second`
    assert await _keys(client) == {"0": second.holder.encode()}
    await second.release()
    assert await _keys(client) == {}


async def test_the_ttl_is_renewed(connect: Any) -> None:
    client = connect()
    lease = _lease(client, ttl=0.6, _worker_bits=0)
    assert await lease.acquire() == 0
    try:
        seen: list[int] = []

        async def renewed() -> bool:
            seen.append(await client.pttl(lease.key(0)))
            return len(seen) > 1 and seen[-1] > seen[-2]  # went up again: renewed

        await _eventually(renewed, timeout=2.0)
        # Renewed every ttl/3: still held long past the TTL.
        await asyncio.sleep(1.5)
        assert await _keys(client) == {"0": lease.holder.encode()}
        assert 0 < await client.pttl(lease.key(0)) <= 600
    finally:
        await lease.release()


async def test_a_lease_that_is_not_renewed_expires_after_the_ttl(connect: Any) -> None:
    client = connect()
    holder = _lease(client, ttl=0.5, _worker_bits=0)
    assert await holder.acquire() == 0
    other = _lease(client, ttl=0.5, _worker_bits=0)
    with pytest.raises(catga.PersistenceError, match="no free worker id"):
        await other.acquire()
    # The holder "crashes": no more renewals, and the key is left behind.
    assert holder._renewal is not None
    holder._renewal.cancel()
    await asyncio.gather(holder._renewal, return_exceptions=True)

    async def free() -> bool:
        try:
            await other.acquire()
        except catga.PersistenceError:
            return False
        return True

    waited = await _eventually(free, timeout=3.0)
    assert 0.2 < waited < 1.0
    assert other.worker_id == 0
    await other.release()


async def test_a_lost_lease_is_reported_and_taken_again(connect: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="catga.redis")
    client = connect()
    lease = _lease(client, ttl=0.6, _worker_bits=1)
    first = await lease.acquire()
    # Another process overwrites the key (as if our lease had lapsed and it took the id).
    await client.set(lease.key(first), b"elsewhere:1:other:x", px=30_000)

    async def moved() -> bool:
        return lease.worker_id not in (None, first)

    await _eventually(moved, timeout=3.0)
    assert lease._generator.worker_id == lease.worker_id == 1 - first
    assert any(f"lost the lease of worker id `{first}`" in m and "elsewhere:1:other:x" in m for m in _errors(caplog))
    assert (await _keys(client))[str(1 - first)] == lease.holder.encode()
    await lease.release()
    assert await _keys(client) == {str(first): b"elsewhere:1:other:x"}  # not ours: left alone


async def test_an_expired_lease_is_reported_and_taken_again_with_the_same_id(
    connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="catga.redis")
    client = connect()
    lease = _lease(client, ttl=0.6)
    worker_id = await lease.acquire()
    await client.delete(lease.key(worker_id))  # as if it had expired (a stalled process)

    async def reported() -> bool:
        return any(f"lost the lease of worker id `{worker_id}`" in m and "it expired" in m for m in _errors(caplog))

    await _eventually(reported, timeout=3.0)

    async def held() -> bool:
        return await _keys(client) == {str(worker_id): lease.holder.encode()}

    await _eventually(held, timeout=3.0)
    assert lease.worker_id == worker_id  # the same id was free: kept
    await lease.release()


async def test_a_lost_lease_with_no_free_id_keeps_its_id_and_retries(
    connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="catga.redis")
    client = connect()
    lease = _lease(client, ttl=0.6, _worker_bits=0)
    assert await lease.acquire() == 0
    await client.set(lease.key(0), b"elsewhere:1:other:x", px=30_000)

    async def stuck() -> bool:
        return any("no free worker id" in m and "to replace the lost `0`" in m for m in _errors(caplog))

    await _eventually(stuck, timeout=3.0)
    assert lease.worker_id == 0  # still using it: there is no other
    await client.delete(lease.key(0))  # the other process stops

    async def held() -> bool:
        return await _keys(client) == {"0": lease.holder.encode()}

    await _eventually(held, timeout=3.0)
    await lease.release()
    assert await _keys(client) == {}


async def test_an_unreachable_redis_is_reported_after_the_ttl(
    connect: Any, redis_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="catga.redis")
    client = connect()
    lease = _lease(client, ttl=0.6, timeout=0.5, _worker_bits=0)
    assert await lease.acquire() == 0

    async def reported() -> bool:
        return any("could not renew worker id `0`" in m and "may collide" in m for m in _errors(caplog))

    redis_server.stop()
    try:
        waited = await _eventually(reported, timeout=6.0)
        assert waited > 0.4  # not before the TTL is over
    finally:
        redis_server.start()
    assert len([m for m in _errors(caplog) if "could not renew" in m]) == 1  # once per outage

    # Back online (and empty: the server keeps no data): the lease is taken again.
    async def held() -> bool:
        with contextlib.suppress(redis.RedisError):
            return await _keys(client) == {"0": lease.holder.encode()}
        return False

    await _eventually(held, timeout=6.0)
    assert lease.worker_id == 0
    await lease.release()


async def test_an_unreachable_redis_fails_acquire_with_a_clear_error() -> None:
    client = redis.asyncio.Redis.from_url(f"redis://:secret@127.0.0.1:{free_port()}/0")
    lease = _lease(client)
    try:
        with pytest.raises(
            catga.PersistenceError, match=r"cannot lease a worker id from Redis at `redis://127"
        ) as info:
            await lease.acquire()
    finally:
        await client.aclose()
    assert "CATGA_WORKER_ID" in str(info.value)
    assert "secret" not in str(info.value)
    assert lease.worker_id is None


async def test_arguments_are_checked(connect: Any) -> None:
    client = connect()
    with pytest.raises(TypeError, match="`client`"):
        RedisWorkerIdLease("redis://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`ttl`.*`0`"):
        RedisWorkerIdLease(client, ttl=0)
    with pytest.raises(TypeError, match="`timeout`"):
        RedisWorkerIdLease(client, timeout="5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`prefix`"):
        RedisWorkerIdLease(client, prefix="")
    with pytest.raises(TypeError, match="`service`"):
        RedisWorkerIdLease(client, service=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`_worker_bits`.*`9`"):
        RedisWorkerIdLease(client, _worker_bits=9)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisWorkerIdLease(redis.asyncio.Redis(decode_responses=True))
    lease = RedisWorkerIdLease(client)
    assert (lease.prefix, lease.ttl, lease.id_count, lease.client) == (PREFIX, 30.0, 256, client)
    assert RedisWorkerIdLease.__module__ == "catga.redis"
    with pytest.raises(TypeError, match=r"`lease_worker_id`.*`1`"):
        catga.Mediator(lease_worker_id=1)  # type: ignore[arg-type]


def test_docstring_examples() -> None:
    import doctest

    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs = vars(redis_worker_id) | {"catga": catga}
    for test in finder.find(RedisWorkerIdLease, "RedisWorkerIdLease", module=False, globs=globs):
        runner.run(test)
    assert runner.failures == 0
    assert runner.tries > 0


# ---------------------------------------------------------------------------- the mediators


def _on_redis(url: str) -> catga.Config:
    return MINIMAL.with_(idempotency=Idempotency(store=RedisIdempotencyStore(url)))


async def _close_stores(*mediators: catga.Mediator) -> None:
    for mediator in mediators:
        config = mediator.config
        for store in (
            config.idempotency and config.idempotency.store,
            config.cache and config.cache.store,
            config.dead_letter and config.dead_letter.store,
            config.rate_limit,
        ):
            if isinstance(store, RedisIdempotencyStore | RedisCacheStore | RedisDeadLetterStore | RedisRateLimit):
                await store.aclose()


async def test_mediators_of_a_process_share_one_lease(redis_url: str, connect: Any) -> None:
    client = connect()
    first, second = catga.Mediator(config=_on_redis(redis_url)), catga.Mediator(config=_on_redis(redis_url))
    try:
        await asyncio.gather(first.start(), second.start())
        worker_id = _worker_lease.shared_worker_id()
        assert worker_id is not None
        assert default_generator().worker_id == worker_id
        keys = await _keys(client)
        assert list(keys) == [str(worker_id)]
        assert keys[str(worker_id)].split(b":")[1] == str(os.getpid()).encode()
        await first.start()  # again: no second reference
        await first.stop()
        assert not first.running
        assert _worker_lease.shared_worker_id() == worker_id  # `second` still uses it
        assert list(await _keys(client)) == [str(worker_id)]
        await second.stop()
        assert _worker_lease.shared_lease() is None
        assert await _keys(client) == {}  # freed at once
        await second.stop()  # twice: a no-op
    finally:
        await _close_stores(first, second)


@pytest.mark.parametrize("slot", ["idempotency", "cache", "dead_letter", "rate_limit"])
async def test_every_redis_store_of_the_config_leases(redis_url: str, connect: Any, slot: str) -> None:
    stores: dict[str, Any] = {
        "idempotency": Idempotency(store=RedisIdempotencyStore(redis_url)),
        "cache": Cache(store=RedisCacheStore(redis_url)),
        "dead_letter": DeadLetter(store=RedisDeadLetterStore(redis_url)),
        "rate_limit": RedisRateLimit(redis_url, rate=100.0, burst=10.0),
    }
    mediator = catga.Mediator(config=MINIMAL.with_(**{slot: stores[slot]}))
    try:
        async with mediator:
            assert mediator.running
            lease = _worker_lease.shared_lease()
            assert lease is not None
            assert "Redis at `redis://127.0.0.1:" in lease.backend
            assert list(await _keys(connect())) == [str(lease.worker_id)]
        assert await _keys(connect()) == {}
    finally:
        await _close_stores(mediator)


async def test_a_mediator_without_redis_stores_takes_no_lease(redis_url: str, connect: Any) -> None:
    before = default_generator().worker_id
    memory = catga.Config.default().with_(
        idempotency=Idempotency(store=MemoryIdempotencyStore()), cache=Cache(store=MemoryCacheStore())
    )
    for config in (catga.Config.default(), catga.Config.resilient(), memory):
        async with catga.Mediator(config=config, transport=InProcessTransport()):
            assert _worker_lease.shared_lease() is None
    assert await _keys(connect()) == {}
    assert default_generator().worker_id == before


async def test_a_pinned_worker_id_or_the_opt_out_takes_no_lease(
    redis_url: str, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = default_generator().worker_id
    for env, option in (("7", True), (" ", False)):
        monkeypatch.setenv("CATGA_WORKER_ID", env)
        mediator = catga.Mediator(config=_on_redis(redis_url), lease_worker_id=option)
        try:
            async with mediator:
                assert mediator.running
                assert _worker_lease.shared_lease() is None
                assert await _keys(connect()) == {}
                assert default_generator().worker_id == before
        finally:
            await _close_stores(mediator)


async def test_start_fails_when_every_id_is_leased(redis_url: str, connect: Any) -> None:
    client = connect()
    await client.mset({f"{PREFIX}{i}": b"elsewhere:1:other:x" for i in range(256)})
    before = default_generator().worker_id
    transport = InProcessTransport()
    mediator = catga.Mediator(config=_on_redis(redis_url), transport=transport)

    @mediator.handler
    async def ping(cmd: Ping) -> str:
        return "pong"

    try:
        with pytest.raises(catga.PersistenceError, match=f"no free worker id.*`{PREFIX}\\*`.*`256` ids") as info:
            await mediator.start()
        assert "CATGA_WORKER_ID" in str(info.value)
        # Nothing half-started: not running, the transport it had started stopped again, no lease.
        assert not mediator.running
        assert not transport.connected
        assert _worker_lease.shared_lease() is None
        assert default_generator().worker_id == before
        assert len(await _keys(client)) == 256
        await mediator.stop()  # a no-op
    finally:
        await _close_stores(mediator)


async def test_redis_down_at_start_is_a_clear_persistence_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    mediator = catga.Mediator(config=_on_redis(url))
    try:
        with pytest.raises(catga.PersistenceError, match=f"cannot lease a worker id from Redis at `{url}`") as info:
            await mediator.start()
        assert "CATGA_WORKER_ID" in str(info.value)
        assert "lease_worker_id=False" in str(info.value)
        assert not mediator.running
        assert _worker_lease.shared_lease() is None
    finally:
        await _close_stores(mediator)


# ------------------------------------------------------------------------- together with NATS


@pytest.fixture
def nats_bucket(unique: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the NATS transports' process-wide lease at a bucket of this test's own."""
    from catga.nats import _worker_id as nats_worker_id

    bucket = f"test_worker_ids_{unique}"
    monkeypatch.setattr(nats_worker_id, "BUCKET", bucket)
    return bucket


async def _nats_keys(nats_url: str, bucket: str) -> list[str]:
    import nats
    import nats.js.errors

    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        return list(await kv.keys())
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError):
        return []  # never created (no lease was taken from NATS), or empty
    finally:
        await nc.close()


async def _drop_bucket(nats_url: str, bucket: str) -> None:
    import nats
    import nats.js.errors

    nc = await nats.connect(nats_url)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_key_value(bucket)
    finally:
        await nc.close()


async def test_a_process_with_a_nats_lease_takes_no_redis_one(
    redis_url: str, nats_url: str, nats_bucket: str, connect: Any
) -> None:
    from catga.nats import NatsTransport

    mediator = catga.Mediator(config=_on_redis(redis_url), transport=NatsTransport(nats_url, service="both"))
    try:
        async with mediator:
            lease = _worker_lease.shared_lease()
            assert lease is not None
            assert nats_bucket in lease.backend
            assert await _nats_keys(nats_url, nats_bucket) == [str(lease.worker_id)]
            assert await _keys(connect()) == {}
        assert _worker_lease.shared_lease() is None
        assert await _nats_keys(nats_url, nats_bucket) == []
    finally:
        await _close_stores(mediator)
        await _drop_bucket(nats_url, nats_bucket)


async def test_a_nats_transport_started_later_shares_the_redis_lease(
    redis_url: str, nats_url: str, nats_bucket: str, connect: Any
) -> None:
    from catga.nats import NatsTransport

    on_redis = catga.Mediator(config=_on_redis(redis_url))
    on_nats = catga.Mediator(transport=NatsTransport(nats_url, service="later"))
    try:
        await on_redis.start()
        worker_id = _worker_lease.shared_worker_id()
        await on_nats.start()
        assert _worker_lease.shared_worker_id() == worker_id  # one lease per process
        assert await _nats_keys(nats_url, nats_bucket) == []
        assert list(await _keys(connect())) == [str(worker_id)]
        await on_redis.stop()
        assert list(await _keys(connect())) == [str(worker_id)]  # the transport still uses it
        await on_nats.stop()
        assert await _keys(connect()) == {}
    finally:
        await on_nats.stop()
        await on_redis.stop()
        await _close_stores(on_redis)
        await _drop_bucket(nats_url, nats_bucket)


# --------------------------------------------------------------------------- two processes

_PROCESS = """
import asyncio, sys
import catga
from catga.behaviors import Idempotency
from catga.redis import RedisIdempotencyStore

async def main() -> None:
    store = RedisIdempotencyStore(sys.argv[1])
    mediator = catga.Mediator(config=catga.Config.minimal().with_(idempotency=Idempotency(store=store)))
    async with mediator:
        print(catga.parse_id(catga.new_id()).worker_id, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await store.aclose()
    print("stopped", flush=True)

asyncio.run(main())
"""


async def test_two_processes_lease_different_ids(redis_url: str, connect: Any, tmp_path: Path) -> None:
    script = tmp_path / "leaser.py"
    script.write_text(_PROCESS)
    env = {key: value for key, value in os.environ.items() if key != "CATGA_WORKER_ID"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), redis_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        assert all(process.stdout is not None for process in processes)
        ids = [int(await asyncio.to_thread(process.stdout.readline)) for process in processes]  # type: ignore[union-attr]
        assert ids[0] != ids[1]
        keys = await _keys(connect())
        assert sorted(keys) == sorted(map(str, ids))
        for process, worker_id in zip(processes, ids, strict=True):
            assert keys[str(worker_id)].split(b":")[1] == str(process.pid).encode()
        outputs = [await asyncio.to_thread(process.communicate, "\n", 30) for process in processes]
        assert [out.strip() for out, _ in outputs] == ["stopped", "stopped"], outputs
        assert [process.returncode for process in processes] == [0, 0]
        assert await _keys(connect()) == {}  # each released its id on stop
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
