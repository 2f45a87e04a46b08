"""`catga worker module:mediator --nats URL`: serve a mediator's handlers over NATS until stopped.

The worker imports the mediator, connects it (`--nats` gives it a `catga.nats.NatsTransport` when
it has no transport of its own), serves its handlers, and, with `--health-port`, serves
`catga.asgi.app(mediator)` (`/health`, `/health/ready`, `/health/live`, `/metrics`). SIGTERM or
SIGINT stops taking messages, lets those in flight finish (`Mediator.stop`: JetStream events not yet
acknowledged are redelivered to another instance), and exits 0.

`--redis URL` is handed to the application as the environment variable `CATGA_REDIS_URL` (and
`--nats` as `CATGA_NATS_URL`), set before the module is imported, so the module builds its Redis
stores from it: the worker does not guess which of the mediator's stores to replace.
"""

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
from typing import Any

from catga.cli._common import CliError, Subparsers

__all__ = ["add_parser", "load_mediator", "load_target"]


def add_parser(commands: Subparsers) -> None:
    worker = commands.add_parser(
        "worker",
        help="serve a mediator's handlers over NATS until SIGTERM/SIGINT",
        description=(
            "Import MODULE:ATTRIBUTE (a catga.Mediator), connect it to NATS, serve its handlers, and "
            "on SIGTERM or SIGINT let the messages in flight finish, then exit 0."
        ),
    )
    worker.add_argument("app", metavar="MODULE:ATTRIBUTE", help="where the mediator is, e.g. `shop.orders:mediator`")
    worker.add_argument("--nats", metavar="URL", help="NATS server(s), comma-separated (sets CATGA_NATS_URL)")
    worker.add_argument("--service", help="the service name (queue groups, durable consumers); default: the module")
    worker.add_argument(
        "--events", choices=("core", "jetstream"), default="core", help="event delivery (default: core)"
    )
    worker.add_argument(
        "--ack-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="JetStream: redeliver an event not acknowledged within this time, e.g. its instance died (default 30)",
    )
    worker.add_argument("--redis", metavar="URL", help="Redis for the application's stores (sets CATGA_REDIS_URL)")
    worker.add_argument("--health-port", type=int, metavar="N", help="serve /health and /metrics on this port")
    worker.add_argument("--host", default="127.0.0.1", help="the health server's address (default: 127.0.0.1)")
    worker.add_argument(
        "--log-level", default="WARNING", help="log records at this level and above to stderr (default: WARNING)"
    )
    worker.add_argument("--json-logs", action="store_true", help="log JSON lines with correlation ids")
    worker.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from catga.observability import configure_logging

    try:
        configure_logging(args.log_level.upper(), json=args.json_logs, stream=sys.stderr)
    except ValueError as exc:
        raise CliError(f"`--log-level` must be a logging level, got `{args.log_level}`") from exc
    if args.health_port is not None and not 0 < args.health_port < 65536:
        raise CliError(f"`--health-port` must be a port number (1-65535), got `{args.health_port}`")
    if args.nats:
        os.environ["CATGA_NATS_URL"] = args.nats
    if args.redis:
        os.environ["CATGA_REDIS_URL"] = args.redis
    mediator = load_mediator(args.app)
    if args.nats and mediator.transport is not None:
        raise CliError(f"`{args.app}` already has the transport `{mediator.transport!r}`: drop `--nats`")
    if args.nats:
        _attach_nats(mediator, args)
    elif mediator.transport is None:
        raise CliError(f"`{args.app}` has no transport: pass `--nats URL`")
    return asyncio.run(_serve(mediator, args))


def load_mediator(spec: str) -> Any:
    """The `catga.Mediator` that `module:attribute` names (the current directory is importable)."""
    import catga

    target = load_target(spec)
    if not isinstance(target, catga.Mediator):
        raise CliError(f"`{spec}` is not a `catga.Mediator`, got `{target!r}`")
    return target


def load_target(spec: str) -> Any:
    """The object `module:attribute` names (the current directory is importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CliError(f"the app must be `MODULE:ATTRIBUTE`, got `{spec}`")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import `{module_name}`: {exc}") from exc
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise CliError(f"`{module_name}` has no attribute `{attribute}`") from None
    return target


def _attach_nats(mediator: Any, args: argparse.Namespace) -> None:
    try:
        from catga.nats import NatsTransport
    except ImportError as exc:
        raise CliError(str(exc)) from exc
    service = args.service or args.app.partition(":")[0].rpartition(".")[2]
    servers = [url.strip() for url in args.nats.split(",") if url.strip()]
    if not args.ack_wait > 0:
        raise CliError(f"`--ack-wait` must be positive, got `{args.ack_wait}`")
    mediator._attach_transport(NatsTransport(servers, service=service, events=args.events, ack_wait=args.ack_wait))


async def _serve(mediator: Any, args: argparse.Namespace) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await mediator.start()
    health = None
    try:
        if args.health_port is not None:
            health = await _start_health(mediator, args.host, args.health_port)
        requests, events = len(mediator._served_requests()), len(mediator._served_events())
        where = f"; health on http://{args.host}:{args.health_port}" if health else ""
        print(f"catga worker: serving {requests} request and {events} event types of `{args.app}`{where}", flush=True)
        await stopping.wait()
        print("catga worker: stopping (letting the messages in flight finish)", flush=True)
    finally:
        if health is not None:
            server, task = health
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await mediator.stop()
    print("catga worker: stopped", flush=True)
    return 0


async def _start_health(mediator: Any, host: str, port: int) -> tuple[Any, "asyncio.Task[None]"]:
    try:
        import uvicorn
    except ImportError as exc:
        raise CliError("`--health-port` needs uvicorn: pip install catga[server]") from exc
    from catga.asgi import app

    # The worker starts and stops the mediator itself: the app's lifespan must not.
    config = uvicorn.Config(app(mediator, lifespan=False), host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    # The worker owns SIGTERM/SIGINT (a drain, then exit 0): uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start (e.g. the port is taken)
            raise CliError(f"the health server on `{host}:{port}` stopped before it started")
        await asyncio.sleep(0.01)
    return server, task
