"""InProcessTransport: request/reply, publish, queue groups, timeouts and failures in memory."""

import asyncio
import logging

import pytest

import catga
from catga.transports import (
    Envelope,
    EnvelopeCodec,
    EnvelopeHandler,
    InProcessTransport,
    Subscription,
    Transport,
    event_subject,
    request_subject,
)


class Greet(catga.Command[str], tag="test.transport.greet"):
    name: str


def _envelope(body: bytes = b"hi") -> Envelope:
    return Envelope({"k": "v"}, body)


def test_subjects() -> None:
    assert request_subject("orders.create") == "catga.req.orders.create"
    assert event_subject(Greet) == "catga.evt.test.transport.greet"
    with pytest.raises(ValueError, match="`'a b'`"):
        request_subject("a b")
    with pytest.raises(ValueError, match="`''`"):
        event_subject("")


def test_is_a_transport() -> None:
    assert isinstance(InProcessTransport(), Transport)
    with pytest.raises(ValueError, match=r"`drain_timeout`.*`0`"):
        InProcessTransport(drain_timeout=0)


async def test_request_reply_with_the_codec() -> None:
    codec = EnvelopeCodec()

    async def serve(envelope: Envelope) -> Envelope:
        message = codec.decode(envelope)
        assert isinstance(message, Greet)
        return codec.encode_reply(f"hello {message.name}")

    async with InProcessTransport() as transport:
        assert transport.connected
        await transport.subscribe(request_subject(Greet), serve, queue="greeters")
        reply = await transport.request(request_subject(Greet), codec.encode(Greet("ada")), timeout=1.0)
        assert codec.decode_reply(reply) == "hello ada"
    assert not transport.connected


async def test_error_reply_raises_remotely_as_locally() -> None:
    codec = EnvelopeCodec()

    async def serve(envelope: Envelope) -> Envelope:
        return codec.encode_reply(error=catga.RateLimited(2.0))

    async with InProcessTransport() as transport:
        await transport.subscribe("s", serve)
        reply = await transport.request("s", _envelope(), timeout=1.0)
    with pytest.raises(catga.RateLimited) as info:
        codec.decode_reply(reply)
    assert info.value.retry_after == 2.0


async def test_receivers_get_their_own_headers() -> None:
    seen: list[Envelope] = []

    async def mutate(envelope: Envelope) -> None:
        envelope.headers["k"] = "changed"
        seen.append(envelope)

    sent = _envelope()
    async with InProcessTransport() as transport:
        await transport.subscribe("s", mutate)
        await transport.subscribe("s", mutate)
        await transport.publish("s", sent)
        await transport.flush()
    assert sent.headers == {"k": "v"}
    assert len(seen) == 2


async def test_queue_group_shares_requests_round_robin() -> None:
    calls: list[str] = []

    def member(name: str) -> EnvelopeHandler:
        async def handle(envelope: Envelope) -> Envelope:
            calls.append(name)
            return Envelope({}, name.encode())

        return handle

    async with InProcessTransport() as transport:
        for name in ("a", "b", "c"):
            await transport.subscribe("s", member(name), queue="workers")
        replies = [(await transport.request("s", _envelope(), timeout=1.0)).body for _ in range(6)]
    assert replies == [b"a", b"b", b"c", b"a", b"b", b"c"]
    assert calls == ["a", "b", "c", "a", "b", "c"]


async def test_publish_reaches_every_plain_subscriber_and_one_per_group() -> None:
    received: list[str] = []

    def sink(name: str) -> EnvelopeHandler:
        async def handle(envelope: Envelope) -> None:
            received.append(name)

        return handle

    async with InProcessTransport() as transport:
        await transport.subscribe("evt", sink("plain-1"))
        await transport.subscribe("evt", sink("plain-2"))
        await transport.subscribe("evt", sink("billing-1"), queue="billing")
        await transport.subscribe("evt", sink("billing-2"), queue="billing")
        await transport.subscribe("evt", sink("mail-1"), queue="mail")
        await transport.subscribe("other", sink("other"))
        for _ in range(4):
            await transport.publish("evt", _envelope())
        await transport.flush()
    assert received.count("plain-1") == received.count("plain-2") == 4
    assert received.count("billing-1") == received.count("billing-2") == 2  # load shared
    assert received.count("mail-1") == 4
    assert "other" not in received


async def test_publish_does_not_wait_for_handlers() -> None:
    release = asyncio.Event()
    done: list[bool] = []

    async def slow(envelope: Envelope) -> None:
        await release.wait()
        done.append(True)

    async with InProcessTransport() as transport:
        await transport.subscribe("evt", slow)
        await transport.publish("evt", _envelope())
        assert done == []
        release.set()
        await transport.flush()
    assert done == [True]


async def test_publish_without_subscribers_is_a_no_op() -> None:
    async with InProcessTransport() as transport:
        await transport.publish("nobody", _envelope())


async def test_subscriber_failure_never_reaches_the_publisher(caplog: pytest.LogCaptureFixture) -> None:
    received: list[bytes] = []

    async def broken(envelope: Envelope) -> None:
        raise RuntimeError("boom")

    async def fine(envelope: Envelope) -> None:
        received.append(envelope.body)

    caplog.set_level(logging.ERROR, logger="catga.transports")
    async with InProcessTransport() as transport:
        await transport.subscribe("evt", broken)
        await transport.subscribe("evt", fine)
        await transport.publish("evt", _envelope())
        await transport.flush()
    assert received == [b"hi"]
    [record] = caplog.records
    assert record.name == "catga.transports"
    assert record.getMessage() == "subscriber of `evt` failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


async def test_request_to_a_failing_subscriber(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(envelope: Envelope) -> Envelope:
        raise RuntimeError("boom")

    caplog.set_level(logging.ERROR, logger="catga.transports")
    async with InProcessTransport() as transport:
        await transport.subscribe("s", broken)
        with pytest.raises(catga.TransportError, match="subscriber of `s` failed with `RuntimeError`") as info:
            await transport.request("s", _envelope(), timeout=1.0)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert len(caplog.records) == 1


async def test_request_without_reply() -> None:
    async def silent(envelope: Envelope) -> None:
        return None

    async with InProcessTransport() as transport:
        await transport.subscribe("s", silent)
        with pytest.raises(catga.TransportError, match="subscriber of `s` sent no reply"):
            await transport.request("s", _envelope(), timeout=1.0)


async def test_request_without_subscriber() -> None:
    async with InProcessTransport() as transport:
        with pytest.raises(catga.TransportError, match=r"no subscriber.*`catga.req.nobody`") as info:
            await transport.request("catga.req.nobody", _envelope(), timeout=1.0)
    assert info.value.retryable
    assert info.value.details == {"subject": "catga.req.nobody"}


async def test_request_timeout_leaves_the_responder_running() -> None:
    finished: list[bool] = []

    async def slow(envelope: Envelope) -> Envelope:
        await asyncio.sleep(0.2)
        finished.append(True)
        return envelope

    async with InProcessTransport() as transport:
        await transport.subscribe("s", slow)
        with pytest.raises(catga.Timeout, match=r"no reply to the request on `s` within `0.02` s") as info:
            await transport.request("s", _envelope(), timeout=0.02)
        assert isinstance(info.value, TimeoutError)
        assert info.value.retryable
    # `stop()` drained the responder.
    assert finished == [True]


async def test_request_rejects_a_bad_timeout() -> None:
    async with InProcessTransport() as transport:
        with pytest.raises(ValueError, match="`timeout` must be positive, got `0`"):
            await transport.request("s", _envelope(), timeout=0)


async def test_not_started_and_stopped() -> None:
    transport = InProcessTransport()
    with pytest.raises(catga.TransportError, match="cannot send a request to `s`: the transport is not started"):
        await transport.request("s", _envelope(), timeout=1.0)
    with pytest.raises(catga.TransportError, match="cannot publish to `s`: the transport is not started"):
        await transport.publish("s", _envelope())

    received: list[bytes] = []

    async def sink(envelope: Envelope) -> None:
        received.append(envelope.body)

    await transport.subscribe("s", sink)  # before start: receives once started
    await transport.start()
    await transport.publish("s", _envelope(b"1"))
    await transport.stop()
    assert received == [b"1"]
    with pytest.raises(catga.TransportError, match="not started"):
        await transport.publish("s", _envelope(b"2"))
    # Stopping drops the subscriptions, as closing a connection would.
    await transport.start()
    await transport.publish("s", _envelope(b"3"))
    await transport.stop()
    assert received == [b"1"]


async def test_stop_cancels_handlers_that_outlive_the_drain_timeout(caplog: pytest.LogCaptureFixture) -> None:
    cancelled: list[bool] = []

    async def stuck(envelope: Envelope) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    transport = InProcessTransport(drain_timeout=0.01)
    await transport.start()
    await transport.subscribe("s", stuck)
    await transport.publish("s", _envelope())
    await asyncio.sleep(0)
    await transport.stop()
    assert cancelled == [True]
    assert "cancelled `1` subscriber handlers" in caplog.text


async def test_unsubscribe() -> None:
    received: list[bytes] = []

    async def sink(envelope: Envelope) -> None:
        received.append(envelope.body)

    async with InProcessTransport() as transport:
        subscription = await transport.subscribe("s", sink, queue="q")
        assert isinstance(subscription, Subscription)
        assert (subscription.subject, subscription.queue) == ("s", "q")
        await transport.publish("s", _envelope(b"1"))
        await transport.flush()
        await subscription.unsubscribe()
        await subscription.unsubscribe()  # again: nothing
        await transport.publish("s", _envelope(b"2"))
        await transport.flush()
        with pytest.raises(catga.TransportError, match="no subscriber"):
            await transport.request("s", _envelope(), timeout=1.0)
    assert received == [b"1"]


async def test_subscribe_rejects_empty_names() -> None:
    async def sink(envelope: Envelope) -> None:
        return None

    transport = InProcessTransport()
    with pytest.raises(ValueError, match="`subject`"):
        await transport.subscribe("", sink)
    with pytest.raises(ValueError, match="`queue`"):
        await transport.subscribe("s", sink, queue="")


def test_usable_from_successive_event_loops() -> None:
    transport = InProcessTransport()

    async def round_trip() -> bytes:
        async def echo(envelope: Envelope) -> Envelope:
            return envelope

        async with transport:
            await transport.subscribe("s", echo)
            return (await transport.request("s", _envelope(), timeout=1.0)).body

    assert asyncio.run(round_trip()) == b"hi"
    assert asyncio.run(round_trip()) == b"hi"
