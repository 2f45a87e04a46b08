"""One cell of a scenario: what is timed, how its result is checked, and why it may not run.

A cell owns a `Runner`, a coroutine function that awaits its operation `n` times in a plain
`for` loop with everything it touches bound as fast locals, so every cell (and the empty loop
subtracted from all of them) pays the same loop overhead and nothing else.
"""

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "MEASURED",
    "NOT_APPLICABLE",
    "NOT_INSTALLED",
    "UNAVAILABLE",
    "Cell",
    "CellFailed",
    "Counter",
    "Kind",
    "Runner",
    "awaiting",
    "empty_loop",
    "event_cell",
    "request_cell",
]

Kind = Literal["floor", "reference", "catga", "compat", "peer"]
Runner = Callable[[int], Coroutine[Any, Any, None]]

# A cell's status: measured, or why not.
MEASURED: Final = "ok"
NOT_INSTALLED: Final = "not installed"
NOT_APPLICABLE: Final = "n/a"
UNAVAILABLE: Final = "unavailable"


class CellFailed(AssertionError):
    """A cell returned the wrong result or skipped an event handler: its timing would be worthless."""


class Counter:
    """Counts the calls of one event handler, so a publish that skipped a handler shows."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0


@dataclass(slots=True)
class Cell:
    """One row of a scenario's table.

    `sample()` performs one operation for the checks; its result must equal `expected`, and after
    `run(n)` every counter in `counters` must have counted exactly `n` calls.
    """

    name: str
    kind: Kind
    run: Runner | None = None
    # What `run` awaits, `op(arg)`, for a cell that is one call per operation (benches/ time it too).
    op: Callable[[Any], Awaitable[object]] | None = None
    arg: object = None
    sample: Callable[[], Awaitable[object]] | None = None
    expected: object = None
    counters: Sequence[Counter] = ()
    status: str = MEASURED
    reason: str = ""
    version: str | None = None
    note: str = ""
    teardown: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def measured(self) -> bool:
        return self.status == MEASURED

    async def check(self, scenario: str) -> None:
        """Raise `CellFailed` unless one operation returns the expected result."""
        assert self.sample is not None
        result = await self.sample()
        if result != self.expected:
            raise CellFailed(f"{scenario}: `{self.name}` returned `{result!r}`, expected `{self.expected!r}`")

    def reset(self) -> None:
        for counter in self.counters:
            counter.calls = 0

    def check_counters(self, scenario: str, n: int) -> None:
        """Raise `CellFailed` unless every event handler ran once per operation."""
        calls = [counter.calls for counter in self.counters]
        if any(count != n for count in calls):
            raise CellFailed(f"{scenario}: `{self.name}`: handlers ran {calls} times for {n} publishes")


def awaiting(op: Callable[[Any], Awaitable[object]], arg: object) -> Runner:
    """The runner of `await op(arg)`: `op` is called with the message, not wrapped in a zero-argument
    lambda, since a wrapper would add a call per operation to every cell."""

    async def run(n: int, op: Callable[[Any], Awaitable[object]] = op, arg: object = arg) -> None:
        for _ in range(n):
            await op(arg)

    return run


def empty_loop() -> Runner:
    """The runner whose cost every cell's is net of: the same `for` with nothing in it."""

    async def run(n: int, op: object = None, arg: object = None) -> None:
        for _ in range(n):
            pass

    return run


def request_cell(
    name: str, kind: Kind, send: Callable[[Any], Awaitable[object]], request: object, expected: object, note: str = ""
) -> Cell:
    """The cell timing `await send(request)`, whose result must be `expected`."""
    run = awaiting(send, request)
    return Cell(name, kind, run, send, request, sample=lambda: send(request), expected=expected, note=note)


def event_cell(
    name: str,
    kind: Kind,
    publish: Callable[[Any], Awaitable[object]],
    event: object,
    counters: Sequence[Counter],
    note: str = "",
) -> Cell:
    """The cell timing `await publish(event)`: `None`, and each of `counters` bumped once per publish."""
    run = awaiting(publish, event)
    return Cell(name, kind, run, publish, event, sample=lambda: publish(event), counters=counters, note=note)
