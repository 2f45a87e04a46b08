"""Shared test setup: say which core runs the suite, and check it is the one the environment chose.

`make test-python` runs the suite twice, with `CATGA_PURE_PYTHON=0` (native) and `=1` (pure); a
suite that silently ran on the other core would prove nothing about the one it claims to test.
"""

import os
import uuid
from collections.abc import Iterator

import pytest

import catga
from _servers import PostgresServer, Server, flush_redis, spawn_nats, spawn_postgres, spawn_redis

_CHOICE = os.environ.get("CATGA_PURE_PYTHON", "")
if _CHOICE in ("0", "1") and (_CHOICE == "1") != catga.PURE_PYTHON:  # pragma: no cover - a broken chooser
    raise pytest.UsageError(
        f"`CATGA_PURE_PYTHON={_CHOICE}` but catga.PURE_PYTHON is `{catga.PURE_PYTHON}`: the core chooser is broken"
    )


def pytest_report_header() -> str:
    core = "pure-Python (catga._pure)" if catga.PURE_PYTHON else "native (catga._catga)"
    return f"catga {catga.__version__}, core: {core}, CATGA_PURE_PYTHON={_CHOICE or '(unset)'}"


# ------------------------------------------------------------------- NATS, Redis and PostgreSQL servers
#
# One nats-server, one redis-server and one PostgreSQL cluster per session, on free loopback ports in
# temp dirs (never the standard ports, where other servers may run; PostgreSQL's cluster is a fresh
# initdb in /tmp/catga-pg-*, run by the OS user `postgres` when the tests run as root, removed at the
# end). Each starts on first use only. A missing binary skips the tests that use it, or fails them
# under CATGA_REQUIRE_SERVICES=1 (see tests/_servers.py).
#
# Use `nats_url` / `redis_url` / `postgres_dsn` in tests; they restart the session server if an earlier
# test stopped or killed it. Redis is flushed before every test. PostgreSQL: `postgres_dsn` is
# `postgresql://catga@127.0.0.1:PORT/catga` (superuser `catga`, no password), and before every test its
# connections left open by earlier tests are closed and schema `public` is dropped and recreated (other
# schemas a test creates persist: drop them yourself). NATS is not reset: JetStream streams and
# consumers persist for the session, so name streams, subjects and durables with the `unique` fixture.
# Fault tests take `nats_server` / `redis_server` / `postgres_server` as well and call stop(), kill(),
# start() or restart() (the port and the data dir stay the same; PostgreSQL's stop() is a fast
# shutdown, which closes the clients' connections).


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


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = spawn_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.close()  # stop, then remove its /tmp/catga-pg-* dir


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
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """`postgresql://catga@127.0.0.1:PORT/catga` of the running session cluster, schema `public` empty."""
    postgres_server.start()  # no-op when running
    postgres_server.reset()
    return postgres_server.dsn


@pytest.fixture
def unique() -> str:
    """A short random token (10 hex digits) for stream, subject, durable and key names."""
    return uuid.uuid4().hex[:10]
