"""The dispatcher's paths on one core, in ns per operation: `python benches/core_paths.py [_catga|_pure]`.

A quick script (not a pytest-benchmark suite) for comparing builds of the extension, e.g. abi3
against a per-interpreter build (docs/decisions.md): it drives `catga._core.Dispatcher` directly
with hand-made routes, best of 25 rounds of 2 000 awaits in one coroutine, the empty loop
subtracted.
"""

import asyncio
import importlib
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

N, ROUNDS = 2000, 25


class Plain: ...


class WithContext: ...


class Sync: ...


class Event3: ...


async def handler(message: object) -> int:
    return 1


def sync_handler(message: object) -> int:
    return 1


ROUTES: dict[type, Any] = {
    Plain: (False, ((handler, True, False),)),
    WithContext: (False, ((handler, True, True),)),
    Sync: (False, ((sync_handler, False, False),)),
    Event3: (True, ((handler, True, False),) * 3),
}


def batches(dispatcher: Any) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
    """One batch of `N` operations per case, each a statement awaited in a loop."""
    cases = {
        "empty": "pass",
        "floor": "await handler(plain)",
        "send": "await d.send(plain)",
        "send_context": "await d.send(context)",
        "send_sync": "await d.send(sync)",
        "floor3": "await handler(event); await handler(event); await handler(event)",
        "publish3": "await d.publish(event)",
    }
    names = {"d": dispatcher, "handler": handler, "plain": Plain(), "context": WithContext(), "sync": Sync()}
    names["event"] = Event3()
    made: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
    for case, statement in cases.items():
        source = f"async def batch():\n    for _ in range({N}):\n        {statement}\n"
        namespace = dict(names)
        exec(source, namespace)
        made[case] = namespace["batch"]
    return made


def main(core_name: str) -> None:
    core = importlib.import_module(f"catga.{core_name}")

    class Routes(core.Dispatcher):  # type: ignore[misc,name-defined]
        def _compile_route(self, message_type: type) -> Any:
            return ROUTES[message_type]

    loop = asyncio.new_event_loop()

    def best(batch: Callable[[], Coroutine[Any, Any, None]]) -> float:
        fastest = float("inf")
        for _ in range(ROUNDS):
            start = time.perf_counter_ns()
            loop.run_until_complete(batch())
            fastest = min(fastest, time.perf_counter_ns() - start)
        return fastest / N

    timed = {case: best(batch) for case, batch in batches(Routes()).items()}
    result = {case: ns - timed["empty"] for case, ns in timed.items() if case != "empty"}
    print(core_name, sys.version.split()[0], " ".join(f"{name}={ns:.0f}" for name, ns in result.items()))
    send_ratio, publish_ratio = result["send"] / result["floor"], result["publish3"] / result["floor3"]
    print(f"  send/floor={send_ratio:.2f}  publish3/floor3={publish_ratio:.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "_catga")
