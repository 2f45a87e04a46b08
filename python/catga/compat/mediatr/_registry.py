"""The module-level registries of mediatr, which tell every live mediator when they change.

mediatr keeps handlers and behaviours in two module-level dicts that programs and tests read and
mutate directly (`__handlers__.clear()`). A compat mediator compiles each request type's chain once
and keeps it in its core's route table, so every mutation has to reach the mediators: these dicts
(and the behaviour lists they hold) drop every live mediator's routes when they change. Looking
the registries up on each send instead, as mediatr does, is what made it slow.

A plain list stored in a registry is stored as a `WatchedList` copy, so that in-place changes
through the registry (`__behaviors__[key].append(b)`) are seen too; one mutation no registry can
see is of the original list object through an outside reference to it.
"""

import weakref
from collections.abc import Iterable
from typing import Any, Protocol, SupportsIndex

__all__ = ["Registry", "WatchedList", "watch"]


class _RouteOwner(Protocol):
    def _forget_routes(self) -> None: ...


# Every compat mediator alive, so that a registration reaches their route tables.
_owners: "weakref.WeakSet[_RouteOwner]" = weakref.WeakSet()


def watch(owner: _RouteOwner) -> None:
    """Have `owner._forget_routes()` called whenever a registry changes."""
    _owners.add(owner)


def changed() -> None:
    """A registration changed: every live mediator forgets its compiled routes."""
    for owner in list(_owners):
        owner._forget_routes()


class Registry(dict[Any, Any]):
    """A `dict` that reports every mutation (`__handlers__`, `__behaviors__`, `__event_handlers__`)."""

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, _watched(value))
        changed()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        changed()

    def __ior__(self, other: Any) -> "Registry":  # type: ignore[misc]
        self.update(other)
        return self

    def clear(self) -> None:
        super().clear()
        changed()

    def pop(self, *args: Any) -> Any:
        value = super().pop(*args)
        changed()
        return value

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        changed()
        return item

    def setdefault(self, key: Any, default: Any = None) -> Any:
        value = super().setdefault(key, _watched(default))
        changed()
        return value

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update({key: _watched(value) for key, value in dict(*args, **kwargs).items()})
        changed()


def _watched(value: Any) -> Any:
    # Only plain lists: a handler (or anything else) is stored as it is.
    return WatchedList(value) if type(value) is list else value


class WatchedList(list[Any]):
    """A `list` of behaviours or event handlers that reports every mutation."""

    __slots__ = ()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        changed()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        changed()

    def __iadd__(self, other: Iterable[Any]) -> "WatchedList":  # type: ignore[misc]
        super().__iadd__(other)
        changed()
        return self

    def __imul__(self, count: SupportsIndex) -> "WatchedList":
        super().__imul__(count)
        changed()
        return self

    def append(self, value: Any) -> None:
        super().append(value)
        changed()

    def extend(self, values: Iterable[Any]) -> None:
        super().extend(values)
        changed()

    def insert(self, index: SupportsIndex, value: Any) -> None:
        super().insert(index, value)
        changed()

    def remove(self, value: Any) -> None:
        super().remove(value)
        changed()

    def pop(self, index: SupportsIndex = -1) -> Any:
        value = super().pop(index)
        changed()
        return value

    def clear(self) -> None:
        super().clear()
        changed()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        changed()

    def reverse(self) -> None:
        super().reverse()
        changed()
