"""The built-in pipeline's cost (issue 3), measured like benches/test_mediator.py.

Scenarios: a send through `Config.default()` (idempotency, retry, logging off, no tracing SDK),
against the direct await (the pure core's numbers come from a second run of this file with
`CATGA_PURE_PYTHON=1`, as `make bench` does); a send answered from the idempotency table
(the same message again); `TokenBucket.try_acquire()`; and claims plus completions on the
idempotency table from 8 threads, against the same work on one thread.
"""

import threading
import time
from typing import Any

import pytest

import catga
from _report import Measurement
from catga import _core as catga_core
from test_mediator import (
    Batch,
    Ping,
    Record,
    async_batch,
    catga_mediator,
    core_module,
    handle_ping,
    measure,
    sync_batch,
)

N = 1000
CORE_CASES = ["floor", "catga-pure", "catga-rust"]
THREADS = 8


@pytest.fixture(scope="session")
def pipeline_floors(floors: dict[str, Batch], bench_loop: Any) -> dict[str, Batch]:
    return {
        **floors,
        # A fresh message per send on both sides: idempotency needs a new id every time, and making
        # the message (its id included) is the caller's cost with or without catga.
        "send-default": async_batch(bench_loop, "await handler(Ping())", handler=handle_ping, Ping=Ping),
        "idempotency-hit": floors["send"],
        "try_acquire": sync_batch("now()", now=time.monotonic),
    }


def default_mediator(case: str) -> Any:
    if core_module(case).Dispatcher is not catga_core.Dispatcher:
        # The built-ins build their state from the core chosen at import, so a mediator on the other
        # core cannot be made in this process: `make bench` runs this file once per core.
        pytest.skip(f"{case} is measured in its own run (CATGA_PURE_PYTHON)")
    mediator = catga_mediator(case, catga.Config.default())
    mediator.register(Ping, handle_ping)
    return mediator


@pytest.mark.parametrize("case", CORE_CASES)
def test_send_default_pipeline(
    benchmark: Any, record: Record, pipeline_floors: dict[str, Batch], bench_loop: Any, case: str
) -> None:
    if case == "floor":
        batch = pipeline_floors["send-default"]
    else:
        mediator = default_mediator(case)
        assert bench_loop.run_until_complete(mediator.send(Ping())) == 42
        # A fresh message per send: `Ping()` makes a new id, so every send claims and completes.
        batch = async_batch(bench_loop, "await send(Ping())", send=mediator.send, Ping=Ping)
    measure(benchmark, record, pipeline_floors, "send-default", case, batch)


@pytest.mark.parametrize("case", CORE_CASES)
def test_idempotency_hit(
    benchmark: Any, record: Record, pipeline_floors: dict[str, Batch], bench_loop: Any, case: str
) -> None:
    if case == "floor":
        batch = pipeline_floors["send"]
    else:
        mediator = default_mediator(case)
        same = Ping()
        assert bench_loop.run_until_complete(mediator.send(same)) == 42
        batch = async_batch(bench_loop, "await send(same)", send=mediator.send, same=same)
    measure(benchmark, record, pipeline_floors, "idempotency-hit", case, batch)


@pytest.mark.parametrize("case", ["floor", "catga-pure", "catga-rust"])
def test_try_acquire(benchmark: Any, record: Record, pipeline_floors: dict[str, Batch], case: str) -> None:
    if case == "floor":
        batch = pipeline_floors["try_acquire"]
    else:
        bucket = core_module(case).TokenBucket(rate=1e9, burst=1e9)
        assert bucket.try_acquire() == 0.0
        batch = sync_batch("try_acquire()", try_acquire=bucket.try_acquire)
    measure(benchmark, record, pipeline_floors, "try_acquire", case, batch)


def _claim_and_complete(table: Any, first_id: int, count: int) -> None:
    for message_id in range(first_id, first_id + count):
        table.claim(message_id)
        table.complete(message_id, 0, message_id)


def _threaded(table_of: Any, threads: int, per_thread: int) -> Batch:
    counter = iter(range(1, 1 << 62, threads * per_thread))

    def batch() -> None:
        table = table_of()
        base = next(counter)
        workers = [
            threading.Thread(target=_claim_and_complete, args=(table, base + i * per_thread, per_thread))
            for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    return batch


@pytest.mark.parametrize("case", ["catga-pure", "catga-rust"])
def test_store_8_threads(benchmark: Any, record: Record, case: str) -> None:
    core = core_module(case)
    per_thread = 2_000
    total = THREADS * per_thread

    def make_table() -> Any:
        return core.IdempotencyTable(max_entries=total * 4)

    many, one = _threaded(make_table, THREADS, per_thread), _threaded(make_table, 1, total)
    one_thread: list[int] = []

    def setup() -> None:
        start = time.perf_counter_ns()
        one()
        one_thread.append(time.perf_counter_ns() - start)

    benchmark.group = "store-8-threads"
    benchmark.name = f"store-8-threads[{case}]"
    benchmark.pedantic(many, setup=setup, rounds=15, warmup_rounds=2, iterations=1)
    if benchmark.stats is None:
        return
    floor = sorted(one_thread[2:])[len(one_thread[2:]) // 2] / total
    ns = benchmark.stats.stats.median * 1e9 / total
    record(Measurement("store-8-threads", case, ns, {"loop": 0.0, "floor": floor}))
