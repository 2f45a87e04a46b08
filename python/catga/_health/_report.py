"""`HealthStatus`, `CheckResult` and `HealthReport`: what a health check says, and a set of them.

>>> report = HealthReport([
...     CheckResult("db", HealthStatus.HEALTHY, duration=0.002),
...     CheckResult("breakers", HealthStatus.DEGRADED, "open: `PlaceOrder`"),
... ])
>>> report.status
<HealthStatus.DEGRADED: 'degraded'>
>>> report.ok
True
>>> report.to_dict()["checks"]["db"]
{'status': 'healthy', 'detail': None, 'duration_ms': 2.0}
"""

import dataclasses
import enum
import types
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["CheckResult", "HealthReport", "HealthStatus"]


class HealthStatus(enum.StrEnum):
    """How healthy a check (or a whole report) is; a `str` enum, so it reads well in JSON.

    `DEGRADED` still takes traffic (HTTP 200 from `catga.asgi`); `UNHEALTHY` does not (503).

    >>> HealthStatus("degraded") is HealthStatus.DEGRADED
    True
    >>> HealthStatus.worst([HealthStatus.HEALTHY, HealthStatus.UNHEALTHY, HealthStatus.DEGRADED])
    <HealthStatus.UNHEALTHY: 'unhealthy'>
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @classmethod
    def worst(cls, statuses: Iterable["HealthStatus"]) -> "HealthStatus":
        """The worst of `statuses`; `HEALTHY` when there are none (nothing is wrong)."""
        return max(statuses, key=_SEVERITY.__getitem__, default=cls.HEALTHY)


_SEVERITY: Final = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


@dataclasses.dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: its `name`, `status`, a human `detail` and `duration` in seconds.

    A check may return one itself (its `name` and `duration` are then replaced by the registry's).
    `status` may be given as its string value.

    >>> CheckResult("db", "degraded", "replica lagging")
    CheckResult(name='db', status=<HealthStatus.DEGRADED: 'degraded'>, detail='replica lagging', duration=0.0)
    """

    name: str
    status: HealthStatus
    detail: str | None = None
    duration: float = 0.0

    def __post_init__(self) -> None:
        try:
            status = HealthStatus(self.status)
        except ValueError:
            allowed = ", ".join(f"`{s.value}`" for s in HealthStatus)
            raise ValueError(f"`status` must be one of {allowed}, got `{self.status!r}`") from None
        # A frozen dataclass: the coerced value goes in through object.__setattr__.
        object.__setattr__(self, "status", status)

    def to_dict(self) -> dict[str, Any]:
        """`{"status": ..., "detail": ..., "duration_ms": ...}`: JSON-ready (the name is the key outside)."""
        return {"status": self.status.value, "detail": self.detail, "duration_ms": round(self.duration * 1000, 3)}


class HealthReport:
    """The results of a set of checks; its `status` is the worst of theirs (`HEALTHY` when empty).

    `checks` maps each check's name to its `CheckResult`, in the order the checks were registered.
    `ok` says whether the report allows traffic: healthy or degraded.
    """

    __slots__ = ("checks", "status")

    status: HealthStatus
    checks: Mapping[str, CheckResult]

    def __init__(self, checks: Iterable[CheckResult]) -> None:
        by_name: dict[str, CheckResult] = {}
        for result in checks:
            if result.name in by_name:
                raise ValueError(f"a report holds one result per check, got two for `{result.name}`")
            by_name[result.name] = result
        self.checks = types.MappingProxyType(by_name)
        self.status = HealthStatus.worst(result.status for result in by_name.values())

    @property
    def ok(self) -> bool:
        """`True` unless the status is `UNHEALTHY` (a degraded service still takes traffic)."""
        return self.status is not HealthStatus.UNHEALTHY

    def to_dict(self) -> dict[str, Any]:
        """`{"status": "healthy", "checks": {name: {"status", "detail", "duration_ms"}}}`, for JSON."""
        return {"status": self.status.value, "checks": {name: r.to_dict() for name, r in self.checks.items()}}

    def __repr__(self) -> str:
        checks = ", ".join(f"{name}={r.status.value}" for name, r in self.checks.items())
        return f"<HealthReport {self.status.value}: {checks or 'no checks'}>"
