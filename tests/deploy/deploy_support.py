"""Shared paths, the metric contract and small helpers for the deployment-artefact tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
KUBERNETES = DEPLOY / "kubernetes"
FLUENT_BIT = DEPLOY / "fluent-bit"
GRAFANA = DEPLOY / "grafana"
PATTERNS = ROOT / "patterns"

# The service's metric contract (name -> type). Dashboards and alerts may use nothing else.
METRICS: dict[str, str] = {
    "analyzer_records_consumed_total": "counter",
    "analyzer_bytes_consumed_total": "counter",
    "analyzer_records_rejected_total": "counter",
    "analyzer_rule_matches_total": "counter",
    "analyzer_incidents": "gauge",
    "analyzer_open_roots": "gauge",
    "analyzer_transients_suppressed_total": "counter",
    "analyzer_batch_duration_seconds": "histogram",
    "analyzer_consumer_lag_records": "gauge",
    "analyzer_watermark_age_seconds": "gauge",
    "analyzer_catalogue_reloads_total": "counter",
    "analyzer_catalogue_rules": "gauge",
    "analyzer_live_intervals": "gauge",
    "analyzer_incident_keys_overflow_total": "counter",
    "analyzer_ready": "gauge",
    "analyzer_unclassified_lines_total": "counter",
    "analyzer_unclassified_overflow_lines_total": "counter",
    "analyzer_unclassified_templates": "gauge",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN", "group_left"})


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (histogram series suffixes folded into the family name)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS:
            continue
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if base != name and METRICS.get(base) == "histogram":
                name = base
        names.add(name)
    return names


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in load_yaml(PROMETHEUS / "alerts.yaml")["groups"]:
        yield from group["rules"]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs: list[str] = []

    def walk(panels: Iterable[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return exprs


def find_tool(name: str) -> str | None:
    """A tool on PATH, else in the running interpreter's bin directory (the venv, even when not activated)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else None


def require_tool(name: str, hint: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found on PATH ({hint})")
    return path


def promtool() -> str:
    return require_tool("promtool", "Debian: apt-get install prometheus")


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
