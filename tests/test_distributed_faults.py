"""Bad input and faults over real NATS and Redis servers (issue 5, "Bad input and faults"): garbage
on a catga subject, an unknown type, a wrong body, an oversize message, a NATS restart under live
mediators, a Redis restart under a live store. Each gets a clear error, a dead letter where a message
was involved, and the service stays up."""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

import catga
from catga.behaviors import Retry

pytest.importorskip("nats", reason="needs nats-py: pip install catga[nats]")

from catga.nats import NatsTransport


class Reserve(catga.Command[int], tag="faults.reserve"):
    sku: str
    quantity: int


class Reserved(catga.Event, tag="faults.reserved"):
    sku: str


class Blob(catga.Command[int], tag="faults.blob"):
    data: bytes


def retrying() -> catga.Config:
    retry = Retry(max_attempts=8, base_delay=0.2, max_delay=1.0, jitter=0.0)
    return catga.Config.default().with_(retry=retry)


@pytest.fixture
async def service(nats_url: str, unique: str) -> AsyncIterator[catga.Mediator]:
    mediator = catga.Mediator(config=retrying(), transport=NatsTransport(nats_url, service=f"stock{unique}"))

    @mediator.handler
    async def reserve(command: Reserve) -> int:
        return command.quantity

    @mediator.handler
    async def blob(command: Blob) -> int:
        return len(command.data)

    mediator.register(Reserved, lambda event: None)
    async with mediator:
        yield mediator


@pytest.fixture
async def client(nats_url: str, unique: str) -> AsyncIterator[catga.Mediator]:
    mediator = catga.Mediator(config=retrying(), transport=NatsTransport(nats_url, service=f"client{unique}"))
    async with mediator:
        yield mediator


async def _raw(nats_url: str, subject: str, body: bytes, headers: dict[str, str], *, request: bool) -> Any:
    import nats

    connection = await nats.connect(nats_url)
    try:
        if request:
            return await connection.request(subject, body, timeout=5, headers=headers)
        await connection.publish(subject, body, headers=headers)
        await connection.flush()
        return None
    finally:
        await connection.close()


async def _eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_garbage_unknown_types_and_wrong_shapes_are_rejected_and_kept(
    service: catga.Mediator, client: catga.Mediator, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    codec = catga.transports.EnvelopeCodec()
    with caplog.at_level(logging.ERROR, logger="catga.transports"):
        # Garbage bytes on a request subject: the requester gets a SerializationError, not a timeout.
        reply = await _raw(
            nats_url, "catga.req.faults.reserve", b"\xc1\xc1", {"catga-type": "faults.reserve"}, request=True
        )
        with pytest.raises(catga.SerializationError, match=r"faults\.reserve"):
            codec.decode_reply(catga.transports.Envelope(dict(reply.headers or {}), reply.data))
        # A body of the wrong shape.
        wrong = msgspec.msgpack.encode({"sku": 1, "quantity": "many"})
        reply = await _raw(nats_url, "catga.req.faults.reserve", wrong, {"catga-type": "faults.reserve"}, request=True)
        with pytest.raises(catga.SerializationError):
            codec.decode_reply(catga.transports.Envelope(dict(reply.headers or {}), reply.data))
        # An event of a type nobody knows, on a subject the service listens to.
        await _raw(nats_url, "catga.evt.faults.reserved", b"\x80", {"catga-type": "faults.nobody"}, request=False)

        async def three_kept() -> bool:
            return await service.dead_letters.count() == 3

        await _eventually(three_kept)
    records = await service.dead_letters.list()
    assert [record.message_type for record in records] == ["faults.reserve", "faults.reserve", "faults.nobody"]
    assert all(record.error_type == "catga.SerializationError" for record in records)
    assert records[0].body == b"\xc1\xc1"
    assert any("rejected an envelope" in record.getMessage() for record in caplog.records)
    # The service goes on.
    assert await client.send(Reserve("a1", 2)) == 2


async def test_an_oversize_message_is_refused_before_it_is_sent(
    service: catga.Mediator, client: catga.Mediator
) -> None:
    with pytest.raises(
        catga.SerializationError,
        match=r"message `faults\.blob` is too large: `100000[0-9]{2}` bytes, more than `max_size=1048576`",
    ):
        await client.send(Blob(b"x" * 10_000_000))
    assert await client.send(Blob(b"x" * 1000)) == 1000  # and the next one goes
    # Under the codec's limit, over the server's once the headers count: refused here, not sent (a
    # server closes the connection of a client that sends more than its `max_payload`).
    with pytest.raises(catga.SerializationError, match=r"more than the NATS server's `max_payload=1048576`"):
        await client.send(Blob(b"x" * 1_048_400))
    assert await client.send(Blob(b"x" * 1000)) == 1000


async def test_requests_survive_a_nats_restart(
    service: catga.Mediator, client: catga.Mediator, nats_server: Any
) -> None:
    assert await client.send(Reserve("a1", 1)) == 1
    nats_server.stop()
    restarted = asyncio.get_running_loop().run_in_executor(None, _restart_later, nats_server)
    # In flight during the outage: TransportError (retryable), which Retry recovers once it is back.
    assert await client.send(Reserve("a2", 2)) == 2
    await restarted
    assert await client.send(Reserve("a3", 3)) == 3


def _restart_later(server: Any) -> None:
    import time

    time.sleep(0.5)
    server.start()


async def test_a_redis_restart_is_a_persistence_error_then_works_again(redis_url: str, redis_server: Any) -> None:
    from catga.redis import RedisIdempotencyStore
    from catga.stores import ClaimStatus

    store = RedisIdempotencyStore(redis_url)
    try:
        assert (await store.claim((1, 0))).status == ClaimStatus.CLAIMED
        redis_server.stop()
        with pytest.raises(catga.PersistenceError, match=r"redis://127\.0\.0\.1"):
            await store.claim((2, 0))
        redis_server.start()

        async def works() -> bool:
            try:
                return (await store.claim((3, 0))).status == ClaimStatus.CLAIMED
            except catga.PersistenceError:
                return False

        await _eventually(works, timeout=10)
    finally:
        await store.aclose()


async def test_a_trace_continues_in_the_serving_process(nats_url: str, unique: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = catga.Config.default().with_(tracing=catga.behaviors.Tracing(tracer_provider=provider))
    server = catga.Mediator(config=config, transport=NatsTransport(nats_url, service=f"s{unique}"))
    server.register(Reserve, lambda command: command.quantity)
    client = catga.Mediator(config=config, transport=NatsTransport(nats_url, service=f"c{unique}"))
    async with server, client:
        assert await client.send(Reserve("a1", 4)) == 4
    spans = exporter.get_finished_spans()
    sends = [span for span in spans if span.name == "send faults.reserve"]
    handles = [span for span in spans if span.name == "handle faults.reserve"]
    assert len(sends) == len(handles) == 2  # one of each per process
    assert len({span.context.trace_id for span in spans}) == 1  # one trace across both
    [client_send] = [span for span in sends if span.parent is None]
    [client_handle] = [span for span in handles if span.parent and span.parent.span_id == client_send.context.span_id]
    [server_send] = [span for span in sends if span.parent is not None]
    assert server_send.parent is not None
    assert server_send.parent.is_remote  # it came in the traceparent header
    assert server_send.parent.span_id == client_handle.context.span_id
