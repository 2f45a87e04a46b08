"""Timing: every cell of a scenario in one process and one event loop, repeats round-robin.

For each repeat every cell runs `for _ in range(n): await op(msg)` timed with `perf_counter_ns`,
one cell after the other, so drift and load spread over all of them; the empty loop is timed the
same way and its cost subtracted; the best repeat counts. The collector stays on (its cost is
part of a mediator's), `gc.freeze()` after set-up takes imports and set-up out of its view, and
`gc.collect()` before each timed run starts every cell from the same empty young generation.
Every result is checked before, during and after the timing: a broken cell raises `CellFailed`.
"""

import asyncio
import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from catga._bench._cell import Cell, Runner, empty_loop
from catga._bench._cores import NATIVE, PURE
from catga._bench._peers import PEERS, peer_cell
from catga._bench._results import CellResult, ScenarioResult
from catga._bench._scenarios import FLOOR_TEXT, SCENARIOS, catga_cell, dict_cell, floor_cell

__all__ = ["CELLS", "Progress", "Settings", "build_cells", "measure", "run", "steps"]

# The cells of every scenario, in table order.
CELLS = ("floor", "dict", "catga (pure core)", "catga (Rust core)", *(peer.name for peer in PEERS))

_LOOP_RUNS = 3  # timings of the empty loop per repeat

# Called with a label and the number of steps just done (see `steps`).
Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class Settings:
    """How long to measure: `ops` operations per repeat (fewer for a slow cell, so that one repeat
    of it lasts at most about `max_repeat_s`), best of `repeats`.

    >>> Settings(ops=100_000, repeats=5).warmup
    5000
    """

    ops: int = 100_000
    repeats: int = 5
    max_repeat_s: float = 0.25

    def __post_init__(self) -> None:
        if self.ops < 1:
            raise ValueError(f"`ops` must be at least 1, got `{self.ops}`")
        if self.repeats < 1:
            raise ValueError(f"`repeats` must be at least 1, got `{self.repeats}`")
        if self.max_repeat_s <= 0:
            raise ValueError(f"`max_repeat_s` must be positive, got `{self.max_repeat_s}`")

    @property
    def warmup(self) -> int:
        """Operations per cell in each of its two warm-up passes (the second finds its `n`)."""
        return max(self.ops // 20, min(self.ops, 1_000))

    def n_for(self, ns_per_op: float) -> int:
        """Operations per repeat for a cell costing `ns_per_op`: `ops`, or as many as fit in
        `max_repeat_s` but never under a twentieth of `ops`."""
        fit = int(self.max_repeat_s * 1e9 / max(ns_per_op, 1.0))
        return max(1, min(self.ops, max(fit, self.ops // 20)))


def steps(scenarios: Iterable[str], settings: Settings) -> int:
    """How many steps `run` reports to its progress callback: a warm-up and each repeat of each cell."""
    return sum(1 for _ in scenarios) * (settings.repeats + 1) * len(CELLS)


def build_cells(scenario: str) -> list[Cell]:
    """Set up every cell of `scenario`; call each cell's `teardown` when done with them."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario `{scenario}`; choose from {', '.join(SCENARIOS)}")
    cells = [floor_cell(scenario), dict_cell(scenario), catga_cell(scenario, PURE), catga_cell(scenario, NATIVE)]
    try:
        cells.extend(peer_cell(peer, scenario) for peer in PEERS)
    except BaseException:
        _teardown(cells)
        raise
    return cells


def run(scenarios: Iterable[str], settings: Settings, progress: Progress | None = None) -> list[ScenarioResult]:
    """Measure each scenario in turn, each in a fresh event loop; see `measure`.

    >>> [result] = run(["send"], Settings(ops=100, repeats=1))
    >>> result.cell("floor").ratio
    1.0
    """
    return [asyncio.run(measure(scenario, settings, progress)) for scenario in scenarios]


async def measure(scenario: str, settings: Settings, progress: Progress | None = None) -> ScenarioResult:
    """Set up the cells of `scenario`, time them in the running event loop, tear them down."""
    report = progress or _no_progress
    cells = build_cells(scenario)
    try:
        return await _measure(scenario, cells, settings, report)
    finally:
        _teardown(cells)


async def _measure(scenario: str, cells: list[Cell], settings: Settings, report: Progress) -> ScenarioResult:
    live = [cell for cell in cells if cell.measured]
    idle = len(cells) - len(live)
    for cell in live:
        await cell.check(scenario)
    n: dict[str, int] = {}
    best: dict[str, float] = {}
    loop = empty_loop()
    gc.collect()
    gc.freeze()
    try:
        report(f"{scenario}: warm-up", idle)
        for cell in live:
            # The first pass pays one-off costs (a pipeline compiled on the first send, caches);
            # the second, warm, finds how many operations fit in one repeat.
            await _timed(cell, settings.warmup, scenario)
            elapsed = await _timed(cell, settings.warmup, scenario)
            n[cell.name] = settings.n_for(elapsed / settings.warmup)
            report(f"{scenario}: warm-up {cell.name}", 1)
        loop_best = float("inf")
        for repeat in range(1, settings.repeats + 1):
            label = f"{scenario}: repeat {repeat}/{settings.repeats}"
            # The empty loop is cheap, and a single preemption of it would inflate what every cell
            # is net of: take its best of a few runs each repeat.
            for _ in range(_LOOP_RUNS):
                loop_best = min(loop_best, await _time(loop, settings.ops) / settings.ops)
            report(label, idle)
            for cell in live:
                per_op = await _timed(cell, n[cell.name], scenario) / n[cell.name]
                best[cell.name] = min(best.get(cell.name, per_op), per_op)
                report(f"{label} {cell.name}", 1)
            for cell in live:
                await cell.check(scenario)
    finally:
        gc.unfreeze()
    floor = best["floor"] - loop_best
    if floor <= 0:
        raise RuntimeError(f"{scenario}: the floor measured {floor:.1f} ns/op net of the loop; use more `ops`")
    results = []
    for cell in cells:
        if not cell.measured:
            results.append(CellResult(cell.name, cell.kind, cell.status, reason=cell.reason, version=cell.version))
            continue
        # Never 0 or less, even when a cell is within noise of the empty loop: ratios stay defined.
        ns = max(best[cell.name] - loop_best, 0.1)
        ratio = 1.0 if cell.kind == "floor" else ns / floor
        results.append(
            CellResult(
                cell.name,
                cell.kind,
                cell.status,
                ns_per_op=ns,
                ratio=ratio,
                n=n[cell.name],
                repeats=settings.repeats,
                version=cell.version,
                note=cell.note,
            )
        )
    return ScenarioResult(scenario, FLOOR_TEXT[scenario], loop_best, tuple(results))


async def _timed(cell: Cell, n: int, scenario: str) -> int:
    """ns for `n` operations of `cell`, its event handlers' counts checked afterwards."""
    assert cell.run is not None
    cell.reset()
    elapsed = await _time(cell.run, n)
    cell.check_counters(scenario, n)
    return elapsed


async def _time(run: Runner, n: int) -> int:
    gc.collect()
    start = time.perf_counter_ns()
    await run(n)
    return time.perf_counter_ns() - start


def _teardown(cells: list[Cell]) -> None:
    for cell in cells:
        if cell.teardown is not None:
            cell.teardown()


def _no_progress(label: str, done: int) -> None:
    pass
