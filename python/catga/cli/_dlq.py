"""`catga dlq list|show|retry|delete|purge`: the dead letters of a cluster, from a shell.

Every action takes the dead-letter store as a URL: `--store redis://...` (also `rediss://` and
`unix://`; a `catga.redis.RedisDeadLetterStore`, with `--prefix` when the application gave it
another key prefix). An in-memory store lives in one process, so the CLI has none.

`list` and `show` read records as stored: no application code is needed. A record's `message` is
shown as the JSON of its msgpack body (decoded without its class), `body` as base64 in `--json`.

`retry` re-sends a record through `catga.DeadLetters.retry`: past the DeadLetter behaviour, removed
on success, kept with the new error and more `attempts` on failure. The record is always read from
and updated in `--store`; what re-sends it is one of:

- `--app MODULE:ATTRIBUTE`: the application's `catga.Mediator` (imported as `catga worker` does,
  started for the retry) runs it here, through its own pipeline: a request through `send_result`,
  an event record through the one handler that failed. Whatever dead-letter store the app's
  mediator itself uses only gets what the retried handler sends in turn and fails.
- `--nats URL`: a mediator with a `catga.nats.NatsTransport` and no handlers sends the request to
  the service that handles it (`--import` the modules defining the message classes), or publishes
  a whole event record again to every service. A record of one event handler can only be retried
  with `--app`. The service runs its own pipeline; the request says it is a redelivery, so the
  service's DeadLetter behaviour does not record a failure a second time and reports the attempts
  it counted, which the record here adds up (one when the service counted none; none when it was
  not reached or rejected the message before its handler ran). A failing event published again is
  a new dead letter of the service that fails it.

`retry --all` retries every record (or those of one `--type`), oldest first, with a `rich`
progress bar on stderr when stderr is a terminal. `purge` asks on a terminal unless `--yes`.
"""

import argparse
import asyncio
import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec

from catga.cli._common import CliError, Parser, Subparsers, open_store_url
from catga.cli._saga import _print_table, _time

__all__ = ["add_parser", "open_dead_letter_store"]

DEFAULT_PREFIX: Final = "catga:dlq:"
_SHORT: Final = 60  # characters of the error message in the `list` table

_json: Final = msgspec.json.Encoder()


def add_parser(commands: Subparsers) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="list, show, retry, delete and purge the dead letters in a Redis dead-letter store",
        # Wrapped by hand: the raw formatter keeps the epilog's layout, and the description's too.
        description=(
            "The messages that finally failed, in a Redis dead-letter store (catga.redis.RedisDeadLetterStore):\n"
            "list and show them, retry them through the application's mediator or over NATS, delete or\n"
            "purge them."
        ),
        epilog=_examples(
            "catga dlq list --store redis://127.0.0.1:6379/0",
            "catga dlq retry 1234 --store redis://127.0.0.1:6379/0 --app shop.orders:mediator",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    _add_list(actions)
    _add_show(actions)
    _add_retry(actions)
    _add_delete(actions)
    _add_purge(actions)


def _action(actions: Subparsers, name: str, help: str, description: str, *examples: str) -> Parser:
    return actions.add_parser(
        name,
        help=help,
        description=description,
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _examples(*lines: str) -> str:
    return "example" + ("s" if len(lines) > 1 else "") + ":\n" + "\n".join(f"  {line}" for line in lines)


def _add_list(actions: Subparsers) -> None:
    listing = _action(
        actions,
        "list",
        "the dead letters, oldest first",
        "The dead letters in the store, oldest first: a table, or one JSON object per record with --json.\n"
        "Reading needs no application code: a message is shown as the JSON of its msgpack body.",
        "catga dlq list --store redis://127.0.0.1:6379/0",
        "catga dlq list --store redis://127.0.0.1:6379/0 --type orders.create --limit 10 --json",
    )
    _store_argument(listing)
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="at most this many (default 100)")
    listing.add_argument("--type", metavar="WIRE_NAME", help="only the records of this message type")
    listing.add_argument(
        "--json", action="store_true", help="one JSON object per record (body as base64, datetimes in ISO 8601)"
    )
    listing.set_defaults(run=_list)


def _add_show(actions: Subparsers) -> None:
    show = _action(
        actions,
        "show",
        "one dead letter in full, with its traceback",
        "One dead letter in full: its message, error, attempts, failure times and traceback.",
        "catga dlq show 1234 --store redis://127.0.0.1:6379/0",
    )
    _id_argument(show)
    _store_argument(show)
    show.add_argument("--json", action="store_true", help="the record as one JSON object")
    show.set_defaults(run=_show)


def _add_retry(actions: Subparsers) -> None:
    retry = _action(
        actions,
        "retry",
        "send a dead letter again: removed on success, kept with the new error on failure",
        (
            "Send a dead letter's message again, past the DeadLetter behaviour (catga.DeadLetters.retry):\n"
            "on success the record is removed; on failure it is kept with the new error and more attempts,\n"
            "and the exit status is 1. The record is read from and updated in --store, whichever way it goes:\n"
            "\n"
            "--app   the application's mediator runs it here, through its handlers and pipeline (a request\n"
            "        through send_result, an event record through the one handler that failed). Whatever\n"
            "        dead-letter store that mediator uses itself only gets what the retried handler sends\n"
            "        in turn and fails.\n"
            "--nats  a mediator without handlers sends a request to the service that handles it, or\n"
            "        publishes a whole event record again to every service (--import the message classes).\n"
            "        The record of one event handler needs --app. A failed request adds the attempts the\n"
            "        service counted (one if none; none when it was not reached) and is not recorded\n"
            "        again by the service; a failing event published again becomes the service's own."
        ),
        "catga dlq retry 1234 --store redis://127.0.0.1:6379/0 --app shop.orders:mediator",
        "catga dlq retry 1234 --store redis://127.0.0.1:6379/0 --nats nats://127.0.0.1:4222 --import shop.messages",
        "catga dlq retry --all --type orders.create --store redis://127.0.0.1:6379/0 --app shop.orders:mediator",
    )
    retry.add_argument("record_id", metavar="ID", type=int, nargs="?", help="the record's id (or --all)")
    retry.add_argument("--all", action="store_true", help="every record (with --type: of that type), oldest first")
    retry.add_argument("--type", metavar="WIRE_NAME", help="with --all: only the records of this message type")
    _store_argument(retry)
    via = retry.add_mutually_exclusive_group(required=True)
    via.add_argument(
        "--app", metavar="MODULE:ATTRIBUTE", help="the application's catga.Mediator, which re-sends it here"
    )
    via.add_argument("--nats", metavar="URL", help="re-send it over NATS, to the service that handles it")
    retry.add_argument(
        "--service", metavar="NAME", help="with --nats: the service name to connect as (default: catga-dlq)"
    )
    retry.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, so its message classes register their wire names (repeatable)",
    )
    retry.add_argument("--json", action="store_true", help="one JSON object per record retried")
    retry.set_defaults(run=_retry)


def _add_delete(actions: Subparsers) -> None:
    delete = _action(
        actions,
        "delete",
        "drop one dead letter",
        "Drop one dead letter from the store.",
        "catga dlq delete 1234 --store redis://127.0.0.1:6379/0",
    )
    _id_argument(delete)
    _store_argument(delete)
    delete.set_defaults(run=_delete)


def _add_purge(actions: Subparsers) -> None:
    purge = _action(
        actions,
        "purge",
        "drop every dead letter (asks first, unless --yes)",
        "Drop every dead letter in the store. On a terminal it asks first; elsewhere it needs --yes.",
        "catga dlq purge --store redis://127.0.0.1:6379/0 --yes",
    )
    _store_argument(purge)
    purge.add_argument("--yes", action="store_true", help="do not ask")
    purge.set_defaults(run=_purge)


def _id_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("record_id", metavar="ID", type=int, help="the record's id (`catga dlq list` shows them)")


def _store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="URL", help="redis://HOST:PORT/DB (or rediss://, unix://)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"the store's key prefix (default: {DEFAULT_PREFIX})")


def open_dead_letter_store(url: str, prefix: str = DEFAULT_PREFIX) -> Any:
    """The dead-letter store a URL names: `redis://` (or `rediss://`, `unix://`)."""
    return open_store_url(url, redis="RedisDeadLetterStore", prefix=prefix)


async def _with_store(args: argparse.Namespace, action: Callable[[Any], Any]) -> Any:
    store = open_dead_letter_store(args.store, args.prefix)
    try:
        return await action(store)
    finally:
        await store.aclose()


def _where(store: Any) -> str:
    """The store, for messages: its server without credentials, and its prefix when not the default."""
    prefix = "" if store.prefix == DEFAULT_PREFIX else f" (prefix `{store.prefix}`)"
    return f"`{store.url}`{prefix}"


def _missing(record_id: int, store: Any) -> CliError:
    return CliError(f"no dead letter `{record_id}` in {_where(store)}")


# ---------------------------------------------------------------------------------- list, show


def _list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError(f"`--limit` must be at least 1, got `{args.limit}`")

    async def read(store: Any) -> tuple[list[Any], int, str]:
        if args.type is None:
            records = await store.list(args.limit)
            total = await store.count() if len(records) == args.limit else len(records)
        else:
            records = [r for r in await store.list(None) if r.message_type == args.type]
            total = len(records)
        return records[: args.limit], total, _where(store)

    records, total, where = asyncio.run(_with_store(args, read))
    if args.json:
        for record in records:
            print(_json.encode(_as_json(record)).decode())
    elif records:
        rows: list[tuple[str, ...]] = [("ID", "TYPE", "ERROR", "ATTEMPTS", "FIRST FAILED", "LAST FAILED", "MESSAGE")]
        rows += [_row(record) for record in records]
        _print_table(rows)
    if not records:
        kind = "" if args.type is None else f" of `{args.type}`"
        print(f"catga: no dead letters{kind} in {where}", file=sys.stderr)
    elif total > len(records):
        print(f"catga: the oldest {len(records)} of {total} (raise `--limit` for more)", file=sys.stderr)
    return 0


def _row(record: Any) -> tuple[str, ...]:
    message = " ".join(record.error_message.split())
    if len(message) > _SHORT:
        message = message[: _SHORT - 1] + "…"
    return (
        str(record.id),
        record.message_type,
        record.error_type.rpartition(".")[2],
        str(record.attempts),
        _time(record.first_failed_at),
        _time(record.last_failed_at),
        message,
    )


def _show(args: argparse.Namespace) -> int:
    async def read(store: Any) -> Any:
        record = await store.get(args.record_id)
        if record is None:
            raise _missing(args.record_id, store)
        return record

    record = asyncio.run(_with_store(args, read))
    if args.json:
        print(_json.encode(_as_json(record)).decode())
        return 0
    message = _message_fields(record)
    rows = [
        ("id", str(record.id)),
        ("type", record.message_type),
        ("handler", record.handler or "-"),
        ("error", f"{record.error_type}: {record.error_message}"),
        ("attempts", str(record.attempts)),
        ("first failed", record.first_failed_at.isoformat()),
        ("last failed", record.last_failed_at.isoformat()),
        ("message", _json.encode(message).decode() if message is not None else f"({len(record.body)} bytes)"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print("traceback:")
    for line in (record.traceback or "-").rstrip("\n").splitlines():
        print(f"  {line}")
    return 0


def _as_json(record: Any) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.structs.asdict(record)
    message = _message_fields(record)
    if message is None:
        del fields["message"]
    else:
        fields["message"] = message
    return fields  # msgspec's JSON writes `body` as base64 and the datetimes in ISO 8601


def _message_fields(record: Any) -> Any:
    """The message as JSON-ready builtins (its tag left out: `message_type` says it), or `None`
    when its body does not decode: from the message object, else from the body without its class."""
    try:
        if record.message is not None:
            fields = msgspec.to_builtins(record.message)
        elif record.body:
            fields = msgspec.to_builtins(msgspec.msgpack.decode(record.body))
        else:
            return None
    except (msgspec.DecodeError, TypeError, ValueError):
        return None
    if isinstance(fields, dict):
        config = getattr(type(record.message), "__struct_config__", None)
        fields.pop(getattr(config, "tag_field", None) or "$type", None)
    return fields


# -------------------------------------------------------------------------------------- retry


def _retry(args: argparse.Namespace) -> int:
    if args.all == (args.record_id is not None):
        raise CliError("`retry` takes one ID or `--all`")
    if args.type is not None and not args.all:
        raise CliError("`--type` goes with `--all` (one ID says which record)")
    if args.service is not None and args.nats is None:
        raise CliError("`--service` goes with `--nats`")
    _import_modules(args.imports)
    mediator = _resender(args)  # before the store reads records: the app registers the message classes
    outcomes = asyncio.run(_retry_records(args, mediator))
    failed = [outcome for outcome in outcomes if not outcome["ok"]]
    if not args.all and failed and not args.json:
        raise CliError(_outcome_line(failed[0], error=True))
    for outcome in outcomes:
        print(_json.encode(outcome).decode() if args.json else _outcome_line(outcome))
    if args.all and not args.json:
        print(f"retried {len(outcomes)} dead letter(s): {len(outcomes) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


def _import_modules(names: list[str]) -> None:
    if "" not in sys.path:  # like `python -m`: modules in the working directory import
        sys.path.insert(0, "")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise CliError(f"cannot import `{name}`: {exc}") from exc


def _resender(args: argparse.Namespace) -> Any:
    """The mediator whose `_resend` sends the records again: the app's, or a bare one over NATS."""
    import catga

    if args.app is not None:
        from catga.cli._worker import load_mediator

        return load_mediator(args.app)
    try:
        from catga.nats import NatsTransport
    except ImportError as exc:
        raise CliError(str(exc)) from exc
    servers = [url.strip() for url in args.nats.split(",") if url.strip()]
    # No built-ins: one send; the service runs its own pipeline (retries, idempotency, dead letters).
    return catga.Mediator(
        config=catga.Config.minimal(), transport=NatsTransport(servers, service=args.service or "catga-dlq")
    )


async def _retry_records(args: argparse.Namespace, mediator: Any) -> list[dict[str, Any]]:
    from catga import DeadLetters

    store = open_dead_letter_store(args.store, args.prefix)
    try:
        if args.all:
            records = [r for r in await store.list(None) if args.type is None or r.message_type == args.type]
        else:
            record = await store.get(args.record_id)
            if record is None:
                raise _missing(args.record_id, store)
            records = [record]
        if not args.all:
            _check_retryable(records[0], args)
        dead_letters = DeadLetters(store, _counting_resend(mediator))
        outcomes: list[dict[str, Any]] = []
        async with mediator:
            with _progress(len(records) if args.all else 0) as advance:
                for record in records:
                    outcomes.append(await _retry_one(dead_letters, record, args))
                    advance()
        return outcomes
    finally:
        await store.aclose()


def _check_retryable(record: Any, args: argparse.Namespace) -> None:
    if args.nats is not None and record.handler is not None:
        raise CliError(
            f"dead letter `{record.id}` is a failure of the event handler `{record.handler}`: retry it with `--app` "
            "(over NATS an event goes to every service, not to one handler)"
        )


async def _retry_one(dead_letters: Any, record: Any, args: argparse.Namespace) -> dict[str, Any]:
    outcome: dict[str, Any] = {"id": record.id, "message_type": record.message_type}
    try:
        _check_retryable(record, args)
        result = await dead_letters.retry(record.id)
    except CliError as exc:
        return {**outcome, "ok": False, "skipped": True, "error": str(exc)}
    except KeyError:  # deleted (or retried) by someone else since it was listed
        return {**outcome, "ok": False, "skipped": True, "error": "no longer in the store"}
    if result.ok:
        return {**outcome, "ok": True, "value": _jsonable(result.value)}
    from catga import SerializationError

    error = result.error
    cause = error.__cause__ if error.__cause__ is not None else error
    text = f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    if isinstance(error, SerializationError) and not args.imports:
        text += " (import the module defining it with `--import MODULE`)"
    kept = await dead_letters.get(record.id)
    return {**outcome, "ok": False, "error": text, "attempts": None if kept is None else kept.attempts}


def _counting_resend(mediator: Any) -> Any:
    """`mediator._resend`, counting one attempt for a failed handler that no DeadLetter behaviour of
    this process counted: one that ran in another service, or in an app mediator without DeadLetter."""
    import catga
    from catga._dead_letters import REDELIVERY

    handler_not_run = (
        catga.TransportError,
        catga.ValidationError,
        catga.HandlerNotFound,
        catga.SerializationError,
        catga.CircuitOpen,
        catga.RateLimited,
        catga.ConcurrencyLimited,
        catga.Conflict,
    )

    async def resend(record: Any, message: object) -> Any:
        result = await mediator._resend(record, message)
        redelivery = REDELIVERY.get()
        if result.ok or redelivery is None or redelivery.error is not None:  # a DeadLetter layer counted
            return result
        if not isinstance(result.error, handler_not_run):
            redelivery.attempts = 1
        return result

    return resend


def _outcome_line(outcome: dict[str, Any], *, error: bool = False) -> str:
    """`ID TYPE: ok, result ...` / `ID TYPE: failed again: ...` (one line of `retry`), or, as the
    error of a single retry, `dead letter `ID` (`TYPE`) failed again: ...`."""
    if error:
        head = f"dead letter `{outcome['id']}` (`{outcome['message_type']}`)"
    else:
        head = f"{outcome['id']} {outcome['message_type']}:"
    if outcome["ok"]:
        value = outcome["value"]
        return f"{head} ok" + ("" if value is None else f", result {_json.encode(value).decode()}")
    if outcome.get("skipped"):
        return f"{head} skipped: {outcome['error']}"
    kept = "" if outcome["attempts"] is None else f"; kept, {outcome['attempts']} attempts"
    return f"{head} failed again: {outcome['error']}{kept}"


def _jsonable(value: Any) -> Any:
    """`value` as JSON-ready builtins, or its `repr` when msgspec cannot encode it."""
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return repr(value)


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[], None]]:
    """`advance()`: a `rich` progress bar on stderr for `retry --all` when stderr is a terminal,
    else a no-op."""
    if total < 2 or not sys.stderr.isatty():
        yield lambda: None
        return
    try:
        from rich.console import Console
        from rich.progress import Progress
    except ImportError:  # the `cli` extra is not installed: retry without a bar
        yield lambda: None
        return
    with Progress(
        console=Console(stderr=True), transient=True, redirect_stdout=sys.stdout.isatty(), redirect_stderr=False
    ) as bar:
        task = bar.add_task("retrying", total=total)
        yield lambda: bar.advance(task)


# ------------------------------------------------------------------------------ delete, purge


def _delete(args: argparse.Namespace) -> int:
    async def delete(store: Any) -> str:
        if not await store.delete(args.record_id):
            raise _missing(args.record_id, store)
        return _where(store)

    where = asyncio.run(_with_store(args, delete))
    print(f"deleted dead letter {args.record_id} from {where}")
    return 0


def _purge(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("`purge` drops every dead letter: pass `--yes` to do it without asking")
        count, where = asyncio.run(_with_store(args, _counted))
        if count and not _confirmed(f"drop all {count} dead letter(s) in {where}? [y/N] "):
            raise CliError("not purged: answer `y` to drop them, or pass `--yes`")

    async def purge(store: Any) -> tuple[int, str]:
        return await store.purge(), _where(store)

    purged, where = asyncio.run(_with_store(args, purge))
    print(f"purged {purged} dead letter(s) from {where}")
    return 0


async def _counted(store: Any) -> tuple[int, str]:
    return await store.count(), _where(store)


def _confirmed(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
