"""The in-memory query cache (rust/core/src/cache.rs, catga/_pure/_stores.py), through `_core`.

Time comes from a fake clock in whole seconds, so both cores compute the same nanoseconds.
"""

import gc
import threading
import weakref
from typing import Any

import pytest

from catga._core import CacheTable

MISS = (False, None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(max_entries: int = 100) -> tuple[CacheTable, FakeClock]:
    clock = FakeClock()
    return CacheTable(max_entries=max_entries, clock=clock), clock


def test_get_put_hits_and_misses() -> None:
    cache, _ = make()
    assert cache.get(1, b"k") == MISS
    value = {"total": 3}
    cache.put(1, b"k", value, 30.0)
    hit, stored = cache.get(1, b"k")
    assert hit
    assert stored is value
    assert cache.get(2, b"k") == MISS, "groups are separate"
    assert cache.get(1, b"other") == MISS
    assert (cache.hits, cache.misses, cache.evictions, len(cache)) == (1, 3, 0, 1)


def test_none_is_a_value() -> None:
    cache, _ = make()
    cache.put(1, b"k", None, 30)
    assert cache.get(1, b"k") == (True, None)


def test_put_replaces() -> None:
    cache, _ = make()
    cache.put(1, b"k", "old", 30.0)
    cache.put(1, b"k", "new", 30.0)
    assert cache.get(1, b"k") == (True, "new")
    assert len(cache) == 1


def test_ttl_is_per_entry() -> None:
    cache, clock = make()
    cache.put(1, b"short", "s", 5.0)
    cache.put(1, b"long", "l", 50.0)
    clock.advance(4)
    assert cache.get(1, b"short") == (True, "s")
    clock.advance(1)
    assert cache.get(1, b"short") == MISS
    assert len(cache) == 1, "an expired entry is dropped when looked up"
    clock.advance(44)
    assert cache.get(1, b"long") == (True, "l")
    clock.advance(1)
    assert cache.get(1, b"long") == MISS
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (2, 2)


def test_a_put_restarts_the_ttl() -> None:
    cache, clock = make()
    cache.put(1, b"k", "a", 10.0)
    clock.advance(8)
    cache.put(1, b"k", "b", 10.0)
    clock.advance(8)
    assert cache.get(1, b"k") == (True, "b")


def test_a_full_cache_evicts_the_oldest_put() -> None:
    cache, _ = make(max_entries=3)
    for key in (b"a", b"b", b"c"):
        cache.put(1, key, key, 30.0)
    cache.put(1, b"a", "again", 30.0)  # now the newest
    cache.put(2, b"d", "d", 30.0)
    assert cache.get(1, b"b") == MISS
    assert cache.get(1, b"a") == (True, "again")
    assert (cache.evictions, len(cache)) == (1, 3)
    cache.put(2, b"e", "e", 30.0)
    assert cache.get(1, b"c") == MISS
    assert cache.evictions == 2


def test_expired_entries_go_first_and_are_not_evictions() -> None:
    cache, clock = make(max_entries=2)
    cache.put(1, b"a", "a", 5.0)
    cache.put(1, b"b", "b", 100.0)
    clock.advance(10)
    cache.put(1, b"c", "c", 100.0)
    assert (cache.evictions, len(cache)) == (0, 2)
    assert cache.get(1, b"b") == (True, "b")


def test_the_sweep_and_purge_expired() -> None:
    cache, clock = make()
    for i in range(20):
        cache.put(1, b"k%d" % i, i, 10.0)
    clock.advance(10)
    # A put drops up to 8 expired entries from the oldest end; `len` counts what is held.
    cache.put(1, b"new", "n", 10.0)
    assert len(cache) == 20 - 8 + 1
    assert cache.purge_expired() == 20 - 8
    assert len(cache) == 1


def test_invalidate_group() -> None:
    cache, _ = make()
    for key in (b"o1", b"o2"):
        cache.put(1, key, key, 30.0)
    cache.put(2, b"o1", "other type", 30.0)
    assert cache.invalidate_group(1) == 2
    assert cache.invalidate_group(1) == 0
    assert cache.get(1, b"o1") == MISS
    assert cache.get(2, b"o1") == (True, "other type")
    assert len(cache) == 1


def test_invalidate_where() -> None:
    cache, _ = make()
    for key in (b"order=o1;n=1", b"order=o1;n=2", b"order=o2;n=1"):
        cache.put(1, key, key, 30.0)
    cache.put(2, b"order=o1", "other type", 30.0)
    seen: list[bytes] = []

    def matches(key: bytes) -> bool:
        seen.append(key)
        return key.startswith(b"order=o1;")

    assert cache.invalidate_where(1, matches) == 2
    assert sorted(seen) == [b"order=o1;n=1", b"order=o1;n=2", b"order=o2;n=1"]
    assert all(type(key) is bytes for key in seen)
    assert cache.get(1, b"order=o2;n=1")[0]
    assert cache.get(2, b"order=o1")[0]
    assert cache.invalidate_where(3, matches) == 0
    assert len(cache) == 2


def test_the_predicate_runs_outside_the_lock() -> None:
    cache, _ = make()
    cache.put(1, b"a", "a", 30.0)
    cache.put(1, b"b", "b", 30.0)

    def matches(key: bytes) -> bool:
        # Using the cache from the predicate would deadlock if it ran under the cache's lock.
        assert cache.get(1, key)[0]
        if key == b"b":
            cache.put(1, b"c", "c", 30.0)
        return True

    assert cache.invalidate_where(1, matches) == 2
    assert cache.get(1, b"c") == (True, "c"), "a key put meanwhile is not in the snapshot"


def test_a_failing_predicate_drops_nothing() -> None:
    cache, _ = make()
    cache.put(1, b"a", "a", 30.0)
    cache.put(1, b"b", "b", 30.0)

    def fails(key: bytes) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.invalidate_where(1, fails)
    assert len(cache) == 2


def test_clear_keeps_the_counters() -> None:
    cache, _ = make()
    cache.put(1, b"a", "a", 30.0)
    cache.get(1, b"a")
    cache.clear()
    assert len(cache) == 0
    assert cache.get(1, b"a") == MISS
    assert (cache.hits, cache.misses) == (1, 1)


def test_an_evicted_value_may_use_the_cache_when_it_is_dropped() -> None:
    cache, _ = make(max_entries=1)
    seen: list[tuple[bool, Any]] = []

    class Reentrant:
        def __del__(self) -> None:
            seen.append(cache.get(1, b"second"))

    cache.put(1, b"first", Reentrant(), 30.0)
    cache.put(1, b"second", "2", 30.0)
    assert seen == [(True, "2")]


def test_properties_and_repr() -> None:
    cache = CacheTable(max_entries=5)
    assert cache.max_entries == 5
    assert repr(cache) == "CacheTable(max_entries=5)"
    assert CacheTable().max_entries == 10_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0}, "max_entries `0` must be an int from 1 to 2**63 - 1"),
        ({"max_entries": "x"}, "max_entries `x` must be an int from 1 to 2**63 - 1"),
    ],
)
def test_invalid_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("*", r"\*") + "$"):
        CacheTable(**kwargs)


def test_invalid_arguments_name_the_parameter() -> None:
    cache, _ = make()
    with pytest.raises(ValueError, match=r"^key `k` must be bytes$"):
        cache.get(1, "k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^key `bytearray\(b'k'\)` must be bytes$"):
        cache.put(1, bytearray(b"k"), 1, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^group `-1` must be an int from 0 to 2\*\*64 - 1$"):
        cache.get(-1, b"k")
    with pytest.raises(ValueError, match=r"^group `g` must be an int from 0 to 2\*\*64 - 1$"):
        cache.invalidate_group("g")  # type: ignore[arg-type]
    for ttl, shown in ((0.0, "0.0"), (-1, "-1.0"), (float("inf"), "inf"), ("5", "5")):
        with pytest.raises(ValueError, match=rf"^ttl `{shown}` must be a positive, finite number of seconds$"):
            cache.put(1, b"k", 1, ttl)  # type: ignore[arg-type]
    assert len(cache) == 0


def test_a_value_referring_to_its_cache_is_collected() -> None:
    class Holder:
        def __init__(self, cache: CacheTable) -> None:
            self.cache = cache

    cache = CacheTable()
    holder = Holder(cache)
    cache.put(1, b"k", holder, 30.0)
    ref = weakref.ref(holder)
    del cache, holder
    gc.collect()
    assert ref() is None


def test_eight_threads() -> None:
    threads, rounds = 8, 500
    cache = CacheTable(max_entries=64)
    lookups = [0] * threads
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(thread: int) -> None:
        try:
            barrier.wait()
            for i in range(rounds):
                number = (i * 7 + thread) % 100
                key = number.to_bytes(2, "little")
                lookups[thread] += 1
                hit, value = cache.get(number % 4, key)
                if hit:
                    assert value == number
                else:
                    cache.put(number % 4, key, number, 60.0)
                if i % 100 == 0:
                    cache.invalidate_where(thread % 4, lambda key: key[0] % 2 == 0)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    assert cache.hits + cache.misses == sum(lookups)
    assert len(cache) <= 64
    assert cache.evictions > 0
