"""`catga.asgi`: health probes and Prometheus metrics over ASGI 3 (observability, part 4).

Requests go through `httpx.ASGITransport` (which does not run the lifespan protocol: those tests
drive it with their own queues), and once through a real uvicorn server.
"""

import asyncio
import socket
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

import catga
import catga.asgi
from catga.behaviors import CircuitBreaker
from catga.health import HealthRegistry, HealthStatus

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Work(catga.Command[str]):
    n: int


class Failing(catga.Command[None]):
    pass


class StaticMetrics:
    """A metrics source of our own: `/metrics` only needs `prometheus_text()`."""

    def __init__(self, text: str = "# TYPE jobs_total counter\njobs_total 3\n") -> None:
        self.text = text
        self.calls = 0

    def prometheus_text(self) -> str:
        self.calls += 1
        return self.text


class BrokenMetrics:
    def prometheus_text(self) -> str:
        raise RuntimeError("renderer exploded")


def client_for(app: catga.asgi.ASGIApp, root_path: str = "") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.fixture
async def mediator() -> AsyncIterator[catga.Mediator]:
    mediator = catga.Mediator()
    async with mediator:
        yield mediator


@pytest.fixture
async def client(mediator: catga.Mediator) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(catga.asgi.app(mediator, metrics=StaticMetrics())) as client:
        yield client


# ------------------------------------------------------------------------------------- health


async def test_health_reports_every_check_as_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == "healthy"
    assert list(body["checks"]) == ["mediator", "circuit_breakers", "transport", "stores", "event_loop"]
    assert body["checks"]["mediator"]["status"] == "healthy"
    assert body["checks"]["mediator"]["detail"] == "running"
    for check in body["checks"].values():
        assert set(check) == {"status", "detail", "duration_ms"}
        assert isinstance(check["duration_ms"], int | float)
        assert 0 <= check["duration_ms"] < 1000


async def test_ready_and_live_run_their_checks(client: httpx.AsyncClient) -> None:
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert list(ready.json()["checks"]) == ["mediator", "circuit_breakers", "transport", "stores", "event_loop"]
    live = await client.get("/health/live")
    assert live.status_code == 200
    assert list(live.json()["checks"]) == ["event_loop"]


async def test_a_stopped_mediator_is_not_ready_but_live() -> None:
    async with client_for(catga.asgi.app(catga.Mediator())) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unhealthy"
        assert ready.json()["checks"]["mediator"] == {
            "status": "unhealthy",
            "detail": "not started",
            "duration_ms": ready.json()["checks"]["mediator"]["duration_ms"],
        }
        assert (await client.get("/health")).status_code == 503
        assert (await client.get("/health/live")).status_code == 200


async def test_degraded_answers_200() -> None:
    config = catga.Config.default().with_(
        circuit_breaker=CircuitBreaker(failure_threshold=1, reset_timeout=60), retry=None
    )
    mediator = catga.Mediator(config=config)

    @mediator.handler
    async def failing(cmd: Failing) -> None:
        raise ValueError("down")

    async with mediator, client_for(catga.asgi.app(mediator)) as client:
        assert not (await mediator.send_result(Failing())).ok
        response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["circuit_breakers"]["detail"] == "open: `Failing`"


async def test_without_a_mediator_the_reports_are_empty_and_healthy() -> None:
    async with client_for(catga.asgi.app(metrics=StaticMetrics())) as client:
        for path in ("/health", "/health/ready", "/health/live"):
            response = await client.get(path)
            assert response.status_code == 200
            assert response.json() == {"status": "healthy", "checks": {}}


async def test_a_given_registry_is_used() -> None:
    registry = HealthRegistry()
    registry.add_check("disk", lambda: (HealthStatus.DEGRADED, "91% full"), live=True)
    app = catga.asgi.app(health=registry)
    assert app.health is registry
    async with client_for(app) as client:
        response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json()["checks"]["disk"]["detail"] == "91% full"


async def test_hanging_and_raising_checks_answer_within_a_second() -> None:
    registry = HealthRegistry(check_timeout=0.3)

    @registry.check("hangs", live=True)
    async def hangs() -> None:
        await asyncio.sleep(3600)

    @registry.check("raises", live=True)
    def raises() -> None:
        raise ValueError("boom")

    async with client_for(catga.asgi.app(health=registry, metrics=StaticMetrics())) as client:
        for path in ("/health", "/health/ready", "/health/live"):
            started = time.perf_counter()
            response = await client.get(path)
            assert time.perf_counter() - started < 1
            assert response.status_code == 503
            checks = response.json()["checks"]
            assert checks["hangs"]["detail"] == "timed out after 0.3 s"
            assert checks["raises"]["detail"] == "ValueError: boom"
        started = time.perf_counter()
        assert (await client.get("/metrics")).status_code == 200
        assert time.perf_counter() - started < 1


async def test_head_has_the_headers_and_no_body(client: httpx.AsyncClient) -> None:
    response = await client.head("/health/live")
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""
    metrics = await client.head("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"] == PROMETHEUS
    assert metrics.headers["content-length"] == str(len(StaticMetrics().text))
    assert metrics.content == b""


# ------------------------------------------------------------------------------------ metrics


async def test_metrics_renders_the_given_source() -> None:
    source = StaticMetrics()
    async with client_for(catga.asgi.app(metrics=source)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == PROMETHEUS
    assert response.text == source.text
    assert source.calls == 1
    [family] = text_string_to_metric_families(response.text)
    assert family.name == "jobs"


async def test_a_failing_renderer_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    async with client_for(catga.asgi.app(metrics=BrokenMetrics())) as client:
        response = await client.get("/metrics")
    assert response.status_code == 500
    assert "RuntimeError: renderer exploded" in response.text
    assert "cannot render the metrics" in caplog.text


async def test_metrics_default_to_the_registry_the_mediator_records_into() -> None:
    # The real lookup: `mediator.config.metrics.registry`, else `catga.observability.default_registry()`.
    from catga import observability

    mediator = catga.Mediator()

    @mediator.handler
    async def work(cmd: Work) -> str:
        return str(cmd.n)

    async with mediator, client_for(catga.asgi.app(mediator)) as client:
        assert await mediator.send(Work(1)) == "1"
        response = await client.get("/metrics")
        metrics = mediator.config.metrics  # type: ignore[attr-defined]
        registry = metrics.registry if metrics is not None else observability.default_registry()
        expected = registry.prometheus_text()
    assert response.status_code == 200
    assert response.headers["content-type"] == PROMETHEUS
    assert response.text == expected
    assert list(text_string_to_metric_families(response.text))  # valid exposition text
    assert catga.wire_name(Work) in response.text  # what the mediator recorded


# ------------------------------------------------------------------------------ routing errors


@pytest.mark.parametrize("path", ["/", "/healthz", "/health/other", "/metrics/x", "/ops/health"])
async def test_unknown_paths_are_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == JSON
    assert response.json()["error"] == f"not found: `{path}`"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/health", "/health/ready", "/health/live", "/metrics"])
async def test_other_methods_are_405_with_allow(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"] == f"method not allowed: `{method}`"


async def test_a_trailing_slash_is_the_same_route(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/ready/")).status_code == 200


# --------------------------------------------------------------------------------- mounting


@pytest.mark.parametrize("prefixed", [True, False], ids=["path-includes-root_path", "path-stripped"])
async def test_mounted_under_a_prefix(mediator: catga.Mediator, prefixed: bool) -> None:
    # httpx puts the request's path in `scope["path"]` and `root_path` beside it: requesting
    # /ops/health is a server (or Starlette >= 0.33 Mount) that keeps the prefix in `path`;
    # requesting /health is an older Mount that stripped it.
    prefix = "/ops" if prefixed else ""
    app = catga.asgi.app(mediator, metrics=StaticMetrics())
    async with client_for(app, root_path="/ops") as client:
        assert (await client.get(f"{prefix}/health")).status_code == 200
        assert list((await client.get(f"{prefix}/health/live")).json()["checks"]) == ["event_loop"]
        assert (await client.get(f"{prefix}/metrics")).headers["content-type"] == PROMETHEUS
        assert (await client.get(f"{prefix}/nothing")).status_code == 404
        assert (await client.post(f"{prefix}/health")).status_code == 405


async def test_a_prefix_sharing_a_stem_is_not_stripped(mediator: catga.Mediator) -> None:
    async with client_for(catga.asgi.app(mediator), root_path="/op") as client:
        assert (await client.get("/ops/health")).status_code == 404


# --------------------------------------------------------------------------------- lifespan


class Lifespan:
    """Drives an app's lifespan protocol like a server would, over two queues."""

    def __init__(self, app: catga.asgi.ASGIApp) -> None:
        self.incoming: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self.outgoing: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.create_task(app(scope, self.incoming.get, self.outgoing.put))

    async def event(self, kind: str) -> MutableMapping[str, Any]:
        await self.incoming.put({"type": f"lifespan.{kind}"})
        return await asyncio.wait_for(self.outgoing.get(), 2)


async def test_lifespan_starts_and_stops_the_mediator() -> None:
    mediator = catga.Mediator()
    lifespan = Lifespan(catga.asgi.app(mediator))
    assert await lifespan.event("startup") == {"type": "lifespan.startup.complete"}
    assert mediator.running
    assert await lifespan.event("shutdown") == {"type": "lifespan.shutdown.complete"}
    assert not mediator.running
    await asyncio.wait_for(lifespan.task, 2)


@pytest.mark.parametrize("with_mediator", [True, False])
async def test_lifespan_off_or_without_mediator_only_acknowledges(with_mediator: bool) -> None:
    mediator = catga.Mediator()
    app = catga.asgi.app(mediator, lifespan=False) if with_mediator else catga.asgi.app()
    lifespan = Lifespan(app)
    assert await lifespan.event("startup") == {"type": "lifespan.startup.complete"}
    assert not mediator.running
    assert await lifespan.event("shutdown") == {"type": "lifespan.shutdown.complete"}
    await asyncio.wait_for(lifespan.task, 2)


class BrokenStartMediator(catga.Mediator):
    async def start(self) -> None:
        raise ConnectionError("broker unreachable")


class BrokenStopMediator(catga.Mediator):
    async def stop(self, timeout: float | None = 30.0) -> None:
        raise RuntimeError("drain failed")


async def test_a_failing_startup_is_reported() -> None:
    lifespan = Lifespan(catga.asgi.app(BrokenStartMediator()))
    assert await lifespan.event("startup") == {
        "type": "lifespan.startup.failed",
        "message": "mediator startup failed: ConnectionError: broker unreachable",
    }
    await asyncio.wait_for(lifespan.task, 2)  # the app returns: the server exits


async def test_a_failing_shutdown_is_reported() -> None:
    mediator = BrokenStopMediator()
    lifespan = Lifespan(catga.asgi.app(mediator))
    assert (await lifespan.event("startup"))["type"] == "lifespan.startup.complete"
    assert await lifespan.event("shutdown") == {
        "type": "lifespan.shutdown.failed",
        "message": "mediator shutdown failed: RuntimeError: drain failed",
    }
    await asyncio.wait_for(lifespan.task, 2)


async def test_websockets_are_refused() -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await catga.asgi.app()({"type": "websocket", "path": "/health"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1000}]


# ------------------------------------------------------------------------------ construction


def test_app_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match=r"`mediator`.*`'m'`"):
        catga.asgi.app("m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`health`"):
        catga.asgi.app(health=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`metrics`.*`prometheus_text"):
        catga.asgi.app(metrics=object())  # type: ignore[arg-type]


def test_app_builds_the_registry_of_its_mediator() -> None:
    mediator = catga.Mediator()
    app = catga.asgi.app(mediator)
    assert app.health.mediator is mediator
    assert app.mediator is mediator
    assert app.routes == ("/health", "/health/ready", "/health/live", "/metrics")
    assert catga.asgi.ASGIApp.__module__ == "catga.asgi"


# ------------------------------------------------------------------------------ a real server


async def test_uvicorn_serves_probes_while_handlers_are_busy() -> None:
    mediator = catga.Mediator()
    gate = asyncio.Event()
    in_flight = 0

    @mediator.handler
    async def work(cmd: Work) -> str:
        nonlocal in_flight
        in_flight += 1
        await gate.wait()
        await asyncio.sleep(0.01 * (cmd.n % 5))
        return str(cmd.n)

    app = catga.asgi.app(mediator, metrics=StaticMetrics())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    handlers: list[asyncio.Task[str]] = []
    try:
        for _ in range(500):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        assert server.started
        assert mediator.running  # the lifespan startup ran

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            ready = await client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["checks"]["mediator"]["detail"] == "running"

            handlers = [asyncio.create_task(mediator.send(Work(n))) for n in range(50)]
            while in_flight < 50:
                await asyncio.sleep(0.001)
            started = time.perf_counter()
            health = await client.get("/health")
            assert time.perf_counter() - started < 1
            assert health.status_code == 200
            assert health.json()["status"] in ("healthy", "degraded")
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"] == PROMETHEUS
            assert (await client.get("/nothing")).status_code == 404

            gate.set()
            assert await asyncio.gather(*handlers) == [str(n) for n in range(50)]
    finally:
        gate.set()
        await asyncio.gather(*handlers, return_exceptions=True)
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()
    assert not mediator.running  # the lifespan shutdown ran
