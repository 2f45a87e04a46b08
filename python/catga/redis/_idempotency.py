"""`RedisIdempotencyStore`: the idempotency store every process of a cluster shares."""

import os
from typing import Any, Final

from catga.redis import _scripts
from catga.redis._client import RedisError, RedisStore, milliseconds, positive_seconds
from catga.redis._codec import decode_value, encode_value
from catga.stores._protocols import ClaimResult, ClaimStatus, IdempotencyKey

__all__ = ["RedisIdempotencyStore"]

_RESULT: Final = b"\x01"  # a stored result starts with this byte; a claim with "\0"
_MAX_TOKENS: Final = 65_536  # claims this object remembers it holds (see `release`)


class RedisIdempotencyStore(RedisStore):
    """The `catga.stores.IdempotencyStore` on Redis: one key per `(message_id, handler)` entry.

    `url_or_client` is a `redis://` URL (the store owns the client it makes; close it with
    `aclose()`) or a `redis.asyncio.Redis` (yours: the store never closes it). Entries live under
    `prefix` (`catga:idem:<message_id>:<handler_key>`). A result expires `ttl` seconds after it was
    stored; a claim after `claim_ttl` seconds (default: `ttl`, at most 300), the lease of the handler that holds
    it: a holder that died mid-handler blocks its message that long, then a redelivery may claim it
    again (set `claim_ttl` above the longest handler run, below the transport's redelivery span).

    `claim` is one Lua script (`SET NX PX`, else read the entry): one round trip, atomic across
    every process on the server. Results are kept as msgspec msgpack; a catga message comes back
    as its class (looked up by wire name), a struct or dataclass as its class, plain values as
    they were (see `catga.redis._codec`). A result that cannot be encoded raises
    `catga.SerializationError` and nothing is stored; a server error raises
    `catga.PersistenceError` naming the server.

    >>> import catga
    >>> from catga.behaviors import Idempotency
    >>> store = RedisIdempotencyStore("redis://127.0.0.1:6379/0", ttl=3600.0)
    >>> config = catga.Config.default().with_(idempotency=Idempotency(store=store))

    `hits` and `misses` count this object's claims (`COMPLETED`, and the others).
    """

    __slots__ = ("_claim", "_claim_ttl_ms", "_release", "_tokens", "_ttl", "_ttl_ms", "hits", "misses", "prefix")

    prefix: str
    hits: int
    misses: int

    def __init__(
        self,
        url_or_client: Any,
        *,
        ttl: float = 86400.0,
        claim_ttl: float | None = None,
        prefix: str = "catga:idem:",
    ) -> None:
        self._ttl = positive_seconds("ttl", ttl)
        # A claim is a lease: a holder that died must not block its message for a day.
        claim_seconds = min(self._ttl, 300.0) if claim_ttl is None else positive_seconds("claim_ttl", claim_ttl)
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a str, got `{prefix!r}`")
        super().__init__(url_or_client)
        self.prefix = prefix
        self._ttl_ms = milliseconds(self._ttl)
        self._claim_ttl_ms = milliseconds(claim_seconds)
        self._claim = self.client.register_script(_scripts.CLAIM)
        self._release = self.client.register_script(_scripts.RELEASE)
        # The marker of each claim this object holds. `release` removes only that claim: when the
        # claim expired and another process claimed the key meanwhile, a late release of the first
        # holder must not free the second's.
        self._tokens: dict[IdempotencyKey, bytes] = {}
        self.hits = 0
        self.misses = 0

    @property
    def ttl(self) -> float:
        """Seconds an entry (a claim or a result) is kept."""
        return self._ttl

    def _key(self, key: IdempotencyKey) -> str:
        return f"{self.prefix}{key[0]}:{key[1]}"

    async def claim(self, key: IdempotencyKey) -> ClaimResult:
        """Claim `key`, atomically: see `catga.stores.IdempotencyStore.claim`."""
        marker = b"\x00" + os.urandom(8)
        try:
            reply = await self._claim(keys=[self._key(key)], args=[marker, self._claim_ttl_ms])
        except RedisError as exc:
            self._conn.fail(f"claim `{key}`", exc)
        status = int(reply[0])
        if status == ClaimStatus.CLAIMED:
            self.misses += 1
            tokens = self._tokens
            if len(tokens) >= _MAX_TOKENS:  # forgotten holders (never completed nor released)
                del tokens[next(iter(tokens))]
            tokens[key] = marker
            return ClaimResult(ClaimStatus.CLAIMED)
        if status == ClaimStatus.IN_FLIGHT:
            self.misses += 1
            return ClaimResult(ClaimStatus.IN_FLIGHT)
        self.hits += 1
        return ClaimResult(ClaimStatus.COMPLETED, decode_value(reply[1]))

    async def complete(self, key: IdempotencyKey, result: Any) -> None:
        """Store `result` for `key` for the store's `ttl`, whatever the claim's state; the claim ends.

        The handler did run, so its result is kept even if the claim expired or was taken over
        (the protocol's rule). `catga.SerializationError` when `result` cannot be encoded: nothing
        is stored, and the claim stays for the caller to release.
        """
        value = _RESULT + encode_value(result)
        try:
            await self.client.set(self._key(key), value, px=self._ttl_ms)
        except RedisError as exc:
            self._conn.fail(f"store the result of `{key}`", exc)
        self._tokens.pop(key, None)

    async def release(self, key: IdempotencyKey) -> None:
        """End this object's claim on `key` without a result; a completed entry stays.

        When this object holds no claim on `key` (another process made it), any claim is ended.
        """
        marker = self._tokens.pop(key, b"")
        try:
            await self._release(keys=[self._key(key)], args=[marker])
        except RedisError as exc:
            self._conn.fail(f"release `{key}`", exc)

    def __repr__(self) -> str:
        return f"RedisIdempotencyStore({self.url!r}, ttl={self._ttl!r}, prefix={self.prefix!r})"
