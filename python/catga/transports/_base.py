"""The transport protocol: move `Envelope`s between processes, knowing nothing about messages.

A transport is a small abstract pair, `Transport` and `Subscription`, over plain values (headers
and bytes), in the spirit of httpx's `AsyncBaseTransport`: the mediator encodes and decodes with
`EnvelopeCodec`, the transport only delivers. `InProcessTransport` is the in-memory one for tests;
`catga.nats` is the real one.

Subjects name where envelopes go: `catga.req.<wire name>` for requests (served by a queue group
per message type, so instances share the load) and `catga.evt.<wire name>` for events.

>>> request_subject("orders.create")
'catga.req.orders.create'
>>> event_subject("orders.placed")
'catga.evt.orders.placed'
"""

import abc
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Self, TypeAlias

from catga._messages import wire_name
from catga.transports._envelope import Envelope

__all__ = [
    "EVENT_PREFIX",
    "REQUEST_PREFIX",
    "EnvelopeHandler",
    "Subscription",
    "Transport",
    "event_subject",
    "request_subject",
]

REQUEST_PREFIX: Final = "catga.req."
EVENT_PREFIX: Final = "catga.evt."

EnvelopeHandler: TypeAlias = Callable[[Envelope], Awaitable[Envelope | None]]
"""What a subscription calls per envelope; for a request it returns the reply envelope."""


def _name(wire_name_or_type: str | type) -> str:
    name = wire_name_or_type if isinstance(wire_name_or_type, str) else wire_name(wire_name_or_type)
    # Brokers split subjects on whitespace (NATS does): such a name would address something else.
    if not name or any(char.isspace() for char in name):
        raise ValueError(f"a wire name must be non-empty and without whitespace, got `{name!r}`")
    return name


def request_subject(wire_name_or_type: str | type) -> str:
    """The subject requests of a message type are sent to: `catga.req.<wire name>`.

    Takes the wire name or the message class itself.
    """
    return REQUEST_PREFIX + _name(wire_name_or_type)


def event_subject(wire_name_or_type: str | type) -> str:
    """The subject events of a message type are published to: `catga.evt.<wire name>`.

    Takes the wire name or the message class itself.
    """
    return EVENT_PREFIX + _name(wire_name_or_type)


class Subscription(abc.ABC):
    """An active subscription to `subject` (in the queue group `queue`, if any)."""

    subject: str
    queue: str | None

    @abc.abstractmethod
    async def unsubscribe(self) -> None:
        """Stop receiving; envelopes already being handled finish. Calling it again does nothing."""


class Transport(abc.ABC):
    """Delivers envelopes: request/reply to one subscriber, publish to all (API.md section 7).

    Semantics every implementation keeps:

    - `request` goes to one subscriber of the subject (one member of a queue group) and returns
      its reply; no subscriber → `catga.TransportError` (retryable); no reply within `timeout`
      seconds → `catga.Timeout`.
    - `publish` goes to every subscriber without a queue group and to one member of each group.
    - A subscriber's handler that raises never reaches the publisher: the transport logs it on the
      `catga.transports` logger.
    - Before `start()` and after `stop()`, `request` and `publish` raise `catga.TransportError`.

    `async with transport:` starts and stops it.
    """

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether the transport is started and can deliver."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (or get ready to deliver). Starting a started transport does nothing."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop delivering, let in-flight handlers finish and drop the subscriptions."""

    @abc.abstractmethod
    async def request(self, subject: str, envelope: Envelope, *, timeout: float) -> Envelope:
        """Send `envelope` to one subscriber of `subject` and return its reply."""

    @abc.abstractmethod
    async def publish(self, subject: str, envelope: Envelope) -> None:
        """Hand `envelope` to the subscribers of `subject`, without waiting for them to handle it."""

    @abc.abstractmethod
    async def subscribe(
        self,
        subject: str,
        handler: EnvelopeHandler,
        *,
        queue: str | None = None,
    ) -> Subscription:
        """Call `handler` for each envelope on `subject`; with `queue`, share them with the group."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
