"""The Logging behaviour (API.md section 6): the `catga` logger, its records and their extras."""

import asyncio
import logging
from collections.abc import Iterator

import pytest

import catga
from catga import Config
from catga.behaviors import Logging

LOGGER = logging.getLogger("catga")


class Ship(catga.Command[str]):
    order_id: str


class Shipped(catga.Event):
    order_id: str


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The records of the `catga` logger, whose level is restored afterwards."""
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Collect(level=logging.NOTSET)
    level = LOGGER.level
    LOGGER.addHandler(handler)
    try:
        yield seen
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)


def logging_mediator(level: int | str = logging.INFO) -> catga.Mediator:
    return catga.Mediator(config=Config.minimal().with_(logging=Logging(level=level)))


async def test_one_record_per_message_with_its_extras(records: list[logging.LogRecord]) -> None:
    LOGGER.setLevel(logging.INFO)
    mediator = logging_mediator()
    mediator.register(Ship, lambda cmd: "shipped")
    message = Ship("o-1", correlation_id=77)
    assert await mediator.send(message) == "shipped"
    [record] = records
    assert record.name == "catga"
    assert record.levelno == logging.INFO
    assert record.message_type == catga.wire_name(Ship)  # type: ignore[attr-defined]
    assert record.message_id == message.message_id  # type: ignore[attr-defined]
    assert record.correlation_id == 77  # type: ignore[attr-defined]
    assert record.outcome == "success"  # type: ignore[attr-defined]
    assert record.error is None  # type: ignore[attr-defined]
    assert isinstance(record.duration, float)  # type: ignore[attr-defined]
    assert record.duration >= 0  # type: ignore[attr-defined]
    assert "`Ship`" in record.getMessage()
    assert "success" in record.getMessage()


async def test_the_effective_correlation_id_of_a_top_level_message(records: list[logging.LogRecord]) -> None:
    LOGGER.setLevel(logging.DEBUG)
    mediator = logging_mediator(logging.DEBUG)
    mediator.register(Ship, lambda cmd: "shipped")
    message = Ship("o-1")
    await mediator.send(message)
    assert records[0].correlation_id == message.message_id  # type: ignore[attr-defined]


async def test_failures_are_logged_with_the_error(records: list[logging.LogRecord]) -> None:
    LOGGER.setLevel(logging.INFO)
    mediator = logging_mediator()

    async def handle(cmd: Ship) -> str:
        raise ValueError("no truck")

    mediator.register(Ship, handle)
    with pytest.raises(ValueError, match="no truck"):
        await mediator.send(Ship("o-1"))
    [record] = records
    assert record.outcome == "failure"  # type: ignore[attr-defined]
    assert record.error == "ValueError: no truck"  # type: ignore[attr-defined]
    assert "no truck" in record.getMessage()


async def test_cancellation_is_logged(records: list[logging.LogRecord]) -> None:
    LOGGER.setLevel(logging.INFO)
    mediator = logging_mediator()
    started = asyncio.Event()

    async def handle(cmd: Ship) -> str:
        started.set()
        await asyncio.Event().wait()
        return ""

    mediator.register(Ship, handle)
    task = asyncio.create_task(mediator.send(Ship("o-1")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.outcome for r in records] == ["cancelled"]  # type: ignore[attr-defined]


async def test_level_changes_after_the_mediator_is_built_apply(records: list[logging.LogRecord]) -> None:
    LOGGER.setLevel(logging.WARNING)
    mediator = logging_mediator(logging.INFO)
    mediator.register(Ship, lambda cmd: "shipped")
    await mediator.send(Ship("o-1"))
    assert records == []
    LOGGER.setLevel(logging.INFO)
    await mediator.send(Ship("o-2"))
    assert len(records) == 1
    LOGGER.setLevel(logging.ERROR)
    await mediator.send(Ship("o-3"))
    assert len(records) == 1
    logging.disable(logging.CRITICAL)
    try:
        LOGGER.setLevel(logging.DEBUG)
        await mediator.send(Ship("o-4"))
        assert len(records) == 1
    finally:
        logging.disable(logging.NOTSET)
    await mediator.send(Ship("o-5"))
    assert len(records) == 2


async def test_disabled_logging_adds_no_coroutine(records: list[logging.LogRecord]) -> None:
    LOGGER.setLevel(logging.WARNING)

    async def handle(cmd: Ship) -> str:
        return "shipped"

    mediator = logging_mediator(logging.DEBUG)
    mediator.register(Ship, handle)
    target = mediator._route(Ship)[1][0][0]
    coroutine = target(Ship("o-1"))
    assert coroutine.cr_code is handle.__code__  # the handler's own coroutine
    coroutine.close()


def test_sync_routes_and_send_sync_log_too(records: list[logging.LogRecord]) -> None:
    LOGGER.setLevel(logging.INFO)
    mediator = logging_mediator()

    def handle(cmd: Ship) -> str:
        if cmd.order_id == "bad":
            raise KeyError("bad")
        return "shipped"

    mediator.register(Ship, handle)
    assert mediator._route(Ship)[1][0][1] is False  # Logging keeps a sync route sync
    assert mediator.send_sync(Ship("o-1")) == "shipped"
    with pytest.raises(KeyError):
        mediator.send_sync(Ship("bad"))
    assert [r.outcome for r in records] == ["success", "failure"]  # type: ignore[attr-defined]
    asyncio.run(mediator.send(Ship("o-2")))
    assert len(records) == 3


async def test_event_handlers_are_logged_each_with_their_name(records: list[logging.LogRecord]) -> None:
    LOGGER.setLevel(logging.INFO)
    mediator = logging_mediator()

    async def notify(evt: Shipped) -> None:
        pass

    async def invoice(evt: Shipped) -> None:
        pass

    mediator.register(Shipped, notify)
    mediator.register(Shipped, invoice)
    await mediator.publish(Shipped("o-1"))
    handlers = [r.handler for r in records]  # type: ignore[attr-defined]
    assert [h.rsplit(".", 1)[-1] for h in handlers] == ["notify", "invoice"]
    assert "invoice`: success" in records[1].getMessage()


def test_logging_levels_by_name() -> None:
    assert Logging("warning").level == logging.WARNING
