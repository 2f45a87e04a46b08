"""The app `tests/test_worker.py` serves with `catga worker worker_app:mediator` (a module of its own,
imported by the worker process and by the tests, so both know its message types)."""

import asyncio

import catga


class Ping(catga.Command[str], tag="tests.worker.ping"):
    text: str
    delay: float = 0.0


mediator = catga.Mediator(config=catga.Config.default().with_(retry=None))


@mediator.handler
async def ping(message: Ping) -> str:
    await asyncio.sleep(message.delay)
    return f"pong {message.text}"


not_a_mediator = object()
