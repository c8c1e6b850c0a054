"""Issue 10's scenario end to end: istiod refuses API-server connections for 4 minutes while 50 proxies in 5
namespaces log not-ready, xDS stream-closed and 503 UH lines -> one open root cause with 50 affected pods, the
proxy incidents linked under it; the same proxy lines with a healthy istiod -> standalone incidents.

Twice: through the service's own Pipeline (the shipped catalogue) committed batch by batch into its SQLite
store and read back through the API in process; and the whole way, produced with librdkafka to the real broker
and consumed by `mesh-analyzer serve`, read over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from analyzer.broker import LocalBroker
from analyzer.types import Changes
from analyzer.unclassified import with_rules
from tests.api.support import GROUP, Harness, make_settings, running
from tests.integration.support import (
    Message,
    Pod,
    Services,
    StoreView,
    apiserver_error,
    app_pod,
    create_topic,
    fluent_bit_record,
    iso_micro,
    iso_millis,
    istiod_pod,
    produce,
    wait_consumed,
)

T0 = 1_700_000_000.0
NAMESPACES = ("shop", "pay", "search", "media", "auth")
WORKLOADS = ("web", "cart", "ledger", "index", "feed")
SUFFIXES = ("6b746f74dc-9stvs", "6b746f74dc-x2x4q")  # two replicas each: 5 x 5 x 2 = 50 pods
PROXIES = [app_pod(w, ns, suffix=s) for ns in NAMESPACES for w in WORKLOADS for s in SUFFIXES]
ISTIOD = istiod_pod()
END = T0 + 300  # the stream time the incidents are read at


def not_ready(t: float) -> str:
    return (
        f"{iso_micro(t)}\twarn\tEnvoy proxy is NOT ready: config not received from XDS server (is Istiod "
        "running?): cds updates: 0 successful, 0 rejected; lds updates: 0 successful, 0 rejected"
    )


def stream_closed(t: float) -> str:
    return (
        f"{iso_micro(t)}\twarning\tenvoy config external/envoy/source/extensions/config_subscription/grpc/"
        "grpc_stream.h:193\tStreamAggregatedResources gRPC config stream to xds-grpc closed: 14, connection "
        "error\tthread=21"
    )


def no_healthy_upstream(t: float, pod: Pod) -> str:
    return (
        f'[{iso_millis(t)}] "GET /api HTTP/1.1" 503 UH no_healthy_upstream - "-" 0 19 0 - "-" "curl/8.0" '
        f'"9c1e0d2a" "{pod.labels["app"]}:8080" "-" outbound|8080||backend.{pod.namespace}.svc.cluster.local - '
        "10.96.0.20:8080 10.1.0.8:51230 - default"
    )


def records(istiod_down: bool, t0: float = T0) -> list[tuple[float, bytes]]:
    out: list[tuple[float, bytes]] = []
    if istiod_down:  # 0..240 s: four minutes of refused API-server connections
        out += [
            (t0 + k, fluent_bit_record(ISTIOD, "discovery", apiserver_error(t0 + k), t0 + k)) for k in range(0, 241, 5)
        ]
    for pod in PROXIES:  # 30..270 s: every proxy, each kind of line every 30 s
        for k in range(30, 271, 30):
            t = t0 + k
            out.append((t, fluent_bit_record(pod, "istio-proxy", not_ready(t), t)))
            out.append((t + 1, fluent_bit_record(pod, "istio-proxy", stream_closed(t + 1), t + 1)))
            out.append((t + 2, fluent_bit_record(pod, "istio-proxy", no_healthy_upstream(t + 2, pod), t + 2)))
    out.sort(key=lambda r: r[0])
    return out


async def ingest(api: Harness, istiod_down: bool) -> None:
    """Batches of 500 records, as the consumer hands them over, each committed with its stream time."""
    pipeline = api.service.holder.pipeline
    items = records(istiod_down)
    for start in range(0, len(items), 500):
        batch = items[start : start + 500]
        result = pipeline([value for _, value in batch], [t for t, _ in batch])
        assert not result.rejected
        stream_time = max(t for t, _ in batch) - api.settings.allowed_lateness
        changes = Changes(merges=tuple(result.intervals), stream_time=stream_time)
        await api.store.commit_batch(GROUP, changes, [], with_rules(pipeline.rules, result.unclassified_rules))
    await api.store.commit_batch(GROUP, Changes(stream_time=END), [], pipeline.rules)  # a quiet topic moves on


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_settings(tmp_path, cluster="prod")) as harness:
        yield harness


async def listed(api: Harness, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = await api.client.get(
            "/v1/incidents", params={**params, "limit": 100, **({"cursor": cursor} if cursor else {})}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        out += body["items"]
        if (cursor := body["next_cursor"]) is None:
            return out


async def test_istiod_cut_off_from_the_api_server_is_one_open_root_cause_of_the_proxies_trouble(api: Harness) -> None:
    await ingest(api, istiod_down=True)
    everything = await listed(api)
    proxy_incidents = [i for i in everything if i["key"]["namespace"] in NAMESPACES]
    # 3 kinds of line x 25 workloads, each incident a workload's two pods.
    assert {i["rule"] for i in proxy_incidents} == {
        "proxy-not-ready",
        "proxy-xds-stream-closed",
        "access-upstream-no-healthy",
    }
    assert len(proxy_incidents) == 75

    roots = await listed(api, view="roots", status="open")
    assert len(roots) == 1
    (root,) = roots
    assert root["rule"] == "istiod-apiserver-unreachable" and root["key"]["namespace"] == "istio-system"
    assert root["status"] == "open"  # alone, 4 minutes is inside its 5-minute transient window
    assert root["affected"] == {"incidents": 75, "workloads": 25, "pods": 50}
    assert {i["caused_by"] for i in proxy_incidents} == {root["id"]}
    assert await listed(api, view="roots") == roots  # nothing else stands alone

    detail = (await api.client.get(f"/v1/incidents/{root['id']}")).json()
    assert sorted(s["id"] for s in detail["symptoms"]) == sorted(i["id"] for i in proxy_incidents)
    symptom = (await api.client.get(f"/v1/incidents/{proxy_incidents[0]['id']}")).json()
    assert symptom["caused_by"] == root["id"]


async def test_the_same_proxy_lines_with_a_healthy_istiod_stand_alone(api: Harness) -> None:
    await ingest(api, istiod_down=False)
    everything = await listed(api)
    assert len(everything) == 75
    assert all(i["caused_by"] is None and i["affected"] is None for i in everything)
    assert len(await listed(api, view="roots")) == 75
    open_now = await listed(api, view="roots", status="open")
    assert open_now and {i["rule"] for i in open_now} <= {i["rule"] for i in everything}


@pytest.mark.integration
def test_the_scenario_through_the_broker_and_serve(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    sqlite_url: str,
    group: str,
) -> None:
    t0 = float(int(time.time()) - 300)  # recent: the proxies' lines are still inside their windows when read
    messages = [Message(value, key=b"k%d" % (i % 7)) for i, (_, value) in enumerate(records(True, t0))]
    topic = create_topic(broker.bootstrap, partitions=3, prefix="causes")
    produced = produce(broker.bootstrap, topic, messages, codec="lz4")
    service = services.spawn(
        bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=sqlite_url, cluster="prod"
    )
    wait_consumed(open_view(sqlite_url), group, topic, produced.ends, [service])

    response = service.get("/v1/incidents?view=roots&status=open&limit=100", 10.0)
    assert response is not None and response.status_code == 200, response
    roots = response.json()["items"]
    assert [(r["rule"], r["key"]["namespace"]) for r in roots] == [("istiod-apiserver-unreachable", "istio-system")]
    assert roots[0]["affected"] == {"incidents": 75, "workloads": 25, "pods": 50}
    detail = service.get(f"/v1/incidents/{roots[0]['id']}", 10.0)
    assert detail is not None and len(detail.json()["symptoms"]) == 75
    assert service.alive()
