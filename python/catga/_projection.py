"""Projections (issue 7): read models built from the global log, `Projection`, `ProjectionRunner`
and `current_transaction`.

Delivery is at least once: a projection's checkpoint is stored after each batch it handled, so a
crash between handling and storing the checkpoint replays that batch (make handlers idempotent).

Exactly-once effect, when the checkpoint store can share a transaction: a store with
`transaction()` (an async context manager yielding a connection inside a transaction) and
`set_in(connection, name, position)`, as `catga.postgres.PostgresCheckpointStore` has, makes the
runner handle each batch (each event, while `run()` follows the log) inside one such transaction
and store the checkpoint on its connection. Handlers reach that connection through
`catga.current_transaction()` (`None` outside a batch) and write the read model with it: a handler
that raises, or a crash, rolls back both the batch's writes and its checkpoint, and the next run
redoes the batch. Writes a handler makes elsewhere (another connection, memory, an API) are still
at least once. `rebuild` runs `reset()` and the checkpoint's reset to 0 in one transaction too.
"""

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar, Final

from catga._aggregate import collect_appliers, find_applier
from catga._event_records import StoredEvent
from catga.stores._protocols import CheckpointStore, EventStore

__all__ = ["Projection", "ProjectionRunner", "current_transaction"]

_BATCH: Final = 100
_TRANSACTION: Final[ContextVar[Any]] = ContextVar("catga_projection_transaction", default=None)


def current_transaction() -> Any:
    """The connection of the transaction a `ProjectionRunner` handles the current batch in, for the
    projection's handlers to write their read model with (exactly-once effect: the batch's
    checkpoint is stored in the same transaction); `None` outside a batch, or when the runner's
    checkpoint store has no `transaction()` (such as `catga.memory.MemoryCheckpointStore`).

    With `catga.postgres.PostgresCheckpointStore` it is an `asyncpg.Connection`.

    >>> import catga
    >>> catga.current_transaction() is None
    True
    """
    return _TRANSACTION.get()


class Projection:
    """The base of a read model: `@catga.applies(EventType)` methods, run by a `ProjectionRunner`.

    A handler takes the event, or the event and its `StoredEvent` (stream, version, position,
    timestamp), and may be sync or async; events it has no handler for are skipped. `name` (the
    class's qualified name unless set) keys its checkpoint; `reset()` clears the read model before
    a `ProjectionRunner.rebuild`.

    >>> import catga
    >>> class Placed(catga.Event, tag="docs.projection.placed"):
    ...     total: int
    >>> class Revenue(catga.Projection):
    ...     name = "revenue"
    ...     def __init__(self) -> None:
    ...         self.total = 0
    ...     @catga.applies(Placed)
    ...     def _placed(self, event: Placed) -> None:
    ...         self.total += event.total
    ...     async def reset(self) -> None:
    ...         self.total = 0
    """

    name: ClassVar[str] = "Projection"
    __catga_appliers__: ClassVar[dict[type, str]] = {}
    __catga_wants_stored__: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls):
            cls.name = cls.__qualname__
        name: object = cls.name
        if not isinstance(name, str) or not name:
            raise TypeError(f"`{cls.__qualname__}.name` must be a non-empty str, got `{name!r}`")
        cls.__catga_appliers__ = collect_appliers(cls)
        wants: set[str] = set()
        for method in cls.__catga_appliers__.values():
            try:
                parameters = inspect.signature(getattr(cls, method)).parameters
            except (TypeError, ValueError):
                continue
            if len(parameters) >= 3:  # self, event, stored
                wants.add(method)
        cls.__catga_wants_stored__ = frozenset(wants)

    async def handle(self, stored: StoredEvent) -> None:
        """Run the handler of `stored.event`'s type, if any."""
        method = find_applier(type(self).__catga_appliers__, type(stored.event))
        if method is None:
            return
        function = getattr(self, method)
        if method in type(self).__catga_wants_stored__:
            outcome = function(stored.event, stored)
        else:
            outcome = function(stored.event)
        if inspect.isawaitable(outcome):
            await outcome

    async def reset(self) -> None:
        """Clear the read model (before a rebuild); does nothing unless overridden."""


class ProjectionRunner:
    """Feeds the global log of an `EventStore` to projections, each from its own checkpoint.

    `catch_up()` handles everything stored, in batches of `batch_size`, storing each projection's
    checkpoint after each batch; `run()` catches up, then follows new events until `stop()`;
    `rebuild(projection)` resets it and replays the whole log into it. A handler that raises stops
    the runner with that error; its projection's checkpoint stays before the failing batch. When
    `checkpoints` has `transaction()` (`catga.postgres.PostgresCheckpointStore`), each batch and its
    checkpoint share one transaction, which handlers reach through `catga.current_transaction()`.

    >>> import asyncio, catga
    >>> class Seen(catga.Event, tag="docs.runner.seen"):
    ...     n: int
    >>> class Count(catga.Projection):
    ...     def __init__(self) -> None:
    ...         self.count = 0
    ...     @catga.applies(Seen)
    ...     def _seen(self, event: Seen) -> None:
    ...         self.count += 1
    >>> store, count = catga.memory.MemoryEventStore(), Count()
    >>> runner = catga.ProjectionRunner(store, catga.memory.MemoryCheckpointStore(), [count])
    >>> async def main():
    ...     await store.append("s-1", [Seen(n=1), Seen(n=2)])
    ...     return await runner.catch_up(), count.count
    >>> asyncio.run(main())
    (2, 2)
    """

    __slots__ = ("_positions", "_stopping", "_task", "batch_size", "checkpoints", "projections", "store")

    def __init__(
        self,
        store: EventStore,
        checkpoints: CheckpointStore,
        projections: Iterable[Projection],
        *,
        batch_size: int = _BATCH,
    ) -> None:
        listed = list(projections)
        names: set[str] = set()
        for projection in listed:
            if not isinstance(projection, Projection):
                raise TypeError(f"`projections` must hold `catga.Projection` instances, got `{projection!r}`")
            if projection.name in names:
                raise ValueError(f"two projections are named `{projection.name}`: checkpoints need unique names")
            names.add(projection.name)
        size: object = batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`batch_size` must be an int of at least 1, got `{size!r}`")
        self.store = store
        self.checkpoints = checkpoints
        self.projections = listed
        self.batch_size = batch_size
        self._positions: dict[str, int] = {}
        self._task: asyncio.Task[Any] | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return f"<ProjectionRunner projections={[p.name for p in self.projections]!r}>"

    async def _in_transaction(self, work: Callable[[], Awaitable[None]], name: str, position: int) -> None:
        """Run `work`, then store `name`'s checkpoint at `position`: in one transaction when the
        checkpoint store has `transaction()` (its connection is `current_transaction()` meanwhile)."""
        transaction = getattr(self.checkpoints, "transaction", None)
        if transaction is None:
            await work()
            await self.checkpoints.set(name, position)
            return
        async with transaction() as connection:
            token = _TRANSACTION.set(connection)
            try:
                await work()
            finally:
                _TRANSACTION.reset(token)
            await self.checkpoints.set_in(connection, name, position)  # type: ignore[attr-defined]

    async def _handle(self, projection: Projection, events: Sequence[StoredEvent]) -> None:
        async def work() -> None:
            for stored in events:
                await projection.handle(stored)

        await self._in_transaction(work, projection.name, events[-1].position)

    async def _catch_up_one(self, projection: Projection) -> int:
        position = await self.checkpoints.get(projection.name)
        while True:
            batch = await self.store.read_all(position + 1, limit=self.batch_size)
            if not batch:
                break
            await self._handle(projection, batch)
            position = batch[-1].position
            if len(batch) < self.batch_size:
                break
        self._positions[projection.name] = position
        return position

    async def catch_up(self) -> int:
        """Handle every stored event each projection has not handled; the position all reached
        (0 when the log is empty or there are no projections)."""
        reached = [await self._catch_up_one(projection) for projection in self.projections]
        return min(reached, default=0)

    async def rebuild(self, projection: Projection) -> int:
        """Reset `projection`, forget its checkpoint and replay the whole log into it; the position reached."""
        if projection not in self.projections:
            raise ValueError(f"projection `{projection.name}` is not run by this runner")
        await self._in_transaction(projection.reset, projection.name, 0)
        return await self._catch_up_one(projection)

    async def run(self) -> None:
        """Catch up, then handle each new event as it is appended (checkpoint after each), until `stop()`."""
        if self._task is not None:
            raise RuntimeError("this `ProjectionRunner` is already running")
        self._task = asyncio.current_task()
        self._stopping = False
        try:
            start = await self.catch_up()
            live = self.store.subscribe(start + 1)
            try:
                async for stored in live:
                    for projection in self.projections:
                        if self._positions.get(projection.name, 0) >= stored.position:
                            continue
                        await self._handle(projection, [stored])
                        self._positions[projection.name] = stored.position
                    if self._stopping:
                        break
            finally:
                close = getattr(live, "aclose", None)
                if close is not None:
                    await close()
        except asyncio.CancelledError:
            task = self._task
            if not self._stopping or task is None or task.uncancel() > 0:
                raise
        finally:
            self._task = None

    def stop(self) -> None:
        """Make `run()` return promptly; an event it was handling when stopped may not be checkpointed
        yet, and is then handled again by the next run (at least once)."""
        self._stopping = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
