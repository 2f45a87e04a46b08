"""Worker-id leases in a NATS KV bucket (API.md section 2) against a real nats-server -js.

Each test leases from a bucket of its own (`_bucket=`, named with `unique`), so leases of other
tests (every started `NatsTransport` holds one in `catga_worker_ids`) never fill its id space. Two
`WorkerIdLease`s on two connections stand for two processes. The process-wide generator's worker
id is restored after every test.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client

import catga
from _servers import Server
from catga._core import default_generator
from catga.nats import NatsTransport, WorkerIdLease, _worker_id

FAST = {"reconnect_time_wait": 0.05}


@pytest.fixture(autouse=True)
def _restore_worker_id() -> Iterator[None]:
    generator = default_generator()
    before = generator.worker_id
    yield
    generator.set_worker_id(before)


@pytest.fixture
def bucket(unique: str) -> str:
    return f"test_worker_ids_{unique}"


@pytest.fixture
async def connect(nats_url: str, bucket: str) -> AsyncIterator[Callable[[], Awaitable[Client]]]:
    """Open connections for a test (one per simulated process); close them and drop the bucket at the end."""
    clients: list[Client] = []

    async def open_one() -> Client:
        nc = await nats.connect(nats_url, **FAST)
        clients.append(nc)
        return nc

    yield open_one
    if clients and clients[0].is_connected:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await clients[0].jetstream().delete_key_value(bucket)
    for nc in clients:
        await nc.close()


def _lease(nc: Client, bucket: str, **kwargs: Any) -> WorkerIdLease:
    kwargs.setdefault("generator", catga.IdGenerator())
    return WorkerIdLease(nc, service="test", _bucket=bucket, **kwargs)


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


# ----------------------------------------------------------------------------------- the lease


async def test_acquire_stamps_the_process_generator(connect: Any, bucket: str) -> None:
    nc = await connect()
    lease = WorkerIdLease(nc, service="billing", _bucket=bucket)
    assert repr(lease) == f"<WorkerIdLease bucket={bucket!r} released>"
    worker_id = await lease.acquire()
    try:
        assert 0 <= worker_id <= 255
        assert lease.worker_id == worker_id
        assert await lease.acquire() == worker_id  # idempotent
        assert default_generator().worker_id == worker_id
        assert catga.parse_id(catga.new_id()).worker_id == worker_id
        entry = await (await nc.jetstream().key_value(bucket)).get(str(worker_id))
        assert entry.value == lease.holder.encode()
        assert lease.holder.split(":")[1:3] == [str(os.getpid()), "billing"]
        status = await (await nc.jetstream().key_value(bucket)).status()
        assert status.ttl == pytest.approx(30.0)
    finally:
        await lease.release()
    assert repr(lease) == f"<WorkerIdLease bucket={bucket!r} released>"


async def test_two_processes_get_different_ids(connect: Any, bucket: str) -> None:
    first, second = _lease(await connect(), bucket), _lease(await connect(), bucket)
    a, b = await first.acquire(), await second.acquire()
    assert a != b
    assert first._generator.worker_id == a
    assert second._generator.worker_id == b
    await first.release()
    await second.release()


async def test_a_full_id_space_fails_with_a_clear_error(connect: Any, bucket: str) -> None:
    leases = [_lease(await connect(), bucket, _worker_bits=1) for _ in range(3)]
    assert {await leases[0].acquire(), await leases[1].acquire()} == {0, 1}
    generator = leases[2]._generator
    before = generator.worker_id
    with pytest.raises(catga.TransportError, match=f"no free worker id.*`{bucket}`.*`2` ids") as info:
        await leases[2].acquire()
    assert info.value.retryable  # a crashed holder's id frees itself within the TTL
    assert info.value.details == {"bucket": bucket, "tried": 2}
    assert "CATGA_WORKER_ID" in str(info.value)
    assert leases[2].worker_id is None
    assert generator.worker_id == before
    for lease in leases[:2]:
        await lease.release()


async def test_release_frees_the_id_at_once(connect: Any, bucket: str) -> None:
    first, second = _lease(await connect(), bucket, _worker_bits=0), _lease(await connect(), bucket, _worker_bits=0)
    assert await first.acquire() == 0
    with pytest.raises(catga.TransportError, match="`1` ids"):
        await second.acquire()
    await first.release()
    assert await second.acquire() == 0
    await first.release()  # twice: a no-op, and the id stays with `second`
    kv = await (await connect()).jetstream().key_value(bucket)
    assert (await kv.get("0")).value == second.holder.encode()
    await second.release()


async def test_a_lease_that_is_not_renewed_expires_after_the_ttl(connect: Any, bucket: str) -> None:
    holder = _lease(await connect(), bucket, ttl=1.0, _worker_bits=0)
    assert await holder.acquire() == 0
    # Renewed every ttl/3: still held well past the TTL.
    await asyncio.sleep(1.5)
    other = _lease(await connect(), bucket, ttl=1.0, _worker_bits=0)
    with pytest.raises(catga.TransportError, match="no free worker id"):
        await other.acquire()
    # The holder "crashes": no more renewals, and the key is left behind.
    assert holder._renewal is not None
    holder._renewal.cancel()
    await asyncio.gather(holder._renewal, return_exceptions=True)

    async def free() -> bool:
        try:
            await other.acquire()
        except catga.TransportError:
            return False
        return True

    waited = await _eventually(free, timeout=6.0)
    assert 0.3 < waited < 6.0  # TTL 1 s; nats-server expires on its own timer, so wide bounds
    assert other.worker_id == 0
    await other.release()


async def test_a_lost_lease_is_reported_and_taken_again(
    connect: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="catga.nats")
    lease = _lease(await connect(), bucket, ttl=1.0, _worker_bits=1)
    first = await lease.acquire()
    # Another process overwrites the key (as if our lease had lapsed and it took the id).
    kv = await (await connect()).jetstream().key_value(bucket)
    await kv.put(str(first), b"elsewhere:1:other:x")

    async def moved() -> bool:
        return lease.worker_id not in (None, first)

    await _eventually(moved, timeout=5.0)
    assert lease._generator.worker_id == lease.worker_id == 1 - first
    errors = [r.getMessage() for r in caplog.records if r.name == "catga.nats" and r.levelno == logging.ERROR]
    assert any(f"lost the lease of worker id `{first}`" in m and "elsewhere:1:other:x" in m for m in errors)
    await lease.release()
    assert (await kv.get(str(first))).value == b"elsewhere:1:other:x"  # not ours: left alone


async def test_an_unreachable_bucket_is_reported_after_the_ttl(
    connect: Any, bucket: str, nats_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="catga.nats")
    nc = await connect()
    lease = _lease(nc, bucket, ttl=1.0, _worker_bits=0)
    assert await lease.acquire() == 0

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "catga.nats" and r.levelno == logging.ERROR]

    async def reported() -> bool:
        return any("could not renew worker id `0`" in m and "may collide" in m for m in errors())

    nats_server.stop()
    try:
        waited = await _eventually(reported, timeout=6.0)
        assert waited > 0.5  # not before the TTL is over
    finally:
        nats_server.start()
    assert len([m for m in errors() if "could not renew" in m]) == 1  # once per outage
    # Back online: the lease is renewed (or, if the key expired meanwhile, taken again).
    kv = await (await connect()).jetstream().key_value(bucket)

    async def held() -> bool:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            return (await kv.get("0")).value == lease.holder.encode()
        return False

    await _eventually(held, timeout=6.0)
    assert lease.worker_id == 0
    await lease.release()


async def test_arguments_are_checked(connect: Any, bucket: str) -> None:
    nc = await connect()
    with pytest.raises(TypeError, match="`nc`"):
        WorkerIdLease("nats://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`ttl`.*`0`"):
        WorkerIdLease(nc, ttl=0)
    with pytest.raises(TypeError, match="`timeout`"):
        WorkerIdLease(nc, timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`_worker_bits`.*`9`"):
        WorkerIdLease(nc, _worker_bits=9)
    assert WorkerIdLease(nc).bucket == "catga_worker_ids"
    with pytest.raises(TypeError, match=r"`lease_worker_id`.*`1`"):
        NatsTransport("nats://x", service="s", lease_worker_id=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the transports


@pytest.fixture
def transport_bucket(bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the transports' process-wide lease at this test's bucket."""
    monkeypatch.setattr(_worker_id, "BUCKET", bucket)
    monkeypatch.delenv("CATGA_WORKER_ID", raising=False)
    return bucket


async def test_transports_of_a_process_share_one_lease(connect: Any, nats_url: str, transport_bucket: str) -> None:
    kv_nc = await connect()
    first = NatsTransport(nats_url, service="a", connect_options=FAST)
    second = NatsTransport(nats_url, service="b", events="jetstream", connect_options=FAST)
    await asyncio.gather(first.start(), second.start())
    worker_id = _worker_id.shared_worker_id()
    assert worker_id is not None
    assert default_generator().worker_id == worker_id
    kv = await kv_nc.jetstream().key_value(transport_bucket)
    assert len(await kv.keys()) == 1
    await first.stop()
    assert _worker_id.shared_worker_id() == worker_id  # `second` still uses it
    await second.stop()
    assert _worker_id.shared_worker_id() is None
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(str(worker_id))  # freed at once


async def test_a_pinned_worker_id_takes_no_lease(
    nats_url: str, transport_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = default_generator().worker_id
    for env, option in (("7", True), ("", False)):
        monkeypatch.setenv("CATGA_WORKER_ID", env)
        transport = NatsTransport(nats_url, service="pinned", connect_options=FAST, lease_worker_id=option)
        await transport.start()
        try:
            assert transport.connected
            assert _worker_id.shared_worker_id() is None
            assert default_generator().worker_id == before
        finally:
            await transport.stop()


async def test_start_fails_when_every_id_is_leased(connect: Any, nats_url: str, transport_bucket: str) -> None:
    nc = await connect()
    kv = await nc.jetstream().create_key_value(bucket=transport_bucket, ttl=30.0)
    await asyncio.gather(*(kv.create(str(i), b"elsewhere") for i in range(256)))
    transport = NatsTransport(nats_url, service="late", connect_options=FAST)
    with pytest.raises(catga.TransportError, match=f"`{transport_bucket}`.*`256` ids"):
        await transport.start()
    assert not transport.connected
    assert repr(transport) == "<NatsTransport service='late' events='core' stopped>"
    assert _worker_id.shared_worker_id() is None
    await transport.stop()  # a no-op
