"""DeadLetter and `mediator.dead_letters` (API.md section 6)."""

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

import catga
from catga import Config, DeadLetterRecord
from catga.behaviors import DeadLetter, Retry
from catga.memory import MemoryDeadLetterStore


class Charge(catga.Command[str]):
    amount: int


class Charged(catga.Event):
    amount: int


def fake_retry(**kwargs: Any) -> Retry:
    retry = Retry(**{"jitter": 0.0, **kwargs})

    async def sleep(delay: float) -> None:
        pass

    retry._sleep = sleep
    retry._sleep_sync = lambda delay: None
    return retry


def dlq_mediator(max_attempts: int = 3, **changes: Any) -> catga.Mediator:
    config = Config.default().with_(retry=fake_retry(max_attempts=max_attempts), dead_letter=DeadLetter(**changes))
    return catga.Mediator(config=config)


class Failing:
    """Fails while `failing` is set, with `error` (a retryable TransportError by default)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error or catga.TransportError("payment service down")
        self.failing = True
        self.calls = 0

    async def __call__(self, cmd: Charge) -> str:
        self.calls += 1
        if self.failing:
            raise self.error
        return f"charged {cmd.amount}"


# ------------------------------------------------------------------------------------- records


async def test_a_message_that_finally_fails_is_recorded_with_every_field() -> None:
    mediator = dlq_mediator()
    handler = Failing()
    mediator.register(Charge, handler)
    message = Charge(42)
    before = datetime.now(UTC)
    with pytest.raises(catga.TransportError):
        await mediator.send(message)
    after = datetime.now(UTC)
    assert handler.calls == 3
    [record] = await mediator.dead_letters.list()
    assert isinstance(record, DeadLetterRecord)
    assert isinstance(record.id, int)
    assert record.message_type == catga.wire_name(Charge)
    assert record.message is message
    assert record.body == msgspec.msgpack.encode(message)
    assert msgspec.msgpack.decode(record.body, type=Charge) == message
    assert record.error_type == "catga.TransportError"
    assert record.error_message == "payment service down"
    assert "TransportError" in record.traceback
    assert "payment service down" in record.traceback
    assert record.attempts == 3  # retries included
    assert record.first_failed_at.tzinfo is UTC
    assert before <= record.first_failed_at <= record.last_failed_at <= after
    assert record.handler is None
    assert await mediator.dead_letters.get(record.id) == record


async def test_a_non_retryable_failure_is_recorded_after_one_attempt() -> None:
    mediator = dlq_mediator()
    mediator.register(Charge, Failing(ValueError("bad card")))
    with pytest.raises(ValueError, match="bad card"):
        await mediator.send(Charge(1))
    [record] = await mediator.dead_letters.list()
    assert record.attempts == 1
    assert record.error_type == "builtins.ValueError"
    assert record.first_failed_at == record.last_failed_at


async def test_without_retry_attempts_is_one() -> None:
    mediator = catga.Mediator(config=Config.minimal().with_(dead_letter=DeadLetter()))
    mediator.register(Charge, Failing())
    with pytest.raises(catga.TransportError):
        await mediator.send(Charge(1))
    assert [r.attempts for r in await mediator.dead_letters.list()] == [1]


async def test_successes_and_validation_failures_are_not_recorded() -> None:
    mediator = dlq_mediator()
    handler = Failing()
    handler.failing = False
    mediator.register(Charge, handler)
    mediator.validator(Charge, lambda cmd: ["negative"] if cmd.amount < 0 else [])
    assert await mediator.send(Charge(1)) == "charged 1"
    with pytest.raises(catga.ValidationError):
        await mediator.send(Charge(-1))
    assert await mediator.dead_letters.list() == []
    assert await mediator.dead_letters.count() == 0


async def test_the_store_keeps_the_newest_max_size_records() -> None:
    mediator = dlq_mediator(max_size=2)
    mediator.register(Charge, Failing(ValueError("no")))
    for amount in range(5):
        with pytest.raises(ValueError, match="no"):
            await mediator.send(Charge(amount))
    records = await mediator.dead_letters.list()
    assert [r.message.amount for r in records] == [3, 4]  # oldest first
    store = mediator.dead_letters.store
    assert isinstance(store, MemoryDeadLetterStore)
    assert store.evictions == 3
    assert [r.message.amount for r in await mediator.dead_letters.list(limit=1)] == [3]
    assert len(await mediator.dead_letters.list(limit=None)) == 2
    with pytest.raises(ValueError, match="`limit`"):
        await mediator.dead_letters.list(limit=-1)


async def test_dead_letters_always_exist_but_only_the_behaviour_records() -> None:
    mediator = catga.Mediator()
    assert isinstance(mediator.dead_letters.store, MemoryDeadLetterStore)
    assert mediator.dead_letters.store.max_size == 1000
    mediator.register(Charge, Failing(ValueError("no")))
    with pytest.raises(ValueError, match="no"):
        await mediator.send(Charge(1))
    assert await mediator.dead_letters.list() == []
    assert "MemoryDeadLetterStore" in repr(mediator.dead_letters)


async def test_a_configured_store_is_used() -> None:
    store = MemoryDeadLetterStore(max_size=10)
    mediator = catga.Mediator(config=Config.minimal().with_(dead_letter=DeadLetter(store=store)))
    assert mediator.dead_letters.store is store
    mediator.register(Charge, Failing(ValueError("no")))
    with pytest.raises(ValueError, match="no"):
        await mediator.send(Charge(1))
    assert len(store) == 1
    assert isinstance(store, catga.stores.DeadLetterStore)


async def test_a_failing_store_does_not_hide_the_handlers_error(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenStore(MemoryDeadLetterStore):
        async def add(self, record: DeadLetterRecord) -> None:
            raise catga.PersistenceError("disk full")

    mediator = catga.Mediator(config=Config.minimal().with_(dead_letter=DeadLetter(store=BrokenStore())))
    mediator.register(Charge, Failing(ValueError("no")))
    with pytest.raises(ValueError, match="no"):
        await mediator.send(Charge(1))
    assert "could not record a dead letter" in caplog.text


async def test_unencodable_messages_have_an_empty_body() -> None:
    @dataclasses.dataclass
    class Opaque:
        payload: object

    mediator = catga.Mediator(config=Config.minimal().with_(dead_letter=DeadLetter()))

    async def handle(request: Opaque) -> None:
        raise ValueError("no")

    mediator.register(Opaque, handle)
    message = Opaque(object())
    with pytest.raises(ValueError, match="no"):
        await mediator.send(message)
    [record] = await mediator.dead_letters.list()
    assert record.body == b""
    assert record.message is message


async def test_delete_and_purge() -> None:
    mediator = dlq_mediator()
    mediator.register(Charge, Failing(ValueError("no")))
    for amount in range(3):
        with pytest.raises(ValueError, match="no"):
            await mediator.send(Charge(amount))
    first, *_ = await mediator.dead_letters.list()
    assert await mediator.dead_letters.delete(first.id) is True
    assert await mediator.dead_letters.delete(first.id) is False
    assert await mediator.dead_letters.get(first.id) is None
    assert await mediator.dead_letters.purge() == 2
    assert await mediator.dead_letters.count() == 0


# --------------------------------------------------------------------------------------- retry


async def test_retry_resends_and_removes_the_record_on_success() -> None:
    mediator = dlq_mediator()
    handler = Failing()
    mediator.register(Charge, handler)
    with pytest.raises(catga.TransportError):
        await mediator.send(Charge(7))
    [record] = await mediator.dead_letters.list()
    handler.failing = False
    result = await mediator.dead_letters.retry(record.id)
    assert result.ok
    assert result.value == "charged 7"
    assert await mediator.dead_letters.list() == []
    assert handler.calls == 4


async def test_a_failed_retry_keeps_the_record_with_updated_attempts_and_error() -> None:
    mediator = dlq_mediator()
    handler = Failing()
    mediator.register(Charge, handler)
    with pytest.raises(catga.TransportError):
        await mediator.send(Charge(7))
    [record] = await mediator.dead_letters.list()
    handler.error = catga.TransportError("still down")
    result = await mediator.dead_letters.retry(record.id)
    assert not result.ok
    assert isinstance(result.error, catga.TransportError)
    [kept] = await mediator.dead_letters.list()  # not a second record
    assert kept.id == record.id
    assert kept.attempts == 6  # 3 + 3 retried again
    assert kept.error_message == "still down"
    assert kept.first_failed_at == record.first_failed_at
    assert kept.last_failed_at > record.last_failed_at


async def test_a_retry_failing_with_another_exception_wraps_it_in_the_result() -> None:
    mediator = dlq_mediator()
    handler = Failing()
    mediator.register(Charge, handler)
    with pytest.raises(catga.TransportError):
        await mediator.send(Charge(7))
    [record] = await mediator.dead_letters.list()
    handler.error = KeyError("gone")
    result = await mediator.dead_letters.retry(record.id)
    assert isinstance(result.error, catga.HandlerFailed)
    [kept] = await mediator.dead_letters.list()
    assert (kept.error_type, kept.attempts) == ("builtins.KeyError", 4)


async def test_a_retry_that_fails_validation_now_keeps_the_record() -> None:
    mediator = dlq_mediator()
    mediator.register(Charge, Failing())
    with pytest.raises(catga.TransportError):
        await mediator.send(Charge(7))
    [record] = await mediator.dead_letters.list()
    mediator.validator(Charge, lambda cmd: ["charges are closed"])
    result = await mediator.dead_letters.retry(record.id)
    assert isinstance(result.error, catga.ValidationError)
    [kept] = await mediator.dead_letters.list()
    assert kept.attempts == 3  # the handler did not run
    assert kept.error_type == "catga.ValidationError"


async def test_retry_of_an_unknown_id_is_a_key_error() -> None:
    mediator = catga.Mediator()
    with pytest.raises(KeyError, match="`12345`"):
        await mediator.dead_letters.retry(12345)


async def test_a_record_without_its_message_is_decoded_from_the_body() -> None:
    mediator = dlq_mediator()
    handler = Failing()
    mediator.register(Charge, handler)
    with pytest.raises(catga.TransportError):
        await mediator.send(Charge(9))
    [record] = await mediator.dead_letters.list()
    store = mediator.dead_letters.store
    await store.update(msgspec.structs.replace(record, message=None))  # as a remote store returns it
    handler.failing = False
    result = await mediator.dead_letters.retry(record.id)
    assert result.value == "charged 9"


async def test_an_undecodable_record_fails_its_retry() -> None:
    mediator = catga.Mediator()
    now = datetime.now(UTC)
    record = DeadLetterRecord(
        id=1,
        message_type="no.such.Type",
        body=b"\x80",
        error_type="x",
        error_message="x",
        first_failed_at=now,
        last_failed_at=now,
    )
    await mediator.dead_letters.store.add(record)
    result = await mediator.dead_letters.retry(1)
    assert isinstance(result.error, catga.SerializationError)
    assert "no.such.Type" in str(result.error)
    await mediator.dead_letters.store.update(
        msgspec.structs.replace(record, message_type=catga.wire_name(Charge), body=b"")
    )
    result = await mediator.dead_letters.retry(1)
    assert isinstance(result.error, catga.SerializationError)


async def test_messages_sent_by_the_retried_handler_are_dead_lettered_as_usual() -> None:
    class Refund(catga.Command[None]):
        amount: int

    mediator = dlq_mediator(max_attempts=1)

    @mediator.handler
    async def refund(cmd: Refund) -> None:
        raise ValueError("refunds are broken")

    @mediator.handler
    async def charge(cmd: Charge) -> str:
        if cmd.amount < 0:
            await mediator.send(Refund(-cmd.amount))
        return "ok"

    mediator.validator(Charge, lambda cmd: [] if cmd.amount != 0 else ["zero"])
    with pytest.raises(ValueError, match="refunds are broken"):
        await mediator.send(Charge(-5))
    records = await mediator.dead_letters.list()
    assert [r.message_type for r in records] == [catga.wire_name(Refund), catga.wire_name(Charge)]
    result = await mediator.dead_letters.retry(records[1].id)
    assert not result.ok
    records = await mediator.dead_letters.list()
    # The refund failed again and was recorded anew; the charge's record was updated.
    assert [r.message_type for r in records] == [
        catga.wire_name(Refund),
        catga.wire_name(Charge),
        catga.wire_name(Refund),
    ]
    assert records[1].attempts == 2


# -------------------------------------------------------------------------------------- events


async def test_a_failing_event_handler_is_recorded_and_retried_alone() -> None:
    mediator = dlq_mediator(max_attempts=1)
    calls: list[str] = []
    broken = True

    async def steady(evt: Charged) -> None:
        calls.append("steady")

    async def flaky(evt: Charged) -> None:
        calls.append("flaky")
        if broken:
            raise ValueError("flaky failed")

    mediator.register(Charged, steady)
    mediator.register(Charged, flaky)
    event = Charged(3)
    with pytest.raises(catga.PublishError):
        await mediator.publish(event)
    [record] = await mediator.dead_letters.list()
    assert record.handler is not None
    assert record.handler.endswith("flaky")
    assert record.message is event
    broken = False
    calls.clear()
    result = await mediator.dead_letters.retry(record.id)
    assert result.ok
    assert calls == ["flaky"]
    assert await mediator.dead_letters.list() == []


async def test_an_event_record_whose_handler_is_gone() -> None:
    mediator = dlq_mediator(max_attempts=1)

    async def flaky(evt: Charged) -> None:
        raise ValueError("no")

    mediator.register(Charged, flaky)
    with pytest.raises(catga.PublishError):
        await mediator.publish(Charged(1))
    [record] = await mediator.dead_letters.list()
    other = catga.Mediator(config=mediator.config)
    await other.dead_letters.store.add(record)
    result = await other.dead_letters.retry(record.id)
    assert isinstance(result.error, catga.HandlerNotFound)


async def test_two_event_handlers_with_one_name_are_told_apart() -> None:
    mediator = dlq_mediator(max_attempts=1)
    calls: list[str] = []
    mediator.register(Charged, lambda evt: calls.append("first"))

    def second(evt: Charged) -> None:
        calls.append("second")
        raise ValueError("second failed")

    mediator.register(Charged, lambda evt: second(evt))
    with pytest.raises(catga.PublishError):
        await mediator.publish(Charged(1))
    [record] = await mediator.dead_letters.list()
    assert record.handler is not None
    assert record.handler.endswith("<lambda>#2")
    calls.clear()
    await mediator.dead_letters.retry(record.id)
    assert calls == ["second"]


async def test_concurrent_publish_dead_letters_too() -> None:
    config = Config.default().with_(retry=None, dead_letter=DeadLetter())
    mediator = catga.Mediator(config=config, publish="concurrent")

    async def slow_failure(evt: Charged) -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    mediator.register(Charged, slow_failure)
    with pytest.raises(catga.PublishError):
        await mediator.publish(Charged(1))
    assert len(await mediator.dead_letters.list()) == 1


# ------------------------------------------------------------------------------------ send_sync


def test_send_sync_records_into_the_memory_store() -> None:
    mediator = dlq_mediator()

    def handle(cmd: Charge) -> str:
        raise catga.TransportError("down")

    mediator.register(Charge, handle)
    with pytest.raises(catga.TransportError):
        mediator.send_sync(Charge(1))
    [record] = asyncio.run(mediator.dead_letters.list())
    assert record.attempts == 3


def test_send_sync_rejects_a_store_that_needs_a_loop() -> None:
    class AsyncOnly:
        def __init__(self) -> None:
            self.inner = MemoryDeadLetterStore()

        async def add(self, record: DeadLetterRecord) -> None:
            await self.inner.add(record)

        async def list(self, limit: int = 100) -> list[DeadLetterRecord]:
            return await self.inner.list(limit)

        async def get(self, id: int) -> DeadLetterRecord | None:
            return await self.inner.get(id)

        async def update(self, record: DeadLetterRecord) -> None:
            await self.inner.update(record)

        async def delete(self, id: int) -> bool:
            return await self.inner.delete(id)

        async def purge(self) -> int:
            return await self.inner.purge()

    mediator = catga.Mediator(config=Config.minimal().with_(dead_letter=DeadLetter(store=AsyncOnly())))
    mediator.register(Charge, lambda cmd: "ok")
    with pytest.raises(TypeError, match="needs an event loop"):
        mediator.send_sync(Charge(1))
    assert asyncio.run(mediator.dead_letters.count()) == 0  # counted through `list` without `count`


def test_memory_store_arguments() -> None:
    with pytest.raises(ValueError, match="`max_size`"):
        MemoryDeadLetterStore(0)
    with pytest.raises(TypeError, match="`max_size`"):
        MemoryDeadLetterStore(1.5)  # type: ignore[arg-type]
    store = MemoryDeadLetterStore(3)
    assert repr(store) == "MemoryDeadLetterStore(max_size=3, records=0)"
    assert list(store) == []
