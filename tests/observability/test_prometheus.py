"""The metrics registry and its Prometheus text, parsed back with `prometheus_client`'s parser."""

import doctest
import gc
import importlib
import math
import threading
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

import catga
from catga import _core
from catga.observability import PROMETHEUS_CONTENT_TYPE, MetricsRegistry, default_registry
from catga.observability._prometheus import DURATION_BUCKETS, format_float, render

FAMILIES = {
    # name as parsed (counters lose `_total`): type
    "catga_messages": "counter",
    "catga_message_duration_seconds": "histogram",
    "catga_messages_active": "gauge",
    "catga_publish_handlers": "counter",
    "catga_retry_attempts": "counter",
    "catga_idempotency_hits": "counter",
    "catga_idempotency_misses": "counter",
    "catga_rate_limit_rejected": "counter",
    "catga_concurrency_rejected": "counter",
    "catga_dead_letters": "counter",
    "catga_circuit_breaker_state": "gauge",
}


def entry(kind: str = "command", type_: str = "orders.create", **changes: Any) -> dict[str, Any]:
    """A snapshot entry as the core makes it (plus the registry's `circuit_breaker_state`)."""
    value: dict[str, Any] = {
        "kind": kind,
        "type": type_,
        "messages": {"success": 3, "failure": 1, "cancelled": 0},
        "duration": {"buckets": [0] * 7 + [2, 1] + [0] * 11 + [1], "sum": 12.0034, "count": 4},
        "active": 2,
        "publish_handlers": {"success": 0, "failure": 0, "cancelled": 0},
        "retry_attempts": 5,
        "idempotency_hits": 6,
        "idempotency_misses": 7,
        "rate_limit_rejected": 8,
        "concurrency_rejected": 9,
        "dead_letters": 10,
        "circuit_breaker_state": None,
    }
    value.update(changes)
    return value


def parse(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """`{sorted labels: value}` of the samples called `name`."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert isinstance(sample, Sample)
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


# ------------------------------------------------------------------------------------------ render


def test_every_family_has_help_and_type_even_without_samples() -> None:
    text = render([])
    families = parse(text)
    assert {name: family.type for name, family in families.items()} == FAMILIES
    assert all(family.documentation for family in families.values())
    assert all(not family.samples for family in families.values())
    assert text.endswith("\n")
    assert "# TYPE catga_messages_total counter\n" in text  # the 0.0.4 spelling of a counter
    assert "0, 1 or 2" not in text
    assert "0 closed, 1 half-open, 2 open" in text


def test_messages_and_counters() -> None:
    text = render([entry()])
    labels = (("kind", "command"), ("type", "orders.create"))
    assert samples(text, "catga_messages_total") == {
        (*labels[:1], ("outcome", "success"), labels[1]): 3,
        (*labels[:1], ("outcome", "failure"), labels[1]): 1,
        (*labels[:1], ("outcome", "cancelled"), labels[1]): 0,
    }
    assert samples(text, "catga_messages_active") == {labels: 2}
    for name, value in [
        ("catga_retry_attempts_total", 5),
        ("catga_idempotency_hits_total", 6),
        ("catga_idempotency_misses_total", 7),
        ("catga_rate_limit_rejected_total", 8),
        ("catga_concurrency_rejected_total", 9),
        ("catga_dead_letters_total", 10),
    ]:
        assert samples(text, name) == {labels: value}, name
    # Requests have no handlers to count, and no breaker: no series.
    assert samples(text, "catga_publish_handlers_total") == {}
    assert samples(text, "catga_circuit_breaker_state") == {}


def test_duration_histogram_is_cumulative_with_prometheus_le() -> None:
    text = render([entry()])
    buckets = samples(text, "catga_message_duration_seconds_bucket")
    by_le = {dict(labels)["le"]: value for labels, value in buckets.items()}
    assert list(by_le) == [floatToGoString(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
    assert by_le["5e-06"] == 0
    assert by_le["0.0005"] == 0
    assert by_le["0.001"] == 2
    assert by_le["0.0025"] == 3
    assert by_le["10.0"] == 3
    assert by_le["+Inf"] == 4
    labels = (("kind", "command"), ("type", "orders.create"))
    assert samples(text, "catga_message_duration_seconds_sum") == {labels: 12.0034}
    assert samples(text, "catga_message_duration_seconds_count") == {labels: 4}
    assert 'le="5e-06"' in text
    assert 'le="1.0"' in text


def test_count_and_inf_bucket_agree_even_on_a_torn_snapshot() -> None:
    torn = entry(duration={"buckets": [1] + [0] * 20, "sum": 0.000001, "count": 2})
    text = render([torn])
    [count] = samples(text, "catga_message_duration_seconds_count").values()
    inf = [
        v for labels, v in samples(text, "catga_message_duration_seconds_bucket").items() if ("le", "+Inf") in labels
    ]
    assert count == inf[0] == 1


def test_publish_handlers_of_events_and_breaker_state() -> None:
    event = entry(
        "event", "orders.placed", publish_handlers={"success": 4, "failure": 1, "cancelled": 2}, circuit_breaker_state=2
    )
    text = render([event, entry(circuit_breaker_state=0)])
    assert samples(text, "catga_publish_handlers_total") == {
        (("outcome", "success"), ("type", "orders.placed")): 4,
        (("outcome", "failure"), ("type", "orders.placed")): 1,
        (("outcome", "cancelled"), ("type", "orders.placed")): 2,
    }
    assert samples(text, "catga_circuit_breaker_state") == {
        (("type", "orders.placed"),): 2,
        (("type", "orders.create"),): 0,
    }


def test_label_values_are_escaped() -> None:
    nasty = 'say "hi"\nback\\slash'
    text = render([entry(type_=nasty, circuit_breaker_state=1)])
    assert 'type="say \\"hi\\"\\nback\\\\slash"' in text
    assert samples(text, "catga_messages_active") == {(("kind", "command"), ("type", nasty)): 2}
    assert samples(text, "catga_circuit_breaker_state") == {(("type", nasty),): 1}


def test_missing_keys_count_as_zero() -> None:
    text = render([{"kind": "query", "type": "orders.get"}])
    labels = (("kind", "query"), ("type", "orders.get"))
    assert samples(text, "catga_messages_active") == {labels: 0}
    assert samples(text, "catga_message_duration_seconds_count") == {labels: 0}
    assert samples(text, "catga_dead_letters_total") == {labels: 0}


def test_a_wrong_bucket_count_names_the_type() -> None:
    with pytest.raises(ValueError, match=r"`orders\.create` have `3` counts, expected `21`"):
        render([entry(duration={"buckets": [1, 2, 3], "sum": 0.0, "count": 6})])


@pytest.mark.parametrize(
    "value", [*DURATION_BUCKETS, 0.0, 1e-7, 0.0012, 123456.0, 1234567.0, 1e20, math.inf, -math.inf, math.nan, 3]
)
def test_format_float_matches_prometheus_client(value: float) -> None:
    assert format_float(value) == floatToGoString(value)


def test_content_type() -> None:
    assert PROMETHEUS_CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


# ---------------------------------------------------------------------------------------- registry


class Breaker:
    """A stand-in with a settable `state` (a core breaker changes state only by its clock)."""

    def __init__(self, state: str = "closed") -> None:
        self.state = state


def test_registry_snapshot_goes_through_the_core() -> None:
    registry = MetricsRegistry()
    command = registry.for_type("command", "orders.create")
    assert command is registry.for_type("command", "orders.create")
    command.enter()
    command.leave(_core.OUTCOME_SUCCESS, 0.0007)
    command.enter()
    command.leave(_core.OUTCOME_FAILURE, 20.0)
    command.enter()  # still running
    command.count(_core.COUNTER_RETRY_ATTEMPTS, 2)
    command.count(_core.COUNTER_DEAD_LETTERS)
    event = registry.for_type("event", "orders.placed")
    event.handler_done(_core.OUTCOME_SUCCESS)
    event.handler_done(_core.OUTCOME_CANCELLED)

    [created, placed] = registry.snapshot()
    assert created["type"] == "orders.create"
    assert created["messages"] == {"success": 1, "failure": 1, "cancelled": 0}
    assert created["active"] == 1
    assert created["circuit_breaker_state"] is None
    assert placed["publish_handlers"] == {"success": 1, "failure": 0, "cancelled": 1}

    text = registry.prometheus_text()
    labels = (("kind", "command"), ("type", "orders.create"))
    assert samples(text, "catga_messages_active")[labels] == 1
    assert samples(text, "catga_retry_attempts_total")[labels] == 2
    assert samples(text, "catga_dead_letters_total")[labels] == 1
    buckets = samples(text, "catga_message_duration_seconds_bucket")
    by_le = {dict(k)["le"]: v for k, v in buckets.items() if dict(k)["type"] == "orders.create"}
    assert (by_le["0.0005"], by_le["0.001"], by_le["10.0"], by_le["+Inf"]) == (0, 1, 1, 2)
    assert samples(text, "catga_message_duration_seconds_sum")[labels] == pytest.approx(20.0007)
    assert samples(text, "catga_publish_handlers_total")[(("outcome", "cancelled"), ("type", "orders.placed"))] == 1


def test_breaker_state_is_the_worst_of_the_type() -> None:
    registry = MetricsRegistry()
    registry.for_type("event", "orders.placed")
    first, second = Breaker(), Breaker()
    registry.track_breaker("orders.placed", first)
    registry.track_breaker("orders.placed", second)
    assert registry.snapshot()[0]["circuit_breaker_state"] == 0
    second.state = "half_open"
    assert registry.snapshot()[0]["circuit_breaker_state"] == 1
    first.state = "open"
    assert registry.snapshot()[0]["circuit_breaker_state"] == 2
    assert samples(registry.prometheus_text(), "catga_circuit_breaker_state") == {(("type", "orders.placed"),): 2}


def test_a_type_known_only_from_its_breaker_appears_with_zero_counts() -> None:
    registry = MetricsRegistry()
    breaker = _core.CircuitBreaker(failure_threshold=1, reset_timeout=30.0)
    registry.track_breaker("orders.ship", breaker)
    breaker.record_failure()
    [only] = registry.snapshot()
    assert only["type"] == "orders.ship"
    assert only["circuit_breaker_state"] == 2
    assert only["messages"] == {"success": 0, "failure": 0, "cancelled": 0}
    assert only["duration"]["buckets"] == [0] * 21
    text = registry.prometheus_text()
    assert samples(text, "catga_circuit_breaker_state") == {(("type", "orders.ship"),): 2}
    # Once the core counts the type, its real entry carries the state (no second entry).
    registry.for_type("command", "orders.ship")
    [real] = registry.snapshot()
    assert (real["kind"], real["circuit_breaker_state"]) == ("command", 2)


def test_breakers_that_take_weak_references_are_held_weakly() -> None:
    registry = MetricsRegistry()
    registry.track_breaker("orders.ship", Breaker("open"))
    gc.collect()
    assert registry.snapshot() == []
    core_breaker = _core.CircuitBreaker()
    registry.track_breaker("orders.ship", core_breaker)  # the cores' breakers take none: held strongly
    del core_breaker
    gc.collect()
    assert registry.snapshot()[0]["circuit_breaker_state"] == 0


def test_track_breaker_refuses_what_has_no_state() -> None:
    with pytest.raises(TypeError, match="breaker `42` has no `state`"):
        MetricsRegistry().track_breaker("orders.ship", 42)


def test_repr() -> None:
    registry = MetricsRegistry()
    registry.for_type("command", "orders.create")
    registry.track_breaker("orders.create", _core.CircuitBreaker())
    assert repr(registry) == "<MetricsRegistry types=1 breakers=1>"


def test_default_registry_is_one_per_process_even_across_threads() -> None:
    found: list[MetricsRegistry] = []
    threads = [threading.Thread(target=lambda: found.append(default_registry())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(registry is default_registry() for registry in found)
    assert isinstance(default_registry(), MetricsRegistry)


def test_public_names() -> None:
    import catga.observability as observability

    assert catga.observability is observability
    for name in observability.__all__:
        assert getattr(observability, name) is not None
    assert MetricsRegistry.__module__ == "catga.observability"


# ------------------------------------------------------------------------------ docstring examples


@pytest.mark.parametrize(
    "module_name", ["catga.observability", "catga.observability._registry", "catga.observability._prometheus"]
)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(module, module_name)
    for name in getattr(module, "__all__", ()):
        value = getattr(module, name)
        if callable(value):
            tests += finder.find(value, name, module=False, globs=vars(module))
    assert any(test.examples for test in tests)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
