"""`RedisDeadLetterStore`: the dead letters of every process of a cluster, in one place."""

from typing import Any, Final, cast

import msgspec

from catga._dead_letters import DeadLetterRecord, decode_body
from catga._errors import SerializationError
from catga.redis import _scripts
from catga.redis._client import RedisError, RedisStore

__all__ = ["RedisDeadLetterStore"]

_encode: Final = msgspec.msgpack.Encoder().encode
_decode: Final = msgspec.msgpack.Decoder(DeadLetterRecord).decode


class RedisDeadLetterStore(RedisStore):
    """The `catga.stores.DeadLetterStore` on Redis: the newest `max_size` records, oldest first.

    Three keys under `prefix`: `order`, a sorted set of record ids scored by an insertion
    sequence; `records`, a hash from id to the msgpack-encoded record; `seq`, the sequence. Every
    change is one Lua script, so `add` (which evicts the oldest records beyond `max_size`),
    `update` (which keeps the record's place: its score is untouched), `delete` and `purge` are
    atomic, and `list` reads one consistent snapshot.

    A record is stored without its `message` object: its `body` (the message's msgpack encoding)
    and `message_type` (its wire name) rebuild it when read, in any process where that class is
    registered; elsewhere `message` is `None` and the body is kept (`dead_letters.retry` then
    says why it cannot decode it).

    >>> store = RedisDeadLetterStore("redis://127.0.0.1:6379/0", max_size=500)
    >>> store
    RedisDeadLetterStore('redis://127.0.0.1:6379/0', max_size=500, prefix='catga:dlq:')

    `evictions` counts the records this object's `add`s evicted. For Redis Cluster give a prefix
    with a hash tag (`"{catga:dlq}:"`), so the three keys share a slot.
    """

    __slots__ = ("_add", "_delete", "_keys", "_list", "_purge", "_update", "evictions", "max_size", "prefix")

    max_size: int
    prefix: str
    evictions: int

    def __init__(self, url_or_client: Any, *, max_size: int = 1000, prefix: str = "catga:dlq:") -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int):
            raise TypeError(f"`max_size` must be an int, got `{max_size!r}`")
        if max_size <= 0:
            raise ValueError(f"`max_size` must be positive, got `{max_size!r}`")
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a str, got `{prefix!r}`")
        super().__init__(url_or_client)
        self.max_size = max_size
        self.prefix = prefix
        self.evictions = 0
        self._keys = [f"{prefix}order", f"{prefix}records", f"{prefix}seq"]
        register = self.client.register_script
        self._add = register(_scripts.DLQ_ADD)
        self._list = register(_scripts.DLQ_LIST)
        self._update = register(_scripts.DLQ_UPDATE)
        self._delete = register(_scripts.DLQ_DELETE)
        self._purge = register(_scripts.DLQ_PURGE)

    async def add(self, record: DeadLetterRecord) -> None:
        """Keep `record` as the newest, evicting the oldest when the store is full."""
        data = _encode_record(record)
        try:
            evicted = await self._add(keys=self._keys, args=[record.id, data, self.max_size])
        except RedisError as exc:
            self._conn.fail(f"add dead letter `{record.id}`", exc)
        self.evictions += int(evicted)

    async def list(self, limit: int | None = 100) -> list[DeadLetterRecord]:
        """Up to `limit` records (`None`: all), oldest first."""
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"`limit` must be an int >= 0 or `None`, got `{limit!r}`")
        if limit == 0:
            return []  # ZRANGE 0 -1 would mean "all"
        try:
            found = await self._list(keys=self._keys[:2], args=[-1 if limit is None else limit - 1])
        except RedisError as exc:
            self._conn.fail("list dead letters", exc)
        return [_decode_record(data) for data in found if data is not None]

    async def get(self, id: int) -> DeadLetterRecord | None:
        """The record with this `id`, or `None`."""
        try:
            data = cast(bytes | None, await self.client.hget(self._keys[1], str(id)))
        except RedisError as exc:
            self._conn.fail(f"read dead letter `{id}`", exc)
        return None if data is None else _decode_record(data)

    async def update(self, record: DeadLetterRecord) -> None:
        """Replace the stored record with `record.id`, keeping its place; nothing if it is gone."""
        data = _encode_record(record)
        try:
            await self._update(keys=self._keys[:2], args=[record.id, data])
        except RedisError as exc:
            self._conn.fail(f"update dead letter `{record.id}`", exc)

    async def delete(self, id: int) -> bool:
        """Remove the record with this `id`; whether there was one."""
        try:
            return bool(await self._delete(keys=self._keys[:2], args=[id]))
        except RedisError as exc:
            self._conn.fail(f"delete dead letter `{id}`", exc)

    async def purge(self) -> int:
        """Remove every record; how many there were."""
        try:
            return int(await self._purge(keys=self._keys[:2]))
        except RedisError as exc:
            self._conn.fail("purge dead letters", exc)

    async def count(self) -> int:
        """How many records are stored."""
        try:
            return int(await self.client.zcard(self._keys[0]))
        except RedisError as exc:
            self._conn.fail("count dead letters", exc)

    def __repr__(self) -> str:
        return f"RedisDeadLetterStore({self.url!r}, max_size={self.max_size!r}, prefix={self.prefix!r})"


def _encode_record(record: DeadLetterRecord) -> bytes:
    if not isinstance(record, DeadLetterRecord):
        raise TypeError(f"a dead-letter store keeps `catga.DeadLetterRecord`s, got `{record!r}`")
    # The message object goes as its `body`: msgspec would decode it back as a plain dict.
    if record.message is not None:
        record = msgspec.structs.replace(record, message=None)
    return _encode(record)


def _decode_record(data: bytes) -> DeadLetterRecord:
    record = _decode(data)
    if record.body:
        try:
            message = decode_body(record)
        except SerializationError:
            return record  # its class is unknown here: the body is kept, `message` stays None
        record = msgspec.structs.replace(record, message=message)
    return record
