"""The bookkeeping built-ins end to end, through `catga.Mediator` (API.md section 6).

CircuitBreaker, RateLimit, ConcurrencyLimit, Idempotency and Cache run as the core's hooks (or as
Python layers for a remote store); every rule is checked here through `send`, `send_result` and
`publish`, with injected clocks instead of sleeps where time is the point.
"""

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

import catga
from catga.behaviors import Cache, CircuitBreaker, ConcurrencyLimit, Idempotency, RateLimit
from catga.stores import ClaimResult, ClaimStatus

MINIMAL = catga.Config.minimal()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class PlaceOrder(catga.Command[str]):
    customer: str


class CancelOrder(catga.Command[str]):
    order_id: str


class GetOrder(catga.Query[dict[str, str]]):
    __catga_cache_ttl__ = 30

    order_id: str


class GetCustomer(catga.Query[str]):
    customer_id: str


class OrderPlaced(catga.Event):
    order_id: str


class Handler:
    """A handler that counts its calls and fails while `failures` says so."""

    def __init__(self, result: Any = "ok") -> None:
        self.calls = 0
        self.result = result
        self.error: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, message: Any) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.result


def mediator_with(handler: Any, message_type: type = PlaceOrder, **config: Any) -> catga.Mediator:
    mediator = catga.Mediator(config=MINIMAL.with_(**config))
    mediator.register(message_type, handler)
    return mediator


# ---------------------------------------------------------------------------- circuit breaker


def breaker_mediator(threshold: int = 3, reset: float = 10.0) -> tuple[catga.Mediator, Handler, FakeClock]:
    clock = FakeClock()
    handler = Handler()
    mediator = mediator_with(
        handler, circuit_breaker=CircuitBreaker(failure_threshold=threshold, reset_timeout=reset, clock=clock)
    )
    return mediator, handler, clock


async def fail_times(mediator: catga.Mediator, handler: Handler, n: int) -> None:
    handler.error = RuntimeError("payment service down")
    for _ in range(n):
        with pytest.raises(RuntimeError, match="payment service down"):
            await mediator.send(PlaceOrder("ada"))


async def test_breaker_opens_after_exactly_n_consecutive_failures() -> None:
    mediator, handler, _ = breaker_mediator(threshold=3, reset=10.0)
    await fail_times(mediator, handler, 3)
    assert handler.calls == 3
    with pytest.raises(catga.CircuitOpen) as caught:
        await mediator.send(PlaceOrder("ada"))
    assert handler.calls == 3  # refused without running the handler
    assert caught.value.retry_after == pytest.approx(10.0)
    assert "`PlaceOrder`" in str(caught.value)
    result = await mediator.send_result(PlaceOrder("ada"))
    assert result.code is catga.ErrorCode.CIRCUIT_OPEN


async def test_breaker_stays_closed_below_the_threshold() -> None:
    mediator, handler, _ = breaker_mediator(threshold=3)
    await fail_times(mediator, handler, 2)
    handler.error = None
    assert await mediator.send(PlaceOrder("ada")) == "ok"


async def test_a_success_resets_the_count() -> None:
    mediator, handler, _ = breaker_mediator(threshold=3)
    await fail_times(mediator, handler, 2)
    handler.error = None
    await mediator.send(PlaceOrder("ada"))
    await fail_times(mediator, handler, 2)
    handler.error = None
    assert await mediator.send(PlaceOrder("ada")) == "ok"  # still closed: 2 + 2 were not consecutive


async def test_half_open_probe_success_closes() -> None:
    mediator, handler, clock = breaker_mediator(threshold=2, reset=10.0)
    await fail_times(mediator, handler, 2)
    clock.now += 5.0
    with pytest.raises(catga.CircuitOpen) as caught:
        await mediator.send(PlaceOrder("ada"))
    assert caught.value.retry_after == pytest.approx(5.0)
    clock.now += 5.0
    handler.error = None
    assert await mediator.send(PlaceOrder("ada")) == "ok"  # the probe
    assert await mediator.send(PlaceOrder("ada")) == "ok"  # closed again
    await fail_times(mediator, handler, 1)  # the count starts over
    handler.error = None
    assert await mediator.send(PlaceOrder("ada")) == "ok"


async def test_half_open_probe_failure_reopens_at_once() -> None:
    mediator, handler, clock = breaker_mediator(threshold=2, reset=10.0)
    await fail_times(mediator, handler, 2)
    clock.now += 10.0
    await fail_times(mediator, handler, 1)  # the probe fails
    calls = handler.calls
    with pytest.raises(catga.CircuitOpen) as caught:
        await mediator.send(PlaceOrder("ada"))
    assert handler.calls == calls
    assert caught.value.retry_after == pytest.approx(10.0)


async def test_only_one_probe_while_half_open() -> None:
    mediator, handler, clock = breaker_mediator(threshold=1, reset=10.0)
    await fail_times(mediator, handler, 1)
    clock.now += 10.0
    handler.error = None
    handler.gate = asyncio.Event()
    probe = asyncio.create_task(mediator.send(PlaceOrder("ada")))
    await asyncio.sleep(0)
    with pytest.raises(catga.CircuitOpen):
        await mediator.send(PlaceOrder("ada"))
    handler.gate.set()
    assert await probe == "ok"


@pytest.mark.parametrize(
    "error",
    [catga.ValidationError(["`customer` must not be empty"]), catga.Conflict("order `o-1` is in flight")],
    ids=["ValidationError", "Conflict"],
)
async def test_validation_errors_and_conflicts_do_not_count(error: catga.CatgaError) -> None:
    mediator, handler, _ = breaker_mediator(threshold=2)
    handler.error = error
    for _ in range(5):
        with pytest.raises(type(error)):
            await mediator.send(PlaceOrder("ada"))
    assert handler.calls == 5  # never refused


async def test_messages_rejected_by_validation_do_not_count() -> None:
    clock = FakeClock()
    config = MINIMAL.with_(
        validation=catga.behaviors.Validation(),
        circuit_breaker=CircuitBreaker(failure_threshold=1, reset_timeout=10.0, clock=clock),
    )
    mediator = catga.Mediator(config=config)
    handler = Handler()
    mediator.register(PlaceOrder, handler)

    @mediator.validator(PlaceOrder)
    def customer_given(message: PlaceOrder) -> list[str]:
        return [] if message.customer else ["`customer` must not be empty"]

    for _ in range(3):
        with pytest.raises(catga.ValidationError):
            await mediator.send(PlaceOrder(""))
    assert await mediator.send(PlaceOrder("ada")) == "ok"


async def test_breakers_are_per_type() -> None:
    mediator, handler, _ = breaker_mediator(threshold=1)
    other = Handler("cancelled")
    mediator.register(CancelOrder, other)
    await fail_times(mediator, handler, 1)
    with pytest.raises(catga.CircuitOpen):
        await mediator.send(PlaceOrder("ada"))
    assert await mediator.send(CancelOrder("o-1")) == "cancelled"


async def test_breakers_are_per_event_handler() -> None:
    clock = FakeClock()
    mediator = catga.Mediator(
        config=MINIMAL.with_(circuit_breaker=CircuitBreaker(failure_threshold=1, reset_timeout=10.0, clock=clock))
    )
    failing, fine = Handler(), Handler()
    failing.error = RuntimeError("smtp down")
    mediator.register(OrderPlaced, failing)
    mediator.register(OrderPlaced, fine)
    with pytest.raises(catga.PublishError) as first:
        await mediator.publish(OrderPlaced("o-1"))
    assert isinstance(first.value.exceptions[0], RuntimeError)
    with pytest.raises(catga.PublishError) as second:
        await mediator.publish(OrderPlaced("o-2"))
    assert isinstance(second.value.exceptions[0], catga.CircuitOpen)
    assert (failing.calls, fine.calls) == (1, 2)


# --------------------------------------------------------------------------------- rate limit


async def test_burst_two_at_one_per_second() -> None:
    clock = FakeClock()
    handler = Handler()
    mediator = mediator_with(handler, rate_limit=RateLimit(rate=1.0, burst=2.0, clock=clock))
    assert await mediator.send(PlaceOrder("a")) == "ok"
    assert await mediator.send(PlaceOrder("b")) == "ok"
    with pytest.raises(catga.RateLimited) as caught:
        await mediator.send(PlaceOrder("c"))
    assert caught.value.retry_after == pytest.approx(1.0, abs=1e-6)
    assert caught.value.retryable
    assert handler.calls == 2
    clock.now += 1.0
    assert await mediator.send(PlaceOrder("d")) == "ok"
    with pytest.raises(catga.RateLimited):
        await mediator.send(PlaceOrder("e"))
    assert handler.calls == 3


async def test_rate_limit_is_global_unless_per_type() -> None:
    clock = FakeClock()
    shared = mediator_with(Handler(), rate_limit=RateLimit(rate=1.0, burst=1.0, clock=clock))
    shared.register(CancelOrder, Handler())
    await shared.send(PlaceOrder("a"))
    with pytest.raises(catga.RateLimited):
        await shared.send(CancelOrder("o-1"))
    per_type = mediator_with(Handler(), rate_limit=RateLimit(rate=1.0, burst=1.0, per_type=True, clock=clock))
    per_type.register(CancelOrder, Handler())
    await per_type.send(PlaceOrder("a"))
    await per_type.send(CancelOrder("o-1"))
    with pytest.raises(catga.RateLimited):
        await per_type.send(PlaceOrder("b"))


async def test_wait_for_a_token() -> None:
    handler = Handler()
    mediator = mediator_with(handler, rate_limit=RateLimit(rate=40.0, burst=1.0, wait=True, max_wait=1.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = [await mediator.send(PlaceOrder(str(n))) for n in range(3)]
    assert results == ["ok"] * 3
    assert loop.time() - started >= 0.04  # two waits of ~25 ms
    assert handler.calls == 3


async def test_wait_longer_than_max_wait_is_rate_limited() -> None:
    clock = FakeClock()
    handler = Handler()
    mediator = mediator_with(handler, rate_limit=RateLimit(rate=1.0, burst=1.0, wait=True, max_wait=0.5, clock=clock))
    await mediator.send(PlaceOrder("a"))
    with pytest.raises(catga.RateLimited) as caught:
        await mediator.send(PlaceOrder("b"))
    assert caught.value.retry_after == pytest.approx(1.0)
    assert handler.calls == 1


async def test_a_rate_limited_message_releases_its_idempotency_claim() -> None:
    clock = FakeClock()
    handler = Handler()
    mediator = mediator_with(handler, idempotency=Idempotency(), rate_limit=RateLimit(rate=1.0, burst=1.0, clock=clock))
    await mediator.send(PlaceOrder("a"))
    message = PlaceOrder("b")
    with pytest.raises(catga.RateLimited):
        await mediator.send(message)
    clock.now += 1.0
    assert await mediator.send(message) == "ok"  # not a Conflict: the claim was released
    assert handler.calls == 2


# ------------------------------------------------------------------------------- concurrency


async def test_max_concurrent_one_serialises() -> None:
    running = 0
    peak = 0

    async def handle(message: PlaceOrder) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.002)
        running -= 1
        return message.customer

    mediator = mediator_with(handle, concurrency_limit=ConcurrencyLimit(max_concurrent=1))
    results = await asyncio.gather(*(mediator.send(PlaceOrder(str(n))) for n in range(6)))
    assert results == [str(n) for n in range(6)]
    assert peak == 1
    limiter = mediator.config.concurrency_limit._state.limiter  # type: ignore[union-attr]
    assert (limiter.in_flight, limiter.rejected) == (0, 0)


async def test_waiting_longer_than_wait_timeout_is_concurrency_limited() -> None:
    handler = Handler()
    handler.gate = asyncio.Event()
    mediator = mediator_with(handler, concurrency_limit=ConcurrencyLimit(max_concurrent=1, wait_timeout=0.03))
    first = asyncio.create_task(mediator.send(PlaceOrder("a")))
    await asyncio.sleep(0)
    with pytest.raises(catga.ConcurrencyLimited) as caught:
        await mediator.send(PlaceOrder("b"))
    assert caught.value.retryable
    handler.gate.set()
    assert await first == "ok"
    limiter = mediator.config.concurrency_limit._state.limiter  # type: ignore[union-attr]
    assert (limiter.in_flight, limiter.rejected) == (0, 1)


async def test_failures_and_cancellations_give_the_permit_back() -> None:
    handler = Handler()
    mediator = mediator_with(handler, concurrency_limit=ConcurrencyLimit(max_concurrent=1, wait_timeout=1.0))
    handler.error = RuntimeError("boom")
    with pytest.raises(RuntimeError):
        await mediator.send(PlaceOrder("a"))
    handler.error = None
    handler.gate = asyncio.Event()
    task = asyncio.create_task(mediator.send(PlaceOrder("b")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    handler.gate.set()
    assert await mediator.send(PlaceOrder("c")) == "ok"
    limiter = mediator.config.concurrency_limit._state.limiter  # type: ignore[union-attr]
    assert limiter.in_flight == 0


async def test_cancelled_while_waiting_for_a_permit() -> None:
    handler = Handler()
    handler.gate = asyncio.Event()
    mediator = mediator_with(
        handler, idempotency=Idempotency(), concurrency_limit=ConcurrencyLimit(max_concurrent=1, wait_timeout=5.0)
    )
    first = asyncio.create_task(mediator.send(PlaceOrder("a")))
    await asyncio.sleep(0)
    waiting = PlaceOrder("b")
    second = asyncio.create_task(mediator.send(waiting))
    await asyncio.sleep(0.01)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    handler.gate.set()
    assert await first == "ok"
    state = mediator.config.concurrency_limit._state  # type: ignore[union-attr]
    assert (state.limiter.in_flight, state.permits.waiting, state.limiter.rejected) == (0, 0, 0)
    assert await mediator.send(waiting) == "ok"  # its idempotency claim was released too
    assert handler.calls == 2


# ------------------------------------------------------------------------------- idempotency


async def test_an_idempotent_duplicate_runs_the_handler_once() -> None:
    handler = Handler("order-1")
    mediator = mediator_with(handler, idempotency=Idempotency())
    message = PlaceOrder("ada")
    first = await mediator.send_result(message)
    assert first.value == "order-1"
    assert "from_cache" not in first.metadata
    again = await mediator.send_result(message)
    assert again.value == "order-1"
    assert again.metadata["from_cache"] is True
    assert await mediator.send(message) == "order-1"
    assert handler.calls == 1
    # Another message (another id) runs.
    assert await mediator.send(PlaceOrder("ada")) == "order-1"
    assert handler.calls == 2


async def test_a_concurrent_duplicate_is_a_conflict() -> None:
    handler = Handler()
    handler.gate = asyncio.Event()
    mediator = mediator_with(handler, idempotency=Idempotency())
    message = PlaceOrder("ada")
    first = asyncio.create_task(mediator.send(message))
    await asyncio.sleep(0)
    with pytest.raises(catga.Conflict, match=f"`{message.message_id}`"):
        await mediator.send(message)
    result = await mediator.send_result(message)
    assert result.code is catga.ErrorCode.CONFLICT
    handler.gate.set()
    assert await first == "ok"
    assert handler.calls == 1


async def test_a_failure_is_not_stored_and_releases_the_claim() -> None:
    handler = Handler()
    mediator = mediator_with(handler, idempotency=Idempotency())
    message = PlaceOrder("ada")
    handler.error = ValueError("card declined")
    with pytest.raises(ValueError, match="card declined"):
        await mediator.send(message)
    handler.error = None
    assert await mediator.send(message) == "ok"
    assert handler.calls == 2


async def test_none_results_are_cached() -> None:
    handler = Handler(None)
    mediator = mediator_with(handler, idempotency=Idempotency())
    message = PlaceOrder("ada")
    assert await mediator.send(message) is None
    result = await mediator.send_result(message)
    assert result.ok
    assert result.value is None
    assert result.metadata["from_cache"] is True
    assert handler.calls == 1


async def test_results_expire_after_the_ttl() -> None:
    clock = FakeClock()
    handler = Handler()
    mediator = mediator_with(handler, idempotency=Idempotency(ttl=60.0, clock=clock))
    message = PlaceOrder("ada")
    await mediator.send(message)
    clock.now += 61.0
    await mediator.send(message)
    assert handler.calls == 2


async def test_event_handlers_are_keyed_each_on_its_own() -> None:
    mediator = catga.Mediator(config=MINIMAL.with_(idempotency=Idempotency()))
    email, audit = Handler(), Handler()
    audit.error = RuntimeError("audit log full")
    mediator.register(OrderPlaced, email)
    mediator.register(OrderPlaced, audit)
    event = OrderPlaced("o-1")
    with pytest.raises(catga.PublishError):
        await mediator.publish(event)
    audit.error = None
    await mediator.publish(event)  # redelivered: only the handler that failed runs again
    await mediator.publish(event)
    assert (email.calls, audit.calls) == (1, 2)


async def test_plain_objects_have_no_id_and_skip_idempotency() -> None:
    @dataclasses.dataclass
    class Ping:
        n: int

    handler = Handler("pong")
    mediator = mediator_with(handler, Ping, idempotency=Idempotency())
    ping = Ping(1)
    await mediator.send(ping)
    await mediator.send(ping)
    assert handler.calls == 2


async def test_idempotency_replays_while_the_breaker_is_open() -> None:
    clock = FakeClock()
    handler = Handler("order-1")
    mediator = mediator_with(
        handler,
        idempotency=Idempotency(),
        circuit_breaker=CircuitBreaker(failure_threshold=1, reset_timeout=30.0, clock=clock),
    )
    done = PlaceOrder("ada")
    await mediator.send(done)
    handler.error = RuntimeError("down")
    with pytest.raises(RuntimeError):
        await mediator.send(PlaceOrder("bob"))
    with pytest.raises(catga.CircuitOpen):
        await mediator.send(PlaceOrder("eve"))
    # Idempotency sits outside the breaker: a completed message still replays.
    assert await mediator.send(done) == "order-1"


# ------------------------------------------------------------------------------------- cache


async def test_a_cache_hit_returns_without_running_the_handler() -> None:
    handler = Handler({"id": "o1"})
    mediator = mediator_with(handler, GetOrder, cache=Cache())
    first = await mediator.send_result(GetOrder("o1"))
    assert "from_cache" not in first.metadata
    second = await mediator.send_result(GetOrder("o1"))  # another message, the same fields
    assert second.value == {"id": "o1"}
    assert second.metadata["from_cache"] is True
    assert handler.calls == 1
    await mediator.send(GetOrder("o2"))
    assert handler.calls == 2


async def test_cache_entries_expire() -> None:
    clock = FakeClock()
    handler = Handler({"id": "o1"})
    mediator = mediator_with(handler, GetOrder, cache=Cache(clock=clock))
    await mediator.send(GetOrder("o1"))
    clock.now += 29.0
    await mediator.send(GetOrder("o1"))
    assert handler.calls == 1
    clock.now += 2.0
    await mediator.send(GetOrder("o1"))
    assert handler.calls == 2


async def test_only_queries_that_opt_in_are_cached() -> None:
    handler = Handler("ada")
    mediator = mediator_with(handler, GetCustomer, cache=Cache())
    await mediator.send(GetCustomer("c1"))
    await mediator.send(GetCustomer("c1"))
    assert handler.calls == 2
    mediator.cache(GetCustomer, ttl=30)
    await mediator.send(GetCustomer("c1"))
    await mediator.send(GetCustomer("c1"))
    assert handler.calls == 3


async def test_failures_are_not_cached() -> None:
    handler = Handler({"id": "o1"})
    handler.error = LookupError("no order `o1`")
    mediator = mediator_with(handler, GetOrder, cache=Cache())
    with pytest.raises(LookupError):
        await mediator.send(GetOrder("o1"))
    handler.error = None
    await mediator.send(GetOrder("o1"))
    await mediator.send(GetOrder("o1"))
    assert handler.calls == 2


async def test_invalidate_a_type_or_matching_entries() -> None:
    calls: list[str] = []

    async def get_order(query: GetOrder) -> dict[str, str]:
        calls.append(query.order_id)
        return {"id": query.order_id}

    mediator = mediator_with(get_order, GetOrder, cache=Cache())
    for order_id in ("o1", "o2", "o1", "o2"):
        await mediator.send(GetOrder(order_id))
    assert calls == ["o1", "o2"]
    mediator.invalidate(GetOrder, order_id="o1")
    await mediator.send(GetOrder("o1"))
    await mediator.send(GetOrder("o2"))
    assert calls == ["o1", "o2", "o1"]
    mediator.invalidate(GetOrder)
    await mediator.send(GetOrder("o1"))
    await mediator.send(GetOrder("o2"))
    assert calls == ["o1", "o2", "o1", "o1", "o2"]


async def test_idempotency_and_cache_together() -> None:
    handler = Handler({"id": "o1"})
    mediator = mediator_with(handler, GetOrder, idempotency=Idempotency(), cache=Cache())
    query = GetOrder("o1")
    await mediator.send(query)
    assert (await mediator.send_result(query)).metadata["from_cache"] is True  # idempotency replay
    assert (await mediator.send_result(GetOrder("o1"))).metadata["from_cache"] is True  # cache hit
    assert handler.calls == 1


# ---------------------------------------------------------------------- remote stores (layers)


class DictIdempotencyStore:
    """A remote-like `IdempotencyStore`: async methods over a dict."""

    ttl = 86400.0

    def __init__(self) -> None:
        self.entries: dict[tuple[int, int], tuple[bool, Any]] = {}

    async def claim(self, key: tuple[int, int]) -> ClaimResult:
        await asyncio.sleep(0)  # a network round trip
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
        if self.entries.get(key, (True, None))[0] is False:
            del self.entries[key]


class DictCacheStore:
    """A remote-like `CacheStore`."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, bytes], Any] = {}

    async def get(self, group: int, key: bytes) -> tuple[bool, Any]:
        if (group, key) in self.entries:
            return True, self.entries[(group, key)]
        return False, None

    async def put(self, group: int, key: bytes, value: Any, ttl: float) -> None:
        self.entries[(group, key)] = value

    async def invalidate_group(self, group: int) -> None:
        self.entries = {k: v for k, v in self.entries.items() if k[0] != group}

    async def invalidate_where(self, group: int, predicate: Callable[[bytes], bool]) -> None:
        self.entries = {k: v for k, v in self.entries.items() if not (k[0] == group and predicate(k[1]))}


async def test_a_remote_idempotency_store() -> None:
    store = DictIdempotencyStore()
    clock = FakeClock()
    handler = Handler("order-1")
    mediator = mediator_with(
        handler,
        idempotency=Idempotency(store=store),
        circuit_breaker=CircuitBreaker(failure_threshold=1, reset_timeout=30.0, clock=clock),
    )
    message = PlaceOrder("ada")
    assert (await mediator.send_result(message)).value == "order-1"
    replay = await mediator.send_result(message)
    assert replay.metadata["from_cache"] is True
    assert handler.calls == 1
    handler.gate = asyncio.Event()
    pending = PlaceOrder("bob")
    first = asyncio.create_task(mediator.send(pending))
    await asyncio.sleep(0.01)
    with pytest.raises(catga.Conflict):
        await mediator.send(pending)
    handler.gate.set()
    await first
    handler.gate = None
    handler.error = RuntimeError("down")
    with pytest.raises(RuntimeError):
        await mediator.send(PlaceOrder("eve"))
    with pytest.raises(catga.CircuitOpen):  # the breaker runs as a layer, over the same state machine
        await mediator.send(PlaceOrder("eve"))
    assert await mediator.send(message) == "order-1"  # replay outside the open breaker


async def test_a_remote_cache_store() -> None:
    store = DictCacheStore()
    handler = Handler({"id": "o1"})
    mediator = mediator_with(handler, GetOrder, cache=Cache(store=store))
    await mediator.send(GetOrder("o1"))
    hit = await mediator.send_result(GetOrder("o1"))
    assert hit.metadata["from_cache"] is True
    assert handler.calls == 1
    with pytest.raises(TypeError, match="ainvalidate"):
        mediator.invalidate(GetOrder)
    await mediator.ainvalidate(GetOrder, order_id="o1")
    await mediator.send(GetOrder("o1"))
    assert handler.calls == 2
