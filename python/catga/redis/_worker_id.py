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

The renewing, the reporting and the leasing again are `catga._worker_lease.WorkerIdLeaseBase`'s,
shared with the NATS lease; this module holds the Redis commands.

`Mediator.start()` takes one lease per process (`acquire_for_config`, shared with every other
mediator and transport of the process through `catga._worker_lease`) and `stop()` of the last one
releases it.
"""

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import redis.asyncio

from catga import _worker_lease
from catga._core import IdGenerator
from catga._errors import PersistenceError
from catga._worker_lease import SharedLease, WorkerIdLeaseBase, describe, hold
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


class RedisWorkerIdLease(WorkerIdLeaseBase):
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

    _logger = _logger  # the module's, `catga.redis`
    _error = PersistenceError
    _unreachable = (TimeoutError, RedisError)
    _shown = "prefix"

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
        if type(prefix) is not str or prefix == "":
            raise TypeError(f"`prefix` must be a non-empty str, got `{prefix!r}`")
        self._conn = RedisConnection(client, type(self).__name__)
        super().__init__(service=service, ttl=ttl, generator=generator, timeout=timeout, worker_bits=_worker_bits)
        self.prefix = prefix
        self._ttl_ms = milliseconds(self.ttl)
        self._renew_script = client.register_script(_RENEW)
        self._release_script = client.register_script(_RELEASE)

    @property
    def client(self) -> "redis.asyncio.Redis":
        """The `redis.asyncio.Redis` the lease talks through."""
        return self._conn.client

    @property
    def url(self) -> str:
        """The server, as `redis://host:port/db` (without credentials)."""
        return self._conn.where

    def key(self, worker_id: int) -> str:
        """The key that holds the lease of `worker_id`."""
        return f"{self.prefix}{worker_id}"

    # --------------------------------------------------------------------------- Redis's side

    @property
    def _place(self) -> str:
        return f"Redis at `{self.url}`"

    @property
    def _full_place(self) -> str:
        return f"{self._place} (keys `{self.prefix}*`)"

    def _details(self) -> dict[str, object]:
        return {"url": self.url, "prefix": self.prefix}

    @staticmethod
    async def _call(call: Awaitable[T], timeout: float) -> T:
        return await asyncio.wait_for(call, timeout)

    async def _claim_one(self, worker_id: int, *, renewing: bool) -> bool:
        timeout = self._renewal_timeout if renewing else self.timeout
        created = await self._call(self.client.set(self.key(worker_id), self._value, nx=True, px=self._ttl_ms), timeout)
        return bool(created)  # `None` when the key exists: leased by a live process

    async def _extend(self, worker_id: int) -> str | None:
        reply = await self._call(
            self._renew_script(keys=[self.key(worker_id)], args=[self._value, self._ttl_ms]), self._renewal_timeout
        )
        if reply == 1:
            return None
        # The key is gone (expired, deleted: nil) or another process holds it (its value).
        return reply.decode(errors="replace") if isinstance(reply, bytes) else ""

    async def _free(self, worker_id: int) -> None:
        try:
            # The script compares the value: if our lease lapsed and another process took the id, its key stays.
            await self._call(self._release_script(keys=[self.key(worker_id)], args=[self._value]), self.timeout)
        except (TimeoutError, RedisError) as exc:
            _logger.warning(
                "could not release worker id `%d` in Redis at `%s` (it expires by itself in `%g` s): %s",
                worker_id,
                self.url,
                self.ttl,
                describe(exc),
            )


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

    async def open_lease() -> SharedLease:
        # `PREFIX` read now, not bound at definition: tests may point the mediators elsewhere.
        lease = RedisWorkerIdLease(client, service=service, prefix=PREFIX)
        return await hold(lease)  # nothing to close: the client is the store's, it stays open

    await _worker_lease.acquire_shared(open_lease)
    return True
