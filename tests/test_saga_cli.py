"""`catga saga list|show|recover|retry` against a real Redis saga store."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import catga
from catga.behaviors import Retry
from catga.cli import main

TESTS = Path(__file__).resolve().parent


def _catga(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "catga", *args], capture_output=True, text=True, cwd=TESTS, env=environment, timeout=60
    )


async def test_list_show_and_retry_a_failed_saga(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from catga.redis import RedisSagaStore

    store = RedisSagaStore(redis_url)
    saga = catga.Saga("cli-order")

    async def release(ctx: catga.SagaContext) -> None:
        raise RuntimeError("the stock service is down")

    @saga.step(compensate=release)
    async def reserve(ctx: catga.SagaContext) -> None:
        ctx.data["reserved"] = True

    @saga.step(max_attempts=1)
    async def charge(ctx: catga.SagaContext) -> None:
        raise catga.ValidationError(["card declined"])

    executor = catga.SagaExecutor(
        catga.Mediator(), store=store, compensation_retry=Retry(max_attempts=2, base_delay=0.001, jitter=0.0)
    )
    try:
        assert (await executor.run(saga, data={"order": 1}, saga_id="cli-1")).status == catga.SagaStatus.FAILED
    finally:
        await store.aclose()

    listed = _catga("saga", "list", "--store", redis_url)
    assert listed.returncode == 0, listed.stderr
    assert "cli-1" in listed.stdout
    assert "failed" in listed.stdout
    assert "cli-1" not in _catga("saga", "list", "--store", redis_url, "--status", "completed").stdout

    shown = _catga("saga", "show", "cli-1", "--store", redis_url)
    assert shown.returncode == 0, shown.stderr
    assert "saga cli-1 (cli-order): failed" in shown.stdout
    assert "compensation_failed" in shown.stdout  # the step table
    assert "history:" in shown.stdout

    # The compensation is fixed: `retry` resumes compensating.
    retried = _catga(
        "saga",
        "retry",
        "cli-1",
        "--app",
        "saga_cli_app:executor",
        env={"SAGA_STORE_URL": redis_url, "CATGA_TEST_RELEASE_FIXED": "1"},
    )
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "cli-1: compensated" in retried.stdout
    recovered = _catga("saga", "recover", "--app", "saga_cli_app:executor", env={"SAGA_STORE_URL": redis_url})
    assert recovered.returncode == 0, recovered.stderr
    assert "recovered 0 saga(s)" in recovered.stdout


def test_bad_store_urls_and_unknown_sagas(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["saga", "list", "--store", "mysql://x"]) == 1
    assert (
        "`--store` must be a `redis://`, `rediss://`, `unix://` or `postgresql://` URL, got `mysql://x`"
        in capsys.readouterr().err
    )
    assert main(["saga", "show", "nope", "--store", redis_url]) == 1
    assert f"no saga `nope` in `{redis_url}`" in capsys.readouterr().err
    assert main(["saga", "recover", "--app", "saga_cli_app:saga"]) == 1
    assert "is not a `catga.SagaExecutor`" in capsys.readouterr().err


def test_a_password_in_the_store_url_is_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on port 1: the error names the server, never the password.
    assert main(["saga", "show", "x", "--store", "redis://:s3cret@127.0.0.1:1/0"]) == 1
    err = capsys.readouterr().err
    assert "s3cret" not in err
    assert err.startswith("catga: error: ")
