"""`catga events read|tail|stats` against real Redis and PostgreSQL event stores."""

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import catga
from catga.cli import main
from catga.cli._events import open_event_store
from events_cli_app import Deposited, Withdrawn

TESTS = Path(__file__).resolve().parent


class Unknown(catga.Event, tag="cli.Unknown"):
    """Registered in this process only: a `catga` subprocess cannot decode it."""

    note: str


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def _catga(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "catga", *args], capture_output=True, text=True, cwd=TESTS, env=_env(), timeout=60
    )


@pytest.fixture(params=["redis", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("redis_url" if request.param == "redis" else "postgres_dsn")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Any]:
    events = open_event_store(store_url)
    if hasattr(events, "migrate"):
        await events.migrate()
    yield events
    await events.aclose()


async def test_read_prints_one_line_per_event(store: Any, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await store.append("acct-1", [Deposited(account="acct-1", amount=10), Withdrawn(account="acct-1", amount=3)])
    await store.append("acct-2", [Deposited(account="acct-2", amount=7)])
    await store.append("acct-1", [Deposited(account="acct-1", amount=5)])

    assert await asyncio.to_thread(main, ["events", "read", "acct-1", "--store", store_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    version, position, stamp, wire, fields = lines[1].split(" ", 4)
    assert (version, position, wire) == ("2", "2", "cli.Withdrawn")
    assert stamp.startswith("20")
    assert stamp.endswith("+00:00")
    body = json.loads(fields)
    assert body["account"] == "acct-1"
    assert body["amount"] == 3
    assert "$type" not in body
    assert lines[2].split(" ", 2)[:2] == ["3", "4"]  # version 3 of acct-1 is position 4

    assert await asyncio.to_thread(main, ["events", "read", "acct-1", "--store", store_url, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["version"] for r in records] == [1, 2, 3]
    assert records[0]["stream"] == "acct-1"
    assert records[0]["type"] == "cli.Deposited"
    assert records[2]["event"]["amount"] == 5
    assert records[2]["position"] == 4
    assert records[0]["metadata"] == {}


async def test_read_ranges_and_limit(store: Any, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await store.append("big", [Deposited(account="big", amount=n) for n in range(1, 1201)])

    async def versions(*extra: str) -> list[int]:
        assert await asyncio.to_thread(main, ["events", "read", "big", "--store", store_url, "--json", *extra]) == 0
        return [json.loads(line)["version"] for line in capsys.readouterr().out.splitlines()]

    assert await versions() == list(range(1, 1201))  # three pages of 500
    assert await versions("--from", "499", "--to", "502") == [499, 500, 501, 502]
    assert await versions("--from", "1190") == list(range(1190, 1201))
    assert await versions("--from", "10", "--limit", "3") == [10, 11, 12]
    assert await versions("--to", "2000", "--from", "1199") == [1199, 1200]
    assert await versions("--limit", "700") == list(range(1, 701))


async def test_read_a_missing_stream_prints_nothing(
    store: Any, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await asyncio.to_thread(main, ["events", "read", "nowhere", "--store", store_url]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "stream `nowhere` has no events" in captured.err


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "read", "s", "--store", "memory://"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "`--store` must be a `redis://`, `rediss://`, `unix://` or `postgresql://` URL" in err
    assert main(["events", "read", "s", "--store", "redis://127.0.0.1:1/0", "--from", "0"]) == 1
    assert "`--from` must be at least 1" in capsys.readouterr().err
    assert main(["events", "read", "s", "--store", "redis://127.0.0.1:1/0", "--import", "no_such_module_x"]) == 1
    assert "cannot import `no_such_module_x`" in capsys.readouterr().err
    assert main(["events", "tail", "--store", "redis://127.0.0.1:1/0", "--count", "0"]) == 1
    assert "`--count` must be at least 1" in capsys.readouterr().err


def test_an_unreachable_store_is_a_one_line_error() -> None:
    done = _catga("events", "read", "s", "--store", "redis://127.0.0.1:1/0")
    assert done.returncode == 1
    assert done.stderr.startswith("catga: error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""


async def test_an_undecodable_event_fails_naming_stream_and_version(store: Any, store_url: str) -> None:
    await store.append("mixed", [Deposited(account="mixed", amount=1), Unknown(note="?")])

    done = await asyncio.to_thread(
        _catga, "events", "read", "mixed", "--store", store_url, "--import", "events_cli_app"
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "catga: error:" in done.stderr
    assert "`cli.Unknown` at version `2` of stream `mixed`" in done.stderr
    assert "--import MODULE" in done.stderr

    # Without `--import`, even the application's own events cannot be decoded.
    done = await asyncio.to_thread(_catga, "events", "read", "mixed", "--store", store_url)
    assert done.returncode == 1
    assert "`cli.Deposited` at version `1` of stream `mixed`" in done.stderr

    done = await asyncio.to_thread(
        _catga, "events", "read", "mixed", "--store", store_url, "--import", "events_cli_app", "--to", "1"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert " cli.Deposited " in done.stdout


async def test_tail_follows_events_appended_after_it_starts(store: Any, store_url: str) -> None:
    await store.append("before", [Deposited(account="before", amount=1)])  # already there: not tailed
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "catga",
        "events",
        "tail",
        "--store",
        store_url,
        "--import",
        "events_cli_app",
        "--count",
        "2",
        cwd=TESTS,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert tail.stderr is not None
        banner = (await asyncio.wait_for(tail.stderr.readline(), 30)).decode()
        assert "from position 2" in banner, banner
        await store.append("live-1", [Deposited(account="live-1", amount=5)])
        await store.append("live-2", [Withdrawn(account="live-2", amount=2), Deposited(account="live-2", amount=9)])
        out, err = await asyncio.wait_for(tail.communicate(), 30)
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    assert tail.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("1 2 ")
    assert " cli.Deposited " in lines[0]
    assert lines[1].startswith("1 3 ")
    assert " cli.Withdrawn " in lines[1]


async def test_tail_from_a_position_and_stops_on_sigterm(store: Any, store_url: str) -> None:
    await store.append("old", [Deposited(account="old", amount=n) for n in range(3)])
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "catga",
        "events",
        "tail",
        "--store",
        store_url,
        "--import",
        "events_cli_app",
        "--from",
        "2",
        "--json",
        cwd=TESTS,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert tail.stdout is not None
        seen = [json.loads(await asyncio.wait_for(tail.stdout.readline(), 30)) for _ in range(2)]
        assert [event["position"] for event in seen] == [2, 3]
        tail.terminate()
        out, err = await asyncio.wait_for(tail.communicate(), 30)
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    assert tail.returncode == 0, err
    assert out == b""


async def test_stats(store: Any, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await asyncio.to_thread(main, ["events", "stats", "--store", store_url]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["last", "position", "0"]

    await store.append("a", [Deposited(account="a", amount=1), Withdrawn(account="a", amount=1)])
    await store.append("b", [Deposited(account="b", amount=1), Unknown(note="no import needed")])
    assert await asyncio.to_thread(main, ["events", "stats", "--store", store_url]) == 0
    out = capsys.readouterr().out
    rows = {line.rsplit(" ", 1)[0].strip(): line.rsplit(" ", 1)[-1] for line in out.splitlines()}
    assert rows["last position"] == "4"
    assert "types (last 4):" in out
    assert rows["cli.Deposited"] == "2"
    assert rows["cli.Withdrawn"] == "1"
    assert rows["cli.Unknown"] == "1"
    if store_url.startswith("postgresql"):
        assert rows["events"] == "4"
        assert rows["streams"] == "2"
    else:
        assert "streams" not in rows


async def test_stats_on_a_postgres_database_without_the_table(
    postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await asyncio.to_thread(main, ["events", "stats", "--store", postgres_dsn]) == 1
    assert "no table `catga_events`" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_a_long_read_draws_a_progress_bar_on_a_terminal(
    store: Any, store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await store.append("long", [Deposited(account="long", amount=n) for n in range(1100)])
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert await asyncio.to_thread(main, ["events", "read", "long", "--store", store_url]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1100  # stdout is not a terminal: not redirected
    assert "reading" in terminal.getvalue()

    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert await asyncio.to_thread(main, ["events", "read", "long", "--store", store_url, "--no-progress"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1100
    assert quiet.getvalue() == ""
