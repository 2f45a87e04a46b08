"""The three scenarios of the peer comparison, and the cells that are catga's own.

- `send`: one request to one async handler that returns 42, no behaviours.
- `behaviors`: the same through 3 behaviours, each `return (await next()) + 1`: 45 proves all ran.
- `publish`: one event to 3 async handlers that count their calls.

The floor is what no mediator can beat: the handler awaited directly (for `behaviors`, the same
3 behaviours and handler composed once and awaited directly; for `publish`, three direct awaits).
`dict` is the dict-dispatch reference (`_reference.py`), and catga runs on both cores.
"""

from collections.abc import Callable
from typing import Any, Final

import catga
from catga._bench._cell import UNAVAILABLE, Cell, Counter, event_cell, request_cell
from catga._bench._cores import PURE, import_core, mediator_class
from catga._bench._reference import DictMediator, compose

__all__ = [
    "BEHAVIOURS",
    "EXPECTED",
    "FLOOR_TEXT",
    "SCENARIOS",
    "Ping",
    "Pinged",
    "add_one",
    "catga_cell",
    "counting_handlers",
    "dict_cell",
    "floor_cell",
    "handle_ping",
]

SCENARIOS: Final = ("send", "behaviors", "publish")
BEHAVIOURS: Final = 3
EXPECTED: Final[dict[str, object]] = {"send": 42, "behaviors": 42 + BEHAVIOURS, "publish": None}
FLOOR_TEXT: Final = {
    "send": "`await handler(req)`",
    "behaviors": "the same 3 behaviours + handler composed once, awaited directly",
    "publish": "three direct awaits",
}


class Ping(catga.Command[int]):
    pass


class Pinged(catga.Event):
    pass


async def handle_ping(req: Ping) -> int:
    return 42


async def add_one(message: Any, call_next: Callable[[Any], Any]) -> Any:
    return (await call_next(message)) + 1


def counting_handlers(event_type: type) -> tuple[list[Counter], list[Callable[[Any], Any]]]:
    """3 async event handlers for `event_type` (their first parameter's annotation), each with
    the `Counter` of its calls."""
    counters = [Counter() for _ in range(3)]

    def handler(counter: Counter) -> Callable[[Any], Any]:
        async def on_event(evt: Any) -> None:
            counter.calls += 1

        # Annotation-keyed registries (mediatr) read the event type from here.
        on_event.__annotations__["evt"] = event_type
        return on_event

    return counters, [handler(counter) for counter in counters]


def floor_cell(scenario: str) -> Cell:
    if scenario == "send":
        return request_cell("floor", "floor", handle_ping, Ping(), EXPECTED[scenario])
    if scenario == "behaviors":
        chain = compose(handle_ping, [add_one] * BEHAVIOURS)
        return request_cell("floor", "floor", chain, Ping(), EXPECTED[scenario])
    counters, (h1, h2, h3) = counting_handlers(Pinged)
    event = Pinged()

    # The three awaits inline, not in a function awaited once per publish: that extra frame is
    # exactly the kind of cost the floor must not include.
    async def three_awaits(n: int, h1: Any = h1, h2: Any = h2, h3: Any = h3, evt: Pinged = event) -> None:
        for _ in range(n):
            await h1(evt)
            await h2(evt)
            await h3(evt)

    async def sample() -> None:
        await h1(event)
        await h2(event)
        await h3(event)

    return Cell("floor", "floor", run=three_awaits, sample=sample, counters=counters)


def dict_cell(scenario: str) -> Cell:
    mediator = DictMediator()
    if scenario != "publish":
        mediator.register(Ping, handle_ping, [add_one] * BEHAVIOURS if scenario == "behaviors" else ())
        return request_cell("dict", "reference", mediator.send, Ping(), EXPECTED[scenario])
    counters, handlers = counting_handlers(Pinged)
    for handler in handlers:
        mediator.subscribe(Pinged, handler)
    return event_cell("dict", "reference", mediator.publish, Pinged(), counters)


def catga_cell(scenario: str, core_name: str) -> Cell:
    """catga on the core `core_name` (`_cores.PURE` or `NATIVE`), no built-ins (`Config.minimal()`)."""
    name = "catga (pure core)" if core_name == PURE else "catga (Rust core)"
    try:
        core = import_core(core_name)
    except ImportError as exc:  # the extension was not compiled: say so, time the rest
        return Cell(name, "catga", status=UNAVAILABLE, reason=f"`{core_name}` does not import: {exc}")
    mediator: Any = mediator_class(core)(config=catga.Config.minimal())
    if scenario != "publish":
        mediator.register(Ping, handle_ping)
        if scenario == "behaviors":
            for _ in range(BEHAVIOURS):
                mediator.add_behavior(add_one)
        return request_cell(name, "catga", mediator.send, Ping(), EXPECTED[scenario])
    counters, handlers = counting_handlers(Pinged)
    for handler in handlers:
        mediator.register(Pinged, handler)
    return event_cell(name, "catga", mediator.publish, Pinged(), counters)
