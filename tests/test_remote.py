"""A mediator over a transport (API.md section 7), with the in-process transport: requests served
by another mediator, events reaching every other one once, errors crossing intact, and garbage
rejected without stopping the service. The same paths over NATS: tests/test_nats_mediator.py."""

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

import catga
from catga import Config
from catga.transports import Envelope, EnvelopeCodec, InProcessTransport, event_subject, request_subject


class Charge(catga.Command[int], tag="remote.charge"):
    order_id: str
    amount: int


class Refund(catga.Command[None], tag="remote.refund"):
    order_id: str


class Receipt(msgspec.Struct):
    order_id: str
    total: int


class GetReceipt(catga.Query[Receipt], tag="remote.get_receipt"):
    order_id: str


class Charged(catga.Event, tag="remote.charged"):
    order_id: str


class Mailed(catga.Event, tag="remote.mailed"):
    order_id: str


@pytest.fixture
async def bus() -> AsyncIterator[InProcessTransport]:
    transport = InProcessTransport()
    yield transport
    await transport.stop()


def quiet() -> Config:
    return Config.default().with_(retry=None)


async def test_a_request_with_no_local_handler_is_served_by_another_mediator(bus: InProcessTransport) -> None:
    orders = catga.Mediator(config=quiet(), transport=bus)
    payments = catga.Mediator(config=quiet(), transport=bus)

    @payments.handler
    async def charge(cmd: Charge) -> int:
        return cmd.amount * 100

    @payments.handler
    async def receipt(query: GetReceipt) -> Receipt:
        return Receipt(query.order_id, 7)

    async with payments, orders:
        assert await orders.send(Charge("o1", 3)) == 300
        assert await orders.send(GetReceipt("o1")) == Receipt("o1", 7)  # decoded as the response type
        result = await orders.send_result(Charge("o2", 1))
        assert result.ok
        assert result.value == 100


async def test_errors_cross_the_transport_as_the_same_class(bus: InProcessTransport) -> None:
    orders = catga.Mediator(config=quiet(), transport=bus)
    payments = catga.Mediator(config=quiet(), transport=bus)

    @payments.handler
    async def charge(cmd: Charge) -> int:
        if cmd.amount < 0:
            raise catga.ValidationError([f"amount `{cmd.amount}` must be positive"])
        raise KeyError(cmd.order_id)

    async with payments, orders:
        with pytest.raises(catga.ValidationError) as invalid:
            await orders.send(Charge("o1", -1))
        assert invalid.value.errors == ["amount `-1` must be positive"]
        with pytest.raises(catga.HandlerFailed, match="KeyError"):
            await orders.send(Charge("o1", 1))


async def test_a_request_nobody_serves_is_a_retryable_transport_error(bus: InProcessTransport) -> None:
    orders = catga.Mediator(config=quiet(), transport=bus)
    async with orders:
        with pytest.raises(catga.TransportError) as caught:
            await orders.send(Refund("o1"))
    assert caught.value.retryable


async def test_an_event_reaches_every_mediator_once(bus: InProcessTransport) -> None:
    orders = catga.Mediator(config=quiet(), transport=bus)
    mail = catga.Mediator(config=quiet(), transport=bus)
    seen: list[str] = []
    done = asyncio.Event()

    @orders.handler
    async def audit(event: Charged) -> None:
        seen.append(f"orders:{event.order_id}")

    @mail.handler
    async def send_mail(event: Charged) -> None:
        seen.append(f"mail:{event.order_id}")
        await mail.publish(Mailed(event.order_id))  # handlers' own events travel on

    @orders.handler
    async def mailed(event: Mailed) -> None:
        seen.append(f"orders:mailed:{event.order_id}")
        done.set()

    async with orders, mail:
        await orders.publish(Charged("o1"))
        await asyncio.wait_for(done.wait(), 5)
        await bus.flush()
    assert sorted(seen) == ["mail:o1", "orders:mailed:o1", "orders:o1"]  # each once


async def test_garbage_is_rejected_dead_lettered_and_the_service_goes_on(bus: InProcessTransport) -> None:
    payments = catga.Mediator(config=quiet(), transport=bus)
    payments.register(Charge, lambda cmd: cmd.amount)
    payments.register(Charged, lambda event: None)
    async with payments:
        garbage = Envelope(headers={"catga-type": "remote.charge", "content-type": "application/msgpack"}, body=b"\xc1")
        reply = await bus.request(request_subject(Charge), garbage, timeout=5)
        with pytest.raises(catga.SerializationError, match=r"remote\.charge"):
            EnvelopeCodec().decode_reply(reply)
        unknown = Envelope(headers={"catga-type": "remote.nobody", "content-type": "application/msgpack"}, body=b"")
        await bus.publish(event_subject(Charged), unknown)
        await bus.flush()
        records = await payments.dead_letters.list()
        assert [r.message_type for r in records] == ["remote.charge", "remote.nobody"]
        assert all(r.error_type == "catga.SerializationError" for r in records)
        assert records[0].body == b"\xc1"
        # Still serving.
        client = catga.Mediator(config=quiet(), transport=bus)
        async with client:
            assert await client.send(Charge("o1", 5)) == 5


def test_a_transport_must_be_a_transport() -> None:
    with pytest.raises(TypeError, match=r"`transport` must be a `catga\.transports\.Transport`, got `'nats://x'`"):
        catga.Mediator(transport="nats://x")  # type: ignore[arg-type]


async def test_sending_before_start_is_a_transport_error(bus: InProcessTransport) -> None:
    orders = catga.Mediator(config=quiet(), transport=bus)
    with pytest.raises(catga.TransportError):
        await orders.send(Refund("o1"))
    assert orders.transport is bus


async def test_a_dead_letter_retried_from_another_service_is_recorded_once(bus: InProcessTransport) -> None:
    from catga.behaviors import DeadLetter, Retry
    from catga.memory import MemoryDeadLetterStore

    fixed = False
    # The serving side retries three times and keeps its own dead letters.
    served_letters = MemoryDeadLetterStore()
    payments = catga.Mediator(
        config=Config.default().with_(
            retry=Retry(max_attempts=3, base_delay=0.001, jitter=0.0, retry_on=(RuntimeError,)),
            dead_letter=DeadLetter(store=served_letters),
        ),
        transport=bus,
    )

    @payments.handler
    async def charge(cmd: Charge) -> int:
        if not fixed:
            raise RuntimeError(f"the bank is down for `{cmd.order_id}`")
        return cmd.amount

    # The caller's dead letters (a DeadLetter behaviour, no Retry): the first failure lands here.
    caller_letters = MemoryDeadLetterStore()
    orders = catga.Mediator(config=Config.minimal().with_(dead_letter=DeadLetter(store=caller_letters)), transport=bus)
    async with payments, orders:
        with pytest.raises(catga.HandlerFailed, match="the bank is down for `o1`"):  # a foreign error crossed
            await orders.send(Charge("o1", 5))
        [record] = await orders.dead_letters.list()
        assert record.attempts == 1  # one remote call, as this mediator counts it
        assert len(await served_letters.list()) == 1  # the service's own record of its 3 attempts
        await served_letters.purge()

        result = await orders.dead_letters.retry(record.id)
        assert not result.ok
        [kept] = await orders.dead_letters.list()
        assert kept.id == record.id
        assert kept.attempts == 2  # this mediator's DeadLetter counts its own (one more call)
        assert await served_letters.list() == []  # a redelivery: not recorded a second time there

        fixed = True
        result = await orders.dead_letters.retry(record.id)
        assert result.ok
        assert result.value == 5
        assert await orders.dead_letters.list() == []


async def test_a_retry_without_a_local_dead_letter_behaviour_counts_the_services_attempts(
    bus: InProcessTransport,
) -> None:
    from catga._dead_letters import REDELIVERY, Redelivery
    from catga.behaviors import DeadLetter, Retry

    payments = catga.Mediator(
        config=Config.default().with_(
            retry=Retry(max_attempts=3, base_delay=0.001, jitter=0.0, retry_on=(RuntimeError,)),
            dead_letter=DeadLetter(),
        ),
        transport=bus,
    )

    @payments.handler
    async def charge(cmd: Charge) -> int:
        raise RuntimeError("the bank is down")

    orders = catga.Mediator(config=Config.minimal(), transport=bus)
    async with payments, orders:
        message = Charge("o2", 1)
        redelivery = Redelivery(message)
        token = REDELIVERY.set(redelivery)
        try:
            result = await orders.send_result(message)
        finally:
            REDELIVERY.reset(token)
        assert not result.ok
        assert redelivery.attempts == 3  # from the reply's `catga-attempts`
        assert isinstance(redelivery.error, catga.HandlerFailed)
        assert await payments.dead_letters.list() == []


async def test_a_second_start_serves_nothing_twice(bus: InProcessTransport) -> None:
    payments = catga.Mediator(config=quiet(), transport=bus)

    @payments.handler
    async def charge(cmd: Charge) -> int:
        return cmd.amount

    await payments.start()
    assert payments._remote is not None
    subscriptions = list(payments._remote._subscriptions)
    await payments.start()
    assert payments._remote._subscriptions == subscriptions
    await payments.stop()
    assert not payments.running


async def test_a_failed_start_leaves_no_subscription_behind() -> None:
    class Refusing(InProcessTransport):
        async def subscribe(self, subject: str, handler: object, *, queue: str | None = None) -> object:
            if subject.startswith("catga.evt."):
                raise catga.TransportError(f"cannot subscribe to `{subject}`")
            return await super().subscribe(subject, handler, queue=queue)  # type: ignore[arg-type]

    bus = Refusing()
    payments = catga.Mediator(config=quiet(), transport=bus)

    @payments.handler
    async def charge(cmd: Charge) -> int:
        return cmd.amount

    @payments.handler
    async def charged(evt: Charged) -> None:
        pass

    with pytest.raises(catga.TransportError, match="cannot subscribe"):
        await payments.start()
    assert not payments.running
    assert payments._remote is not None
    assert payments._remote._subscriptions == []
    # The request subscription made before the failure is gone: nobody serves `Charge`.
    orders = catga.Mediator(config=quiet(), transport=bus)
    async with orders:
        result = await orders.send_result(Charge("o1", 1))
    assert not result.ok
    await bus.stop()
