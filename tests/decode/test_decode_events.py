"""Kubernetes events as records: API objects (core/v1, events.k8s.io/v1, watch events, Fluent Bit's
kubernetes_events records), pasted kubectl rows, pretty-printed `kubectl get events -o json` input, and the
match-first pipeline on raw event records (prefilter contract, incident key from the involved object)."""

from __future__ import annotations

import copy
import io
import re
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer import incidents
from analyzer.catalogue import load_catalogue
from analyzer.correlation import GATED_RULES
from analyzer.decode import Decoder, Format
from analyzer.decode.events import owner_workload, record_from_event, record_from_row
from analyzer.lines import iter_blocks
from analyzer.match import CompiledCatalogue, Matcher, compile_catalogue
from analyzer.pipeline import Pipeline
from analyzer.types import Catalogue, IncidentKey, LogRecord, Rejected, Status
from tests.conftest import PATTERNS

PSA_MESSAGE = (
    'Error creating: pods "productpage-v1-6b746f74dc-" is forbidden: violates PodSecurity "baseline:latest": '
    'non-default capabilities (container "istio-init" must not include "NET_ADMIN", "NET_RAW" in '
    "securityContext.capabilities.add)"
)
SEED_RULE = "k8s-event-pod-security-blocks-istio-init"


def core_event(**changes: Any) -> dict[str, Any]:
    """A core/v1 Event as `kubectl get events -o json` lists it and the API server serves it."""
    event: dict[str, Any] = {
        "apiVersion": "v1",
        "count": 14,
        "eventTime": None,
        "firstTimestamp": "2024-11-29T07:00:00Z",
        "involvedObject": {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "productpage-v1-6b746f74dc",
            "namespace": "bookinfo",
            "resourceVersion": "81234",
            "uid": "3f0c2b1a-1111-2222-3333-444455556666",
        },
        "kind": "Event",
        "lastTimestamp": "2024-11-29T07:12:00Z",
        "message": PSA_MESSAGE,
        "metadata": {
            "creationTimestamp": "2024-11-29T07:00:00Z",
            "name": "productpage-v1-6b746f74dc.180c4b7a9d3f2e1c",
            "namespace": "bookinfo",
            "resourceVersion": "81299",
            "uid": "9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff",
        },
        "reason": "FailedCreate",
        "reportingComponent": "replicaset-controller",
        "reportingInstance": "",
        "source": {"component": "replicaset-controller"},
        "type": "Warning",
    }
    event.update(changes)
    return event


def fluentbit(event: dict[str, Any], timestamp: object = "2024-11-29T07:12:03.123456Z") -> bytes:
    """The kafka output's record of a kubernetes_events input record: ``@timestamp`` prepended to the Event."""
    return orjson.dumps({"@timestamp": timestamp, **event})


def pod_event(field_path: str | None, reason: str, message: str, kind: str = "Pod") -> dict[str, Any]:
    involved = {"kind": kind, "name": "reviews-v1-5b6c8d7f94-2xk9p", "namespace": "bookinfo", "uid": "u"}
    if field_path is not None:
        involved["fieldPath"] = field_path
    return core_event(involvedObject=involved, reason=reason, message=message)


def record(value: LogRecord | Rejected | None) -> LogRecord:
    assert isinstance(value, LogRecord), value
    return value


def rejected(value: LogRecord | Rejected | None) -> Rejected:
    assert isinstance(value, Rejected), value
    return value


# -- API objects --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [Format.AUTO, Format.FLUENTBIT])
def test_fluent_bit_kubernetes_events_record(fmt: Format) -> None:
    rec = record(Decoder(fmt)(fluentbit(core_event())))
    assert rec.line == f"Warning\tFailedCreate\tReplicaSet/productpage-v1-6b746f74dc\t{PSA_MESSAGE}".encode()
    assert rec.time == 1732864320.0  # lastTimestamp 2024-11-29T07:12:00Z, not the envelope's @timestamp
    assert (rec.namespace, rec.workload, rec.pod, rec.container, rec.level) == (
        "bookinfo",
        "productpage-v1",
        None,
        None,
        "warn",
    )


def test_kubectl_json_item_without_envelope() -> None:
    rec = record(Decoder()(orjson.dumps(core_event())))
    assert rec.text.split("\t")[:3] == ["Warning", "FailedCreate", "ReplicaSet/productpage-v1-6b746f74dc"]


def test_event_is_not_taken_for_a_message_envelope() -> None:
    """An Event carries a "message" string like the classic cri parser's record: the event wins."""
    rec = record(Decoder()(orjson.dumps(core_event(message="connection refused"))))
    assert rec.line.startswith(b"Warning\tFailedCreate\t")
    log = record(Decoder()(orjson.dumps({"message": "connection refused", "reason": "x"})))
    assert log.line == b"connection refused"  # reason alone does not make an event
    line = orjson.dumps({"level": "error", "msg": "refused", "reason": "timeout", "regarding": "order 42"})
    assert record(Decoder()(line)).line == line  # nor a JSON log line with a "regarding" string


@pytest.mark.parametrize(
    ("field_path", "container"),
    [
        ("spec.containers{istio-proxy}", "istio-proxy"),
        ("spec.initContainers{istio-init}", "istio-init"),
        ("spec.initContainers{istio-validation}", "istio-validation"),
        ("spec.ephemeralContainers{debugger-x2x4k}", "debugger-x2x4k"),
        ("spec.volumes", None),
        (None, None),
    ],
)
def test_pod_event_container_from_field_path(field_path: str | None, container: str | None) -> None:
    rec = record(Decoder()(fluentbit(pod_event(field_path, "BackOff", "Back-off restarting failed container"))))
    assert (rec.pod, rec.container, rec.workload) == ("reviews-v1-5b6c8d7f94-2xk9p", container, "reviews-v1")
    obj = "Pod/reviews-v1-5b6c8d7f94-2xk9p" + (f"/{field_path}" if field_path else "")
    assert rec.text == f"Warning\tBackOff\t{obj}\tBack-off restarting failed container"


def test_events_k8s_io_v1_shape() -> None:
    event = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "web-0.17f1", "namespace": "shop", "creationTimestamp": "2024-11-29T06:00:00Z"},
        "eventTime": "2024-11-29T06:00:00.123456Z",
        "series": {"count": 7, "lastObservedTime": "2024-11-29T06:30:00.500000Z"},
        "reportingController": "kubelet",
        "reportingInstance": "kubelet-node-1",
        "action": "Probing",
        "reason": "Unhealthy",
        "regarding": {"kind": "Pod", "namespace": "shop", "name": "web-0", "fieldPath": "spec.containers{istio-proxy}"},
        "note": "Readiness probe failed: HTTP probe failed with statuscode: 503",
        "type": "Warning",
        "deprecatedCount": 7,
        "deprecatedFirstTimestamp": "2024-11-29T06:00:00Z",
        "deprecatedLastTimestamp": "2024-11-29T06:29:00Z",
    }
    rec = record(Decoder()(orjson.dumps(event)))
    assert rec.text == (
        "Warning\tUnhealthy\tPod/web-0/spec.containers{istio-proxy}\t"
        "Readiness probe failed: HTTP probe failed with statuscode: 503"
    )
    assert rec.time == pytest.approx(1732861800.5)  # the series' last observation is the latest
    assert (rec.namespace, rec.pod, rec.container, rec.workload) == ("shop", "web-0", "istio-proxy", "web")


def test_watch_event_wrapper() -> None:
    rec = record(Decoder()(orjson.dumps({"type": "MODIFIED", "object": core_event()})))
    assert rec.workload == "productpage-v1"
    assert rec.line.startswith(b"Warning\tFailedCreate\t")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "2024-11-29T07:12:00Z"),
        ({"lastTimestamp": None, "eventTime": "2024-11-29T07:13:00.250000Z"}, "2024-11-29T07:13:00.25Z"),
        ({"series": {"count": 3, "lastObservedTime": "2024-11-29T07:20:00.000000Z"}}, "2024-11-29T07:20:00Z"),
        ({"lastTimestamp": "2024-11-29T09:12:00+02:00"}, "2024-11-29T07:12:00Z"),
        ({"lastTimestamp": None}, "2024-11-29T07:00:00Z"),  # firstTimestamp
        ({"lastTimestamp": None, "firstTimestamp": None}, "2024-11-29T07:00:00Z"),  # metadata.creationTimestamp
        ({"lastTimestamp": "", "firstTimestamp": None, "metadata": {}}, "2024-11-29T07:12:03.123456Z"),  # @timestamp
    ],
)
def test_event_time(changes: dict[str, Any], expected: str) -> None:
    from analyzer.decode import parse_time

    rec = record(Decoder()(fluentbit(core_event(**changes))))
    assert rec.time == pytest.approx(parse_time(expected))


def test_event_without_any_time() -> None:
    event = core_event(lastTimestamp=None, firstTimestamp=None, metadata={"name": "x"})
    assert record(Decoder()(orjson.dumps(event))).time is None
    assert record(Decoder()(fluentbit(event, 1732864400.5))).time == 1732864400.5  # timestamp_format double


@pytest.mark.parametrize(("event_type", "level"), [("Warning", "warn"), ("Normal", "info"), ("Error", None)])
def test_levels(event_type: str, level: str | None) -> None:
    assert record(Decoder()(orjson.dumps(core_event(type=event_type)))).level == level


def test_missing_optional_fields() -> None:
    event: dict[str, Any] = {"reason": "FailedMount", "involvedObject": {}, "note": None}
    rec = record(Decoder()(orjson.dumps(event)))
    assert rec.line == b"\tFailedMount\t\t"
    assert (rec.namespace, rec.workload, rec.time, rec.level) == (None, None, None, None)


def test_message_line_breaks_become_tabs_and_text_is_kept_verbatim() -> None:
    message = '  Unable to mount: "istio-token"\nsecond line\r\nthird é 日本  '
    rec = record(Decoder()(orjson.dumps(core_event(message=message))))
    assert rec.text.endswith('\tUnable to mount: "istio-token"\tsecond line\tthird é 日本')
    assert b"\n" not in rec.line


def test_cluster_name_from_the_record() -> None:
    raw = orjson.dumps({**core_event(), "cluster_name": "prod-eu"})
    assert record(Decoder()(raw)).cluster == "prod-eu"


def test_node_event_has_no_namespace() -> None:
    event = core_event(involvedObject={"kind": "Node", "name": "node-1"}, metadata={"name": "node-1.17f"})
    rec = record(Decoder()(orjson.dumps(event)))
    assert (rec.namespace, rec.workload, rec.pod) == (None, "node-1", None)


@pytest.mark.parametrize(
    ("kind", "name", "workload"),
    [
        ("ReplicaSet", "productpage-v1-6b746f74dc", "productpage-v1"),
        ("ReplicaSet", "web-5d9c7b7d8", "web"),
        ("ReplicaSet", "legacy-1234567890", "legacy"),  # old decimal pod-template-hash
        ("ReplicaSet", "standalone", "standalone"),
        ("replicaset", "foo-7d9f8b6c5d", "foo"),  # the kubectl row's lower-case kind
        ("Pod", "reviews-v1-5b6c8d7f94-2xk9p", "reviews-v1"),
        ("Pod", "web-0", "web"),
        ("Pod", "node-exporter-x2x4k", "node-exporter"),
        ("Job", "backup-28374650", "backup"),
        ("Job", "migrate", "migrate"),
        ("Deployment", "productpage-v1", "productpage-v1"),
        ("StatefulSet", "web", "web"),
        ("Node", "node-1", "node-1"),
        (None, "something", "something"),
        ("Pod", None, None),
    ],
)
def test_owner_workload(kind: str | None, name: str | None, workload: str | None) -> None:
    assert owner_workload(kind, name) == workload


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        (core_event(reason=None), "reason"),
        (core_event(reason=""), "reason"),
        (core_event(reason="   "), "reason"),
        (core_event(reason=["FailedCreate"]), "reason"),
        (core_event(involvedObject=["ReplicaSet"]), "involvedObject"),
        (core_event(involvedObject=None), "involvedObject"),
        (core_event(message=42), "message"),
        (core_event(message={"text": "x"}), "message"),
        (core_event(type=1), "type"),
    ],
)
@pytest.mark.parametrize("fmt", [Format.AUTO, Format.FLUENTBIT])
def test_malformed_events_are_rejected_with_a_reason(event: dict[str, Any], detail: str, fmt: Format) -> None:
    got = rejected(Decoder(fmt)(orjson.dumps(event)))
    assert got.reason == "invalid-event"
    assert detail in got.detail


def test_non_string_names_are_ignored_not_fatal() -> None:
    event = core_event(involvedObject={"kind": 3, "name": ["x"], "namespace": {}, "fieldPath": 1.5})
    rec = record(Decoder()(orjson.dumps(event)))
    assert rec.text.split("\t")[2] == ""
    assert (rec.namespace, rec.workload) == ("bookinfo", "productpage-v1")  # metadata namespace; message pod name


def test_too_large_event() -> None:
    raw = orjson.dumps(core_event(message="x" * 5000))
    assert rejected(Decoder(max_line_bytes=4096)(raw)).reason == "too-large"
    assert rejected(record_from_event(orjson.loads(raw), max_line_bytes=4096)).reason == "too-large"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
_KEYS = ["reason", "involvedObject", "regarding", "message", "note", "type", "lastTimestamp", "eventTime",
         "firstTimestamp", "series", "metadata", "@timestamp", "time", "object", "cluster_name"]  # fmt: skip


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=8), st.booleans())
def test_arbitrary_event_like_objects_never_crash(obj: dict[str, Any], wrap: bool) -> None:
    obj.setdefault("reason", "X")
    obj.setdefault("involvedObject", {"kind": "Pod", "name": "p-0"})
    if wrap:
        obj = {"type": "ADDED", "object": obj}
    for fmt in (Format.AUTO, Format.FLUENTBIT):
        got = Decoder(fmt)(orjson.dumps(obj))
        assert isinstance(got, LogRecord | Rejected)
        if isinstance(got, Rejected):
            assert got.reason in ("invalid-event", "too-large")


# -- pasted kubectl rows ------------------------------------------------------------------------------------

GET_ROWS = [
    # (row, canonical text, namespace, pod, container, workload)
    (
        "2m          Warning   FailedCreate   replicaset/productpage-v1-6b746f74dc   "
        'Error creating: pods "x-" is forbidden',
        'Warning\tFailedCreate\treplicaset/productpage-v1-6b746f74dc\tError creating: pods "x-" is forbidden',
        None,
        None,
        None,
        "productpage-v1",
    ),
    (
        "bookinfo    5m (x4 over 10m)   Warning   BackOff   pod/reviews-v1-5b6c8d7f94-2xk9p   Back-off restarting "
        "failed container istio-proxy in pod reviews-v1-5b6c8d7f94-2xk9p_bookinfo(0f6c1c7e)",
        "Warning\tBackOff\tpod/reviews-v1-5b6c8d7f94-2xk9p\tBack-off restarting failed container istio-proxy in pod "
        "reviews-v1-5b6c8d7f94-2xk9p_bookinfo(0f6c1c7e)",
        "bookinfo",
        "reviews-v1-5b6c8d7f94-2xk9p",
        None,
        "reviews-v1",
    ),
    (  # -o wide: SUBOBJECT SOURCE MESSAGE FIRST SEEN COUNT NAME
        "3m   Warning   Unhealthy   pod/web-7d9f8b6c5d-x2x4k   spec.containers{istio-proxy}   kubelet, node-1   "
        "Readiness probe failed: HTTP probe failed with statuscode: 503   10m   40   "
        "web-7d9f8b6c5d-x2x4k.17f1a2b3c4d5e6f7",
        "Warning\tUnhealthy\tpod/web-7d9f8b6c5d-x2x4k/spec.containers{istio-proxy}\t"
        "Readiness probe failed: HTTP probe failed with statuscode: 503",
        None,
        "web-7d9f8b6c5d-x2x4k",
        "istio-proxy",
        "web",
    ),
    (  # kubectl 1.10-1.13: LAST SEEN FIRST SEEN COUNT NAME KIND SUBOBJECT TYPE REASON SOURCE MESSAGE
        "1m          1h           120       productpage-v1-6b746f74dc-x2x4k.15a7c7b1e8b2d4f1   Pod       "
        "spec.containers{istio-proxy}   Warning   Unhealthy   kubelet, gke-prod-pool-1-8f2c   "
        "Readiness probe failed: HTTP probe failed with statuscode: 503",
        "Warning\tUnhealthy\tPod/productpage-v1-6b746f74dc-x2x4k/spec.containers{istio-proxy}\t"
        "Readiness probe failed: HTTP probe failed with statuscode: 503",
        None,
        "productpage-v1-6b746f74dc-x2x4k",
        "istio-proxy",
        "productpage-v1",
    ),
    (  # the same with --all-namespaces and no subobject (a DaemonSet's event)
        "istio-system   2m        2m        12        istio-cni-node.15a7c7b1e8b2d4f1   DaemonSet                  "
        'Warning   FailedCreate   daemonset-controller   Error creating: pods "istio-cni-node-" is forbidden: x',
        'Warning\tFailedCreate\tDaemonSet/istio-cni-node\tError creating: pods "istio-cni-node-" is forbidden: x',
        "istio-system",
        None,
        None,
        "istio-cni-node",
    ),
    (  # -A -o wide, no subobject
        "shop   <unknown>   Warning   FailedCreate   replicaset/web-7d9f8b6c5d      replicaset-controller   "
        'Error creating: pods "web-7d9f8b6c5d-" is forbidden: x   <unknown>   1   web-7d9f8b6c5d.180c4b7a9d3f2e1c',
        'Warning\tFailedCreate\treplicaset/web-7d9f8b6c5d\tError creating: pods "web-7d9f8b6c5d-" is forbidden: x',
        "shop",
        None,
        None,
        "web",
    ),
]


@pytest.mark.parametrize(("row", "text", "namespace", "pod", "container", "workload"), GET_ROWS)
def test_kubectl_get_events_rows(
    row: str, text: str, namespace: str | None, pod: str | None, container: str | None, workload: str
) -> None:
    rec = record(Decoder()(row.encode()))
    assert rec.text == text
    assert (rec.namespace, rec.pod, rec.container, rec.workload, rec.time) == (
        namespace,
        pod,
        container,
        workload,
        None,
    )
    assert rec.level == "warn"


DESCRIBE_ROWS = [
    (
        '  Warning  FailedCreate  2m (x4 over 5m)  replicaset-controller  Error creating: pods "foo-7d9f8b6c5d-" is '
        "forbidden: violates PodSecurity",
        'Warning\tFailedCreate\t\tError creating: pods "foo-7d9f8b6c5d-" is forbidden: violates PodSecurity',
        None,
        "foo",
    ),
    (
        "  Warning  BackOff    3m (x20 over 8m)  kubelet  Back-off restarting failed container istio-init in pod "
        "web-7d9f8b6c5d-x2x4k_shop(5d1c0a94-3f0e)",
        "Warning\tBackOff\t\tBack-off restarting failed container istio-init in pod "
        "web-7d9f8b6c5d-x2x4k_shop(5d1c0a94-3f0e)",
        "shop",
        "web",
    ),
    (
        "Warning  Unhealthy  47s  kubelet, gke-pool-1-abcd  "
        'Readiness probe failed: Get "http://10.0.0.5:15021/healthz/ready": '
        "dial tcp 10.0.0.5:15021: connect: connection refused",
        'Warning\tUnhealthy\t\tReadiness probe failed: Get "http://10.0.0.5:15021/healthz/ready": '
        "dial tcp 10.0.0.5:15021: connect: connection refused",
        None,
        None,
    ),
    (
        "  Normal   Scheduled  <unknown>  default-scheduler  Successfully assigned shop/web-0 to node-1",
        "Normal\tScheduled\t\tSuccessfully assigned shop/web-0 to node-1",
        None,
        None,
    ),
    (
        "  Warning  FailedCreate  12s (x2 over 13s)  statefulset-controller  "
        'create Pod web-0 in StatefulSet web failed error: pods "web-0" is forbidden: violates PodSecurity',
        'Warning\tFailedCreate\t\tcreate Pod web-0 in StatefulSet web failed error: pods "web-0" is forbidden: '
        "violates PodSecurity",
        None,
        "web",
    ),
    (  # a node clock behind the client's: kubectl prints <invalid> ages (istio/istio#33115)
        "  Warning  Unhealthy  <invalid> (x13 over <invalid>)  kubelet            "
        "Readiness probe failed: HTTP probe failed with statuscode: 503",
        "Warning\tUnhealthy\t\tReadiness probe failed: HTTP probe failed with statuscode: 503",
        None,
        None,
    ),
    (  # kubelets before 1.20 add the node to the source; the event correlator's "(combined from ...)" prefix
        " Warning  FailedCreatePodSandBox  61s (x4 over 2m32s)  kubelet, lxappstrldev0001  (combined from similar "
        "events): Failed create pod sandbox: rpc error: code = Unknown desc = failed to set up sandbox container "
        '"a7d4" network for pod "httpbin-6cbc6f986f-kh52h": NetworkPlugin cni failed to set up pod '
        '"httpbin-6cbc6f986f-kh52h_default" network: exit status 3',
        "Warning\tFailedCreatePodSandBox\t\t(combined from similar events): Failed create pod sandbox: rpc error: "
        'code = Unknown desc = failed to set up sandbox container "a7d4" network for pod "httpbin-6cbc6f986f-kh52h": '
        'NetworkPlugin cni failed to set up pod "httpbin-6cbc6f986f-kh52h_default" network: exit status 3',
        None,
        "httpbin",
    ),
    (  # "kubelet, <node>" FROM pasted with one space before the message and a redacted node (istio/istio#13106)
        "Warning  Unhealthy  116s (x150 over 6m54s)  kubelet, ip-<node> Readiness probe failed: HTTP probe failed "
        "with statuscode: 503",
        "Warning\tUnhealthy\t\tReadiness probe failed: HTTP probe failed with statuscode: 503",
        None,
        None,
    ),
    (
        "  Warning  BackOff  3m (x20 over 8m)  kubelet, ip-10-0-3-17.ec2.internal Back-off restarting failed "
        "container istio-init in pod web-7d9f8b6c5d-x2x4k_shop(5d1c0a94-3f0e)",
        "Warning\tBackOff\t\tBack-off restarting failed container istio-init in pod "
        "web-7d9f8b6c5d-x2x4k_shop(5d1c0a94-3f0e)",
        "shop",
        "web",
    ),
    (
        "  Warning  FailedCreate  5m54s (x12 over 6m4s)  daemonset-controller  Error creating: pods "
        '"istio-cni-node-" is forbidden: pods with system-node-critical priorityClass is not permitted in '
        "istio-system namespace",
        'Warning\tFailedCreate\t\tError creating: pods "istio-cni-node-" is forbidden: pods with '
        "system-node-critical priorityClass is not permitted in istio-system namespace",
        None,
        "istio-cni-node",
    ),
]


@pytest.mark.parametrize(("row", "text", "namespace", "workload"), DESCRIBE_ROWS)
def test_kubectl_describe_rows(row: str, text: str, namespace: str | None, workload: str | None) -> None:
    rec = record(Decoder()(row.encode()))
    assert rec.text == text
    assert (rec.namespace, rec.workload, rec.time) == (namespace, workload, None)


@pytest.mark.parametrize(
    "line",
    [
        'Warning: would violate PodSecurity "restricted:latest": unrestricted capabilities',
        "2024-11-29T07:12:00.000000Z\twarn\tWarning   something   happened   here",
        "LAST SEEN   TYPE      REASON         OBJECT                       MESSAGE",
        "  Type     Reason        Age   From               Message",
        "  ----     ------        ----  ----               -------",
        "web-7d9f8b6c5d-x2x4k   1/2     Running   3 (2m ago)   10m",
        "Normal operation resumed after 2m  Warning  cleared",
        "WARNING  2024-11-29 07:12:00  Normal  shutdown  of  worker",
        "[2024-11-29 07:12:00.000][1][warning][config] Warning  Unhealthy  2m  kubelet  not a row",
        "Warning  Unhealthy  2m  kubelet",  # no message column
        "Warning Unhealthy 2m kubelet Readiness probe failed",  # single spaces: not kubectl's table
        "LAST SEEN   FIRST SEEN   COUNT     NAME      KIND      SUBOBJECT   TYPE      REASON    SOURCE    MESSAGE",
        "1m   1h   120   not-an-event-name   Pod   Warning   Unhealthy   kubelet   probe failed",  # no .<hex> suffix
        "Readiness probe failed: HTTP probe failed with statuscode: 503",  # a bare message
        # a single space after the FROM column is only taken after a "source, node" pair
        "Warning  Unhealthy  2m  kubelet Readiness probe failed",
        "  Warning  Unhealthy  2m  kubelet, node-1",  # no message after the node
        "INFO  Normal  5m  tick, tock happened",  # no REASON column
    ],
)
def test_ordinary_lines_are_not_rows(line: str) -> None:
    raw = line.encode()
    assert record_from_row(raw) is None
    rec = record(Decoder()(raw))
    assert rec.workload is None
    assert rec.line == raw


PROBE_503 = "Readiness probe failed: HTTP probe failed with statuscode: 503"


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        # rows that name no container: taken as the sidecar's readiness (Envoy answers 503 until configured)
        (f"  Warning  Unhealthy  <invalid> (x13 over <invalid>)  kubelet            {PROBE_503}", True),
        (f"  Warning  Unhealthy  73s   kubelet, test-control-plane  {PROBE_503}", True),
        # pre-1.20 FROM pasted with a single space before the message (istio/istio#13106)
        (f"Warning  Unhealthy  116s (x150 over 6m54s)  kubelet, ip-10-0-3-17.ec2.internal {PROBE_503}", True),
        (f"3m20s       Warning   Unhealthy   pod/productpage-v1-6b746f74dc-x2x4k   {PROBE_503}", True),
        # the row names the container: the app's own probe is not the sidecar's, istio-proxy's is
        (
            f"3m   Warning   Unhealthy   pod/web-7d9f8b6c5d-x2x4k   spec.containers{{web}}   kubelet, node-1   "
            f"{PROBE_503}   10m   40   web-7d9f8b6c5d-x2x4k.17f1a2b3c4d5e6f7",
            False,
        ),
        (
            f"3m   Warning   Unhealthy   pod/web-7d9f8b6c5d-x2x4k   spec.containers{{istio-proxy}}   kubelet, node-1   "
            f"{PROBE_503}   10m   40   web-7d9f8b6c5d-x2x4k.17f1a2b3c4d5e6f7",
            True,
        ),
        # another status, a bare message, a pod that has no sidecar
        ("  Warning  Unhealthy  73s   kubelet  Readiness probe failed: HTTP probe failed with statuscode: 500", False),
        (PROBE_503, False),
        (f"27m         Warning   Unhealthy          pod/istio-cni-node-2fm2x            {PROBE_503}", False),
    ],
)
def test_probe_rows_without_a_container_are_the_sidecars(compiled: CompiledCatalogue, line: str, rule: bool) -> None:
    rec = record(Decoder()(line.encode()))
    assert ("k8s-event-istio-proxy-probe-failed" in Matcher(compiled).one(rec.line)) is rule


def test_row_with_invalid_utf8_is_not_a_row() -> None:
    raw = b"  Warning  FailedMount  2m  kubelet  bad \xff byte"
    assert record_from_row(raw) is None
    assert record(Decoder()(raw)).line == raw


# -- `kubectl get events -o json` and other whole documents --------------------------------------------------


def _blocks(data: bytes, read_size: int = 1 << 22) -> list[bytes]:
    return [line for block in iter_blocks(io.BytesIO(data), read_size) for line in block]


def test_pretty_printed_list_is_one_record_per_item() -> None:
    other = core_event(reason="ScalingReplicaSet", type="Normal", message="Scaled up replica set x to 1")
    doc = {"apiVersion": "v1", "items": [core_event(), other], "kind": "List", "metadata": {"resourceVersion": ""}}
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    for read_size in (1 << 22, 64):  # the document spans many reads
        lines = _blocks(data, read_size)
        assert [orjson.loads(line) for line in lines] == [core_event(), other]
        decoded = [record(Decoder()(line)) for line in lines]
        assert [r.text.split("\t")[1] for r in decoded] == ["FailedCreate", "ScalingReplicaSet"]


def test_pretty_printed_single_object_is_one_record() -> None:
    data = b"\n  " + orjson.dumps(core_event(), option=orjson.OPT_INDENT_2)
    assert [orjson.loads(line) for line in _blocks(data)] == [core_event()]


def test_empty_list_gives_no_records() -> None:
    assert _blocks(b'{\n  "apiVersion": "v1",\n  "items": [],\n  "kind": "List"\n}\n') == []


def test_input_that_only_starts_like_a_document_is_read_as_lines() -> None:
    data = b"{\nnot json\n2024-11-29T07:12:00Z\terror\tads\tx\n"
    assert _blocks(data, 8) == [b"{", b"not json", b"2024-11-29T07:12:00Z\terror\tads\tx"]


def test_json_lines_stay_lines() -> None:
    lines = [orjson.dumps(core_event()), orjson.dumps({"log": "x"}), b"plain"]
    assert _blocks(b"\n".join(lines) + b"\n") == lines


# -- through the pipeline: raw Fluent Bit event records ------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(PATTERNS)


@pytest.fixture(scope="module")
def compiled(catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory) -> CompiledCatalogue:
    return compile_catalogue(catalogue, cache_dir=tmp_path_factory.mktemp("hs"))


def test_pipeline_keys_the_seed_problem_by_the_involved_object(
    catalogue: Catalogue, compiled: CompiledCatalogue
) -> None:
    """The seed's problem 2 from the admission event alone: an open sidecar-init incident at once."""
    normal = core_event(reason="ScalingReplicaSet", type="Normal", message="Scaled up replica set x to 1")
    later = core_event(lastTimestamp="2024-11-29T07:14:00Z")
    values = [fluentbit(core_event()), fluentbit(normal), fluentbit(later), fluentbit(core_event(reason=7))]
    pipeline = Pipeline(catalogue, compiled, default_cluster="prod")
    result = pipeline(values, [0.0] * len(values))
    assert result.matches == Counter({SEED_RULE: 2})
    assert result.rejected == Counter({"invalid-event": 1})
    (interval,) = result.intervals
    assert interval.key == IncidentKey("prod", "bookinfo", "productpage-v1")
    assert (interval.first_seen, interval.last_seen, interval.count) == (1732864320.0, 1732864440.0, 2)
    rule = catalogue.by_id()[SEED_RULE]
    assert rule.category == "sidecar-init" and rule.severity == "high" and rule.transient is None
    assert incidents.status(interval, rule, interval.last_seen) is Status.OPEN
    assert interval.head[0].line.startswith("Warning\tFailedCreate\tReplicaSet/productpage-v1-6b746f74dc\t")


def test_pipeline_event_rules_respect_the_container(catalogue: Catalogue, compiled: CompiledCatalogue) -> None:
    """A probe event of the istio-proxy container is the sidecar's; the app container's own probe is not."""
    proxy = pod_event(
        "spec.containers{istio-proxy}", "Unhealthy", "Liveness probe failed: HTTP probe failed with statuscode: 503"
    )
    app = pod_event(
        "spec.containers{reviews}", "Unhealthy", "Liveness probe failed: HTTP probe failed with statuscode: 503"
    )
    result = Pipeline(catalogue, compiled, default_cluster="c")([fluentbit(proxy), fluentbit(app)], [0.0, 0.0])
    assert result.matches == Counter({"k8s-event-istio-proxy-probe-failed": 1})
    (interval,) = result.intervals
    assert interval.key == IncidentKey("c", "bookinfo", "reviews-v1")
    assert interval.pods == ("reviews-v1-5b6c8d7f94-2xk9p",)


def test_key_for_prefers_the_records_workload(catalogue: Catalogue) -> None:
    rule = catalogue.by_id()[SEED_RULE]
    rec = LogRecord(b"x", namespace="ns", pod="other-5d9c7b7d8-x2x4k", workload="productpage-v1")
    assert incidents.key_for(rule, rec, "c") == IncidentKey("c", "ns", "productpage-v1")
    rec.workload = None
    assert incidents.key_for(rule, rec, "c") == IncidentKey("c", "ns", "other")


# The prefilter contract on event records: the raw-record path finds exactly what `re` finds on the canonical
# text, whatever the message holds (JSON escapes, non-ASCII, line breaks, quotes).
_MESSAGES = [
    PSA_MESSAGE,
    "Back-off restarting failed container istio-init in pod web-7d9f8b6c5d-x2x4k_shop(5d1c0a94)",
    'Readiness probe failed: Get "http://10.0.0.5:15020/app-health/web/readyz": dial tcp 10.0.0.5:15020: connect: '
    "connection refused",
    'MountVolume.SetUp failed for volume "istiod-ca-cert" : configmap "istio-ca-root-cert" not found',
    'Error creating: Internal error occurred: failed calling webhook "namespace.sidecar-injector.istio.io": failed to '
    'call webhook: Post "https://istiod.istio-system.svc:443/inject?timeout=10s": service "istiod" not found',
    "Scaled up replica set web-7d9f8b6c5d to 1",
    "Readiness probe failed: HTTP probe failed with statuscode: 503",
    'Exec lifecycle hook ([pilot-agent wait]) for Container "istio-proxy" in Pod "web-0_shop(5d1c)" failed - error: '
    "command 'pilot-agent wait' exited with 255: Error: timeout waiting for Envoy proxy to become ready. Last error: "
    'Get "http://localhost:15021/healthz/ready": dial tcp [::1]:15021: connect: connection refused, message: ""',
    'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to set up sandbox container "a7d4" network '
    'for pod "web-0": NetworkPlugin cni failed to set up pod "web-0_shop" network: exit status 3',
]
_SPECIAL = ["\t", '"', "\\", "é", "日本", "\x00", "\r", "\n", "\r\n", "  ", "\u2028", "🙂", "/", "{istio-proxy}"]


@st.composite
def event_records(draw: st.DrawFn) -> dict[str, Any]:
    message = draw(st.sampled_from(_MESSAGES))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(message)))
        message = message[:where] + draw(st.sampled_from(_SPECIAL)) + message[where:]
    field_path = draw(st.sampled_from([None, "spec.containers{istio-proxy}", "spec.initContainers{istio-init}"]))
    event = pod_event(
        field_path,
        draw(st.sampled_from(["FailedCreate", "BackOff", "Unhealthy", "FailedMount", "FailedPostStartHook"])),
        message,
    )
    event["type"] = draw(st.sampled_from(["Warning", "Normal", "Weird\tType"]))
    return event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_records(), min_size=1, max_size=8))
def test_raw_event_records_match_exactly_what_re_finds_on_the_canonical_text(
    catalogue: Catalogue, compiled: CompiledCatalogue, events: list[dict[str, Any]]
) -> None:
    patterns = [
        (r.id, re.compile(e.pattern.encode(), re.M | (re.I if e.caseless else 0)), r)
        for r in catalogue.rules
        for e in r.expressions
    ]
    excludes = {
        r.id: [re.compile(e.pattern.encode(), re.M | (re.I if e.caseless else 0)) for e in r.exclude]
        for r in catalogue.rules
    }
    expected: Counter[str] = Counter()
    for event in events:
        rec = record(record_from_event(copy.deepcopy(event)))
        hits = {
            rid for rid, rx, rule in patterns if rx.search(rec.line) and rule.applies_to(rec.container, rec.namespace)
        }
        expected.update(rid for rid in hits if not any(x.search(rec.line) for x in excludes[rid]))
    values = [fluentbit(e) for e in events]
    result = Pipeline(catalogue, compiled, default_cluster="c")(values, [0.0] * len(values))
    got = +result.matches
    for gated in GATED_RULES:  # the correlation gate decides those, on per-pod state
        expected.pop(gated, None)
        got.pop(gated, None)
    assert got == +expected
