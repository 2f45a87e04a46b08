"""Shared test setup: say which core runs the suite, and check it is the one the environment chose.

`make test-python` runs the suite twice, with `CATGA_PURE_PYTHON=0` (native) and `=1` (pure); a
suite that silently ran on the other core would prove nothing about the one it claims to test.
"""

import os
import uuid
from collections.abc import Iterator

import pytest

import catga
from _servers import Server, flush_redis, spawn_nats, spawn_redis

_CHOICE = os.environ.get("CATGA_PURE_PYTHON", "")
if _CHOICE in ("0", "1") and (_CHOICE == "1") != catga.PURE_PYTHON:  # pragma: no cover - a broken chooser
    raise pytest.UsageError(
        f"`CATGA_PURE_PYTHON={_CHOICE}` but catga.PURE_PYTHON is `{catga.PURE_PYTHON}`: the core chooser is broken"
    )


def pytest_report_header() -> str:
    core = "pure-Python (catga._pure)" if catga.PURE_PYTHON else "native (catga._catga)"
    return f"catga {catga.__version__}, core: {core}, CATGA_PURE_PYTHON={_CHOICE or '(unset)'}"


# ------------------------------------------------------------------------------ NATS and Redis servers
#
# One nats-server and one redis-server per session, on free loopback ports in temp dirs (never the
# standard ports, where other servers may run). A missing binary skips the tests that use them, or
# fails them under CATGA_REQUIRE_SERVICES=1 (see tests/_servers.py).
#
# Use `nats_url` / `redis_url` in tests; they restart the session server if an earlier test stopped or
# killed it. Redis is flushed before every test. NATS is not reset: JetStream streams and consumers
# persist for the session, so name streams, subjects and durables with the `unique` fixture.
# Fault tests take `nats_server` / `redis_server` as well and call stop(), kill(), start() or restart()
# (the port and the data dir stay the same).


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = spawn_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = spawn_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: Server) -> str:
    """`nats://127.0.0.1:PORT` of the running session server; streams persist across tests."""
    nats_server.start()  # no-op when running
    return nats_server.url


@pytest.fixture
def redis_url(redis_server: Server) -> str:
    """`redis://127.0.0.1:PORT/0` of the running session server, flushed (FLUSHALL) for this test."""
    redis_server.start()  # no-op when running
    flush_redis(redis_server.port)
    return redis_server.url


@pytest.fixture
def unique() -> str:
    """A short random token (10 hex digits) for stream, subject, durable and key names."""
    return uuid.uuid4().hex[:10]
