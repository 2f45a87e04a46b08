"""`RedisCacheStore`: cached query results shared by every process of a cluster."""

from collections.abc import Callable
from typing import Any, cast

from catga.redis import _scripts
from catga.redis._client import RedisError, RedisStore, milliseconds, positive_seconds
from catga.redis._codec import decode_value, encode_value

__all__ = ["RedisCacheStore"]


class RedisCacheStore(RedisStore):
    """The `catga.stores.CacheStore` on Redis: one string per entry, one sorted set per group.

    An entry is the string `<prefix>{<group>}:<key>` holding the msgpack-encoded value with its
    own `PX` TTL; a group also keeps the sorted set `<prefix>{<group>}` of its keys, scored by
    expiry (server milliseconds). The `{group}` hash tag keeps a group's keys in one cluster slot.

    Why a set per group rather than a key pattern: `invalidate_group` is then one Lua script that
    deletes every listed entry and the set itself. A script runs alone on the server, so no `get`
    that starts after it returns can see an entry of the group, and a `put` (also a script) lands
    wholly before or wholly after it; a `SCAN` over a pattern would be neither atomic nor bounded
    by the group's size. Each `put` also drops the set's expired keys, so a group that is never
    invalidated does not grow beyond its live entries.

    `get` is a plain `GET`: one round trip, no script.

    >>> store = RedisCacheStore("redis://127.0.0.1:6379/0")
    >>> store
    RedisCacheStore('redis://127.0.0.1:6379/0', prefix='catga:cache:')

    Values are encoded as the idempotency store's results are (`catga.redis._codec`); one that
    cannot be encoded raises `catga.SerializationError` (the cache layer then logs a warning and
    the query still succeeds). `hits` and `misses` count this object's lookups.
    """

    __slots__ = ("_drop", "_drop_group", "_live_keys", "_put", "hits", "misses", "prefix")

    prefix: str
    hits: int
    misses: int

    def __init__(self, url_or_client: Any, *, prefix: str = "catga:cache:") -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a str, got `{prefix!r}`")
        super().__init__(url_or_client)
        self.prefix = prefix
        self._put = self.client.register_script(_scripts.CACHE_PUT)
        self._drop_group = self.client.register_script(_scripts.CACHE_DROP_GROUP)
        self._live_keys = self.client.register_script(_scripts.CACHE_LIVE_KEYS)
        self._drop = self.client.register_script(_scripts.CACHE_DROP)
        self.hits = 0
        self.misses = 0

    def _group_key(self, group: int) -> bytes:
        return f"{self.prefix}{{{group}}}".encode()

    def _entry_prefix(self, group: int) -> bytes:
        return f"{self.prefix}{{{group}}}:".encode()

    async def get(self, group: int, key: bytes) -> tuple[bool, Any]:
        """`(True, value)` for a live entry (also when `value` is `None`), else `(False, None)`."""
        try:
            data = cast(bytes | None, await self.client.get(self._entry_prefix(group) + key))
        except RedisError as exc:
            self._conn.fail(f"read a cache entry of group `{group}`", exc)
        if data is None:
            self.misses += 1
            return (False, None)
        self.hits += 1
        return (True, decode_value(data))

    async def put(self, group: int, key: bytes, value: Any, ttl: float) -> None:
        """Keep `value` under `(group, key)` for `ttl` seconds, replacing what was there."""
        ttl_ms = milliseconds(positive_seconds("ttl", ttl))
        data = encode_value(value)
        try:
            await self._put(keys=[self._group_key(group), self._entry_prefix(group) + key], args=[data, ttl_ms, key])
        except RedisError as exc:
            self._conn.fail(f"store a cache entry of group `{group}`", exc)

    async def invalidate_group(self, group: int) -> None:
        """Drop every entry of `group`, atomically (one script)."""
        try:
            await self._drop_group(keys=[self._group_key(group)], args=[self._entry_prefix(group)])
        except RedisError as exc:
            self._conn.fail(f"invalidate cache group `{group}`", exc)

    async def invalidate_where(self, group: int, predicate: Callable[[bytes], bool]) -> None:
        """Drop the entries of `group` whose key satisfies `predicate` (called once per live key).

        The keys are read, tested here, then the matches deleted in one script: an entry put
        between the read and the delete under a new key is kept (the protocol allows it), one put
        under a matching key is dropped all the same.
        """
        group_key = self._group_key(group)
        try:
            keys: list[bytes] = await self._live_keys(keys=[group_key])
        except RedisError as exc:
            self._conn.fail(f"list the keys of cache group `{group}`", exc)
        matches = [key for key in keys if predicate(key)]
        if not matches:
            return
        try:
            await self._drop(keys=[group_key], args=[self._entry_prefix(group), *matches])
        except RedisError as exc:
            self._conn.fail(f"invalidate entries of cache group `{group}`", exc)

    def __repr__(self) -> str:
        return f"RedisCacheStore({self.url!r}, prefix={self.prefix!r})"
