"""The mediator's cost against the floor, a direct await of the handler, measured in the same run.

Scenarios: send with no behaviours, send through 3 user behaviours, publish to 3 handlers, and
`new_id()`. Cases: the floor, the dict-dispatch reference (catga/_bench/_reference.py), and catga
on each core, both cores in this process (catga/_bench/_cores.py). A round runs a batch of `N`
operations inside one coroutine on one persistent event loop, so pytest-benchmark's times per
round in microseconds read as ns per operation. Batches are unrolled 10 times so the `for` costs
little; before every round the empty batch and the floors run too, and conftest.py prints the
table of ratios and targets at the end (see _report.py). benches/test_peers.py adds the peers.

Run with `make bench` (`BENCH_ARGS='-k publish'` to pick). Rounds: `CATGA_BENCH_ROUNDS` (default 300).
"""

import asyncio
import importlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import catga
from _report import SYNC_SCENARIOS, Measurement
from catga._bench._cores import mediator_class
from catga._bench._reference import DictMediator, compose
from catga._bench._scenarios import Ping, Pinged, add_one, handle_ping

N = 1000  # operations per round
UNROLL = 10  # operations per loop iteration
ROUNDS = int(os.environ.get("CATGA_BENCH_ROUNDS", "300"))
WARMUP_ROUNDS = max(ROUNDS // 10, 5)

CORES: dict[str, str] = {"catga-pure": "catga._pure", "catga-rust": "catga._catga"}
ASYNC_CASES = ["floor", "dict", "catga-pure", "catga-rust"]

Batch = Callable[[], object]


# ----------------------------------------------------------------------------- messages, handlers
#
# `Ping`, `Pinged`, `handle_ping` and `add_one` are `catga bench`'s (catga/_bench/_scenarios.py), so
# both measure the same thing.


class Counter:
    """An event handler that counts its calls, so a publish that skipped one shows."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, evt: Pinged) -> None:
        self.calls += 1


# ---------------------------------------------------------------------------------------- batches


def _batch_function(prefix: str, op: str, names: dict[str, Any]) -> Callable[[], Any]:
    """`[async] def batch()` running `op` N times; `names` are bound as defaults (fast locals)."""
    params = ", ".join(f"{name}={name}" for name in names)
    body = "\n".join(["    for _ in range(iterations):", *[f"        {op}" for _ in range(UNROLL)]])
    namespace: dict[str, Any] = {**names, "iterations": N // UNROLL}
    exec(f"{prefix}def batch({params}):\n{body}\n", namespace)
    return namespace["batch"]  # type: ignore[no-any-return]


def async_batch(loop: asyncio.AbstractEventLoop, op: str, **names: Any) -> Batch:
    """One round: `op` awaited N times inside one coroutine on `loop`."""
    batch = _batch_function("async ", op, names)
    return lambda: loop.run_until_complete(batch())


def sync_batch(op: str, **names: Any) -> Batch:
    return _batch_function("", op, names)


def floor_chain() -> Callable[[Any], Any]:
    return compose(handle_ping, [add_one] * 3)


@pytest.fixture(scope="session")
def bench_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def floors(bench_loop: asyncio.AbstractEventLoop) -> dict[str, Batch]:
    """The reference batches, by name: the empty ones and the floor of every scenario."""
    h1, h2, h3 = Counter(), Counter(), Counter()
    return {
        "loop-async": async_batch(bench_loop, "pass"),
        "loop-sync": sync_batch("pass"),
        "send": async_batch(bench_loop, "await handler(req)", handler=handle_ping, req=Ping()),
        "send-3-behaviours": async_batch(bench_loop, "await chain(req)", chain=floor_chain(), req=Ping()),
        "publish-3": async_batch(
            bench_loop, "await h1(evt); await h2(evt); await h3(evt)", h1=h1, h2=h2, h3=h3, evt=Pinged()
        ),
        "new_id": sync_batch("new_id()", new_id=time.time_ns),
    }


def measure(
    benchmark: Any,
    record: Callable[[Measurement], None],
    floors: dict[str, Batch],
    scenario: str,
    case: str,
    batch: Batch,
) -> None:
    """Time `batch` with pytest-benchmark and, before each of its rounds, its loop and floors."""
    references = {
        "loop": floors["loop-sync" if scenario in SYNC_SCENARIOS else "loop-async"],
        "floor": floors[scenario],
    }
    if scenario == "send-3-behaviours":
        references["send"] = floors["send"]
    samples: dict[str, list[int]] = {name: [] for name in references}

    def run_references() -> None:
        for name, reference in references.items():
            start = time.perf_counter_ns()
            reference()
            samples[name].append(time.perf_counter_ns() - start)

    benchmark.group = scenario
    benchmark.name = f"{scenario}[{case}]"
    benchmark.pedantic(batch, setup=run_references, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once, as a test
        return
    reference_ns = {name: statistics.median(times[WARMUP_ROUNDS:]) / N for name, times in samples.items()}
    record(Measurement(scenario, case, benchmark.stats.stats.median * 1e9 / N, reference_ns))


# ------------------------------------------------------------------------------------ the mediators


def core_module(case: str) -> ModuleType:
    try:
        return importlib.import_module(CORES[case])
    except ImportError as exc:
        pytest.skip(f"{CORES[case]} does not import ({exc}); `make build` compiles it")


def catga_mediator(case: str, config: "catga.Config | None" = None) -> Any:
    """A mediator on the core of `case`, with no built-in behaviours unless `config` says."""
    return mediator_class(core_module(case))(config=config or catga.Config.minimal())


# -------------------------------------------------------------------------------------- the cases

Record = Callable[[Measurement], None]


@pytest.mark.parametrize("case", ASYNC_CASES)
def test_send(benchmark: Any, record: Record, floors: dict[str, Batch], bench_loop: Any, case: str) -> None:
    if case == "floor":
        batch = floors["send"]
    else:
        if case == "dict":
            mediator: Any = DictMediator()
            mediator.register(Ping, handle_ping)
        else:
            mediator = catga_mediator(case)
            mediator.register(Ping, handle_ping)
        assert bench_loop.run_until_complete(mediator.send(Ping())) == 42
        batch = async_batch(bench_loop, "await send(req)", send=mediator.send, req=Ping())
    measure(benchmark, record, floors, "send", case, batch)


@pytest.mark.parametrize("case", ASYNC_CASES)
def test_send_3_behaviours(
    benchmark: Any, record: Record, floors: dict[str, Batch], bench_loop: Any, case: str
) -> None:
    if case == "floor":
        assert bench_loop.run_until_complete(floor_chain()(Ping())) == 45
        batch = floors["send-3-behaviours"]
    else:
        if case == "dict":
            mediator: Any = DictMediator()
            mediator.register(Ping, handle_ping, [add_one] * 3)
        else:
            mediator = catga_mediator(case)
            mediator.register(Ping, handle_ping)
            for _ in range(3):
                mediator.add_behavior(add_one)
        assert bench_loop.run_until_complete(mediator.send(Ping())) == 45
        batch = async_batch(bench_loop, "await send(req)", send=mediator.send, req=Ping())
    measure(benchmark, record, floors, "send-3-behaviours", case, batch)


@pytest.mark.parametrize("case", ASYNC_CASES)
def test_publish_3(benchmark: Any, record: Record, floors: dict[str, Batch], bench_loop: Any, case: str) -> None:
    counters = [Counter(), Counter(), Counter()]
    h1, h2, h3 = counters
    if case == "floor":
        three_awaits = "await h1(evt); await h2(evt); await h3(evt)"
        batch = async_batch(bench_loop, three_awaits, h1=h1, h2=h2, h3=h3, evt=Pinged())
    else:
        if case == "dict":
            mediator: Any = DictMediator()
            for counter in counters:
                mediator.subscribe(Pinged, counter)
        else:
            mediator = catga_mediator(case)
            for counter in counters:
                mediator.register(Pinged, counter)
        batch = async_batch(bench_loop, "await publish(evt)", publish=mediator.publish, evt=Pinged())
    measure(benchmark, record, floors, "publish-3", case, batch)
    assert counters[0].calls > 0
    assert [c.calls for c in counters] == [counters[0].calls] * 3


@pytest.mark.parametrize("case", ["floor", "catga-pure", "catga-rust"])
def test_new_id(benchmark: Any, record: Record, floors: dict[str, Batch], case: str) -> None:
    batch = floors["new_id"] if case == "floor" else sync_batch("new_id()", new_id=core_module(case).new_id)
    measure(benchmark, record, floors, "new_id", case, batch)
