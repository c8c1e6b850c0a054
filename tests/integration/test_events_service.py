"""Kubernetes events end to end: Fluent Bit kubernetes_events records on a second topic -> the real service ->
an open sidecar-init incident over the HTTP API; and `scan` / `match` of `kubectl get events -o json` files and
pasted `kubectl describe` rows through the CLI, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import (
    Message,
    Services,
    StoreView,
    apiserver_error,
    create_topic,
    fluent_bit_record,
    iso_micro,
    istiod_pod,
    poll,
    produce,
    wait_consumed,
)

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).parent / "mesh-analyzer"
SEED_RULE = "k8s-event-pod-security-blocks-istio-init"
PSA = (
    'Error creating: pods "productpage-v1-6b746f74dc-" is forbidden: violates PodSecurity "baseline:latest": '
    'non-default capabilities (container "istio-init" must not include "NET_ADMIN", "NET_RAW" in '
    "securityContext.capabilities.add)"
)


def _z(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def event(t: float, *, reason: str = "FailedCreate", kind: str = "ReplicaSet", name: str = "productpage-v1-6b746f74dc",
          message: str = PSA, event_type: str = "Warning", count: int = 1) -> dict[str, Any]:  # fmt: skip
    """A core/v1 Event as the API server serves it (and Fluent Bit's kubernetes_events input emits it)."""
    return {
        "metadata": {
            "name": f"{name}.180c4b7a9d3f2e1c",
            "namespace": "bookinfo",
            "uid": "9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff",
            "resourceVersion": "81299",
            "creationTimestamp": _z(t - 60 * count),
        },
        "involvedObject": {
            "kind": kind,
            "namespace": "bookinfo",
            "name": name,
            "uid": "3f0c2b1a-1111-2222-3333-444455556666",
            "apiVersion": "apps/v1",
            "resourceVersion": "81234",
        },
        "reason": reason,
        "message": message,
        "source": {"component": "replicaset-controller"},
        "firstTimestamp": _z(t - 60 * count),
        "lastTimestamp": _z(t),
        "count": count,
        "type": event_type,
        "eventTime": None,
        "reportingComponent": "replicaset-controller",
        "reportingInstance": "",
    }


def kubernetes_events_record(e: dict[str, Any], shipped: float) -> bytes:
    """The kafka output's JSON of a kubernetes_events record: `@timestamp` first, then the Event's keys."""
    return orjson.dumps({"@timestamp": iso_micro(shipped), **e})


def test_events_on_a_second_topic_open_a_sidecar_init_incident(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    sqlite_url: str,
    group: str,
) -> None:
    logs = create_topic(broker.bootstrap, partitions=2, prefix="logs")
    events = create_topic(broker.bootstrap, partitions=1, prefix="k8s-events")
    now = time.time()
    t = now - 120
    pod = istiod_pod()
    log_stream = [Message(fluent_bit_record(pod, "discovery", apiserver_error(t), t), pod.key)]
    event_stream = [
        Message(kubernetes_events_record(event(t - 30, count=3), t - 29)),
        Message(kubernetes_events_record(event(t, count=4), t + 1)),  # the same Event, updated (MODIFIED)
        Message(
            kubernetes_events_record(
                event(
                    t,
                    reason="ScalingReplicaSet",
                    kind="Deployment",
                    name="productpage-v1",
                    event_type="Normal",
                    message="Scaled up replica set productpage-v1-6b746f74dc to 1",
                ),
                t,
            )
        ),
    ]
    produced_logs = produce(broker.bootstrap, logs, log_stream)
    produced_events = produce(broker.bootstrap, events, event_stream)

    service = services.spawn(bootstrap=broker.bootstrap, topics=[logs, events], group=group, store_url=sqlite_url)
    view = open_view(sqlite_url)
    wait_consumed(view, group, events, produced_events.ends, [service])
    wait_consumed(view, group, logs, produced_logs.ends, [service])

    def listed() -> list[dict[str, Any]]:
        response = service.get("/v1/incidents?category=sidecar-init", 5.0)
        assert response is not None and response.status_code == 200, response
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    poll(lambda: bool(listed()), 30, what="a sidecar-init incident")
    (item,) = listed()
    assert item["rule"] == SEED_RULE
    assert item["status"] == "open"  # no transient window: open from the admission event alone
    assert item["severity"] == "high"
    assert item["key"] == {"cluster": "it-cluster", "namespace": "bookinfo", "workload": "productpage-v1", "pods": []}
    assert item["count"] == 2

    detail = service.get(f"/v1/incidents/{item['id']}", 5.0)
    assert detail is not None and detail.status_code == 200
    body = detail.json()
    assert body["evidence"][-1]["line"] == f"Warning\tFailedCreate\tReplicaSet/productpage-v1-6b746f74dc\t{PSA}"
    assert "istio-cni" in body["remediation"].lower() or "Istio CNI" in body["remediation"]
    assert "NET_ADMIN" in body["remediation"]

    # The first topic is still read: the istiod line became its own incident.
    everything = service.get("/v1/incidents", 5.0)
    assert everything is not None
    rules = {i["rule"] for i in everything.json()["items"]}
    assert {SEED_RULE, "istiod-apiserver-unreachable"} <= rules
    assert not any(i["category"] == "sidecar-init" and i["rule"] != SEED_RULE for i in everything.json()["items"])


# -- the CLI ------------------------------------------------------------------------------------------------


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(CLI), *args], input=stdin, capture_output=True, timeout=120, check=False)


def kubectl_get_events_json(t: float) -> bytes:
    """`kubectl get events -A -o json`: one pretty-printed List document."""
    items = [
        {"apiVersion": "v1", "kind": "Event", **event(t, count=14)},
        {
            "apiVersion": "v1",
            "kind": "Event",
            **event(
                t - 5,
                reason="ScalingReplicaSet",
                kind="Deployment",
                name="productpage-v1",
                event_type="Normal",
                message="Scaled up replica set productpage-v1-6b746f74dc to 1",
            ),
        },
    ]
    doc = {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}
    return json.dumps(doc, indent=4).encode() + b"\n"


@pytest.mark.parametrize("via_stdin", [False, True])
def test_scan_of_kubectl_get_events_json(tmp_path: Path, via_stdin: bool) -> None:
    data = kubectl_get_events_json(1732864320.0)
    path = tmp_path / "events.json"
    path.write_bytes(data)
    done = run_cli("scan", "--output", "json", "-" if via_stdin else str(path), stdin=data if via_stdin else None)
    assert done.returncode == 0, done.stderr.decode()
    (incident,) = json.loads(done.stdout)
    assert incident["rule"] == SEED_RULE
    assert incident["category"] == "sidecar-init"
    assert incident["status"] == "open"
    assert incident["key"]["namespace"] == "bookinfo"
    assert incident["key"]["workload"] == "productpage-v1"
    assert incident["last_seen"] == "2024-11-29T07:12:00Z"

    matched = run_cli("match", str(path))
    assert matched.returncode == 0, matched.stderr.decode()
    lines = [json.loads(line) for line in matched.stdout.splitlines()]
    assert [[r["id"] for r in m["rules"]] for m in lines] == [[SEED_RULE]]


DESCRIBE = """\
Name:             productpage-v1-6b746f74dc
Namespace:        bookinfo
Selector:         app=productpage,pod-template-hash=6b746f74dc,version=v1
Replicas:         0 current / 1 desired
Events:
  Type     Reason            Age                 From                   Message
  ----     ------            ----                ----                   -------
  Normal   SuccessfulCreate  20m                 replicaset-controller  Created pod: productpage-v1-6b746f74dc-x2x4k
  Warning  FailedCreate      2m (x15 over 4m)    replicaset-controller  {psa}
  Warning  FailedCreate      41s (x4 over 100s)  replicaset-controller  Error creating: Internal error occurred: \
failed calling webhook "namespace.sidecar-injector.istio.io": failed to call webhook: Post \
"https://istiod-1-22-3.istio-system.svc:443/inject?timeout=10s": service "istiod-1-22-3" not found
"""


def test_scan_of_pasted_kubectl_describe_rows() -> None:
    data = DESCRIBE.format(psa=PSA).encode()
    done = run_cli("scan", "--output", "json", "-", stdin=data)
    assert done.returncode == 0, done.stderr.decode()
    incidents = json.loads(done.stdout)
    found = {i["rule"]: i for i in incidents}
    seed = found[SEED_RULE]
    assert seed["category"] == "sidecar-init"
    # The rows name no namespace; the workload comes from the pod name the message gives.
    assert (seed["key"]["namespace"], seed["key"]["workload"]) == ("-", "productpage-v1")
    assert seed["evidence"][0]["line"] == f"Warning\tFailedCreate\t\t{PSA}"
    # The webhook row is an injection problem (injection.yaml's rule); its message names no pod, and a describe
    # row names no object, so nothing gives its workload.
    (webhook,) = [i for i in incidents if i["category"] == "injection"]
    assert {i["category"] for i in incidents} <= {"sidecar-init", "injection", "unclassified"}
    assert webhook["key"]["workload"] == "-"
    assert webhook["evidence"][0]["line"].startswith("Warning\tFailedCreate\t\tError creating: Internal error")

    # The same rows with the namespace given, as `scan --namespace` documents for files that carry none.
    done = run_cli("scan", "--output", "json", "--namespace", "bookinfo", "-", stdin=data)
    assert {i["key"]["namespace"] for i in json.loads(done.stdout)} == {"bookinfo"}
