"""Run coroutines concurrently under one deadline; those that overrun are cancelled and left behind.

Health endpoints must answer on time whatever a check does, so nothing here waits for a coroutine
past the deadline, not even for its cancellation to finish (a check may swallow `CancelledError`).
The tasks left behind are kept referenced until they end, and their outcome is retrieved, so the
loop neither garbage-collects them mid-flight nor logs "exception was never retrieved".
"""

import asyncio
import enum
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

__all__ = ["Late", "describe_error", "run_bounded"]

T = TypeVar("T")


class Late(enum.Enum):
    """Why a coroutine gave no result."""

    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"


# Cancelled tasks still winding down: referenced here until they are done.
_stragglers: set["asyncio.Task[Any]"] = set()


def _forget(task: "asyncio.Task[Any]") -> None:
    _stragglers.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so the loop does not log it as never retrieved


def _abandon(task: "asyncio.Task[Any]") -> None:
    task.cancel()
    if not task.done():
        _stragglers.add(task)
        task.add_done_callback(_forget)


async def run_bounded(coros: Sequence[Coroutine[Any, Any, T]], timeout: float) -> list[T | Late]:
    """Run `coros` concurrently; their results in order, `Late.TIMED_OUT` for those not done after
    `timeout` seconds (cancelled, not awaited), `Late.CANCELLED` for those that ended cancelled.

    The coroutines should not raise: an exception from one is raised here. Cancelling the caller
    cancels them all.

    >>> async def main() -> list[object]:
    ...     async def slow() -> str:
    ...         await asyncio.sleep(10)
    ...         return "never"
    ...     async def quick() -> str:
    ...         return "quick"
    ...     return await run_bounded([quick(), slow()], timeout=0.01)
    >>> asyncio.run(main())
    ['quick', <Late.TIMED_OUT: 'timed out'>]
    """
    if not coros:
        return []
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
    except BaseException:  # the caller was cancelled: the checks go with it
        for task in tasks:
            _abandon(task)
        raise
    results: list[T | Late] = []
    for task in tasks:
        if task in pending:
            _abandon(task)
            results.append(Late.TIMED_OUT)
        elif task.cancelled():
            results.append(Late.CANCELLED)
        else:
            results.append(task.result())
    return results


def describe_error(exc: BaseException) -> str:
    """`"ValueError: boom"`, or the type's name alone when the exception has no text."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
