"""Wires benches/_report.py into pytest: the `record` fixture and the summary table at the end."""

from collections.abc import Callable

import pytest

from _report import RESULTS, Measurement, write_summary

# The event loop and the floors are session fixtures of test_mediator.py; every bench module uses them.
from test_mediator import bench_loop, floors  # noqa: F401


@pytest.fixture
def record() -> Callable[[Measurement], None]:
    """Call with each case's measurement; the table at the end of the session lists them."""
    return RESULTS.append


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_summary(terminalreporter)
