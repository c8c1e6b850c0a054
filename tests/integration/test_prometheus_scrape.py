"""A real Prometheus (Debian's package) scrapes the running service, and every PromQL expression of the
Grafana dashboard and of the alert rules is run against it and returns data."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from analyzer.broker import LocalBroker, free_port
from tests.integration.support import (
    Message,
    Services,
    StoreView,
    create_topic,
    mixed_stream,
    poll,
    produce,
    wait_consumed,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "mesh-analyzer-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
JOB = "mesh-analyzer"


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str) and node.get("datasource", {}) != {"type": "__expr__"}:
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()))
    return exprs


def alert_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [(rule["alert"], rule["expr"]) for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def grafana_to_promql(expr: str) -> str:
    """Grafana's template variables as a dashboard would send them for a short range."""
    expr = expr.replace("$__rate_interval", "30s").replace("${__rate_interval}", "30s")
    expr = expr.replace("$__interval", "15s").replace("$__range", "5m")
    return re.sub(r"\$\{?job\}?", JOB, expr)


def measured_side(expr: str) -> str:
    """What an alert measures: its expression without the threshold (``X > 0`` -> ``X``, ``absent(X)`` -> ``X``)."""
    expr = " ".join(expr.split())
    absent = re.fullmatch(r"absent\((.*)\)", expr)
    if absent:
        return absent.group(1)
    depth, cut = 0, None
    for i, ch in enumerate(expr):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and (expr[i : i + 3] in (" > ", " < ") or expr[i : i + 4] in (" >= ", " <= ", " == ")):
            cut = i
    return expr[:cut] if cut is not None else expr


def start_prometheus(tmp_path: Path, target_port: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            str(shutil.which("prometheus")),
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


def query(base: str, expr: str) -> list[Any]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus package is not installed")
def test_dashboard_and_alert_queries_return_data(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    topic = create_topic(broker.bootstrap, partitions=2, prefix="prom")
    group = f"prom-{random.randrange(1 << 30)}"
    service = services.spawn(bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=sqlite_url)
    proc, base = start_prometheus(tmp_path, int(service.env["ANALYZER_HTTP_PORT"]))
    try:
        poll(lambda: _up(base), timeout=60, what="Prometheus scraping the analyzer")
        # Two waves of traffic (matches, incidents) with a malformed record, so rates have two samples.
        for wave in range(2):
            t0 = time.time() - 60
            stream = list(mixed_stream(400, cluster="prom", rng=random.Random(wave), match_ratio=0.2, t0=t0))
            stream.append(Message(b'{"log": "truncated', b"bad"))
            produced = produce(broker.bootstrap, topic, stream)
            wait_consumed(open_view(sqlite_url), group, topic, produced.ends, [service])
            time.sleep(3)
        poll(lambda: bool(query(base, "analyzer_incidents > 0")), timeout=30, what="incident gauge scraped")
        time.sleep(3)

        empty = [e for e in dashboard_exprs() if not query(base, grafana_to_promql(e))]
        assert not empty, f"dashboard expressions without data: {empty}"
        no_data = [name for name, expr in alert_exprs() if not query(base, measured_side(expr))]
        assert not no_data, f"alert expressions measuring nothing: {no_data}"
        rules = httpx.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
        unhealthy = [r["name"] for g in rules for r in g["rules"] if r.get("health") not in ("ok", "unknown")]
        assert not unhealthy, unhealthy
    finally:
        proc.terminate()
        proc.wait(10)


def _up(base: str) -> bool:
    try:
        return any(r["value"][1] == "1" for r in query(base, f'up{{job="{JOB}"}}'))
    except (httpx.HTTPError, AssertionError, ValueError):
        return False
