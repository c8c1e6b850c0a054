from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analyzer.decode import Decoder, Format, record_from_mapping
from analyzer.types import LogRecord, Rejected

ISTIOD_LINE = (
    "2019-10-09T15:58:57.980691Z     error   k8s.io/client-go@v11.0.1-0.20190409021438-1a26190bd76a+incompatible/"
    "tools/cache/reflector.go:98: Failed to list *v1.Secret"
)
KUBERNETES: dict[str, Any] = {
    "pod_name": "istiod-68676bfc4-zz99m",
    "namespace_name": "istio-system",
    "pod_id": "a2747d5e-cf7d-4646-a9f3-1fc6c8134e68",
    "labels": {"app": "istiod", "pod-template-hash": "68676bfc4", "istio.io/rev": "default"},
    "annotations": {"sidecar.istio.io/inject": "false"},
    "host": "fb-test-worker2",
    "pod_ip": "10.244.1.4",
    "container_name": "discovery",
    "docker_id": "73a50e4a6e0419b35dfa2244ee0c1fc72ffc3b09b1f5558da0e9f852254023a1",
    "container_hash": "docker.io/istio/pilot@sha256:fcb75f691c8b0414d670ae570240cbf95502cc18a9ba57e982ecac589760a186",
    "container_image": "docker.io/istio/pilot:1.24.0",
}


def utc(text: str) -> float:
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + (float(f"0.{frac}") if frac else 0.0)


def record(value: LogRecord | Rejected | None) -> LogRecord:
    assert isinstance(value, LogRecord), value
    return value


def kafka_record(log: str, timestamp: object = 1747747726.566696, **extra: object) -> dict[str, Any]:
    """Reference §4.3: @timestamp first, then tail (cri multiline parser) keys, then the kubernetes map."""
    rec: dict[str, Any] = {
        "@timestamp": timestamp,
        "time": "2025-05-20T13:28:46.566696094Z",
        "stream": "stderr",
        "_p": "F",
        "log": log,
        "kubernetes": KUBERNETES,
    }
    rec.update(extra)
    return rec


def decoded_three_ways(obj: dict[str, Any]) -> list[LogRecord]:
    raw = orjson.dumps(obj)
    return [record(record_from_mapping(obj)), record(Decoder(Format.FLUENTBIT)(raw)), record(Decoder()(raw))]


def test_cri_tail_kubernetes_kafka_shape() -> None:
    for rec in decoded_three_ways(kafka_record(ISTIOD_LINE)):
        assert rec.line == ISTIOD_LINE.encode()
        assert rec.time == pytest.approx(utc("2019-10-09T15:58:57.980691Z"), abs=1e-6)
        assert (rec.namespace, rec.pod, rec.container, rec.stream) == (
            "istio-system",
            "istiod-68676bfc4-zz99m",
            "discovery",
            "stderr",
        )
        assert dict(rec.labels) == {"app": "istiod", "pod-template-hash": "68676bfc4", "istio.io/rev": "default"}
        assert (rec.level, rec.scope, rec.cluster) == ("error", None, None)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1664530060.954726, 1664530060.954726),  # timestamp_format double (default)
        ("2022-09-30T09:27:40.954726Z", utc("2022-09-30T09:27:40.954726Z")),  # iso8601 (microseconds in code)
        ("2022-09-30T09:27:40.954726766Z", utc("2022-09-30T09:27:40.954726766Z")),  # iso8601_ns
        (1664530060, 1664530060.0),
    ],
)
def test_envelope_time_when_the_line_has_none(timestamp: object, expected: float) -> None:
    for rec in decoded_three_ways(kafka_record("iptables: Chain already exists.\n", timestamp)):
        assert rec.line == b"iptables: Chain already exists."
        assert rec.time == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("timestamp", [0, 0.0, "1970-01-01T00:00:00Z", "not a time", None, True, [1], 1e15])
def test_absurd_timestamps_fall_through(timestamp: object) -> None:
    # absurd line time -> absurd @timestamp -> the record's `time`
    obj = kafka_record("1970-01-01T00:00:00.000000Z\terror\tads\tboom", timestamp)
    for rec in decoded_three_ways(obj):
        assert rec.time == pytest.approx(utc("2025-05-20T13:28:46.566696094Z"), abs=1e-6)
        assert (rec.level, rec.scope) == ("error", "ads")
    obj["time"] = "0001-01-01T00:00:00Z"
    for rec in decoded_three_ways(obj):
        assert rec.time is None


def test_kafka_message_from_fluent_bit_issue_6132() -> None:
    # reference §4.3: iso8601 @timestamp, nanosecond time, _p, no stream, labels
    obj = {
        "@timestamp": "2022-09-30T09:27:40.954726Z",
        "time": "2022-09-30T09:27:40.954726766Z",
        "_p": "F",
        "log": "Readiness probe failed",
        "kubernetes": {
            "docker_id": "c4ce",
            "pod_name": "REDACTED",
            "labels": {"app": "x"},
            "namespace_name": "logging",
            "pod_id": "3228",
            "container_image": "img",
            "container_hash": "hash",
        },
    }
    for rec in decoded_three_ways(obj):
        assert (rec.line, rec.namespace, rec.pod, rec.container, rec.stream) == (
            b"Readiness probe failed",
            "logging",
            "REDACTED",
            None,
            None,
        )
        assert rec.time == pytest.approx(utc("2022-09-30T09:27:40.954726Z"), abs=1e-6)


def test_classic_cri_parser_message_key() -> None:
    obj: dict[str, Any] = {
        "time": "2021-06-19T15:28:18.485439385+07:00",
        "stream": "stdout",
        "logtag": "F",
        "message": "2021-07-15T18:53:14.067992Z\twarning\tenvoy config\tStreamAggregatedResources closed",
        "kubernetes": {"pod_name": "reviews-v1-abc", "namespace_name": "bookinfo", "container_name": "istio-proxy"},
    }
    for rec in decoded_three_ways(obj):
        assert rec.line == obj["message"].encode()
        assert (rec.level, rec.scope, rec.container) == ("warn", "envoy config", "istio-proxy")


def test_cluster_name_top_level_or_nested() -> None:
    rec = record(record_from_mapping(kafka_record("x", cluster_name="prod-eu")))
    assert rec.cluster == "prod-eu"
    nested = dict(KUBERNETES, cluster_name="prod-us")
    assert record(record_from_mapping(kafka_record("x", kubernetes=nested))).cluster == "prod-us"
    both = kafka_record("x", kubernetes=nested, cluster_name="prod-eu")
    assert record(record_from_mapping(both)).cluster == "prod-eu"


def test_only_string_labels_are_kept() -> None:
    k = dict(KUBERNETES, labels={"app": "istiod", "n": 5, "nested": {"a": "b"}, "none": None})
    assert dict(record(record_from_mapping(kafka_record("x", kubernetes=k))).labels) == {"app": "istiod"}
    bad: object
    for bad in (None, "app=istiod", ["app"], {}):
        k = dict(KUBERNETES, labels=bad)
        assert dict(record(record_from_mapping(kafka_record("x", kubernetes=k))).labels) == {}


def test_metadata_of_the_wrong_type_is_ignored() -> None:
    obj = kafka_record("x", kubernetes={"pod_name": 1, "namespace_name": ["a"], "container_name": None})
    obj["stream"] = 7
    rec = record(record_from_mapping(obj))
    assert (rec.pod, rec.namespace, rec.container, rec.stream) == (None, None, None, None)
    rec = record(record_from_mapping(kafka_record("x", kubernetes="not a map")))
    assert (rec.pod, rec.namespace) == (None, None)


def test_merge_log_istio_json() -> None:
    # kubernetes filter with merge_log on, keep_log off: the Istio JSON keys sit in the record, no `log`
    obj: dict[str, Any] = {
        "@timestamp": 1678033990.0,
        "stream": "stdout",
        "level": "error",
        "time": "2023-03-05T16:33:05.966311Z",
        "scope": "klog",
        "msg": "k8s.io/client-go@v0.25.2/tools/cache/reflector.go:169: Failed to watch *v1.Deployment",
        "kubernetes": KUBERNETES,
    }
    rec = record(record_from_mapping(obj))
    assert rec.line == obj["msg"].encode()
    assert (rec.level, rec.scope, rec.container) == ("error", "klog", "discovery")
    assert rec.time == pytest.approx(utc("2023-03-05T16:33:05.966311Z"), abs=1e-6)
    assert record(Decoder(Format.FLUENTBIT)(orjson.dumps(obj))).line == rec.line
    # with AUTO, a JSON object without log/message is a JSON log line: its text is the JSON itself
    assert record(Decoder()(orjson.dumps(obj))).line == orjson.dumps(obj)


def test_the_kafka_path_limit() -> None:
    got = record_from_mapping(kafka_record("x" * 101), max_line_bytes=100)
    assert isinstance(got, Rejected) and got.reason == "too-large"
    assert record(record_from_mapping(kafka_record("x" * 100 + "\n"), max_line_bytes=100)).line == b"x" * 100


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({}, "missing-log"),
        ({"log": None, "message": 5, "msg": ["x"]}, "missing-log"),
        ({"kubernetes": KUBERNETES, "stream": "stdout"}, "missing-log"),
    ],
)
def test_record_from_mapping_rejections(obj: dict[str, object], reason: str) -> None:
    got = record_from_mapping(obj)
    assert isinstance(got, Rejected) and got.reason == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"@timestamp":1.5,"log":"x"', "invalid-json"),
        (b"not json at all", "invalid-json"),
        (b'{"log":"caf\xe9"}', "invalid-utf8"),
        (b"[1, 2]", "not-an-object"),
        (b'"a string"', "not-an-object"),
        (b"null", "not-an-object"),
        (b'{"@timestamp":1.5,"stream":"stdout"}', "missing-log"),
    ],
)
def test_explicit_format_rejections(raw: bytes, reason: str) -> None:
    got = Decoder(Format.FLUENTBIT)(raw)
    assert isinstance(got, Rejected) and got.reason == reason


def test_every_corpus_line_in_a_fluent_bit_record(corpus_lines: list[str]) -> None:
    plain = Decoder(Format.PLAIN)
    for line in corpus_lines:
        own = record(plain(line.encode()))
        for rec in decoded_three_ways(kafka_record(line + "\n")):
            assert rec.line == line.encode()
            assert (rec.level, rec.scope, rec.pod) == (own.level, own.scope, KUBERNETES["pod_name"])
            assert rec.time == (own.time if own.time is not None else 1747747726.566696)


def stripped(text: str) -> bytes:
    """The contract: one trailing "\\n" (or "\\r\\n") is removed, nothing else."""
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return text.encode()


@given(text=st.text(), key=st.sampled_from(["log", "message"]))
def test_any_text_round_trips(text: str, key: str) -> None:
    obj: dict[str, Any] = {"@timestamp": 1747747726.5, key: text, "stream": "stdout", "kubernetes": KUBERNETES}
    assert record(record_from_mapping(obj)).line == stripped(text)
    # and through the JSON encoding Fluent Bit's kafka output produces (escapes included)
    raw = orjson.dumps(obj)
    assert record(Decoder(Format.FLUENTBIT)(raw)).line == stripped(text)
    assert record(Decoder()(raw)).line == stripped(text)
