"""/v1/rules and the hot reload: a broken catalogue is refused with its errors and the running one stays."""

from __future__ import annotations

import gc
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from analyzer.catalogue import load_catalogue
from tests.api.support import PATTERNS, STREAM_TIME, Harness, auth, interval, make_settings, running

CATALOGUE = load_catalogue(PATTERNS)

NEW_RULE = """
rules:
  - id: added-rule
    title: A rule added while running
    category: xds-config
    component: istiod
    severity: low
    match:
      - '{pattern}'
    remediation:
      en: Look at the istiod configuration.
      pt-BR: Verifique a configuração do istiod.
    references:
      - https://istio.io/latest/docs/ops/diagnostic-tools/
    examples:
      match:
        - 'foofoobar'
"""


@pytest.fixture
async def copied(tmp_path: Path) -> AsyncIterator[tuple[Harness, Path]]:
    patterns = tmp_path / "patterns"
    shutil.copytree(PATTERNS, patterns)
    async with running(make_settings(tmp_path, patterns_dir=patterns)) as harness:
        yield harness, patterns


async def test_list_rules_shows_the_running_catalogue(api: Harness) -> None:
    body = (await api.client.get("/v1/rules")).json()
    assert body["digest"] == CATALOGUE.digest
    assert [r["id"] for r in body["items"]] == [r.id for r in CATALOGUE.rules]
    first = body["items"][0]
    rule = CATALOGUE.rules[0]
    assert (first["title"], first["category"], first["component"], first["severity"]) == (
        rule.title,
        rule.category.value,
        rule.component.value,
        rule.severity.value,
    )
    assert first["source"] == Path(rule.source).name


async def test_list_rules_filters(api: Harness) -> None:
    body = (await api.client.get("/v1/rules", params={"category": "sidecar-init", "component": "istio-init"})).json()
    expected = [r.id for r in CATALOGUE.rules if r.category == "sidecar-init" and r.component == "istio-init"]
    assert expected and [r["id"] for r in body["items"]] == expected
    assert (await api.client.get("/v1/rules", params={"severity": "fatal"})).status_code == 422


async def test_rule_detail_has_everything(api: Harness) -> None:
    rule = CATALOGUE.by_id()["istiod-apiserver-unreachable"]
    body = (await api.client.get(f"/v1/rules/{rule.id}")).json()
    assert body["expressions"] == [{"pattern": e.pattern, "caseless": e.caseless} for e in rule.expressions]
    assert body["transient_seconds"] == rule.transient and body["resolve_after_seconds"] == rule.resolve_after
    assert body["remediation"] == dict(rule.remediation) and set(body["remediation"]) == {"en", "pt-BR"}
    assert body["references"] == list(rule.references)
    assert body["examples"] == {"match": list(rule.examples_match), "no_match": list(rule.examples_no_match)}
    assert body["scope"] == {"containers": list(rule.scope.containers), "namespaces": list(rule.scope.namespaces)}


async def test_unknown_rule_is_404(api: Harness) -> None:
    response = await api.client.get("/v1/rules/no-such-rule")
    assert response.status_code == 404 and "no-such-rule" in response.json()["detail"]


async def test_reload_refuses_a_broken_catalogue_and_keeps_the_running_one(copied: tuple[Harness, Path]) -> None:
    api, patterns = copied
    before = (await api.client.get("/v1/rules")).json()
    broken = patterns / "zz-added.yaml"
    broken.write_text(NEW_RULE.format(pattern=r"(foo)\1bar"))  # back-references: Hyperscan refuses

    response = await api.client.post("/v1/rules/reload", headers=auth())
    assert response.status_code == 422, response.text
    body = response.json()
    assert "running catalogue stays" in body["detail"]
    assert body["running_digest"] == before["digest"]
    (error,) = body["errors"]
    assert error["file"] == str(broken) and error["rule"] == "added-rule"
    assert "Back-references" in error["reason"]

    after = (await api.client.get("/v1/rules")).json()
    assert after["digest"] == before["digest"] and after["items"] == before["items"]
    assert (await api.client.get("/v1/rules/added-rule")).status_code == 404
    metrics = (await api.client.get("/metrics")).text
    assert 'analyzer_catalogue_reloads_total{result="failure"} 1.0' in metrics

    broken.write_text(NEW_RULE.format(pattern=r"foofoobar"))
    response = await api.client.post("/v1/rules/reload", headers=auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed"] is True and body["rules"] == len(CATALOGUE.rules) + 1
    assert (await api.client.get("/v1/rules")).json()["digest"] == body["digest"] != before["digest"]
    added = (await api.client.get("/v1/rules/added-rule")).json()
    assert added["title"] == "A rule added while running" and added["source"] == "zz-added.yaml"


async def test_reload_lists_every_schema_problem(copied: tuple[Harness, Path]) -> None:
    api, patterns = copied
    (patterns / "zz-bad.yaml").write_text("rules:\n  - id: Bad_Id\n    title: x\n    colour: red\n")
    body = (await api.client.post("/v1/rules/reload", headers=auth())).json()
    assert {e["rule"] for e in body["errors"]} == {"Bad_Id"}
    reasons = " | ".join(e["reason"] for e in body["errors"])
    assert "kebab-case" in reasons and "colour" in reasons and "missing required field 'match'" in reasons
    assert all(e["file"].endswith("zz-bad.yaml") for e in body["errors"])


async def test_reload_without_changes_reports_unchanged(copied: tuple[Harness, Path]) -> None:
    api, _ = copied
    body = (await api.client.post("/v1/rules/reload", headers=auth())).json()
    assert body == {"status": "reloaded", "rules": len(CATALOGUE.rules), "digest": CATALOGUE.digest, "changed": False}


async def test_a_reload_leaves_no_cyclic_garbage(copied: tuple[Harness, Path]) -> None:
    """`serve` freezes what start-up built out of the collector's sight (gc.freeze): a catalogue replaced by a
    reload must then be freed by reference counting alone, or every reload would keep the old one for good."""
    api, _ = copied
    gc.collect()
    gc.disable()  # nothing collected behind the test's back between the reload and the count
    try:
        assert (await api.client.post("/v1/rules/reload", headers=auth())).status_code == 200
        assert (await api.client.post("/v1/rules/reload", headers=auth())).status_code == 200
        found = gc.collect()
    finally:
        gc.enable()
    # Two requests leave ~50 (the HTTP stack's); one catalogue alone is ~1,350 tracked objects.
    assert found < 500, f"{found} objects of cyclic garbage after two reloads"


async def test_incidents_of_a_removed_rule_fall_back_to_the_rule_id(copied: tuple[Harness, Path]) -> None:
    api, patterns = copied
    added = patterns / "zz-added.yaml"
    added.write_text(NEW_RULE.format(pattern="foofoobar"))
    assert (await api.client.post("/v1/rules/reload", headers=auth())).status_code == 200
    incident = interval("added-rule", namespace="istio-system", workload="istiod", first_seen=STREAM_TIME - 5)
    await api.commit(incident)
    item = (await api.client.get(f"/v1/incidents/{incident.id}")).json()
    assert item["title"] == "A rule added while running" and item["remediation"] == "Look at the istiod configuration."

    added.unlink()
    assert (await api.client.post("/v1/rules/reload", headers=auth())).status_code == 200
    item = (await api.client.get(f"/v1/incidents/{incident.id}")).json()
    assert item["title"] == "added-rule" and item["remediation"] is None and item["references"] == []
    assert item["category"] == "xds-config"  # stored with the incident
