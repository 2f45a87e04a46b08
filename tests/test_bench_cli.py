"""`catga bench` (python/catga/cli/_bench.py) and its engine (python/catga/_bench/).

Small op counts: these tests check that every cell runs and is checked, and what the command
prints; they assert nothing about speed.
"""

import asyncio
import gc
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from catga._bench import CELLS, SCENARIOS, CellFailed, Settings, _engine, _scenarios, build_cells, run
from catga._bench._cell import MEASURED, NOT_APPLICABLE, NOT_INSTALLED, UNAVAILABLE, Cell, Counter, request_cell
from catga._bench._machine import cpu_model
from catga._bench._peers import PEERS, Peer, peer_cell
from catga.cli import main

TINY = ("--ops", "200", "--repeat", "1")
PEER_MODULES = {peer.name: peer.module for peer in PEERS}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["bench", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def installed(cell: str) -> bool:
    return importlib.util.find_spec(PEER_MODULES[cell]) is not None


# ------------------------------------------------------------------------------------------- JSON


def test_quick_json_has_every_cell(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "--quick", "--scenario", "send", "--json")
    assert (status, err) == (0, "")
    document = json.loads(out)
    machine = document["machine"]
    assert set(machine) >= {"date", "cpu", "python", "catga", "core"}
    assert machine["core"] in ("native", "pure-Python")
    assert document["settings"]["repeats"] == 3
    [scenario] = document["scenarios"]
    assert scenario["scenario"] == "send"
    cells = {cell["cell"]: cell for cell in scenario["cells"]}
    assert list(cells) == list(CELLS)
    assert cells["floor"]["ratio"] == 1.0
    for name, cell in cells.items():
        if cell["status"] == NOT_INSTALLED:
            assert name in PEER_MODULES
            assert not installed(name)
            continue
        assert cell["status"] == MEASURED, cell
        assert cell["ns_per_op"] > 0
        assert cell["ratio"] > 0
        assert cell["n"] > 0
        assert cell["repeats"] == 3
    if cells["catga (Rust core)"]["status"] == MEASURED and scenario["fastest_peer"] is not None:
        assert scenario["rust_vs_fastest_peer"] > 0


def test_json_runs_the_scenarios_asked_in_table_order(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, *TINY, "--scenario", "publish", "--scenario", "send", "--json")
    assert status == 0
    document = json.loads(out)
    assert [s["scenario"] for s in document["scenarios"]] == ["send", "publish"]
    assert document["settings"] == {"ops": 200, "repeats": 1, "max_repeat_s": 0.25}
    publish = {cell["cell"]: cell for cell in document["scenarios"][1]["cells"]}
    if installed("mediatr"):
        assert publish["mediatr"]["status"] == NOT_APPLICABLE


def test_json_does_not_need_rich(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("rich", "rich.console", "rich.progress", "rich.table"):
        monkeypatch.setitem(sys.modules, module, None)
    status, out, _ = run_cli(capsys, *TINY, "--scenario", "send", "--json")
    assert status == 0
    assert json.loads(out)["scenarios"][0]["scenario"] == "send"


# ------------------------------------------------------------------------------------------ table


def test_table_lists_every_cell(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, *TINY)
    assert status == 0
    assert out.startswith("catga ")
    for title in ("send: ", "behaviors: ", "publish: "):
        assert title in out
    for cell in CELLS:
        assert cell in out
    assert "\N{MULTIPLICATION SIGN} floor" in out
    assert "fastest peer" in out
    if installed("mediatr"):
        assert "mediatr has no publish" in out


def test_table_needs_rich(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("rich", "rich.console", "rich.progress", "rich.table"):
        monkeypatch.setitem(sys.modules, module, None)
    status, out, err = run_cli(capsys, *TINY, "--scenario", "send")
    assert (status, out) == (1, "")
    assert err.startswith("catga: error: ")
    assert "pip install catga[cli]" in err
    assert err.count("\n") == 1


# ----------------------------------------------------------------------------------- help, errors


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "--help")
    assert (status, err) == (0, "")
    assert out.startswith("usage: catga bench")
    for text in ("--scenario", "--repeat", "--ops", "--quick", "--json", "catga[cli]", "catga bench --quick"):
        assert text in out
    for scenario in SCENARIOS:
        assert scenario in out


def test_bench_is_listed_in_catga_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--repeat", "0"], "`--repeat` must be at least 1, got `0`"),
        (["--repeat", "-3"], "got `-3`"),
        (["--repeat", "x"], "invalid int value: 'x'"),
        (["--ops", "5"], "`--ops` must be at least 100, got `5`"),
        (["--scenario", "sned"], "invalid choice: 'sned'"),
        (["--loops", "3"], "unrecognized arguments: --loops"),
    ],
)
def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert (status, out) == (1, "")
    assert err.startswith("catga: error: ")
    assert expected in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("ops", "repeats"), [(0, 1), (100, 0)])
def test_settings_reject_nothing_to_measure(ops: int, repeats: int) -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        Settings(ops=ops, repeats=repeats)


# ---------------------------------------------------------------------------------------- engine


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_every_cell_gives_the_right_result(scenario: str) -> None:
    cells = build_cells(scenario)
    try:
        assert [cell.name for cell in cells] == list(CELLS)
        for cell in cells:
            if not cell.measured:
                expected = {NOT_INSTALLED, NOT_APPLICABLE} if cell.kind == "peer" else {UNAVAILABLE}
                assert cell.status in expected, (cell.name, cell.reason)
                if cell.status == NOT_APPLICABLE:
                    assert (cell.name, scenario) == ("mediatr", "publish")
                elif cell.status == NOT_INSTALLED:
                    assert not installed(cell.name)
                else:  # only the Rust core may be missing, when the extension was never compiled
                    assert cell.name == "catga (Rust core)"
                    assert importlib.util.find_spec("catga._catga") is None
                continue
            assert cell.run is not None
            await cell.check(scenario)
            cell.reset()
            await cell.run(50)
            cell.check_counters(scenario, 50)
            assert len(cell.counters) == (3 if scenario == "publish" else 0)
            await cell.check(scenario)
    finally:
        for cell in cells:
            if cell.teardown is not None:
                cell.teardown()


def test_run_measures_every_available_cell() -> None:
    results = run(SCENARIOS, Settings(ops=200, repeats=2))
    assert [result.scenario for result in results] == list(SCENARIOS)
    for result in results:
        assert result.cell("floor").ratio == 1.0
        assert result.loop_ns_per_op > 0
        for cell in result.cells:
            if cell.measured:
                assert cell.ns_per_op is not None
                assert cell.ns_per_op > 0
                assert cell.repeats == 2
    assert gc.get_freeze_count() == 0  # gc.freeze() is undone after each scenario


def test_progress_counts_every_step() -> None:
    seen: list[int] = []
    settings = Settings(ops=100, repeats=2)
    run(["send", "publish"], settings, lambda label, done: seen.append(done))
    assert sum(seen) == _engine.steps(["send", "publish"], settings)


def test_a_wrong_result_fails_the_run() -> None:
    async def off_by_one(message: object) -> int:
        return 41

    cells = [_scenarios.floor_cell("send"), request_cell("broken", "peer", off_by_one, object(), 42)]
    with pytest.raises(CellFailed, match="`broken` returned `41`, expected `42`"):
        asyncio.run(_engine._measure("send", cells, Settings(ops=100, repeats=1), lambda label, done: None))
    assert gc.get_freeze_count() == 0


def test_a_skipped_handler_fails_the_run() -> None:
    counters = [Counter(), Counter()]

    async def half(n: int) -> None:
        for _ in range(n):
            counters[0].calls += 1

    async def sample() -> None:
        return None

    cell = Cell("lazy", "peer", run=half, sample=sample, counters=counters)
    cells = [_scenarios.floor_cell("publish"), cell]
    with pytest.raises(CellFailed, match=r"`lazy`: handlers ran \[\d+, 0\] times"):
        asyncio.run(_engine._measure("publish", cells, Settings(ops=100, repeats=1), lambda label, done: None))


def test_missing_native_core_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _scenarios.import_core

    def import_core(name: str) -> Any:
        if name == "catga._catga":
            raise ImportError("no extension here")
        return real(name)

    monkeypatch.setattr(_scenarios, "import_core", import_core)
    [result] = run(["send"], Settings(ops=100, repeats=1))
    rust = result.cell("catga (Rust core)")
    assert (rust.status, rust.ns_per_op) == (UNAVAILABLE, None)
    assert "no extension here" in rust.reason
    assert result.rust_vs_fastest_peer is None
    assert result.cell("catga (pure core)").measured


def test_a_peer_that_is_not_installed_is_reported() -> None:
    def build(scenario: str, module: Any) -> Cell:
        raise AssertionError("not called")

    ghost = Peer("ghost", "catga_no_such_peer", "catga-no-such-peer", "peer", build)
    cell = peer_cell(ghost, "send")
    assert (cell.status, cell.run) == (NOT_INSTALLED, None)
    assert "`catga_no_such_peer` is not installed" in cell.reason


def test_a_peer_whose_set_up_fails_is_unavailable() -> None:
    def build(scenario: str, module: Any) -> Cell:
        raise AttributeError("Mediator moved")

    moved = Peer("moved", "json", None, "peer", build)
    cell = peer_cell(moved, "send")
    assert cell.status == UNAVAILABLE
    assert cell.reason == "set-up failed: AttributeError: Mediator moved"


@pytest.mark.parametrize("module", ["mediatr", "catga.compat.mediatr"])
def test_mediatr_registries_are_given_back(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    mediatr = importlib.import_module(module)

    class Earlier:
        pass

    async def earlier(request: Earlier) -> str:
        return "earlier"

    mediatr.__handlers__.clear()
    mediatr.__behaviors__.clear()
    mediatr.Mediator.register_handler(earlier)
    try:
        before = dict(mediatr.__handlers__)
        run(["behaviors"], Settings(ops=100, repeats=1))
        assert dict(mediatr.__handlers__) == before
        assert dict(mediatr.__behaviors__) == {}
    finally:
        mediatr.__handlers__.clear()


# --------------------------------------------------------------------------------------- machine


def test_cpu_model_reads_proc_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert cpu_model(tmp_path / "missing")  # falls back to `platform`, never empty
