"""`catga events read|tail|stats`: what an event store holds, from a shell.

Every action takes the store as a URL (`--store redis://...` or `postgresql://...`; an in-memory
store lives in one process, so the CLI has none). Events are stored as wire name, schema and
msgpack body, and the stores decode them with the class registered under that wire name, so the
CLI must import the application's message modules first: `--import MODULE` (repeatable). An event
whose class is not registered fails the read with one line naming its stream and version, exit 1.

`read` prints one line per event, `VERSION POSITION TIMESTAMP TYPE {fields as compact JSON}`, or
JSON lines with `--json`; reading more than 1,000 events draws a `rich` progress bar on stderr
when stderr is a terminal (`--no-progress` turns it off). `tail` follows the global log from its
end (or `--from POSITION`) until Ctrl-C or SIGTERM. `stats` prints the last position, the number
of events and streams where the backend counts them cheaply, and the event types among the last
1,000 events (read as stored: no import needed).
"""

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import msgspec

from catga.cli._common import CliError, Subparsers, open_store_url, without_password

__all__ = ["add_parser", "open_event_store"]

_PAGE: Final = 500  # events per `read` round trip
_PROGRESS_ABOVE: Final = 1_000  # draw a progress bar when reading more events than this
_RECENT: Final = 1_000  # `stats` counts the types of this many latest events

_json: Final = msgspec.json.Encoder()


def add_parser(commands: Subparsers) -> None:
    events = commands.add_parser(
        "events",
        help="read a stream, follow the global log and count events in a Redis or PostgreSQL event store",
        description=(
            "Read a stream (read), follow the global log (tail) and summarise (stats) an event store. "
            "Events decode with their registered classes: `--import` the application's message modules."
        ),
    )
    actions = events.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)

    read = actions.add_parser("read", help="one stream's events, in version order")
    read.add_argument("stream", metavar="STREAM")
    _store_argument(read)
    _import_argument(read)
    read.add_argument("--from", dest="first", type=int, default=1, metavar="N", help="first version (default 1)")
    read.add_argument("--to", dest="last", type=int, metavar="N", help="last version (default: the end)")
    read.add_argument("--limit", type=int, metavar="N", help="at most this many events")
    read.add_argument("--json", action="store_true", help="one JSON object per line")
    read.add_argument("--no-progress", action="store_true", help="no progress bar, however long the read")
    read.set_defaults(run=_read)

    tail = actions.add_parser("tail", help="follow the global log, one line per event, until Ctrl-C")
    _store_argument(tail)
    _import_argument(tail)
    tail.add_argument(
        "--from", dest="first", type=int, metavar="POSITION", help="first position (default: the next event appended)"
    )
    tail.add_argument("--count", type=int, metavar="N", help="stop after this many events")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(run=_tail)

    stats = actions.add_parser("stats", help="last position, events, streams, and the types of the latest events")
    _store_argument(stats)
    stats.set_defaults(run=_stats)


def _store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="URL", help="redis://HOST:PORT/DB or postgresql://...")


def _import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, so its event classes register their wire names (repeatable)",
    )


def open_event_store(url: str) -> Any:
    """The event store a URL names: `redis://` (`rediss://`, `unix://`) or `postgresql://` (`postgres://`)."""
    return open_store_url(url, redis="RedisEventStore", postgres="PostgresEventStore")


def _import_modules(names: list[str]) -> None:
    if "" not in sys.path:  # like `python -m`: modules in the working directory import
        sys.path.insert(0, "")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise CliError(f"cannot import `{name}`: {exc}") from exc


@contextlib.contextmanager
def _undecodable() -> Iterator[None]:
    """A `SerializationError` (an event whose class is not registered here) as a one-line error."""
    from catga import SerializationError

    try:
        yield
    except SerializationError as exc:
        raise CliError(f"{exc} (import the module defining it with `--import MODULE`)") from exc


# ------------------------------------------------------------------------------------------ read


def _read(args: argparse.Namespace) -> int:
    if args.first < 1:
        raise CliError(f"`--from` must be at least 1, got `{args.first}`")
    if args.last is not None and args.last < args.first:
        raise CliError(f"`--to` must be at least `--from` ({args.first}), got `{args.last}`")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"`--limit` must be at least 1, got `{args.limit}`")
    _import_modules(args.imports)
    with _undecodable():
        found = asyncio.run(_read_stream(args))
    if not found:
        print(f"catga: stream `{args.stream}` has no events in that range", file=sys.stderr)
    return 0


async def _read_stream(args: argparse.Namespace) -> int:
    store = open_event_store(args.store)
    try:
        version = await store.version(args.stream)
        last = version if args.last is None else min(args.last, version)
        total = max(0, last - args.first + 1)
        if args.limit is not None:
            total = min(total, args.limit)
        printed = 0
        with _progress(total, enabled=not args.no_progress) as advance:
            following = args.first
            while printed < total:
                page = await store.read(args.stream, following, last, limit=min(_PAGE, total - printed))
                if not page:
                    break
                for event in page:
                    print(_line(event, as_json=args.json))
                printed += len(page)
                following = page[-1].version + 1
                advance(len(page))
        return printed
    finally:
        await store.aclose()


@contextlib.contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[Any]:
    """`advance(n)`: a `rich` progress bar on stderr for a long read when stderr is a terminal,
    else a no-op."""
    if not enabled or total <= _PROGRESS_ABOVE or not sys.stderr.isatty():
        yield lambda n: None
        return
    try:
        from rich.console import Console
        from rich.progress import Progress
    except ImportError:  # the `cli` extra is not installed: read without a bar
        yield lambda n: None
        return
    # Lines written to stdout go above the bar when stdout is the same terminal, else straight out.
    with Progress(
        console=Console(stderr=True), transient=True, redirect_stdout=sys.stdout.isatty(), redirect_stderr=False
    ) as bar:
        task = bar.add_task("reading", total=total)
        yield lambda n: bar.advance(task, n)


def _line(event: Any, *, as_json: bool) -> str:
    fields = msgspec.to_builtins(event.event)
    if isinstance(fields, dict):  # the tag repeats the type
        fields.pop(type(event.event).__struct_config__.tag_field, None)
    if as_json:
        record = {
            "stream": event.stream_id,
            "version": event.version,
            "position": event.position,
            "timestamp": event.timestamp,
            "type": event.type,
            "event": fields,
            "metadata": event.metadata,
        }
        return _json.encode(record).decode()
    stamp = event.timestamp.isoformat()
    return f"{event.version} {event.position} {stamp} {event.type} {_json.encode(fields).decode()}"


# ------------------------------------------------------------------------------------------ tail


def _tail(args: argparse.Namespace) -> int:
    if args.first is not None and args.first < 1:
        raise CliError(f"`--from` must be at least 1, got `{args.first}`")
    if args.count is not None and args.count < 1:
        raise CliError(f"`--count` must be at least 1, got `{args.count}`")
    _import_modules(args.imports)
    with _undecodable(), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_follow(args))
    return 0


async def _follow(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    store = open_event_store(args.store)
    try:
        first = args.first if args.first is not None else await _last_position(store) + 1
        where = without_password(args.store)
        print(f"catga: following `{where}` from position {first} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        seen = 0
        async for event in _subscription(store, first):
            print(_line(event, as_json=args.json), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    except asyncio.CancelledError:  # SIGTERM
        pass
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        await store.aclose()


async def _subscription(store: Any, first: int) -> AsyncIterator[Any]:
    events = store.subscribe(first)
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()


# ----------------------------------------------------------------------------------------- stats


def _stats(args: argparse.Namespace) -> int:
    rows = asyncio.run(_count(args.store))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}".rstrip())
    return 0


async def _count(url: str) -> list[tuple[str, str]]:
    store = open_event_store(url)
    try:
        last = await _last_position(store)
        rows = [("last position", str(last))]
        counts = await _postgres_counts(store)
        if counts is not None:
            rows += [("events", str(counts[0])), ("streams", str(counts[1]))]
        types = await _recent_types(store, last)
        recent = min(last, _RECENT)
        rows += [(f"types (last {recent}):", "-" if not types else "")]
        rows += [(f"  {name}", str(n)) for name, n in types.most_common()]
        return rows
    finally:
        await store.aclose()


def _is_redis(store: Any) -> bool:
    return type(store).__module__.startswith("catga.redis")


async def _last_position(store: Any) -> int:
    """The position of the last event appended (0: none), read the way each backend keeps it."""
    if _is_redis(store):
        raw = await store.client.get(f"{store.prefix}position")
        return int(raw or 0)
    pool = await store.pool()
    return int(await _pg(store, pool.fetchval, f"SELECT coalesce(max(position), 0) FROM {store.table}"))


async def _postgres_counts(store: Any) -> tuple[int, int] | None:
    """`(events, streams)` on PostgreSQL (one query); `None` on Redis, where counting the streams
    would scan every key."""
    if _is_redis(store):
        return None
    pool = await store.pool()
    row = await _pg(store, pool.fetchrow, f"SELECT count(*), count(DISTINCT stream_id) FROM {store.table}")
    return int(row[0]), int(row[1])


async def _recent_types(store: Any, last: int) -> Counter[str]:
    """How many of the last `_RECENT` events have each type (the stored wire names, undecoded)."""
    first = max(1, last - _RECENT + 1)
    if _is_redis(store):
        pipe = store.client.pipeline(transaction=False)
        for position in range(first, last + 1):
            pipe.hget(f"{store.prefix}e:{position}", "type")
        names = [raw.decode(errors="replace") for raw in await pipe.execute() if raw is not None]
        return Counter(names)
    pool = await store.pool()
    sql = f"SELECT type, count(*) FROM {store.table} WHERE position >= $1 GROUP BY type"
    return Counter({row[0]: int(row[1]) for row in await _pg(store, pool.fetch, sql, first)})


async def _pg(store: Any, call: Any, sql: str, *args: Any) -> Any:
    """`call(sql, *args)` on the store's pool; a missing table says to migrate, as the store does."""
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

    try:
        return await call(sql, *args)
    except asyncpg.UndefinedTableError as exc:
        raise CliError(f"PostgreSQL has no table `{store.table}`: nothing was ever stored there") from exc
