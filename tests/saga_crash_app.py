"""The saga `tests/test_saga_recovery.py` runs in a subprocess and kills inside step 2.

Run: `python saga_crash_app.py STORE_URL REDIS_URL SAGA_ID` (from `tests/`). Each step records its
side effect in Redis once per idempotency key (`SET NX`), the way a real step passes its key to a
payment provider; step 2 then says where it is and sleeps, for the test to kill the process.
`build_executor` is also what the test's own `recover()` uses: the same definitions, another process.
"""

import asyncio
import os
import sys
from typing import Any

import catga
from catga.behaviors import Retry

SLEEP_IN_STEP_2 = "CATGA_TEST_SLEEP_IN_STEP_2"


def build_executor(store_url: str, redis_url: str, *, lease: float = 1.0) -> tuple[catga.SagaExecutor, Any]:
    import redis.asyncio

    from catga.cli._saga import open_store

    effects = redis.asyncio.from_url(redis_url)
    saga = catga.Saga("crash-order")

    async def effect(ctx: catga.SagaContext) -> None:
        # The side effect happens once per idempotency key, whichever process runs the step.
        if await effects.set(f"effect:{ctx.idempotency_key}", ctx.attempt, nx=True):
            await effects.hincrby("effects", ctx.step, 1)
        await effects.hincrby("runs", ctx.step, 1)  # how often the step ran at all

    @saga.step()
    async def reserve(ctx: catga.SagaContext) -> None:
        await effect(ctx)
        ctx.data["reserved"] = True

    @saga.step()
    async def charge(ctx: catga.SagaContext) -> None:
        await effect(ctx)
        if os.environ.get(SLEEP_IN_STEP_2):
            print("in step 2", flush=True)
            await asyncio.sleep(3600)  # killed here
        ctx.data["charged"] = True

    @saga.step()
    async def ship(ctx: catga.SagaContext) -> None:
        await effect(ctx)
        ctx.data["shipped"] = True

    executor = catga.SagaExecutor(
        catga.Mediator(), store=open_store(store_url), lease=lease, retry=Retry(max_attempts=3, base_delay=0.01)
    )
    executor.register(saga)
    return executor, effects


async def _main(store_url: str, redis_url: str, saga_id: str) -> None:
    executor, effects = build_executor(store_url, redis_url)
    try:
        await executor.run(executor.sagas["crash-order"], data={"order": saga_id}, saga_id=saga_id)
    finally:
        await effects.aclose()


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:4]))
