"""The Kubernetes-events Fluent Bit: one instance, events RBAC, a Kafka topic the analyzer reads, and records
the analyzer decodes as events (the Fluent Bit record shape built from the config's own settings)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
import yaml

from analyzer.decode import Decoder
from analyzer.types import LogRecord
from tests.deploy.deploy_support import FLUENT_BIT, KUBERNETES, load_yaml

EVENT: dict[str, Any] = {
    "metadata": {"name": "web-7d9f8b6c5d.180c4b7a9d3f2e1c", "namespace": "shop", "uid": "u", "resourceVersion": "9"},
    "involvedObject": {"kind": "ReplicaSet", "namespace": "shop", "name": "web-7d9f8b6c5d", "uid": "x"},
    "reason": "FailedCreate",
    "message": 'Error creating: pods "web-7d9f8b6c5d-" is forbidden: violates PodSecurity "baseline:latest"',
    "type": "Warning",
    "lastTimestamp": "2024-11-29T07:12:00Z",
}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(FLUENT_BIT / "events.yaml")
    return loaded


def test_kubernetes_events_input(config: dict[str, Any]) -> None:
    (source,) = config["pipeline"]["inputs"]
    assert source["name"] == "kubernetes_events"
    assert source["tag"] == "k8s_events"
    assert source["db"].startswith("/var/fluent-bit/events/")
    assert config["service"]["storage.path"].startswith("/var/fluent-bit/events/")


def test_only_warning_events_pass_the_grep_filter(config: dict[str, Any]) -> None:
    (grep,) = config["pipeline"]["filters"]
    assert grep["name"] == "grep" and grep["match"] == "k8s_events"
    key, pattern = grep["regex"].split(maxsplit=1)
    assert re.search(pattern, EVENT[key])
    assert not re.search(pattern, "Normal")


def test_kafka_output_feeds_a_topic_the_analyzer_reads(config: dict[str, Any]) -> None:
    (kafka,) = config["pipeline"]["outputs"]
    assert kafka["name"] == "kafka" and kafka["match"] == "k8s_events"
    assert kafka["format"] == "json"
    assert kafka["brokers"] == "${KAFKA_BROKERS}"
    analyzer_env = load_yaml(KUBERNETES / "configmap.yaml")["data"]
    consumed = {t.strip() for t in analyzer_env["ANALYZER_KAFKA_TOPICS"].split(",")}
    assert kafka["topics"] in consumed, "events would be shipped to a topic the analyzer does not consume"


def test_output_record_decodes_as_an_event(config: dict[str, Any]) -> None:
    """The kafka output prepends its timestamp key to the Event the input emitted as the record body."""
    (kafka,) = config["pipeline"]["outputs"]
    assert kafka["timestamp_format"] == "iso8601"
    raw = orjson.dumps({kafka["timestamp_key"]: "2024-11-29T07:12:01.000000Z", **EVENT})
    rec = Decoder()(raw)
    assert isinstance(rec, LogRecord)
    assert rec.line.startswith(b"Warning\tFailedCreate\tReplicaSet/web-7d9f8b6c5d\t")
    assert (rec.namespace, rec.workload) == ("shop", "web")


def test_helm_values_run_one_instance_with_events_rbac(config: dict[str, Any]) -> None:
    values = load_yaml(FLUENT_BIT / "events-values.yaml")
    assert values["kind"] == "Deployment"
    assert values["replicaCount"] == 1, "every replica would ship every event"
    assert values["rbac"] == {"create": True, "eventsAccess": True}
    embedded = values["config"]["extraFiles"]["events.yaml"]
    assert embedded == (FLUENT_BIT / "events.yaml").read_text(encoding="utf-8"), (
        "events-values.yaml config.extraFiles['events.yaml'] must be a verbatim copy of events.yaml"
    )
    assert yaml.safe_load(embedded) == config
    assert "--config=/fluent-bit/etc/conf/events.yaml" in values["args"]
    assert set(re.findall(r"\$\{(\w+)\}", embedded)) <= {e["name"] for e in values["env"]}
    mounts = {m["mountPath"] for m in values["extraVolumeMounts"]}
    assert any(config["pipeline"]["inputs"][0]["db"].startswith(path) for path in mounts)


def test_plain_rbac_grants_list_and_watch_on_events() -> None:
    role, binding = yaml.safe_load_all((FLUENT_BIT / "events-rbac.yaml").read_text(encoding="utf-8"))
    assert role["kind"] == "ClusterRole"
    (rule,) = role["rules"]
    assert rule["apiGroups"] == [""] and rule["resources"] == ["events"]
    assert {"list", "watch"} <= set(rule["verbs"])
    assert binding["kind"] == "ClusterRoleBinding" and binding["roleRef"]["name"] == role["metadata"]["name"]


def test_the_log_daemonset_does_not_collect_events() -> None:
    """In the DaemonSet each node would ship every event of the cluster once more."""
    logs = load_yaml(FLUENT_BIT / "fluent-bit.yaml")
    assert all(i["name"] != "kubernetes_events" for i in logs["pipeline"]["inputs"])
