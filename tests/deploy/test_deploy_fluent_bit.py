"""Fluent Bit pipeline: the settings the analyzer's record decoding relies on, and the Helm values copy.

There is no Fluent Bit binary offline, so the pod_key filter chain is checked by applying the documented
semantics of the nest (lift/nest) and modify (copy) filters to the record shape of the shared reference §4.2.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_support import FLUENT_BIT, load_yaml

# Record after tail (cri multiline) + kubernetes filter, from the reference (aydosman/fb-sandbox README).
SAMPLE: dict[str, Any] = {
    "time": "2025-05-20T13:28:46.566696094Z",
    "stream": "stdout",
    "_p": "F",
    "log": "2025-05-20T13:28:46.566696Z\terror\tklog\tFailed to watch *v1.Pod",
    "kubernetes": {
        "pod_name": "demo-68676bfc4-zz99m",
        "namespace_name": "default",
        "pod_id": "a274",
        "labels": {"app": "demo", "pod-template-hash": "68676bfc4"},
        "host": "fb-test-worker2",
        "pod_ip": "10.244.1.4",
        "container_name": "demo",
        "docker_id": "73a5",
        "container_hash": "docker.io/hashicorp/http-echo@sha256:0",
        "container_image": "docker.io/hashicorp/http-echo:1.0",
    },
}


def _flag(value: object) -> bool:
    """Fluent Bit booleans as PyYAML reads them (on/off become bool, quoted ones stay strings)."""
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("on", "true", "yes", "1")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(FLUENT_BIT / "fluent-bit.yaml")
    return loaded


def _named(section: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [p for p in section if p["name"] == name]


def _apply(plugin: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The nest and modify semantics used by the config (fluent-bit-docs pipeline/filters/{nest,modify}.md)."""
    out = dict(record)
    if plugin["name"] == "nest" and plugin["operation"] == "lift":
        inner = out.get(plugin["nested_under"])
        if isinstance(inner, dict):
            del out[plugin["nested_under"]]
            out.update({plugin.get("add_prefix", "") + k: v for k, v in inner.items()})
    elif plugin["name"] == "nest" and plugin["operation"] == "nest":
        prefix = plugin.get("remove_prefix", "")
        moved = [k for k in out if fnmatch.fnmatchcase(k, plugin["wildcard"])]
        if moved:
            out[plugin["nest_under"]] = {k.removeprefix(prefix): out.pop(k) for k in moved}
    elif plugin["name"] == "modify":
        source, target = plugin["copy"].split()
        if source in out and target not in out:
            out[target] = copy.deepcopy(out[source])
    else:
        raise AssertionError(f"unexpected filter {plugin['name']}")
    return out


def test_tail_input(config: dict[str, Any]) -> None:
    (tail,) = _named(config["pipeline"]["inputs"], "tail")
    assert tail["path"] == "/var/log/containers/*.log"
    assert tail["tag"] == "kube.*"
    parsers = [p.strip() for p in tail["multiline.parser"].split(",")]
    assert parsers == ["cri", "docker"]
    assert "parser" not in tail, "the classic cri parser writes `message`, not `log`"


def test_kubernetes_filter_keeps_the_line_in_log(config: dict[str, Any]) -> None:
    filters = config["pipeline"]["filters"]
    (kube,) = _named(filters, "kubernetes")
    assert kube["match"] == "kube.*"
    assert _flag(kube["merge_log"]) is False
    assert _flag(kube.get("keep_log", True)) is True
    assert _flag(kube["labels"]) is True
    assert _flag(kube["annotations"]) is False
    assert not _flag(kube.get("namespace_labels", False)), "its kubernetes_namespace key would be re-nested"
    assert filters.index(kube) == 0, "the kubernetes filter must run before the pod_key chain"
    assert not _named(filters, "grep"), "the grep filter is an opt-in example (commented out)"
    assert "- name: grep" in (FLUENT_BIT / "fluent-bit.yaml").read_text(encoding="utf-8")


def test_kafka_output(config: dict[str, Any]) -> None:
    (kafka,) = _named(config["pipeline"]["outputs"], "kafka")
    assert kafka["match"] == "kube.*"
    assert kafka["topics"] == "istio-logs"
    assert kafka["format"] == "json"
    assert kafka["timestamp_key"] == "@timestamp"
    assert kafka["timestamp_format"] == "iso8601"
    assert kafka["rdkafka.compression.codec"] == "lz4"
    assert str(kafka["rdkafka.request.required.acks"]) == "1"
    assert kafka["brokers"] == "${KAFKA_BROKERS}"


def test_message_key_is_the_pod_name_and_record_shape_is_kept(config: dict[str, Any]) -> None:
    (kafka,) = _named(config["pipeline"]["outputs"], "kafka")
    key_field = kafka["message_key_field"]
    record = copy.deepcopy(SAMPLE)
    for plugin in config["pipeline"]["filters"][1:]:
        assert plugin["match"] == "kube.*"
        record = _apply(plugin, record)
    # message_key_field reads a top-level key only.
    assert record[key_field] == SAMPLE["kubernetes"]["pod_name"]
    assert {k: v for k, v in record.items() if k != key_field} == SAMPLE


def test_pod_key_chain_leaves_records_without_metadata_alone(config: dict[str, Any]) -> None:
    bare = {"time": "2025-05-20T13:28:46Z", "stream": "stdout", "_p": "F", "log": "x"}
    record = dict(bare)
    for plugin in config["pipeline"]["filters"][1:]:
        record = _apply(plugin, record)
    assert record == bare


def test_helm_values_embed_the_same_pipeline(config: dict[str, Any]) -> None:
    values = load_yaml(FLUENT_BIT / "daemonset-values.yaml")
    assert values["kind"] == "DaemonSet"
    embedded = values["config"]["extraFiles"]["fluent-bit.yaml"]
    assert embedded == (FLUENT_BIT / "fluent-bit.yaml").read_text(encoding="utf-8"), (
        "daemonset-values.yaml config.extraFiles['fluent-bit.yaml'] must be a verbatim copy of fluent-bit.yaml"
    )
    assert yaml.safe_load(embedded) == config
    assert "--config=/fluent-bit/etc/conf/fluent-bit.yaml" in values["args"]
    image_tag = str(values["image"]["tag"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", image_tag)
    env = {e["name"] for e in values["env"]}
    used = set(re.findall(r"\$\{(\w+)\}", embedded))
    assert used <= env, f"variables without a value in the DaemonSet env: {used - env}"
    # The tail DB and filesystem buffer live on a hostPath so restarts neither re-read nor lose lines.
    state = {m["mountPath"] for m in values["extraVolumeMounts"]}
    assert any(config["pipeline"]["inputs"][0]["db"].startswith(path) for path in state)
    assert any(config["service"]["storage.path"].startswith(path) for path in state)
