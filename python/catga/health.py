"""Health checks for a catga service: liveness, readiness and a full report.

>>> import asyncio, catga
>>> from catga.health import HealthRegistry, HealthStatus
>>> mediator = catga.Mediator()
>>> registry = HealthRegistry(mediator, check_timeout=0.5)
>>> @registry.check("payments_api")
... async def payments_api() -> tuple[HealthStatus, str]:
...     return HealthStatus.DEGRADED, "p99 latency 2 s"
>>> async def main() -> None:
...     async with mediator:
...         report = await registry.ready()
...     print(report.status.value, report.checks["payments_api"].detail)
>>> asyncio.run(main())
degraded p99 latency 2 s

`catga.asgi.app(mediator)` serves these reports over HTTP (`/health`, `/health/ready`,
`/health/live`) for Kubernetes probes; see docs/health.md.
"""

from catga._health._registry import Check, CheckOutcome, HealthRegistry
from catga._health._report import CheckResult, HealthReport, HealthStatus

__all__ = ["Check", "CheckOutcome", "CheckResult", "HealthRegistry", "HealthReport", "HealthStatus"]

# Shown as `catga.health.X` in reprs and tracebacks, like the top-level names (see catga/__init__.py).
for _value in (CheckResult, HealthRegistry, HealthReport, HealthStatus):
    _value.__module__ = __name__
del _value
