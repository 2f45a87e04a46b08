"""`catga saga list|show|recover|retry`: where every saga stands, and taking stuck ones over.

`list` and `show` read a saga store given by URL (`--store redis://...` or `postgresql://...`).
`recover` and `retry` run saga steps, so they need the saga definitions: `--app MODULE:ATTRIBUTE`
names the application's `catga.SagaExecutor` (its sagas registered), whose store they use.
"""

import argparse
import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from catga._saga_state import encode_state
from catga.cli._common import CliError, Subparsers, open_store_url, without_password

__all__ = ["add_parser", "open_store"]


def add_parser(commands: Subparsers) -> None:
    saga = commands.add_parser(
        "saga",
        help="list, show, recover and retry sagas in a Redis or PostgreSQL saga store",
        description="Where every saga stands (list, show), and taking stuck or failed ones over (recover, retry).",
    )
    actions = saga.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="the sagas in the store, oldest first")
    _store_argument(listing)
    listing.add_argument(
        "--status", choices=("running", "compensating", "completed", "compensated", "failed"), help="only these"
    )
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per saga (the stored state)")
    listing.set_defaults(run=_list)

    show = actions.add_parser("show", help="one saga: its steps with timings, and its history")
    show.add_argument("saga_id", metavar="ID")
    _store_argument(show)
    show.add_argument("--json", action="store_true", help="the stored state as JSON")
    show.set_defaults(run=_show)

    recover = actions.add_parser("recover", help="take over the sagas whose owner's lease expired, and finish them")
    _app_argument(recover)
    recover.add_argument(
        "--failed", action="store_true", help="also resume compensating FAILED sagas (once their compensation is fixed)"
    )
    recover.set_defaults(run=_recover)

    retry = actions.add_parser("retry", help="resume compensating a FAILED saga")
    retry.add_argument("saga_id", metavar="ID")
    _app_argument(retry)
    retry.set_defaults(run=_retry)


def _store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="URL", help="redis://HOST:PORT/DB or postgresql://...")


def _app_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", required=True, metavar="MODULE:ATTRIBUTE", help="the application's catga.SagaExecutor")
    parser.add_argument(
        "--nats", metavar="URL", help="connect the executor's mediator to NATS (steps that send to other services)"
    )
    parser.add_argument("--service", help="the service name for `--nats` (default: the module)")


def open_store(url: str) -> Any:
    """The saga store a URL names: `redis://` (`rediss://`, `unix://`) or `postgresql://` (`postgres://`)."""
    return open_store_url(url, redis="RedisSagaStore", postgres="PostgresSagaStore")


def _list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError(f"`--limit` must be at least 1, got `{args.limit}`")
    states = asyncio.run(_with_store(args.store, lambda store: store.list(_status(args.status), args.limit)))
    if args.json:
        for state in states:
            print(encode_state(state).decode())
        return 0
    rows = [("ID", "SAGA", "STATUS", "STEP", "UPDATED")]
    rows += [(s.saga_id, s.name, str(s.status), s.step or "-", _time(s.updated_at)) for s in states]
    _print_table(rows)
    return 0


def _show(args: argparse.Namespace) -> int:
    state = asyncio.run(_with_store(args.store, lambda store: store.get(args.saga_id)))
    if state is None:
        raise CliError(f"no saga `{args.saga_id}` in `{without_password(args.store)}`")
    if args.json:
        print(encode_state(state).decode())
        return 0
    print(f"saga {state.saga_id} ({state.name}): {state.status}, version {state.version}")
    if state.owner:
        print(f"owner {state.owner}, lease until {_epoch(state.lease_expires)}")
    if state.error:
        print(f"error {state.error}")
    rows = [("STEP", "STATUS", "ATTEMPTS", "COMPENSATIONS", "STARTED", "TOOK")]
    for step in state.steps:
        took = "-"
        if step.started_at and step.finished_at:
            took = f"{(step.finished_at - step.started_at).total_seconds() * 1000:.1f} ms"
        rows.append(
            (
                step.name,
                str(step.status),
                str(step.attempts),
                str(step.compensation_attempts),
                _time(step.started_at),
                took,
            )
        )
    _print_table(rows)
    print("history:")
    for entry in state.history:
        where = f" {entry.step}" if entry.step else ""
        attempt = f" (attempt {entry.attempt})" if entry.attempt else ""
        detail = f": {entry.detail}" if entry.detail else ""
        print(f"  {_time(entry.at)} {entry.event}{where}{attempt}{detail}")
    return 0


def _recover(args: argparse.Namespace) -> int:
    executor = _load_executor(args)
    results = asyncio.run(_started(executor, lambda: executor.recover(failed=args.failed)))
    for result in results:
        print(f"{result.saga_id}: {result.status}")
    print(f"recovered {len(results)} saga(s)")
    return 0


def _retry(args: argparse.Namespace) -> int:
    executor = _load_executor(args)
    result = asyncio.run(_started(executor, lambda: executor.retry(args.saga_id)))
    print(f"{result.saga_id}: {result.status}")
    return 0 if str(result.status) == "compensated" else 1


async def _started(executor: Any, action: Any) -> Any:
    """Run `action` with the executor's mediator started (its transport connected, if any)."""
    async with executor.mediator:
        return await action()


def _load_executor(args: argparse.Namespace) -> Any:
    import catga
    from catga.cli._worker import load_target

    executor = load_target(args.app)
    if not isinstance(executor, catga.SagaExecutor):
        raise CliError(f"`{args.app}` is not a `catga.SagaExecutor`, got `{executor!r}`")
    if args.nats:
        mediator = executor.mediator
        if mediator.transport is not None:
            raise CliError(f"`{args.app}` already has the transport `{mediator.transport!r}`: drop `--nats`")
        try:
            from catga.nats import NatsTransport
        except ImportError as exc:
            raise CliError(str(exc)) from exc
        service = args.service or args.app.partition(":")[0].rpartition(".")[2]
        mediator._attach_transport(NatsTransport(args.nats, service=service))
    return executor


async def _with_store(url: str, action: Any) -> Any:
    store = open_store(url)
    try:
        return await action(store)
    finally:
        await store.aclose()


def _status(name: str | None) -> Any:
    if name is None:
        return None
    import catga

    return catga.SagaStatus(name)


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _epoch(value: float | None) -> str:
    if value is None:
        return "-"
    from datetime import UTC

    return _time(datetime.fromtimestamp(value, UTC))


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
