"""Idempotency and cache tables: the pure-Python twin of `rust/core/src/{idempotency,cache}.rs`.

The rules are the native core's, entry for entry (its module docs give the reasons), so that both
cores keep, expire and evict the same entries:

- Times are integer nanoseconds of a monotonic clock; an entry whose expiry is `<= now` counts as
  absent (lazy expiry), and an insert first drops up to `_SWEEP_STEP` expired entries from the
  front (the oldest end) of its queues.
- The idempotency table has the native table's shards: the shard of `(message_id, handler)` is
  `((message_id ^ handler) * 0x9E3779B97F4A7C15 mod 2**64) >> 48 & (shards - 1)`, and each shard
  holds `ceil(max_entries / shards)` entries. A shard keeps its claims and its completed entries in
  two `OrderedDict`s, oldest first (an `OrderedDict` drops its first item in O(1); a plain `dict`
  does not); when full it drops expired entries, then its oldest completed entry, then its oldest
  claim.
- No value is dropped while a lock is held: removed values go to a local list that dies after the
  lock is released, since a value's `__del__` may use the table. The locks are `RLock`s: Python code
  runs under them, so a garbage collection (and its finalizers) may start there, on this thread.
"""

import math
import operator
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, final

# One conversion of clock readings for every `clock=` argument, and one saturation rule.
from catga._pure._limits import _elapsed_ns, _read

__all__ = ["CLAIMED", "COMPLETED", "IN_FLIGHT", "CacheTable", "IdempotencyTable", "handler_key"]

CLAIMED: Final = 0
"""`IdempotencyTable.claim` status: the caller now owns the key and must `complete` or `release` it."""
IN_FLIGHT: Final = 1
"""`IdempotencyTable.claim` status: another caller holds the claim and has not finished."""
COMPLETED: Final = 2
"""`IdempotencyTable.claim` status: the handler ran already; the result comes with it."""

_U64: Final = 2**64 - 1
_TWO_64: Final = 2.0**64
_I64: Final = 2**63 - 1
_FIBONACCI: Final = 0x9E3779B97F4A7C15
_MAX_SHARDS: Final = 1 << 16
_SWEEP_STEP: Final = 8
_DEFAULT_TTL_NS: Final = 86_400 * 10**9  # 24 hours (API.md section 6)
_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3

_CLAIMED_RESULT: Final[tuple[int, Any]] = (CLAIMED, None)
_IN_FLIGHT_RESULT: Final[tuple[int, Any]] = (IN_FLIGHT, None)
_MISS: Final[tuple[bool, Any]] = (False, None)

_Key = tuple[int, int]
_Clock = Callable[[], int]


def handler_key(name: str) -> int:
    """The 64-bit key of an event handler for the idempotency table.

    FNV-1a of the UTF-8 bytes of its qualified name: the same in every process and version (never 0,
    which means "a request").
    """
    if not isinstance(name, str):
        raise ValueError(f"name `{name}` must be a str")
    key = _FNV_OFFSET
    for byte in name.encode():
        key = ((key ^ byte) * _FNV_PRIME) & _U64
    return key or 1


# -------------------------------------------------------------------------------- arguments


def _u64(name: str, value: object) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = -1
    if not 0 <= number <= _U64:
        raise ValueError(f"{name} `{value}` must be an int from 0 to 2**64 - 1")
    return number


def _handler(value: object) -> int:
    # As in the native core, `None` stands for the default, 0 (a request).
    return 0 if value is None else _u64("handler", value)


def _i64(name: str, value: object, requirement: str) -> int:
    # The native core takes whatever converts to a 64-bit int (`__index__`); the rest is named as given.
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or not -(2**63) <= number <= _I64:
        raise ValueError(f"{name} `{value}` {requirement}")
    return number


def _as_float(value: object) -> float | None:
    """`value` as the native core's float conversion takes it (`__float__`, else `__index__`)."""
    if type(value) is float:
        return value
    try:
        to_float = getattr(type(value), "__float__", None)
        if to_float is not None:
            return float(to_float(value))
        to_int = getattr(type(value), "__index__", None)
        if to_int is not None:
            return float(to_int(value))
    except (TypeError, ValueError, OverflowError):
        pass
    return None


_TTL_REQUIREMENT: Final = "must be a positive, finite number of seconds"


def _ttl_ns(value: object, default: int | None = None) -> int:
    if value is None and default is not None:
        return default  # as in the native core, `None` stands for the default
    seconds = _as_float(value)
    if seconds is None:
        raise ValueError(f"ttl `{value}` {_TTL_REQUIREMENT}")
    if not (seconds > 0.0 and math.isfinite(seconds)):
        raise ValueError(f"ttl `{seconds!r}` {_TTL_REQUIREMENT}")
    # Below 1 ns counts as 1 ns; beyond 2**64 ns it saturates (as Rust's float-to-int cast does).
    return min(max(int(seconds * 1e9), 1), _U64)


def _clock(clock: Callable[[], float] | None) -> _Clock:
    """Nanoseconds since now: `floor((reading - first reading) * 1e9)`, 0 before the first reading,
    saturating at 2**64 - 1 (`catga_core::monotonic::elapsed_ns`)."""
    if clock is None:
        origin_ns = time.monotonic_ns()
        return lambda: time.monotonic_ns() - origin_ns
    origin = _read(clock)
    return lambda: _elapsed_ns(_read(clock), origin)


def _max_entries(value: object, default: int) -> int:
    # As in the native core, `None` stands for the default.
    return default if value is None else _i64("max_entries", value, "must be an int from 1 to 2**63 - 1")


def _check_max_entries(max_entries: int) -> None:
    if max_entries < 1:
        raise ValueError(f"max_entries `{max_entries}` must be an int from 1 to 2**63 - 1")


def _key_bytes(key: object) -> bytes:
    if type(key) is bytes:
        return key
    if isinstance(key, bytes):
        return bytes(key)
    raise ValueError(f"key `{key}` must be bytes")


def _default_shards() -> int:
    """The next power of two of 4 times the CPUs this process may run on, at least 8.

    The native core counts CPUs with Rust's `available_parallelism`, which also honours a cgroup CPU
    quota; under such a quota the two defaults may differ (pass `shards` to pin it).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    wanted = max(4 * cpus, 8)
    return min(1 << (wanted - 1).bit_length(), _MAX_SHARDS)


# ------------------------------------------------------------------------------- idempotency


@final
class _Shard:
    """One shard: claims and completed entries, each oldest first, and the shard's counters."""

    __slots__ = ("completed", "evictions", "hits", "in_flight", "lock", "misses")

    def __init__(self) -> None:
        # key -> expiry
        self.in_flight: OrderedDict[_Key, int] = OrderedDict()
        # key -> (expiry, result)
        self.completed: OrderedDict[_Key, tuple[int, Any]] = OrderedDict()
        self.lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def sweep(self, now: int, garbage: list[Any]) -> None:
        """Drop up to `_SWEEP_STEP` expired entries, claims first."""
        budget = _SWEEP_STEP
        in_flight = self.in_flight
        while budget and in_flight:
            key = next(iter(in_flight))
            if now < in_flight[key]:
                break
            del in_flight[key]
            budget -= 1
        completed = self.completed
        while budget and completed:
            key = next(iter(completed))
            if now < completed[key][0]:
                break
            garbage.append(completed.pop(key))
            budget -= 1

    def make_room(self, capacity: int, now: int, garbage: list[Any]) -> None:
        """Expired entries go first, then the oldest completed one, then the oldest claim."""
        in_flight, completed = self.in_flight, self.completed
        while len(in_flight) + len(completed) >= capacity:
            if completed:
                key = next(iter(completed))
                if now >= completed[key][0]:
                    garbage.append(completed.pop(key))
                    continue
            if in_flight:
                key = next(iter(in_flight))
                if now >= in_flight[key]:
                    del in_flight[key]
                    continue
            if completed:
                garbage.append(completed.popitem(last=False))
            else:
                in_flight.popitem(last=False)
            self.evictions += 1


@final
class IdempotencyTable:
    """A sharded, bounded table of idempotency claims and results.

    Keys are `(message_id, handler)`: handler 0 for a request, `handler_key(qualified name)` for an
    event handler. An entry expires `ttl` seconds after it was claimed or completed. Capacity is per
    shard (`ceil(max_entries / shards)`); a full shard evicts its oldest completed entry, and only
    when all its entries are in flight, its oldest claim.
    """

    __slots__ = ("_capacity", "_mask", "_max_entries", "_now", "_shards", "_ttl_ns")

    _capacity: int
    _mask: int
    _max_entries: int
    _now: _Clock
    _shards: tuple[_Shard, ...]
    _ttl_ns: int

    def __new__(
        cls,
        max_entries: int = 100_000,
        ttl: float = 86400.0,
        shards: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> "IdempotencyTable":
        # Checked in the native core's order: conversions first, then ranges, then the clock.
        max_entries = _max_entries(max_entries, 100_000)
        ttl_ns = _ttl_ns(ttl, _DEFAULT_TTL_NS)
        requirement = "must be None or a power of two from 1 to 65536"
        count = None if shards is None else _i64("shards", shards, requirement)
        _check_max_entries(max_entries)
        if count is None:
            count = _default_shards()
        elif not (1 <= count <= _MAX_SHARDS and count & (count - 1) == 0):
            raise ValueError(f"shards `{count}` {requirement}")
        self = object.__new__(cls)
        self._now = _clock(clock)
        self._max_entries = max_entries
        self._ttl_ns = ttl_ns
        self._shards = tuple(_Shard() for _ in range(count))
        self._mask = count - 1
        self._capacity = -(-max_entries // count)
        return self

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("type `IdempotencyTable` is not an acceptable base type")

    def claim(self, message_id: int, handler: int = 0) -> tuple[int, Any]:
        """`(CLAIMED, None)`: the caller runs the handler and must `complete` or `release`;
        `(IN_FLIGHT, None)`: another caller is running it; `(COMPLETED, result)`: it ran already."""
        if type(message_id) is not int or not 0 <= message_id <= _U64:
            message_id = _u64("message_id", message_id)
        if type(handler) is not int or not 0 <= handler <= _U64:
            handler = _handler(handler)
        now = self._now()
        key = (message_id, handler)
        shard = self._shards[((message_id ^ handler) * _FIBONACCI & _U64) >> 48 & self._mask]
        with shard.lock:
            entry = shard.completed.get(key)
            if entry is not None:
                if now < entry[0]:
                    shard.hits += 1
                    return (COMPLETED, entry[1])
            else:
                expires = shard.in_flight.get(key)
                if expires is not None and now < expires:
                    return _IN_FLIGHT_RESULT
            # Absent or expired: this caller claims it.
            shard.misses += 1
            garbage: list[Any] = []
            shard.sweep(now, garbage)
            shard.in_flight.pop(key, None)
            old = shard.completed.pop(key, None)
            if old is not None:
                garbage.append(old)
            shard.make_room(self._capacity, now, garbage)
            shard.in_flight[key] = min(now + self._ttl_ns, _U64)
        return _CLAIMED_RESULT

    def complete(self, message_id: int, handler: int, result: Any) -> None:
        """Store the result of a claimed key; it is returned by `claim` until `ttl` from now.

        Stored whatever became of the claim (expired, evicted, released): the handler did run.
        """
        message_id = _u64("message_id", message_id)
        handler = _u64("handler", handler)
        now = self._now()
        key = (message_id, handler)
        shard = self._shards[((message_id ^ handler) * _FIBONACCI & _U64) >> 48 & self._mask]
        garbage: list[Any] = []
        with shard.lock:
            shard.sweep(now, garbage)
            claimed = shard.in_flight.pop(key, None)
            old = shard.completed.pop(key, None)
            if old is not None:
                garbage.append(old)
            elif claimed is None:
                shard.make_room(self._capacity, now, garbage)
            shard.completed[key] = (min(now + self._ttl_ns, _U64), result)

    def release(self, message_id: int, handler: int = 0) -> None:
        """Drop the claim of a key whose handler failed; a completed entry is left alone."""
        message_id = _u64("message_id", message_id)
        handler = _handler(handler)
        key = (message_id, handler)
        shard = self._shards[((message_id ^ handler) * _FIBONACCI & _U64) >> 48 & self._mask]
        with shard.lock:
            shard.in_flight.pop(key, None)

    @property
    def hits(self) -> int:
        """Claims that found a completed entry."""
        return sum(shard.hits for shard in self._shards)

    @property
    def misses(self) -> int:
        """Claims that found nothing (or an expired entry) and so were granted."""
        return sum(shard.misses for shard in self._shards)

    @property
    def evictions(self) -> int:
        """Live entries dropped to make room."""
        return sum(shard.evictions for shard in self._shards)

    @property
    def max_entries(self) -> int:
        """The capacity asked for (each shard holds `ceil(max_entries / shards)`)."""
        return self._max_entries

    @property
    def ttl(self) -> float:
        """Seconds an entry lives after it was claimed or completed."""
        return self._ttl_ns / 1e9

    @property
    def shards(self) -> int:
        """The number of shards, a power of two."""
        return len(self._shards)

    def __len__(self) -> int:
        return sum(len(shard.in_flight) + len(shard.completed) for shard in self._shards)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        for shard in self._shards:
            with shard.lock:
                dropped = (shard.in_flight, shard.completed)
                shard.in_flight = OrderedDict()
                shard.completed = OrderedDict()
            del dropped

    def purge_expired(self) -> int:
        """Drop every expired entry now; returns how many were dropped."""
        now = self._now()
        count = 0
        for shard in self._shards:
            garbage: list[Any] = []
            with shard.lock:
                for key in [key for key, expires in shard.in_flight.items() if now >= expires]:
                    del shard.in_flight[key]
                    count += 1
                for key in [key for key, entry in shard.completed.items() if now >= entry[0]]:
                    garbage.append(shard.completed.pop(key))
                    count += 1
            del garbage
        return count

    def __repr__(self) -> str:
        return f"IdempotencyTable(max_entries={self._max_entries}, ttl={self.ttl!r}, shards={len(self._shards)})"


# ------------------------------------------------------------------------------------- cache


@final
class CacheTable:
    """A bounded cache of query results with a TTL per entry.

    Entries are keyed by `(group, key bytes)`: the query type and its encoded fields. A full cache
    evicts the entry put longest ago.
    """

    __slots__ = ("_evictions", "_groups", "_hits", "_lock", "_max_entries", "_misses", "_now", "_order")

    # group -> key -> (expiry, value)
    _groups: dict[int, dict[bytes, tuple[int, Any]]]
    # (group, key), oldest put first
    _order: OrderedDict[tuple[int, bytes], None]
    _lock: threading.RLock
    _max_entries: int
    _now: _Clock
    _hits: int
    _misses: int
    _evictions: int

    def __new__(cls, max_entries: int = 10_000, clock: Callable[[], float] | None = None) -> "CacheTable":
        max_entries = _max_entries(max_entries, 10_000)
        _check_max_entries(max_entries)
        self = object.__new__(cls)
        self._now = _clock(clock)
        self._max_entries = max_entries
        self._groups = {}
        self._order = OrderedDict()
        self._lock = threading.RLock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        return self

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("type `CacheTable` is not an acceptable base type")

    def _remove(self, group: int, key: bytes) -> tuple[int, Any]:
        """Remove a present entry (under the lock); the caller drops it after releasing the lock."""
        entries = self._groups[group]
        entry = entries.pop(key)
        if not entries:
            del self._groups[group]
        del self._order[(group, key)]
        return entry

    def get(self, group: int, key: bytes) -> tuple[bool, Any]:
        """`(True, value)` when `(group, key)` holds a live entry, else `(False, None)`."""
        if type(group) is not int or not 0 <= group <= _U64:
            group = _u64("group", group)
        key = _key_bytes(key)
        now = self._now()
        with self._lock:
            entries = self._groups.get(group)
            entry = None if entries is None else entries.get(key)
            if entry is not None and now < entry[0]:
                self._hits += 1
                return (True, entry[1])
            self._misses += 1
            if entry is not None:
                expired = self._remove(group, key)
        if entry is not None:
            del expired
        return _MISS

    def put(self, group: int, key: bytes, value: Any, ttl: float) -> None:
        """Cache `value` under `(group, key)` for `ttl` seconds, replacing what was there."""
        group = _u64("group", group)
        ttl_ns = _ttl_ns(ttl)
        key = _key_bytes(key)
        now = self._now()
        garbage: list[Any] = []
        with self._lock:
            groups, order = self._groups, self._order
            for _ in range(_SWEEP_STEP):
                if not order:
                    break
                old_group, old_key = next(iter(order))
                if now < groups[old_group][old_key][0]:
                    break
                garbage.append(self._remove(old_group, old_key))
            entry = (min(now + ttl_ns, _U64), value)
            entries = groups.get(group)
            if entries is not None and key in entries:
                garbage.append(entries[key])
                entries[key] = entry
                order.move_to_end((group, key))
                return
            while len(order) >= self._max_entries:
                old_group, old_key = next(iter(order))
                live = now < groups[old_group][old_key][0]
                garbage.append(self._remove(old_group, old_key))
                if live:
                    self._evictions += 1
            groups.setdefault(group, {})[key] = entry
            order[(group, key)] = None

    def invalidate_group(self, group: int) -> int:
        """Drop every entry of `group`; returns how many were dropped."""
        group = _u64("group", group)
        with self._lock:
            entries = self._groups.pop(group, None)
            if entries is None:
                return 0
            for key in entries:
                del self._order[(group, key)]
        return len(entries)

    def invalidate_where(self, group: int, predicate: Callable[[bytes], bool]) -> int:
        """Drop the entries of `group` whose key bytes `predicate` is true for; returns how many.

        The predicate runs outside the lock, on a snapshot of the group's keys; if it raises,
        nothing is dropped.
        """
        group = _u64("group", group)
        with self._lock:
            entries = self._groups.get(group)
            keys = [] if entries is None else list(entries)
        doomed = [key for key in keys if predicate(key)]
        if not doomed:
            return 0
        garbage: list[Any] = []
        with self._lock:
            for key in doomed:
                entries = self._groups.get(group)
                if entries is not None and key in entries:
                    garbage.append(self._remove(group, key))
        return len(garbage)

    @property
    def hits(self) -> int:
        """Lookups that found a live entry."""
        return self._hits

    @property
    def misses(self) -> int:
        """Lookups that found nothing or an expired entry."""
        return self._misses

    @property
    def evictions(self) -> int:
        """Live entries dropped to make room."""
        return self._evictions

    @property
    def max_entries(self) -> int:
        """The most entries the cache holds."""
        return self._max_entries

    def __len__(self) -> int:
        return len(self._order)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            dropped = self._groups
            self._groups = {}
            self._order = OrderedDict()
        del dropped

    def purge_expired(self) -> int:
        """Drop every expired entry now; returns how many were dropped."""
        now = self._now()
        with self._lock:
            expired = [(group, key) for (group, key) in self._order if now >= self._groups[group][key][0]]
            garbage = [self._remove(group, key) for group, key in expired]
        return len(garbage)

    def __repr__(self) -> str:
        return f"CacheTable(max_entries={self._max_entries})"
