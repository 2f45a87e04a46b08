"""What the observing built-ins cost when nothing consumes them (issue 4), measured like the rest.

Each scenario's floor is the same send through the same hooked route without the behaviour under
test, so the overhead column is that behaviour's own cost per send:

- `tracing-off`: the Tracing behaviour with no tracer provider set (no SDK): the core's one look-up
  of the API's global provider. Target < 30 ns.
- `logging-off`: the Logging behaviour at DEBUG while the `catga` logger takes WARNING: the core's
  one look-up in the logger's cache of answers. Target < 20 ns.
- `metrics`: counting and timing every send (two clock readings and a few atomic adds); no target
  in the issue, reported for the record.

The route under every scenario carries one other observing hook (metrics, or tracing for the
`metrics` scenario), so both sides run the core's hooked path and only the behaviour differs.
"""

import logging
from collections.abc import Iterator
from typing import Any

import pytest

import catga
from catga import _core as catga_core
from catga.behaviors import Logging, Metrics, Tracing
from catga.observability import MetricsRegistry
from test_mediator import Batch, Ping, Record, async_batch, catga_mediator, core_module, handle_ping, measure

CASES = ["catga-pure", "catga-rust"]


@pytest.fixture(scope="module", autouse=True)
def quiet_catga_logger() -> Iterator[None]:
    logger = logging.getLogger("catga")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


# The built-ins build their hooks from the core chosen at import: the floors run on that core too.
HOME_CASE = "catga-pure" if catga.PURE_PYTHON else "catga-rust"


def _send_batch(bench_loop: Any, config: catga.Config, case: str = HOME_CASE) -> Batch:
    mediator = catga_mediator(case, config)
    mediator.register(Ping, handle_ping)
    assert bench_loop.run_until_complete(mediator.send(Ping())) == 42
    message = Ping()  # no idempotency here: one message, sent again and again
    return async_batch(bench_loop, "await send(message)", send=mediator.send, message=message)


def _metrics() -> Metrics:
    return Metrics(registry=MetricsRegistry())


BASES = {
    "tracing-off": lambda: catga.Config.minimal().with_(metrics=_metrics()),
    "logging-off": lambda: catga.Config.minimal().with_(metrics=_metrics()),
    "metrics": lambda: catga.Config.minimal().with_(tracing=Tracing()),
}
ADDED = {
    "tracing-off": lambda: {"tracing": Tracing()},
    "logging-off": lambda: {"logging": Logging(level=logging.DEBUG)},
    "metrics": lambda: {"metrics": _metrics()},
}


@pytest.fixture(scope="module")
def observability_floors(floors: dict[str, Batch], bench_loop: Any) -> dict[str, Batch]:
    return {**floors, **{scenario: _send_batch(bench_loop, base()) for scenario, base in BASES.items()}}


@pytest.mark.parametrize("scenario", list(BASES))
@pytest.mark.parametrize("case", CASES)
def test_observing_builtin(
    benchmark: Any,
    record: Record,
    observability_floors: dict[str, Batch],
    bench_loop: Any,
    case: str,
    scenario: str,
) -> None:
    if core_module(case).Dispatcher is not catga_core.Dispatcher:
        pytest.skip(f"{case} is measured in its own run (CATGA_PURE_PYTHON)")
    config = BASES[scenario]().with_(**ADDED[scenario]())
    batch = _send_batch(bench_loop, config, case)
    measure(benchmark, record, observability_floors, scenario, case, batch)
