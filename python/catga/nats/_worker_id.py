"""Worker-id leases in a NATS JetStream key-value bucket (API.md section 2).

Message ids carry an 8-bit worker id, and two processes that make ids with the same worker id in
the same millisecond make the same id: de-duplication would then drop a distinct message. Random
worker ids collide too often (20 processes share one with ~50 % probability), so a process on NATS
that does not pin its id with `CATGA_WORKER_ID` leases a free one from the bucket `catga_worker_ids`:

- one key per worker id (`"0"` .. `"255"`), claimed with `create` (atomic: it fails while the key
  exists), holding `host:pid:service:token` so an operator can see who holds what;
- the bucket's TTL (`max_age`) expires the key of a process that died; a live holder renews its key
  every TTL/3 with `update(last=revision)`, which fails if anyone else wrote the key since;
- a holder that finds its key gone or taken, or cannot reach the bucket for longer than the TTL,
  logs an ERROR on `catga.nats` (ids made meanwhile may collide) and leases again.

The renewing, the reporting and the leasing again are `catga._worker_lease.WorkerIdLeaseBase`'s,
shared with the Redis lease; this module holds the bucket's operations.

`NatsTransport.start()` takes one lease per process (shared by every transport and mediator of the
process, with a reference count: `catga._worker_lease`) and `stop()` of the last one releases it;
see `acquire_shared`. A process that already holds a lease from Redis shares that one.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from catga import _worker_lease
from catga._core import IdGenerator
from catga._errors import TransportError
from catga._worker_lease import SharedLease, WorkerIdLeaseBase, describe, hold, worker_id_pinned

__all__ = ["BUCKET", "DEFAULT_TTL", "WorkerIdLease", "acquire_shared", "release_shared", "worker_id_pinned"]

_logger: Final = logging.getLogger("catga.nats")

BUCKET: Final = "catga_worker_ids"
"""The key-value bucket that holds the worker-id leases of every process on the NATS cluster."""

DEFAULT_TTL: Final = 30.0
"""Seconds after which the lease of a process that stopped renewing it (a crash) is free again."""

# JetStream API error code: the stream (bucket) exists with another configuration.
_STREAM_NAME_IN_USE: Final = 10058
# JetStream API error codes: the expected last revision of the key did not match.
_WRONG_LAST_SEQUENCE: Final = (10071, 10164)


class WorkerIdLease(WorkerIdLeaseBase):
    """A worker id leased from a NATS JetStream key-value bucket and renewed until released.

    `acquire()` creates the bucket if missing (with `ttl` as its `max_age`; an existing bucket
    keeps its own TTL, which then sets the renewal pace), claims the first free id of the
    generator's worker bits starting at a random one (so processes starting together rarely race
    for the same key), stamps it into `generator` with `set_worker_id` (ids stay increasing), and
    renews it every TTL/3 in a background task. When every id is leased it raises
    `catga.TransportError` naming the bucket and the number of ids tried; that error is retryable,
    since a crashed holder's id frees itself within the TTL.

    `release()` stops renewing and deletes the key if it is still ours, so the id is free at once.
    The generator keeps the id: a process that goes on making ids after `release()` risks
    collisions, so release when the process is done.

    `nc` is a connected nats-py client the lease uses for its whole life (it does not close it).
    `generator` defaults to the process-wide one (`catga.new_id`); `timeout` bounds each call to
    the bucket (and is shortened to TTL/3 for renewals).
    """

    _logger = _logger  # the module's, `catga.nats`
    _error = TransportError
    # nats-py raises its own `TimeoutError` (a `nats.errors.Error`) for a call that timed out.
    _unreachable = (TimeoutError, nats.errors.Error)
    _shown = "bucket"

    def __init__(
        self,
        nc: Client,
        *,
        service: str = "",
        ttl: float = DEFAULT_TTL,
        generator: IdGenerator | None = None,
        timeout: float = 5.0,
        _bucket: str = BUCKET,
        _worker_bits: int | None = None,
    ) -> None:
        if not isinstance(nc, Client):
            raise TypeError(f"`nc` must be a nats-py `Client`, got `{nc!r}`")
        super().__init__(service=service, ttl=ttl, generator=generator, timeout=timeout, worker_bits=_worker_bits)
        self._nc = nc
        self.bucket = _bucket
        self._first_kv: KeyValue | None = None  # calls that may take `timeout`: the first lease
        self._kv: KeyValue | None = None  # calls that give up within `_renewal_timeout`: the renewals
        self._revision: int | None = None  # of our key, while it is held

    # ------------------------------------------------------------------------ the bucket's side

    @property
    def _place(self) -> str:
        return f"the NATS KV bucket `{self.bucket}`"

    def _details(self) -> dict[str, object]:
        return {"bucket": self.bucket}

    def _advice(self, exc: Exception) -> str:
        # A server without JetStream answers the bucket's API with "no responders" (a 503).
        no_jetstream = isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError)
        return "the server has no JetStream (start it with `-js`); " if no_jetstream else ""

    def _lease_ttl(self) -> float:
        return self._renew_every * 3  # the bucket's TTL, which may not be ours (see `_prepare`)

    async def _prepare(self) -> None:
        js = self._nc.jetstream(timeout=self.timeout)
        try:
            kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(bucket=self.bucket, ttl=self.ttl, history=1)
            except nats.js.errors.APIError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                kv = await js.key_value(self.bucket)  # another process created it meanwhile
        status = await kv.status()
        ttl = status.ttl
        if not ttl:
            raise TransportError(
                f"the NATS KV bucket `{self.bucket}` has no TTL, so the id of a crashed process would never be "
                "freed: delete the bucket (catga recreates it with one) or pin ids with `CATGA_WORKER_ID`",
                bucket=self.bucket,
            )
        # The bucket's TTL rules, whoever created it: renew well within it.
        self._renew_every = ttl / 3
        short = self._nc.jetstream(timeout=self._renewal_timeout)
        self._kv = await short.key_value(self.bucket)
        self._first_kv = kv

    async def _claim_one(self, worker_id: int, *, renewing: bool) -> bool:
        kv = self._kv if renewing else self._first_kv
        assert kv is not None, "claiming from a bucket that was never opened"
        try:
            self._revision = await kv.create(str(worker_id), self._value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False  # leased by a live process
        return True

    async def _extend(self, worker_id: int) -> str | None:
        kv = self._kv
        assert kv is not None, "renewing a lease that was never taken"
        try:
            self._revision = await kv.update(str(worker_id), self._value, last=self._revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return await self._holder_now(kv, worker_id)
        return None

    async def _holder_now(self, kv: KeyValue, worker_id: int) -> str | None:
        """The key changed under us: ours after all (a renewal that timed out but landed), or lost."""
        try:
            entry = await kv.get(str(worker_id))
        except nats.js.errors.KeyNotFoundError:  # expired (or deleted): nobody holds it now
            return ""
        if entry.value == self._value and entry.revision is not None:
            self._revision = entry.revision
            return None
        return (entry.value or b"").decode(errors="replace")

    async def _free(self, worker_id: int) -> None:
        revision, self._revision, kv = self._revision, None, self._kv
        assert revision is not None, "a held lease knows its key's revision"
        assert kv is not None, "a held lease has its bucket"
        if not self._nc.is_connected:  # waiting for a reconnect would hold up a shutdown
            _logger.warning(
                "could not release worker id `%d` in the NATS KV bucket `%s` (not connected): it expires in `%g` s",
                worker_id,
                self.bucket,
                self._lease_ttl(),
            )
            return
        try:
            # `last`: if our lease lapsed and another process took the id, its key stays.
            await kv.delete(str(worker_id), last=revision)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                _logger.warning("could not release worker id `%d`: %s", worker_id, describe(exc))
        except (TimeoutError, nats.errors.Error) as exc:
            _logger.warning("could not release worker id `%d` (it expires by itself): %s", worker_id, describe(exc))


# ---------------------------------------------------------------------- the process-wide lease


async def acquire_shared(
    servers: Sequence[str],
    connect_options: Mapping[str, Any],
    *,
    service: str,
    timeout: float,
) -> int:
    """Take a reference to the process's worker-id lease, leasing it first if nobody holds it.

    One lease per process: every transport (and mediator) stamps the same worker id, and a lease
    the process already holds from another backend (Redis) is shared, not doubled. A new lease lives
    on a connection of its own (the servers and options of the first transport, without its
    callbacks), so it outlives whichever transport took it. Pair every call with `release_shared()`.
    """
    return await _worker_lease.acquire_shared(
        lambda: _lease(servers, connect_options, service=service, timeout=timeout)
    )


async def release_shared() -> None:
    """Drop a reference taken by `acquire_shared()`; the last one releases the lease."""
    await _worker_lease.release_shared()


def shared_worker_id() -> int | None:
    """The worker id of the process-wide lease, or `None` when none is held (for tests and tools)."""
    return _worker_lease.shared_worker_id()


async def _lease(
    servers: Sequence[str], connect_options: Mapping[str, Any], *, service: str, timeout: float
) -> SharedLease:
    options = {key: value for key, value in connect_options.items() if not key.endswith("_cb")}
    options.setdefault("allow_reconnect", True)
    options.setdefault("max_reconnect_attempts", -1)
    options.setdefault("reconnect_time_wait", 1)
    quiet = _quiet(service)
    options.update(
        name=f"{service}/worker-id", error_cb=quiet, disconnected_cb=quiet, reconnected_cb=quiet, closed_cb=quiet
    )
    nc = Client()
    try:
        await asyncio.wait_for(nc.connect(list(servers), **options), timeout)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        await _close_quietly(nc)
        raise TransportError(
            f"cannot connect to NATS at `{', '.join(servers)}` to lease a worker id: {describe(exc)}",
            servers=list(servers),
        ) from exc
    # `BUCKET` read now, not bound at definition: tests point the transports at a bucket of their own.
    lease = WorkerIdLease(nc, service=service, timeout=timeout, _bucket=BUCKET)
    # The connection is the lease's own: closed with it, or at once if it leases nothing.
    return await hold(lease, closing=lambda: _close_quietly(nc))


def _quiet(service: str) -> Callable[..., Awaitable[None]]:
    # The transports' own connections report disconnects; the lease reports only a lapse (ERROR).
    async def callback(*args: Any) -> None:
        _logger.debug("worker-id lease connection of `%s`: %s", service, args[0] if args else "event")

    return callback


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.close()
    except Exception as exc:  # closing is best effort: the socket may already be gone
        _logger.debug("closing the NATS connection of the worker-id lease failed: %s", describe(exc))
