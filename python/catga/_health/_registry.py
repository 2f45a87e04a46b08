"""`HealthRegistry`: named checks, each run concurrently and bounded by a timeout, into reports."""

import inspect
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, NamedTuple, TypeAlias, TypeVar

from catga._health import _builtins
from catga._health._report import CheckResult, HealthReport, HealthStatus
from catga._health._running import Late, describe_error, run_bounded

if TYPE_CHECKING:
    from catga._mediator import Mediator

__all__ = ["Check", "CheckOutcome", "HealthRegistry"]

CheckOutcome: TypeAlias = HealthStatus | bool | tuple[HealthStatus | bool, str | None] | CheckResult | None
"""What a check returns: a status, `True`/`False` (healthy/unhealthy), `(status, detail)`, a
`CheckResult`, or `None` (healthy)."""

Check: TypeAlias = Callable[[], CheckOutcome | Awaitable[CheckOutcome]]
"""A health check: a sync or async callable taking no arguments."""

C = TypeVar("C", bound=Check)


class _Entry(NamedTuple):
    name: str
    check: Check
    ready: bool
    live: bool


class HealthRegistry:
    """Named health checks, run into a `HealthReport` by `health()`, `ready()` and `live()`.

    Checks run concurrently, each bounded by `check_timeout` seconds: one that hangs is reported
    unhealthy ("timed out after 0.5 s") and the report comes back on time; one that raises is
    unhealthy with the exception (`"ValueError: boom"`). Nothing a check does escapes, except the
    caller's own cancellation. An async check is cut off at the deadline; a sync check runs in the
    event loop and cannot be, so a sync check must be quick (do I/O in an async one): one that takes
    longer than `check_timeout` is reported unhealthy when it returns.

    With a `mediator`, the built-in checks are registered: `mediator` (started), `circuit_breakers`
    (none open), `transport` (connected, when the mediator has one), `stores` (the configured stores
    answer `ping()`), all for readiness, and `event_loop` (its lag against
    `loop_lag_degraded`/`loop_lag_unhealthy` seconds), for liveness and readiness. For anything else
    (a database, a downstream API), `add_check` is the extension point.

    >>> import asyncio, catga
    >>> mediator = catga.Mediator()
    >>> registry = HealthRegistry(mediator)
    >>> @registry.check("database")
    ... async def database() -> bool:
    ...     return True
    >>> report = asyncio.run(registry.ready())
    >>> report.status, report.checks["mediator"].detail
    (<HealthStatus.UNHEALTHY: 'unhealthy'>, 'not started')
    >>> list(report.checks)
    ['mediator', 'circuit_breakers', 'stores', 'event_loop', 'database']
    """

    def __init__(
        self,
        mediator: "Mediator | None" = None,
        *,
        check_timeout: float = 0.5,
        loop_lag_degraded: float = 0.1,
        loop_lag_unhealthy: float = 1.0,
    ) -> None:
        self._check_timeout: Final = _positive("check_timeout", check_timeout)
        degraded = _positive("loop_lag_degraded", loop_lag_degraded)
        unhealthy = _positive("loop_lag_unhealthy", loop_lag_unhealthy)
        if degraded > unhealthy:
            raise ValueError(
                f"`loop_lag_degraded` must not exceed `loop_lag_unhealthy`, got `{degraded!r}` > `{unhealthy!r}`"
            )
        self._mediator: Final = mediator
        self._entries: dict[str, _Entry] = {}
        if mediator is not None:
            self.add_check("mediator", _builtins.mediator_check(mediator))
            self.add_check("circuit_breakers", _builtins.breakers_check(mediator))
            self.add_check("transport", _builtins.transport_check(mediator))
            # The pings get most of the check's time, so that a slow store is named in the detail
            # instead of the whole check timing out anonymously.
            self.add_check("stores", _builtins.stores_check(mediator, ping_timeout=self._check_timeout * 0.8))
            self.add_check("event_loop", _builtins.event_loop_check(degraded, unhealthy), live=True)

    @property
    def mediator(self) -> "Mediator | None":
        """The mediator whose built-in checks this registry runs, if any."""
        return self._mediator

    @property
    def check_timeout(self) -> float:
        """Seconds each check may take before it is reported unhealthy."""
        return self._check_timeout

    @property
    def names(self) -> tuple[str, ...]:
        """The registered checks' names, in registration order (the order of every report)."""
        return tuple(self._entries)

    def add_check(self, name: str, check: Check, *, ready: bool = True, live: bool = False) -> None:
        """Register `check` under `name`: run by `health()`, and by `ready()`/`live()` as flagged.

        `ready`: it decides whether the service should get traffic (a database it needs).
        `live`: it decides whether the process works at all (restarted when not); keep liveness
        checks few and local, or a dependency outage restarts every replica.
        A name already registered raises `ValueError`; a non-callable check raises `TypeError`.
        """
        if not isinstance(name, str):
            raise TypeError(f"a health check's name must be a `str`, got `{name!r}`")
        if not name:
            raise ValueError("a health check's name must not be empty, got `''`")
        if name in self._entries:
            raise ValueError(f"health check `{name}` is already registered")
        if not callable(check):
            raise TypeError(f"health check `{name}` must be callable, got `{check!r}`")
        self._entries[name] = _Entry(name, check, bool(ready), bool(live))

    def check(self, name: str, *, ready: bool = True, live: bool = False) -> Callable[[C], C]:
        """`add_check` as a decorator; returns the function unchanged.

        >>> registry = HealthRegistry()
        >>> @registry.check("disk", live=True)
        ... def disk() -> tuple[HealthStatus, str]:
        ...     return HealthStatus.DEGRADED, "92% full"
        >>> registry.names
        ('disk',)
        """

        def register(check: C) -> C:
            self.add_check(name, check, ready=ready, live=live)
            return check

        return register

    def remove_check(self, name: str) -> None:
        """Unregister a check (a built-in one too); an unknown name raises `KeyError`."""
        if self._entries.pop(name, None) is None:
            raise KeyError(f"no health check `{name}` is registered")

    async def health(self) -> HealthReport:
        """Run every check."""
        return await self._run([entry for entry in self._entries.values()])

    async def ready(self) -> HealthReport:
        """Run the readiness checks: can the service take traffic?"""
        return await self._run([entry for entry in self._entries.values() if entry.ready])

    async def live(self) -> HealthReport:
        """Run the liveness checks: does the process (its event loop) still work?"""
        return await self._run([entry for entry in self._entries.values() if entry.live])

    async def _run(self, entries: list[_Entry]) -> HealthReport:
        started = time.perf_counter()
        outcomes = await run_bounded([self._run_one(entry) for entry in entries], self._check_timeout)
        results: list[CheckResult] = []
        for entry, outcome in zip(entries, outcomes, strict=True):
            if outcome is Late.TIMED_OUT:
                detail = f"timed out after {self._check_timeout:g} s"
                outcome = CheckResult(entry.name, HealthStatus.UNHEALTHY, detail, time.perf_counter() - started)
            elif outcome is Late.CANCELLED:
                outcome = CheckResult(entry.name, HealthStatus.UNHEALTHY, "cancelled", time.perf_counter() - started)
            results.append(outcome)
        return HealthReport(results)

    async def _run_one(self, entry: _Entry) -> CheckResult:
        started = time.perf_counter()
        is_sync = True
        try:
            value = entry.check()
            if inspect.isawaitable(value):
                is_sync = False
                value = await value
        except Exception as exc:  # a check's failure is its result, never the caller's problem
            return CheckResult(entry.name, HealthStatus.UNHEALTHY, describe_error(exc), time.perf_counter() - started)
        duration = time.perf_counter() - started
        if is_sync and duration > self._check_timeout:
            overrun = (
                f"took {duration:.3f} s, over the `check_timeout` of {self._check_timeout:g} s "
                "(a sync check blocks the event loop: make it async)"
            )
            return CheckResult(entry.name, HealthStatus.UNHEALTHY, overrun, duration)
        status, detail = _interpret(value)
        return CheckResult(entry.name, status, detail, duration)

    def __repr__(self) -> str:
        return f"<HealthRegistry: {len(self._entries)} checks, check_timeout={self._check_timeout:g}>"


def _as_status(value: object) -> HealthStatus | None:
    if isinstance(value, bool):
        return HealthStatus.HEALTHY if value else HealthStatus.UNHEALTHY
    if isinstance(value, str):  # a HealthStatus, or its value
        try:
            return HealthStatus(value)
        except ValueError:
            return None
    return None


def _interpret(value: object) -> tuple[HealthStatus, str | None]:
    """A check's return value as `(status, detail)`; anything unexpected is unhealthy, named."""
    if value is None:
        return HealthStatus.HEALTHY, None
    if isinstance(value, CheckResult):
        return value.status, value.detail
    status = _as_status(value)
    if status is not None:
        return status, None
    if isinstance(value, tuple) and len(value) == 2:
        status = _as_status(value[0])
        detail = value[1]
        if status is not None and (detail is None or isinstance(detail, str)):
            return status, detail
    return HealthStatus.UNHEALTHY, (
        f"the check returned `{_short_repr(value)}`; expected a `HealthStatus`, a `bool`, "
        "a `(status, detail)` tuple, a `CheckResult` or `None`"
    )


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number, got `{value!r}`")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"`{name}` must be positive, got `{value!r}`")
    return float(value)
