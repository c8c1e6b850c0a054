"""The Grafana dashboard: structure, PromQL syntax (through promtool) and the metric contract."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_support import GRAFANA, METRICS, dashboard_exprs, metric_names, promtool, run

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
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
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
