"""Message metrics (rust/core/src/metrics.rs, catga/_pure/_metrics.py), through whichever core
`catga._core` picked; `DURATION_BUCKETS` is compared across both cores."""

import math
import random
import re
import threading
from typing import Any

import pytest

import catga._pure as pure
from catga import _core
from catga._core import (
    COUNTER_CONCURRENCY_REJECTED,
    COUNTER_DEAD_LETTERS,
    COUNTER_IDEMPOTENCY_HITS,
    COUNTER_IDEMPOTENCY_MISSES,
    COUNTER_RATE_LIMIT_REJECTED,
    COUNTER_RETRY_ATTEMPTS,
    DURATION_BUCKETS,
    OUTCOME_CANCELLED,
    OUTCOME_FAILURE,
    OUTCOME_SUCCESS,
    MetricsRegistry,
    TypeMetrics,
)

BOUNDS_NS = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
]

ZERO_OUTCOMES = {"success": 0, "failure": 0, "cancelled": 0}


def _bucket_of(seconds: float) -> int:
    metrics = TypeMetrics("command", "t")
    metrics.leave(OUTCOME_SUCCESS, seconds)
    buckets: list[int] = metrics.snapshot()["duration"]["buckets"]
    assert sum(buckets) == 1
    return buckets.index(1)


def test_constants() -> None:
    assert (OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_CANCELLED) == (0, 1, 2)
    counters = (
        COUNTER_RETRY_ATTEMPTS,
        COUNTER_IDEMPOTENCY_HITS,
        COUNTER_IDEMPOTENCY_MISSES,
        COUNTER_RATE_LIMIT_REJECTED,
        COUNTER_CONCURRENCY_REJECTED,
        COUNTER_DEAD_LETTERS,
    )
    assert counters == (0, 1, 2, 3, 4, 5)
    assert isinstance(DURATION_BUCKETS, tuple)
    assert tuple(ns / 1e9 for ns in BOUNDS_NS) == DURATION_BUCKETS
    assert DURATION_BUCKETS[0] == 5e-6
    assert DURATION_BUCKETS[-1] == 10.0


def test_duration_buckets_are_the_same_in_both_cores() -> None:
    native = pytest.importorskip("catga._catga")
    assert native.DURATION_BUCKETS == pure.DURATION_BUCKETS
    assert all(type(bound) is float for bound in native.DURATION_BUCKETS)


def test_snapshot_shape_of_fresh_metrics() -> None:
    assert TypeMetrics("command", "orders.create").snapshot() == {
        "kind": "command",
        "type": "orders.create",
        "messages": ZERO_OUTCOMES,
        "duration": {"buckets": [0] * 21, "sum": 0.0, "count": 0},
        "active": 0,
        "publish_handlers": ZERO_OUTCOMES,
        "retry_attempts": 0,
        "idempotency_hits": 0,
        "idempotency_misses": 0,
        "rate_limit_rejected": 0,
        "concurrency_rejected": 0,
        "dead_letters": 0,
    }


def test_snapshot_types_and_key_order() -> None:
    metrics = TypeMetrics("query", "orders.get")
    metrics.leave(OUTCOME_SUCCESS, 0.001)
    snapshot = metrics.snapshot()
    assert list(snapshot) == [
        "kind",
        "type",
        "messages",
        "duration",
        "active",
        "publish_handlers",
        "retry_attempts",
        "idempotency_hits",
        "idempotency_misses",
        "rate_limit_rejected",
        "concurrency_rejected",
        "dead_letters",
    ]
    assert list(snapshot["messages"]) == ["success", "failure", "cancelled"]
    assert list(snapshot["duration"]) == ["buckets", "sum", "count"]
    assert type(snapshot["duration"]["sum"]) is float
    assert type(snapshot["duration"]["buckets"]) is list
    assert all(type(n) is int for n in snapshot["duration"]["buckets"])
    # A snapshot is a copy: changing it changes nothing.
    snapshot["messages"]["success"] = 99
    assert metrics.snapshot()["messages"]["success"] == 1


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0, 0),
        (0.0, 0),
        (1e-9, 0),
        (5e-6, 0),
        # Whole nanoseconds, rounded half up: 5000.001 ns is 5000 ns, still on the first bound.
        (5.000001e-6, 0),
        (5.0004e-6, 0),
        (5.0005e-6, 1),
        (5.001e-6, 1),
        (1e-5, 1),
        (0.001, 7),
        (0.0010001, 8),
        (10.0, 19),
        (10.000000001, 20),
        (11.0, 20),
        (1e300, 20),
    ],
)
def test_bucket_edges(seconds: float, bucket: int) -> None:
    assert _bucket_of(seconds) == bucket


@pytest.mark.parametrize("index", range(20))
def test_every_bound_is_inclusive(index: int) -> None:
    assert _bucket_of(DURATION_BUCKETS[index]) == index
    assert _bucket_of((BOUNDS_NS[index] + 1) / 1e9) == index + 1
    assert _bucket_of((BOUNDS_NS[index] - 1) / 1e9) == index


def test_leave_counts_outcomes_durations_and_active() -> None:
    metrics = TypeMetrics("command", "orders.create")
    metrics.enter()
    metrics.enter()
    metrics.enter()
    assert metrics.snapshot()["active"] == 3
    metrics.leave(OUTCOME_SUCCESS, 0.000001)
    metrics.leave(OUTCOME_FAILURE, 0.002)
    assert metrics.snapshot()["active"] == 1
    metrics.leave(OUTCOME_CANCELLED, 20)
    metrics.leave(OUTCOME_SUCCESS, 0.000003)
    snapshot = metrics.snapshot()
    assert snapshot["active"] == -1  # a leave without its enter shows, instead of being hidden
    assert snapshot["messages"] == {"success": 2, "failure": 1, "cancelled": 1}
    duration = snapshot["duration"]
    assert duration["count"] == 4 == sum(duration["buckets"])
    assert (duration["buckets"][0], duration["buckets"][8], duration["buckets"][20]) == (2, 1, 1)
    assert duration["sum"] == 20_002_004_000 / 1e9
    assert snapshot["publish_handlers"] == ZERO_OUTCOMES


def test_sum_is_whole_nanoseconds() -> None:
    metrics = TypeMetrics("command", "t")
    metrics.leave(OUTCOME_SUCCESS, 1.4e-9)  # 1 ns
    metrics.leave(OUTCOME_SUCCESS, 1.5e-9)  # 2 ns
    metrics.leave(OUTCOME_SUCCESS, True)  # an int (bool) is a number of seconds too
    assert metrics.snapshot()["duration"]["sum"] == 1_000_000_003 / 1e9


def test_sum_and_counters_saturate() -> None:
    metrics = TypeMetrics("command", "t")
    metrics.leave(OUTCOME_SUCCESS, 1e300)
    metrics.leave(OUTCOME_SUCCESS, 1.0)
    metrics.count(COUNTER_DEAD_LETTERS, 2**63 - 1)
    metrics.count(COUNTER_DEAD_LETTERS, 2**63 - 1)
    metrics.count(COUNTER_DEAD_LETTERS, 2**63 - 1)
    snapshot = metrics.snapshot()
    assert snapshot["duration"]["sum"] == float(2**64 - 1) / 1e9
    assert snapshot["dead_letters"] == 2**64 - 1
    assert snapshot["duration"]["buckets"][20] == 1
    assert snapshot["duration"]["buckets"][16] == 1


def test_handlers_and_counters() -> None:
    metrics = TypeMetrics("event", "orders.created")
    metrics.handler_done(OUTCOME_SUCCESS)
    metrics.handler_done(OUTCOME_SUCCESS)
    metrics.handler_done(OUTCOME_FAILURE)
    metrics.handler_done(OUTCOME_CANCELLED)
    metrics.count(COUNTER_RETRY_ATTEMPTS)
    metrics.count(COUNTER_IDEMPOTENCY_HITS, 2)
    metrics.count(COUNTER_IDEMPOTENCY_MISSES, n=3)
    metrics.count(COUNTER_RATE_LIMIT_REJECTED, 4)
    metrics.count(COUNTER_CONCURRENCY_REJECTED, 5)
    metrics.count(COUNTER_DEAD_LETTERS, 6)
    metrics.count(COUNTER_DEAD_LETTERS, 0)
    snapshot = metrics.snapshot()
    assert snapshot["publish_handlers"] == {"success": 2, "failure": 1, "cancelled": 1}
    assert snapshot["messages"] == ZERO_OUTCOMES
    assert snapshot["duration"]["count"] == 0
    assert [snapshot[name] for name in list(snapshot)[6:]] == [1, 2, 3, 4, 5, 6]


def test_properties_and_repr() -> None:
    metrics = TypeMetrics("query", "orders.get")
    assert (metrics.kind, metrics.type) == ("query", "orders.get")
    assert repr(metrics) == "TypeMetrics(kind='query', type='orders.get')"
    assert repr(TypeMetrics("event", "it's")) == """TypeMetrics(kind='event', type="it's")"""
    with pytest.raises(AttributeError):
        metrics.kind = "command"  # type: ignore[misc]
    with pytest.raises(TypeError):
        type("Sub", (TypeMetrics,), {})
    with pytest.raises(TypeError):
        type("Sub", (MetricsRegistry,), {})


def test_registry_gets_or_creates() -> None:
    registry = MetricsRegistry()
    assert len(registry) == 0
    assert repr(registry) == "MetricsRegistry(types=0)"
    create = registry.for_type("command", "orders.create")
    assert registry.for_type("command", "orders.create") is create
    created = registry.for_type("event", "orders.create")
    assert created is not create
    assert (created.kind, created.type) == ("event", "orders.create")
    assert len(registry) == 2
    assert repr(registry) == "MetricsRegistry(types=2)"
    create.enter()
    create.leave(OUTCOME_FAILURE, 0.5)
    assert registry.for_type("command", "orders.create").snapshot()["messages"]["failure"] == 1
    assert created.snapshot()["messages"] == ZERO_OUTCOMES
    # Registries are independent.
    assert MetricsRegistry().for_type("command", "orders.create") is not create


def test_registry_snapshot_is_sorted_by_type_then_kind() -> None:
    registry = MetricsRegistry()
    for kind, name in [("query", "orders.get"), ("event", "orders.create"), ("command", "orders.create")]:
        registry.for_type(kind, name)
    registry.for_type("command", "billing.charge").count(COUNTER_RETRY_ATTEMPTS, 3)
    snapshots = registry.snapshot()
    assert [(s["type"], s["kind"]) for s in snapshots] == [
        ("billing.charge", "command"),
        ("orders.create", "command"),
        ("orders.create", "event"),
        ("orders.get", "query"),
    ]
    assert snapshots[0] == registry.for_type("command", "billing.charge").snapshot()
    assert snapshots[0]["retry_attempts"] == 3
    assert MetricsRegistry().snapshot() == []


def _message(text: str) -> str:
    return f"^{re.escape(text)}$"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.leave(7, 0.1), ValueError, "`outcome` `7` must be 0, 1 or 2"),
        (lambda m: m.leave(-1, 0.1), ValueError, "`outcome` `-1` must be 0, 1 or 2"),
        (lambda m: m.leave(2**64, 0.1), ValueError, f"`outcome` `{2**64}` must be 0, 1 or 2"),
        (lambda m: m.leave(1.0, 0.1), TypeError, "`outcome` `1.0` must be an int"),
        (lambda m: m.leave("0", 0.1), TypeError, "`outcome` `'0'` must be an int"),
        (lambda m: m.leave(None, 0.1), TypeError, "`outcome` `None` must be an int"),
        (lambda m: m.handler_done(3), ValueError, "`outcome` `3` must be 0, 1 or 2"),
        (lambda m: m.handler_done(0.5), TypeError, "`outcome` `0.5` must be an int"),
        (lambda m: m.leave(0, math.nan), ValueError, "`seconds` `nan` must be a finite number >= 0"),
        (lambda m: m.leave(0, math.inf), ValueError, "`seconds` `inf` must be a finite number >= 0"),
        (lambda m: m.leave(0, -1e-9), ValueError, "`seconds` `-1e-09` must be a finite number >= 0"),
        (lambda m: m.leave(0, -1), ValueError, "`seconds` `-1.0` must be a finite number >= 0"),
        (lambda m: m.leave(0, 10**400), ValueError, f"`seconds` `{10**400}` must be a finite number >= 0"),
        (lambda m: m.leave(0, "1"), TypeError, "`seconds` `'1'` must be a number"),
        (lambda m: m.leave(0, None), TypeError, "`seconds` `None` must be a number"),
        (lambda m: m.count(6), ValueError, "`counter` `6` must be between 0 and 5"),
        (lambda m: m.count(-1), ValueError, "`counter` `-1` must be between 0 and 5"),
        (lambda m: m.count(2.0), TypeError, "`counter` `2.0` must be an int"),
        (lambda m: m.count(0, -1), ValueError, "`n` `-1` must be zero or positive"),
        (lambda m: m.count(0, -(2**70)), ValueError, f"`n` `{-(2**70)}` must be zero or positive"),
        (lambda m: m.count(0, 2**63), ValueError, f"`n` `{2**63}` must be at most 9223372036854775807"),
        (lambda m: m.count(0, 1.0), TypeError, "`n` `1.0` must be an int"),
        (lambda m: m.count(0, "1"), TypeError, "`n` `'1'` must be an int"),
    ],
)
def test_bad_input_names_the_value(call: Any, error: type[Exception], message: str) -> None:
    metrics = TypeMetrics("command", "t")
    metrics.enter()
    with pytest.raises(error, match=_message(message)):
        call(metrics)
    # Nothing was recorded, not even half of it.
    snapshot = metrics.snapshot()
    assert snapshot["active"] == 1
    assert snapshot == {**TypeMetrics("command", "t").snapshot(), "active": 1}


def test_names_must_be_str() -> None:
    with pytest.raises(TypeError, match=_message("`kind` `1` must be a str")):
        TypeMetrics(1, "t")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=_message("`type` `None` must be a str")):
        MetricsRegistry().for_type("command", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=_message("`kind` `b'command'` must be a str")):
        MetricsRegistry().for_type(b"command", None)  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        TypeMetrics("command", "\ud800")
    with pytest.raises(TypeError):
        MetricsRegistry().for_type(kind="command", type="t")  # type: ignore[call-arg]


def test_four_threads_record_exact_totals() -> None:
    registry = MetricsRegistry()
    threads, per_thread = 4, 3_000
    start = threading.Barrier(threads)
    seen: list[TypeMetrics] = []

    def work(thread: int) -> None:
        metrics = registry.for_type("command", "orders.create")
        seen.append(metrics)
        start.wait()
        for i in range(per_thread):
            metrics.enter()
            outcome = i % 3
            # Thread 0 lands on the bounds exactly, the others one nanosecond above.
            metrics.leave(outcome, (BOUNDS_NS[i % 20] + thread) / 1e9)
            metrics.handler_done(outcome)
            metrics.count(COUNTER_RETRY_ATTEMPTS, 2)

    workers = [threading.Thread(target=work, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert len(registry) == 1
    assert all(metrics is seen[0] for metrics in seen)
    snapshot = registry.snapshot()[0]
    total = threads * per_thread
    assert snapshot["active"] == 0
    assert snapshot["messages"] == {"success": total // 3, "failure": total // 3, "cancelled": total // 3}
    assert snapshot["publish_handlers"] == snapshot["messages"]
    assert snapshot["retry_attempts"] == 2 * total
    per_bound = per_thread // 20
    buckets = snapshot["duration"]["buckets"]
    assert snapshot["duration"]["count"] == total
    assert buckets == [per_bound] + [threads * per_bound] * 19 + [(threads - 1) * per_bound]
    sum_ns = threads * per_bound * sum(BOUNDS_NS) + per_bound * 20 * sum(range(threads))
    assert snapshot["duration"]["sum"] == sum_ns / 1e9


def test_the_core_module_exports_the_metrics() -> None:
    for name in ("MetricsRegistry", "TypeMetrics", "DURATION_BUCKETS", "OUTCOME_SUCCESS", "COUNTER_DEAD_LETTERS"):
        assert name in _core.__all__
        assert getattr(_core, name) is getattr(pure if _core.PURE_PYTHON else pytest.importorskip("catga._catga"), name)


def test_both_cores_bucket_and_sum_the_same_seconds() -> None:
    native = pytest.importorskip("catga._catga")
    rng = random.Random(20240101)
    samples = [0.0, 5e-10, 4.999999e-10, 1e300, 2.0**64 / 1e9, 1.8446744073709552e10]
    for bound in BOUNDS_NS:
        samples += [(bound + delta) / 1e9 for delta in (-1, -0.5, -0.4999, 0, 0.4999, 0.5, 1)]
    samples += [10 ** rng.uniform(-10, 2) for _ in range(2_000)]
    native_metrics, pure_metrics = native.TypeMetrics("command", "t"), pure.TypeMetrics("command", "t")
    for seconds in samples:
        one_native, one_pure = native.TypeMetrics("command", "t"), pure.TypeMetrics("command", "t")
        for metrics in (native_metrics, pure_metrics, one_native, one_pure):
            metrics.leave(OUTCOME_SUCCESS, seconds)
        assert one_native.snapshot() == one_pure.snapshot(), seconds
    assert native_metrics.snapshot() == pure_metrics.snapshot()
