"""The dashboard's incidents table against the real API: the real app on a real SQLite store, served over a
socket; the URL the Infinity panel requests, requested; its root selector and column selectors applied to the
JSON the API returns, as Infinity's backend parser applies them (plain dotted paths, where gjson, JSONata and
the frontend's lodash agree); every column must be there, and the link must open the incident's detail."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tests.api.support import (
    OUTAGE_NOT_READY,
    OUTAGE_ROOT,
    OUTAGE_UPSTREAM,
    STREAM_TIME,
    interval,
    make_settings,
    running,
)
from tests.api.test_stream_api import serving
from tests.deploy.deploy_support import GRAFANA

INFINITY = "yesoreyeram-infinity-datasource"
T = STREAM_TIME

ROOT, NOT_READY, UPSTREAM = OUTAGE_ROOT, OUTAGE_NOT_READY, OUTAGE_UPSTREAM
# Unrelated and open on its own: a standalone incident, listed with the roots.
STANDALONE = interval(
    "istiod-rbac-forbidden", namespace="istio-system", workload="istiod", first_seen=T - 5000, last_seen=T - 60
)


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GRAFANA / "mesh-analyzer-dashboard.json").read_text(encoding="utf-8"))
    return loaded


def _panel() -> dict[str, Any]:
    (panel,) = [p for p in _dashboard()["panels"] if p.get("datasource", {}).get("type") == INFINITY]
    return panel


def select(value: Any, path: str) -> Any:
    """A plain dotted path (``key.namespace``), as gjson reads it: None where it leads nowhere."""
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def panel_url(target: dict[str, Any], base: str) -> str:
    """What Infinity requests: the query URL with ${analyzer_url} interpolated, plus the query's params."""
    params = [(p["key"], p["value"]) for p in target["url_options"]["params"]]
    return target["url"].replace("${analyzer_url}", base) + "?" + urlencode(params)


def fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return json.load(response)


async def test_the_incidents_table_query_returns_its_columns_from_the_real_api(tmp_path: Path) -> None:
    panel = _panel()
    (target,) = panel["targets"]
    async with running(make_settings(tmp_path)) as api:
        await api.commit(ROOT, NOT_READY, UPSTREAM, STANDALONE)
        async with serving(api) as base:
            body = await asyncio.to_thread(fetch, panel_url(target, base))
            rows = select(body, target["root_selector"])
            assert isinstance(rows, list)
            by_rule = {row["rule"]: row for row in rows}
            # One row per problem: the root and the standalone incident; the symptoms are under the root.
            assert set(by_rule) == {ROOT.rule_id, STANDALONE.rule_id}
            columns = {c["text"]: c for c in target["columns"]}
            root = by_rule[ROOT.rule_id]
            for text, column in columns.items():
                value = select(root, column["selector"])
                assert value is not None, f"column {text!r} ({column['selector']}) is empty on a root cause"
                if column["type"] == "number":
                    assert isinstance(value, int | float) and not isinstance(value, bool), (text, value)
                if column["type"] == "timestamp":  # RFC 3339, as Infinity parses a timestamp column
                    assert dt.datetime.fromisoformat(value).tzinfo is not None, (text, value)
            assert select(root, "affected.workloads") == 2  # shop/cart and bank/ledger
            assert select(root, "affected.pods") == 3
            assert select(root, "affected.incidents") == 2
            standalone = by_rule[STANDALONE.rule_id]
            for column in target["columns"]:  # everything but what only a root has
                if not column["selector"].startswith("affected."):
                    assert select(standalone, column["selector"]) is not None, column

            # The link of each row opens the incident's detail; the root's lists its symptoms.
            await _check_links(panel, base, root)


async def _check_links(panel: dict[str, Any], base: str, row: dict[str, Any]) -> None:
    urls = [
        link["url"]
        for override in panel["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    assert urls
    for url in urls:
        concrete = (
            url.replace("${analyzer_url}", base)
            .replace("${__value.raw}", row["id"])
            .replace("${__data.fields.ID}", row["id"])
        )
        assert "$" not in concrete, url
        detail = await asyncio.to_thread(fetch, concrete)
        assert detail["id"] == row["id"]
        assert {s["id"] for s in detail["symptoms"]} == {NOT_READY.id, UPSTREAM.id}
        assert all(s["caused_by"] == row["id"] for s in detail["symptoms"])
