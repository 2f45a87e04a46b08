"""`catga.health`: statuses, reports, `HealthRegistry` and its built-in checks (observability, part 4)."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

import catga
from catga.behaviors import CircuitBreaker, DeadLetter, Idempotency
from catga.health import CheckResult, HealthRegistry, HealthReport, HealthStatus
from catga.memory import MemoryIdempotencyStore
from catga.stores import ClaimResult, ClaimStatus, IdempotencyKey

HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


class PlaceOrder(catga.Command[str]):
    customer: str


class OrderPlaced(catga.Event):
    order_id: str


async def place_order_failing(cmd: PlaceOrder) -> str:
    raise ValueError(f"no stock for {cmd.customer}")


async def on_order_placed_failing(evt: OrderPlaced) -> None:
    raise ValueError(f"cannot mail {evt.order_id}")


def breaker_mediator(clock: Callable[[], float] | None = None) -> catga.Mediator:
    config = catga.Config.default().with_(
        circuit_breaker=CircuitBreaker(failure_threshold=1, reset_timeout=60, clock=clock), retry=None
    )
    return catga.Mediator(config=config)


# --------------------------------------------------------------------------------- the stores


class PingIdempotencyStore:
    """A real idempotency store (a dict) with an async `ping` that fails on demand."""

    def __init__(self, error: Exception | None = None, hang: bool = False) -> None:
        self.error = error
        self.hang = hang
        self.pings = 0
        self.entries: dict[IdempotencyKey, tuple[ClaimStatus, Any]] = {}

    @property
    def ttl(self) -> float:
        return 60.0

    async def ping(self) -> bool:
        self.pings += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.error is not None:
            raise self.error
        return True

    async def claim(self, key: IdempotencyKey) -> ClaimResult:
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = (ClaimStatus.IN_FLIGHT, None)
            return ClaimResult(ClaimStatus.CLAIMED)
        return ClaimResult(*entry)

    async def complete(self, key: IdempotencyKey, result: Any) -> None:
        self.entries[key] = (ClaimStatus.COMPLETED, result)

    async def release(self, key: IdempotencyKey) -> None:
        self.entries.pop(key, None)


class PingDeadLetterStore:
    """A real dead-letter store (a list) whose `ping` raises."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.records: list[catga.DeadLetterRecord] = []

    async def ping(self) -> None:
        if self.error is not None:
            raise self.error

    async def add(self, record: catga.DeadLetterRecord) -> None:
        self.records.append(record)

    async def list(self, limit: int | None = 100) -> Sequence[catga.DeadLetterRecord]:
        return self.records[:limit]

    async def get(self, record_id: str) -> catga.DeadLetterRecord | None:
        return next((r for r in self.records if r.id == record_id), None)

    async def update(self, record: catga.DeadLetterRecord) -> None:
        pass

    async def delete(self, record_id: str) -> bool:
        return False

    async def purge(self) -> int:
        return 0


# ------------------------------------------------------------------------ statuses and reports


def test_health_status_is_a_str_enum() -> None:
    assert HealthStatus.HEALTHY == "healthy"
    assert HealthStatus.DEGRADED.value == "degraded"
    assert HealthStatus("unhealthy") is UNHEALTHY
    assert HealthStatus.worst([]) is HEALTHY
    assert HealthStatus.worst([HEALTHY, DEGRADED]) is DEGRADED
    assert HealthStatus.worst([DEGRADED, UNHEALTHY, HEALTHY]) is UNHEALTHY


def test_check_result_coerces_its_status_and_rejects_unknown_ones() -> None:
    result = CheckResult("db", "degraded", "slow", 0.25)  # type: ignore[arg-type]
    assert result.status is DEGRADED
    assert result.to_dict() == {"status": "degraded", "detail": "slow", "duration_ms": 250.0}
    with pytest.raises(ValueError, match="`'sick'`"):
        CheckResult("db", "sick")  # type: ignore[arg-type]


def test_report_status_is_the_worst_of_its_checks() -> None:
    assert HealthReport([]).status is HEALTHY
    assert HealthReport([]).ok
    report = HealthReport([CheckResult("a", HEALTHY), CheckResult("b", DEGRADED, "x", 0.001)])
    assert report.status is DEGRADED
    assert report.ok
    assert list(report.checks) == ["a", "b"]
    assert report.to_dict() == {
        "status": "degraded",
        "checks": {
            "a": {"status": "healthy", "detail": None, "duration_ms": 0.0},
            "b": {"status": "degraded", "detail": "x", "duration_ms": 1.0},
        },
    }
    bad = HealthReport([CheckResult("a", DEGRADED), CheckResult("b", UNHEALTHY)])
    assert bad.status is UNHEALTHY
    assert not bad.ok
    assert "unhealthy" in repr(bad)
    with pytest.raises(ValueError, match="`a`"):
        HealthReport([CheckResult("a", HEALTHY), CheckResult("a", HEALTHY)])


def test_health_is_reachable_from_the_top_level_package() -> None:
    assert catga.health.HealthRegistry is HealthRegistry
    assert HealthRegistry.__module__ == "catga.health"


# ------------------------------------------------------------------------------- registration


def test_registration_errors_name_the_offending_value() -> None:
    registry = HealthRegistry()
    registry.add_check("db", lambda: True)
    with pytest.raises(ValueError, match="`db` is already registered"):
        registry.add_check("db", lambda: True)
    with pytest.raises(TypeError, match=r"`cache`.*`42`"):
        registry.add_check("cache", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`None`"):
        registry.add_check(None, lambda: True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        registry.add_check("", lambda: True)
    with pytest.raises(ValueError, match="`db`"):

        @registry.check("db")
        def again() -> None:
            pass

    assert registry.names == ("db",)


def test_built_in_names_are_taken() -> None:
    registry = HealthRegistry(catga.Mediator())
    assert registry.names == ("mediator", "circuit_breakers", "transport", "stores", "event_loop")
    with pytest.raises(ValueError, match="`mediator`"):
        registry.add_check("mediator", lambda: True)
    registry.remove_check("event_loop")
    assert "event_loop" not in registry.names
    with pytest.raises(KeyError, match="`event_loop`"):
        registry.remove_check("event_loop")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"check_timeout": 0}, "`check_timeout`.*`0`"),
        ({"check_timeout": float("inf")}, "`check_timeout`"),
        ({"loop_lag_degraded": -1.0}, "`loop_lag_degraded`.*`-1.0`"),
        ({"loop_lag_degraded": 2.0, "loop_lag_unhealthy": 1.0}, "`loop_lag_degraded`.*`loop_lag_unhealthy`"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HealthRegistry(**kwargs)


def test_constructor_rejects_non_numbers() -> None:
    with pytest.raises(TypeError, match=r"`check_timeout`.*`'1'`"):
        HealthRegistry(check_timeout="1")  # type: ignore[arg-type]


async def test_decorator_returns_the_function_and_flags_select_the_reports() -> None:
    registry = HealthRegistry()

    @registry.check("ready_only")
    def ready_only() -> bool:
        return True

    @registry.check("live_only", ready=False, live=True)
    async def live_only() -> None:
        return None

    @registry.check("both", live=True)
    def both() -> HealthStatus:
        return DEGRADED

    @registry.check("neither", ready=False)
    def neither() -> bool:
        return False

    assert ready_only() is True
    assert list((await registry.ready()).checks) == ["ready_only", "both"]
    assert list((await registry.live()).checks) == ["live_only", "both"]
    full = await registry.health()
    assert list(full.checks) == ["ready_only", "live_only", "both", "neither"]
    assert full.status is UNHEALTHY
    assert (await registry.ready()).status is DEGRADED


async def test_a_registry_without_checks_is_healthy() -> None:
    registry = HealthRegistry()
    for report in (await registry.health(), await registry.ready(), await registry.live()):
        assert report.status is HEALTHY
        assert dict(report.checks) == {}


# --------------------------------------------------------------------------------- user checks


def _async(value: object) -> Callable[[], Any]:
    async def check() -> object:
        await asyncio.sleep(0)
        return value

    return check


@pytest.mark.parametrize("make", [lambda value: lambda: value, _async], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("value", "status", "detail"),
    [
        (None, HEALTHY, None),
        (True, HEALTHY, None),
        (False, UNHEALTHY, None),
        (HEALTHY, HEALTHY, None),
        (DEGRADED, DEGRADED, None),
        (UNHEALTHY, UNHEALTHY, None),
        ("degraded", DEGRADED, None),
        ((DEGRADED, "replica lag 3 s"), DEGRADED, "replica lag 3 s"),
        ((False, "disk full"), UNHEALTHY, "disk full"),
        ((HEALTHY, None), HEALTHY, None),
        (CheckResult("ignored", DEGRADED, "from a result", 99.0), DEGRADED, "from a result"),
    ],
)
async def test_every_return_kind(
    make: Callable[[object], Callable[[], Any]], value: object, status: HealthStatus, detail: str | None
) -> None:
    registry = HealthRegistry()
    registry.add_check("user", make(value))
    report = await registry.health()
    result = report.checks["user"]
    assert (result.name, result.status, result.detail) == ("user", status, detail)
    assert 0 <= result.duration < 1  # the registry's timing, not the one a CheckResult carried
    assert report.status is status


@pytest.mark.parametrize("value", [42, "ok", (HEALTHY, 5), (HEALTHY, "a", "b"), ["healthy"], object()])
async def test_an_unexpected_return_value_is_unhealthy_and_named(value: object) -> None:
    registry = HealthRegistry()
    registry.add_check("weird", lambda: value)
    result = (await registry.health()).checks["weird"]
    assert result.status is UNHEALTHY
    assert result.detail is not None
    assert f"`{value!r}`" in result.detail


async def test_a_raising_check_is_unhealthy_with_the_exception_text() -> None:
    registry = HealthRegistry()

    @registry.check("sync_boom")
    def sync_boom() -> None:
        raise ValueError("boom")

    @registry.check("async_boom")
    async def async_boom() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("refused")

    @registry.check("bare")
    def bare() -> None:
        raise KeyError

    @registry.check("fine")
    def fine() -> bool:
        return True

    report = await registry.health()
    assert report.status is UNHEALTHY
    assert report.checks["sync_boom"].detail == "ValueError: boom"
    assert report.checks["async_boom"].detail == "ConnectionError: refused"
    assert report.checks["bare"].detail == "KeyError"
    assert report.checks["fine"].status is HEALTHY


async def test_a_check_raising_cancelled_error_is_unhealthy_and_the_caller_goes_on() -> None:
    registry = HealthRegistry()

    @registry.check("cancelled")
    async def cancelled() -> None:
        raise asyncio.CancelledError

    result = (await registry.health()).checks["cancelled"]
    assert (result.status, result.detail) == (UNHEALTHY, "cancelled")


async def test_a_hanging_check_times_out_and_the_report_comes_back_on_time() -> None:
    registry = HealthRegistry(check_timeout=0.2)
    cancelled = asyncio.Event()

    @registry.check("hangs")
    async def hangs() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    @registry.check("fine")
    async def fine() -> bool:
        return True

    started = time.perf_counter()
    report = await registry.health()
    elapsed = time.perf_counter() - started
    assert 0.15 < elapsed < 0.2 + 0.5
    assert report.status is UNHEALTHY
    assert report.checks["hangs"].detail == "timed out after 0.2 s"
    assert report.checks["hangs"].duration >= 0.15
    assert report.checks["fine"].status is HEALTHY
    await asyncio.wait_for(cancelled.wait(), 1)  # the hanging check was cancelled


async def test_a_check_that_resists_cancellation_does_not_hold_the_report() -> None:
    registry = HealthRegistry(check_timeout=0.1)
    finished = asyncio.Event()

    @registry.check("stubborn")
    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # cleanup that outlives the deadline
        finally:
            finished.set()

    started = time.perf_counter()
    report = await registry.health()
    assert time.perf_counter() - started < 0.1 + 0.3
    assert report.checks["stubborn"].status is UNHEALTHY
    await asyncio.wait_for(finished.wait(), 2)  # it winds down in the background


async def test_a_slow_sync_check_is_unhealthy() -> None:
    registry = HealthRegistry(check_timeout=0.05)

    @registry.check("blocking")
    def blocking() -> bool:
        time.sleep(0.1)
        return True

    result = (await registry.health()).checks["blocking"]
    assert result.status is UNHEALTHY
    assert result.detail is not None
    assert "over the `check_timeout` of 0.05 s" in result.detail


async def test_checks_run_concurrently() -> None:
    registry = HealthRegistry(check_timeout=2)
    for name in ("a", "b", "c", "d"):
        registry.add_check(name, _sleeper(0.2))
    started = time.perf_counter()
    report = await registry.health()
    assert time.perf_counter() - started < 0.6
    assert report.status is HEALTHY


def _sleeper(seconds: float) -> Callable[[], Any]:
    async def check() -> bool:
        await asyncio.sleep(seconds)
        return True

    return check


async def test_cancelling_the_caller_cancels_the_checks() -> None:
    registry = HealthRegistry(check_timeout=30)
    started, cancelled = asyncio.Event(), asyncio.Event()

    @registry.check("slow")
    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(registry.health())
    await asyncio.wait_for(started.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cancelled.wait(), 1)


# ------------------------------------------------------------------------------ built-in checks


async def test_mediator_check_follows_start_and_stop() -> None:
    mediator = catga.Mediator()
    registry = HealthRegistry(mediator)
    result = (await registry.ready()).checks["mediator"]
    assert (result.status, result.detail) == (UNHEALTHY, "not started")
    async with mediator:
        result = (await registry.ready()).checks["mediator"]
        assert (result.status, result.detail) == (HEALTHY, "running")
    assert (await registry.ready()).checks["mediator"].status is UNHEALTHY
    assert "mediator" not in (await registry.live()).checks  # a stopped mediator is no reason to restart


async def test_breaker_check_is_healthy_when_the_behaviour_is_off_or_unused() -> None:
    off = HealthRegistry(catga.Mediator())
    result = (await off.ready()).checks["circuit_breakers"]
    assert (result.status, result.detail) == (HEALTHY, "circuit breaker off")
    unused = HealthRegistry(breaker_mediator())
    assert (await unused.ready()).checks["circuit_breakers"].status is HEALTHY


async def test_an_open_breaker_degrades_readiness_naming_the_type() -> None:
    mediator = breaker_mediator()
    mediator.register(PlaceOrder, place_order_failing)
    registry = HealthRegistry(mediator)
    async with mediator:
        assert (await registry.ready()).checks["circuit_breakers"].status is HEALTHY
        assert not (await mediator.send_result(PlaceOrder("ada"))).ok  # one failure opens it
        assert isinstance((await mediator.send_result(PlaceOrder("ada"))).error, catga.CircuitOpen)
        report = await registry.ready()
    result = report.checks["circuit_breakers"]
    assert result.status is DEGRADED
    assert result.detail == "open: `PlaceOrder`"
    assert report.status is DEGRADED
    assert report.ok
    assert "circuit_breakers" not in (await registry.live()).checks


async def test_an_open_event_handler_breaker_is_named_by_its_handler() -> None:
    mediator = breaker_mediator()
    mediator.register(OrderPlaced, on_order_placed_failing)
    registry = HealthRegistry(mediator)
    with pytest.raises(catga.PublishError):
        await mediator.publish(OrderPlaced("o1"))
    result = (await registry.ready()).checks["circuit_breakers"]
    assert result.status is DEGRADED
    assert result.detail == f"open: `{on_order_placed_failing.__module__}.on_order_placed_failing`"


async def test_a_half_open_breaker_degrades_until_its_probe_succeeds() -> None:
    now = [1000.0]
    mediator = breaker_mediator(clock=lambda: now[0])
    gate = asyncio.Event()
    calls = []

    @mediator.handler
    async def place_order(cmd: PlaceOrder) -> str:
        calls.append(cmd.customer)
        if len(calls) == 1:
            raise ValueError("down")
        await gate.wait()
        return "ok"

    registry = HealthRegistry(mediator)
    assert not (await mediator.send_result(PlaceOrder("a"))).ok
    now[0] += 61  # past reset_timeout: the next send is the probe
    probe = asyncio.create_task(mediator.send(PlaceOrder("b")))
    while len(calls) < 2:
        await asyncio.sleep(0)
    result = (await registry.ready()).checks["circuit_breakers"]
    assert (result.status, result.detail) == (DEGRADED, "half-open: `PlaceOrder`")
    gate.set()
    assert await probe == "ok"
    result = (await registry.ready()).checks["circuit_breakers"]
    assert (result.status, result.detail) == (HEALTHY, "1 closed")


async def test_stores_check_without_configured_stores_is_healthy() -> None:
    result = (await HealthRegistry(catga.Mediator()).ready()).checks["stores"]
    assert (result.status, result.detail) == (HEALTHY, "no store configured")


async def test_stores_without_ping_count_as_reachable() -> None:
    config = catga.Config.default().with_(idempotency=Idempotency(store=MemoryIdempotencyStore()))
    result = (await HealthRegistry(catga.Mediator(config=config)).ready()).checks["stores"]
    assert (result.status, result.detail) == (HEALTHY, "reachable: idempotency `MemoryIdempotencyStore`")


async def test_stores_check_pings_each_configured_store() -> None:
    idempotency = PingIdempotencyStore()
    config = catga.Config.default().with_(
        idempotency=Idempotency(store=idempotency), dead_letter=DeadLetter(store=PingDeadLetterStore())
    )
    result = (await HealthRegistry(catga.Mediator(config=config)).ready()).checks["stores"]
    assert result.status is HEALTHY
    assert result.detail == "reachable: idempotency `PingIdempotencyStore`, dead_letter `PingDeadLetterStore`"
    assert idempotency.pings == 1


async def test_a_store_whose_ping_raises_is_unhealthy_with_the_error() -> None:
    config = catga.Config.default().with_(
        idempotency=Idempotency(store=PingIdempotencyStore()),
        dead_letter=DeadLetter(store=PingDeadLetterStore(ConnectionError("connection refused"))),
    )
    report = await HealthRegistry(catga.Mediator(config=config)).ready()
    result = report.checks["stores"]
    assert result.status is UNHEALTHY
    assert result.detail == "unreachable: dead_letter `PingDeadLetterStore` (ConnectionError: connection refused)"
    assert report.status is UNHEALTHY


async def test_a_store_whose_ping_hangs_is_unhealthy_and_named() -> None:
    config = catga.Config.default().with_(idempotency=Idempotency(store=PingIdempotencyStore(hang=True)))
    registry = HealthRegistry(catga.Mediator(config=config), check_timeout=0.25)
    started = time.perf_counter()
    result = (await registry.ready()).checks["stores"]
    assert time.perf_counter() - started < 0.25 + 0.5
    assert result.status is UNHEALTHY
    assert result.detail == "unreachable: idempotency `PingIdempotencyStore` (ping timed out after 0.2 s)"


async def test_event_loop_check_is_healthy_on_an_idle_loop() -> None:
    registry = HealthRegistry(catga.Mediator())
    for report in (await registry.live(), await registry.ready()):
        result = report.checks["event_loop"]
        assert result.status is HEALTHY
        assert result.detail is not None
        assert result.detail.startswith("lag ")
        assert result.detail.endswith(" ms")
    assert list((await registry.live()).checks) == ["event_loop"]


class _Blocker:
    """Blocks the event loop for `seconds` at every step until stopped, like CPU-bound code would."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = True

    async def run(self) -> None:
        while self.running:
            await asyncio.sleep(0)
            time.sleep(self.seconds)


@pytest.fixture
async def blocked_loop() -> AsyncIterator[_Blocker]:
    blocker = _Blocker(0.15)
    task = asyncio.create_task(blocker.run())
    await asyncio.sleep(0)
    yield blocker
    blocker.running = False
    await task


@pytest.mark.usefixtures("blocked_loop")
async def test_a_blocked_event_loop_degrades_liveness() -> None:
    registry = HealthRegistry(catga.Mediator(), check_timeout=10, loop_lag_degraded=0.1, loop_lag_unhealthy=10)
    report = await registry.live()
    result = report.checks["event_loop"]
    assert result.status is DEGRADED
    assert result.detail is not None
    assert "at or over 100 ms" in result.detail
    assert report.ok


@pytest.mark.usefixtures("blocked_loop")
async def test_a_badly_blocked_event_loop_is_unhealthy() -> None:
    registry = HealthRegistry(catga.Mediator(), check_timeout=10, loop_lag_degraded=0.05, loop_lag_unhealthy=0.1)
    result = (await registry.live()).checks["event_loop"]
    assert result.status is UNHEALTHY
    assert result.detail is not None
    assert "at or over 100 ms" in result.detail


def test_repr_and_properties() -> None:
    registry = HealthRegistry(catga.Mediator())
    assert repr(registry) == "<HealthRegistry: 5 checks, check_timeout=0.5>"
    assert registry.check_timeout == 0.5
    assert registry.mediator is not None


async def test_the_transport_check_follows_the_connection() -> None:
    from catga.transports import InProcessTransport

    transport = InProcessTransport()
    mediator = catga.Mediator(transport=transport)
    registry = HealthRegistry(mediator)
    report = await registry.ready()
    assert report.checks["transport"].status == HealthStatus.UNHEALTHY
    assert report.checks["transport"].detail == "InProcessTransport not connected"
    async with mediator:
        report = await registry.ready()
        assert report.checks["transport"].status == HealthStatus.HEALTHY
    in_process = await HealthRegistry(catga.Mediator()).ready()
    assert in_process.checks["transport"].detail == "no transport (in process)"
