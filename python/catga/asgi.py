"""An ASGI 3 application for health probes and Prometheus metrics, with no web framework.

>>> import catga, catga.asgi
>>> mediator = catga.Mediator()
>>> application = catga.asgi.app(mediator)
>>> application.routes
('/health', '/health/ready', '/health/live', '/metrics')

Run it alone (`uvicorn service:application`), or mount it in FastAPI or Starlette
(`api.mount("/ops", application)`); see docs/health.md.

- `GET`/`HEAD /health`: every check; `/health/ready`: readiness (can it take traffic?);
  `/health/live`: liveness (does the process respond?). JSON
  `{"status": "healthy", "checks": {"mediator": {"status": ..., "detail": ..., "duration_ms": ...}}}`,
  HTTP 200 when healthy or degraded, 503 when unhealthy. Never cached.
- `GET`/`HEAD /metrics`: the Prometheus text exposition format.
- Any other path: 404; another method on these paths: 405 with an `allow` header.
- The `lifespan` scope starts and stops the mediator (`lifespan=False`: only acknowledged).
"""

import importlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from catga._health._running import describe_error
from catga._mediator import Mediator
from catga.health import HealthRegistry, HealthReport

__all__ = ["ASGIApp", "MetricsSource", "Receive", "Scope", "Send", "app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON_TYPE: Final = b"application/json"
PROMETHEUS_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
_ALLOWED: Final = ("GET", "HEAD")
_ALLOW_HEADER: Final = ", ".join(_ALLOWED).encode()
_HEALTH_ROUTES: Final = {"/health": "health", "/health/ready": "ready", "/health/live": "live"}
_METRICS_ROUTE: Final = "/metrics"

_logger: Final = logging.getLogger("catga.asgi")
_encode_json: Final = msgspec.json.Encoder().encode


@runtime_checkable
class MetricsSource(Protocol):
    """What `/metrics` renders: `catga.observability.MetricsRegistry`, or anything alike."""

    def prometheus_text(self) -> str:
        """The metrics in the Prometheus text exposition format (version 0.0.4)."""
        ...


def app(
    mediator: Mediator | None = None,
    *,
    health: HealthRegistry | None = None,
    metrics: MetricsSource | None = None,
    lifespan: bool = True,
) -> "ASGIApp":
    """An ASGI 3 app serving `/health`, `/health/ready`, `/health/live` and `/metrics`.

    `health`: the checks to run; `None` builds `HealthRegistry(mediator)` (the built-in checks).
    `metrics`: an object with `prometheus_text()`; `None` renders, at each request, the registry the
    mediator records into (`mediator.config.metrics.registry`, else
    `catga.observability.default_registry()`). `lifespan`: whether the ASGI lifespan protocol
    starts and stops `mediator` (a server's startup and shutdown).
    """
    return ASGIApp(mediator, health=health, metrics=metrics, lifespan=lifespan)


class ASGIApp:
    """The application `catga.asgi.app(...)` returns; see there and the module docstring."""

    routes: Final = (*_HEALTH_ROUTES, _METRICS_ROUTE)
    """The paths served (relative to where the app is mounted)."""

    def __init__(
        self,
        mediator: Mediator | None = None,
        *,
        health: HealthRegistry | None = None,
        metrics: MetricsSource | None = None,
        lifespan: bool = True,
    ) -> None:
        if mediator is not None and not isinstance(mediator, Mediator):
            raise TypeError(f"`mediator` must be a `catga.Mediator` or `None`, got `{mediator!r}`")
        if health is None:
            health = HealthRegistry(mediator)
        elif not isinstance(health, HealthRegistry):
            raise TypeError(f"`health` must be a `catga.health.HealthRegistry` or `None`, got `{health!r}`")
        if metrics is not None and not callable(getattr(metrics, "prometheus_text", None)):
            raise TypeError(f"`metrics` must have a `prometheus_text()` method, got `{metrics!r}`")
        self.mediator: Final = mediator
        self.health: Final = health
        self.metrics: Final = metrics
        self.lifespan: Final = bool(lifespan)

    def __repr__(self) -> str:
        return f"<catga.asgi.ASGIApp: mediator={self.mediator!r}, lifespan={self.lifespan}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":  # nothing to talk about: closing before accepting rejects it (403)
            await send({"type": "websocket.close", "code": 1000})

    # ----------------------------------------------------------------------------------- http

    async def _http(self, scope: Scope, send: Send) -> None:
        path = _route_path(scope)
        if path in _HEALTH_ROUTES:
            serve = self._health_response
        elif path == _METRICS_ROUTE:
            serve = self._metrics_response
        else:
            body = _encode_json({"error": f"not found: `{path}`", "routes": list(self.routes)})
            await _respond(send, scope, 404, JSON_TYPE, body)
            return
        if scope["method"] not in _ALLOWED:
            body = _encode_json({"error": f"method not allowed: `{scope['method']}`", "allow": list(_ALLOWED)})
            await _respond(send, scope, 405, JSON_TYPE, body, [(b"allow", _ALLOW_HEADER)])
            return
        status, content_type, body = await serve(path)
        await _respond(send, scope, status, content_type, body)

    async def _health_response(self, path: str) -> tuple[int, bytes, bytes]:
        run: Callable[[], Awaitable[HealthReport]] = getattr(self.health, _HEALTH_ROUTES[path])
        report = await run()
        # Degraded still takes traffic: a 503 would pull every replica out while one breaker is open.
        return (200 if report.ok else 503), JSON_TYPE, _encode_json(report.to_dict())

    async def _metrics_response(self, path: str) -> tuple[int, bytes, bytes]:
        try:
            text = self._metrics_source().prometheus_text()
        except Exception as exc:  # a broken renderer is a 500, not a crashed connection
            _logger.warning("cannot render the metrics: %s", describe_error(exc), exc_info=exc)
            return 500, b"text/plain; charset=utf-8", f"cannot render the metrics: {describe_error(exc)}\n".encode()
        return 200, PROMETHEUS_TYPE, text.encode()

    def _metrics_source(self) -> MetricsSource:
        if self.metrics is not None:
            return self.metrics
        # Looked up per request and imported lazily: the mediator's config decides, and an app that
        # never serves /metrics never imports the observability module.
        settings = getattr(self.mediator.config, "metrics", None) if self.mediator is not None else None
        if settings is not None:
            registry: MetricsSource = settings.registry
            return registry
        observability = importlib.import_module("catga.observability")
        default: MetricsSource = observability.default_registry()
        return default

    # ------------------------------------------------------------------------------- lifespan

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        managed = self.mediator if self.lifespan else None
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "lifespan.startup":
                if managed is None:
                    await send({"type": "lifespan.startup.complete"})
                elif not await _run_phase(send, "startup", managed.start):
                    return  # the server reports the failure and exits
            elif kind == "lifespan.shutdown":
                if managed is None:
                    await send({"type": "lifespan.shutdown.complete"})
                else:
                    await _run_phase(send, "shutdown", managed.stop)
                return


async def _run_phase(send: Send, phase: str, action: Callable[[], Awaitable[None]]) -> bool:
    """Run `action` and answer `lifespan.<phase>.complete`, or `.failed` with the error; whether it
    completed."""
    try:
        await action()
    except Exception as exc:  # the server reports it and exits (startup) or logs it (shutdown)
        await send({"type": f"lifespan.{phase}.failed", "message": f"mediator {phase} failed: {describe_error(exc)}"})
        return False
    await send({"type": f"lifespan.{phase}.complete"})
    return True


def _route_path(scope: Scope) -> str:
    """The request's path relative to where the app is mounted.

    `root_path` is the mount prefix. Depending on the server and the Starlette version, `path`
    either still starts with it (uvicorn, Starlette >= 0.33 `Mount`) or has it stripped already
    (older `Mount`): strip it only when it is there, at a segment boundary.
    """
    path: str = scope.get("path") or "/"
    root: str = (scope.get("root_path") or "").rstrip("/")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :] or "/"
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    return path


async def _respond(
    send: Send,
    scope: Scope,
    status: int,
    content_type: bytes,
    body: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        # Probes and scrapes must see the state now, never a proxy's copy.
        (b"cache-control", b"no-store"),
        *(extra_headers or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
