"""NATS transport (API.md section 7): requests, replies and events between services over NATS.

`NatsTransport` implements `catga.transports.Transport` with nats-py: core request/reply for
commands and queries (instances of a service share them through queue groups), core NATS or
JetStream for events (`events="jetstream"`: stored, de-duplicated by message id, redelivered with
backoff, durable per service). Needs nats-py: `pip install catga[nats]`.

>>> import catga
>>> from catga.nats import NatsTransport
>>> transport = NatsTransport("nats://127.0.0.1:4222", service="billing", events="jetstream")
>>> transport.service, transport.events, transport.codec.serializer, transport.connected
('billing', 'jetstream', 'msgpack', False)

Handlers see two headers the transport adds on every delivery: `catga-delivery` (the 1-based
delivery count) and `catga-final-delivery: "1"` when the envelope will not be delivered again
(on core NATS always; on JetStream on delivery `max_deliver`). A handler that fails on its final
delivery must dead-letter the message itself: the transport only terminates it.
"""

try:
    import nats  # noqa: F401  # checked here so the error names the extra to install
except ImportError as exc:  # pragma: no cover - exercised with nats hidden by the tests
    raise ImportError("`catga.nats` needs the `nats` extra: pip install catga[nats]") from exc

from catga.nats._jetstream import durable_name
from catga.nats._transport import DELIVERY_HEADER, FINAL_DELIVERY_HEADER, EventMode, NatsTransport
from catga.nats._worker_id import WorkerIdLease

__all__ = ["DELIVERY_HEADER", "FINAL_DELIVERY_HEADER", "EventMode", "NatsTransport", "WorkerIdLease", "durable_name"]

for _value in (NatsTransport, WorkerIdLease, durable_name):
    _value.__module__ = __name__
del _value
