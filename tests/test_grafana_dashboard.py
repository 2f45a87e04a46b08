"""The Grafana dashboard of examples/grafana queries only metrics that catga emits.

Every `catga_...` name in the dashboard's PromQL (panel expressions and template variable queries)
must be a family or a sample name of `MetricsRegistry.prometheus_text()` after some traffic, on
both cores: a renamed metric must fail here, not as an empty panel in production.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import catga
from catga import Config
from catga.behaviors import CircuitBreaker, DeadLetter, Metrics
from catga.observability import MetricsRegistry

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana" / "catga-dashboard.json"
NAME = re.compile(r"\bcatga_[a-z_]+")


class Ship(catga.Command[str], tag="grafana_test.ship"):
    parcel: str


class Shipped(catga.Event, tag="grafana_test.shipped"):
    parcel: str


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def queries(node: object) -> Iterator[str]:
    """Every PromQL string of the dashboard: `expr` of targets, `query`/`definition` of variables."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from queries(value)


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


async def emitted_names() -> set[str]:
    """Family and sample names of the Prometheus text after sends, a failure and a publish."""
    registry = MetricsRegistry()
    config = Config.default().with_(
        metrics=Metrics(registry=registry), circuit_breaker=CircuitBreaker(), dead_letter=DeadLetter()
    )
    mediator = catga.Mediator(config=config)

    @mediator.handler
    async def ship(command: Ship) -> str:
        if not command.parcel:
            raise ValueError("no parcel")
        await mediator.publish(Shipped(parcel=command.parcel))
        return command.parcel

    @mediator.handler
    async def notify(event: Shipped) -> None:
        pass

    assert await mediator.send(Ship(parcel="p-1")) == "p-1"
    assert not (await mediator.send_result(Ship(parcel=""))).ok  # a failure, dead-lettered

    names: set[str] = set()
    for line in registry.prometheus_text().splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_dashboard_is_grafana_json_with_a_prometheus_input_and_a_type_variable() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] >= 38
    assert [(i["name"], i["pluginId"]) for i in dashboard["__inputs"]] == [("DS_PROMETHEUS", "prometheus")]
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "type"]
    assert variable["query"]["query"] == "label_values(catga_messages_total, type)"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]


def test_the_breaker_panel_maps_states_to_names() -> None:
    [panel] = [p for p in panels(load()) if "catga_circuit_breaker_state" in p["targets"][0]["expr"]]
    assert panel["type"] == "stat"
    [mapping] = panel["fieldConfig"]["defaults"]["mappings"]
    assert {value: option["text"] for value, option in mapping["options"].items()} == {
        "0": "closed",
        "1": "half-open",
        "2": "open",
    }


@pytest.mark.asyncio
async def test_every_metric_the_dashboard_queries_is_emitted() -> None:
    used = {name for query in queries(load()) for name in NAME.findall(query)}
    assert "catga_message_duration_seconds_bucket" in used  # the extraction itself works
    emitted = await emitted_names()
    assert used - emitted == set(), f"the dashboard queries metrics catga does not emit: {used - emitted}"
