"""The cycles a mediator and its awaitables form are collectable (the core's GC support).

A handler that refers back to its mediator is the normal case (a bound method of a service that
holds the mediator); the compiled routes live in the core, so the core must show them to the
garbage collector (`__traverse__`/`__clear__` in Rust, plain attributes in the pure core).
"""

import asyncio
import gc
import weakref

import catga


class Ping(catga.Command[int]):
    pass


class Pinged(catga.Event):
    pass


class Service:
    def __init__(self, mediator: catga.Mediator) -> None:
        self.mediator = mediator

    async def ping(self, cmd: Ping) -> int:
        return 1

    async def pinged(self, evt: Pinged) -> None:
        return None


async def _tally(message: object, call_next: object) -> object:
    return await call_next(message)  # type: ignore[operator]


def test_a_mediator_in_a_cycle_with_its_handlers_is_collected() -> None:
    mediator = catga.Mediator()
    service = Service(mediator)
    mediator.register(Ping, service.ping)
    mediator.register(Pinged, service.pinged)
    mediator.add_behavior(_tally)

    async def use(mediator: catga.Mediator) -> None:
        assert await mediator.send(Ping()) == 1  # compiles the routes into the core's table
        await mediator.publish(Pinged())

    asyncio.run(use(mediator))
    alive = weakref.ref(mediator)
    del mediator, service
    gc.collect()
    assert alive() is None


class Carrier:
    """A plain request that can hold a reference back to the awaitable that carries it."""

    box: object = None


def test_an_awaitable_in_a_cycle_with_its_message_is_collected() -> None:
    mediator = catga.Mediator()
    mediator.add_behavior(_tally)  # so that `send` returns the core's awaitable, not a coroutine

    async def handler(request: Carrier) -> int:
        return 1

    mediator.register(Carrier, handler)
    message = Carrier()
    pending = mediator.send(message)
    message.box = pending  # awaitable -> message -> awaitable
    pending.close()  # type: ignore[attr-defined]  # never awaited; the native awaitable keeps its message
    alive = weakref.ref(message)
    del message, pending
    gc.collect()
    assert alive() is None
    mediator.register(Ping, handler)  # the mediator is still usable
