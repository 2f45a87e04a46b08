"""`RedisRateLimit`: one token bucket shared by every process of a cluster."""

import threading
import weakref
from typing import Any, Final

from catga._messages import wire_name
from catga.behaviors._builtins import RateLimit
from catga.redis import _scripts
from catga.redis._client import RedisConnection, RedisError

__all__ = ["RedisBucket", "RedisRateLimit"]

_TINY: Final = 1e-9  # a refusal always asks for a wait > 0, even one the server rounded to 0


class RedisBucket:
    """One token bucket on the server (key `key`): `await bucket.try_acquire(n)`.

    The bucket state is one key holding the moment the bucket is empty-to-full again (GCRA), read
    and moved by one Lua script on the server's clock (`TIME`): every process sharing the key
    shares the bucket, whatever their own clocks say. An absent key is a full bucket.
    """

    __slots__ = ("_conn", "_script", "burst", "key", "rate")

    def __init__(self, conn: RedisConnection, script: Any, key: str, rate: float, burst: float) -> None:
        self._conn = conn
        self._script = script
        self.key = key
        self.rate = rate
        self.burst = burst

    async def try_acquire(self, n: int = 1) -> float:
        """Take `n` tokens: `0.0` when taken, else the seconds until `n` are available (nothing taken).

        `n` above the burst can never succeed: `ValueError`. A server error raises
        `catga.PersistenceError` naming the server.
        """
        if type(n) is not int or n < 1:  # not a bool either
            raise ValueError(f"`n` must be an int >= 1, got `{n!r}`")
        if n > self.burst:
            raise ValueError(f"`n` `{n}` exceeds the burst `{self.burst!r}`: it can never be acquired")
        try:
            reply = await self._script(keys=[self.key], args=[repr(self.rate), repr(self.burst), n])
        except RedisError as exc:
            self._conn.fail(f"take a token from the rate limit `{self.key}`", exc)
        if reply == 0:
            return 0.0
        return max(float(reply), _TINY)

    def __repr__(self) -> str:
        return f"RedisBucket({self.key!r}, rate={self.rate!r}, burst={self.burst!r})"


class RedisRateLimit(RateLimit):
    """The cluster-wide `RateLimit`: a token bucket on Redis, shared by every process using `key`.

    Usable wherever `catga.behaviors.RateLimit` is (`Config(rate_limit=RedisRateLimit(...))`), with
    the same meaning: `rate` tokens per second, at most `burst`, starting full, refilled
    continuously; an empty bucket fails the message with `catga.RateLimited(retry_after=...)`, or
    with `wait=True` waits up to `max_wait` seconds (`None`: as long as it takes). `per_type=True`
    keeps one bucket per message type, under `key + ":" + wire name`. The time is the server's, so
    processes with drifting clocks still share one bucket; every process should use the same
    `rate` and `burst` for a key (each applies its own to the shared state).

    `url_or_client` is a `redis://` URL (close the client made from it with `aclose()`) or a
    `redis.asyncio.Redis` (yours). The bucket is async, so the pipeline runs it as a Python layer
    instead of the core's native hook: one Redis round trip per message.

    >>> limit = RedisRateLimit("redis://127.0.0.1:6379/0", rate=100.0, burst=20.0)
    >>> limit
    RedisRateLimit(url='redis://127.0.0.1:6379/0', rate=100.0, burst=20.0, key='catga:rate:default', \
wait=False, max_wait=None, per_type=False)
    >>> RedisRateLimit("redis://127.0.0.1:6379/0", rate=0, burst=1)
    Traceback (most recent call last):
    ...
    ValueError: `rate` must be positive, got `0`
    """

    __slots__ = ("_bucket", "_buckets", "_conn", "_lock", "_script", "key")
    _params = ("url", "rate", "burst", "key", "wait", "max_wait", "per_type")  # type: ignore[assignment]

    key: str

    def __init__(
        self,
        url_or_client: Any,
        rate: float,
        burst: float,
        *,
        key: str = "catga:rate:default",
        wait: bool = False,
        max_wait: float | None = None,
        per_type: bool = False,
    ) -> None:
        super().__init__(rate, burst, wait, max_wait, per_type)
        if type(key) is not str or key == "":
            raise TypeError(f"`key` must be a non-empty str, got `{key!r}`")
        self.key = key
        self._conn = RedisConnection(url_or_client, type(self).__name__)
        self._script = self._conn.client.register_script(_scripts.RATE_LIMIT)
        self._bucket = RedisBucket(self._conn, self._script, key, self.rate, self.burst)
        self._buckets: weakref.WeakKeyDictionary[type, RedisBucket] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The server, as `redis://host:port/db` (without credentials)."""
        return self._conn.where

    @property
    def client(self) -> Any:
        """The `redis.asyncio.Redis` the bucket talks through."""
        return self._conn.client

    async def try_acquire(self, n: int = 1) -> float:
        """Take `n` tokens from the bucket under `key`: `0.0` when taken, else seconds to wait.

        With `per_type=True` the pipeline uses one bucket per type (`remote_bucket`); this one
        is still the bucket under `key` itself.
        """
        return await self._bucket.try_acquire(n)

    def remote_bucket(self, message_type: type) -> RedisBucket:
        """The bucket the pipeline takes a token from for `message_type` (what the planner in
        `catga.behaviors._hooks` calls: a rate limit with this method is run as an async layer)."""
        if not self.per_type:
            return self._bucket
        with self._lock:  # mediators on several threads may compile routes at once
            bucket = self._buckets.get(message_type)
            if bucket is None:
                key = f"{self.key}:{wire_name(message_type)}"
                bucket = self._buckets[message_type] = RedisBucket(self._conn, self._script, key, self.rate, self.burst)
            return bucket

    async def ping(self) -> bool:
        """`True` when the server answers; `catga.PersistenceError` naming the server when not."""
        return await self._conn.ping()

    async def aclose(self) -> None:
        """Close the connection pool, if it was made from a URL."""
        await self._conn.aclose()
