"""The built-in pipeline as a whole: presets, hooks around the middle chain, `send_result`
metadata, `send_sync` and the concurrent publish through every built-in (API.md sections 3, 5, 6)."""

import asyncio
import logging
from typing import Any

import pytest

import catga
from catga import Config
from catga.behaviors import (
    Cache,
    CircuitBreaker,
    ConcurrencyLimit,
    DeadLetter,
    Idempotency,
    Logging,
    RateLimit,
    Retry,
    Timeout,
    Tracing,
    Validation,
)
from catga.stores import ClaimResult, ClaimStatus


class Reserve(catga.Command[str]):
    item: str


class Reserved(catga.Event):
    item: str


class GetStock(catga.Query[int]):
    __catga_cache_ttl__ = 30

    item: str


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def quiet_retry(**kwargs: Any) -> Retry:
    retry = Retry(**{"jitter": 0.0, **kwargs})

    async def sleep(delay: float) -> None:
        pass

    retry._sleep = sleep
    retry._sleep_sync = lambda delay: None
    return retry


# ------------------------------------------------------------------------------------ presets


async def test_the_default_pipeline_runs() -> None:
    mediator = catga.Mediator()
    calls: list[str] = []

    @mediator.handler
    async def reserve(cmd: Reserve) -> str:
        calls.append(cmd.item)
        return f"reserved {cmd.item}"

    assert await mediator.send(Reserve("a")) == "reserved a"
    _, is_async, with_context, hooks = mediator._route(Reserve)[1][0]
    assert (is_async, with_context) == (True, True)
    assert hooks is not None  # idempotency, in the core


async def test_the_resilient_pipeline_runs_requests_events_and_queries() -> None:
    mediator = catga.Mediator(config=Config.resilient())
    log: list[str] = []
    mediator.register(Reserve, lambda cmd: "ok")
    mediator.register(Reserved, lambda evt: log.append(evt.item))
    mediator.register(GetStock, lambda query: 7)
    assert await mediator.send(Reserve("a")) == "ok"
    await mediator.publish(Reserved("b"))
    assert log == ["b"]
    assert await mediator.send(GetStock("c")) == 7
    assert mediator.send_sync(Reserve("d")) == "ok"


async def test_resilient_with_changes() -> None:
    config = Config.resilient().with_(timeout=None, rate_limit=None)
    assert config.timeout is None
    assert config.rate_limit is None
    assert isinstance(config.dead_letter, DeadLetter)
    mediator = catga.Mediator(config=config)
    mediator.register(Reserve, lambda cmd: "ok")
    assert await mediator.send(Reserve("a")) == "ok"


def test_tracing_is_a_hook_around_the_handler_itself() -> None:
    async def reserve(cmd: Reserve) -> str:
        return ""

    mediator = catga.Mediator(config=Config.minimal().with_(tracing=Tracing()))
    mediator.register(Reserve, reserve)
    target, is_async, with_context, hooks = mediator._route(Reserve)[1][0]
    assert (target, is_async, with_context) == (reserve, True, True)  # no Python layer
    assert repr(hooks) == "Hooks(tracing)"


def test_the_chain_is_composed_once_per_route() -> None:
    mediator = catga.Mediator()
    mediator.register(Reserve, lambda cmd: "ok")
    first = mediator._route(Reserve)
    mediator.send_sync(Reserve("a"))
    assert mediator._route(Reserve) is first


# -------------------------------------------------------------------------- from_cache metadata


async def test_an_idempotent_replay_is_marked_from_cache() -> None:
    mediator = catga.Mediator()
    calls: list[str] = []

    @mediator.handler
    async def reserve(cmd: Reserve) -> str:
        calls.append(cmd.item)
        return f"reserved {cmd.item}"

    message = Reserve("a")
    first = await mediator.send_result(message)
    again = await mediator.send_result(message)
    assert first.value == again.value == "reserved a"
    assert "from_cache" not in first.metadata
    assert again.metadata["from_cache"] is True
    assert await mediator.send(message) == "reserved a"
    assert calls == ["a"]


async def test_a_cached_query_is_marked_from_cache() -> None:
    mediator = catga.Mediator()
    calls: list[str] = []

    @mediator.handler
    def stock(query: GetStock) -> int:
        calls.append(query.item)
        return 3

    assert (await mediator.send_result(GetStock("a"))).metadata.get("from_cache") is None
    assert (await mediator.send_result(GetStock("a"))).metadata["from_cache"] is True
    assert calls == ["a"]


class RemoteIdempotencyStore:
    """An `IdempotencyStore` that is not the in-memory one: it runs as a Python layer."""

    ttl = 86400.0

    def __init__(self) -> None:
        self.entries: dict[tuple[int, int], tuple[bool, Any]] = {}

    async def claim(self, key: tuple[int, int]) -> ClaimResult:
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = (False, None)
            return ClaimResult(ClaimStatus.CLAIMED)
        if entry[0]:
            return ClaimResult(ClaimStatus.COMPLETED, entry[1])
        return ClaimResult(ClaimStatus.IN_FLIGHT)

    async def complete(self, key: tuple[int, int], result: Any) -> None:
        self.entries[key] = (True, result)

    async def release(self, key: tuple[int, int]) -> None:
        if self.entries.get(key, (True,))[0] is False:
            del self.entries[key]


async def test_a_remote_idempotency_store_runs_as_layers_and_reports_replays() -> None:
    store = RemoteIdempotencyStore()
    mediator = catga.Mediator(config=Config.default().with_(idempotency=Idempotency(store=store)))
    calls: list[str] = []

    @mediator.handler
    def reserve(cmd: Reserve) -> str:
        calls.append(cmd.item)
        return "ok"

    mediator.validator(Reserve, lambda cmd: ["empty item"] if not cmd.item else [])
    message = Reserve("a")
    assert (await mediator.send_result(message)).metadata.get("from_cache") is None
    assert (await mediator.send_result(message)).metadata["from_cache"] is True
    assert calls == ["a"]
    hooks = mediator._route(Reserve)[1][0][3]
    assert repr(hooks) == "Hooks(logging, tracing, metrics)"  # no bookkeeping hooks: Python layers instead
    with pytest.raises(catga.ValidationError):
        await mediator.send(Reserve(""))
    with pytest.raises(TypeError, match="remote idempotency or cache store"):
        mediator.send_sync(Reserve("b"))


# ------------------------------------------------------------------------------------ send_sync


def test_send_sync_runs_the_hooks_too() -> None:
    clock = FakeClock()
    config = Config.default().with_(
        rate_limit=RateLimit(rate=1.0, burst=2.0, clock=clock),
        circuit_breaker=CircuitBreaker(failure_threshold=1, reset_timeout=10.0, clock=clock),
        retry=None,
    )
    mediator = catga.Mediator(config=config)
    calls: list[str] = []

    def reserve(cmd: Reserve) -> str:
        calls.append(cmd.item)
        if cmd.item == "boom":
            raise ValueError("boom")
        return "ok"

    mediator.register(Reserve, reserve)
    message = Reserve("a")
    assert mediator.send_sync(message) == "ok"
    assert mediator.send_sync(message) == "ok"  # an idempotent replay: no token, no call
    assert calls == ["a"]
    with pytest.raises(ValueError, match="boom"):
        mediator.send_sync(Reserve("boom"))  # the second token; the breaker opens
    with pytest.raises(catga.RateLimited):
        mediator.send_sync(Reserve("b"))
    clock.now += 1.0
    with pytest.raises(catga.CircuitOpen):
        mediator.send_sync(Reserve("c"))
    assert calls == ["a", "boom"]


def test_send_sync_waits_for_a_token_when_told_to(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    monkeypatch.setattr("catga._hook_runner.time.sleep", sleep)
    config = Config.minimal().with_(rate_limit=RateLimit(rate=2.0, burst=1.0, wait=True, clock=clock))
    mediator = catga.Mediator(config=config)
    mediator.register(Reserve, lambda cmd: "ok")
    assert mediator.send_sync(Reserve("a")) == "ok"
    assert mediator.send_sync(Reserve("b")) == "ok"
    assert slept == [pytest.approx(0.5)]


def test_send_sync_concurrency_limit() -> None:
    config = Config.minimal().with_(concurrency_limit=ConcurrencyLimit(max_concurrent=1, wait_timeout=0.01))
    mediator = catga.Mediator(config=config)
    results: list[object] = []

    def reserve(cmd: Reserve) -> str:
        if cmd.item == "outer":
            try:
                mediator.send_sync(Reserve("inner"))  # no permit left: waits, then gives up
            except catga.ConcurrencyLimited as exc:
                results.append(exc)
        return "ok"

    mediator.register(Reserve, reserve)
    assert mediator.send_sync(Reserve("outer")) == "ok"
    assert len(results) == 1
    assert mediator.send_sync(Reserve("again")) == "ok"  # the permit came back


def test_send_sync_through_the_whole_chain(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="catga")
    config = Config.resilient().with_(logging=Logging("INFO"), retry=quiet_retry())
    mediator = catga.Mediator(config=config)
    calls: list[str] = []

    def reserve(cmd: Reserve) -> str:
        calls.append(cmd.item)
        if len(calls) < 3:
            raise catga.TransportError("down")
        return "ok"

    mediator.register(Reserve, reserve)
    mediator.validator(Reserve, lambda cmd: [] if cmd.item else ["empty item"])
    assert mediator.send_sync(Reserve("a")) == "ok"
    assert len(calls) == 3
    with pytest.raises(catga.ValidationError):
        mediator.send_sync(Reserve(""))
    assert [r.outcome for r in caplog.records] == ["success", "failure"]  # type: ignore[attr-defined]


def test_send_sync_rejects_async_pieces() -> None:
    mediator = catga.Mediator()

    async def reserve(cmd: Reserve) -> str:
        return "ok"

    mediator.register(Reserve, reserve)
    with pytest.raises(TypeError, match="async handler"):
        mediator.send_sync(Reserve("a"))
    with pytest.raises(TypeError, match="async handler"):
        mediator.send_sync(Reserve("a"))  # the same error again, without a growing traceback


def test_send_sync_of_a_cached_query() -> None:
    mediator = catga.Mediator()
    calls: list[str] = []
    mediator.register(GetStock, lambda query: calls.append(query.item) or 5)
    assert mediator.send_sync(GetStock("a")) == 5
    assert mediator.send_sync(GetStock("a")) == 5
    assert calls == ["a"]


# ----------------------------------------------------------------------------- concurrent publish


async def test_concurrent_publish_runs_each_handlers_hooks() -> None:
    mediator = catga.Mediator(publish="concurrent")
    calls: list[str] = []

    async def first(evt: Reserved) -> None:
        await asyncio.sleep(0)
        calls.append("first")

    def second(evt: Reserved) -> None:
        calls.append("second")

    mediator.register(Reserved, first)
    mediator.register(Reserved, second)
    event = Reserved("a")
    await mediator.publish(event)
    await mediator.publish(event)  # idempotent per handler
    assert sorted(calls) == ["first", "second"]
    await mediator.publish(Reserved("b"))
    assert len(calls) == 4


async def test_concurrent_publish_with_an_open_breaker() -> None:
    clock = FakeClock()
    config = Config.minimal().with_(circuit_breaker=CircuitBreaker(failure_threshold=1, clock=clock))
    mediator = catga.Mediator(config=config, publish="concurrent")
    calls: list[str] = []

    async def broken(evt: Reserved) -> None:
        calls.append("broken")
        raise ValueError("no")

    async def fine(evt: Reserved) -> None:
        calls.append("fine")

    mediator.register(Reserved, broken)
    mediator.register(Reserved, fine)
    with pytest.raises(catga.PublishError):
        await mediator.publish(Reserved("a"))
    with pytest.raises(catga.PublishError) as caught:
        await mediator.publish(Reserved("b"))
    assert [type(e) for e in caught.value.exceptions] == [catga.CircuitOpen]
    assert calls == ["broken", "fine", "fine"]


async def test_publish_with_every_builtin_and_a_timeout() -> None:
    config = Config.resilient().with_(timeout=Timeout(0.01), retry=quiet_retry(max_attempts=2))
    for strategy in ("sequential", "concurrent"):
        mediator = catga.Mediator(config=config, publish=strategy)  # type: ignore[arg-type]

        async def slow(evt: Reserved) -> None:
            await asyncio.Event().wait()

        mediator.register(Reserved, slow)
        with pytest.raises(catga.PublishError) as caught:
            await mediator.publish(Reserved("a"))
        assert [type(e) for e in caught.value.exceptions] == [catga.Timeout]
        [record] = await mediator.dead_letters.list()
        assert record.attempts == 2


async def test_validation_and_cache_together() -> None:
    mediator = catga.Mediator(config=Config.default().with_(validation=Validation(), cache=Cache()))
    mediator.register(GetStock, lambda query: 1)
    mediator.validator(GetStock, lambda query: [] if query.item else ["empty"])
    with pytest.raises(catga.ValidationError):
        await mediator.send(GetStock(""))
    assert await mediator.send(GetStock("a")) == 1


async def test_an_invalid_message_releases_its_idempotency_claim() -> None:
    mediator = catga.Mediator()
    calls: list[str] = []
    mediator.register(Reserve, lambda cmd: calls.append(cmd.item) or "ok")
    closed = True
    mediator.validator(Reserve, lambda cmd: ["closed"] if closed else [])
    message = Reserve("a")
    for _ in range(2):  # not a `Conflict` the second time: the claim was released
        with pytest.raises(catga.ValidationError):
            await mediator.send(message)
    closed = False
    assert await mediator.send(message) == "ok"
    assert calls == ["a"]


async def test_a_dead_lettered_event_handler_is_retried_through_its_hooks() -> None:
    config = Config.default().with_(retry=None, dead_letter=DeadLetter())
    mediator = catga.Mediator(config=config)
    calls: list[str] = []
    broken = True

    def flaky(evt: Reserved) -> None:
        calls.append("flaky")
        if broken:
            raise ValueError("no")

    mediator.register(Reserved, flaky)
    event = Reserved("a")
    with pytest.raises(catga.PublishError):
        await mediator.publish(event)
    [record] = await mediator.dead_letters.list()
    broken = False
    assert (await mediator.dead_letters.retry(record.id)).ok
    await mediator.publish(event)  # completed by the retry: idempotency skips it now
    assert calls == ["flaky", "flaky"]
