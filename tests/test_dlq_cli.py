"""`catga dlq list|show|retry|delete|purge` against a real Redis dead-letter store (and NATS for
`retry --nats`)."""

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

import catga
import dlq_cli_app
from catga.behaviors import DeadLetter
from catga.cli import main
from catga.redis import RedisDeadLetterStore
from dlq_cli_app import OrderPlaced, PlaceOrder

TESTS = Path(__file__).resolve().parent


def _catga(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "catga", *args], capture_output=True, text=True, cwd=TESTS, env=environment, timeout=60
    )


async def _cli(*argv: str) -> int:
    """`main(argv)` off the event loop: it runs `asyncio.run` itself."""
    return await asyncio.to_thread(main, list(argv))


async def _dead_letters(url: str, *messages: object) -> list[int]:
    """Send or publish `messages` through a mediator whose handlers fail, with the DeadLetter
    behaviour on a Redis store at `url`; the ids of the records it made, oldest first."""
    store = RedisDeadLetterStore(url)
    config = catga.Config.default().with_(dead_letter=DeadLetter(store=store), retry=dlq_cli_app.retry())
    mediator = catga.Mediator(config=config)
    mediator.register(PlaceOrder, dlq_cli_app.place_order)
    mediator.register(OrderPlaced, dlq_cli_app.email_customer)
    try:
        for message in messages:
            if isinstance(message, catga.Event):
                with pytest.raises(catga.PublishError):
                    await mediator.publish(message)
            else:
                with pytest.raises(RuntimeError, match="payment service is down"):
                    await mediator.send(message)
        return [record.id for record in await store.list(None)]
    finally:
        await store.aclose()


async def _stored(url: str) -> dict[int, catga.DeadLetterRecord]:
    store = RedisDeadLetterStore(url)
    try:
        return {record.id: record for record in await store.list(None)}
    finally:
        await store.aclose()


# ------------------------------------------------------------------------------------ list, show


async def test_list_prints_a_table_and_json_lines(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ann, bob, mail = await _dead_letters(
        redis_url,
        PlaceOrder(customer="ann", amount=10),
        PlaceOrder(customer="bob", amount=20),
        OrderPlaced(order_id="o-1"),
    )

    assert await _cli("dlq", "list", "--store", redis_url) == 0
    out, err = capsys.readouterr()
    assert err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "TYPE", "ERROR", "ATTEMPTS", "FIRST", "FAILED", "LAST", "FAILED", "MESSAGE"]
    assert [row.split()[:4] for row in rows] == [
        [str(ann), "dlqcli.PlaceOrder", "RuntimeError", "2"],
        [str(bob), "dlqcli.PlaceOrder", "RuntimeError", "2"],
        [str(mail), "dlqcli.OrderPlaced", "RuntimeError", "2"],
    ]
    assert "the payment service is down for `ann`" in rows[0]

    assert await _cli("dlq", "list", "--store", redis_url, "--json") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in records] == [ann, bob, mail]
    first = records[0]
    assert first["message_type"] == "dlqcli.PlaceOrder"
    assert first["message"]["customer"] == "ann"
    assert first["message"]["amount"] == 10
    assert "$type" not in first["message"]
    decoded = msgspec.msgpack.decode(base64.b64decode(first["body"]), type=PlaceOrder)
    assert (decoded.customer, decoded.amount) == ("ann", 10)
    assert first["error_type"] == "builtins.RuntimeError"
    assert first["error_message"] == "the payment service is down for `ann`"
    assert "Traceback" in first["traceback"]
    assert first["attempts"] == 2
    assert datetime.fromisoformat(first["first_failed_at"]).tzinfo is not None
    assert datetime.fromisoformat(first["last_failed_at"]) >= datetime.fromisoformat(first["first_failed_at"])
    assert first["handler"] is None
    assert records[2]["handler"] == "dlq_cli_app.email_customer"

    assert await _cli("dlq", "list", "--store", redis_url, "--type", "dlqcli.OrderPlaced", "--json") == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [mail]
    assert await _cli("dlq", "list", "--store", redis_url, "--limit", "1") == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert "the oldest 1 of 3" in err
    assert await _cli("dlq", "list", "--store", redis_url, "--type", "nope") == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert f"no dead letters of `nope` in `{redis_url}`" in err


async def test_list_as_a_process_needs_no_application_code(redis_url: str) -> None:
    (ann,) = await _dead_letters(redis_url, PlaceOrder(customer="ann", amount=10))

    done = await asyncio.to_thread(_catga, "dlq", "list", "--store", redis_url, "--json")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    record = json.loads(line)
    assert record["id"] == ann
    message = record["message"]  # decoded from the body without its class
    assert (message["customer"], message["amount"]) == ("ann", 10)
    assert "$type" not in message
    table = await asyncio.to_thread(_catga, "dlq", "list", "--store", redis_url)
    assert table.returncode == 0, table.stderr
    assert str(ann) in table.stdout
    assert "dlqcli.PlaceOrder" in table.stdout


async def test_show_prints_one_record_in_full(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ann, mail = await _dead_letters(redis_url, PlaceOrder(customer="ann", amount=10), OrderPlaced(order_id="o-1"))

    assert await _cli("dlq", "show", str(ann), "--store", redis_url) == 0
    out = capsys.readouterr().out
    fields = dict(line.split(None, 1) for line in out.split("traceback:")[0].splitlines() if " " in line.strip())
    assert fields["id"] == str(ann)
    assert fields["type"] == "dlqcli.PlaceOrder"
    assert fields["error"] == "builtins.RuntimeError: the payment service is down for `ann`"
    assert fields["attempts"] == "2"
    assert '"customer":"ann"' in out
    traceback = out.split("traceback:\n", 1)[1]
    assert "Traceback (most recent call last)" in traceback
    assert "RuntimeError: the payment service is down for `ann`" in traceback

    assert await _cli("dlq", "show", str(mail), "--store", redis_url, "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["id"] == mail
    assert record["handler"] == "dlq_cli_app.email_customer"
    assert record["message"]["order_id"] == "o-1"
    assert "Traceback" in record["traceback"]


# ------------------------------------------------------------------------------------------ retry


async def test_retry_with_the_app_keeps_a_failure_and_removes_a_success(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, mail = await _dead_letters(redis_url, PlaceOrder(customer="ann", amount=10), OrderPlaced(order_id="o-1"))
    first = (await _stored(redis_url))[ann]

    # Still broken: kept, with two more attempts (the app's Retry) and the new failure time.
    assert await _cli("dlq", "retry", str(ann), "--store", redis_url, "--app", "dlq_cli_app:mediator") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"catga: error: dead letter `{ann}` (`dlqcli.PlaceOrder`) failed again: RuntimeError: ")
    assert err.rstrip().endswith("; kept, 4 attempts")
    kept = (await _stored(redis_url))[ann]
    assert kept.attempts == 4
    assert kept.last_failed_at > first.last_failed_at
    assert kept.first_failed_at == first.first_failed_at

    # Fixed: the result is printed and the record goes.
    monkeypatch.setitem(dlq_cli_app.FIXED, "handlers", True)
    assert await _cli("dlq", "retry", str(ann), "--store", redis_url, "--app", "dlq_cli_app:mediator") == 0
    assert capsys.readouterr().out == f'{ann} dlqcli.PlaceOrder: ok, result "order-ann"\n'
    assert await _cli("dlq", "retry", str(mail), "--store", redis_url, "--app", "dlq_cli_app:mediator", "--json") == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome == {"id": mail, "message_type": "dlqcli.OrderPlaced", "ok": True, "value": None}
    assert await _stored(redis_url) == {}


async def test_retry_all_as_a_process(redis_url: str) -> None:
    ids = await _dead_letters(
        redis_url,
        PlaceOrder(customer="ann", amount=1),
        OrderPlaced(order_id="o-1"),
        PlaceOrder(customer="bob", amount=2),
    )

    # Only one type, still failing: exit 1, every record kept.
    done = await asyncio.to_thread(
        _catga,
        "dlq",
        "retry",
        "--all",
        "--type",
        "dlqcli.PlaceOrder",
        "--store",
        redis_url,
        "--app",
        "dlq_cli_app:mediator",
    )
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "retried 2 dead letter(s): 0 ok, 2 failed"
    assert lines[0].startswith(f"{ids[0]} dlqcli.PlaceOrder: failed again: RuntimeError: ")
    assert {r.attempts for r in (await _stored(redis_url)).values()} == {2, 4}

    fixed = await asyncio.to_thread(
        _catga,
        "dlq",
        "retry",
        "--all",
        "--store",
        redis_url,
        "--app",
        "dlq_cli_app:mediator",
        env={"CATGA_TEST_DLQ_FIXED": "1"},
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fixed.stdout.splitlines() == [
        f'{ids[0]} dlqcli.PlaceOrder: ok, result "order-ann"',
        f"{ids[1]} dlqcli.OrderPlaced: ok",
        f'{ids[2]} dlqcli.PlaceOrder: ok, result "order-bob"',
        "retried 3 dead letter(s): 3 ok, 0 failed",
    ]
    assert fixed.stderr == ""  # not a terminal: no progress bar
    assert await _stored(redis_url) == {}


async def test_retry_over_nats_sends_to_the_serving_service(
    redis_url: str, nats_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from catga.nats import NatsTransport

    ann, mail = await _dead_letters(redis_url, PlaceOrder(customer="ann", amount=10), OrderPlaced(order_id="o-1"))
    # Like `catga worker`, with its own DeadLetter behaviour on the same store.
    served_store = RedisDeadLetterStore(redis_url)
    serving = catga.Mediator(
        config=catga.Config.default().with_(dead_letter=DeadLetter(store=served_store)),
        transport=NatsTransport(nats_url, service="dlq-orders"),
    )
    serving.register(PlaceOrder, dlq_cli_app.place_order)
    retry = ("dlq", "retry", str(ann), "--store", redis_url, "--nats", nats_url, "--import", "dlq_cli_app")
    try:
        async with serving:
            # The service's handler still fails: kept, with the one attempt the service's DeadLetter
            # behaviour counted (its Retry does not retry a RuntimeError), and not recorded a second
            # time by the service (the request says it is a redelivery).
            before_attempts = (await _stored(redis_url))[ann].attempts
            assert await _cli(*retry) == 1
            err = capsys.readouterr().err
            assert f"dead letter `{ann}` (`dlqcli.PlaceOrder`) failed again: HandlerFailed: " in err
            assert "payment service is down for `ann`" in err
            assert err.rstrip().endswith(f"; kept, {before_attempts + 1} attempts")
            stored = await _stored(redis_url)
            assert stored[ann].attempts == before_attempts + 1
            assert set(stored) == {ann, mail}

            monkeypatch.setitem(dlq_cli_app.FIXED, "handlers", True)
            assert await _cli(*retry) == 0
            assert capsys.readouterr().out == f'{ann} dlqcli.PlaceOrder: ok, result "order-ann"\n'

            # One event handler's failure cannot be re-run over NATS: refused, record untouched.
            before = (await _stored(redis_url))[mail]
            assert await _cli("dlq", "retry", str(mail), "--store", redis_url, "--nats", nats_url) == 1
            err = capsys.readouterr().err
            assert f"dead letter `{mail}` is a failure of the event handler `dlq_cli_app.email_customer`" in err
            assert "retry it with `--app`" in err
    finally:
        await served_store.aclose()
    stored = await _stored(redis_url)
    assert set(stored) == {mail}
    assert stored[mail] == before


async def test_retry_over_nats_without_the_message_class(redis_url: str, nats_url: str) -> None:
    (ann,) = await _dead_letters(redis_url, PlaceOrder(customer="ann", amount=10))

    done = await asyncio.to_thread(_catga, "dlq", "retry", str(ann), "--store", redis_url, "--nats", nats_url)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "no message class has the wire name `dlqcli.PlaceOrder`" in done.stderr
    assert "`--import MODULE`" in done.stderr
    assert (await _stored(redis_url))[ann].attempts == 2  # not re-sent: untouched


# ---------------------------------------------------------------------------------- delete, purge


class _Terminal(io.StringIO):
    """A stdin that says it is a terminal, with the user's answer in it."""

    def isatty(self) -> bool:
        return True


async def test_delete_and_purge(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, bob, cid = await _dead_letters(
        redis_url, *(PlaceOrder(customer=name, amount=1) for name in ("ann", "bob", "cid"))
    )

    assert await _cli("dlq", "delete", str(ann), "--store", redis_url) == 0
    assert capsys.readouterr().out == f"deleted dead letter {ann} from `{redis_url}`\n"
    assert await _cli("dlq", "delete", str(ann), "--store", redis_url) == 1
    assert capsys.readouterr().err == f"catga: error: no dead letter `{ann}` in `{redis_url}`\n"
    assert set(await _stored(redis_url)) == {bob, cid}

    # Not a terminal and no --yes: refused, naming --yes.
    assert await _cli("dlq", "purge", "--store", redis_url) == 1
    assert "pass `--yes`" in capsys.readouterr().err
    # A terminal: it asks; anything but yes keeps them.
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    assert await _cli("dlq", "purge", "--store", redis_url) == 1
    out, err = capsys.readouterr()
    assert f"drop all 2 dead letter(s) in `{redis_url}`? [y/N]" in out
    assert "not purged" in err
    assert len(await _stored(redis_url)) == 2
    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    assert await _cli("dlq", "purge", "--store", redis_url) == 0
    assert capsys.readouterr().out.endswith(f"purged 2 dead letter(s) from `{redis_url}`\n")
    assert await _stored(redis_url) == {}

    done = await asyncio.to_thread(_catga, "dlq", "purge", "--store", redis_url, "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"purged 0 dead letter(s) from `{redis_url}`\n"


async def test_another_prefix(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = RedisDeadLetterStore(redis_url, prefix="shop:dlq:")
    mediator = catga.Mediator(config=catga.Config.default().with_(dead_letter=DeadLetter(store=store)))
    mediator.register(PlaceOrder, dlq_cli_app.place_order)
    with pytest.raises(RuntimeError):
        await mediator.send(PlaceOrder(customer="ann", amount=1))
    await store.aclose()

    assert await _cli("dlq", "list", "--store", redis_url, "--json") == 0
    assert capsys.readouterr().out == ""
    assert await _cli("dlq", "list", "--store", redis_url, "--prefix", "shop:dlq:", "--json") == 0
    assert json.loads(capsys.readouterr().out)["message"]["customer"] == "ann"
    assert await _cli("dlq", "show", "1", "--store", redis_url, "--prefix", "shop:dlq:") == 1
    assert f"no dead letter `1` in `{redis_url}` (prefix `shop:dlq:`)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("action", ["list", "show", "retry", "delete", "purge"])
def test_every_action_has_help_with_an_example(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", action, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: catga dlq {action}")
    assert "\nexample" in out
    assert f"  catga dlq {action} " in out


def test_bad_arguments_are_one_line_errors(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    def error(*argv: str) -> str:
        assert main(list(argv)) == 1
        err = capsys.readouterr().err
        assert err.startswith("catga: error: ")
        assert err.count("\n") == 1, err
        return err

    for url in ("mysql://x", "postgresql://catga@127.0.0.1/catga", "127.0.0.1:6379"):
        assert f"`--store` must be a `redis://`, `rediss://` or `unix://` URL, got `{url}`" in error(
            "dlq", "list", "--store", url
        )
    assert "argument ID: invalid int value: 'abc'" in error("dlq", "show", "abc", "--store", redis_url)
    assert f"no dead letter `42` in `{redis_url}`" in error("dlq", "show", "42", "--store", redis_url)
    assert f"no dead letter `42` in `{redis_url}`" in error(
        "dlq", "retry", "42", "--store", redis_url, "--app", "dlq_cli_app:mediator"
    )
    assert "`--limit` must be at least 1, got `0`" in error("dlq", "list", "--store", redis_url, "--limit", "0")
    assert "one of the arguments --app --nats is required" in error("dlq", "retry", "1", "--store", redis_url)
    assert "`retry` takes one ID or `--all`" in error("dlq", "retry", "--store", redis_url, "--app", "x:y")
    assert "`--type` goes with `--all`" in error(
        "dlq", "retry", "1", "--type", "t", "--store", redis_url, "--app", "x:y"
    )
    assert "is not a `catga.Mediator`" in error("dlq", "retry", "1", "--store", redis_url, "--app", "dlq_cli_app:FIXED")


def test_redis_down_is_a_one_line_persistence_error(capsys: pytest.CaptureFixture[str]) -> None:
    from _servers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    for argv in (["list"], ["show", "1"], ["delete", "1"], ["purge", "--yes"]):
        assert main(["dlq", *argv, "--store", url]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"catga: error: PersistenceError: Redis at `{url}` failed to "), err
        assert err.count("\n") == 1, err

    done = _catga("dlq", "list", "--store", url)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"catga: error: PersistenceError: Redis at `{url}`"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
