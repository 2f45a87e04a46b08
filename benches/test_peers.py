"""catga beside the other Python mediators: the scenarios of `catga bench` as pytest-benchmark cases.

The floor, the dict-dispatch reference and catga on both cores are test_mediator.py's cases of the
same scenarios (`send`, `send-3-behaviours`, `publish-3`), so the summary table shows every cell of
a scenario together. This file adds catga's mediatr drop-in (`compat-mediatr`) and the peers
(mediatr, python-cqrs, kerux, diator), set up by catga/_bench/_peers.py exactly as `catga bench`
sets them up: each on its fastest documented path. A peer that is not installed is skipped
(`pip install catga[bench]`); mediatr has no publish.

Run with `make bench BENCH_ARGS='benches/test_mediator.py benches/test_peers.py'` to see them side
by side; `catga bench` is the quicker way to the same comparison.
"""

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from _report import Measurement
from catga._bench._cell import MEASURED, UNAVAILABLE, Cell
from catga._bench._peers import PEERS, peer_cell
from test_mediator import Batch, async_batch, measure

# benches' scenario names -> catga bench's
SCENARIOS = {"send": "send", "send-3-behaviours": "behaviors", "publish-3": "publish"}
# benches' case names (benches/_report.py CASES) -> catga bench's cells
CASES = {
    "compat-mediatr": "catga.compat.mediatr",
    "mediatr": "mediatr",
    "python-cqrs": "python-cqrs",
    "kerux": "kerux",
    "diator": "diator",
}

Record = Callable[[Measurement], None]


@pytest.fixture
def cell(request: pytest.FixtureRequest) -> Iterator[Cell]:
    """The set-up cell of the test's scenario and case; skips when it cannot run there."""
    scenario, case = request.node.callspec.params["scenario"], request.node.callspec.params["case"]
    peer = next(peer for peer in PEERS if peer.name == CASES[case])
    built = peer_cell(peer, SCENARIOS[scenario])
    try:
        if built.status == UNAVAILABLE:  # installed but its set-up failed: that is a bug to see
            pytest.fail(f"{built.name}: {built.reason}")
        if built.status != MEASURED:
            pytest.skip(f"{built.name}: {built.reason}")
        yield built
    finally:
        if built.teardown is not None:  # mediatr's module-global registries, one scenario at a time
            built.teardown()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_peer(
    benchmark: Any,
    record: Record,
    floors: dict[str, Batch],
    bench_loop: Any,
    scenario: str,
    case: str,
    cell: Cell,
) -> None:
    assert cell.op is not None
    bench_loop.run_until_complete(cell.check(scenario))
    cell.reset()
    batch = async_batch(bench_loop, "await call(message)", call=cell.op, message=cell.arg)
    measure(benchmark, record, floors, scenario, case, batch)
    if cell.counters:  # publish: every handler ran, once per publish
        calls = [counter.calls for counter in cell.counters]
        assert calls[0] > 0
        assert calls == [calls[0]] * len(calls)
    bench_loop.run_until_complete(cell.check(scenario))
