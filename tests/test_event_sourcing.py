"""Event sourcing (issue 7): aggregates and their repository, snapshots, projections, upcasting, and
what is proper to `catga.memory.MemoryEventStore` (the shared store contract is in
`test_event_stores.py`)."""

import asyncio
import gc
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

import catga
from catga._event_records import _upcasters
from catga.memory import MemoryCheckpointStore, MemoryEventStore, MemorySnapshotStore
from catga.stores import CheckpointStore, EventStore, SnapshotStore


class OrderPlaced(catga.Event, tag="tests.sourcing.placed"):
    order_id: str
    total: int


class Counted(catga.Event, tag="tests.sourcing.counted"):
    tally_id: str


class OrderShipped(catga.Event, tag="tests.sourcing.shipped"):
    order_id: str


class Order(catga.Aggregate):
    status: str = "new"
    total: int = 0
    lines: list[int] = []  # noqa: RUF012 - copied per instance
    applied = 0  # not annotated: not state

    def place(self, total: int) -> None:
        if self.status != "new":
            raise catga.ValidationError([f"order `{self.id}` already placed"])
        self.raise_event(OrderPlaced(order_id=self.id, total=total))

    def add(self, amount: int) -> None:
        self.raise_event(OrderPlaced(order_id=self.id, total=self.total + amount))

    @catga.applies(OrderPlaced)
    def _placed(self, e: OrderPlaced) -> None:
        self.applied += 1
        self.status, self.total = "placed", e.total
        self.lines.append(e.total)

    @catga.applies(OrderShipped)
    def _shipped(self, e: OrderShipped) -> None:
        self.applied += 1
        self.status = "shipped"


# ------------------------------------------------------------------------------------ aggregates


def test_an_aggregate_declares_its_state_with_annotated_defaults() -> None:
    a, b = Order("o-1"), Order("o-2")
    assert (a.id, a.version, a.pending_events, a.state()) == ("o-1", 0, [], {"status": "new", "total": 0, "lines": []})
    a.place(30)
    assert a.state() == {"status": "placed", "total": 30, "lines": [30]}
    assert b.lines == []  # defaults are copied per instance
    assert a.version == 1
    assert len(a.pending_events) == 1
    a.pending_events.clear()  # a copy
    assert len(a.pending_events) == 1
    with pytest.raises(catga.ValidationError, match="order `o-1` already placed"):
        a.place(5)

    class OrderZ(catga.Event, tag="tests.sourcing.z"):
        pass

    with pytest.raises(TypeError, match=r"no `@catga.applies\(OrderZ\)`"):
        a.raise_event(OrderZ())
    assert repr(a) == "<Order id='o-1' version=1 pending=1>"


def test_bad_aggregate_declarations() -> None:
    with pytest.raises(TypeError, match=r"NoDefault.status` needs a default"):

        class NoDefault(catga.Aggregate):
            status: str

    with pytest.raises(TypeError, match=r"Reserved.version` is reserved"):

        class Reserved(catga.Aggregate):
            version: int = 3

    with pytest.raises(TypeError, match="aggregate id"):
        Order("")
    with pytest.raises(TypeError, match="Aggregate` subclass"):
        catga.AggregateRepository(int, MemoryEventStore())  # type: ignore[type-var]
    with pytest.raises(ValueError, match="snapshot_every"):
        catga.AggregateRepository(Order, MemoryEventStore(), snapshot_every=0)


def test_a_subclass_inherits_state_and_appliers() -> None:
    class Special(Order):
        note: str = "vip"

    special = Special("s-1")
    special.place(3)
    assert special.state() == {"status": "placed", "total": 3, "lines": [3], "note": "vip"}


async def test_load_save_round_trip_and_version_math() -> None:
    store = MemoryEventStore()
    repo = catga.AggregateRepository(Order, store)
    order = await repo.load("o-1")
    assert (order.version, order.status) == (0, "new")
    order.place(30)
    order.add(5)
    assert order.version == 2
    assert await repo.save(order) == 2
    assert (order.version, order.pending_events) == (2, [])
    assert await store.version("o-1") == 2
    again = await repo.load("o-1")
    assert (again.version, again.status, again.total, again.lines) == (2, "placed", 35, [30, 35])
    again.raise_event(OrderShipped(order_id="o-1"))
    assert await repo.save(again) == 3
    assert [e.type for e in await store.read("o-1")] == [
        "tests.sourcing.placed",
        "tests.sourcing.placed",
        "tests.sourcing.shipped",
    ]


async def test_saving_nothing_is_a_no_op() -> None:
    store = MemoryEventStore()
    repo = catga.AggregateRepository(Order, store)
    order = await repo.load("o-1")
    assert await repo.save(order) == 0
    assert len(store) == 0
    with pytest.raises(TypeError, match="saves `Order`"):
        await repo.save(object())  # type: ignore[arg-type]


async def test_a_conflict_keeps_the_pending_events() -> None:
    store = MemoryEventStore()
    repo = catga.AggregateRepository(Order, store)
    first, second = await repo.load("o-1"), await repo.load("o-1")
    first.place(10)
    second.place(20)
    await repo.save(first)
    with pytest.raises(catga.ConcurrencyConflict) as caught:
        await repo.save(second)
    assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == ("o-1", 0, 1)
    assert (second.version, len(second.pending_events)) == (1, 1)
    assert await store.version("o-1") == 1
    fresh = await repo.load("o-1")
    fresh.raise_event(OrderShipped(order_id="o-1"))
    assert await repo.save(fresh) == 2


async def test_save_publishes_through_the_mediator_after_the_append() -> None:
    mediator = catga.Mediator()
    store = MemoryEventStore()
    seen: list[tuple[int, int]] = []

    @mediator.handler
    async def on_placed(event: OrderPlaced) -> None:
        seen.append((event.total, await store.version(event.order_id)))  # already stored

    repo = catga.AggregateRepository(Order, store, mediator=mediator)
    order = await repo.load("o-1")
    order.place(30)
    await repo.save(order)
    assert seen == [(30, 1)]

    stale = catga.AggregateRepository(Order, store, mediator=mediator)
    other = Order("o-1")  # at version 0: its append conflicts
    other.place(99)
    with pytest.raises(catga.ConcurrencyConflict):
        await stale.save(other)
    assert seen == [(30, 1)]  # a failing append publishes nothing


async def test_snapshots_every_n_events_and_load_from_the_latest() -> None:
    store, snapshots = MemoryEventStore(), MemorySnapshotStore()
    repo = catga.AggregateRepository(Order, store, snapshots=snapshots, snapshot_every=3)
    order = await repo.load("o-1")
    order.place(1)
    order.add(1)
    await repo.save(order)  # version 2: no snapshot yet
    assert await snapshots.latest("o-1") is None
    order.add(1)
    order.add(1)
    await repo.save(order)  # version 4: crossed 3
    latest = await snapshots.latest("o-1")
    assert latest is not None
    assert latest[0] == 4
    order.add(1)
    await repo.save(order)  # version 5
    loaded = await repo.load("o-1")
    assert (loaded.version, loaded.total, loaded.lines) == (5, 5, [1, 2, 3, 4, 5])
    assert loaded.applied == 1  # only the event after the snapshot was applied
    full = await catga.AggregateRepository(Order, store).load("o-1")
    assert (full.applied, full.state()) == (5, loaded.state())
    # a snapshot that no longer decodes is ignored: the whole history is replayed
    await snapshots.save("o-1", 5, msgspec.msgpack.encode({"total": "not an int"}))
    replayed = await repo.load("o-1")
    assert (replayed.applied, replayed.version, replayed.total) == (5, 5, 5)


# ----------------------------------------------------------------------------- the memory store


async def test_the_memory_stores_implement_their_protocols() -> None:
    assert isinstance(MemoryEventStore(), EventStore)
    assert isinstance(MemorySnapshotStore(), SnapshotStore)
    assert isinstance(MemoryCheckpointStore(), CheckpointStore)
    for cls in (MemoryEventStore, MemorySnapshotStore, MemoryCheckpointStore):
        assert cls.__module__ == "catga.memory"
        assert cls.__name__ in catga.memory.__all__


async def test_read_with_from_to_until_limit() -> None:
    store = MemoryEventStore()
    before = datetime.now(UTC)
    assert await store.append("o-1", [OrderPlaced(order_id="o-1", total=n) for n in range(1, 6)]) == 5
    events = await store.read("o-1")
    assert [e.version for e in events] == [1, 2, 3, 4, 5]
    assert all(e.timestamp.tzinfo is not None and e.timestamp >= before for e in events)
    assert [e.version for e in await store.read("o-1", 2, 4)] == [2, 3, 4]
    assert [e.version for e in await store.read("o-1", 2, limit=2)] == [2, 3]
    assert await store.read("o-1", 6) == []
    assert await store.read("o-1", until=before - timedelta(seconds=1)) == []
    cut = events[-1].timestamp
    await asyncio.sleep(0.002)
    await store.append("o-1", [OrderShipped(order_id="o-1")])
    assert [e.version for e in await store.read("o-1", until=cut)] == [1, 2, 3, 4, 5]
    assert [e.version for e in await store.read("o-1", until=cut.replace(tzinfo=None))] == [1, 2, 3, 4, 5]
    assert await store.read("nothing") == []


async def test_read_all_positions_across_streams_and_metadata() -> None:
    store = MemoryEventStore()
    await store.append("a", [OrderPlaced(order_id="a", total=1)], metadata={"user": "ada"})
    await store.append("b", [OrderPlaced(order_id="b", total=1), OrderShipped(order_id="b")])
    await store.append("a", [OrderShipped(order_id="a")], expected_version=1)
    log = await store.read_all()
    assert [(e.stream_id, e.version, e.position) for e in log] == [("a", 1, 1), ("b", 1, 2), ("b", 2, 3), ("a", 2, 4)]
    assert log[0].metadata == {"user": "ada"}
    assert log[1].metadata == {}
    assert [e.position for e in await store.read_all(3)] == [3, 4]
    assert [e.position for e in await store.read_all(2, limit=1)] == [2]
    assert [e.position for e in await store.read("a")] == [1, 4]
    assert repr(store) == "<MemoryEventStore streams=2 events=4>"


async def test_subscribe_catches_up_then_gets_a_live_append() -> None:
    store = MemoryEventStore()
    await store.append("a", [OrderPlaced(order_id="a", total=1)])
    stream = store.subscribe()
    try:
        first = await asyncio.wait_for(anext(stream), 2)
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)
        assert not pending.done()
        await store.append("b", [OrderShipped(order_id="b")])
        second = await asyncio.wait_for(pending, 2)
    finally:
        await stream.aclose()
    assert (first.position, second.position, second.stream_id) == (1, 2, "b")
    assert not store._waiters  # the closed subscriber is forgotten


async def test_empty_append_and_non_messages_write_nothing() -> None:
    store = MemoryEventStore()
    assert await store.append("o-1", []) == 0
    await store.append("o-1", [OrderPlaced(order_id="o-1", total=1)])
    assert await store.append("o-1", []) == 1
    assert await store.append("o-1", [], expected_version=1) == 1
    with pytest.raises(catga.ConcurrencyConflict):
        await store.append("o-1", [], expected_version=0)
    with pytest.raises(catga.SerializationError, match="cannot store `dict`"):
        await store.append("o-1", [OrderShipped(order_id="o-1"), {"not": "a message"}])
    assert await store.version("o-1") == 1
    assert len(store) == 1


# ------------------------------------------------------------------------------------- upcasting


async def test_an_old_schema_is_upcast_and_a_newer_one_is_refused() -> None:
    class Renamed(catga.Event, tag="tests.sourcing.renamed"):
        __catga_schema__ = 2
        amount: int

    store = MemoryEventStore()
    old = msgspec.msgpack.encode({"type": "tests.sourcing.renamed", "total": 7})
    store._append_raw("r-1", "tests.sourcing.renamed", 1, old)
    with pytest.raises(catga.SerializationError, match=r"upcaster"):
        await store.read("r-1")

    @catga.upcaster("tests.sourcing.renamed", 1)
    def rename(payload: dict[str, Any]) -> dict[str, Any]:
        payload["amount"] = payload.pop("total")
        return payload

    try:
        [event] = await store.read("r-1")
        assert isinstance(event.event, Renamed)
        assert event.event.amount == 7
        store._append_raw("r-1", "tests.sourcing.renamed", 3, old)
        with pytest.raises(catga.SerializationError, match=r"version `2` of stream `r-1`.*schema `3`"):
            await store.read("r-1")
        assert len(await store.read("r-1", to_version=1)) == 1
    finally:
        _upcasters.pop(("tests.sourcing.renamed", 1), None)
        del Renamed, rename
        gc.collect()


# ------------------------------------------------------------------------------------ projections


class Revenue(catga.Projection):
    name = "revenue"

    def __init__(self) -> None:
        self.total = 0
        self.seen: list[int] = []

    @catga.applies(OrderPlaced)
    async def _placed(self, event: OrderPlaced, stored: catga.StoredEvent) -> None:
        self.total += event.total
        self.seen.append(stored.position)

    async def reset(self) -> None:
        self.total, self.seen = 0, []


class Shipments(catga.Projection):
    def __init__(self) -> None:
        self.count = 0

    @catga.applies(OrderShipped)
    def _shipped(self, event: OrderShipped) -> None:
        self.count += 1


async def test_projections_catch_up_checkpoint_follow_and_rebuild() -> None:
    store, checkpoints = MemoryEventStore(), MemoryCheckpointStore()
    for n in range(1, 6):
        await store.append(f"o-{n}", [OrderPlaced(order_id=f"o-{n}", total=n)])
    await store.append("o-1", [OrderShipped(order_id="o-1")])
    revenue, shipments = Revenue(), Shipments()
    assert Shipments.name == "Shipments"
    runner = catga.ProjectionRunner(store, checkpoints, [revenue, shipments], batch_size=2)
    assert await runner.catch_up() == 6
    assert (revenue.total, revenue.seen, shipments.count) == (15, [1, 2, 3, 4, 5], 1)
    assert (await checkpoints.get("revenue"), await checkpoints.get("Shipments")) == (6, 6)
    assert await runner.catch_up() == 6  # nothing new: nothing handled twice
    assert revenue.total == 15

    # a runner resumes from its checkpoints
    later, resumed = Revenue(), MemoryCheckpointStore()
    await resumed.set("revenue", 6)
    await store.append("o-6", [OrderPlaced(order_id="o-6", total=100)])
    assert await catga.ProjectionRunner(store, resumed, [later]).catch_up() == 7
    assert (later.total, later.seen) == (100, [7])

    # live: run() catches up, then follows, until stop()
    task = asyncio.create_task(runner.run())
    for _ in range(200):
        if revenue.total == 115:
            break
        await asyncio.sleep(0.01)
    assert revenue.total == 115
    await store.append("o-7", [OrderPlaced(order_id="o-7", total=1000), OrderShipped(order_id="o-7")])
    for _ in range(200):
        if shipments.count == 2:
            break
        await asyncio.sleep(0.01)
    assert (revenue.total, shipments.count) == (1115, 2)
    assert await checkpoints.get("Shipments") == 9
    runner.stop()
    await asyncio.wait_for(task, 2)
    assert task.exception() is None

    # rebuild resets and replays the whole log
    revenue.total = -1
    assert await runner.rebuild(revenue) == 9
    assert (revenue.total, revenue.seen) == (1115, [1, 2, 3, 4, 5, 7, 8])
    with pytest.raises(ValueError, match="not run by this runner"):
        await runner.rebuild(Revenue())


def test_bad_runner_arguments() -> None:
    store, checkpoints = MemoryEventStore(), MemoryCheckpointStore()
    with pytest.raises(ValueError, match="two projections are named `revenue`"):
        catga.ProjectionRunner(store, checkpoints, [Revenue(), Revenue()])
    with pytest.raises(TypeError, match="Projection` instances"):
        catga.ProjectionRunner(store, checkpoints, [object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        catga.ProjectionRunner(store, checkpoints, [], batch_size=0)


async def test_a_failing_projection_keeps_its_checkpoint_before_the_batch() -> None:
    class Fails(catga.Projection):
        @catga.applies(OrderShipped)
        def _shipped(self, event: OrderShipped) -> None:
            raise RuntimeError("boom")

    store, checkpoints = MemoryEventStore(), MemoryCheckpointStore()
    await store.append("o-1", [OrderPlaced(order_id="o-1", total=1)])
    runner = catga.ProjectionRunner(store, checkpoints, [Fails()], batch_size=1)
    await store.append("o-1", [OrderShipped(order_id="o-1")])
    with pytest.raises(RuntimeError, match="boom"):
        await runner.catch_up()
    assert await checkpoints.get(Fails.name) == 1


async def test_every_stored_event_is_published_also_after_one_fails() -> None:
    class Tally(catga.Aggregate):
        count: int = 0

        def add(self) -> None:
            self.raise_event(Counted(tally_id=self.id))

        @catga.applies(Counted)
        def _counted(self, event: Counted) -> None:
            self.count += 1

    seen: list[int] = []
    mediator = catga.Mediator()

    @mediator.handler
    async def tally_handler(event: Counted) -> None:
        seen.append(event.message_id)
        if len(seen) == 1:
            raise RuntimeError("the first one fails")

    repo = catga.AggregateRepository(Tally, catga.memory.MemoryEventStore(), mediator=mediator)
    tally = await repo.load("t-1")
    tally.add()
    tally.add()
    with pytest.raises(catga.PublishError):
        await repo.save(tally)
    assert len(seen) == 2  # the second was published all the same
    assert tally.pending_events == []
