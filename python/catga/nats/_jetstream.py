"""JetStream plumbing of `NatsTransport`: the events stream, durable consumers and their names.

Kept to what nats-server 2.9 understands: 2.9 accepts and silently drops newer stream and consumer
fields (`compression`, `metadata`, `filter_subjects`, ...), so relying on one would give a stream
or consumer that quietly behaves differently (a consumer with several filters gets every subject).
"""

import hashlib
import logging
import re
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from catga._errors import TransportError
from catga.transports._base import EVENT_PREFIX

__all__ = ["DUPLICATE_WINDOW", "STREAM_SUBJECTS", "durable_name", "ensure_consumer", "ensure_stream"]

_logger: Final = logging.getLogger("catga.nats")

STREAM_SUBJECTS: Final = EVENT_PREFIX + ">"
DUPLICATE_WINDOW: Final = 120.0
"""Seconds during which JetStream drops a second event with the same `Nats-Msg-Id` (message id)."""

# JetStream API error codes (nats-server's errors.json) that mean "someone else got there first".
_STREAM_NAME_IN_USE: Final = 10058
_CONSUMER_ALREADY_EXISTS: Final = 10013
_CONSUMER_NAME_EXISTS: Final = 10148

# Durable names become file names in the server's store directory and tokens of API subjects:
# letters, digits, `_` and `-` only, and short.
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAME: Final = 64


def durable_name(service: str, subject: str, queue: str | None = None) -> str:
    """The durable consumer name of `service` for the events on `subject` (and a foreign `queue`).

    Derived, so every instance of a service (and every restart) binds to the same consumer. Unsafe
    characters become `_`, and a name that had to change gets a hash of the original, so that
    `orders.placed` and `orders_placed` never share a consumer.

    >>> durable_name("billing", "catga.evt.orders_placed")
    'billing__orders_placed'
    >>> durable_name("billing", "catga.evt.orders.placed")
    'billing__orders_placed-f6475eac'
    """
    wire = subject.removeprefix(EVENT_PREFIX)
    raw = f"{service}__{wire}"
    if queue is not None and queue != service:
        raw += f"__{queue}"
    safe = _UNSAFE.sub("_", raw)
    if safe == raw and len(safe) <= _MAX_NAME:
        return safe
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{safe[: _MAX_NAME - 9]}-{digest}"


async def ensure_stream(js: JetStreamContext, stream: str) -> None:
    """Create the events stream `stream` on `catga.evt.>` unless it exists (another instance may race us)."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        pass
    except NatsError as exc:
        raise TransportError(
            f"cannot look up the JetStream stream `{stream}`: {_describe(exc)}", stream=stream
        ) from exc
    else:
        subjects = info.config.subjects or []
        if STREAM_SUBJECTS not in subjects:
            _logger.warning(
                "JetStream stream `%s` exists without the subject `%s` (it has `%s`): events may not be stored",
                stream,
                STREAM_SUBJECTS,
                subjects,
            )
        return
    config = api.StreamConfig(
        name=stream,
        description="catga events",
        subjects=[STREAM_SUBJECTS],
        # Limits, not interest: a service deployed later still finds every event from the start.
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW,
    )
    try:
        await js.add_stream(config)
    except APIError as exc:
        if exc.err_code == _STREAM_NAME_IN_USE:
            return  # created by another instance in the meantime
        raise TransportError(
            f"cannot create the JetStream stream `{stream}` on `{STREAM_SUBJECTS}`: {_describe(exc)}", stream=stream
        ) from exc
    except NatsError as exc:
        raise TransportError(f"cannot create the JetStream stream `{stream}`: {_describe(exc)}", stream=stream) from exc
    _logger.info("created JetStream stream `%s` on `%s`", stream, STREAM_SUBJECTS)


async def ensure_consumer(
    js: JetStreamContext,
    *,
    stream: str,
    subject: str,
    durable: str,
    group: str,
    ack_wait: float,
    max_deliver: int,
) -> str:
    """Create (or find) the durable push consumer `durable`; return the subject it delivers to.

    The deliver subject is derived from the names, so that instances creating the consumer at the
    same time send the same configuration (which the server accepts as a no-op).
    """
    deliver_subject = f"_catga.deliver.{stream}.{durable}"
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        info = None
    except NatsError as exc:
        raise TransportError(
            f"cannot look up the JetStream consumer `{durable}` of stream `{stream}`: {_describe(exc)}",
            stream=stream,
            consumer=durable,
        ) from exc
    if info is None:
        config = api.ConsumerConfig(
            durable_name=durable,
            description=f"catga: `{group}` handling `{subject}`",
            deliver_subject=deliver_subject,
            deliver_group=group,
            # A new service starts from the beginning of the stream (API.md section 7).
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            filter_subject=subject,
        )
        try:
            info = await js.add_consumer(stream, config)
        except APIError as exc:
            if exc.err_code not in (_CONSUMER_ALREADY_EXISTS, _CONSUMER_NAME_EXISTS):
                raise TransportError(
                    f"cannot create the JetStream consumer `{durable}` for `{subject}`: {_describe(exc)}",
                    stream=stream,
                    consumer=durable,
                ) from exc
            info = await js.consumer_info(stream, durable)
        except NatsError as exc:
            raise TransportError(
                f"cannot create the JetStream consumer `{durable}` for `{subject}`: {_describe(exc)}",
                stream=stream,
                consumer=durable,
            ) from exc
    existing_group = info.config.deliver_group
    if existing_group != group:
        raise TransportError(
            f"JetStream consumer `{durable}` delivers to the group `{existing_group}`, not `{group}`: "
            "delete it (`nats consumer rm`) or subscribe with the same `queue`",
            consumer=durable,
        )
    deliver_subject_of: str | None = info.config.deliver_subject
    if deliver_subject_of is None:
        raise TransportError(f"JetStream consumer `{durable}` is a pull consumer: catga needs a push consumer")
    return deliver_subject_of


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"`{type(exc).__name__}` {text}" if text else f"`{type(exc).__name__}`"
