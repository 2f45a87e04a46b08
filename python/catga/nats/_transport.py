"""`NatsTransport`: the transport protocol over NATS (core request/reply and pub/sub, JetStream events).

Delivery contract of a subscription (the same for every subject and mode, so handler code does
not care where an envelope came from): before the handler runs, the transport adds

- `catga-delivery`: the 1-based delivery count of this envelope (`"1"` on core NATS);
- `catga-final-delivery: "1"` when no redelivery will follow (always on core NATS; on JetStream,
  on delivery number `max_deliver`).

A handler that raises on a JetStream event is redelivered later (after `redelivery_backoff`),
until delivery `max_deliver`, which is terminated instead: **the handler itself is responsible for
dead-lettering on the final delivery** (the mediator does it when it sees `catga-final-delivery`);
the transport only logs. A handler that returns normally has its event acknowledged (the
de-duplication on `catga-message-id` is the mediator's, as is every decision about the message).
"""

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext

from catga._errors import SerializationError, Timeout, TransportError
from catga.nats._jetstream import durable_name, ensure_consumer, ensure_stream
from catga.nats._worker_id import acquire_shared, release_shared, worker_id_pinned
from catga.transports._base import EVENT_PREFIX, EnvelopeHandler, Subscription, Transport
from catga.transports._envelope import (
    DELIVERY_HEADER,
    FINAL_DELIVERY_HEADER,
    MESSAGE_ID_HEADER,
    TYPE_HEADER,
    Envelope,
    EnvelopeCodec,
    Serializer,
)

__all__ = ["DELIVERY_HEADER", "FINAL_DELIVERY_HEADER", "EventMode", "NatsTransport"]

_logger: Final = logging.getLogger("catga.nats")

_MSG_ID_HEADER: Final = "Nats-Msg-Id"  # JetStream's de-duplication key

EventMode: TypeAlias = Literal["core", "jetstream"]
_Callback: TypeAlias = Callable[..., Awaitable[None]]

# nats-py options the transport sets itself unless `connect_options` says otherwise.
_CONNECT_DEFAULTS: Final[Mapping[str, Any]] = {
    "allow_reconnect": True,
    "max_reconnect_attempts": -1,  # a service keeps trying; callers see TransportError meanwhile
    "reconnect_time_wait": 1,
}
_CALLBACKS: Final = ("disconnected_cb", "reconnected_cb", "error_cb", "closed_cb")
_CLOSED_ERRORS: Final = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
)


class _NatsSubscription(Subscription):
    """One subscription: a core subscription, or a durable JetStream consumer for an event subject.

    Each envelope runs in its own task (nats-py would otherwise run one callback of a subscription
    at a time), at most `max_concurrency` at once: the nats-py callback waits for a free slot, so
    a busy subscription applies backpressure instead of piling up tasks.
    """

    __slots__ = ("_closed", "_semaphore", "_sub", "_tasks", "_transport", "durable", "handler", "queue", "subject")

    def __init__(
        self,
        transport: "NatsTransport",
        subject: str,
        queue: str | None,
        handler: EnvelopeHandler,
        durable: str | None,
    ) -> None:
        self._transport = transport
        self.subject = subject
        self.queue = queue
        self.handler = handler
        self.durable = durable
        """The JetStream durable consumer name, or `None` for a core subscription."""
        self._sub: NatsSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._semaphore = asyncio.Semaphore(transport.max_concurrency)
        self._closed = False

    def __repr__(self) -> str:
        kind = f"durable={self.durable!r}" if self.durable is not None else "core"
        return f"<NatsSubscription subject={self.subject!r} queue={self.queue!r} {kind}>"

    async def unsubscribe(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._transport._forget(self)
        await self._deactivate(self._transport.drain_timeout)

    # ------------------------------------------------------------------------------ lifecycle

    async def _activate(self, nc: Client, js: JetStreamContext | None) -> None:
        transport = self._transport
        if self.durable is None:
            self._sub = await nc.subscribe(self.subject, queue=self.queue or "", cb=self._on_core)
            # The server has the subscription when `subscribe` returns: a request sent right after
            # (from another connection) must not meet "no responders". NOTE: one flush is not
            # enough: with nats-py 2.x against nats-server 2.9, a request from a second connection
            # right after one flush met "no responders" 157 times in 2 000 on a loaded machine
            # (8 %); after two flushes, 0 in 2 000. A subscription costs one more round trip.
            timeout = math.ceil(transport.request_timeout)
            await nc.flush(timeout=timeout)
            await nc.flush(timeout=timeout)
            return
        assert js is not None, "a durable subscription needs the JetStream context"
        # Instances of one service share the consumer through its deliver group.
        group = self.queue or transport.service
        deliver_subject = await ensure_consumer(
            js,
            stream=transport.stream,
            subject=self.subject,
            durable=self.durable,
            group=group,
            ack_wait=transport.ack_wait,
            max_deliver=transport.max_deliver,
        )
        self._sub = await nc.subscribe(deliver_subject, queue=group, cb=self._on_jetstream)
        await nc.flush(timeout=math.ceil(transport.request_timeout))

    async def _deactivate(self, timeout: float) -> None:
        """Stop taking messages, then wait up to `timeout` s for running handlers (then cancel them)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sub, self._sub = self._sub, None
        if sub is not None:
            nc = self._transport._nc
            try:
                if nc is not None and nc.is_connected:
                    # Drain, not unsubscribe: messages already received still get handled.
                    drain: Callable[[], Awaitable[None]] = sub.drain  # untyped in nats-py
                    await asyncio.wait_for(drain(), timeout)
                elif nc is not None and not nc.is_closed:
                    await sub.unsubscribe()
            except (TimeoutError, nats.errors.Error) as exc:
                _logger.warning("could not drain the subscription to `%s`: %s", self.subject, _describe(exc))
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(deadline - loop.time(), 0.0))
        if pending:
            _logger.warning(
                "cancelled `%d` handlers of `%s` still running after `%g` s", len(pending), self.subject, timeout
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    # ----------------------------------------------------------------------------- delivering

    async def _on_core(self, msg: Msg) -> None:
        await self._spawn(self._run_core(msg))

    async def _on_jetstream(self, msg: Msg) -> None:
        await self._spawn(self._run_jetstream(msg))

    async def _spawn(self, work: Awaitable[None]) -> None:
        await self._semaphore.acquire()
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        self._semaphore.release()

    async def _run_core(self, msg: Msg) -> None:
        headers = dict(msg.headers) if msg.headers else {}
        headers[DELIVERY_HEADER] = "1"
        headers[FINAL_DELIVERY_HEADER] = "1"
        codec = self._transport.codec
        reply: Envelope | None
        try:
            reply = await self.handler(Envelope(headers, msg.data))
        except Exception as exc:
            self._log_failure()
            if not msg.reply:
                return
            # The requester gets the error now rather than waiting out its timeout.
            reply = _error_reply(codec, exc, self.subject)
        if not msg.reply:
            return
        if reply is None:
            reply = _error_reply(
                codec, TransportError(f"the subscriber of `{self.subject}` sent no reply"), self.subject
            )
        if reply is None:
            return
        nc = self._transport._nc
        if nc is not None:
            try:
                _check_payload(nc, msg.reply, reply)
            except SerializationError as exc:  # a result too large for the server: say so instead
                reply = _error_reply(codec, exc, self.subject)
                if reply is None:
                    return
        try:
            await self._transport._publish_raw(msg.reply, reply)
        except nats.errors.Error as exc:
            _logger.warning("could not send the reply to a request on `%s`: %s", self.subject, _describe(exc))

    async def _run_jetstream(self, msg: Msg) -> None:
        transport = self._transport
        try:
            delivery = msg.metadata.num_delivered
        except (ValueError, IndexError, nats.errors.Error):  # not a JetStream message: nothing to ack
            _logger.warning("ignored a message without JetStream metadata on `%s`", self.subject)
            return
        final = delivery >= transport.max_deliver
        headers = dict(msg.headers) if msg.headers else {}
        headers[DELIVERY_HEADER] = str(delivery)
        # Always set: a handler that finds no header must assume no redelivery follows.
        headers[FINAL_DELIVERY_HEADER] = "1" if final else "0"
        try:
            await self.handler(Envelope(headers, msg.data))
        except Exception:
            self._log_failure(delivery=delivery, final=final)
            try:
                if final:
                    await msg.term()
                else:
                    backoff = transport.redelivery_backoff
                    await msg.nak(delay=backoff[min(delivery, len(backoff)) - 1])
            except nats.errors.Error as exc:  # redelivered after `ack_wait` anyway
                _logger.warning("could not nak an event on `%s`: %s", self.subject, _describe(exc))
            return
        try:
            await msg.ack()
        except nats.errors.Error as exc:  # redelivered after `ack_wait`: at least once
            _logger.warning("could not ack an event on `%s`: %s", self.subject, _describe(exc))

    def _log_failure(self, **extra: object) -> None:
        _logger.exception(
            "subscriber of `%s` failed",
            self.subject,
            extra={"subject": self.subject, "queue": self.queue, **extra},
        )


def _error_reply(codec: EnvelopeCodec, error: Exception, subject: str) -> Envelope | None:
    try:
        return codec.encode_reply(error=error)
    except Exception:  # too large, say: the requester times out, as with any lost reply
        _logger.exception("could not encode the error reply to a request on `%s`", subject)
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"`{type(exc).__name__}` {text}" if text else f"`{type(exc).__name__}`"


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number of seconds, got `{value!r}`")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be positive and finite, got `{value!r}`")
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got `{value!r}`")
    if value < 1:
        raise ValueError(f"`{name}` must be at least 1, got `{value!r}`")
    return value


def _server_list(servers: object) -> list[str]:
    # Checked at run time too: the annotations do not stop a caller.
    if isinstance(servers, str):
        urls = [servers]
    elif isinstance(servers, Sequence) and all(isinstance(url, str) for url in servers):
        urls = [str(url) for url in servers]
    else:
        raise TypeError(f"`servers` must be a URL or a list of URLs, got `{servers!r}`")
    if not urls or not all(urls):
        raise ValueError(f"`servers` must name at least one server, got `{servers!r}`")
    return urls


def _name(what: str, value: object, *, forbidden: str) -> str:
    """A name that becomes a subject token or a file name: no wildcards, separators or whitespace."""
    if not isinstance(value, str):
        raise TypeError(f"`{what}` must be a str, got `{value!r}`")
    if not value or any(char in forbidden or char.isspace() for char in value):
        shown = ", ".join(f"`{char}`" for char in forbidden)
        raise ValueError(f"`{what}` must be non-empty, without {shown} or whitespace, got `{value!r}`")
    return value


def _check_payload(nc: Client, subject: str, envelope: Envelope) -> None:
    """Refuse what the server would refuse: it counts the headers too, and closes the connection of a
    client that sends more than its `max_payload` (a broken connection, not an error to retry)."""
    limit = nc.max_payload
    # The header block: "NATS/1.0\r\n", each "name: value\r\n", and a closing "\r\n".
    size = len(envelope.body) + 12 + sum(len(name) + len(value) + 4 for name, value in envelope.headers.items())
    if limit and size > limit:
        raise SerializationError(
            f"the envelope for `{subject}` is `{size}` bytes with its headers, more than the NATS server's "
            f"`max_payload={limit}`",
            message_type=envelope.headers.get(TYPE_HEADER),
        )


def _backoff(delays: object) -> tuple[float, ...]:
    if isinstance(delays, str | bytes) or not isinstance(delays, Sequence):
        raise TypeError(f"`redelivery_backoff` must be a sequence of seconds, got `{delays!r}`")
    if not delays or not all(
        isinstance(delay, int | float) and not isinstance(delay, bool) and 0 <= delay < math.inf for delay in delays
    ):
        raise ValueError(f"`redelivery_backoff` must hold one or more non-negative seconds, got `{delays!r}`")
    return tuple(float(delay) for delay in delays)


def _chain(ours: _Callback, theirs: _Callback | None) -> _Callback:
    if theirs is None:
        return ours

    async def both(*args: Any) -> None:
        await ours(*args)
        await theirs(*args)

    return both


class NatsTransport(Transport):
    """The transport protocol over NATS (API.md section 7): requests, replies and events between services.

    - Requests use core request/reply; instances of a service share them through a queue group.
      No responder → `catga.TransportError` (retryable) at once; no reply in time → `catga.Timeout`;
      a connection that is down (or drops while waiting) → `catga.TransportError`.
    - `events="core"` publishes events with core NATS: fire and forget, to the subscribers
      connected at that moment.
    - `events="jetstream"` stores events (subjects `catga.evt.>`) in the file stream `stream`,
      created by `start()` if missing; `publish` returns once the event is stored and is
      de-duplicated by message id (within 2 minutes), so retrying a publish is safe. Each
      (service, event subject) gets a durable consumer that starts from the beginning of the
      stream and survives restarts of the service and of the server; its instances share it
      (the deliver group is `queue`, by default `service`). Redelivery after a failure waits
      `redelivery_backoff[n - 1]` seconds after delivery `n` (the last value repeats), up to
      `max_deliver` deliveries; an event not acknowledged within `ack_wait` s comes back too.

    Subscriptions run each envelope's handler in its own task, at most `max_concurrency` at a
    time per subscription, and add the delivery headers described in the module documentation
    (`catga-delivery`, `catga-final-delivery`). Handler failures are logged on `catga.nats`; a
    failed request gets an error reply (`EnvelopeCodec.encode_reply(error=...)`).

    Subscriptions may be made before `start()` (they begin receiving once connected). `stop()`
    stops taking messages, waits up to `drain_timeout` s for running handlers, then drains and
    closes the connection. `start()` gives up with `catga.TransportError` when no server
    accepts within `request_timeout` s; later, nats-py reconnects on its own (forever unless
    `connect_options` says otherwise), and subscriptions come back with the connection.

    `connect_options` go to `nats.connect` (TLS, credentials, `reconnect_time_wait`, ...);
    callbacks given there run after the transport's own, which log on `catga.nats`.

    Worker id (API.md section 2): unless `CATGA_WORKER_ID` pins it or `lease_worker_id=False`,
    `start()` leases a free worker id for the process from the JetStream KV bucket
    `catga_worker_ids` (`catga.nats.WorkerIdLease`, on a connection of its own) and stamps it into
    the ids `catga.new_id()` makes, so that processes on one cluster never make the same id. The
    process holds one lease: every transport (and mediator) of it shares the first one taken, which
    is a Redis one when a mediator on Redis stores started first (`catga.redis.RedisWorkerIdLease`);
    `stop()` of the last one frees the id. With every id
    leased, `start()` fails with `catga.TransportError` naming the bucket. The server needs
    JetStream for that (`-js`), also with `events="core"`.

    >>> import asyncio
    >>> async def main() -> bytes:
    ...     async def echo(envelope: Envelope) -> Envelope:
    ...         return Envelope({}, envelope.body.upper())
    ...     async with NatsTransport("nats://127.0.0.1:4222", service="echo") as transport:
    ...         await transport.subscribe("catga.req.echo", echo, queue="echo")
    ...         reply = await transport.request("catga.req.echo", Envelope({}, b"hi"), timeout=1.0)
    ...     return reply.body
    >>> asyncio.run(main())  # doctest: +SKIP
    b'HI'
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        service: str,
        events: EventMode = "core",
        request_timeout: float = 5.0,
        connect_options: Mapping[str, Any] | None = None,
        serializer: Serializer = "msgpack",
        max_deliver: int = 5,
        redelivery_backoff: Sequence[float] = (0.5, 2.0, 10.0),
        stream: str = "CATGA_EVENTS",
        max_concurrency: int = 64,
        ack_wait: float = 30.0,
        drain_timeout: float = 5.0,
        lease_worker_id: bool = True,
    ) -> None:
        if events not in ("core", "jetstream"):
            raise ValueError(f"`events` must be `'core'` or `'jetstream'`, got `{events!r}`")
        if connect_options is not None and not isinstance(connect_options, Mapping):
            raise TypeError(f"`connect_options` must be a mapping of `nats.connect` options, got `{connect_options!r}`")
        options = dict(connect_options or {})
        if "servers" in options:
            raise ValueError("`connect_options` must not hold `servers`: pass them as the first argument")
        self.servers = _server_list(servers)
        self.service = _name("service", service, forbidden=".*>")
        self.events: EventMode = events
        self.request_timeout = _positive("request_timeout", request_timeout)
        self.codec = EnvelopeCodec(serializer)
        self.max_deliver = _count("max_deliver", max_deliver)
        self.redelivery_backoff = _backoff(redelivery_backoff)
        self.stream = _name("stream", stream, forbidden=".*>/\\")
        self.max_concurrency = _count("max_concurrency", max_concurrency)
        self.ack_wait = _positive("ack_wait", ack_wait)
        self.drain_timeout = _positive("drain_timeout", drain_timeout)
        if not isinstance(lease_worker_id, bool):
            raise TypeError(f"`lease_worker_id` must be a bool, got `{lease_worker_id!r}`")
        self.lease_worker_id = lease_worker_id
        self._leased = False  # holds a reference to the process's worker-id lease
        self._connect_options = options
        self._nc: Client | None = None
        # False from a disconnect until the server has this connection's subscriptions again (see
        # `_on_reconnected`): `connected` (and with it the readiness check) waits for that.
        self._resubscribed = True
        self._js: JetStreamContext | None = None
        self._subscriptions: list[_NatsSubscription] = []
        # In-flight requests, to fail them when the connection drops (nats-py would let them time out).
        self._requests: set[asyncio.Task[Msg]] = set()
        self._severed: set[asyncio.Task[Msg]] = set()

    def __repr__(self) -> str:
        if self._nc is None:
            state = "stopped"
        elif self._nc.is_connected:
            state = "connected"
        else:
            state = "reconnecting"
        return f"<NatsTransport service={self.service!r} events={self.events!r} {state}>"

    @property
    def connected(self) -> bool:
        """Started, connected, and (after a reconnect) with its subscriptions live on the server."""
        return self._nc is not None and self._nc.is_connected and self._resubscribed

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._nc is not None:
            return
        options: dict[str, Any] = {**_CONNECT_DEFAULTS, "name": self.service, **self._connect_options}
        ours: dict[str, _Callback] = {
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "error_cb": self._on_error,
            "closed_cb": self._on_closed,
        }
        for key in _CALLBACKS:
            options[key] = _chain(ours[key], options.get(key))
        nc = Client()
        try:
            # Bounded: with reconnects on, nats-py would keep trying an absent server for good.
            await asyncio.wait_for(nc.connect(self.servers, **options), self.request_timeout)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            await _close_quietly(nc)
            raise TransportError(
                f"cannot connect to NATS at `{', '.join(self.servers)}` within `{self.request_timeout:g}` s: "
                f"{_describe(exc)}",
                servers=list(self.servers),
            ) from exc
        self._nc = nc
        try:
            # Before any subscription: the ids of the first messages handled carry the leased id.
            if self.lease_worker_id and not worker_id_pinned():
                await acquire_shared(
                    self.servers, self._connect_options, service=self.service, timeout=self.request_timeout
                )
                self._leased = True
            if self.events == "jetstream":
                self._js = nc.jetstream(timeout=self.request_timeout)
                await ensure_stream(self._js, self.stream)
            for subscription in self._subscriptions:
                await subscription._activate(nc, self._js)
        except BaseException:
            self._nc = self._js = None
            await _close_quietly(nc)
            await self._release_worker_id()
            raise
        _logger.info(
            "connected to NATS at `%s` as `%s`", nc.connected_url.geturl() if nc.connected_url else "?", self.service
        )

    async def stop(self) -> None:
        nc = self._nc
        subscriptions, self._subscriptions = self._subscriptions, []
        if nc is None:
            return
        await asyncio.gather(*(subscription._deactivate(self.drain_timeout) for subscription in subscriptions))
        self._nc = self._js = None
        if nc.is_connected:
            try:
                await nc.drain()  # flushes what handlers published (acks, replies), then closes
            except (TimeoutError, nats.errors.Error):
                await _close_quietly(nc)
        else:
            await _close_quietly(nc)
        self._sever("the transport was stopped")
        await self._release_worker_id()

    async def _release_worker_id(self) -> None:
        if self._leased:
            self._leased = False
            await release_shared()

    # ---------------------------------------------------------------------------- delivering

    async def request(self, subject: str, envelope: Envelope, *, timeout: float) -> Envelope:
        if timeout <= 0:
            raise ValueError(f"`timeout` must be positive, got `{timeout!r}`")
        nc = self._connection(f"send a request to `{subject}`", reconnecting_ok=False)
        _check_payload(nc, subject, envelope)
        task = asyncio.ensure_future(
            nc.request(subject, envelope.body, timeout=timeout, headers=envelope.headers or None)
        )
        self._requests.add(task)
        try:
            msg = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task in self._severed and (current is None or not current.cancelling()):
                raise TransportError(
                    f"lost the connection to NATS while waiting for the reply to `{subject}`", subject=subject
                ) from None
            raise
        except nats.errors.NoRespondersError:
            raise TransportError(f"no service handles `{subject}` (no responders)", subject=subject) from None
        except nats.errors.TimeoutError:
            raise Timeout(
                f"no reply to the request on `{subject}` within `{timeout:g}` s", subject=subject, timeout=timeout
            ) from None
        except nats.errors.Error as exc:
            raise TransportError(f"cannot send a request to `{subject}`: {_describe(exc)}", subject=subject) from exc
        finally:
            self._requests.discard(task)
            self._severed.discard(task)
        return Envelope(dict(msg.headers) if msg.headers else {}, msg.data)

    async def publish(self, subject: str, envelope: Envelope) -> None:
        # While reconnecting, nats-py buffers what is published and sends it once reconnected.
        _check_payload(self._connection(f"publish to `{subject}`", reconnecting_ok=True), subject, envelope)
        js = self._js
        if js is None or not subject.startswith(EVENT_PREFIX):
            try:
                await self._publish_raw(subject, envelope)
            except nats.errors.Error as exc:
                raise TransportError(f"cannot publish to `{subject}`: {_describe(exc)}", subject=subject) from exc
            return
        headers = dict(envelope.headers)
        message_id = headers.get(MESSAGE_ID_HEADER)
        if message_id:
            # The server drops a repeat within the duplicate window. Ids are unique per type, not
            # across types (a derived event may reuse its cause's id), so the type is part of it.
            headers[_MSG_ID_HEADER] = f"{headers.get(TYPE_HEADER, subject)}:{message_id}"
        try:
            await js.publish(subject, envelope.body, timeout=self.request_timeout, stream=self.stream, headers=headers)
        except nats.errors.TimeoutError:
            raise TransportError(
                f"JetStream did not confirm the event on `{subject}` within `{self.request_timeout:g}` s "
                "(publishing it again is safe: it is de-duplicated by message id)",
                subject=subject,
            ) from None
        except nats.errors.NoRespondersError:
            raise TransportError(
                f"no JetStream stream stores `{subject}` (is the stream `{self.stream}` deleted?)", subject=subject
            ) from None
        except nats.errors.Error as exc:
            raise TransportError(f"cannot publish to `{subject}`: {_describe(exc)}", subject=subject) from exc

    async def subscribe(
        self,
        subject: str,
        handler: EnvelopeHandler,
        *,
        queue: str | None = None,
    ) -> Subscription:
        if not subject or any(char.isspace() for char in subject):
            raise ValueError(f"`subject` must be non-empty and without whitespace, got `{subject!r}`")
        if queue is not None and (not queue or any(char.isspace() for char in queue)):
            raise ValueError(f"`queue` must be non-empty and without whitespace, or `None`, got `{queue!r}`")
        durable = (
            durable_name(self.service, subject, queue)
            if self.events == "jetstream" and subject.startswith(EVENT_PREFIX)
            else None
        )
        subscription = _NatsSubscription(self, subject, queue, handler, durable)
        self._subscriptions.append(subscription)
        nc = self._nc
        if nc is not None:
            try:
                await subscription._activate(nc, self._js)
            except nats.errors.Error as exc:
                self._forget(subscription)
                raise TransportError(f"cannot subscribe to `{subject}`: {_describe(exc)}", subject=subject) from exc
            except BaseException:
                self._forget(subscription)
                raise
        return subscription

    # ------------------------------------------------------------------------------- helpers

    def _connection(self, action: str, *, reconnecting_ok: bool) -> Client:
        nc = self._nc
        if nc is None:
            raise TransportError(f"cannot {action}: the transport is not started (call `await start()`)")
        if nc.is_closed or nc.is_draining:
            raise TransportError(f"cannot {action}: the connection to NATS is closed")
        if not reconnecting_ok and not nc.is_connected:
            raise TransportError(f"cannot {action}: the connection to NATS is down (reconnecting)")
        return nc

    async def _publish_raw(self, subject: str, envelope: Envelope) -> None:
        nc = self._nc
        if nc is None:
            raise nats.errors.ConnectionClosedError
        await nc.publish(subject, envelope.body, headers=envelope.headers or None)

    def _forget(self, subscription: _NatsSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def _sever(self, why: str) -> None:
        """Fail the requests waiting for a reply that can no longer come."""
        for task in list(self._requests):
            if task.cancel(why):
                self._severed.add(task)

    async def _on_disconnected(self) -> None:
        if self._nc is not None:  # not a stop()
            _logger.warning("disconnected from NATS (service `%s`): reconnecting", self.service)
            self._resubscribed = False
        self._sever("disconnected from NATS")

    async def _on_reconnected(self) -> None:
        nc = self._nc
        url = nc.connected_url.geturl() if nc is not None and nc.connected_url else "?"
        _logger.warning("reconnected to NATS at `%s` (service `%s`)", url, self.service)
        # nats-py re-sent the subscriptions and flushed once before calling this. After a
        # subscribe one flush was measured not to be enough (`_NatsSubscription._activate`: 8 %
        # "no responders" under load); after a reconnect the window did not show (0 in 40 server
        # restarts under load, with or without this), so the second flush here is a precaution at
        # the cost of one round trip per reconnect. Best effort: a failed flush (the connection
        # dropped again) still ends the wait, and the next reconnect runs this again.
        try:
            if nc is not None:
                await nc.flush(timeout=math.ceil(self.request_timeout))
        except (TimeoutError, nats.errors.Error) as exc:
            _logger.warning("NATS flush after the reconnect failed (service `%s`): %s", self.service, _describe(exc))
        finally:
            self._resubscribed = True

    async def _on_error(self, error: Exception) -> None:
        _logger.warning("NATS connection error (service `%s`): %s", self.service, _describe(error))

    async def _on_closed(self) -> None:
        _logger.debug("connection to NATS closed (service `%s`)", self.service)


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.close()
    except Exception as exc:  # closing is best effort: the socket may already be gone
        _logger.debug("closing the NATS connection failed: %s", _describe(exc))
