"""Transports: move messages between processes (API.md section 7).

- `Transport` and `Subscription`: the protocol, over plain values (`Envelope`: headers + bytes).
- `InProcessTransport`: the protocol in memory, for tests and single-process applications.
- `EnvelopeCodec`: a `catga.Message` (or a request's reply) to an `Envelope` and back.
- `request_subject` / `event_subject`: where a message type's requests and events go.

>>> from catga.transports import EnvelopeCodec, InProcessTransport, request_subject
>>> request_subject("orders.create")
'catga.req.orders.create'
"""

from catga.transports._base import (
    EVENT_PREFIX,
    REQUEST_PREFIX,
    EnvelopeHandler,
    Subscription,
    Transport,
    event_subject,
    request_subject,
)
from catga.transports._envelope import (
    CONTENT_TYPE_HEADER,
    CORRELATION_ID_HEADER,
    DELIVERY_HEADER,
    FINAL_DELIVERY_HEADER,
    MESSAGE_ID_HEADER,
    REPLY_HEADER,
    TYPE_HEADER,
    Envelope,
    EnvelopeCodec,
    Serializer,
)
from catga.transports._inprocess import InProcessTransport

__all__ = [
    "CONTENT_TYPE_HEADER",
    "CORRELATION_ID_HEADER",
    "DELIVERY_HEADER",
    "EVENT_PREFIX",
    "FINAL_DELIVERY_HEADER",
    "MESSAGE_ID_HEADER",
    "REPLY_HEADER",
    "REQUEST_PREFIX",
    "TYPE_HEADER",
    "Envelope",
    "EnvelopeCodec",
    "EnvelopeHandler",
    "InProcessTransport",
    "Serializer",
    "Subscription",
    "Transport",
    "event_subject",
    "request_subject",
]

# Shown as `catga.transports.X` in reprs, tracebacks and docs (as `catga` does for its names).
for _value in (Envelope, EnvelopeCodec, InProcessTransport, Subscription, Transport, event_subject, request_subject):
    _value.__module__ = __name__
del _value
