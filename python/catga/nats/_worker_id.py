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

`NatsTransport.start()` takes one lease per process (shared by every transport and mediator of the
process, with a reference count: `catga._worker_lease`) and `stop()` of the last one releases it;
see `acquire_shared`. A process that already holds a lease from Redis shares that one.
"""

import asyncio
import logging
import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from catga import _worker_lease
from catga._core import IdGenerator, default_generator
from catga._errors import TransportError
from catga._worker_lease import worker_id_pinned

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


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"`{type(exc).__name__}` {text}" if text else f"`{type(exc).__name__}`"


class WorkerIdLease:
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
        if not isinstance(service, str):
            raise TypeError(f"`service` must be a str, got `{service!r}`")
        self._generator = default_generator() if generator is None else generator
        bits = self._generator.layout[1]
        if _worker_bits is not None:  # tests: a smaller id space, to fill it
            if not 0 <= _worker_bits <= bits:
                raise ValueError(f"`_worker_bits` must be an int from 0 to `{bits}`, got `{_worker_bits!r}`")
            bits = _worker_bits
        self._nc = nc
        self.service = service
        self.ttl = _seconds("ttl", ttl)
        self.timeout = _seconds("timeout", timeout)
        self.bucket = _bucket
        self.id_count = 1 << bits
        """How many worker ids the lease chooses from (`2 ** worker_bits`)."""
        # The token tells our key from one another holder wrote, also within one process.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{service}:{secrets.token_hex(4)}"
        """What the lease writes into its key: `host:pid:service:token`."""
        self._value = self.holder.encode()
        self._kv: KeyValue | None = None
        self._renew_every = self.ttl / 3
        self._worker_id: int | None = None
        self._revision: int | None = None  # None while the id is not (known to be) ours
        self._renewal: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "released" if self._worker_id is None else f"worker_id={self._worker_id}"
        return f"<WorkerIdLease bucket={self.bucket!r} {state}>"

    @property
    def worker_id(self) -> int | None:
        """The leased worker id, or `None` before `acquire()` and after `release()`."""
        return self._worker_id

    async def acquire(self) -> int:
        """Lease a free worker id, stamp it into the generator and start renewing it; returns it."""
        if self._worker_id is not None:
            return self._worker_id
        try:
            kv = await self._bucket()
            worker_id = await self._claim(kv, prefer=None)
        except nats.errors.Error as exc:
            # A server without JetStream answers the bucket's API with "no responders" (a 503).
            no_jetstream = isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError)
            why = "the server has no JetStream (start it with `-js`); " if no_jetstream else ""
            raise TransportError(
                f"cannot lease a worker id from the NATS KV bucket `{self.bucket}`: {_describe(exc)} "
                f"({why}set `CATGA_WORKER_ID` to pin one, or pass `lease_worker_id=False`)",
                bucket=self.bucket,
            ) from exc
        if worker_id is None:
            raise TransportError(
                f"no free worker id in the NATS KV bucket `{self.bucket}`: all `{self.id_count}` ids tried are "
                f"leased by live processes (a stopped process frees its id within `{self._bucket_ttl():g}` s; "
                "or pin one with `CATGA_WORKER_ID`)",
                bucket=self.bucket,
                tried=self.id_count,
            )
        self._generator.set_worker_id(worker_id)
        self._worker_id = worker_id
        self._renewal = asyncio.ensure_future(self._renew_forever())
        _logger.info("leased worker id `%d` from the NATS KV bucket `%s` as `%s`", worker_id, self.bucket, self.holder)
        return worker_id

    async def release(self) -> None:
        """Stop renewing and free the id now (the key is deleted only if it is still ours)."""
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        worker_id, revision, kv = self._worker_id, self._revision, self._kv
        self._worker_id = self._revision = None
        if worker_id is None or revision is None or kv is None:
            return
        if not self._nc.is_connected:  # waiting for a reconnect would hold up a shutdown
            _logger.warning(
                "could not release worker id `%d` in the NATS KV bucket `%s` (not connected): it expires in `%g` s",
                worker_id,
                self.bucket,
                self._bucket_ttl(),
            )
            return
        try:
            # `last`: if our lease lapsed and another process took the id, its key stays.
            await kv.delete(str(worker_id), last=revision)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                _logger.warning("could not release worker id `%d`: %s", worker_id, _describe(exc))
        except (TimeoutError, nats.errors.Error) as exc:
            _logger.warning("could not release worker id `%d` (it expires by itself): %s", worker_id, _describe(exc))

    # ------------------------------------------------------------------------------- helpers

    async def _bucket(self) -> KeyValue:
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
        # Renewals must give up before the next one is due; the first lease may take `timeout`.
        short = self._nc.jetstream(timeout=min(self.timeout, self._renew_every))
        self._kv = await short.key_value(self.bucket)
        return kv

    def _bucket_ttl(self) -> float:
        return self._renew_every * 3

    async def _claim(self, kv: KeyValue, *, prefer: int | None) -> int | None:
        """Create the key of the first free id (`prefer` first, then from a random offset), or `None`."""
        count = self.id_count
        start = secrets.randbelow(count)
        order = [(start + step) % count for step in range(count)]
        if prefer is not None and prefer < count:
            order.remove(prefer)
            order.insert(0, prefer)
        for worker_id in order:
            try:
                self._revision = await kv.create(str(worker_id), self._value)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # leased by a live process
            return worker_id
        return None

    async def _renew_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last_renewed = loop.time()
        reported = False
        while True:
            await asyncio.sleep(self._renew_every)
            kv, worker_id = self._kv, self._worker_id
            assert kv is not None, "renewing a lease that was never taken"
            assert worker_id is not None, "renewing a released lease"
            try:
                await self._renew_once(kv, worker_id)
            except (TimeoutError, nats.errors.Error) as exc:
                overdue = loop.time() - last_renewed
                if overdue > self._bucket_ttl() and not reported:
                    reported = True
                    _logger.error(
                        "could not renew worker id `%d` in the NATS KV bucket `%s` for `%.1f` s, longer than its "
                        "`%g` s TTL: another process may lease it now, and message ids may collide: %s",
                        worker_id,
                        self.bucket,
                        overdue,
                        self._bucket_ttl(),
                        _describe(exc),
                    )
                continue
            except Exception:  # a bug must not end the renewals silently: the id would lapse
                _logger.exception("renewing worker id `%d` in the NATS KV bucket `%s` failed", worker_id, self.bucket)
                continue
            if self._revision is not None:
                last_renewed = loop.time()
                reported = False

    async def _renew_once(self, kv: KeyValue, worker_id: int) -> None:
        if self._revision is None:  # lost earlier, and no id was free then
            await self._reclaim(kv, worker_id)
            return
        try:
            self._revision = await kv.update(str(worker_id), self._value, last=self._revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            await self._lost(kv, worker_id)

    async def _lost(self, kv: KeyValue, worker_id: int) -> None:
        """The key changed under us: ours after all (a renewal that timed out but landed), or lost."""
        key = str(worker_id)
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # expired (or deleted): nobody holds it now
            holder = None
        else:
            if entry.value == self._value and entry.revision is not None:
                self._revision = entry.revision
                return
            holder = (entry.value or b"").decode(errors="replace")
        self._revision = None
        _logger.error(
            "lost the lease of worker id `%d` in the NATS KV bucket `%s` (%s): message ids made meanwhile may "
            "collide with another process's; leasing one again",
            worker_id,
            self.bucket,
            f"now held by `{holder}`" if holder else "it expired",
        )
        await self._reclaim(kv, worker_id)

    async def _reclaim(self, kv: KeyValue, worker_id: int) -> None:
        """Lease again after a loss, keeping the same id if it is free."""
        new_id = await self._claim(kv, prefer=worker_id)
        if new_id is None:
            _logger.error(
                "no free worker id in the NATS KV bucket `%s` to replace the lost `%d`: still using it, "
                "retrying in `%g` s",
                self.bucket,
                worker_id,
                self._renew_every,
            )
            return
        if new_id != worker_id:
            self._generator.set_worker_id(new_id)
            self._worker_id = new_id
        _logger.warning("leased worker id `%d` again from the NATS KV bucket `%s`", new_id, self.bucket)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number of seconds, got `{value!r}`")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be positive and finite, got `{value!r}`")
    return float(value)


# ---------------------------------------------------------------------- the process-wide lease


class _Held:
    """The process-wide lease (`catga._worker_lease`) when NATS leased it: the lease and its connection."""

    def __init__(self, lease: WorkerIdLease, nc: Client) -> None:
        self.lease = lease
        self.nc = nc

    @property
    def worker_id(self) -> int | None:
        return self.lease.worker_id

    @property
    def backend(self) -> str:
        return f"the NATS KV bucket `{self.lease.bucket}`"

    async def close(self) -> None:
        try:
            await self.lease.release()
        finally:
            await _close_quietly(self.nc)


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


async def _lease(servers: Sequence[str], connect_options: Mapping[str, Any], *, service: str, timeout: float) -> _Held:
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
            f"cannot connect to NATS at `{', '.join(servers)}` to lease a worker id: {_describe(exc)}",
            servers=list(servers),
        ) from exc
    # `BUCKET` read now, not bound at definition: tests point the transports at a bucket of their own.
    lease = WorkerIdLease(nc, service=service, timeout=timeout, _bucket=BUCKET)
    try:
        await lease.acquire()
    except BaseException:
        await _close_quietly(nc)
        raise
    return _Held(lease, nc)


def _quiet(service: str) -> Callable[..., Awaitable[None]]:
    # The transports' own connections report disconnects; the lease reports only a lapse (ERROR).
    async def callback(*args: Any) -> None:
        _logger.debug("worker-id lease connection of `%s`: %s", service, args[0] if args else "event")

    return callback


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.close()
    except Exception as exc:  # closing is best effort: the socket may already be gone
        _logger.debug("closing the NATS connection of the worker-id lease failed: %s", _describe(exc))
