"""A mediator's link to its transport (API.md section 7): remote targets and the handlers it serves.

Sending: a request type with no local handler gets a route whose handler sends the message over
the transport (`catga.req.<wire name>`) and decodes the reply, so the whole pipeline (Retry over a
retryable `TransportError`, Timeout, Logging, Tracing, Metrics) runs around the remote call as
around a local one; the reply's error is raised as the same `CatgaError` subclass. An event route
gets one more handler that publishes the event to `catga.evt.<wire name>`, so a publish reaches
the local handlers and every other service.

Serving: `start()` subscribes to the requests this mediator handles (queue group per message
type: instances share the load, one handles each) and to the events it has handlers for (queue
group per service: each service gets each event once). An event this service published itself is
skipped when it comes back (header `catga-origin`): its handlers already ran where it was
published. A received event is published locally only (`RECEIVED`), never sent on again.

Faults: an envelope that does not decode (unknown wire name, wrong shape, too large) is answered
with a `SerializationError` (requests) and kept as a dead letter with its raw body; the service goes
on. An event whose handlers fail is raised back to the transport, which redelivers it (JetStream)
until its final delivery (header `catga-final-delivery`), when it becomes a dead letter.

`dead_letters.retry` of a request served elsewhere: the request carries `catga-redelivery: 1`, so
the serving mediator's DeadLetter behaviour does not record the failure a second time (the caller
keeps the record), and an error reply carries `catga-attempts` (the handler attempts its DeadLetter
behaviour counted there), which the caller's record adds up.
"""

import contextlib
import logging
import secrets
import typing
from collections.abc import Callable, Coroutine, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

import msgspec

from catga._dead_letters import REDELIVERY, Redelivery, make_record
from catga._errors import PublishError, SerializationError
from catga._messages import Command, Message, Query, Request, wire_name
from catga.transports import (
    DELIVERY_HEADER,
    FINAL_DELIVERY_HEADER,
    Envelope,
    EnvelopeCodec,
    Subscription,
    Transport,
    event_subject,
    request_subject,
)

if TYPE_CHECKING:
    from catga._mediator import Mediator

__all__ = [
    "ATTEMPTS_HEADER",
    "DELIVERY_HEADER",
    "FINAL_DELIVERY_HEADER",
    "ORIGIN_HEADER",
    "RECEIVED",
    "REDELIVERY_HEADER",
    "Remote",
]

ORIGIN_HEADER: Final = "catga-origin"
"""The service (or, without one, the mediator instance) that published an event."""

REDELIVERY_HEADER: Final = "catga-redelivery"
"""`"1"` on a request sent by `dead_letters.retry`: the serving side must not dead-letter it again."""

ATTEMPTS_HEADER: Final = "catga-attempts"
"""On the error reply to a redelivered request: the handler attempts the serving side counted."""

RECEIVED: Final[ContextVar[object | None]] = ContextVar("catga_received", default=None)
"""The event being published because it arrived over the transport: not published out again."""

_logger: Final = logging.getLogger("catga.transports")
_RESPONSE_BASES: Final = (Request, Command, Query)


def response_type(message_type: type) -> Any:
    """`T` of a `catga.Request[T]` subclass (what a reply decodes as), else `Any`."""
    for base in message_type.__mro__:
        for generic in getattr(base, "__orig_bases__", ()):
            if typing.get_origin(generic) in _RESPONSE_BASES:
                args = typing.get_args(generic)
                if args and not isinstance(args[0], typing.TypeVar):
                    return args[0]
    return Any


class Remote:
    """The transport side of one mediator: what it sends out and what it serves."""

    def __init__(self, mediator: "Mediator", transport: Transport) -> None:
        if not isinstance(transport, Transport):
            raise TypeError(f"`transport` must be a `catga.transports.Transport`, got `{transport!r}`")
        self.mediator = mediator
        self.transport = transport
        codec = getattr(transport, "codec", None)
        self.codec: EnvelopeCodec = codec if isinstance(codec, EnvelopeCodec) else EnvelopeCodec()
        service = getattr(transport, "service", None)
        self.service: str | None = service if isinstance(service, str) else None
        # Instances of one service share an origin: whichever instance published, the service's
        # handlers ran there. Without a service name, each mediator is its own origin.
        self.origin = self.service or f"instance-{secrets.token_hex(6)}"
        timeout = getattr(transport, "request_timeout", 5.0)
        self.request_timeout = float(timeout) if isinstance(timeout, int | float) else 5.0
        self._subscriptions: list[Subscription] = []

    # ------------------------------------------------------------------------------- sending

    def request_handler(self, message_type: type) -> Callable[[Any], Coroutine[Any, Any, Any]]:
        """The handler of a request type served elsewhere: send it, decode the reply."""
        subject = request_subject(message_type)
        decoded_as = response_type(message_type)

        async def send_remote(message: Any) -> Any:
            envelope = self.codec.encode(message)
            redelivery = REDELIVERY.get()
            if redelivery is None or redelivery.message is not message:
                reply = await self.transport.request(subject, envelope, timeout=self.request_timeout)
                return self.codec.decode_reply(reply, decoded_as)
            # A `dead_letters.retry`: the record stays with the caller, not with the server.
            envelope = Envelope({**envelope.headers, REDELIVERY_HEADER: "1"}, envelope.body)
            reply = await self.transport.request(subject, envelope, timeout=self.request_timeout)
            try:
                return self.codec.decode_reply(reply, decoded_as)
            except Exception as exc:
                attempts = reply.headers.get(ATTEMPTS_HEADER, "")
                if attempts.isdigit():
                    # A DeadLetter layer of this mediator, if any, counts its own attempts after this.
                    redelivery.attempts += int(attempts)
                    redelivery.error = exc
                raise

        send_remote.__qualname__ = f"remote[{subject}]"
        return send_remote

    def publish_handler(self) -> Callable[[Any], Coroutine[Any, Any, None]]:
        """The last handler of every event route: publish the event to the other services."""

        async def publish_remote(event: Any) -> None:
            if RECEIVED.get() is event:
                return  # it came from the transport: the other services have it already
            envelope = self.codec.encode(event)
            headers = {**envelope.headers, ORIGIN_HEADER: self.origin}
            await self.transport.publish(event_subject(type(event)), Envelope(headers=headers, body=envelope.body))

        publish_remote.__qualname__ = "catga.transports.publish"
        return publish_remote

    # ------------------------------------------------------------------------------- serving

    async def start(self) -> None:
        """Connect, then subscribe to the requests and events this mediator has handlers for; on a
        failure, undo what was done (no connection or subscription is left behind)."""
        await self.transport.start()
        try:
            for message_type in self.mediator._served_requests():
                subject = request_subject(message_type)
                self._subscriptions.append(await self.transport.subscribe(subject, self._serve_request, queue=subject))
            for event_type in self.mediator._served_events():
                subject = event_subject(event_type)
                queue = self.service
                self._subscriptions.append(await self.transport.subscribe(subject, self._serve_event, queue=queue))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop taking messages (those being handled finish), then disconnect."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception:
                _logger.warning("could not unsubscribe from `%s`", subscription.subject, exc_info=True)
        await self.transport.stop()

    async def _serve_request(self, envelope: Envelope) -> Envelope:
        try:
            message = self.codec.decode(envelope)
        except SerializationError as exc:
            await self._reject(envelope, exc)
            return self.codec.encode_reply(error=exc)
        redelivery = Redelivery(message) if envelope.headers.get(REDELIVERY_HEADER) == "1" else None
        token = None if redelivery is None else REDELIVERY.set(redelivery)
        try:
            with _remote_parent(envelope.headers):
                value = await self.mediator.send(message)
        except Exception as exc:
            reply = self.codec.encode_reply(error=exc)
            if redelivery is not None and redelivery.attempts:
                reply = Envelope({**reply.headers, ATTEMPTS_HEADER: str(redelivery.attempts)}, reply.body)
            return reply
        finally:
            if token is not None:
                REDELIVERY.reset(token)
        try:
            return self.codec.encode_reply(value=value)
        except SerializationError as exc:
            return self.codec.encode_reply(error=exc)

    async def _serve_event(self, envelope: Envelope) -> None:
        if envelope.headers.get(ORIGIN_HEADER) == self.origin:
            return None  # this service published it: its handlers ran there
        try:
            event = self.codec.decode(envelope)
        except SerializationError as exc:
            await self._reject(envelope, exc)
            return None  # garbage does not get better with a redelivery
        final = envelope.headers.get(FINAL_DELIVERY_HEADER, "1") == "1"
        received = RECEIVED.set(event)
        # Until the final delivery, a failing handler is not a dead letter yet: the DeadLetter
        # behaviour is told instead of recording (as for `dead_letters.retry`).
        redelivery = None if final else REDELIVERY.set(Redelivery(event))
        try:
            with _remote_parent(envelope.headers):
                await self.mediator.publish(event)
        except PublishError as exc:
            if not final:
                raise  # the transport redelivers it
            if self.mediator._dead_letter_store is None:
                await self._dead_letter(event, exc, envelope)
            _logger.error("event `%s` failed on its final delivery: %s", wire_name(type(event)), exc, exc_info=exc)
        finally:
            if redelivery is not None:
                REDELIVERY.reset(redelivery)
            RECEIVED.reset(received)
        return None

    async def _reject(self, envelope: Envelope, error: SerializationError) -> None:
        """An envelope that does not decode: log it, keep it as a dead letter with its raw body."""
        name = envelope.headers.get("catga-type", "?")
        _logger.error("rejected an envelope of `%s`: %s", name, error)
        record = msgspec.structs.replace(make_record(None, name, error, 1, None, None, None), body=envelope.body)
        await self._add_dead_letter(record)

    async def _dead_letter(self, event: Message, error: BaseException, envelope: Envelope) -> None:
        delivery = envelope.headers.get(DELIVERY_HEADER, "1")
        attempts = int(delivery) if delivery.isdigit() else 1
        await self._add_dead_letter(make_record(event, wire_name(type(event)), error, attempts, None, None, None))

    async def _add_dead_letter(self, record: Any) -> None:
        try:
            await self.mediator.dead_letters.store.add(record)
        except Exception:
            _logger.warning("could not record a dead letter of `%s`", record.message_type, exc_info=True)


@contextlib.contextmanager
def _remote_parent(headers: dict[str, str]) -> Iterator[None]:
    """The sender's span (W3C `traceparent`) as the parent of what this process does for the
    message: one trace across the services."""
    if "traceparent" not in headers:
        yield
        return
    from opentelemetry import context as otel_context

    from catga.observability import extract

    token = otel_context.attach(extract(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


def served_types(message_types: typing.Iterable[type]) -> list[type]:
    """The catga message types among `message_types` (plain types cannot travel), in order."""
    return [t for t in dict.fromkeys(message_types) if issubclass(t, Message)]
