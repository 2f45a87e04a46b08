"""`catga worker`: serve a mediator over a real NATS server, drain on SIGTERM, health endpoints."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import catga
from worker_app import Ping

TESTS = Path(__file__).resolve().parent


def _worker(*args: str) -> "subprocess.Popen[str]":
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "catga", "worker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=TESTS,
        env=env,
    )


def _wait_serving(process: "subprocess.Popen[str]", timeout: float = 30.0) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if "catga worker: serving" in line:
            return line
    raise AssertionError("the worker did not start:\n" + "".join(lines))


@pytest.fixture
def worker(nats_url: str, unique: str) -> Iterator["subprocess.Popen[str]"]:
    process = _worker("worker_app:mediator", "--nats", nats_url, "--service", f"w{unique}")
    try:
        _wait_serving(process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def test_the_worker_serves_requests(worker: "subprocess.Popen[str]", nats_url: str, unique: str) -> None:
    from catga.nats import NatsTransport

    client = catga.Mediator(transport=NatsTransport(nats_url, service=f"c{unique}"))
    async with client:
        assert await client.send(Ping("a")) == "pong a"


async def test_sigterm_lets_the_message_in_flight_finish_and_exits_0(
    worker: "subprocess.Popen[str]", nats_url: str, unique: str
) -> None:
    from catga.nats import NatsTransport

    client = catga.Mediator(transport=NatsTransport(nats_url, service=f"c{unique}"))
    async with client:
        slow = asyncio.ensure_future(client.send(Ping("slow", delay=1.0)))
        await asyncio.sleep(0.3)  # the worker has it now
        worker.send_signal(signal.SIGTERM)
        assert await slow == "pong slow"
    assert await asyncio.to_thread(worker.wait, 20) == 0
    assert worker.stdout is not None
    assert "catga worker: stopped" in worker.stdout.read()


def test_health_endpoints(nats_url: str, unique: str) -> None:
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = _worker("worker_app:mediator", "--nats", nats_url, "--service", f"w{unique}", "--health-port", str(port))
    try:
        assert f"health on http://127.0.0.1:{port}" in _wait_serving(process)
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["checks"]["mediator"]["status"] == "healthy"
        assert "catga_messages" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("worker_app", "the app must be `MODULE:ATTRIBUTE`, got `worker_app`"),
        ("no_such_module:mediator", "cannot import `no_such_module`"),
        ("worker_app:nope", "`worker_app` has no attribute `nope`"),
        ("worker_app:not_a_mediator", "`worker_app:not_a_mediator` is not a `catga.Mediator`"),
    ],
)
def test_bad_apps_are_one_line_errors(app: str, message: str) -> None:
    process = _worker(app, "--nats", "nats://127.0.0.1:1")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert message in output
