"""catga's metrics as OpenTelemetry observable instruments on the meter `catga`.

The pipeline counts in the core, lock-free; nothing is recorded through OpenTelemetry per message.
Instead `instrument` creates *observable* (asynchronous) instruments whose callbacks read the
registry's snapshot when the SDK collects (every export interval, or on each scrape of a pull
exporter), so an application that exports no metrics pays nothing.

One snapshot per collection: the SDK calls each instrument's callback once per collection (per
reader), one after the other, and the callbacks of one `instrument` call share a cache. A callback
takes a fresh snapshot when the cache is empty or when its own instrument was already served from
the cached one: that can only mean a new collection has begun. So the N instruments of one
collection see one consistent snapshot, taken by the first of them, and no collection sees an older
one. (The API's `CallbackOptions` carries no collection id to key on, hence this.)

No histogram: the OpenTelemetry API has no asynchronous histogram instrument, and the core's
histogram cannot be replayed into a synchronous one. The message duration is therefore exported as
three counters, `catga.message.duration.sum` (seconds), `catga.message.duration.count` and
`catga.message.duration.bucket` (cumulative counts with an `le` attribute, the bucket's upper
bound written as Prometheus writes it, `+Inf` last), from which a backend can still compute rates,
averages and quantiles. The Prometheus endpoint (`MetricsRegistry.prometheus_text()`) serves the
real histogram.

Attributes are namespaced, `catga.message.kind`, `catga.message.type` and `catga.outcome`, not bare
`kind`/`type`/`outcome`: OpenTelemetry reserves unnamespaced attribute names for its semantic
conventions, and these match the spans' attributes, so metrics and traces filter alike. Their
values are message kinds, type names and outcomes only, never ids, so cardinality stays bounded.

>>> from opentelemetry.sdk.metrics import MeterProvider
>>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
>>> class Registry:  # anything with `snapshot()`; normally a `catga.observability.MetricsRegistry`
...     def snapshot(self):
...         return [{"kind": "command", "type": "orders.create", "messages": {"success": 2}}]
>>> reader = InMemoryMetricReader()
>>> instrument(Registry(), MeterProvider(metric_readers=[reader]))
>>> [metric] = [m for m in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
...             if m.name == "catga.messages"]
>>> [(dict(p.attributes)["catga.outcome"], p.value) for p in metric.data.data_points]
[('success', 2), ('failure', 0), ('cancelled', 0)]
"""

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from catga._core import __version__
from catga.observability._prometheus import DURATION_BUCKETS, LE_LABELS, OUTCOMES

__all__ = ["instrument"]

KIND: Final = "catga.message.kind"
TYPE: Final = "catga.message.type"
OUTCOME: Final = "catga.outcome"

_Entry = Mapping[str, Any]


class _HasSnapshot(Protocol):
    def snapshot(self) -> list[dict[str, Any]]: ...


class _SnapshotCache:
    """The snapshot of the current collection, shared by the callbacks of one `instrument` call."""

    __slots__ = ("_lock", "_registry", "_served", "_snapshot")

    def __init__(self, registry: _HasSnapshot) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._snapshot: list[dict[str, Any]] | None = None
        self._served: set[str] = set()  # instruments given `_snapshot` so far

    def get(self, instrument: str) -> list[dict[str, Any]]:
        with self._lock:
            if self._snapshot is None or instrument in self._served:
                self._snapshot = self._registry.snapshot()
                self._served.clear()
            self._served.add(instrument)
            return self._snapshot


def _kind_type(entry: _Entry) -> dict[str, str]:
    return {KIND: entry["kind"], TYPE: entry["type"]}


def _messages(entry: _Entry) -> Iterable[Observation]:
    messages = entry.get("messages") or {}
    for outcome in OUTCOMES:
        yield Observation(messages.get(outcome, 0), {**_kind_type(entry), OUTCOME: outcome})


def _active(entry: _Entry) -> Iterable[Observation]:
    yield Observation(entry.get("active", 0), _kind_type(entry))


def _publish_handlers(entry: _Entry) -> Iterable[Observation]:
    handlers = entry.get("publish_handlers") or {}
    # Only events have handlers to count (as in the Prometheus text).
    if entry["kind"] != "event" and not any(handlers.values()):
        return
    for outcome in OUTCOMES:
        yield Observation(handlers.get(outcome, 0), {TYPE: entry["type"], OUTCOME: outcome})


def _counter(key: str) -> Callable[[_Entry], Iterable[Observation]]:
    def observe(entry: _Entry) -> Iterable[Observation]:
        yield Observation(entry.get(key, 0), _kind_type(entry))

    return observe


def _duration(entry: _Entry) -> dict[str, Any]:
    return entry.get("duration") or {}


def _duration_sum(entry: _Entry) -> Iterable[Observation]:
    yield Observation(float(_duration(entry).get("sum", 0.0)), _kind_type(entry))


def _bucket_counts(entry: _Entry) -> list[int]:
    buckets = list(_duration(entry).get("buckets") or [0] * (len(DURATION_BUCKETS) + 1))
    if len(buckets) != len(DURATION_BUCKETS) + 1:
        raise ValueError(
            f"duration buckets of `{entry.get('type')}` have `{len(buckets)}` counts, "
            f"expected `{len(DURATION_BUCKETS) + 1}`"
        )
    return buckets


def _duration_count(entry: _Entry) -> Iterable[Observation]:
    # From the buckets, like the Prometheus `_count`: consistent with `.bucket{le="+Inf"}`.
    yield Observation(sum(_bucket_counts(entry)), _kind_type(entry))


def _duration_buckets(entry: _Entry) -> Iterable[Observation]:
    total = 0
    for le, count in zip(LE_LABELS, _bucket_counts(entry), strict=True):
        total += count
        yield Observation(total, {**_kind_type(entry), "le": le})


def _breaker_state(entry: _Entry) -> Iterable[Observation]:
    state = entry.get("circuit_breaker_state")
    if state is not None:
        yield Observation(state, {TYPE: entry["type"]})


# (instrument kind, name, unit, description, observations of one snapshot entry)
_INSTRUMENTS: Final[tuple[tuple[str, str, str, str, Callable[[_Entry], Iterable[Observation]]], ...]] = (
    ("counter", "catga.messages", "{message}", "Messages handled, by outcome.", _messages),
    ("up_down_counter", "catga.messages.active", "{message}", "Messages in the pipeline now.", _active),
    ("counter", "catga.message.duration.sum", "s", "Total time messages took in the pipeline.", _duration_sum),
    ("counter", "catga.message.duration.count", "{message}", "Messages timed.", _duration_count),
    (
        "counter",
        "catga.message.duration.bucket",
        "{message}",
        "Messages that took at most `le` seconds (cumulative histogram buckets).",
        _duration_buckets,
    ),
    ("counter", "catga.publish.handlers", "{run}", "Event handler runs, by outcome.", _publish_handlers),
    ("counter", "catga.retry.attempts", "{attempt}", "Handler attempts repeated by Retry.", _counter("retry_attempts")),
    (
        "counter",
        "catga.idempotency.hits",
        "{message}",
        "Messages answered from the idempotency store.",
        _counter("idempotency_hits"),
    ),
    (
        "counter",
        "catga.idempotency.misses",
        "{message}",
        "Messages not yet in the idempotency store (run).",
        _counter("idempotency_misses"),
    ),
    (
        "counter",
        "catga.rate_limit.rejected",
        "{message}",
        "Messages rejected by RateLimit.",
        _counter("rate_limit_rejected"),
    ),
    (
        "counter",
        "catga.concurrency.rejected",
        "{message}",
        "Messages rejected by ConcurrencyLimit.",
        _counter("concurrency_rejected"),
    ),
    ("counter", "catga.dead_letters", "{message}", "Messages recorded as dead letters.", _counter("dead_letters")),
    (
        "gauge",
        "catga.circuit_breaker.state",
        "1",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open (the worst of the type's).",
        _breaker_state,
    ),
)


def _callback(
    cache: _SnapshotCache, name: str, observe: Callable[[_Entry], Iterable[Observation]]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [observation for entry in cache.get(name) for observation in observe(entry)]

    return callback


# What `instrument` did, by `id(provider)` (or `_GLOBAL`): (the provider, weakly if it can be, the
# registry). The global provider has a key of its own: before the application sets one it is the
# API's proxy, after it the real one, and the proxy's instruments already reach the real one.
_lock: Final = threading.Lock()
_GLOBAL: Final = "global"
_instrumented: dict[int | str, tuple[Callable[[], object], _HasSnapshot]] = {}


def _ref(value: object) -> Callable[[], object]:
    try:
        return weakref.ref(value)
    except TypeError:
        return lambda: value


def instrument(registry: _HasSnapshot, meter_provider: MeterProvider | None = None) -> None:
    """Create the observable instruments that export `registry` on the meter `catga` of the provider.

    `meter_provider=None` is the global provider, looked up now: before the application sets one,
    the API's proxy provider, whose instruments start reporting when a real provider is set.
    Calling it again for the same registry and provider does nothing. A provider exports one
    registry: its meter `catga` can have one instrument of each name, so a second registry on the
    same provider raises `ValueError` (use one registry per process, normally `default_registry()`).
    """
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    key: int | str = id(provider) if meter_provider is not None else _GLOBAL
    with _lock:
        for known, (ref, _) in list(_instrumented.items()):  # forget providers that are gone
            if ref() is None:
                del _instrumented[known]
        done = _instrumented.get(key)
        if done is not None:
            if done[1] is registry:
                return
            raise ValueError(f"meter provider `{provider!r}` already exports the metrics of `{done[1]!r}`")
        meter = provider.get_meter("catga", __version__)
        cache = _SnapshotCache(registry)
        for kind, name, unit, description, observe in _INSTRUMENTS:
            callbacks = [_callback(cache, name, observe)]
            if kind == "counter":
                meter.create_observable_counter(name, callbacks, unit, description)
            elif kind == "up_down_counter":
                meter.create_observable_up_down_counter(name, callbacks, unit, description)
            else:
                meter.create_observable_gauge(name, callbacks, unit, description)
        _instrument_sagas(meter, registry)
        _instrumented[key] = (_ref(provider) if key != _GLOBAL else (lambda: True), registry)


# ------------------------------------------------------------------------------------------ Sagas

SAGA: Final = "catga.saga.name"
STATUS: Final = "catga.saga.status"


def _saga_runs(entry: _Entry) -> Iterable[Observation]:
    for status, count in (entry.get("sagas") or {}).items():
        yield Observation(count, {SAGA: entry["saga"], STATUS: status})


def _saga(key: str) -> Callable[[_Entry], Iterable[Observation]]:
    def observe(entry: _Entry) -> Iterable[Observation]:
        yield Observation(entry.get(key, 0), {SAGA: entry["saga"]})

    return observe


def _saga_duration_sum(entry: _Entry) -> Iterable[Observation]:
    yield Observation(float(_duration(entry).get("sum", 0.0)), {SAGA: entry["saga"]})


def _saga_duration_count(entry: _Entry) -> Iterable[Observation]:
    yield Observation(sum(_bucket_counts(entry)), {SAGA: entry["saga"]})


def _saga_duration_buckets(entry: _Entry) -> Iterable[Observation]:
    total = 0
    for le, count in zip(LE_LABELS, _bucket_counts(entry), strict=True):
        total += count
        yield Observation(total, {SAGA: entry["saga"], "le": le})


# The saga counters of `registry.sagas` (a `SagaMetrics`), the duration as three counters like the
# messages' (see the module docstring).
_SAGA_INSTRUMENTS: Final[tuple[tuple[str, str, str, str, Callable[[_Entry], Iterable[Observation]]], ...]] = (
    ("counter", "catga.sagas", "{saga}", "Saga runs ended, by status.", _saga_runs),
    ("up_down_counter", "catga.sagas.active", "{saga}", "Saga runs in progress.", _saga("active")),
    ("counter", "catga.saga.duration.sum", "s", "Total time saga runs took.", _saga_duration_sum),
    ("counter", "catga.saga.duration.count", "{saga}", "Saga runs timed.", _saga_duration_count),
    (
        "counter",
        "catga.saga.duration.bucket",
        "{saga}",
        "Saga runs that took at most `le` seconds (cumulative histogram buckets).",
        _saga_duration_buckets,
    ),
    ("counter", "catga.saga.compensations", "{step}", "Saga steps compensated.", _saga("compensations")),
)


def _instrument_sagas(meter: Any, registry: object) -> None:
    sagas = getattr(registry, "sagas", None)
    if not callable(getattr(sagas, "snapshot", None)):
        return  # a registry without saga counters (a stand-in with `snapshot()` only)
    cache = _SnapshotCache(sagas)  # type: ignore[arg-type]
    for kind, name, unit, description, observe in _SAGA_INSTRUMENTS:
        callbacks = [_callback(cache, name, observe)]
        if kind == "counter":
            meter.create_observable_counter(name, callbacks, unit, description)
        else:
            meter.create_observable_up_down_counter(name, callbacks, unit, description)
