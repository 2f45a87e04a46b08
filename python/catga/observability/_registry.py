"""The metrics registry: the core's lock-free per-type counters, plus circuit breaker states.

The pipeline records into `_core.TypeMetrics` objects (one per message kind and type, made by
`for_type`) without taking a lock or calling back into Python; everything else here runs only when
metrics are read: `snapshot()` copies the counters out, `prometheus_text()` renders them, and
`instrument()` lets an OpenTelemetry `MeterProvider` read them at each collection.

A snapshot is a list with one dict per message type::

    {"kind": "command", "type": "orders.create",
     "messages": {"success": 3, "failure": 1, "cancelled": 0},
     "duration": {"buckets": [...21 counts, not cumulative, the last above 10 s...],
                  "sum": 0.0012, "count": 4},
     "active": 0,
     "publish_handlers": {"success": 0, "failure": 0, "cancelled": 0},
     "retry_attempts": 0, "idempotency_hits": 0, "idempotency_misses": 0,
     "rate_limit_rejected": 0, "concurrency_rejected": 0, "dead_letters": 0,
     "circuit_breaker_state": None}     # 0 closed, 1 half-open, 2 open; None: no breaker
"""

import bisect
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final

from opentelemetry.metrics import MeterProvider

from catga import _core
from catga.observability import _otel_metrics
from catga.observability._prometheus import DURATION_BUCKETS, render, render_sagas

__all__ = ["MetricsRegistry", "SagaMetrics", "default_registry"]

BREAKER_STATES: Final = {"closed": 0, "half_open": 1, "open": 2}
"""`circuit_breaker_state` of each breaker state, worse is higher (a type shows its worst)."""

_ZERO_OUTCOMES: Final = {"success": 0, "failure": 0, "cancelled": 0}


def _zero_entry(type_: str) -> dict[str, Any]:
    """The snapshot entry of a type the core has not counted anything for (known from a breaker)."""
    return {
        # The pipeline names no kind when it registers a breaker; the type's real entry (with its
        # kind) replaces this one as soon as the core has it.
        "kind": "",
        "type": type_,
        "messages": dict(_ZERO_OUTCOMES),
        "duration": {"buckets": [0] * (len(DURATION_BUCKETS) + 1), "sum": 0.0, "count": 0},
        "active": 0,
        "publish_handlers": dict(_ZERO_OUTCOMES),
        "retry_attempts": 0,
        "idempotency_hits": 0,
        "idempotency_misses": 0,
        "rate_limit_rejected": 0,
        "concurrency_rejected": 0,
        "dead_letters": 0,
    }


_BreakerRef = Callable[[], Any]
"""A weak reference to a breaker, or (for a breaker that takes none) a function returning it."""


def _ref(breaker: object) -> _BreakerRef:
    try:
        return weakref.ref(breaker)
    except TypeError:
        # The cores' breakers take no weak references (both are `__slots__`/native without
        # `__weakref__`): held strongly then. They live as long as their mediator's routes anyway.
        return lambda: breaker


class MetricsRegistry:
    """Per-type message metrics, readable as a snapshot, as Prometheus text or through OpenTelemetry.

    The pipeline takes a type's counters with `for_type(kind, type)` and registers each circuit
    breaker it makes with `track_breaker(type, breaker)`. Most applications use the process-wide
    `default_registry()`.

    >>> registry = MetricsRegistry()
    >>> metrics = registry.for_type("command", "orders.create")
    >>> metrics.enter(); metrics.leave(0, 0.002)  # what the pipeline does around a message
    >>> [(entry["type"], entry["messages"]["success"]) for entry in registry.snapshot()]
    [('orders.create', 1)]
    """

    def __init__(self) -> None:
        self._table = _core.MetricsRegistry()
        self._lock = threading.Lock()
        self._breakers: dict[str, list[_BreakerRef]] = {}
        self.sagas: Final = SagaMetrics()
        """The saga counters (`catga.SagaExecutor` records into them; see `SagaMetrics`)."""

    def for_type(self, kind: str, type: str, /) -> _core.TypeMetrics:
        """The core counters of a message type (made on first call): what the pipeline records into."""
        return self._table.for_type(kind, type)

    def track_breaker(self, type: str, breaker: object) -> None:
        """Report the state of `breaker` (its `.state`) as the circuit breaker state of `type`.

        `type` is the message type's wire name. A type with several breakers (one per event
        handler) shows the worst state. Breakers that take weak references are held weakly.
        """
        if not isinstance(getattr(breaker, "state", None), str):
            raise TypeError(f"breaker `{breaker!r}` has no `state` string")
        with self._lock:
            self._breakers.setdefault(type, []).append(_ref(breaker))

    def _breaker_states(self) -> dict[str, int]:
        """The worst breaker state of each type, forgetting breakers that are gone."""
        states: dict[str, int] = {}
        with self._lock:
            for type_, refs in list(self._breakers.items()):
                alive = [ref for ref in refs if ref() is not None]
                if not alive:
                    del self._breakers[type_]
                    continue
                self._breakers[type_] = alive
                worst = 0
                for ref in alive:
                    breaker = ref()
                    if breaker is not None:
                        worst = max(worst, BREAKER_STATES.get(breaker.state, 0))
                states[type_] = worst
        return states

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per message type (see the module docstring), with `circuit_breaker_state`."""
        states = self._breaker_states()
        entries: list[dict[str, Any]] = list(self._table.snapshot())
        for entry in entries:
            entry["circuit_breaker_state"] = states.get(entry["type"])
        known = {entry["type"] for entry in entries}
        for type_, state in states.items():
            if type_ in known:
                continue
            entry = _zero_entry(type_)  # a type known only from its breakers
            entry["circuit_breaker_state"] = state
            entries.append(entry)
        return entries

    def prometheus_text(self) -> str:
        """The metrics in the Prometheus text format (0.0.4), for a `/metrics` endpoint."""
        return render(self.snapshot()) + render_sagas(self.sagas.snapshot())

    def instrument(self, meter_provider: MeterProvider | None = None) -> None:
        """Export the metrics through OpenTelemetry: observable instruments on the meter `catga`.

        `meter_provider=None` is the global provider. Calling it again for the same provider does
        nothing. See `catga.observability._otel_metrics`.
        """
        _otel_metrics.instrument(self, meter_provider)

    def __repr__(self) -> str:
        with self._lock:
            breakers = sum(len(refs) for refs in self._breakers.values())
        return f"<MetricsRegistry types={len(self._table)} breakers={breakers}>"


_default: MetricsRegistry | None = None
_default_lock: Final = threading.Lock()


def default_registry() -> MetricsRegistry:
    """The process-wide registry that mediators record into unless given another (made on first call).

    It is exported through the global OpenTelemetry `MeterProvider` (once the application sets one)
    and served by `catga.asgi.app` as Prometheus text.

    >>> default_registry() is default_registry()
    True
    """
    global _default
    registry = _default
    if registry is None:
        with _default_lock:
            registry = _default
            if registry is None:
                registry = _default = MetricsRegistry()
                # Exported through the global MeterProvider as soon as the application sets one
                # (until then the API's proxy holds the instruments): no call needed.
                registry.instrument()
    return registry


# ------------------------------------------------------------------------------------------ Sagas


class SagaMetrics:
    """Per-saga counters (issue 6): runs by final status, run durations, runs in progress and
    compensations. Sagas are rare next to messages, so these are plain Python counters under a lock.

    `snapshot()` gives one dict per saga name::

        {"saga": "place-order", "sagas": {"completed": 3, "compensated": 1, "failed": 0},
         "duration": {"buckets": [...21 counts, not cumulative...], "sum": 0.5, "count": 4},
         "active": 0, "compensations": 2}

    `sagas` may hold other statuses too (`interrupted`: a run that ended by cancellation or by
    losing its lease). Labels are saga names, never saga ids.

    >>> metrics = SagaMetrics()
    >>> metrics.started("place-order"); metrics.finished("place-order", "completed", 0.2)
    >>> [(entry["saga"], entry["sagas"]["completed"], entry["active"]) for entry in metrics.snapshot()]
    [('place-order', 1, 0)]
    """

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}

    def _entry(self, saga: str) -> dict[str, Any]:
        entry = self._entries.get(saga)
        if entry is None:
            entry = self._entries[saga] = {
                "saga": saga,
                "sagas": {"completed": 0, "compensated": 0, "failed": 0},
                "duration": {"buckets": [0] * (len(DURATION_BUCKETS) + 1), "sum": 0.0, "count": 0},
                "active": 0,
                "compensations": 0,
            }
        return entry

    def started(self, saga: str) -> None:
        """A run of `saga` began (or was taken over) in this process."""
        with self._lock:
            self._entry(saga)["active"] += 1

    def finished(self, saga: str, status: str, seconds: float) -> None:
        """A run of `saga` ended with `status` after `seconds`."""
        with self._lock:
            entry = self._entry(saga)
            entry["active"] -= 1
            entry["sagas"][status] = entry["sagas"].get(status, 0) + 1
            duration = entry["duration"]
            # `le` buckets: the first upper bound at or above `seconds`; the last is the overflow.
            duration["buckets"][bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
            duration["sum"] += seconds
            duration["count"] += 1

    def compensated(self, saga: str) -> None:
        """A step of `saga` was compensated."""
        with self._lock:
            self._entry(saga)["compensations"] += 1

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per saga name (see the class docstring), copied."""
        with self._lock:
            return [
                {
                    **entry,
                    "sagas": dict(entry["sagas"]),
                    "duration": {**entry["duration"], "buckets": list(entry["duration"]["buckets"])},
                }
                for entry in self._entries.values()
            ]
