"""The engine of `catga bench`: catga beside the floor, a dict-dispatch reference and its peers.

Three scenarios (`send`, `behaviors`, `publish`; see `_scenarios.py`), each a row of cells: the
floor, the dict reference, catga on its pure and its Rust core (both in this process,
`_cores.py`), catga's mediatr drop-in, and the peers that are installed (`_peers.py`). Every cell
of a scenario is timed in one event loop, repeats round-robin (`_engine.py`). benches/ reuses the
pieces for its pytest-benchmark suite.

>>> from catga._bench import Settings, run
>>> [send] = run(["send"], Settings(ops=200, repeats=1))
>>> send.cell("catga (pure core)").status
'ok'
"""

from catga._bench._cell import CellFailed
from catga._bench._engine import CELLS, Progress, Settings, build_cells, measure, run, steps
from catga._bench._machine import machine_info
from catga._bench._results import CellResult, ScenarioResult
from catga._bench._scenarios import SCENARIOS

__all__ = [
    "CELLS",
    "SCENARIOS",
    "CellFailed",
    "CellResult",
    "Progress",
    "ScenarioResult",
    "Settings",
    "build_cells",
    "machine_info",
    "measure",
    "run",
    "steps",
]
