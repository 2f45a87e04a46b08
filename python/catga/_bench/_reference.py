"""The reference every mediator is measured against: the simplest honest pure-Python dispatcher.

A dict from message type to handler, behaviours composed once at registration, `send` an
`async def` that looks the handler up and awaits it, `publish` a loop. No ids, no errors, no MRO.
`catga bench` and benches/ both time it beside catga and the peers.

>>> import asyncio
>>> async def double(n: int) -> int:
...     return 2 * n
>>> mediator = DictMediator()
>>> mediator.register(int, double)
>>> asyncio.run(mediator.send(21))
42
"""

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["Behaviour", "DictMediator", "Handler", "compose"]

Handler = Callable[[Any], Awaitable[Any]]
Behaviour = Callable[[Any, Handler], Awaitable[Any]]


class DictMediator:
    """`send` to the one handler of `type(message)`, `publish` to each subscriber in turn."""

    __slots__ = ("_handlers", "_subscribers")

    def __init__(self) -> None:
        self._handlers: dict[type, Handler] = {}
        self._subscribers: dict[type, list[Handler]] = {}

    def register(self, message_type: type, handler: Handler, behaviours: Sequence[Behaviour] = ()) -> None:
        self._handlers[message_type] = compose(handler, behaviours)

    def subscribe(self, event_type: type, handler: Handler) -> None:
        self._subscribers.setdefault(event_type, []).append(handler)

    async def send(self, message: Any) -> Any:
        return await self._handlers[type(message)](message)

    async def publish(self, event: Any) -> None:
        for handler in self._subscribers.get(type(event), ()):
            await handler(event)


def compose(handler: Handler, behaviours: Sequence[Behaviour]) -> Handler:
    """One callable running `behaviours` (the first outermost) around `handler`, built once."""
    call = handler
    for behaviour in reversed(behaviours):

        def step(message: Any, behaviour: Behaviour = behaviour, call_next: Handler = call) -> Awaitable[Any]:
            return behaviour(message, call_next)

        call = step
    return call
