"""Event-sourced aggregates (issue 7): `Aggregate`, `applies` and `AggregateRepository`.

An aggregate's state is the class annotations it declares with a default (`status: str = "new"`):
each instance gets its own copy of them. Its methods decide and `raise_event(...)`; the methods
marked `@catga.applies(EventType)` change the state, both when an event is raised and when the
history is replayed by `AggregateRepository.load`.
"""

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar, get_type_hints

import msgspec

from catga._errors import SerializationError
from catga._event_records import StoredEvent
from catga.stores._protocols import EventStore, SnapshotStore

__all__ = ["Aggregate", "AggregateRepository", "applies"]

F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound="Aggregate")

_APPLIES: Final = "__catga_applies__"
_RESERVED: Final = frozenset({"id", "version"})
_encoder: Final = msgspec.msgpack.Encoder()


def applies(event_type: type) -> Callable[[F], F]:
    """Mark a method of an `Aggregate` or a `Projection` as the handler of `event_type` (and its subclasses).

    >>> import catga
    >>> class Deposited(catga.Event, tag="docs.applies.deposited"):
    ...     amount: int
    >>> class Account(catga.Aggregate):
    ...     balance: int = 0
    ...     @catga.applies(Deposited)
    ...     def _deposited(self, event: Deposited) -> None:
    ...         self.balance += event.amount
    """
    if not isinstance(event_type, type):
        raise TypeError(f"`@applies` takes an event class, got `{event_type!r}`")

    def mark(function: F) -> F:
        if not callable(function):
            raise TypeError(f"`@applies({event_type.__qualname__})` must decorate a function, got `{function!r}`")
        setattr(function, _APPLIES, event_type)
        return function

    return mark


def collect_appliers(cls: type) -> dict[type, str]:
    """`{event type: method name}` of the `@applies` methods of `cls` and its bases (a subclass wins)."""
    found: dict[type, str] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            target = getattr(value, _APPLIES, None)
            if isinstance(target, type):
                found[target] = name
    return found


def find_applier(appliers: dict[type, str], event_type: type) -> str | None:
    """The method name handling `event_type`: its own, else the nearest base's."""
    for klass in event_type.__mro__:
        name = appliers.get(klass)
        if name is not None:
            return name
    return None


class Aggregate:
    """The base of an event-sourced aggregate: an `id`, a `version`, state and pending events.

    Annotated class attributes with a default are the state: each instance starts with its own
    (deep) copy of the defaults, and `state()` / snapshots encode them with msgspec. `version` counts
    every event the aggregate has seen, the ones stored and the ones `pending_events` (1-based: a new
    aggregate is at 0).

    >>> import catga
    >>> class Placed(catga.Event, tag="docs.aggregate.placed"):
    ...     total: int
    >>> class Order(catga.Aggregate):
    ...     status: str = "new"
    ...     total: int = 0
    ...     def place(self, total: int) -> None:
    ...         if self.status != "new":
    ...             raise catga.ValidationError([f"order `{self.id}` already placed"])
    ...         self.raise_event(Placed(total=total))
    ...     @catga.applies(Placed)
    ...     def _placed(self, event: Placed) -> None:
    ...         self.status, self.total = "placed", event.total
    >>> order = Order("o-1")
    >>> order.place(30)
    >>> order.state(), order.version, len(order.pending_events)
    ({'status': 'placed', 'total': 30}, 1, 1)
    """

    __catga_fields__: ClassVar[dict[str, Any]] = {}
    __catga_appliers__: ClassVar[dict[type, str]] = {}
    __catga_state_type__: ClassVar[type | None] = None

    id: str
    version: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = dict(cls.__catga_fields__)
        for name, annotation in vars(cls).get("__annotations__", {}).items():
            if name.startswith("__") or "ClassVar" in str(annotation):
                continue
            if name in _RESERVED:
                raise TypeError(f"`{cls.__qualname__}.{name}` is reserved by `catga.Aggregate`")
            if name not in vars(cls):
                raise TypeError(f"`{cls.__qualname__}.{name}` needs a default: an aggregate starts from its defaults")
            fields[name] = vars(cls)[name]
        cls.__catga_fields__ = fields
        cls.__catga_appliers__ = collect_appliers(cls)
        cls.__catga_state_type__ = None  # built on first use, once the annotations resolve

    def __init__(self, id: str) -> None:
        given: object = id
        if not isinstance(given, str) or not given:
            raise TypeError(f"an aggregate id must be a non-empty str, got `{given!r}`")
        self.id = id
        self.version = 0
        self._pending: list[object] = []
        for name, default in type(self).__catga_fields__.items():
            setattr(self, name, copy.deepcopy(default))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} id={self.id!r} version={self.version} pending={len(self._pending)}>"

    @property
    def pending_events(self) -> list[object]:
        """The events raised since the last save, oldest first (a copy)."""
        return list(self._pending)

    def raise_event(self, event: object) -> None:
        """Apply `event` to the state and keep it to be stored by `AggregateRepository.save`."""
        if find_applier(type(self).__catga_appliers__, type(event)) is None:
            raise TypeError(f"`{type(self).__qualname__}` has no `@catga.applies({type(event).__name__})` method")
        self._apply(event)
        self._pending.append(event)
        self.version += 1

    def _apply(self, event: object) -> None:
        name = find_applier(type(self).__catga_appliers__, type(event))
        if name is not None:  # history may hold events this aggregate no longer handles
            getattr(self, name)(event)

    def _replay(self, stored: StoredEvent) -> None:
        self._apply(stored.event)
        self.version = stored.version

    def _mark_saved(self, version: int) -> None:
        self._pending.clear()
        self.version = version

    def state(self) -> dict[str, Any]:
        """The state fields and their current values."""
        return {name: getattr(self, name) for name in type(self).__catga_fields__}

    @classmethod
    def _state_type(cls) -> type:
        if cls.__catga_state_type__ is None:
            try:
                hints = get_type_hints(cls)
            except Exception:  # an annotation that does not resolve here: decode it loosely
                hints = {}
            fields = [(name, hints.get(name, Any), default) for name, default in cls.__catga_fields__.items()]
            cls.__catga_state_type__ = msgspec.defstruct(f"{cls.__qualname__}State", fields, kw_only=True)
        return cls.__catga_state_type__

    def snapshot(self) -> bytes:
        """The state encoded with msgspec msgpack (what a `SnapshotStore` keeps)."""
        try:
            return _encoder.encode(self.state())
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot encode the state of `{type(self).__qualname__}` `{self.id}`: {exc}"
            ) from exc

    def restore(self, state: bytes) -> None:
        """Set the state from `snapshot()` bytes; `SerializationError` when they do not decode."""
        try:
            decoded: Any = msgspec.msgpack.decode(state, type=self._state_type())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SerializationError(f"cannot restore `{type(self).__qualname__}` `{self.id}`: {exc}") from exc
        for name in type(self).__catga_fields__:
            setattr(self, name, getattr(decoded, name))


class _Publisher(Protocol):
    def publish(self, event: object, /) -> Any: ...


class AggregateRepository(Generic[A]):
    """Loads aggregates from an `EventStore` (from the latest snapshot on) and saves their events.

    `save` appends the pending events with `expected_version = version - len(pending)`: a writer
    that saved in between makes it raise `catga.ConcurrencyConflict`, and the aggregate keeps its
    pending events (reload it and retry). After the append succeeds, the events are published
    through `mediator` if given (a failing handler raises its `PublishError` then; the events are
    stored), and a snapshot is stored each time the version crosses a multiple of `snapshot_every`.

    >>> import asyncio, catga
    >>> class Opened(catga.Event, tag="docs.repository.opened"):
    ...     owner: str
    >>> class Account(catga.Aggregate):
    ...     owner: str = ""
    ...     @catga.applies(Opened)
    ...     def _opened(self, event: Opened) -> None:
    ...         self.owner = event.owner
    >>> repo = catga.AggregateRepository(Account, catga.memory.MemoryEventStore())
    >>> async def main():
    ...     account = await repo.load("a-1")
    ...     account.raise_event(Opened(owner="ada"))
    ...     await repo.save(account)
    ...     return (await repo.load("a-1")).owner
    >>> asyncio.run(main())
    'ada'
    """

    __slots__ = ("aggregate_type", "mediator", "snapshot_every", "snapshots", "store")

    def __init__(
        self,
        aggregate_type: type[A],
        store: EventStore,
        *,
        mediator: _Publisher | None = None,
        snapshots: SnapshotStore | None = None,
        snapshot_every: int = 100,
    ) -> None:
        kind: object = aggregate_type
        if not (isinstance(kind, type) and issubclass(kind, Aggregate)):
            raise TypeError(f"`aggregate_type` must be a `catga.Aggregate` subclass, got `{kind!r}`")
        every: object = snapshot_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`snapshot_every` must be an int of at least 1, got `{every!r}`")
        self.aggregate_type: type[A] = aggregate_type
        self.store = store
        self.mediator = mediator
        self.snapshots = snapshots
        self.snapshot_every = snapshot_every

    def __repr__(self) -> str:
        return f"<AggregateRepository {self.aggregate_type.__qualname__} store={self.store!r}>"

    async def load(self, aggregate_id: str) -> A:
        """The aggregate rebuilt from its stream (version 0 when the stream is empty), starting from
        the latest snapshot when there is one that decodes."""
        aggregate = self.aggregate_type(aggregate_id)
        start = 1
        if self.snapshots is not None:
            latest = await self.snapshots.latest(aggregate_id)
            if latest is not None:
                version, state = latest
                try:
                    aggregate.restore(state)
                except SerializationError:  # the state's shape changed: replay the whole history
                    aggregate = self.aggregate_type(aggregate_id)
                else:
                    aggregate.version = version
                    start = version + 1
        for stored in await self.store.read(aggregate_id, from_version=start):
            aggregate._replay(stored)
        return aggregate

    async def save(self, aggregate: A, *, metadata: dict[str, Any] | None = None) -> int:
        """Append the pending events, then publish them; the new version (a no-op without pending events)."""
        if not isinstance(aggregate, self.aggregate_type):
            raise TypeError(f"this repository saves `{self.aggregate_type.__qualname__}`, got `{aggregate!r}`")
        pending: Sequence[object] = aggregate.pending_events
        if not pending:
            return aggregate.version
        expected = aggregate.version - len(pending)
        version = await self.store.append(aggregate.id, pending, expected_version=expected, metadata=metadata)
        aggregate._mark_saved(version)
        try:
            if self.mediator is not None:
                await self._publish(pending)
        finally:
            if self.snapshots is not None and version // self.snapshot_every > expected // self.snapshot_every:
                await self.snapshots.save(aggregate.id, version, aggregate.snapshot())
        return version

    async def _publish(self, events: Sequence[object]) -> None:
        """Publish every stored event, also after one fails (they are stored: each must go out);
        the failures are raised together afterwards, the first one alone when there is one."""
        assert self.mediator is not None
        failures: list[Exception] = []
        for event in events:
            try:
                outcome = self.mediator.publish(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:
                failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ExceptionGroup(f"`{len(failures)}` of `{len(events)}` events failed to publish", failures)
