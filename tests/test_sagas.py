"""Sagas (issue 6): steps, retries, compensation, persistence, leases and recovery, spans, metrics."""

import asyncio
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import catga
from catga.behaviors import Retry
from catga.memory import MemoryDeadLetterStore, MemorySagaStore
from catga.observability import MetricsRegistry


class Flaky(catga.CatgaError):
    retryable = True


class Clock:
    """UNIX seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def _no_wait(seconds: float) -> None:
    return None


def _retry(max_attempts: int = 3) -> Retry:
    retry = Retry(max_attempts=max_attempts)
    retry._sleep = _no_wait
    return retry


def make_executor(
    mediator: catga.Mediator | None = None, **kwargs: Any
) -> tuple[catga.SagaExecutor, MemorySagaStore, MetricsRegistry]:
    store = kwargs.pop("store", None)
    store = MemorySagaStore() if store is None else store  # not `or`: an empty store is falsy
    registry = kwargs.pop("metrics", None) or MetricsRegistry()
    kwargs.setdefault("retry", _retry())
    kwargs.setdefault("compensation_retry", _retry(5))
    executor = catga.SagaExecutor(mediator or catga.Mediator(), store=store, metrics=registry, **kwargs)
    return executor, store, registry


def _four_step_functions(trace: list[str], n: int, fail_at: int | None) -> tuple[Any, Any]:
    async def action(ctx: catga.SagaContext) -> None:
        trace.append(f"exec{n}")
        ctx.data[f"step{n}"] = ctx.idempotency_key
        if n == fail_at:
            raise ValueError(f"step {n} broke")

    async def compensate(ctx: catga.SagaContext) -> None:
        trace.append(f"comp{n}")

    return action, compensate


def four_steps(trace: list[str], fail_at: int | None = None) -> catga.Saga:
    saga = catga.Saga("four")
    for number in range(1, 5):
        action, compensate = _four_step_functions(trace, number, fail_at)
        saga.add_step(action, compensate=compensate, name=f"step{number}")
    return saga


# ------------------------------------------------------------------------------------ semantics


async def test_a_failing_fourth_step_compensates_the_first_three_in_reverse() -> None:
    trace: list[str] = []
    executor, store, _ = make_executor()
    result = await executor.run(four_steps(trace, fail_at=4), data={"order": "o-1"}, saga_id="s-1")
    assert trace == ["exec1", "exec2", "exec3", "exec4", "comp3", "comp2", "comp1"]
    assert result.status is catga.SagaStatus.COMPENSATED
    assert isinstance(result.error, ValueError)
    assert result.completed_steps == ("step1", "step2", "step3")
    assert result.compensated_steps == ("step3", "step2", "step1")
    state = await store.get("s-1")
    assert state is not None
    assert state.status is catga.SagaStatus.COMPENSATED
    assert [record.status for record in state.steps] == ["compensated"] * 3 + ["failed"]
    assert state.steps[3].attempts == 1  # a ValueError is not retryable
    assert state.error == "ValueError: step 4 broke"
    assert state.lease_expires is None
    events = [entry.event for entry in state.history]
    assert events[0] == "saga_started"
    assert events[-1] == "saga_compensated"
    assert "step_failed" in events
    assert events.count("compensated") == 3


async def test_all_steps_succeed() -> None:
    trace: list[str] = []
    executor, _store, _ = make_executor()
    result = await executor.run(four_steps(trace), data={}, saga_id="s-ok")
    assert trace == ["exec1", "exec2", "exec3", "exec4"]
    assert result.status is catga.SagaStatus.COMPLETED
    assert result.ok
    assert result.error is None
    assert result.data == {f"step{n}": f"s-ok:step{n}" for n in range(1, 5)}
    assert result.compensated_steps == ()
    state = await executor.get("s-ok")
    assert state is not None
    assert state.status is catga.SagaStatus.COMPLETED
    # Written before and after every step, plus the start and the end: version grows by one each.
    assert state.version == 1 + 4 * 2 + 1


async def test_a_retryable_error_is_retried_and_the_attempts_recorded() -> None:
    saga = catga.Saga("flaky")
    attempts: list[int] = []
    keys: set[str] = set()

    @saga.step
    async def call(ctx: catga.SagaContext) -> None:
        attempts.append(ctx.attempt)
        keys.add(ctx.idempotency_key)
        if ctx.attempt < 3:
            raise Flaky("not yet")

    executor, _, _ = make_executor()
    result = await executor.run(saga, saga_id="f-1")
    assert result.status is catga.SagaStatus.COMPLETED
    assert attempts == [1, 2, 3]
    assert keys == {"f-1:call"}
    state = await executor.get("f-1")
    assert state is not None
    assert state.steps[0].attempts == 3


async def test_a_non_retryable_error_is_not_retried() -> None:
    saga = catga.Saga("fragile")
    calls: list[int] = []

    @saga.step(max_attempts=5)
    async def call(ctx: catga.SagaContext) -> None:
        calls.append(ctx.attempt)
        raise catga.ValidationError(["`sku` is unknown"])

    executor, _, _ = make_executor()
    result = await executor.run(saga)
    assert calls == [1]
    assert result.status is catga.SagaStatus.COMPENSATED
    assert isinstance(result.error, catga.ValidationError)


async def test_retry_on_of_the_step_makes_an_exception_retryable() -> None:
    saga = catga.Saga("retry-on")
    calls: list[int] = []

    @saga.step(retry_on=ConnectionError)
    async def call(ctx: catga.SagaContext) -> None:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("reset")

    executor, _, _ = make_executor()
    assert (await executor.run(saga)).status is catga.SagaStatus.COMPLETED
    assert calls == [1, 2]


def failing_compensation_saga(broken: dict[str, bool], trace: list[str]) -> catga.Saga:
    saga = catga.Saga("refund")

    async def release(ctx: catga.SagaContext) -> None:
        trace.append(f"release#{ctx.attempt}")
        if broken["release"]:
            raise RuntimeError("stock service down")

    @saga.step(compensate=release)
    async def reserve(ctx: catga.SagaContext) -> None:
        trace.append("reserve")

    @saga.step
    async def charge(ctx: catga.SagaContext) -> None:
        trace.append("charge")
        raise ValueError("card declined")

    return saga


async def test_a_compensation_that_keeps_failing_fails_the_saga_and_dead_letters_it() -> None:
    dead_letters = MemoryDeadLetterStore()
    mediator = catga.Mediator(
        config=catga.Config.default().with_(dead_letter=catga.behaviors.DeadLetter(store=dead_letters))
    )
    broken = {"release": True}
    trace: list[str] = []
    executor, _, registry = make_executor(mediator)
    saga = failing_compensation_saga(broken, trace)
    result = await executor.run(saga, saga_id="r-1")
    assert result.status is catga.SagaStatus.FAILED
    assert isinstance(result.error, ValueError)  # the failing step's error
    assert trace == ["reserve", "charge"] + [f"release#{n}" for n in range(1, 6)]
    [record] = await mediator.dead_letters.list()
    assert record.message_type == "saga:refund"
    assert record.message is None
    assert record.error_message == "stock service down"
    assert record.attempts == 5
    stored = catga._saga_state.decode_state("r-1", record.body)
    assert stored.status is catga.SagaStatus.FAILED
    assert stored.steps[0].status == "compensation_failed"

    # Fixed: `retry` resumes compensating.
    broken["release"] = False
    result = await executor.retry("r-1")
    assert result.status is catga.SagaStatus.COMPENSATED
    assert result.compensated_steps == ("reserve",)
    assert trace[-1] == "release#6"  # the attempts count on across runs
    state = await executor.get("r-1")
    assert state is not None
    assert "retried" in [entry.event for entry in state.history]
    [entry] = registry.sagas.snapshot()
    assert entry["sagas"] == {"completed": 0, "compensated": 1, "failed": 1}


async def test_retry_refuses_sagas_that_did_not_fail() -> None:
    executor, _, _ = make_executor()
    await executor.run(four_steps([]), saga_id="done")
    with pytest.raises(ValueError, match="`done` is `completed`"):
        await executor.retry("done")
    with pytest.raises(ValueError, match="no saga `nope`"):
        await executor.retry("nope")


async def test_rerunning_a_finished_saga_returns_the_stored_result() -> None:
    trace: list[str] = []
    executor, _, _ = make_executor()
    saga = four_steps(trace, fail_at=2)
    first = await executor.run(saga, saga_id="again")
    trace.clear()
    second = await executor.run(saga, data={"other": 1}, saga_id="again")
    assert trace == []
    assert second.status is first.status is catga.SagaStatus.COMPENSATED
    assert second.data == first.data
    assert second.completed_steps == first.completed_steps
    assert second.compensated_steps == first.compensated_steps == ("step1",)
    assert isinstance(second.error, catga.SagaFailed)
    assert "step 2 broke" in str(second.error)


async def test_a_saga_running_elsewhere_with_a_live_lease_is_a_conflict() -> None:
    clock = Clock()
    store = MemorySagaStore()
    other, _, _ = make_executor(store=store, clock=clock)
    saga = catga.Saga("slow")
    gate = asyncio.Event()

    @saga.step
    async def wait(ctx: catga.SagaContext) -> None:
        await gate.wait()

    task = asyncio.create_task(other.run(saga, saga_id="busy"))
    await asyncio.sleep(0.01)
    executor, _, _ = make_executor(store=store, clock=clock)
    with pytest.raises(catga.Conflict, match="`busy` is running in"):
        await executor.run(saga, saga_id="busy")
    gate.set()
    assert (await task).status is catga.SagaStatus.COMPLETED


# ------------------------------------------------------------------------------------- recovery


def recoverable_saga(trace: list[tuple[str, str, int]], gate: asyncio.Event | None) -> catga.Saga:
    saga = catga.Saga("ship")

    async def undo(ctx: catga.SagaContext) -> None:
        trace.append(("undo", ctx.idempotency_key, ctx.attempt))

    @saga.step(compensate=undo)
    async def reserve(ctx: catga.SagaContext) -> None:
        trace.append(("reserve", ctx.idempotency_key, ctx.attempt))

    @saga.step
    async def ship(ctx: catga.SagaContext) -> None:
        trace.append(("ship", ctx.idempotency_key, ctx.attempt))
        if gate is not None:
            await gate.wait()  # the owner "dies" here
        ctx.data["shipped"] = True

    return saga


async def test_recover_finishes_a_saga_whose_owner_died_mid_step() -> None:
    clock = Clock()
    store = MemorySagaStore()
    trace: list[tuple[str, str, int]] = []
    dying, _, _ = make_executor(store=store, clock=clock)
    task = asyncio.create_task(dying.run(recoverable_saga(trace, asyncio.Event()), saga_id="x-1"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    state = await store.get("x-1")
    assert state is not None
    assert state.status is catga.SagaStatus.RUNNING
    assert state.step == "ship"
    assert state.owner == dying.owner

    rescuer, _, _registry = make_executor(store=store, clock=clock)
    rescuer.register(recoverable_saga(trace, None))
    assert await rescuer.recover() == []  # the lease is still alive
    clock.now += 31
    [result] = await rescuer.recover()
    assert result.status is catga.SagaStatus.COMPLETED
    assert result.data["shipped"] is True
    assert trace == [("reserve", "x-1:reserve", 1), ("ship", "x-1:ship", 1), ("ship", "x-1:ship", 2)]
    state = await store.get("x-1")
    assert state is not None
    assert state.owner == rescuer.owner
    taken = [entry for entry in state.history if entry.event == "taken_over"]
    assert [(entry.step, entry.detail) for entry in taken] == [("ship", dying.owner)]
    assert await rescuer.recover() == []


async def test_recover_continues_compensating_a_state_written_by_hand() -> None:
    clock = Clock()
    store = MemorySagaStore()
    trace: list[tuple[str, str, int]] = []
    state = catga.SagaState(
        saga_id="x-2",
        name="ship",
        status=catga.SagaStatus.COMPENSATING,
        data={},
        steps=[
            catga._saga_state.StepRecord(name="reserve", status=catga._saga_state.StepStatus.COMPLETED, attempts=1),
            catga._saga_state.StepRecord(name="ship", status=catga._saga_state.StepStatus.FAILED, attempts=3),
        ],
        owner="dead-host:1:abcd",
        lease_expires=clock.now - 1,
        error="ValueError: no truck",
        error_type="ValueError",
    )
    assert await store.create(state)
    executor, _, _ = make_executor(store=store, clock=clock)
    executor.register(recoverable_saga(trace, None))
    [result] = await executor.recover()
    assert result.status is catga.SagaStatus.COMPENSATED
    assert trace == [("undo", "x-2:reserve", 1)]
    assert isinstance(result.error, catga.SagaFailed)
    assert "no truck" in str(result.error)


async def test_run_takes_over_an_expired_saga_of_the_same_id() -> None:
    clock = Clock()
    store = MemorySagaStore()
    trace: list[tuple[str, str, int]] = []
    dying, _, _ = make_executor(store=store, clock=clock)
    task = asyncio.create_task(dying.run(recoverable_saga(trace, asyncio.Event()), saga_id="x-3"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.now += 60
    executor, _, _ = make_executor(store=store, clock=clock)
    result = await executor.run(recoverable_saga(trace, None), saga_id="x-3")
    assert result.status is catga.SagaStatus.COMPLETED
    assert [name for name, _, _ in trace] == ["reserve", "ship", "ship"]


async def test_a_lost_lease_stops_the_run_with_a_conflict() -> None:
    clock = Clock()
    store = MemorySagaStore()
    saga = catga.Saga("stolen")
    gate = asyncio.Event()

    @saga.step
    async def first(ctx: catga.SagaContext) -> None:
        await gate.wait()

    owner, _, _ = make_executor(store=store, clock=clock)
    task = asyncio.create_task(owner.run(saga, saga_id="st-1"))
    await asyncio.sleep(0.01)
    state = await store.get("st-1")
    assert state is not None
    stolen = msgspec.structs.replace(state, owner="thief", version=state.version + 1)
    assert await store.save(stolen, state.version)
    gate.set()
    with pytest.raises(catga.Conflict, match="`st-1` was taken over"):
        await task


# ------------------------------------------------------------------------------------- timeouts


async def test_a_step_timeout_is_a_retryable_catga_timeout() -> None:
    saga = catga.Saga("timed")
    calls: list[int] = []

    @saga.step(timeout=0.01, max_attempts=2)
    async def slow(ctx: catga.SagaContext) -> None:
        calls.append(ctx.attempt)
        await asyncio.sleep(10)

    executor, _, _ = make_executor()
    result = await executor.run(saga, saga_id="t-1")
    assert calls == [1, 2]
    assert result.status is catga.SagaStatus.COMPENSATED
    assert isinstance(result.error, catga.Timeout)
    assert "`slow`" in str(result.error)
    assert "`0.01` s" in str(result.error)


# ------------------------------------------------------------------------------------ bad input


async def test_bad_definitions_are_refused() -> None:
    executor, _, _ = make_executor()
    with pytest.raises(ValueError, match="saga `empty` has no steps"):
        await executor.run(catga.Saga("empty"))

    saga = catga.Saga("dup")

    async def step(ctx: catga.SagaContext) -> None: ...

    saga.add_step(step)
    with pytest.raises(ValueError, match="already has a step named `step`"):
        saga.add_step(step)

    def sync_step(ctx: catga.SagaContext) -> None: ...

    with pytest.raises(TypeError, match="`sync_step` must be an `async def`"):
        saga.add_step(sync_step)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="compensation of step `other`"):
        saga.add_step(step, name="other", compensate=sync_step)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`max_attempts` of step `x` must be at least 1, got `0`"):
        saga.add_step(step, name="x", max_attempts=0)
    with pytest.raises(ValueError, match="non-empty"):
        catga.Saga("")


async def test_non_encodable_data_is_refused_before_any_step_runs() -> None:
    trace: list[str] = []
    executor, store, _ = make_executor()
    with pytest.raises(TypeError, match=r"`data\['when'\]` is `<object object"):
        await executor.run(four_steps(trace), data={"ok": 1, "when": object()}, saga_id="bad")
    assert trace == []
    assert await store.get("bad") is None


async def test_a_step_leaving_non_encodable_data_fails() -> None:
    saga = catga.Saga("leaky")

    @saga.step
    async def leak(ctx: catga.SagaContext) -> None:
        ctx.data["lock"] = asyncio.Lock()

    executor, _, _ = make_executor()
    result = await executor.run(saga)
    assert result.status is catga.SagaStatus.COMPENSATED
    assert isinstance(result.error, TypeError)
    assert "`data['lock']`" in str(result.error)
    assert "lock" not in result.data  # the failed attempt's changes are undone


async def test_a_corrupt_record_names_its_saga_and_spares_the_others() -> None:
    executor, store, _ = make_executor()
    await executor.run(four_steps([]), saga_id="good")
    store._records["broken"] = b"{not json"
    with pytest.raises(catga.PersistenceError, match="`broken`"):
        await executor.get("broken")
    with pytest.raises(catga.PersistenceError, match="`broken`"):
        await executor.run(four_steps([]), saga_id="broken")
    good = await executor.get("good")
    assert good is not None
    assert good.status is catga.SagaStatus.COMPLETED


# ------------------------------------------------------------------------------------ send_step


class ShipOrder(catga.Command[str]):
    order_id: str


class CancelShipment(catga.Command[None]):
    order_id: str


async def test_send_step_sends_and_stores_the_reply() -> None:
    mediator = catga.Mediator()
    sent: list[object] = []

    @mediator.handler
    async def ship(cmd: ShipOrder) -> str:
        sent.append(cmd)
        return f"tracking-{cmd.order_id}"

    @mediator.handler
    async def cancel(cmd: CancelShipment) -> None:
        sent.append(cmd)

    saga = catga.Saga("send")
    step = saga.add_step(
        catga.send_step(
            lambda d: ShipOrder(order_id=d.get("order_id", "")),
            compensate=lambda d: CancelShipment(order_id=d["order_id"]),
        )
    )
    assert step.name == "ship_order"

    @saga.step
    async def fail(ctx: catga.SagaContext) -> None:
        raise ValueError("later step failed")

    executor, _, _ = make_executor(mediator)
    result = await executor.run(saga, data={"order_id": "o-9"})
    assert result.data["ship_order"] == "tracking-o-9"
    assert [(type(message).__name__, message.order_id) for message in sent] == [  # type: ignore[attr-defined]
        ("ShipOrder", "o-9"),
        ("CancelShipment", "o-9"),
    ]
    assert result.status is catga.SagaStatus.COMPENSATED


# ------------------------------------------------------------------------- spans and metrics


async def test_spans_per_saga_step_and_compensation() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    executor, _, _ = make_executor(tracer_provider=provider)
    await executor.run(four_steps([], fail_at=2), saga_id="sp-1")
    spans = exporter.get_finished_spans()
    names = [span.name for span in spans]
    assert names == [
        "saga step four.step1",
        "saga step four.step2",
        "saga compensate four.step1",
        "saga four",
    ]
    root = spans[-1]
    assert root.attributes is not None
    assert root.attributes["catga.saga.id"] == "sp-1"
    assert root.attributes["catga.saga.status"] == "compensated"
    assert all(span.parent is not None and span.parent.span_id == root.context.span_id for span in spans[:-1])
    failed = spans[1]
    assert failed.status.status_code.name == "ERROR"
    assert failed.attributes is not None
    assert failed.attributes["catga.saga.step"] == "step2"


async def test_metrics() -> None:
    executor, _, registry = make_executor()
    await executor.run(four_steps([]))
    await executor.run(four_steps([], fail_at=3))
    [entry] = registry.sagas.snapshot()
    assert entry["saga"] == "four"
    assert entry["sagas"] == {"completed": 1, "compensated": 1, "failed": 0}
    assert entry["active"] == 0
    assert entry["compensations"] == 2
    assert entry["duration"]["count"] == 2
    text = registry.prometheus_text()
    assert 'catga_sagas_total{saga="four",status="completed"} 1' in text
    assert 'catga_saga_compensations_total{saga="four"} 2' in text
    assert 'catga_sagas_active{saga="four"} 0' in text
    assert 'catga_saga_duration_seconds_count{saga="four"} 2' in text


async def test_public_names() -> None:
    for name in ("Saga", "SagaContext", "SagaResult", "SagaStatus", "SagaState", "SagaExecutor", "send_step"):
        assert name in catga.__all__
        assert getattr(catga, name).__module__ == "catga"
    assert repr(catga.SagaStatus.COMPLETED) == "<SagaStatus.COMPLETED: 'completed'>"


async def test_saga_metrics_through_opentelemetry() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    executor, _, registry = make_executor()
    await executor.run(four_steps([], fail_at=2))
    reader = InMemoryMetricReader()
    registry.instrument(MeterProvider(metric_readers=[reader]))
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {m.name: m for m in data.resource_metrics[0].scope_metrics[0].metrics}
    points = {
        (dict(p.attributes or {})["catga.saga.status"], getattr(p, "value", None))
        for p in metrics["catga.sagas"].data.data_points
    }
    assert ("compensated", 1) in points
    [compensations] = metrics["catga.saga.compensations"].data.data_points
    assert getattr(compensations, "value", None) == 1


async def test_recover_resumes_compensating_a_failed_saga_once_it_can() -> None:
    broken = {"release": True}
    trace: list[str] = []
    executor, _, _ = make_executor()
    saga = failing_compensation_saga(broken, trace)
    assert (await executor.run(saga, saga_id="rf-1")).status is catga.SagaStatus.FAILED
    assert await executor.recover() == []  # failed sagas only on request
    still = await executor.recover(failed=True)  # still broken: it stays failed
    assert [result.status for result in still] == [catga.SagaStatus.FAILED]
    broken["release"] = False
    [result] = await executor.recover(failed=True)
    assert (result.saga_id, result.status) == ("rf-1", catga.SagaStatus.COMPENSATED)
    assert await executor.recover(failed=True) == []  # nothing left to do
