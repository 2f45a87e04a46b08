"""The in-memory idempotency table (rust/core/src/idempotency.rs, catga/_pure/_stores.py), through `_core`.

Time comes from a fake clock in whole seconds, so that both cores and the model below compute the
same nanoseconds exactly.
"""

import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catga._core import CLAIMED, COMPLETED, IN_FLIGHT, IdempotencyTable, handler_key

TTL = 10.0


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(max_entries: int = 1000, shards: int | None = 1, ttl: float = TTL) -> tuple[IdempotencyTable, FakeClock]:
    clock = FakeClock()
    return IdempotencyTable(max_entries=max_entries, ttl=ttl, shards=shards, clock=clock), clock


# -- claim, complete, release ---------------------------------------------------------------------


def test_constants() -> None:
    assert (CLAIMED, IN_FLIGHT, COMPLETED) == (0, 1, 2)


def test_claim_complete_then_hit_returns_the_stored_result() -> None:
    table, _ = make()
    result = {"order": "o1"}
    assert table.claim(42) == (CLAIMED, None)
    table.complete(42, 0, result)
    status, stored = table.claim(42)
    assert status == COMPLETED
    assert stored is result
    assert table.claim(42, 0) == (COMPLETED, result)
    assert (table.hits, table.misses, table.evictions, len(table)) == (2, 1, 0, 1)


def test_a_none_result_is_stored_too() -> None:
    table, _ = make()
    assert table.claim(1)[0] == CLAIMED
    table.complete(1, 0, None)
    assert table.claim(1) == (COMPLETED, None)
    assert table.hits == 1


def test_a_duplicate_while_in_flight_is_refused() -> None:
    table, _ = make()
    assert table.claim(7) == (CLAIMED, None)
    assert table.claim(7) == (IN_FLIGHT, None)
    assert table.claim(7) == (IN_FLIGHT, None)
    # In-flight answers are neither hits nor misses.
    assert (table.hits, table.misses) == (0, 1)


def test_release_lets_the_next_claim_run() -> None:
    table, _ = make()
    assert table.claim(7)[0] == CLAIMED
    table.release(7)
    assert len(table) == 0
    assert table.claim(7)[0] == CLAIMED
    table.complete(7, 0, "done")
    table.release(7)  # a completed entry stays
    assert table.claim(7) == (COMPLETED, "done")
    table.release(8)  # nothing to release


def test_each_event_handler_has_its_own_key() -> None:
    table, _ = make()
    email, audit = handler_key("app.OrderPlaced.send_email"), handler_key("app.OrderPlaced.audit")
    assert table.claim(5, email)[0] == CLAIMED
    assert table.claim(5, audit)[0] == CLAIMED
    assert table.claim(5)[0] == CLAIMED
    table.complete(5, email, "sent")
    assert table.claim(5, email) == (COMPLETED, "sent")
    assert table.claim(5, audit) == (IN_FLIGHT, None)
    table.release(5, audit)
    assert table.claim(5, handler=audit) == (CLAIMED, None)


def test_complete_without_a_claim_stores_and_a_second_complete_replaces() -> None:
    table, _ = make()
    table.complete(9, 0, "late")
    assert table.claim(9) == (COMPLETED, "late")
    table.complete(9, 0, "again")
    assert table.claim(9) == (COMPLETED, "again")


# -- time -----------------------------------------------------------------------------------------


def test_entries_expire_ttl_after_they_were_claimed_or_completed() -> None:
    table, clock = make()
    assert table.claim(1)[0] == CLAIMED
    clock.advance(TTL - 1)
    assert table.claim(1)[0] == IN_FLIGHT
    clock.advance(1)
    # The claim expired: it counts as absent, so a new caller owns the key.
    assert table.claim(1)[0] == CLAIMED
    clock.advance(2)
    table.complete(1, 0, "r")
    clock.advance(TTL - 1)
    assert table.claim(1) == (COMPLETED, "r")
    clock.advance(1)
    assert table.claim(1) == (CLAIMED, None)
    assert (table.hits, table.misses) == (1, 3)


def test_purge_expired_and_the_sweep() -> None:
    table, clock = make()
    for message_id in range(20):
        table.complete(message_id, 0, message_id)
    assert len(table) == 20
    clock.advance(TTL)
    # Each insert drops up to 8 expired entries from the oldest end; `len` counts what is held.
    assert table.claim(100)[0] == CLAIMED
    assert len(table) == 20 - 8 + 1
    assert table.purge_expired() == 20 - 8
    assert len(table) == 1
    assert table.evictions == 0


def test_clock_errors() -> None:
    readings: list[object] = [0.0]
    table = IdempotencyTable(clock=lambda: readings[-1])
    readings.append(float("nan"))
    with pytest.raises(ValueError, match=r"^clock reading `nan` must be a finite number of seconds$"):
        table.claim(1)
    readings.append("soon")
    with pytest.raises(TypeError, match=r"clock must return monotonic seconds as a float, got `'soon'`"):
        table.claim(1)
    readings.append(5)  # an int is a number of seconds too
    assert table.claim(1)[0] == CLAIMED


def test_a_clock_before_its_first_reading_counts_as_the_first_reading() -> None:
    table, clock = make()
    clock.advance(-100)
    assert table.claim(1)[0] == CLAIMED
    clock.advance(100 + TTL - 1)
    assert table.claim(1)[0] == IN_FLIGHT
    clock.advance(1)
    assert table.claim(1)[0] == CLAIMED


def test_the_default_clock_is_monotonic() -> None:
    table = IdempotencyTable(ttl=3600.0)
    assert table.claim(1)[0] == CLAIMED
    assert table.claim(1)[0] == IN_FLIGHT
    assert table.purge_expired() == 0


# -- capacity -------------------------------------------------------------------------------------


def test_a_full_table_evicts_the_oldest_completed_entry() -> None:
    table, clock = make(max_entries=3)
    for message_id in (1, 2, 3):
        table.complete(message_id, 0, message_id)
        clock.advance(1)
    assert table.claim(4)[0] == CLAIMED
    assert (table.evictions, len(table)) == (1, 3)
    assert table.claim(1)[0] == CLAIMED  # evicted: a duplicate would run again
    assert table.claim(3) == (COMPLETED, 3)
    assert table.evictions == 2


def test_claims_are_evicted_last() -> None:
    table, _ = make(max_entries=3)
    assert table.claim(1)[0] == CLAIMED  # the oldest entry, still in flight
    table.complete(2, 0, "b")
    table.complete(3, 0, "c")
    assert table.claim(4)[0] == CLAIMED
    assert table.claim(1)[0] == IN_FLIGHT
    assert table.claim(2)[0] == CLAIMED  # 2 was the oldest completed entry
    assert table.claim(4)[0] == IN_FLIGHT
    # Only claims left: the oldest claim goes, and a duplicate of it would run.
    assert table.claim(5)[0] == CLAIMED
    assert table.evictions == 3
    assert table.claim(1)[0] == CLAIMED


def test_expired_entries_make_room_without_counting_as_evictions() -> None:
    table, clock = make(max_entries=2)
    table.complete(1, 0, "a")
    clock.advance(5)
    table.complete(2, 0, "b")
    clock.advance(TTL - 5)
    assert table.claim(3)[0] == CLAIMED
    assert table.evictions == 0
    assert table.claim(2) == (COMPLETED, "b")


def test_capacity_is_per_shard() -> None:
    table, _ = make(max_entries=10, shards=4)
    for message_id in range(100):
        table.complete(message_id, 0, message_id)
    # ceil(10 / 4) = 3 entries per shard.
    assert len(table) == 12
    assert table.evictions == 88


def test_an_evicted_value_may_use_the_table_when_it_is_dropped() -> None:
    """Values are dropped after the table's lock is released (a held lock would deadlock here)."""
    table, _ = make(max_entries=1)
    seen: list[tuple[int, Any]] = []

    class Reentrant:
        def __del__(self) -> None:
            seen.append(table.claim(99))

    table.complete(1, 0, Reentrant())
    table.complete(2, 0, "pushes the first out")
    gc.collect()
    assert seen == [(CLAIMED, None)]


# -- properties and arguments ---------------------------------------------------------------------


def test_properties_and_repr() -> None:
    table = IdempotencyTable(max_entries=50, ttl=1.5, shards=4)
    assert (table.max_entries, table.ttl, table.shards) == (50, 1.5, 4)
    assert repr(table) == "IdempotencyTable(max_entries=50, ttl=1.5, shards=4)"
    default = IdempotencyTable()
    assert (default.max_entries, default.ttl) == (100_000, 86400.0)
    assert default.shards >= 8
    assert default.shards & (default.shards - 1) == 0


def test_clear_keeps_the_counters() -> None:
    table, _ = make(shards=4)
    for message_id in range(10):
        table.claim(message_id)
    table.clear()
    assert len(table) == 0
    assert table.misses == 10
    assert table.claim(1)[0] == CLAIMED


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0}, "max_entries `0` must be an int from 1 to 2**63 - 1"),
        ({"max_entries": -5}, "max_entries `-5` must be an int from 1 to 2**63 - 1"),
        ({"max_entries": 2**63}, f"max_entries `{2**63}` must be an int from 1 to 2**63 - 1"),
        ({"max_entries": "many"}, "max_entries `many` must be an int from 1 to 2**63 - 1"),
        ({"max_entries": 1.5}, "max_entries `1.5` must be an int from 1 to 2**63 - 1"),
        ({"ttl": 0}, "ttl `0.0` must be a positive, finite number of seconds"),
        ({"ttl": -1.5}, "ttl `-1.5` must be a positive, finite number of seconds"),
        ({"ttl": float("inf")}, "ttl `inf` must be a positive, finite number of seconds"),
        ({"ttl": float("nan")}, "ttl `nan` must be a positive, finite number of seconds"),
        ({"ttl": "1"}, "ttl `1` must be a positive, finite number of seconds"),
        ({"shards": 3}, "shards `3` must be None or a power of two from 1 to 65536"),
        ({"shards": 0}, "shards `0` must be None or a power of two from 1 to 65536"),
        ({"shards": 2**17}, f"shards `{2**17}` must be None or a power of two from 1 to 65536"),
        ({"shards": "8"}, "shards `8` must be None or a power of two from 1 to 65536"),
    ],
)
def test_invalid_arguments_name_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("*", r"\*") + "$"):
        IdempotencyTable(**kwargs)


def test_a_tiny_ttl_counts_as_one_nanosecond() -> None:
    table, clock = make(ttl=1e-12)
    assert table.ttl == 1e-9
    assert table.claim(1)[0] == CLAIMED
    clock.advance(1)
    assert table.claim(1)[0] == CLAIMED


@pytest.mark.parametrize("bad", [-1, 2**64, 1.0, "1", None])
def test_keys_must_be_64_bit_unsigned_ints(bad: Any) -> None:
    table, _ = make()
    with pytest.raises(ValueError, match=rf"^message_id `{bad}` must be an int from 0 to 2\*\*64 - 1$"):
        table.claim(bad)
    with pytest.raises(ValueError, match=rf"^handler `{bad}` must be an int from 0 to 2\*\*64 - 1$"):
        table.complete(1, bad, None)
    with pytest.raises(ValueError, match=r"^message_id"):
        table.release(bad)


def test_keys_take_anything_with_index() -> None:
    class Id:
        def __index__(self) -> int:
            return 3

    table, _ = make()
    assert table.claim(Id())[0] == CLAIMED  # type: ignore[arg-type]
    assert table.claim(3)[0] == IN_FLIGHT
    assert table.claim(2**64 - 1, 2**64 - 1)[0] == CLAIMED
    assert table.claim(True)[0] == CLAIMED
    assert table.claim(1, False)[0] == IN_FLIGHT


def test_not_subclassable() -> None:
    with pytest.raises(TypeError):
        type("Sub", (IdempotencyTable,), {})


# -- handler_key ----------------------------------------------------------------------------------


def test_handler_key_is_fnv1a_of_the_utf8_name() -> None:
    # Fixed values: the key must be the same in every process, on both cores, in every version.
    assert handler_key("") == 0xCBF29CE484222325
    assert handler_key("a") == 0xAF63DC4C8601EC8C
    assert handler_key("foobar") == 0x85944171F73967E8
    assert handler_key("app.OnOrderPlaced.send_email") == 5506530532798266667
    assert handler_key("café.Handler") == _fnv1a("café.Handler".encode())
    assert handler_key("app.A.handle") != handler_key("app.B.handle")


def test_handler_key_rejects_what_is_not_a_str() -> None:
    with pytest.raises(ValueError, match=r"^name `b'x'` must be a str$"):
        handler_key(b"x")  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        handler_key("\udc80")


def _fnv1a(data: bytes) -> int:
    key = 0xCBF29CE484222325
    for byte in data:
        key = ((key ^ byte) * 0x100000001B3) % 2**64
    return key


# -- garbage collection ---------------------------------------------------------------------------


class Holder:
    def __init__(self, table: IdempotencyTable) -> None:
        self.table = table


def test_a_result_referring_to_its_table_is_collected() -> None:
    table = IdempotencyTable()
    holder = Holder(table)
    table.claim(1)
    table.complete(1, 0, holder)
    ref = weakref.ref(holder)
    del table, holder
    gc.collect()
    assert ref() is None


def test_a_clock_referring_to_its_table_is_collected() -> None:
    class TableClock(FakeClock):
        table: IdempotencyTable | None = None

    clock = TableClock()
    clock.table = IdempotencyTable(clock=clock)
    ref = weakref.ref(clock)
    del clock
    gc.collect()
    assert ref() is None


# -- the model ------------------------------------------------------------------------------------


class Model:
    """The table's rules at their plainest: expired entries vanish at once, evictions scan."""

    def __init__(self, capacity: int, ttl: int) -> None:
        self.capacity = capacity
        self.ttl = ttl
        # key -> (completed, expires, value, order)
        self.entries: dict[tuple[int, int], tuple[bool, int, Any, int]] = {}
        self.order = 0
        self.hits = self.misses = self.evictions = 0

    def _expire(self, now: int) -> None:
        self.entries = {k: e for k, e in self.entries.items() if now < e[1]}

    def _stamp(self, key: tuple[int, int], completed: bool, now: int, value: Any) -> None:
        self.order += 1
        self.entries[key] = (completed, now + self.ttl, value, self.order)

    def _make_room(self) -> None:
        while len(self.entries) >= self.capacity:
            completed = [k for k, e in self.entries.items() if e[0]]
            victim = min(completed or self.entries, key=lambda k: self.entries[k][3])
            del self.entries[victim]
            self.evictions += 1

    def claim(self, key: tuple[int, int], now: int) -> tuple[int, Any]:
        self._expire(now)
        entry = self.entries.get(key)
        if entry is not None:
            if entry[0]:
                self.hits += 1
                return (COMPLETED, entry[2])
            return (IN_FLIGHT, None)
        self.misses += 1
        self._make_room()
        self._stamp(key, False, now, None)
        return (CLAIMED, None)

    def complete(self, key: tuple[int, int], value: Any, now: int) -> None:
        self._expire(now)
        if key not in self.entries:
            self._make_room()
        self._stamp(key, True, now, value)

    def release(self, key: tuple[int, int], now: int) -> None:
        self._expire(now)
        entry = self.entries.get(key)
        if entry is not None and not entry[0]:
            del self.entries[key]


KEYS = st.sampled_from([(message_id, handler) for message_id in range(6) for handler in (0, 77)])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), KEYS),
        st.tuples(st.just("complete"), KEYS, st.one_of(st.none(), st.integers(0, 9))),
        st.tuples(st.just("release"), KEYS),
        st.tuples(st.just("advance"), st.integers(0, 4)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.one_of(st.integers(1, 6), st.just(1000)), ttl=st.integers(1, 8), ops=OPS)
def test_matches_the_model(capacity: int, ttl: int, ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    table = IdempotencyTable(max_entries=capacity, ttl=float(ttl), shards=1, clock=clock)
    model = Model(capacity, ttl)
    now = 0
    for op in ops:
        if op[0] == "advance":
            now += op[1]
            clock.now = float(now)
        elif op[0] == "claim":
            assert table.claim(*op[1]) == model.claim(op[1], now), op
        elif op[0] == "complete":
            table.complete(*op[1], op[2])
            model.complete(op[1], op[2], now)
        else:
            table.release(*op[1])
            model.release(op[1], now)
    assert (table.hits, table.misses, table.evictions) == (model.hits, model.misses, model.evictions)
    table.purge_expired()
    model._expire(now)
    assert len(table) == len(model.entries)


# -- threads --------------------------------------------------------------------------------------


def test_eight_threads_claim_every_id_exactly_once() -> None:
    threads, ids = 8, 400
    table = IdempotencyTable(shards=8)
    owners: list[list[int]] = [[] for _ in range(threads)]
    answers = [[0, 0] for _ in range(threads)]  # (in flight, completed) seen per thread
    barrier = threading.Barrier(threads)

    def work(thread: int) -> None:
        barrier.wait()
        for i in range(ids):
            message_id = (i + thread * ids // threads) % ids
            status, result = table.claim(message_id, message_id % 2)
            if status == CLAIMED:
                owners[thread].append(message_id)
                table.complete(message_id, message_id % 2, message_id * 10)
            elif status == IN_FLIGHT:
                answers[thread][0] += 1
            else:
                assert result == message_id * 10
                answers[thread][1] += 1

    run_threads(work, threads)
    claimed = sorted(message_id for mine in owners for message_id in mine)
    assert claimed == list(range(ids))
    assert table.misses == ids
    assert table.hits == sum(completed for _, completed in answers)
    assert ids + sum(in_flight + completed for in_flight, completed in answers) == threads * ids
    assert len(table) == ids


def run_threads(work: Callable[[int], None], count: int) -> None:
    errors: list[BaseException] = []

    def guarded(thread: int) -> None:
        try:
            work(thread)
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    workers = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
