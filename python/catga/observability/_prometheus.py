"""Prometheus text exposition (format 0.0.4) of a metrics snapshot.

`render` is a pure function of `MetricsRegistry.snapshot()`: one entry per message type, see
`catga.observability._registry`. Every family gets its `# HELP` and `# TYPE` lines even without
samples (as `prometheus_client` does), so dashboards and alerts see every metric from the start.
Labels are message type names and kinds only, never ids: their number is bounded by the
application's message types.

>>> entry = {"kind": "command", "type": "orders.create", "messages": {"success": 3, "failure": 1}}
>>> print(render([entry]).split("\\n# ")[1])  # doctest: +NORMALIZE_WHITESPACE
TYPE catga_messages_total counter
catga_messages_total{kind="command",type="orders.create",outcome="success"} 3
catga_messages_total{kind="command",type="orders.create",outcome="failure"} 1
catga_messages_total{kind="command",type="orders.create",outcome="cancelled"} 0
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from catga import _core

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS", "LE_LABELS", "OUTCOMES", "format_float", "render", "render_sagas"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The `Content-Type` of a metrics endpoint that serves `render`'s text."""

DURATION_BUCKETS: Final = _core.DURATION_BUCKETS
"""The upper bounds (seconds) of the core's duration histogram; the snapshot adds an overflow bucket."""

OUTCOMES: Final = ("success", "failure", "cancelled")

# (snapshot key, family name, help) of the plain per-type counters.
_COUNTERS: Final = (
    ("retry_attempts", "catga_retry_attempts_total", "Handler attempts repeated by Retry."),
    ("idempotency_hits", "catga_idempotency_hits_total", "Messages answered from the idempotency store."),
    ("idempotency_misses", "catga_idempotency_misses_total", "Messages not yet in the idempotency store (run)."),
    ("rate_limit_rejected", "catga_rate_limit_rejected_total", "Messages rejected by RateLimit."),
    ("concurrency_rejected", "catga_concurrency_rejected_total", "Messages rejected by ConcurrencyLimit."),
    ("dead_letters", "catga_dead_letters_total", "Messages recorded as dead letters."),
)


def format_float(value: float) -> str:
    """A float as Prometheus (Go) writes it, like `prometheus_client.utils.floatToGoString`.

    >>> [format_float(v) for v in (5e-06, 0.25, 1, 1234567.0, math.inf)]
    ['5e-06', '0.25', '1.0', '1.234567e+06', '+Inf']
    """
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    dot = text.find(".")
    # Go switches to an exponent from 1e+06 up (Python from 1e+16).
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _value(value: object) -> str:
    if isinstance(value, int):  # counts stay exact integers
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    raise TypeError(f"metric value `{value!r}` is not a number")


def _escape(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


class _Writer:
    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Sequence[tuple[str, str]], value: object) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_value(value)}")


LE_LABELS: Final = tuple(format_float(bound) for bound in (*DURATION_BUCKETS, math.inf))
"""The `le` label of each bucket, `+Inf` last."""


def _duration(entry: Mapping[str, Any]) -> tuple[list[int], float]:
    """`(cumulative bucket counts, sum)` of an entry, the last count being `+Inf`."""
    duration = entry.get("duration") or {}
    buckets = list(duration.get("buckets") or [0] * (len(DURATION_BUCKETS) + 1))
    if len(buckets) != len(DURATION_BUCKETS) + 1:
        raise ValueError(
            f"duration buckets of `{entry.get('type')}` have `{len(buckets)}` counts, "
            f"expected `{len(DURATION_BUCKETS) + 1}`"
        )
    cumulative, total = [], 0
    for count in buckets:
        total += count
        cumulative.append(total)
    return cumulative, duration.get("sum", 0.0)


def _messages(out: _Writer, entries: list[Mapping[str, Any]]) -> None:
    out.family("catga_messages_total", "counter", "Messages handled, by outcome.")
    for entry in entries:
        kind_type = (("kind", entry["kind"]), ("type", entry["type"]))
        messages = entry.get("messages") or {}
        for outcome in OUTCOMES:
            out.sample("catga_messages_total", (*kind_type, ("outcome", outcome)), messages.get(outcome, 0))


def _durations(out: _Writer, entries: list[Mapping[str, Any]]) -> None:
    name = "catga_message_duration_seconds"
    out.family(name, "histogram", "Time from entering the pipeline to its result, in seconds.")
    for entry in entries:
        kind_type = (("kind", entry["kind"]), ("type", entry["type"]))
        cumulative, total = _duration(entry)
        for le, count in zip(LE_LABELS, cumulative, strict=True):
            out.sample(f"{name}_bucket", (*kind_type, ("le", le)), count)
        out.sample(f"{name}_sum", kind_type, float(total))
        # `+Inf` and `_count` both from the buckets: the core counts lock-free, so a snapshot may
        # catch a message between its bucket and its count, and Prometheus expects them equal.
        out.sample(f"{name}_count", kind_type, cumulative[-1])


def _active(out: _Writer, entries: list[Mapping[str, Any]]) -> None:
    out.family("catga_messages_active", "gauge", "Messages in the pipeline now.")
    for entry in entries:
        out.sample("catga_messages_active", (("kind", entry["kind"]), ("type", entry["type"])), entry.get("active", 0))


def _publish_handlers(out: _Writer, entries: list[Mapping[str, Any]]) -> None:
    out.family("catga_publish_handlers_total", "counter", "Event handler runs, by outcome.")
    for entry in entries:
        handlers = entry.get("publish_handlers") or {}
        # Only events have handlers to count: other types would add series that are always 0.
        if entry["kind"] != "event" and not any(handlers.values()):
            continue
        for outcome in OUTCOMES:
            labels = (("type", entry["type"]), ("outcome", outcome))
            out.sample("catga_publish_handlers_total", labels, handlers.get(outcome, 0))


def _counters(out: _Writer, entries: list[Mapping[str, Any]]) -> None:
    for key, family, help_text in _COUNTERS:
        out.family(family, "counter", help_text)
        for entry in entries:
            out.sample(family, (("kind", entry["kind"]), ("type", entry["type"])), entry.get(key, 0))


def _breakers(out: _Writer, entries: list[Mapping[str, Any]]) -> None:
    name = "catga_circuit_breaker_state"
    out.family(name, "gauge", "Circuit breaker state: 0 closed, 1 half-open, 2 open (the worst of the type's).")
    for entry in entries:
        state = entry.get("circuit_breaker_state")
        if state is not None:
            out.sample(name, (("type", entry["type"]),), state)


def render(snapshot: Iterable[Mapping[str, Any]]) -> str:
    """The Prometheus text (format 0.0.4) of a `MetricsRegistry.snapshot()`.

    Families: `catga_messages_total{kind,type,outcome}`, `catga_message_duration_seconds{kind,type}`
    (histogram), `catga_messages_active{kind,type}`, `catga_publish_handlers_total{type,outcome}`
    (event types), `catga_retry_attempts_total`, `catga_idempotency_hits_total`,
    `catga_idempotency_misses_total`, `catga_rate_limit_rejected_total`,
    `catga_concurrency_rejected_total`, `catga_dead_letters_total` (all `{kind,type}`) and
    `catga_circuit_breaker_state{type}` (types with a circuit breaker). Missing keys count as 0.

    >>> render([]).splitlines()[:2]
    ['# HELP catga_messages_total Messages handled, by outcome.', '# TYPE catga_messages_total counter']
    """
    entries = list(snapshot)
    out = _Writer()
    for write in (_messages, _durations, _active, _publish_handlers, _counters, _breakers):
        write(out, entries)
    out.lines.append("")  # the format wants the last line terminated too
    return "\n".join(out.lines)


# ------------------------------------------------------------------------------------------ Sagas


def render_sagas(snapshot: Iterable[Mapping[str, Any]]) -> str:
    """The Prometheus text of a `SagaMetrics.snapshot()`, to follow `render`'s.

    Families: `catga_sagas_total{saga,status}`, `catga_saga_duration_seconds{saga}` (histogram,
    the message duration buckets), `catga_sagas_active{saga}`, `catga_saga_compensations_total{saga}`.

    >>> entry = {"saga": "place-order", "sagas": {"completed": 2}, "active": 1}
    >>> [line for line in render_sagas([entry]).splitlines() if line.startswith("catga_sagas_")]
    ['catga_sagas_total{saga="place-order",status="completed"} 2', 'catga_sagas_active{saga="place-order"} 1']
    """
    entries = list(snapshot)
    out = _Writer()
    out.family("catga_sagas_total", "counter", "Saga runs ended, by status.")
    for entry in entries:
        for status, count in (entry.get("sagas") or {}).items():
            out.sample("catga_sagas_total", (("saga", entry["saga"]), ("status", status)), count)
    name = "catga_saga_duration_seconds"
    out.family(name, "histogram", "Time a saga run took, in seconds.")
    for entry in entries:
        if not entry.get("duration"):
            continue
        saga = (("saga", entry["saga"]),)
        cumulative, total = _duration({**entry, "type": entry["saga"]})
        for le, count in zip(LE_LABELS, cumulative, strict=True):
            out.sample(f"{name}_bucket", (*saga, ("le", le)), count)
        out.sample(f"{name}_sum", saga, float(total))
        out.sample(f"{name}_count", saga, cumulative[-1])
    out.family("catga_sagas_active", "gauge", "Saga runs in progress in this process.")
    for entry in entries:
        out.sample("catga_sagas_active", (("saga", entry["saga"]),), entry.get("active", 0))
    out.family("catga_saga_compensations_total", "counter", "Saga steps compensated.")
    for entry in entries:
        if "compensations" in entry:
            out.sample("catga_saga_compensations_total", (("saga", entry["saga"]),), entry["compensations"])
    out.lines.append("")
    return "\n".join(out.lines)
