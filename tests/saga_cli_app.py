"""The executor `tests/test_saga_cli.py` hands to `catga saga recover|retry --app saga_cli_app:executor`:
a saga whose compensation fails until `FIXED` is set, on the store `SAGA_STORE_URL` names."""

import os

import catga
from catga.behaviors import Retry
from catga.cli._saga import open_store

FIXED = {"release": False}

saga = catga.Saga("cli-order")


async def release(ctx: catga.SagaContext) -> None:
    if not FIXED["release"] and not os.environ.get("CATGA_TEST_RELEASE_FIXED"):
        raise RuntimeError("the stock service is down")


@saga.step(compensate=release)
async def reserve(ctx: catga.SagaContext) -> None:
    ctx.data["reserved"] = True


@saga.step(max_attempts=1)
async def charge(ctx: catga.SagaContext) -> None:
    raise catga.ValidationError(["card declined"])


executor = catga.SagaExecutor(
    catga.Mediator(),
    store=open_store(os.environ.get("SAGA_STORE_URL", "redis://127.0.0.1:1/0")),
    compensation_retry=Retry(max_attempts=2, base_delay=0.001, jitter=0.0),
)
executor.register(saga)
