"""deploy/grafana/freshrec.json is a dashboard Grafana can load, and every query in it reads a
series the worker exports or a recording rule of rules.yml (so renaming a metric fails here).
The queries run against a real Prometheus in tests/integration/test_prometheus_server.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.monitoring import (
    BUILTINS,
    DASHBOARD,
    exported_series,
    load_rules,
    metric_names,
    panels,
    query_panels,
)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_dashboard_has_identity_and_a_current_schema(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "freshrec" and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["time"]["from"].startswith("now-")


def test_panel_ids_are_unique_and_every_panel_has_a_place_on_the_grid(
    dashboard: dict[str, Any],
) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), ids
    cells: set[tuple[int, int]] = set()
    for p in panels(dashboard):
        grid = p["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), p["title"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, p["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine


def test_every_panel_queries_prometheus_through_the_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    source = variables(dashboard)["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    # deploy/compose.yaml provisions the datasource with this uid.
    assert source["current"]["value"] == "prometheus"
    for p in query_panels(dashboard):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]


def test_queries_use_only_defined_variables(dashboard: dict[str, Any]) -> None:
    defined = set(variables(dashboard)) | set(BUILTINS)
    for v in variables(dashboard).values():
        if v["type"] == "query":
            assert re.fullmatch(r"label_values\(.+, \w+\)", v["definition"]), v["name"]
    queries = [t["expr"] for p in query_panels(dashboard) for t in p["targets"]]
    queries += [v["definition"] for v in variables(dashboard).values() if v["type"] == "query"]
    for q in queries:
        used = set(re.findall(r"\$\{?(\w+)", q))
        assert used <= defined, f"{q} uses undefined {used - defined}"
    instance = variables(dashboard)["instance"]
    assert instance["multi"] and instance["includeAll"] and instance["allValue"] == ".*"


def test_every_metric_a_panel_reads_is_exported_or_recorded(dashboard: dict[str, Any]) -> None:
    known = exported_series() | {r["record"] for r in load_rules() if "record" in r}
    queries = [(p["title"], t["expr"]) for p in query_panels(dashboard) for t in p["targets"]]
    queries += [(n, v["definition"]) for n, v in variables(dashboard).items() if "definition" in v]
    unknown = {(title, name) for title, q in queries for name in metric_names(q) - known}
    assert not unknown, f"queries read series that serving/metrics.py does not export: {unknown}"


def test_the_issue_s_panels_are_there(dashboard: dict[str, Any]) -> None:
    read = set().union(
        *(metric_names(t["expr"]) for p in query_panels(dashboard) for t in p["targets"])
    )
    for name in (
        "freshrec_events_consumed_total",
        "freshrec_recommendations_published_total",
        "freshrec_consumer_lag_events",
        "freshrec_event_to_publish_seconds_bucket",
        "freshrec_stage_seconds_bucket",
        "freshrec_online_hits_total",
        "freshrec_drift_detected_total",
        "freshrec_events_rejected_total",
        "freshrec_users_in_state",
        "freshrec_catalog_items",
        "freshrec_state_restore_seconds_bucket",
        "freshrec_rebalances_total",
        "freshrec_backpressure",
        "freshrec_partition_stalled",
        "freshrec_gpu_utilization_ratio",
        "freshrec_gpu_memory_used_bytes",
    ):
        assert name in read, name
