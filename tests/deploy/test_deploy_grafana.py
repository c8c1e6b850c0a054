"""The Grafana dashboard: structure, PromQL syntax (through promtool) and the metric contract."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_support import GRAFANA, METRICS, dashboard_exprs, metric_names, promtool, run

INFINITY = "yesoreyeram-infinity-datasource"

# Grafana's built-in and dashboard variables, replaced by representative values for offline parsing.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${job}": ".*",
    "$job": ".*",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GRAFANA / "mesh-analyzer-dashboard.json").read_text(encoding="utf-8"))
    return loaded


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _infinity_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _panels(dashboard) if p.get("datasource", {}).get("type") == INFINITY]


def _offline(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
    return expr


def _check_as_recording_rules(exprs: list[str], tmp_path: Path) -> Any:
    rules = [{"record": f"dashboard:expr_{i}:check", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    return run([promtool(), "check", "rules", str(path)])


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["infinity"]["type"] == "datasource"
    assert variables["infinity"]["query"] == INFINITY
    assert variables["analyzer_url"]["type"] == "textbox" and variables["analyzer_url"]["query"].startswith("http")
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        uid = "${infinity}" if panel in _infinity_panels(dashboard) else "${datasource}"
        assert panel["datasource"]["uid"] == uid, panel["title"]
        if uid == "${datasource}":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_fit_the_grid_without_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in _panels(dashboard):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_promql_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    exprs = [_offline(e) for e in dashboard_exprs(dashboard)]
    assert len(exprs) >= 12
    result = _check_as_recording_rules(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promql_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    # Control for the check above: promtool must refuse a syntax error in a recording rule.
    result = _check_as_recording_rules(["sum(rate(analyzer_ready[5m])"], tmp_path)
    assert result.returncode != 0


def test_dashboard_uses_exactly_the_exported_metrics(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for expr in dashboard_exprs(dashboard):
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= METRICS.keys(), f"unknown metrics {names - METRICS.keys()} in {expr!r}"
        used |= names
    assert METRICS.keys() - used == set(), "metrics with no panel"


def test_counters_are_rated_and_histograms_use_buckets(dashboard: dict[str, Any]) -> None:
    for expr in dashboard_exprs(dashboard):
        for name in metric_names(expr):
            if METRICS[name] == "counter":
                assert re.search(rf"(?:rate|increase)\({name}\b", expr), f"raw counter {name} in {expr!r}"
            if METRICS[name] == "histogram":
                assert f"{name}_bucket" in expr and "histogram_quantile(" in expr, expr


def test_required_views(dashboard: dict[str, Any]) -> None:
    exprs = dashboard_exprs(dashboard)
    joined = "\n".join(exprs)
    quantiles = set(re.findall(r"histogram_quantile\((0\.\d+),[^\n]*analyzer_batch_duration_seconds_bucket", joined))
    assert {"0.5", "0.99"} <= quantiles
    assert all("stage" in e for e in exprs if "analyzer_batch_duration_seconds" in e)
    assert re.search(r"topk\(\d+, .*rate\(analyzer_rule_matches_total", joined)
    for grouping in ("by (status)", "by (category)", "by (severity)", "by (reason)", "by (topic)"):
        assert any(grouping in e for e in exprs if "analyzer_" in e), grouping
    stats = [p for p in _panels(dashboard) if p["type"] == "stat"]
    assert any('status="open"' in t["expr"] and "by (severity)" in t["expr"] for p in stats for t in p["targets"])


def test_variable_queries_use_exported_metrics(dashboard: dict[str, Any]) -> None:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"])
        assert match, variable["query"]
        assert match.group(1) in METRICS
        assert variable["datasource"]["uid"] == "${datasource}"


# -- the incidents table (Infinity data source over the analyzer's API) ---------------------------------------

# What a person needs of each open problem, by the API field the column reads.
TABLE_FIELDS = {
    "rule": "rule",
    "title": "title",
    "severity": "severity",
    "where": ("key.cluster", "key.namespace", "key.workload"),
    "since": "first_seen",
    "affected workloads": "affected.workloads",
    "link": "id",
}
# gjson (Infinity's backend parser), JSONata and lodash (its frontend parser) read a plain dotted path alike.
PLAIN_PATH = re.compile(r"[a-z_]+(?:\.[a-z_]+)*")


def _incidents_target(dashboard: dict[str, Any]) -> dict[str, Any]:
    (panel,) = _infinity_panels(dashboard)
    (target,) = panel["targets"]
    return dict(target)


def test_incidents_table_reads_open_roots_from_the_api(dashboard: dict[str, Any]) -> None:
    (panel,) = _infinity_panels(dashboard)
    assert panel["type"] == "table"
    target = _incidents_target(dashboard)
    # The backend parser: also what alerting, shared dashboards and query caching need.
    assert (target["type"], target["source"], target["parser"], target["format"]) == ("json", "url", "backend", "table")
    assert target["url"] == "${analyzer_url}/v1/incidents"
    params = {p["key"]: p["value"] for p in target["url_options"]["params"]}
    assert target["url_options"]["method"] == "GET"
    assert params == {"status": "open", "view": "roots", "limit": "500"}
    selectors = {c["selector"] for c in target["columns"]}
    for need, fields in TABLE_FIELDS.items():
        wanted = {fields} if isinstance(fields, str) else set(fields)
        assert wanted <= selectors, f"no column for {need}"
    for column in target["columns"]:
        assert PLAIN_PATH.fullmatch(column["selector"]), column
        assert column["type"] in ("string", "number", "timestamp"), column
        assert column["text"], column
    assert PLAIN_PATH.fullmatch(target["root_selector"])
    links = [
        link["url"]
        for override in panel["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    assert links and all(link.startswith("${analyzer_url}/v1/incidents/") for link in links)


def test_the_infinity_provisioning_allows_the_dashboards_api_url(dashboard: dict[str, Any]) -> None:
    doc = yaml.safe_load((GRAFANA / "infinity-datasource.yaml").read_text(encoding="utf-8"))
    (source,) = doc["datasources"]
    assert source["type"] == INFINITY
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["analyzer_url"]["query"] in source["jsonData"]["allowedHosts"]
