"""The `catga` command line (python/catga/cli/): in-process through `main([...])`, and as a process."""

import json
import subprocess
import sys

import pytest

import catga
from catga.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_process(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "catga", *argv], capture_output=True, text=True, timeout=30, check=False
    )


# ------------------------------------------------------------------------------------------ help


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], "usage: catga"),
        (["demo", "--help"], "usage: catga demo"),
        (["id", "--help"], "usage: catga id"),
        (["id", "parse", "--help"], "usage: catga id parse"),
    ],
)
def test_help(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    status, out, err = run(capsys, *argv)
    assert (status, err) == (0, "")
    assert out.startswith(expected)


def test_help_as_a_process() -> None:
    proc = run_process("--help")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout
    assert "id" in proc.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--version")
    assert status == 0
    assert out.startswith("catga ")
    assert ("pure-Python core" if catga.PURE_PYTHON else "native core") in out


# ---------------------------------------------------------------------------------------- errors


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys)
    assert (status, out) == (1, "")
    assert err.startswith("usage: catga")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["id"], "required: ACTION"),
        (["id", "parse"], "required: ID"),
        (["demo", "--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    status, out, err = run(capsys, *argv)
    assert (status, out) == (1, "")
    assert err.startswith("catga: error: ")
    assert expected in err
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------------------ demo


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "demo")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    core = "pure-Python core" if catga.PURE_PYTHON else "native (Rust) core"
    assert core in lines[0]
    # The command goes through the behaviour, its handler publishes to both event handlers.
    expected_in_order = [
        "send PlaceOrder(customer='ada', amount=3), message_id=",
        "audit: -> PlaceOrder",
        "place_order: stored o-1",
        "email_customer: mail ada about o-1",
        "the event's correlation_id=",
        "reserve_stock: reserve 3 items for o-1",
        "audit: <- PlaceOrder ok",
        "returned   'o-1'",
        "send GetOrder(order_id='o-1')",
        "audit: -> GetOrder",
        "Order(order_id='o-1', customer='ada', amount=3)",
        "send_result PlaceOrder(customer='bob', amount=0)",
        "audit: <- PlaceOrder raised ValueError",
        "result     ok=False code=HANDLER_FAILED",
        "error      HandlerFailed: ",
        "cause      ValueError",
        "send_result CancelOrder(order_id='o-9')",
        "result     ok=False code=HANDLER_NOT_FOUND",
        "error      HandlerNotFound: ",
    ]
    position = 0
    for text in expected_in_order:
        found = next((i for i in range(position, len(lines)) if text in lines[i]), None)
        assert found is not None, f"{text!r} not found after line {position}:\n{out}"
        position = found + 1
    # The event made inside the command's handler carries the command's id as its correlation id.
    message_id = next(line for line in lines if "message_id=" in line).rsplit("=", 1)[1]
    correlation_id = next(line for line in lines if "correlation_id=" in line).rsplit("=", 1)[1]
    assert message_id == correlation_id


def test_demo_trace_prints_the_span_tree(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "demo", "--trace")
    assert (status, err) == (0, "")
    tree = out.split("spans (OpenTelemetry SDK", 1)[1].splitlines()[1:]
    names = [" ".join(line.split()[:2]) for line in tree[:5]]
    assert names == [
        "send catga._demo.PlaceOrder",
        "handle catga._demo.PlaceOrder",
        "publish catga._demo.OrderPlaced",
        "handle catga._demo.OrderPlaced",
        "handle catga._demo.OrderPlaced",
    ]
    indents = [len(line) - len(line.lstrip()) for line in tree[:5]]
    assert indents == [2, 4, 6, 8, 8]  # each span under its parent
    assert tree[-1].strip().endswith("failure")  # the rejected order's handle span


def test_demo_metrics_prints_prometheus_text(capsys: pytest.CaptureFixture[str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    status, out, err = run(capsys, "demo", "--metrics")
    assert (status, err) == (0, "")
    text = out.split("metrics (Prometheus text format; `--metrics`):\n", 1)[1]
    families = {family.name: family for family in text_string_to_metric_families(text)}
    counts = {
        (sample.labels["type"], sample.labels["outcome"]): sample.value for sample in families["catga_messages"].samples
    }
    assert counts[("catga._demo.PlaceOrder", "success")] == 1
    assert counts[("catga._demo.PlaceOrder", "failure")] == 1
    assert counts[("catga._demo.OrderPlaced", "success")] == 1


def test_demo_as_a_process() -> None:
    proc = run_process("demo")
    assert proc.returncode == 0, proc.stderr
    assert "code=HANDLER_FAILED" in proc.stdout


# -------------------------------------------------------------------------------------- id parse


def test_id_parse(capsys: pytest.CaptureFixture[str]) -> None:
    message_id = catga.new_id()
    parts = catga.parse_id(message_id)
    status, out, err = run(capsys, "id", "parse", str(message_id))
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        f"id         {message_id}",
        f"timestamp  {parts.datetime.isoformat(timespec='milliseconds')} ({parts.timestamp_ms} ms)",
        f"worker_id  {parts.worker_id}",
        f"sequence   {parts.sequence}",
    ]


def test_id_parse_json(capsys: pytest.CaptureFixture[str]) -> None:
    message_id = catga.new_id()
    parts = catga.parse_id(message_id)
    status, out, _ = run(capsys, "id", "parse", "--json", hex(message_id))
    assert status == 0
    assert json.loads(out) == {
        "id": message_id,
        "timestamp_ms": parts.timestamp_ms,
        "datetime": parts.datetime.isoformat(timespec="milliseconds"),
        "worker_id": parts.worker_id,
        "sequence": parts.sequence,
    }


def test_id_parse_known_value(capsys: pytest.CaptureFixture[str]) -> None:
    # 1000 ms after the epoch, worker 7, sequence 5, in the default (44, 8, 11) layout.
    message_id = (1000 << 19) | (7 << 11) | 5
    status, out, _ = run(capsys, "id", "parse", "--json", str(message_id))
    assert status == 0
    assert json.loads(out) == {
        "id": message_id,
        "timestamp_ms": 1704067201000,
        "datetime": "2024-01-01T00:00:01.000+00:00",
        "worker_id": 7,
        "sequence": 5,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc", "`abc` is not an id"),
        ("12.5", "`12.5` is not an id"),
        ("-1", "`-1`"),
        (str(2**63), f"`{2**63}`"),
    ],
)
def test_id_parse_invalid(capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    status, out, err = run(capsys, "id", "parse", text)
    assert (status, out) == (1, "")
    assert err.startswith("catga: error: ")
    assert expected in err
    assert err.count("\n") == 1


def test_id_parse_invalid_as_a_process() -> None:
    proc = run_process("id", "parse", "not-an-id")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "catga: error: `not-an-id` is not an id: expected a decimal integer or 0x-prefixed hex\n"
