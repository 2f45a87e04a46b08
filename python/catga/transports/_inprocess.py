"""`InProcessTransport`: the transport protocol in memory, for tests and single-process apps.

It behaves like a broker would, minus the network: handlers run in their own tasks (a slow
subscriber never blocks a publisher, a requester that gives up does not cancel the responder),
and each delivery gets its own copy of the headers (a real transport would have serialised them).
Subjects match exactly; there are no wildcards.
"""

import asyncio
import logging
from typing import Final

from catga._errors import Timeout, TransportError
from catga.transports._base import EnvelopeHandler, Subscription, Transport
from catga.transports._envelope import DELIVERY_HEADER, FINAL_DELIVERY_HEADER, Envelope

__all__ = ["InProcessTransport"]

_logger: Final = logging.getLogger("catga.transports")


class _InProcessSubscription(Subscription):
    __slots__ = ("_transport", "handler", "queue", "subject")

    def __init__(self, transport: "InProcessTransport", subject: str, queue: str | None, handler: EnvelopeHandler):
        self._transport = transport
        self.subject = subject
        self.queue = queue
        self.handler = handler

    async def unsubscribe(self) -> None:
        self._transport._remove(self)

    def __repr__(self) -> str:
        return f"<InProcessSubscription subject={self.subject!r} queue={self.queue!r}>"


class InProcessTransport(Transport):
    """Delivers envelopes between subscribers of one process, with the semantics of `Transport`.

    Requests go to the first subscriber of the subject, or, when that is a queue group, to its
    members in turn (round robin). Subscriptions may be made before `start()`; they receive once
    it is started. `stop()` stops delivering, waits up to `drain_timeout` seconds for running
    handlers (then cancels them) and drops the subscriptions. `flush()` waits for the handlers of
    everything published so far.

    >>> import asyncio
    >>> async def main() -> bytes:
    ...     async def echo(envelope: Envelope) -> Envelope:
    ...         return Envelope({}, envelope.body.upper())
    ...     async with InProcessTransport() as transport:
    ...         await transport.subscribe("catga.req.echo", echo, queue="echo")
    ...         reply = await transport.request("catga.req.echo", Envelope({}, b"hi"), timeout=1.0)
    ...     return reply.body
    >>> asyncio.run(main())
    b'HI'
    """

    def __init__(self, *, drain_timeout: float = 5.0) -> None:
        if drain_timeout <= 0:
            raise ValueError(f"`drain_timeout` must be positive, got `{drain_timeout!r}`")
        self.drain_timeout = drain_timeout
        self._subscriptions: dict[str, list[_InProcessSubscription]] = {}
        # (subject, queue) -> deliveries made to that group so far: picks the next member.
        self._turns: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[Envelope | None]] = set()
        self._started = False

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<InProcessTransport {state}, {sum(map(len, self._subscriptions.values()))} subscriptions>"

    @property
    def connected(self) -> bool:
        return self._started

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        self._started = False
        await self._drain()
        self._subscriptions.clear()
        self._turns.clear()

    async def flush(self) -> None:
        """Wait until every handler started so far (and any they start) has finished."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # --------------------------------------------------------------------------- delivering

    async def request(self, subject: str, envelope: Envelope, *, timeout: float) -> Envelope:
        if timeout <= 0:
            raise ValueError(f"`timeout` must be positive, got `{timeout!r}`")
        self._check_started(f"send a request to `{subject}`")
        targets = self._targets(subject)
        if not targets:
            raise TransportError(f"no subscriber for the request on `{subject}`", subject=subject)
        task = self._deliver(targets[0], envelope, reraise=True)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            # The responder keeps running, as a remote one would; its late reply is dropped.
            raise Timeout(f"no reply to the request on `{subject}` within `{timeout:g}` s", subject=subject)
        if task.cancelled():
            raise TransportError(f"the subscriber of `{subject}` was cancelled before replying", subject=subject)
        error = task.exception()
        if error is not None:
            raise TransportError(
                f"the subscriber of `{subject}` failed with `{type(error).__qualname__}` before replying",
                subject=subject,
            ) from error
        reply = task.result()
        if reply is None:
            raise TransportError(f"the subscriber of `{subject}` sent no reply", subject=subject)
        return reply

    async def publish(self, subject: str, envelope: Envelope) -> None:
        self._check_started(f"publish to `{subject}`")
        for target in self._targets(subject):
            self._deliver(target, envelope, reraise=False)

    async def subscribe(
        self,
        subject: str,
        handler: EnvelopeHandler,
        *,
        queue: str | None = None,
    ) -> Subscription:
        if not subject:
            raise ValueError(f"`subject` must be non-empty, got `{subject!r}`")
        if queue is not None and not queue:
            raise ValueError(f"`queue` must be non-empty or `None`, got `{queue!r}`")
        subscription = _InProcessSubscription(self, subject, queue, handler)
        self._subscriptions.setdefault(subject, []).append(subscription)
        return subscription

    # ------------------------------------------------------------------------------ helpers

    def _check_started(self, action: str) -> None:
        if not self._started:
            raise TransportError(f"cannot {action}: the transport is not started (call `await start()`)")

    def _targets(self, subject: str) -> list[_InProcessSubscription]:
        """One subscription per plain subscriber and per queue group, in subscription order."""
        targets: list[_InProcessSubscription] = []
        groups: dict[str, list[_InProcessSubscription]] = {}
        for subscription in self._subscriptions.get(subject, ()):
            if subscription.queue is None:
                targets.append(subscription)
            elif subscription.queue in groups:
                groups[subscription.queue].append(subscription)
            else:
                groups[subscription.queue] = [subscription]
                targets.append(subscription)  # the group's place; replaced by its turn below
        for index, target in enumerate(targets):
            if target.queue is not None:
                members = groups[target.queue]
                key = (subject, target.queue)
                turn = self._turns.get(key, 0)
                self._turns[key] = turn + 1
                targets[index] = members[turn % len(members)]
        return targets

    def _deliver(
        self, subscription: _InProcessSubscription, envelope: Envelope, *, reraise: bool
    ) -> "asyncio.Task[Envelope | None]":
        # Delivered once and never again: every delivery is the final one (what a core NATS one is).
        copy = Envelope({**envelope.headers, DELIVERY_HEADER: "1", FINAL_DELIVERY_HEADER: "1"}, envelope.body)
        task = asyncio.get_running_loop().create_task(self._run(subscription, copy, reraise))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, subscription: _InProcessSubscription, envelope: Envelope, reraise: bool) -> Envelope | None:
        try:
            return await subscription.handler(envelope)
        except Exception:
            # Never to the publisher: a broker does not tell it either. A requester learns of it
            # from the task (as a TransportError), so it does not wait out its timeout; a published
            # delivery swallows it, or asyncio would report an exception nobody retrieved.
            _logger.exception(
                "subscriber of `%s` failed",
                subscription.subject,
                extra={"subject": subscription.subject, "queue": subscription.queue},
            )
            if reraise:
                raise
            return None

    def _remove(self, subscription: _InProcessSubscription) -> None:
        subscriptions = self._subscriptions.get(subscription.subject)
        if subscriptions is not None and subscription in subscriptions:
            subscriptions.remove(subscription)
            if not subscriptions:
                del self._subscriptions[subscription.subject]

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            _logger.warning(
                "cancelled `%d` subscriber handlers still running after `%g` s", len(pending), self.drain_timeout
            )
            await asyncio.wait(pending)
