"""catga over NATS and Redis against the raw clients, each beside its floor in the same run (issue 5).

Scenarios (every side in this process, on one event loop, over loopback to servers this module
starts on free ports, as the tests do):

- `nats-request`: a command sent over `NatsTransport` to a mediator serving it (its own
  connection), against a raw nats-py request to a raw responder (floor), and FastStream's NATS
  request (when installed). Target: catga <= 1.25 x the raw round trip.
- `nats-publish-core`, `nats-publish-jetstream`: events published through a mediator whose only
  handler is the transport's, against raw `nc.publish` (core; flushed at the end of the batch) and
  `js.publish` (JetStream, each stored before the next).
- `redis-claim-complete`: `RedisIdempotencyStore.claim` + `complete` (two round trips) against one
  raw `SET NX PX` round trip (the floor the issue names).

Rounds are fewer and batches smaller than in-process (a round trip is ~100-300 us): `N_REMOTE`
operations per round, `ROUNDS_REMOTE` rounds.
"""

import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import catga
from _report import Measurement, measure_beside_floor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _servers import Server, spawn_nats, spawn_redis  # the tests' server fixtures

N_REMOTE = 100
ROUNDS_REMOTE = max(int(os.environ.get("CATGA_BENCH_ROUNDS", "300")) // 10, 3)
WARMUP = 2

Op = Callable[[], Awaitable[Any]]


class Ping(catga.Command[int], tag="bench.remote.ping"):
    value: int


class Pinged(catga.Event, tag="bench.remote.pinged"):
    value: int


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    with tempfile.TemporaryDirectory(prefix="catga-bench-") as directory:
        nats = spawn_nats(Path(directory) / "nats")
        redis = spawn_redis(Path(directory) / "redis")
        try:
            yield nats, redis
        finally:
            nats.stop()
            redis.stop()


def _batch(loop: asyncio.AbstractEventLoop, op: Op) -> Callable[[], None]:
    async def run() -> None:
        for _ in range(N_REMOTE):
            await op()

    return lambda: loop.run_until_complete(run())


def measure_remote(
    benchmark: Any,
    record: Callable[[Measurement], None],
    scenario: str,
    case: str,
    batch: Callable[[], None],
    floor: Callable[[], None],
) -> None:
    """Time `batch` (`N_REMOTE` operations) beside its floor; see `_report.measure_beside_floor`."""
    measure_beside_floor(
        benchmark, record, scenario, case, batch, floor, per=N_REMOTE, rounds=ROUNDS_REMOTE, warmup=WARMUP
    )


# -------------------------------------------------------------------------------- the raw floors


class RawNats:
    """A raw nats-py responder and requester on two connections: the floor of a round trip."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def start(self) -> None:
        import nats

        self.server = await nats.connect(self.url)
        self.client = await nats.connect(self.url)
        self.js = self.client.jetstream()

        async def reply(msg: Any) -> None:
            await msg.respond(msg.data)

        await self.server.subscribe("bench.raw.ping", queue="bench.raw.ping", cb=reply)
        await self.server.flush()
        await self.js.add_stream(name="BENCH_RAW", subjects=["bench.raw.evt"])

    async def request(self) -> Any:
        return await self.client.request("bench.raw.ping", b"\x81\xa5value\x01", timeout=5)

    async def publish(self) -> None:
        await self.client.publish("bench.raw.evt", b"\x81\xa5value\x01")

    async def js_publish(self) -> None:
        await self.js.publish("bench.raw.evt", b"\x81\xa5value\x01")

    async def close(self) -> None:
        await self.client.close()
        await self.server.close()


@pytest.fixture(scope="module")
def raw_nats(loop: asyncio.AbstractEventLoop, servers: tuple[Server, Server]) -> Iterator[RawNats]:
    raw = RawNats(servers[0].url)
    loop.run_until_complete(raw.start())
    yield raw
    loop.run_until_complete(raw.close())


# ---------------------------------------------------------------------------------- the scenarios


@pytest.fixture(scope="module")
def catga_pair(loop: asyncio.AbstractEventLoop, servers: tuple[Server, Server]) -> Iterator[tuple[Any, Any]]:
    """A serving mediator and a client mediator, each with its own NATS connection."""
    from catga.nats import NatsTransport

    config = catga.Config.minimal()
    server = catga.Mediator(config=config, transport=NatsTransport(servers[0].url, service="bench-server"))

    @server.handler
    async def ping(message: Ping) -> int:
        return message.value

    client = catga.Mediator(config=config, transport=NatsTransport(servers[0].url, service="bench-client"))
    loop.run_until_complete(server.start())
    loop.run_until_complete(client.start())
    yield server, client
    loop.run_until_complete(client.stop())
    loop.run_until_complete(server.stop())


@pytest.fixture(scope="module")
def faststream_request(loop: asyncio.AbstractEventLoop, servers: tuple[Server, Server]) -> Iterator[Op]:
    """FastStream's NATS request to its own subscriber: what a user would write instead."""
    faststream_nats = pytest.importorskip("faststream.nats", reason="FastStream is not installed")
    broker = faststream_nats.NatsBroker(servers[0].url, logger=None)

    @broker.subscriber("bench.faststream.ping")
    async def ping(body: dict[str, int]) -> dict[str, int]:
        return body

    loop.run_until_complete(broker.start())

    async def op() -> Any:
        response = await broker.request({"value": 1}, "bench.faststream.ping", timeout=5)
        return await response.decode()

    yield op
    stop = getattr(broker, "stop", None) or broker.close
    loop.run_until_complete(stop())


@pytest.mark.parametrize("case", ["catga-rust", "faststream"])
def test_nats_request(
    benchmark: Any, record: Any, loop: Any, raw_nats: RawNats, catga_pair: tuple[Any, Any], case: str, request: Any
) -> None:
    floor = _batch(loop, raw_nats.request)
    if case == "faststream":
        op: Op = request.getfixturevalue("faststream_request")
    else:
        send, message = catga_pair[1].send, Ping(1)
        assert loop.run_until_complete(send(message)) == 1

        async def op() -> Any:
            return await send(message)

    measure_remote(benchmark, record, "nats-request", case, _batch(loop, op), floor)


@pytest.mark.parametrize("events", ["core", "jetstream"])
def test_nats_publish(benchmark: Any, record: Any, loop: Any, raw_nats: RawNats, servers: Any, events: str) -> None:
    from catga.nats import NatsTransport

    publisher = catga.Mediator(
        config=catga.Config.minimal(),
        transport=NatsTransport(servers[0].url, service=f"bench-publisher-{events}", events=events),
    )
    loop.run_until_complete(publisher.start())
    try:
        publish, event = publisher.publish, Pinged(1)
        raw = raw_nats.publish if events == "core" else raw_nats.js_publish

        async def op() -> None:
            await publish(event)

        measure_remote(benchmark, record, f"nats-publish-{events}", "catga-rust", _batch(loop, op), _batch(loop, raw))
    finally:
        loop.run_until_complete(publisher.stop())


def test_redis_claim_complete(benchmark: Any, record: Any, loop: Any, servers: Any) -> None:
    import redis.asyncio

    from catga.redis import RedisIdempotencyStore

    store = RedisIdempotencyStore(servers[1].url)
    raw = redis.asyncio.from_url(servers[1].url)
    ids = iter(range(1, 1 << 60))

    async def claim_complete() -> None:
        key = (next(ids), 0)
        await store.claim(key)
        await store.complete(key, 1)

    async def set_nx() -> None:
        await raw.set(f"bench:raw:{next(ids)}", b"1", nx=True, px=60_000)

    try:
        measure_remote(
            benchmark, record, "redis-claim-complete", "catga-rust", _batch(loop, claim_complete), _batch(loop, set_nx)
        )
    finally:
        loop.run_until_complete(store.aclose())
        loop.run_until_complete(raw.aclose())
