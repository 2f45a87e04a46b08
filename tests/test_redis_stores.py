"""`catga.redis`: what the Redis stores do beyond the protocol contract (tests/test_stores_contract.py).

The mediator end to end over Redis stores, two store objects on one server standing for two
processes, the shared rate limit, how values are encoded, errors (unreachable server, bad
arguments, redis-py not installed). Every test runs against the session's throw-away server
(`redis_url`, flushed per test).
"""

import asyncio
import dataclasses
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio

import catga
from catga.behaviors import Cache, DeadLetter, Idempotency, RateLimit
from catga.health import HealthRegistry, HealthStatus
from catga.redis import RedisCacheStore, RedisDeadLetterStore, RedisIdempotencyStore, RedisRateLimit
from catga.redis._codec import decode_value, encode_value
from catga.stores import ClaimStatus

CLAIMED, IN_FLIGHT, COMPLETED = ClaimStatus.CLAIMED, ClaimStatus.IN_FLIGHT, ClaimStatus.COMPLETED
MINIMAL = catga.Config.minimal()


class OrderPlaced(catga.Event):
    order_id: str
    total: int


class PlaceOrder(catga.Command[OrderPlaced]):
    customer: str


class GetOrder(catga.Query[dict[str, Any]]):
    order_id: str


class Receipt(msgspec.Struct):
    number: int
    lines: list[str]


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Handler:
    def __init__(self, result: Any = None) -> None:
        self.calls = 0
        self.result = result
        self.error: BaseException | None = None

    async def __call__(self, message: Any) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Stores (and rate limits) appended here are closed after the test, in its event loop."""
    opened: list[Any] = []
    yield opened
    for item in opened:
        await item.aclose()


def unreachable_url() -> str:
    from _servers import free_port

    return f"redis://127.0.0.1:{free_port()}/0"


# ------------------------------------------------------------------------------ through a mediator


async def test_a_mediator_replays_results_from_redis(redis_url: str, closing: list[Any]) -> None:
    store = RedisIdempotencyStore(redis_url)
    closing.append(store)
    handler = Handler()
    mediator = catga.Mediator(config=catga.Config.default().with_(idempotency=Idempotency(store=store)))
    mediator.register(PlaceOrder, handler)
    message = PlaceOrder("ada")
    handler.result = OrderPlaced("o-1", 3, message_id=message.message_id)
    first = await mediator.send_result(message)
    assert first.value == handler.result
    assert "from_cache" not in first.metadata
    replay = await mediator.send_result(message)
    assert replay.metadata["from_cache"] is True
    assert type(replay.value) is OrderPlaced  # rebuilt from its wire name, not a dict
    assert replay.value == handler.result
    assert handler.calls == 1
    assert (store.hits, store.misses) == (1, 1)

    # Another "process": its own store object and mediator over the same server.
    other_store = RedisIdempotencyStore(redis_url)
    closing.append(other_store)
    other = catga.Mediator(config=catga.Config.default().with_(idempotency=Idempotency(store=other_store)))
    other_handler = Handler("never")
    other.register(PlaceOrder, other_handler)
    assert (await other.send_result(message)).value == handler.result
    assert other_handler.calls == 0


async def test_a_failed_handler_releases_its_claim_in_redis(redis_url: str, closing: list[Any]) -> None:
    store = RedisIdempotencyStore(redis_url)
    closing.append(store)
    handler = Handler(OrderPlaced("o-1", 1))
    handler.error = RuntimeError("down")
    mediator = catga.Mediator(config=MINIMAL.with_(idempotency=Idempotency(store=store)))
    mediator.register(PlaceOrder, handler)
    message = PlaceOrder("ada")
    with pytest.raises(RuntimeError):
        await mediator.send(message)
    assert (await store.claim((message.message_id, 0))).status is CLAIMED  # released: free again
    await store.release((message.message_id, 0))
    handler.error = None
    assert await mediator.send(message) is handler.result


async def test_a_result_redis_cannot_keep_is_returned_and_not_stored(
    redis_url: str, closing: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisIdempotencyStore(redis_url)
    closing.append(store)
    handler = Handler(object())
    mediator = catga.Mediator(config=MINIMAL.with_(idempotency=Idempotency(store=store)))
    mediator.register(PlaceOrder, handler)
    message = PlaceOrder("ada")
    with caplog.at_level(logging.WARNING, logger="catga"):
        assert await mediator.send(message) is handler.result
    assert "could not keep the result" in caplog.text
    await mediator.send(message)  # the claim was released: it runs again
    assert handler.calls == 2


async def test_a_mediator_caches_queries_in_redis(redis_url: str, closing: list[Any]) -> None:
    store = RedisCacheStore(redis_url)
    closing.append(store)
    handler = Handler({"id": "o1", "total": 3})
    mediator = catga.Mediator(config=MINIMAL.with_(cache=Cache(store=store)))
    mediator.register(GetOrder, handler)
    mediator.cache(GetOrder, ttl=30.0)
    assert await mediator.send(GetOrder("o1")) == {"id": "o1", "total": 3}
    hit = await mediator.send_result(GetOrder("o1"))
    assert hit.metadata["from_cache"] is True
    assert hit.value == {"id": "o1", "total": 3}
    await mediator.send(GetOrder("o2"))
    assert handler.calls == 2
    await mediator.ainvalidate(GetOrder, order_id="o1")
    await mediator.send(GetOrder("o1"))
    await mediator.send(GetOrder("o2"))
    assert handler.calls == 3  # o1 ran again, o2 was still cached
    await mediator.ainvalidate(GetOrder)
    await mediator.send(GetOrder("o2"))
    assert handler.calls == 4


async def test_a_mediator_dead_letters_into_redis(redis_url: str, closing: list[Any]) -> None:
    store = RedisDeadLetterStore(redis_url, max_size=10)
    closing.append(store)
    handler = Handler(OrderPlaced("o-1", 1))
    handler.error = ValueError("card declined")
    mediator = catga.Mediator(config=MINIMAL.with_(dead_letter=DeadLetter(store=store)))
    mediator.register(PlaceOrder, handler)
    message = PlaceOrder("ada")
    with pytest.raises(ValueError, match="card declined"):
        await mediator.send(message)
    (record,) = await mediator.dead_letters.list()
    assert record.message == message  # rebuilt from its body and wire name
    assert record.error_type == "builtins.ValueError"
    assert record.first_failed_at.tzinfo is not None
    handler.error = None
    assert (await mediator.dead_letters.retry(record.id)).value is handler.result
    assert await mediator.dead_letters.count() == 0


async def test_the_health_check_pings_redis_stores(redis_url: str, closing: list[Any]) -> None:
    store = RedisIdempotencyStore(redis_url)
    down = RedisDeadLetterStore(unreachable_url())
    closing += [store, down]
    assert await store.ping() is True
    config = catga.Config.default().with_(idempotency=Idempotency(store=store))
    result = (await HealthRegistry(catga.Mediator(config=config)).ready()).checks["stores"]
    assert result.status is HealthStatus.HEALTHY
    config = config.with_(dead_letter=DeadLetter(store=down))
    result = (await HealthRegistry(catga.Mediator(config=config)).ready()).checks["stores"]
    assert result.status is HealthStatus.UNHEALTHY
    assert down.url in result.detail


# ------------------------------------------------------------------- two processes, one server


async def test_two_idempotency_stores_share_claims_and_results(redis_url: str, closing: list[Any]) -> None:
    a, b = RedisIdempotencyStore(redis_url), RedisIdempotencyStore(redis_url)
    closing += [a, b]
    key = (catga.new_id(), 0)
    assert await a.claim(key) == (CLAIMED, None)
    assert await b.claim(key) == (IN_FLIGHT, None)
    await b.release(key)  # b holds no claim of its own: any claim is ended (the protocol's rule)
    assert await b.claim(key) == (CLAIMED, None)
    await a.complete(key, Receipt(7, ["tea"]))
    assert await b.claim(key) == (COMPLETED, Receipt(7, ["tea"]))


async def test_a_late_release_does_not_free_another_holders_claim(redis_url: str, closing: list[Any]) -> None:
    a, b = RedisIdempotencyStore(redis_url, ttl=0.1), RedisIdempotencyStore(redis_url, ttl=60.0)
    closing += [a, b]
    key = (catga.new_id(), 0)
    assert (await a.claim(key)).status is CLAIMED
    await asyncio.sleep(0.15)  # a's lease ran out while its handler was still running
    assert (await b.claim(key)).status is CLAIMED
    await a.release(key)  # a's handler failed: its release must not end b's claim
    assert (await a.claim(key)).status is IN_FLIGHT


async def test_two_cache_stores_share_entries(redis_url: str, closing: list[Any]) -> None:
    a, b = RedisCacheStore(redis_url), RedisCacheStore(redis_url)
    closing += [a, b]
    await a.put(1, b"k", {"total": 3}, 30.0)
    assert await b.get(1, b"k") == (True, {"total": 3})
    await b.invalidate_group(1)
    assert await a.get(1, b"k") == (False, None)
    assert (a.hits, a.misses, b.hits, b.misses) == (0, 1, 1, 0)


async def test_cache_groups_forget_expired_keys(redis_url: str, closing: list[Any]) -> None:
    store = RedisCacheStore(redis_url)
    closing.append(store)
    await store.put(1, b"old", 1, 0.05)
    await asyncio.sleep(0.1)
    await store.put(1, b"new", 2, 30.0)
    members = await store.client.zrange("catga:cache:{1}", 0, -1)
    assert members == [b"new"]  # the expired key was dropped from the group's set
    seen: list[bytes] = []
    await store.invalidate_where(1, lambda key: seen.append(key) or False)
    assert seen == [b"new"]


async def test_two_dead_letter_stores_share_records(redis_url: str, closing: list[Any]) -> None:
    a, b = RedisDeadLetterStore(redis_url, max_size=2), RedisDeadLetterStore(redis_url, max_size=2)
    closing += [a, b]
    now = datetime.now(UTC)

    def record(n: int) -> catga.DeadLetterRecord:
        message = PlaceOrder(f"c{n}")
        return catga.DeadLetterRecord(
            id=n,
            message_type=catga.wire_name(PlaceOrder),
            message=message,
            body=msgspec.msgpack.encode(message),
            error_type="builtins.ValueError",
            error_message="no",
            first_failed_at=now,
            last_failed_at=now,
        )

    for n in (1, 2, 3):
        await (a if n % 2 else b).add(record(n))
    assert [r.id for r in await b.list()] == [2, 3]
    assert (a.evictions, b.evictions) == (1, 0)
    got = await b.get(3)
    assert got is not None
    assert type(got.message) is PlaceOrder
    assert got.message.customer == "c3"
    assert got.body == msgspec.msgpack.encode(got.message)
    assert await a.list(0) == []
    with pytest.raises(ValueError, match="limit"):
        await a.list(-1)


async def test_a_record_of_an_unknown_class_keeps_its_body(redis_url: str, closing: list[Any]) -> None:
    store = RedisDeadLetterStore(redis_url)
    closing.append(store)
    now = datetime.now(UTC)
    record = catga.DeadLetterRecord(
        id=5,
        message_type="elsewhere.Unknown",
        body=b"\x81\xa1a\x01",
        error_type="builtins.ValueError",
        error_message="no",
        first_failed_at=now,
        last_failed_at=now,
    )
    await store.add(record)
    assert await store.get(5) == record


# ------------------------------------------------------------------------- the shared rate limit


async def test_two_rate_limits_share_one_bucket(redis_url: str, closing: list[Any]) -> None:
    a = RedisRateLimit(redis_url, rate=1.0, burst=2.0)
    b = RedisRateLimit(redis_url, rate=1.0, burst=2.0)
    closing += [a, b]
    assert await a.try_acquire() == 0.0
    assert await b.try_acquire() == 0.0
    wait = await a.try_acquire()
    assert 0.9 < wait <= 1.0
    assert await b.try_acquire() > 0.0
    with pytest.raises(ValueError, match="burst"):
        await a.try_acquire(3)


async def test_the_bucket_refills_continuously(redis_url: str, closing: list[Any]) -> None:
    limit = RedisRateLimit(redis_url, rate=20.0, burst=1.0)
    closing.append(limit)
    assert await limit.try_acquire() == 0.0
    wait = await limit.try_acquire()
    assert 0.0 < wait <= 0.05
    await asyncio.sleep(wait)
    assert await limit.try_acquire() == 0.0


async def test_a_mediator_is_rate_limited_across_processes(redis_url: str, closing: list[Any]) -> None:
    limits = [RedisRateLimit(redis_url, rate=0.5, burst=2.0) for _ in range(2)]
    closing += limits
    mediators = []
    for limit in limits:
        mediator = catga.Mediator(config=MINIMAL.with_(rate_limit=limit))
        mediator.register(PlaceOrder, Handler("ok"))
        mediators.append(mediator)
    assert await mediators[0].send(PlaceOrder("a")) == "ok"
    assert await mediators[1].send(PlaceOrder("b")) == "ok"
    with pytest.raises(catga.RateLimited) as caught:
        await mediators[0].send(PlaceOrder("c"))
    assert caught.value.retry_after > 1.0


async def test_rate_limit_waits_and_per_type(redis_url: str, closing: list[Any]) -> None:
    # A bucket's key lives until it is full again (1 / rate = 0.5 s here): read them within that.
    limit = RedisRateLimit(redis_url, rate=2.0, burst=1.0, wait=True, max_wait=2.0, per_type=True)
    closing.append(limit)
    mediator = catga.Mediator(config=MINIMAL.with_(rate_limit=limit))
    mediator.register(PlaceOrder, Handler("ok"))
    mediator.register(GetOrder, Handler({}))
    await mediator.send(PlaceOrder("a"))
    await mediator.send(GetOrder("o1"))  # its own bucket: not waiting for PlaceOrder's
    keys = sorted(await limit.client.keys("catga:rate:default:*"))
    assert keys == [f"catga:rate:default:{catga.wire_name(t)}".encode() for t in (GetOrder, PlaceOrder)]
    started = asyncio.get_running_loop().time()
    await mediator.send(PlaceOrder("b"))  # waits ~0.5 s for a token
    assert asyncio.get_running_loop().time() - started > 0.2


def test_redis_rate_limit_is_a_rate_limit(redis_url: str) -> None:
    limit = RedisRateLimit(redis_url, rate=10.0, burst=5.0, key="orders")
    assert isinstance(limit, RateLimit)
    config = catga.Config(rate_limit=limit)
    assert config.rate_limit is limit
    assert repr(limit).startswith("RedisRateLimit(url='redis://127.0.0.1:")
    assert limit == RedisRateLimit(redis_url, rate=10.0, burst=5.0, key="orders")
    assert limit != RateLimit(rate=10.0, burst=5.0)
    for bad, name in (({"rate": 0}, "rate"), ({"burst": -1.0}, "burst"), ({"max_wait": 0}, "max_wait")):
        settings: dict[str, Any] = {"rate": 1.0, "burst": 1.0} | bad
        with pytest.raises(ValueError, match=f"`{name}`"):
            RedisRateLimit(redis_url, **settings)


# ------------------------------------------------------------------------------- encoding values


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**63),
        1.5,
        "text",
        b"\x00bytes",
        [1, "two", None],
        {"nested": {"list": [1, 2]}},
        datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        OrderPlaced("o-1", 3),
        Receipt(1, ["a", "b"]),
        Point(1, 2),
    ],
    ids=repr,
)
def test_values_round_trip(value: Any) -> None:
    decoded = decode_value(encode_value(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_values_that_cannot_be_kept_raise() -> None:
    with pytest.raises(catga.SerializationError, match=r"builtins\.object"):
        encode_value(object())

    class Local(msgspec.Struct):
        x: int

    with pytest.raises(catga.SerializationError, match="cannot be found by its name"):
        encode_value(Local(1))
    with pytest.raises(catga.SerializationError, match=r"elsewhere\.Gone"):
        decode_value(b"M" + msgspec.msgpack.encode(("elsewhere.Gone", b"\x80")))
    with pytest.raises(catga.SerializationError, match="kind byte"):
        decode_value(b"?")


async def test_an_unencodable_result_stores_nothing(redis_url: str, closing: list[Any]) -> None:
    store = RedisIdempotencyStore(redis_url)
    closing.append(store)
    key = (catga.new_id(), 0)
    await store.claim(key)
    with pytest.raises(catga.SerializationError):
        await store.complete(key, object())
    assert (await store.claim(key)).status is IN_FLIGHT
    cache = RedisCacheStore(redis_url)
    closing.append(cache)
    with pytest.raises(catga.SerializationError):
        await cache.put(1, b"k", object(), 1.0)
    with pytest.raises(ValueError, match="`ttl`"):
        await cache.put(1, b"k", 1, 0)


# -------------------------------------------------------------------------------------- errors


async def test_an_unreachable_server_raises_persistence_error_naming_it(closing: list[Any]) -> None:
    url = unreachable_url()
    store = RedisIdempotencyStore(url)
    limit = RedisRateLimit(url, rate=1.0, burst=1.0)
    closing += [store, limit]
    with pytest.raises(catga.PersistenceError, match=f"`{url}`") as caught:
        await store.claim((1, 0))
    assert caught.value.details == {"url": url}
    assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    with pytest.raises(catga.PersistenceError, match="ping"):
        await store.ping()
    with pytest.raises(catga.PersistenceError, match="rate limit"):
        await limit.try_acquire()


async def test_the_url_is_named_without_its_password(closing: list[Any]) -> None:
    store = RedisCacheStore("redis://:hunter2@127.0.0.1:1/3")
    closing.append(store)
    assert store.url == "redis://127.0.0.1:1/3"
    with pytest.raises(catga.PersistenceError) as caught:
        await store.get(1, b"k")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("argument", "error", "match"),
    [
        (42, TypeError, "`RedisIdempotencyStore` needs a `redis://` URL or a `redis.asyncio.Redis`, got `42`"),
        (None, TypeError, "got `None`"),
        ("localhost:6379", ValueError, "got `localhost:6379`"),
        (redis.Redis(), TypeError, "a synchronous client"),
    ],
)
def test_bad_arguments_are_named(argument: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        RedisIdempotencyStore(argument)


async def test_a_client_passed_in_is_used_and_left_open(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        store = RedisIdempotencyStore(client, ttl=5.0, prefix="app:")
        assert store.client is client
        await store.claim((1, 2))
        assert await client.exists("app:1:2") == 1
        await store.aclose()
        assert await client.ping() is True  # still open: it is the caller's
        decoding = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisCacheStore(decoding)
        await decoding.aclose()
    finally:
        await client.aclose()


async def test_stores_are_async_context_managers(redis_url: str) -> None:
    async with RedisDeadLetterStore(redis_url) as store:
        assert await store.count() == 0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda url: RedisIdempotencyStore(url, ttl=0), "`ttl` must be positive"),
        (lambda url: RedisIdempotencyStore(url, prefix=1), "`prefix`"),
        (lambda url: RedisDeadLetterStore(url, max_size=0), "`max_size` must be positive"),
        (lambda url: RedisRateLimit(url, 1.0, 1.0, key=""), "`key`"),
    ],
)
def test_bad_settings_are_named(make: Any, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make("redis://127.0.0.1:6399/0")


def test_public_names() -> None:
    import catga.redis

    assert catga.redis.__all__ == [
        "RedisCacheStore",
        "RedisCheckpointStore",
        "RedisDeadLetterStore",
        "RedisEventStore",
        "RedisIdempotencyStore",
        "RedisRateLimit",
        "RedisSagaStore",
        "RedisSnapshotStore",
        "RedisWorkerIdLease",
    ]
    assert RedisIdempotencyStore.__module__ == "catga.redis"
    assert "redis" in dir(catga)


@pytest.mark.parametrize("code", ["import catga.redis", "import catga; catga.redis"])
def test_without_redis_py_the_error_names_the_extra(code: str) -> None:
    script = f"import sys; sys.modules['redis'] = None\n{code}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert "pip install catga[redis]" in out.stderr


@pytest.mark.parametrize("protocol", [2, 3])
async def test_either_protocol_of_a_client_passed_in(redis_url: str, protocol: int) -> None:
    # Replies come from Lua scripts and plain commands whose shapes RESP2 and RESP3 share.
    client = redis.asyncio.Redis.from_url(redis_url, protocol=protocol)
    try:
        idempotency, dead_letters = RedisIdempotencyStore(client), RedisDeadLetterStore(client)
        key = (catga.new_id(), 0)
        await idempotency.claim(key)
        await idempotency.complete(key, [1, 2])
        assert await idempotency.claim(key) == (COMPLETED, [1, 2])
        now = datetime.now(UTC)
        record = catga.DeadLetterRecord(
            id=1, message_type="x", error_type="e", error_message="m", first_failed_at=now, last_failed_at=now
        )
        await dead_letters.add(record)
        assert await dead_letters.list() == [record]
        limit = RedisRateLimit(client, rate=1.0, burst=1.0)
        assert await limit.try_acquire() == 0.0
        assert await limit.try_acquire() > 0.0
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "module_name",
    [
        "catga.redis",
        "catga.redis._codec",
        "catga.redis._cache",
        "catga.redis._dead_letters",
        "catga.redis._idempotency",
        "catga.redis._rate_limit",
    ],
)
def test_docstring_examples(module_name: str) -> None:
    import doctest
    import importlib

    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs = vars(module) | {"catga": catga}
    tests = finder.find(module, module_name, globs=globs)
    for name, value in vars(module).items():  # re-exported classes carry the public module
        if isinstance(value, type) and value.__module__.startswith("catga.redis"):
            tests += finder.find(value, f"{module_name}.{name}", module=False, globs=globs)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
    assert runner.tries > 0


async def test_a_claim_expires_after_claim_ttl_and_a_result_after_ttl(redis_url: str) -> None:
    from catga.redis import RedisIdempotencyStore
    from catga.stores import ClaimStatus

    dead = RedisIdempotencyStore(redis_url, ttl=60.0, claim_ttl=0.2)
    alive = RedisIdempotencyStore(redis_url, ttl=60.0, claim_ttl=0.2)
    try:
        assert (await dead.claim((1, 0))).status == ClaimStatus.CLAIMED  # then its process dies
        assert (await alive.claim((1, 0))).status == ClaimStatus.IN_FLIGHT
        await asyncio.sleep(0.3)
        assert (await alive.claim((1, 0))).status == ClaimStatus.CLAIMED  # the lease ran out
        await alive.complete((1, 0), "done")
        await asyncio.sleep(0.3)
        assert await alive.claim((1, 0)) == (ClaimStatus.COMPLETED, "done")  # results keep `ttl`
    finally:
        await dead.aclose()
        await alive.aclose()
    with pytest.raises(ValueError, match="claim_ttl"):
        RedisIdempotencyStore(redis_url, claim_ttl=0)
