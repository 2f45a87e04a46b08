"""The peers' cells: mediatr, catga's mediatr drop-in, python-cqrs, kerux and diator.

Each peer runs on its fastest documented path, as in the peer study (shared research
peers_bench.py): prebuilt handler instances, and where a container is mandatory one that returns
them. Peers are imported inside their set-up, so a missing one costs nothing and shows as
"not installed"; one whose set-up raises (an API that moved) shows as "unavailable" with the
reason. They are untyped: everything they hand back is `Any`.
"""

import dataclasses
import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, MutableMapping
from typing import Any, Final

import catga
from catga._bench._cell import (
    NOT_APPLICABLE,
    NOT_INSTALLED,
    UNAVAILABLE,
    Cell,
    Counter,
    Kind,
    event_cell,
    request_cell,
)
from catga._bench._scenarios import BEHAVIOURS, EXPECTED, counting_handlers

__all__ = ["PEERS", "Peer", "peer_cell"]


@dataclasses.dataclass(frozen=True, slots=True)
class Peer:
    name: str  # the cell's name
    module: str  # what to import
    distribution: str | None  # whose version to report (None: catga's own)
    kind: Kind
    build: Callable[[str, Any], Cell]  # (scenario, module) -> cell


def peer_cell(peer: Peer, scenario: str) -> Cell:
    """The cell of `peer` in `scenario`, or one saying why it cannot run."""
    try:
        installed = importlib.util.find_spec(peer.module) is not None
    except ImportError:  # its parent package is missing
        installed = False
    if not installed:
        return Cell(peer.name, peer.kind, status=NOT_INSTALLED, reason=f"`{peer.module}` is not installed")
    version = _version(peer.distribution)
    try:
        cell = peer.build(scenario, importlib.import_module(peer.module))
    except Exception as exc:  # installed but broken, or its API moved: report it, time the others
        reason = f"set-up failed: {type(exc).__name__}: {exc}"
        return Cell(peer.name, peer.kind, status=UNAVAILABLE, reason=reason, version=version)
    cell.version = version
    return cell


def _import(name: str) -> Any:
    """A peer's submodule, as `Any`: the peers are untyped (or typed in ways the set-ups need not
    follow), and mypy must pass where they are not installed."""
    return importlib.import_module(name)


def _version(distribution: str | None) -> str | None:
    try:
        return importlib.metadata.version(distribution or "catga")
    except importlib.metadata.PackageNotFoundError:
        return None


class _Prebuilt:
    """The smallest container diator and python-cqrs accept: `resolve(type)` -> a prebuilt instance."""

    def __init__(self, instances: dict[type, object]) -> None:
        self._instances = instances

    async def resolve(self, type_: type) -> object:
        return self._instances[type_]


class _AddOne:
    """A middleware in the `__call__(request, handle)` shape of diator and python-cqrs."""

    async def __call__(self, request: Any, handle: Callable[[Any], Any]) -> Any:
        return (await handle(request)) + 1


# ------------------------------------------------------------------------------- mediatr (+ drop-in)


def _mediatr(name: str, kind: Kind) -> Callable[[str, Any], Cell]:
    """mediatr 1.3.2 and `catga.compat.mediatr` share the API (the drop-in adds publish)."""

    def build(scenario: str, mediatr: Any) -> Cell:
        if scenario == "publish" and not hasattr(mediatr.Mediator, "publish_async"):
            return Cell(name, kind, status=NOT_APPLICABLE, reason="mediatr has no publish")
        # Handlers live in module-global registries, one scenario at a time: empty them for this
        # one, and give back whatever was there (a test's registrations) when it is done.
        names = ("__handlers__", "__behaviors__", "__event_handlers__")
        registries: list[MutableMapping[Any, Any]] = [getattr(mediatr, n) for n in names if hasattr(mediatr, n)]
        saved = [dict(registry) for registry in registries]

        def restore() -> None:
            for registry, contents in zip(registries, saved, strict=True):
                registry.clear()
                registry.update(contents)

        for registry in registries:
            registry.clear()
        try:
            cell = _mediatr_cell(name, kind, scenario, mediatr)
        except BaseException:
            restore()
            raise
        cell.teardown = restore
        return cell

    return build


def _mediatr_cell(name: str, kind: Kind, scenario: str, mediatr: Any) -> Cell:
    # Plain classes: mediatr keys handlers by the first parameter's annotation, any class goes.
    class Ping:
        __slots__ = ()

    class Pinged:
        __slots__ = ()

    async def handle(request: Ping) -> int:
        return 42

    def add_one() -> Callable[..., Any]:
        # A new function per behaviour: mediatr drops a behaviour registered twice.
        async def behavior(request: Ping, next: Callable[[], Any]) -> Any:
            return (await next()) + 1

        return behavior

    mediator = mediatr.Mediator()
    note = "3 function handlers" if scenario == "publish" else "function handler"
    if kind == "compat":  # the drop-in dispatches through the core catga picked at import
        note += ", pure core" if catga.PURE_PYTHON else ", Rust core"
    if scenario == "publish":
        counters, handlers = counting_handlers(Pinged)
        for handler in handlers:
            mediatr.Mediator.register_event_handler(handler)
        return event_cell(name, kind, mediator.publish_async, Pinged(), counters, note=note)
    mediatr.Mediator.register_handler(handle)
    if scenario == "behaviors":
        for _ in range(BEHAVIOURS):
            mediatr.Mediator.register_behavior(add_one())
    return request_cell(name, kind, mediator.send_async, Ping(), EXPECTED[scenario], note=note)


# ----------------------------------------------------------------------------------- python-cqrs


def _python_cqrs(scenario: str, cqrs: Any) -> Cell:
    middlewares = _import("cqrs.middlewares.base")

    class Ping(cqrs.Request):  # type: ignore[misc]
        pass

    class Pinged(cqrs.DomainEvent):  # type: ignore[misc]
        pass

    class PingHandler(cqrs.RequestHandler[Ping, Any]):  # type: ignore[misc]
        async def handle(self, request: Ping) -> int:
            return 42

    if scenario == "publish":
        counters = [Counter() for _ in range(3)]
        instances = {}
        event_map = cqrs.EventMap()
        for counter in counters:
            handler_class = _event_handler_class(cqrs.EventHandler, counter)
            event_map.bind(Pinged, handler_class)
            instances[handler_class] = handler_class()
        mediator = cqrs.EventMediator(event_map=event_map, container=_Prebuilt(instances))
        return event_cell("python-cqrs", "peer", mediator.send, Pinged(), counters, note="EventMediator, sequential")
    request_map = cqrs.RequestMap()
    request_map.bind(Ping, PingHandler)
    chain = middlewares.MiddlewareChain()
    if scenario == "behaviors":
        for _ in range(BEHAVIOURS):
            chain.add(_AddOne())
    mediator = cqrs.RequestMediator(
        request_map=request_map, container=_Prebuilt({PingHandler: PingHandler()}), middleware_chain=chain
    )
    note = "RequestMediator, prebuilt-instance container"
    return request_cell("python-cqrs", "peer", mediator.send, Ping(), EXPECTED[scenario], note=note)


def _event_handler_class(base: type, counter: Counter) -> type:
    """A class deriving from `base` (the peer's event handler ABC) whose `handle` bumps `counter`."""

    async def handle(self: object, event: object) -> None:
        counter.calls += 1

    # A distinct class per handler: the peers' event maps and containers are keyed by class.
    return type("PingedHandler", (base,), {"handle": handle, "__abstractmethods__": frozenset()})


# ----------------------------------------------------------------------------------------- kerux


def _kerux(scenario: str, kerux: Any) -> Cell:
    class Ping(kerux.Request[int]):  # type: ignore[misc]
        __slots__ = ()

    class Pinged(kerux.Notification):  # type: ignore[misc]
        __slots__ = ()

    class AddOne:
        async def handle(self, request: Any, next: Callable[[], Any]) -> Any:
            return (await next()) + 1

    class CountingHandler:
        def __init__(self, counter: Counter) -> None:
            self.counter = counter

        async def handle(self, notification: Any) -> None:
            self.counter.calls += 1

    async def handle(request: Ping) -> int:
        return 42

    mediator = kerux.Mediator()
    if scenario == "publish":
        counters = [Counter() for _ in range(3)]
        for counter in counters:
            mediator.register_notification_handler(Pinged, CountingHandler(counter))
        return event_cell("kerux", "peer", mediator.publish, Pinged(), counters, note="sequential")
    mediator.register(Ping, handle)
    if scenario == "behaviors":
        for _ in range(BEHAVIOURS):
            mediator.add_behavior(AddOne())
    return request_cell("kerux", "peer", mediator.send, Ping(), EXPECTED[scenario], note="function handler")


# ---------------------------------------------------------------------------------------- diator


def _diator(scenario: str, diator: Any) -> Cell:
    events: Any = _import("diator.events")
    requests: Any = _import("diator.requests")
    middlewares: Any = _import("diator.middlewares")

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Ping(requests.Request):  # type: ignore[misc]
        pass

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Pinged(events.DomainEvent):  # type: ignore[misc]
        pass

    class PingHandler:
        def __init__(self) -> None:
            self.events: list[object] = []

        async def handle(self, request: Ping) -> int:
            return 42

    if scenario == "publish":
        counters = [Counter() for _ in range(3)]
        instances = {}
        event_map = events.EventMap()
        for counter in counters:
            handler_class = _event_handler_class(object, counter)
            event_map.bind(Pinged, handler_class)
            instances[handler_class] = handler_class()
        # diator's Mediator has no publish: events go through its EventEmitter.
        emitter = events.EventEmitter(event_map=event_map, container=_Prebuilt(instances))
        return event_cell("diator", "peer", emitter.emit, Pinged(), counters, note="EventEmitter.emit, sequential")
    request_map = requests.RequestMap()
    request_map.bind(Ping, PingHandler)
    chain = middlewares.MiddlewareChain()
    if scenario == "behaviors":
        for _ in range(BEHAVIOURS):
            chain.add(_AddOne())
    mediator = _import("diator.mediator").Mediator(
        request_map=request_map, container=_Prebuilt({PingHandler: PingHandler()}), middleware_chain=chain
    )
    note = "RequestMap, prebuilt-instance container"
    return request_cell("diator", "peer", mediator.send, Ping(), EXPECTED[scenario], note=note)


PEERS: Final = (
    Peer("catga.compat.mediatr", "catga.compat.mediatr", None, "compat", _mediatr("catga.compat.mediatr", "compat")),
    Peer("mediatr", "mediatr", "mediatr", "peer", _mediatr("mediatr", "peer")),
    Peer("python-cqrs", "cqrs", "python-cqrs", "peer", _python_cqrs),
    Peer("kerux", "kerux", "kerux", "peer", _kerux),
    Peer("diator", "diator", "diator", "peer", _diator),
)
