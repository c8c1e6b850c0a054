"""Prometheus rules, their promtool unit tests, the scrape config and the Operator's PrometheusRule copy."""

from __future__ import annotations

import re
from pathlib import Path

from tests.deploy.deploy_support import (
    DEPLOY,
    KUBERNETES,
    METRICS,
    PROMETHEUS,
    alert_rules,
    assert_ok,
    load_yaml,
    load_yaml_all,
    metric_names,
    promtool,
    run,
)


def test_promtool_check_rules() -> None:
    assert_ok(run([promtool(), "check", "rules", "alerts.yaml"], cwd=PROMETHEUS))


def test_promtool_unit_tests_pass() -> None:
    assert_ok(run([promtool(), "test", "rules", "alerts_test.yaml"], cwd=PROMETHEUS))


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    # Control: the same unit tests against a rule file whose incident alert lost its `for:` must fail, so the
    # suite above is sensitive to the rules it loads.
    alerts = (PROMETHEUS / "alerts.yaml").read_text(encoding="utf-8")
    mutated = alerts.replace("        for: 1m\n", "", 1)
    assert mutated != alerts
    (tmp_path / "alerts.yaml").write_text(mutated, encoding="utf-8")
    (tmp_path / "alerts_test.yaml").write_text((PROMETHEUS / "alerts_test.yaml").read_text(), encoding="utf-8")
    result = run([promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path)
    assert result.returncode != 0
    assert "MeshIncidentOpen" in result.stdout + result.stderr


def test_promtool_check_config() -> None:
    assert_ok(run([promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS))


def test_scrape_config_targets_the_analyzer() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mesh-analyzer"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert "localhost:8080" in targets
    assert "alerts.yaml" in config["rule_files"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(PROMETHEUS / "alerts_test.yaml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a not-firing test"
    assert (firing | quiet) - alerts == set(), "tests for alerts that do not exist"


def test_required_alerts_exist() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    # Incidents alert by root cause: symptoms grouped under a root stay silent (analyzer_open_roots).
    assert not [e for e in exprs.values() if "analyzer_incidents" in e]
    incident = [e for e in exprs.values() if "analyzer_open_roots" in e]
    assert len(incident) == 1
    assert 'severity=~"critical|high"' in incident[0]
    used = set().union(*(metric_names(e) for e in exprs.values()))
    for metric in (
        "analyzer_ready",
        "analyzer_consumer_lag_records",
        "analyzer_watermark_age_seconds",
        "analyzer_catalogue_reloads_total",
        "analyzer_records_rejected_total",
        "analyzer_incident_keys_overflow_total",
    ):
        assert metric in used, f"no alert on {metric}"


def test_alerts_use_only_exported_metrics() -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert names <= METRICS.keys(), f"{rule['alert']}: unknown metrics {names - METRICS.keys()}"


def test_alerts_have_annotations_and_runbook_sections() -> None:
    runbook = (DEPLOY / "RUNBOOK.md").read_text(encoding="utf-8")
    # GitHub heading anchors: lower-cased, spaces to dashes, punctuation dropped.
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#+\s+(.+)$", runbook, re.MULTILINE)
    }
    for rule in alert_rules():
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key), f"{rule['alert']}: missing {key}"
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "deploy/RUNBOOK.md"
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in deploy/RUNBOOK.md"
        assert rule.get("labels", {}).get("team") == "mesh"


def test_prometheus_rule_resource_matches_rule_file() -> None:
    (resource,) = load_yaml_all(KUBERNETES / "prometheusrule.yaml")
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"]
    assert resource["spec"]["groups"] == load_yaml(PROMETHEUS / "alerts.yaml")["groups"], (
        "deploy/kubernetes/prometheusrule.yaml is out of date: python deploy/prometheus/render_prometheusrule.py"
    )
