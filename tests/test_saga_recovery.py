"""Crash recovery of sagas on real stores (issue 6): a process runs a saga on Redis (and on
PostgreSQL) and is killed with SIGKILL inside step 2; `recover()` in another process finishes it,
and no step's side effect happens twice (each step records its idempotency key)."""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import catga
from saga_crash_app import SLEEP_IN_STEP_2, build_executor

TESTS = Path(__file__).resolve().parent


@pytest.fixture(params=["redis", "postgres"])
async def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    dsn: str = request.getfixturevalue("postgres_dsn")
    from catga.postgres import PostgresSagaStore

    store = PostgresSagaStore(dsn)
    try:
        await store.migrate()
    finally:
        await store.aclose()
    return dsn


async def test_a_saga_killed_inside_step_2_is_finished_by_recover_elsewhere(
    store_url: str, redis_url: str, unique: str
) -> None:
    saga_id = f"order-{unique}"
    env = {
        **os.environ,
        SLEEP_IN_STEP_2: "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, str(TESTS / "saga_crash_app.py"), store_url, redis_url, saga_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while "in step 2" not in line:
            assert time.monotonic() < deadline, "the saga never reached step 2"
            line = await asyncio.to_thread(process.stdout.readline)
            assert line or process.poll() is None, "the saga process exited early"
        process.kill()  # SIGKILL, inside step 2
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    executor, effects = build_executor(store_url, redis_url)
    try:
        stuck = await executor.get(saga_id)
        assert stuck is not None
        assert stuck.status == catga.SagaStatus.RUNNING
        assert stuck.step == "charge"
        results: list[catga.SagaResult] = []
        deadline = time.monotonic() + 20
        while not results:  # the dead owner's lease (1 s) runs out first
            assert time.monotonic() < deadline, "recover() never took the saga over"
            results = [result for result in await executor.recover() if result.saga_id == saga_id]
            await asyncio.sleep(0.2)
        [result] = results
        assert result.status == catga.SagaStatus.COMPLETED
        assert result.data == {"order": saga_id, "reserved": True, "charged": True, "shipped": True}
        effects_done = {k.decode(): int(v) for k, v in (await effects.hgetall("effects")).items()}
        runs = {k.decode(): int(v) for k, v in (await effects.hgetall("runs")).items()}
        assert effects_done == {"reserve": 1, "charge": 1, "ship": 1}  # each side effect once
        assert runs == {"reserve": 1, "charge": 2, "ship": 1}  # step 2 ran again, with the same key
        state = await executor.get(saga_id)
        assert state is not None
        assert any(entry.event == "taken_over" for entry in state.history)
        assert (await executor.run(executor.sagas["crash-order"], saga_id=saga_id)).status == catga.SagaStatus.COMPLETED
    finally:
        await effects.aclose()
        await executor.store.aclose()
