"""The checks a `HealthRegistry` gets with a mediator: `mediator`, `circuit_breakers`, `transport`,
`stores`, `event_loop`. Each factory returns an async check, `() -> (HealthStatus, detail)`.
"""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from catga._health._report import HealthStatus
from catga._health._running import Late, describe_error, run_bounded
from catga.behaviors._hooks import _BreakerState

if TYPE_CHECKING:
    from catga._mediator import Mediator

__all__ = ["breakers_check", "event_loop_check", "mediator_check", "stores_check"]

Outcome = tuple[HealthStatus, str | None]
BuiltinCheck = Callable[[], Awaitable[Outcome]]


def mediator_check(mediator: "Mediator") -> BuiltinCheck:
    """Healthy while the mediator is started (`start()` ran, `stop()` has not)."""

    async def mediator_started() -> Outcome:
        if mediator.running:
            return HealthStatus.HEALTHY, "running"
        return HealthStatus.UNHEALTHY, "not started"

    return mediator_started


def breakers_check(mediator: "Mediator") -> BuiltinCheck:
    """Degraded while any breaker of the mediator's `CircuitBreaker` is open or half-open.

    The detail names them: a request type by its `__qualname__`, an event handler (breakers are
    per handler for events) by its qualified name. Healthy when the behaviour is off.
    """

    async def circuit_breakers() -> Outcome:
        behavior = mediator.config.circuit_breaker
        if behavior is None:
            return HealthStatus.HEALTHY, "circuit breaker off"
        # Made on first use by the pipeline (`catga.behaviors._hooks`): absent, no breaker exists yet.
        state = getattr(behavior, "_state", None)
        if not isinstance(state, _BreakerState):
            return HealthStatus.HEALTHY, "no breaker in use"
        with state.lock:  # routes may add breakers from other threads meanwhile
            breakers = list(state.breakers.items())
        tripped: dict[str, list[str]] = {}
        for key, breaker in breakers:
            breaker_state = breaker.state
            if breaker_state != "closed":
                tripped.setdefault(breaker_state.replace("_", "-"), []).append(_breaker_name(key))
        if not tripped:
            return HealthStatus.HEALTHY, f"{len(breakers)} closed"
        detail = "; ".join(
            f"{state_name}: " + ", ".join(f"`{name}`" for name in sorted(names))
            for state_name, names in sorted(tripped.items(), key=lambda item: item[0] != "open")
        )
        return HealthStatus.DEGRADED, detail

    return circuit_breakers


def _breaker_name(key: object) -> str:
    """A breaker's key as the detail shows it: a message type, or `(event type, handler name)`."""
    if isinstance(key, tuple) and len(key) == 2:
        return str(key[1])
    return str(getattr(key, "__qualname__", key))


def _configured_stores(mediator: "Mediator") -> list[tuple[str, object]]:
    """`(role, store)` for each store the mediator's config names (in-memory defaults are `None`)."""
    config = mediator.config
    stores: list[tuple[str, object]] = []
    seen: set[int] = set()
    for role, behavior in (
        ("idempotency", config.idempotency),
        ("cache", config.cache),
        ("dead_letter", config.dead_letter),
    ):
        store = getattr(behavior, "store", None)
        if store is not None and id(store) not in seen:  # one store may serve two roles: ping it once
            seen.add(id(store))
            stores.append((role, store))
    return stores


def transport_check(mediator: "Mediator") -> BuiltinCheck:
    """Unhealthy when the mediator's transport is not connected (down, reconnecting, or not started);
    healthy, saying so, when it has none (in process only)."""

    async def transport() -> Outcome:
        current = mediator.transport
        if current is None:
            return HealthStatus.HEALTHY, "no transport (in process)"
        if current.connected:
            return HealthStatus.HEALTHY, f"{type(current).__name__} connected"
        return HealthStatus.UNHEALTHY, f"{type(current).__name__} not connected"

    return transport


def stores_check(mediator: "Mediator", *, ping_timeout: float) -> BuiltinCheck:
    """Unhealthy when a store the config uses does not answer its `async ping()` in `ping_timeout`
    seconds or raises; stores without `ping` (the in-memory ones) count as reachable."""

    async def stores() -> Outcome:
        configured = _configured_stores(mediator)
        if not configured:
            return HealthStatus.HEALTHY, "no store configured"
        outcomes = await run_bounded([_ping(store) for _, store in configured], ping_timeout)
        reachable: list[str] = []
        unreachable: list[str] = []
        for (role, store), outcome in zip(configured, outcomes, strict=True):
            label = f"{role} `{type(store).__qualname__}`"
            if outcome is None:
                reachable.append(label)
            elif outcome is Late.TIMED_OUT:
                unreachable.append(f"{label} (ping timed out after {ping_timeout:g} s)")
            elif outcome is Late.CANCELLED:
                unreachable.append(f"{label} (ping cancelled)")
            else:
                unreachable.append(f"{label} ({outcome})")
        if unreachable:
            return HealthStatus.UNHEALTHY, "unreachable: " + "; ".join(unreachable)
        return HealthStatus.HEALTHY, "reachable: " + ", ".join(reachable)

    return stores


async def _ping(store: object) -> str | None:
    """`None` when `store` is reachable, else what went wrong."""
    ping = getattr(store, "ping", None)
    if not callable(ping):
        return None
    try:
        answer: Any = ping()
        if inspect.isawaitable(answer):
            answer = await answer
    except Exception as exc:  # an unreachable store is the check's result
        return describe_error(exc)
    if answer is False:  # e.g. a client whose ping reports failure instead of raising
        return "ping returned `False`"
    return None


def event_loop_check(degraded: float, unhealthy: float) -> BuiltinCheck:
    """The lag of the running event loop: how late a `call_soon` callback runs after it was
    scheduled. Every callback ready before it (other tasks' steps, a blocking call in one of them)
    runs first, so the lag is how long the loop takes to get round to new work. Degraded from
    `degraded` seconds, unhealthy from `unhealthy`."""

    async def event_loop() -> Outcome:
        loop = asyncio.get_running_loop()
        ran: asyncio.Future[float] = loop.create_future()
        scheduled = time.perf_counter()
        loop.call_soon(_stamp, ran)
        lag = await ran - scheduled
        detail = f"lag {lag * 1000:.2f} ms"
        if lag >= unhealthy:
            return HealthStatus.UNHEALTHY, f"{detail}, at or over {unhealthy * 1000:g} ms"
        if lag >= degraded:
            return HealthStatus.DEGRADED, f"{detail}, at or over {degraded * 1000:g} ms"
        return HealthStatus.HEALTHY, detail

    return event_loop


def _stamp(future: "asyncio.Future[float]") -> None:
    if not future.done():  # the check may have been cancelled meanwhile
        future.set_result(time.perf_counter())
