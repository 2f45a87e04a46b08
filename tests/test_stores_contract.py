"""The contract of the store protocols (`catga.stores`), run against every implementation.

One suite per protocol, parametrised over the backends: the in-memory stores and the Redis ones
(`catga.redis`, on the session's throw-away server: the `redis_url` fixture, which skips the Redis
cases when redis-server is missing). A backend's fixture makes stores, closes them after the test,
and has a `unit`: the real seconds that stand for one second of the tests' timeline. A factory
returns the store (and, for time-based stores, an async `advance(seconds)`): a fake clock in memory
(`unit` 1: durations cost nothing), a real `asyncio.sleep` for a server (`unit` 0.2: a TTL of
`1.0 * unit` is 200 ms, short enough to sleep through, long enough for a round trip). The tests
only use the async protocol methods, so they hold for any backend.

Memory only (a fake clock or the native table is needed): the tests at the end, the stateful model
of `MemoryIdempotencyStore` (it advances its clock by whole seconds) and the cache dict model.
`tests/test_redis_stores.py` has the Redis-only tests.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import catga
from catga import _core
from catga._dead_letters import DeadLetterRecord
from catga.memory import MemoryCacheStore, MemoryDeadLetterStore, MemoryIdempotencyStore
from catga.stores import CacheStore, ClaimResult, ClaimStatus, DeadLetterStore, IdempotencyStore

CLAIMED, IN_FLIGHT, COMPLETED = ClaimStatus.CLAIMED, ClaimStatus.IN_FLIGHT, ClaimStatus.COMPLETED

Advance = Callable[[float], Awaitable[None]]


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------------- the backends


class Env:
    """What a factory may need: the test's request (for server fixtures) and the stores to close."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.opened: list[Any] = []

    def redis_url(self) -> str:
        url: str = self.request.getfixturevalue("redis_url")
        return url

    def keep(self, store: Any) -> Any:
        self.opened.append(store)
        return store

    async def close(self) -> None:
        for store in self.opened:
            await store.aclose()


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def memory_idempotency(env: Env, ttl: float, max_entries: int) -> tuple[IdempotencyStore, Advance]:
    clock = FakeClock()
    return MemoryIdempotencyStore(max_entries=max_entries, ttl=ttl, clock=clock), clock.advance


def memory_cache(env: Env, max_entries: int) -> tuple[CacheStore, Advance]:
    clock = FakeClock()
    return MemoryCacheStore(max_entries=max_entries, clock=clock), clock.advance


def memory_dead_letters(env: Env, max_size: int) -> DeadLetterStore:
    return MemoryDeadLetterStore(max_size=max_size)


def redis_idempotency(env: Env, ttl: float, max_entries: int) -> tuple[IdempotencyStore, Advance]:
    from catga.redis import RedisIdempotencyStore

    # `max_entries` is the memory store's bound; Redis keeps what its memory policy allows.
    return env.keep(RedisIdempotencyStore(env.redis_url(), ttl=ttl)), sleep


def redis_cache(env: Env, max_entries: int) -> tuple[CacheStore, Advance]:
    from catga.redis import RedisCacheStore

    return env.keep(RedisCacheStore(env.redis_url())), sleep


def redis_dead_letters(env: Env, max_size: int) -> DeadLetterStore:
    from catga.redis import RedisDeadLetterStore

    return env.keep(RedisDeadLetterStore(env.redis_url(), max_size=max_size))  # type: ignore[no-any-return]


REDIS_UNIT = 0.2

IDEMPOTENCY_BACKENDS = [
    pytest.param((memory_idempotency, 1.0), id="memory"),
    pytest.param((redis_idempotency, REDIS_UNIT), id="redis"),
]
CACHE_BACKENDS = [pytest.param((memory_cache, 1.0), id="memory"), pytest.param((redis_cache, REDIS_UNIT), id="redis")]
DEAD_LETTER_BACKENDS = [
    pytest.param((memory_dead_letters, 1.0), id="memory"),
    pytest.param((redis_dead_letters, REDIS_UNIT), id="redis"),
]


class Backend:
    """`backend(*settings)` makes a store with the backend's factory; `unit` is its time unit (see
    the module doc). The stores it made are closed after the test."""

    def __init__(self, request: pytest.FixtureRequest, **defaults: Any) -> None:
        self.factory, self.unit = request.param
        self.env = Env(request)
        self.defaults = defaults

    def __call__(self, *args: Any, **settings: Any) -> Any:
        return self.factory(self.env, *args, **(self.defaults | settings))


@pytest.fixture(params=IDEMPOTENCY_BACKENDS)
async def idempotency(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    backend = Backend(request, ttl=60.0, max_entries=1000)
    yield backend
    await backend.env.close()


@pytest.fixture(params=CACHE_BACKENDS)
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    backend = Backend(request, max_entries=1000)
    yield backend
    await backend.env.close()


@pytest.fixture(params=DEAD_LETTER_BACKENDS)
async def dead_letters(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    backend = Backend(request)
    yield backend
    await backend.env.close()


# ----------------------------------------------------------------------------- IdempotencyStore

REQUEST = 0
HANDLER = _core.handler_key("shop.email_customer")


async def test_idempotency_store_is_the_protocol(idempotency: Any) -> None:
    store, _ = idempotency(ttl=30.0)
    assert isinstance(store, IdempotencyStore)
    assert store.ttl == 30.0


async def test_claim_complete_replay(idempotency: Any) -> None:
    store, _ = idempotency()
    key = (catga.new_id(), REQUEST)
    first = await store.claim(key)
    assert isinstance(first, ClaimResult)
    assert first == (CLAIMED, None)
    assert first.status is CLAIMED
    assert await store.claim(key) == (IN_FLIGHT, None)
    await store.complete(key, {"order": "o-1"})
    replay = await store.claim(key)
    assert replay.status is COMPLETED
    assert replay.value == {"order": "o-1"}
    assert await store.claim(key) == (COMPLETED, {"order": "o-1"})


async def test_none_results_are_stored(idempotency: Any) -> None:
    store, _ = idempotency()
    key = (catga.new_id(), REQUEST)
    await store.claim(key)
    await store.complete(key, None)
    assert await store.claim(key) == (COMPLETED, None)


async def test_release_frees_the_key(idempotency: Any) -> None:
    store, _ = idempotency()
    key = (catga.new_id(), REQUEST)
    await store.claim(key)
    await store.release(key)
    assert await store.claim(key) == (CLAIMED, None)


async def test_release_leaves_completed_entries_and_unknown_keys_alone(idempotency: Any) -> None:
    store, _ = idempotency()
    key = (catga.new_id(), REQUEST)
    await store.release(key)  # never claimed: nothing happens
    assert await store.claim(key) == (CLAIMED, None)
    await store.complete(key, 7)
    await store.release(key)
    assert await store.claim(key) == (COMPLETED, 7)


async def test_complete_stores_whatever_the_claim_state(idempotency: Any) -> None:
    store, _ = idempotency()
    key = (catga.new_id(), REQUEST)
    await store.complete(key, "ran")  # the handler did run, even if its claim was lost
    assert await store.claim(key) == (COMPLETED, "ran")


async def test_keys_are_per_handler(idempotency: Any) -> None:
    store, _ = idempotency()
    message_id = catga.new_id()
    assert (await store.claim((message_id, REQUEST))).status is CLAIMED
    assert (await store.claim((message_id, HANDLER))).status is CLAIMED
    await store.complete((message_id, HANDLER), "sent")
    assert await store.claim((message_id, REQUEST)) == (IN_FLIGHT, None)
    assert await store.claim((message_id, HANDLER)) == (COMPLETED, "sent")


async def test_results_expire_after_the_ttl(idempotency: Any) -> None:
    unit = idempotency.unit
    store, advance = idempotency(ttl=1.0 * unit)
    key = (catga.new_id(), REQUEST)
    await store.claim(key)
    await store.complete(key, "done")
    await advance(0.5 * unit)
    assert (await store.claim(key)).status is COMPLETED
    await advance(0.6 * unit)
    assert await store.claim(key) == (CLAIMED, None)


async def test_a_claim_is_a_lease_that_expires(idempotency: Any) -> None:
    unit = idempotency.unit
    store, advance = idempotency(ttl=1.0 * unit)
    key = (catga.new_id(), REQUEST)
    await store.claim(key)  # its holder never completes nor releases it
    await advance(0.5 * unit)
    assert (await store.claim(key)).status is IN_FLIGHT
    await advance(0.6 * unit)
    assert (await store.claim(key)).status is CLAIMED


async def test_exactly_one_concurrent_claim_wins(idempotency: Any) -> None:
    store, _ = idempotency()
    key = (catga.new_id(), REQUEST)
    results = await asyncio.gather(*(store.claim(key) for _ in range(50)))
    assert [r.status for r in results].count(CLAIMED) == 1
    assert {r.status for r in results} == {CLAIMED, IN_FLIGHT}


# ------------------------------------------------------------------------------------ CacheStore

GROUP = 11
OTHER_GROUP = 12


async def test_cache_store_is_the_protocol(cache: Any) -> None:
    store, _ = cache()
    assert isinstance(store, CacheStore)


async def test_cache_get_put(cache: Any) -> None:
    store, _ = cache()
    assert await store.get(GROUP, b"k") == (False, None)
    await store.put(GROUP, b"k", {"total": 3}, 30.0)
    assert await store.get(GROUP, b"k") == (True, {"total": 3})
    assert await store.get(OTHER_GROUP, b"k") == (False, None)
    await store.put(GROUP, b"k", "replaced", 30.0)
    assert await store.get(GROUP, b"k") == (True, "replaced")


async def test_cache_keeps_none(cache: Any) -> None:
    store, _ = cache()
    await store.put(GROUP, b"none", None, 30.0)
    assert await store.get(GROUP, b"none") == (True, None)


async def test_cache_entries_expire_each_after_its_own_ttl(cache: Any) -> None:
    unit = cache.unit
    store, advance = cache()
    await store.put(GROUP, b"short", 1, 1.0 * unit)
    await store.put(GROUP, b"long", 2, 3.0 * unit)
    await advance(0.5 * unit)
    assert await store.get(GROUP, b"short") == (True, 1)
    await advance(1.0 * unit)
    assert await store.get(GROUP, b"short") == (False, None)
    assert await store.get(GROUP, b"long") == (True, 2)
    await advance(2.0 * unit)
    assert await store.get(GROUP, b"long") == (False, None)


async def test_cache_invalidate_group(cache: Any) -> None:
    store, _ = cache()
    for key in (b"a", b"b"):
        await store.put(GROUP, key, key, 30.0)
    await store.put(OTHER_GROUP, b"a", "other", 30.0)
    await store.invalidate_group(GROUP)
    assert await store.get(GROUP, b"a") == (False, None)
    assert await store.get(GROUP, b"b") == (False, None)
    assert await store.get(OTHER_GROUP, b"a") == (True, "other")


async def test_cache_invalidate_where(cache: Any) -> None:
    store, _ = cache()
    for key in (b"order:1", b"order:2", b"customer:1"):
        await store.put(GROUP, key, key, 30.0)
    await store.put(OTHER_GROUP, b"order:1", "other", 30.0)
    seen: list[bytes] = []

    def is_order(key: bytes) -> bool:
        seen.append(bytes(key))
        return bytes(key).startswith(b"order:")

    await store.invalidate_where(GROUP, is_order)
    assert sorted(seen) == [b"customer:1", b"order:1", b"order:2"]  # once per key of the group
    assert await store.get(GROUP, b"order:1") == (False, None)
    assert await store.get(GROUP, b"order:2") == (False, None)
    assert await store.get(GROUP, b"customer:1") == (True, b"customer:1")
    assert await store.get(OTHER_GROUP, b"order:1") == (True, "other")


# ------------------------------------------------------------------------------- DeadLetterStore


def record(n: int, **changes: Any) -> DeadLetterRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": 1000 + n,
        "message_type": "shop.PlaceOrder",
        "error_type": "builtins.ValueError",
        "error_message": f"failure {n}",
        "first_failed_at": now,
        "last_failed_at": now,
    }
    return DeadLetterRecord(**(fields | changes))


async def test_dead_letter_store_is_the_protocol(dead_letters: Any) -> None:
    assert isinstance(dead_letters(10), DeadLetterStore)


async def test_dead_letters_add_list_get(dead_letters: Any) -> None:
    store = dead_letters(10)
    assert await store.count() == 0
    assert list(await store.list()) == []
    for n in range(3):
        await store.add(record(n))
    assert [r.id for r in await store.list()] == [1000, 1001, 1002]  # oldest first
    assert [r.id for r in await store.list(limit=2)] == [1000, 1001]
    assert [r.id for r in await store.list(None)] == [1000, 1001, 1002]
    assert await store.count() == 3
    got = await store.get(1001)
    assert got is not None
    assert got.error_message == "failure 1"
    assert await store.get(999) is None


async def test_dead_letters_are_bounded_oldest_evicted(dead_letters: Any) -> None:
    store = dead_letters(3)
    for n in range(5):
        await store.add(record(n))
    assert [r.id for r in await store.list()] == [1002, 1003, 1004]
    assert await store.count() == 3


async def test_dead_letters_update_keeps_the_place(dead_letters: Any) -> None:
    store = dead_letters(10)
    for n in range(3):
        await store.add(record(n))
    await store.update(record(0, attempts=4, error_message="again"))
    records = await store.list()
    assert [r.id for r in records] == [1000, 1001, 1002]
    assert (records[0].attempts, records[0].error_message) == (4, "again")
    await store.update(record(9))  # not stored: nothing happens
    assert await store.count() == 3


async def test_dead_letters_delete_and_purge(dead_letters: Any) -> None:
    store = dead_letters(10)
    for n in range(3):
        await store.add(record(n))
    assert await store.delete(1001) is True
    assert await store.delete(1001) is False
    assert [r.id for r in await store.list()] == [1000, 1002]
    assert await store.purge() == 2
    assert await store.count() == 0
    assert await store.purge() == 0


# ------------------------------------------------------------------------------- memory only


def test_memory_idempotency_store_exposes_its_table() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(max_entries=100, ttl=5.0, clock=clock)
    assert store.ttl == 5.0
    assert store.max_entries == 100
    status, value = store.table.claim(42, 0)
    assert (status, value) == (_core.CLAIMED, None)
    store.table.complete(42, 0, "r")
    assert asyncio.run(store.claim((42, 0))) == (COMPLETED, "r")
    assert (store.hits, store.misses) == (1, 1)
    assert len(store) == 1
    assert repr(store) == "MemoryIdempotencyStore(max_entries=100, ttl=5.0)"


def test_claim_status_values_are_the_core_constants() -> None:
    assert (_core.CLAIMED, _core.IN_FLIGHT, _core.COMPLETED) == (CLAIMED, IN_FLIGHT, COMPLETED)


def test_memory_idempotency_store_evicts_the_oldest_completed_entry() -> None:
    store = MemoryIdempotencyStore(max_entries=4, ttl=60.0, shards=1)

    async def run() -> None:
        for n in range(6):
            await store.claim((n, 0))
            await store.complete((n, 0), n)
        assert store.evictions == 2
        assert (await store.claim((0, 0))).status is CLAIMED  # evicted: runs again
        assert await store.claim((5, 0)) == (COMPLETED, 5)

    asyncio.run(run())


def test_memory_cache_store_exposes_its_table() -> None:
    store = MemoryCacheStore(max_entries=2)
    assert store.max_entries == 2
    store.table.put(1, b"a", "A", 30.0)
    assert asyncio.run(store.get(1, b"a")) == (True, "A")
    store.table.put(1, b"b", "B", 30.0)
    store.table.put(1, b"c", "C", 30.0)
    assert store.evictions == 1
    assert len(store) == 2
    assert (store.hits, store.misses) == (1, 0)
    assert repr(store) == "MemoryCacheStore(max_entries=2)"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MemoryIdempotencyStore(max_entries=0), "max_entries"),
        (lambda: MemoryIdempotencyStore(ttl=0), "ttl"),
        (lambda: MemoryIdempotencyStore(ttl=-1.0), "ttl"),
        (lambda: MemoryCacheStore(max_entries=0), "max_entries"),
    ],
)
def test_memory_stores_reject_bad_sizes(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_submodules_are_reachable_from_a_plain_import() -> None:
    import subprocess
    import sys

    code = (
        "import catga; print(catga.memory.MemoryIdempotencyStore.__name__, catga.stores.IdempotencyStore.__name__,"
        " 'memory' in dir(catga), 'stores' in dir(catga))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["MemoryIdempotencyStore", "IdempotencyStore", "True", "True"]
    assert catga.memory.MemoryDeadLetterStore is MemoryDeadLetterStore
    assert catga.memory.MemoryIdempotencyStore.__module__ == "catga.memory"
    assert catga.stores.ClaimResult.__module__ == "catga.stores"


# ----------------------------------------------------- MemoryIdempotencyStore against a dict model

TTL = 10.5  # advances are whole seconds, so no entry expires exactly at a step


class IdempotencyModel(RuleBasedStateMachine):
    """The store against a dict `key -> (expires_at, completed, value)`; nothing is ever evicted."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = MemoryIdempotencyStore(max_entries=10_000, ttl=TTL, clock=self.clock)
        self.model: dict[tuple[int, int], tuple[float, bool, object]] = {}

    @initialize()
    def start(self) -> None:
        self.model.clear()

    def live(self, key: tuple[int, int]) -> tuple[float, bool, object] | None:
        entry = self.model.get(key)
        if entry is not None and entry[0] <= self.clock.now:
            del self.model[key]
            entry = None
        return entry

    keys = st.tuples(st.integers(1, 6), st.sampled_from([0, HANDLER]))

    @rule(key=keys)
    def claim(self, key: tuple[int, int]) -> None:
        got = asyncio.run(self.store.claim(key))
        entry = self.live(key)
        if entry is None:
            assert got == (CLAIMED, None)
            self.model[key] = (self.clock.now + TTL, False, None)
        elif entry[1]:
            assert got == (COMPLETED, entry[2])
        else:
            assert got == (IN_FLIGHT, None)

    @rule(key=keys, value=st.one_of(st.none(), st.integers(), st.text(max_size=3)))
    def complete(self, key: tuple[int, int], value: object) -> None:
        asyncio.run(self.store.complete(key, value))
        self.model[key] = (self.clock.now + TTL, True, value)

    @rule(key=keys)
    def release(self, key: tuple[int, int]) -> None:
        asyncio.run(self.store.release(key))
        entry = self.live(key)
        if entry is not None and not entry[1]:
            del self.model[key]

    @rule(seconds=st.integers(1, 6))
    def advance(self, seconds: int) -> None:
        self.clock.now += seconds

    @invariant()
    def no_evictions(self) -> None:
        assert self.store.evictions == 0


TestIdempotencyModel = IdempotencyModel.TestCase
TestIdempotencyModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 2)), max_size=30))
@settings(max_examples=30, deadline=None)
def test_cache_store_against_a_dict_model(puts: list[tuple[int, int]]) -> None:
    store = MemoryCacheStore(max_entries=1000)
    model: dict[tuple[int, bytes], int] = {}

    async def run() -> None:
        for n, (group, key) in enumerate(puts):
            await store.put(group, bytes([key]), n, 60.0)
            model[(group, bytes([key]))] = n
        for group in range(1, 5):
            for key in range(3):
                expected = model.get((group, bytes([key])))
                want = (False, None) if expected is None else (True, expected)
                assert await store.get(group, bytes([key])) == want

    asyncio.run(run())
