"""Worker-id leases in Redis (API.md section 2), for processes on Redis stores without NATS.

Message ids carry an 8-bit worker id, and two processes that make ids with the same worker id in the
same millisecond make the same id: de-duplication would then drop a distinct message. A process
whose mediator keeps its state in Redis (and has no NATS transport leasing one, and no
`CATGA_WORKER_ID`) leases a free id from that Redis, the way `catga.nats.WorkerIdLease` does from
the NATS KV bucket:

- one key per worker id (`catga:worker_ids:0` .. `catga:worker_ids:255`), claimed with
  `SET key holder NX PX ttl` (atomic: it fails while the key exists), holding
  `host:pid:service:token` so an operator can see who holds what (`redis-cli --scan --pattern
  'catga:worker_ids:*'`);
- the key's own TTL expires the lease of a process that died; a live holder renews it every TTL/3
  with a Lua script that extends the key only while it still holds our value;
- a holder that finds its key gone or taken, or cannot reach Redis for longer than the TTL, logs an
  ERROR on `catga.redis` (ids made meanwhile may collide) and leases again, keeping its id if free.

`Mediator.start()` takes one lease per process (`acquire_for_config`, shared with every other
mediator and transport of the process through `catga._worker_lease`) and `stop()` of the last one
releases it.
"""

import asyncio
import logging
import math
import os
import secrets
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import redis.asyncio

from catga import _worker_lease
from catga._core import IdGenerator, default_generator
from catga._errors import PersistenceError
from catga.redis._client import RedisConnection, RedisError, RedisStore, milliseconds
from catga.redis._rate_limit import RedisRateLimit

if TYPE_CHECKING:
    from catga._config import Config

__all__ = ["DEFAULT_TTL", "PREFIX", "RedisWorkerIdLease", "acquire_for_config", "lease_client"]

_logger: Final = logging.getLogger("catga.redis")

PREFIX: Final = "catga:worker_ids:"
"""The keys of the worker-id leases: `PREFIX + str(worker_id)`."""

DEFAULT_TTL: Final = 30.0
"""Seconds after which the lease of a process that stopped renewing it (a crash) is free again."""

T = TypeVar("T")

# KEYS[1] the worker id's key; ARGV[1] our holder value, ARGV[2] the TTL in ms.
# 1 when renewed; else whatever the key holds now (another holder's value), or nil when it is gone.
_RENEW: Final = """
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return value
"""

# KEYS[1] the worker id's key; ARGV[1] our holder value. Deletes the key only while it is ours.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"`{type(exc).__name__}` {text}" if text else f"`{type(exc).__name__}`"


class RedisWorkerIdLease:
    """A worker id leased from Redis and renewed until released (`catga.nats.WorkerIdLease` on Redis).

    `acquire()` claims the first free id of the generator's worker bits starting at a random one
    (so processes starting together rarely race for the same key) with `SET prefix+id holder NX PX
    ttl`, stamps it into `generator` with `set_worker_id` (ids stay increasing), and renews it every
    TTL/3 in a background task. When every id is leased it raises `catga.PersistenceError` naming
    the prefix and the number of ids tried; a crashed holder's id frees itself within the TTL, or
    pin one with `CATGA_WORKER_ID`. When Redis cannot be reached it raises `catga.PersistenceError`
    naming the server.

    `release()` stops renewing and deletes the key if it is still ours, so the id is free at once.
    The generator keeps the id: a process that goes on making ids after `release()` risks
    collisions, so release when the process is done.

    `client` is a `redis.asyncio.Redis` the lease uses for its whole life (it does not close it).
    `generator` defaults to the process-wide one (`catga.new_id`); `timeout` bounds each call to
    Redis (and is shortened to TTL/3 for renewals). Every process of a cluster must use the same
    Redis server (and `prefix`) for their leases to exclude each other.

    >>> import redis.asyncio
    >>> lease = RedisWorkerIdLease(redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0"), service="billing")
    >>> lease
    <RedisWorkerIdLease prefix='catga:worker_ids:' released>
    """

    def __init__(
        self,
        client: "redis.asyncio.Redis",
        *,
        service: str = "",
        ttl: float = DEFAULT_TTL,
        prefix: str = PREFIX,
        generator: IdGenerator | None = None,
        timeout: float = 5.0,
        _worker_bits: int | None = None,
    ) -> None:
        if not isinstance(client, redis.asyncio.Redis):
            raise TypeError(f"`client` must be a `redis.asyncio.Redis`, got `{client!r}`")
        if not isinstance(service, str):
            raise TypeError(f"`service` must be a str, got `{service!r}`")
        if type(prefix) is not str or prefix == "":
            raise TypeError(f"`prefix` must be a non-empty str, got `{prefix!r}`")
        self._conn = RedisConnection(client, type(self).__name__)
        self._generator = default_generator() if generator is None else generator
        bits = self._generator.layout[1]
        if _worker_bits is not None:  # tests: a smaller id space, to fill it
            if not 0 <= _worker_bits <= bits:
                raise ValueError(f"`_worker_bits` must be an int from 0 to `{bits}`, got `{_worker_bits!r}`")
            bits = _worker_bits
        self.service = service
        self.ttl = _seconds("ttl", ttl)
        self.timeout = _seconds("timeout", timeout)
        self.prefix = prefix
        self.id_count = 1 << bits
        """How many worker ids the lease chooses from (`2 ** worker_bits`)."""
        # The token tells our key from one another holder wrote, also within one process.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{service}:{secrets.token_hex(4)}"
        """What the lease writes into its key: `host:pid:service:token`."""
        self._value = self.holder.encode()
        self._ttl_ms = milliseconds(self.ttl)
        self._renew_every = self.ttl / 3
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._worker_id: int | None = None
        self._held = False  # False while the id is not (known to be) ours
        self._renewal: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "released" if self._worker_id is None else f"worker_id={self._worker_id}"
        return f"<RedisWorkerIdLease prefix={self.prefix!r} {state}>"

    @property
    def client(self) -> "redis.asyncio.Redis":
        """The `redis.asyncio.Redis` the lease talks through."""
        return self._conn.client

    @property
    def url(self) -> str:
        """The server, as `redis://host:port/db` (without credentials)."""
        return self._conn.where

    @property
    def worker_id(self) -> int | None:
        """The leased worker id, or `None` before `acquire()` and after `release()`."""
        return self._worker_id

    def key(self, worker_id: int) -> str:
        """The key that holds the lease of `worker_id`."""
        return f"{self.prefix}{worker_id}"

    async def acquire(self) -> int:
        """Lease a free worker id, stamp it into the generator and start renewing it; returns it."""
        if self._worker_id is not None:
            return self._worker_id
        try:
            worker_id = await self._claim(prefer=None, timeout=self.timeout)
        except (TimeoutError, RedisError) as exc:
            raise PersistenceError(
                f"cannot lease a worker id from Redis at `{self.url}` (keys `{self.prefix}*`): {_describe(exc)} "
                "(set `CATGA_WORKER_ID` to pin one, or pass `lease_worker_id=False`)",
                url=self.url,
                prefix=self.prefix,
            ) from exc
        if worker_id is None:
            raise PersistenceError(
                f"no free worker id in Redis at `{self.url}` (keys `{self.prefix}*`): all `{self.id_count}` ids "
                f"tried are leased by live processes (a stopped process frees its id within `{self.ttl:g}` s; "
                "or pin one with `CATGA_WORKER_ID`)",
                url=self.url,
                prefix=self.prefix,
                tried=self.id_count,
            )
        self._generator.set_worker_id(worker_id)
        self._worker_id = worker_id
        self._renewal = asyncio.ensure_future(self._renew_forever())
        _logger.info("leased worker id `%d` from Redis at `%s` as `%s`", worker_id, self.url, self.holder)
        return worker_id

    async def release(self) -> None:
        """Stop renewing and free the id now (the key is deleted only if it is still ours)."""
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        worker_id, held = self._worker_id, self._held
        self._worker_id = None
        self._held = False
        if worker_id is None or not held:
            return
        try:
            # The script compares the value: if our lease lapsed and another process took the id, its key stays.
            await self._call(self._release(keys=[self.key(worker_id)], args=[self._value]), self.timeout)
        except (TimeoutError, RedisError) as exc:
            _logger.warning(
                "could not release worker id `%d` in Redis at `%s` (it expires by itself in `%g` s): %s",
                worker_id,
                self.url,
                self.ttl,
                _describe(exc),
            )

    # ------------------------------------------------------------------------------- helpers

    @staticmethod
    async def _call(call: Awaitable[T], timeout: float) -> T:
        return await asyncio.wait_for(call, timeout)

    async def _claim(self, *, prefer: int | None, timeout: float) -> int | None:
        """`SET NX` the key of the first free id (`prefer` first, then from a random offset), or `None`."""
        count = self.id_count
        start = secrets.randbelow(count)
        order = [(start + step) % count for step in range(count)]
        if prefer is not None and prefer < count:
            order.remove(prefer)
            order.insert(0, prefer)
        client = self.client
        for worker_id in order:
            if await self._call(client.set(self.key(worker_id), self._value, nx=True, px=self._ttl_ms), timeout):
                self._held = True
                return worker_id
        return None

    async def _renew_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last_renewed = loop.time()
        reported = False
        while True:
            await asyncio.sleep(self._renew_every)
            worker_id = self._worker_id
            assert worker_id is not None, "renewing a released lease"
            try:
                await self._renew_once(worker_id)
            except (TimeoutError, RedisError) as exc:
                overdue = loop.time() - last_renewed
                if overdue > self.ttl and not reported:
                    reported = True
                    _logger.error(
                        "could not renew worker id `%d` in Redis at `%s` for `%.1f` s, longer than its `%g` s TTL: "
                        "another process may lease it now, and message ids may collide: %s",
                        worker_id,
                        self.url,
                        overdue,
                        self.ttl,
                        _describe(exc),
                    )
                continue
            except Exception:  # a bug must not end the renewals silently: the id would lapse
                _logger.exception("renewing worker id `%d` in Redis at `%s` failed", worker_id, self.url)
                continue
            if self._held:
                last_renewed = loop.time()
                reported = False

    async def _renew_once(self, worker_id: int) -> None:
        # Renewals must give up before the next one is due; the first lease may take `timeout`.
        timeout = min(self.timeout, self._renew_every)
        if not self._held:  # lost earlier, and no id was free then
            await self._reclaim(worker_id, timeout)
            return
        reply = await self._call(self._renew(keys=[self.key(worker_id)], args=[self._value, self._ttl_ms]), timeout)
        if reply == 1:
            return
        # The key is gone (expired, deleted) or another process holds it: our lease is lost.
        self._held = False
        holder = reply.decode(errors="replace") if isinstance(reply, bytes) else None
        _logger.error(
            "lost the lease of worker id `%d` in Redis at `%s` (%s): message ids made meanwhile may "
            "collide with another process's; leasing one again",
            worker_id,
            self.url,
            f"now held by `{holder}`" if holder else "it expired",
        )
        await self._reclaim(worker_id, timeout)

    async def _reclaim(self, worker_id: int, timeout: float) -> None:
        """Lease again after a loss, keeping the same id if it is free."""
        new_id = await self._claim(prefer=worker_id, timeout=timeout)
        if new_id is None:
            _logger.error(
                "no free worker id in Redis at `%s` (keys `%s*`) to replace the lost `%d`: still using it, "
                "retrying in `%g` s",
                self.url,
                self.prefix,
                worker_id,
                self._renew_every,
            )
            return
        if new_id != worker_id:
            self._generator.set_worker_id(new_id)
            self._worker_id = new_id
        _logger.warning("leased worker id `%d` again from Redis at `%s`", new_id, self.url)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number of seconds, got `{value!r}`")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be positive and finite, got `{value!r}`")
    return float(value)


# ---------------------------------------------------------------------- the process-wide lease


def lease_client(config: "Config") -> "redis.asyncio.Redis | None":
    """The client of the first Redis store `config` uses (idempotency, cache, dead letters, rate
    limit, in that order), or `None` when it uses none: where a mediator leases its worker id."""
    idempotency, cache, dead_letter = config.idempotency, config.cache, config.dead_letter
    candidates: list[Any] = [
        None if idempotency is None else idempotency.store,
        None if cache is None else cache.store,
        None if dead_letter is None else dead_letter.store,
        config.rate_limit,
    ]
    for candidate in candidates:
        if isinstance(candidate, RedisStore | RedisRateLimit):
            client: redis.asyncio.Redis = candidate.client
            return client
    return None


class _Held:
    """The process-wide lease (`catga._worker_lease`) when Redis leased it."""

    def __init__(self, lease: RedisWorkerIdLease) -> None:
        self.lease = lease

    @property
    def worker_id(self) -> int | None:
        return self.lease.worker_id

    @property
    def backend(self) -> str:
        return f"Redis at `{self.lease.url}` (keys `{self.lease.prefix}*`)"

    async def close(self) -> None:
        await self.lease.release()  # the client is the store's: it stays open


async def acquire_for_config(config: "Config", *, service: str = "") -> bool:
    """Take a reference to the process's worker-id lease for a mediator built with `config`.

    Nothing when `config` uses no Redis store (`False`). Else `True`, sharing the lease the process
    holds (from NATS or Redis, whichever came first), or leasing one from the first Redis store's
    server, through that store's client (one command every TTL/3; the lease never closes it). A
    failure raises `catga.PersistenceError` and takes no reference. Pair a `True` with
    `catga._worker_lease.release_shared()`.
    """
    client = lease_client(config)
    if client is None:
        return False

    async def open_lease() -> _Held:
        # `PREFIX` read now, not bound at definition: tests may point the mediators elsewhere.
        lease = RedisWorkerIdLease(client, service=service, prefix=PREFIX)
        await lease.acquire()
        return _Held(lease)

    await _worker_lease.acquire_shared(open_lease)
    return True
