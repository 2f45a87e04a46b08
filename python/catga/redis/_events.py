"""`RedisEventStore`, `RedisSnapshotStore` and `RedisCheckpointStore`: event sourcing on Redis."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Final, cast

from catga._errors import ConcurrencyConflict, SerializationError
from catga._event_records import StoredEvent, decode_event, encode_event
from catga._event_store_checks import (
    check_events,
    check_expected,
    check_limit,
    check_name,
    check_position,
    check_stream_id,
    check_until,
    check_version,
    decode_metadata,
    encode_metadata,
    from_micros,
    to_micros,
)
from catga.redis._client import RedisError, RedisStore, positive_seconds

__all__ = ["RedisCheckpointStore", "RedisEventStore", "RedisSnapshotStore"]

_BATCH: Final = 500  # events per read round trip when no (smaller) limit is given

# An event is a hash `prefix + "e:" + position` with these fields; the scripts return them in this
# order after the position.
_FIELDS: Final = "'stream', 'version', 'type', 'schema', 'body', 'metadata', 'time'"

APPEND: Final = """
-- KEYS[1] the stream's list of positions (its length is the stream's version), KEYS[2] the global
-- position counter, KEYS[3] the last timestamp given (µs). ARGV[1] the expected version ('' = any),
-- ARGV[2] the events' key prefix, ARGV[3] the stream id, ARGV[4] the metadata, then per event its
-- wire name, schema and body. {1, new version}, or {0, actual version} on a conflict (nothing written).
local current = redis.call('LLEN', KEYS[1])
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= current then
  return {0, current}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
if now < last then  -- the server clock stepped back: timestamps never decrease along the log
  now = last
end
local stamp = string.format('%.0f', now)
redis.call('SET', KEYS[3], stamp)
local version = current
for i = 5, #ARGV, 3 do
  version = version + 1
  local position = redis.call('INCR', KEYS[2])
  redis.call('HSET', ARGV[2] .. position, 'stream', ARGV[3], 'version', version, 'type', ARGV[i],
    'schema', ARGV[i + 1], 'body', ARGV[i + 2], 'metadata', ARGV[4], 'time', stamp)
  redis.call('RPUSH', KEYS[1], position)
end
return {1, version}
"""

READ: Final = f"""
-- KEYS[1] the stream's list of positions. ARGV[1] the events' key prefix, ARGV[2] the first
-- version, ARGV[3] the last version (-1: the end), ARGV[4] the latest timestamp (µs, '' = any),
-- ARGV[5] how many at most. {{position, stream, version, type, schema, body, metadata, time}} each.
local positions = redis.call('LRANGE', KEYS[1], tonumber(ARGV[2]) - 1, tonumber(ARGV[3]) - 1)
local cutoff = ARGV[4] ~= '' and tonumber(ARGV[4]) or nil
local limit = tonumber(ARGV[5])
local found = {{}}
for _, position in ipairs(positions) do
  if #found >= limit then
    break
  end
  local event = redis.call('HMGET', ARGV[1] .. position, {_FIELDS})
  if cutoff and tonumber(event[7]) and tonumber(event[7]) > cutoff then
    break
  end
  table.insert(event, 1, position)
  found[#found + 1] = event
end
return found
"""

READ_ALL: Final = f"""
-- KEYS[1] the global position counter. ARGV[1] the events' key prefix, ARGV[2] the first position,
-- ARGV[3] how many at most. Events as READ returns them.
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = tonumber(ARGV[2])
local stop = math.min(last, first + tonumber(ARGV[3]) - 1)
local found = {{}}
for position = first, stop do
  local event = redis.call('HMGET', ARGV[1] .. position, {_FIELDS})
  table.insert(event, 1, position)
  found[#found + 1] = event
end
return found
"""

SNAPSHOT_SAVE: Final = """
-- KEYS[1] the snapshot hash; ARGV[1] version, ARGV[2] state. Kept unless a newer one is stored.
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if tonumber(ARGV[1]) >= stored then
  redis.call('HSET', KEYS[1], 'version', ARGV[1], 'state', ARGV[2])
  return 1
end
return 0
"""


class RedisEventStore(RedisStore):
    """The `catga.stores.EventStore` on Redis.

    `url_or_client` is a `redis://` URL (the store owns the client it makes; close it with
    `aclose()`) or a `redis.asyncio.Redis` (yours: the store never closes it). Under `prefix`:

    - `position`, the global position counter (the position of the last event appended);
    - `e:<position>`, one hash per event: `stream`, `version`, `type` (the wire name), `schema`,
      `body` (the msgspec msgpack of the event), `metadata` (msgpack, empty when none) and `time`
      (the server's clock at the append, microseconds since the UNIX epoch);
    - `s:<stream_id>`, a list of the stream's positions: its length is the stream's version, and
      version `v` is at index `v - 1`;
    - `time`, the last timestamp given, so timestamps never decrease along the log.

    `append` is one Lua script (check the version, then for each event take the next position and
    write its hash), so it is atomic and two appenders racing on one stream cannot both win a
    version; positions are gap-free and increase in append order across every stream. `read` and
    `read_all` each read one snapshot per round trip (up to 500 events). `subscribe` catches up
    from the log, then polls it every `poll_interval` seconds (one `GET` when nothing is new).

    The scripts compute the event keys they write, so Redis Cluster is not supported.

    >>> store = RedisEventStore("redis://127.0.0.1:6379/0")
    >>> store
    RedisEventStore('redis://127.0.0.1:6379/0', prefix='catga:es:')
    """

    __slots__ = ("_append", "_read", "_read_all", "poll_interval", "prefix")

    prefix: str
    poll_interval: float

    def __init__(self, url_or_client: Any, *, prefix: str = "catga:es:", poll_interval: float = 0.1) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a str, got `{prefix!r}`")
        self.poll_interval = positive_seconds("poll_interval", poll_interval)
        super().__init__(url_or_client)
        self.prefix = prefix
        register = self.client.register_script
        self._append = register(APPEND)
        self._read = register(READ)
        self._read_all = register(READ_ALL)

    def _stream_key(self, stream_id: str) -> str:
        return f"{self.prefix}s:{stream_id}"

    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Append `events` atomically (all or none); the stream's new version.

        `expected_version=None` appends whatever the version; an int must equal the stream's
        version, else `catga.ConcurrencyConflict` and nothing is written. An empty `events` writes
        nothing and returns the current version; an event that is not a `catga.Message` (or does
        not encode) raises `SerializationError` before anything is written.
        """
        check_stream_id(stream_id)
        expected = check_expected(expected_version)
        events = check_events(events)
        args: list[Any] = ["" if expected is None else expected, f"{self.prefix}e:", stream_id]
        args.append(encode_metadata(metadata))
        for event in events:
            args.extend(encode_event(event))
        if not events:
            return await self.version(stream_id)
        try:
            ok, version = await self._append(
                keys=[self._stream_key(stream_id), f"{self.prefix}position", f"{self.prefix}time"], args=args
            )
        except RedisError as exc:
            self._conn.fail(f"append to stream `{stream_id}`", exc)
        if not ok:
            raise ConcurrencyConflict(stream_id, expected, int(version))
        return int(version)

    async def version(self, stream_id: str) -> int:
        """The stream's version (0: empty)."""
        check_stream_id(stream_id)
        try:
            return int(await self.client.llen(self._stream_key(stream_id)))
        except RedisError as exc:
            self._conn.fail(f"read the version of stream `{stream_id}`", exc)

    async def read(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """The stream's events from `from_version` to `to_version` (inclusive), appended at or
        before `until`, at most `limit`, in version order."""
        check_stream_id(stream_id)
        first = max(cast(int, check_version("from_version", from_version)), 1)
        last = check_version("to_version", to_version, optional=True)
        when = check_until(until)
        limit = check_limit(limit)
        cutoff = "" if when is None else to_micros(when)
        found: list[StoredEvent] = []
        while limit is None or len(found) < limit:
            want = _BATCH if limit is None else min(_BATCH, limit - len(found))
            stop = first + want - 1 if last is None else min(last, first + want - 1)
            if stop < first:
                break
            try:
                rows = await self._read(
                    keys=[self._stream_key(stream_id)], args=[f"{self.prefix}e:", first, stop, cutoff, want]
                )
            except RedisError as exc:
                self._conn.fail(f"read stream `{stream_id}`", exc)
            found.extend(_decode(row, stream_id) for row in rows)
            if len(rows) < want:
                break
            first += len(rows)
        return found

    async def read_all(self, from_position: int = 0, limit: int | None = None) -> list[StoredEvent]:
        """The global log from `from_position` (inclusive) on, at most `limit`, in position order."""
        first = check_position(from_position)
        limit = check_limit(limit)
        found: list[StoredEvent] = []
        while limit is None or len(found) < limit:
            want = _BATCH if limit is None else min(_BATCH, limit - len(found))
            try:
                rows = await self._read_all(keys=[f"{self.prefix}position"], args=[f"{self.prefix}e:", first, want])
            except RedisError as exc:
                self._conn.fail("read the event log", exc)
            found.extend(_decode(row) for row in rows)
            if len(rows) < want:
                break
            first += len(rows)
        return found

    async def subscribe(self, from_position: int = 0) -> AsyncIterator[StoredEvent]:
        """Every event from `from_position` on: catches up on the stored ones, then follows new
        ones (polling every `poll_interval` seconds) until the consumer stops iterating."""
        following = check_position(from_position)
        while True:
            batch = await self.read_all(following, _BATCH)
            for event in batch:
                yield event
                following = event.position + 1
            if len(batch) < _BATCH:
                await asyncio.sleep(self.poll_interval)

    def __repr__(self) -> str:
        return f"RedisEventStore({self.url!r}, prefix={self.prefix!r})"


def _decode(row: list[Any], stream_id: str | None = None) -> StoredEvent:
    """An event from a script's `{position, stream, version, type, schema, body, metadata, time}`;
    a missing or malformed field is a `SerializationError` naming the stream and version."""
    position, stream, version, wire, schema, body, metadata, stamp = row
    stream_name = stream.decode(errors="replace") if isinstance(stream, bytes) else stream_id
    try:
        number = int(version)
    except (TypeError, ValueError):
        number = 0
    where = f"version `{number}` of stream `{stream_name}` (position `{int(position)}`)"
    if wire is None or schema is None or body is None or stamp is None or stream is None or not number:
        raise SerializationError(f"cannot read the event at {where}: its record is incomplete")
    try:
        wire_name = wire.decode()
        schema_number = int(schema)
        micros = int(stamp)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SerializationError(f"cannot read the event at {where}: {exc}") from exc
    assert stream_name is not None
    return StoredEvent(
        stream_id=stream_name,
        version=number,
        position=int(position),
        type=wire_name,
        event=decode_event(stream_name, number, wire_name, schema_number, body),
        timestamp=from_micros(micros),
        metadata=decode_metadata(stream_name, number, metadata),
    )


class RedisSnapshotStore(RedisStore):
    """The `catga.stores.SnapshotStore` on Redis: a hash `prefix + stream_id` per stream, with
    fields `version` and `state`; an older snapshot never replaces a newer one (one Lua script)."""

    __slots__ = ("_save", "prefix")

    prefix: str

    def __init__(self, url_or_client: Any, *, prefix: str = "catga:snap:") -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a str, got `{prefix!r}`")
        super().__init__(url_or_client)
        self.prefix = prefix
        self._save = self.client.register_script(SNAPSHOT_SAVE)

    async def save(self, stream_id: str, version: int, state: bytes) -> None:
        """Keep `state` as the stream's snapshot at `version` (unless a newer one is stored)."""
        check_stream_id(stream_id)
        check_version("version", version)
        if not isinstance(state, bytes | bytearray | memoryview):
            raise TypeError(f"`state` must be bytes, got `{state!r}`")
        try:
            await self._save(keys=[self.prefix + stream_id], args=[version, bytes(state)])
        except RedisError as exc:
            self._conn.fail(f"save the snapshot of stream `{stream_id}`", exc)

    async def latest(self, stream_id: str) -> tuple[int, bytes] | None:
        """`(version, state)` of the stream's latest snapshot, or `None`."""
        check_stream_id(stream_id)
        try:
            version, state = cast(
                list[bytes | None], await self.client.hmget(self.prefix + stream_id, ["version", "state"])
            )
        except RedisError as exc:
            self._conn.fail(f"read the snapshot of stream `{stream_id}`", exc)
        if version is None or state is None:
            return None
        return int(version), bytes(state)

    def __repr__(self) -> str:
        return f"RedisSnapshotStore({self.url!r}, prefix={self.prefix!r})"


class RedisCheckpointStore(RedisStore):
    """The `catga.stores.CheckpointStore` on Redis: one hash `key`, projection name -> position."""

    __slots__ = ("key",)

    key: str

    def __init__(self, url_or_client: Any, *, key: str = "catga:checkpoints") -> None:
        if not isinstance(key, str):
            raise TypeError(f"`key` must be a str, got `{key!r}`")
        super().__init__(url_or_client)
        self.key = key

    async def get(self, name: str) -> int:
        """The last position `name` has handled (0: none)."""
        check_name(name)
        try:
            raw = cast(bytes | None, await self.client.hget(self.key, name))
        except RedisError as exc:
            self._conn.fail(f"read checkpoint `{name}`", exc)
        return 0 if raw is None else int(raw)

    async def set(self, name: str, position: int) -> None:
        """Record that `name` has handled everything up to `position`."""
        check_name(name)
        check_version("position", position)
        try:
            await self.client.hset(self.key, name, position)
        except RedisError as exc:
            self._conn.fail(f"write checkpoint `{name}`", exc)

    def __repr__(self) -> str:
        return f"RedisCheckpointStore({self.url!r}, key={self.key!r})"
