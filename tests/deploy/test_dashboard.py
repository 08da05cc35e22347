"""The Grafana dashboard: valid JSON, sane layout, and PromQL that reads only metrics that exist."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.promql import metric_names, variable_metric_names
from tests.deploy.schemas import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sparsegate.json"

COUNTERS = {
    "sparsegate_requests_total",
    "gen_ai_client_token_usage_total",
    "sparsegate_limiter_decisions_total",
    "sparsegate_upstream_errors_total",
    "sparsegate_upstream_retries_total",
}
HISTOGRAMS = {
    "gen_ai_server_time_to_first_token_seconds",
    "gen_ai_server_time_per_output_token_seconds",
    "gen_ai_server_request_duration_seconds",
    "sparsegate_gateway_overhead_seconds",
}
GAUGES = {"sparsegate_worker_breaker_state", "sparsegate_requests_in_flight"}
SGLANG = {"sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "sglang:gen_throughput"}
# The metrics the gateway and its workers export (issue 5), and nothing else.
KNOWN = COUNTERS | GAUGES | SGLANG | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}


def family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, pool) (rate(a_seconds_bucket{pool=~"$pool",x!="y"}[$__rate_interval])))'
    ) == {"a_seconds_bucket"}
    assert metric_names('sum(rate(b_total{tenant="t"}[5m])) by (tenant) / on(tenant) group_left c') == {"b_total", "c"}
    assert metric_names('max by (pool, instance) (sglang:token_usage{pool=~"$pool"})') == {"sglang:token_usage"}
    assert metric_names('{__name__="sglang:num_queue_reqs"} offset 5m') == {"sglang:num_queue_reqs"}
    assert variable_metric_names("label_values(sparsegate_requests_total, tenant)") == {"sparsegate_requests_total"}
    assert variable_metric_names("label_values(tenant)") == set()


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "sparsegate"
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["templating"]["list"][0]["type"] == "datasource"


def test_panel_layout(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_every_query_reads_known_metrics(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} reads no metric"
            assert names <= KNOWN, f"{panel['title']}: unknown metric(s) {sorted(names - KNOWN)}"
            used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            names = variable_metric_names(query)
            assert names <= KNOWN, f"variable {variable['name']}: unknown metric(s) {sorted(names - KNOWN)}"
    # Every exported family has a panel (issue 5: the dashboard covers the metrics).
    assert {family(n) for n in used} == COUNTERS | HISTOGRAMS | GAUGES | SGLANG


def test_histograms_are_read_as_quantiles_of_rates(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if any(n.endswith("_bucket") for n in metric_names(target["expr"])):
                expr = target["expr"]
                assert expr.startswith("histogram_quantile(") and "rate(" in expr and "le" in expr, expr
