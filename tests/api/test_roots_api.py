"""Causes and symptoms over HTTP: caused_by and affected on /v1/incidents (view=all|roots), a root's symptoms
on its detail, a root open through its symptoms, and `symptom` events on the stream."""

from __future__ import annotations

import json
from typing import Any

from analyzer.store.causes import open_roots
from tests.api.support import STREAM_TIME, Harness, interval
from tests.api.test_stream_api import parse_events

# istiod cut off from the API server for 4 minutes: past its window start, shorter than its 5m transient window,
# so on its own a suppressed transient.
ROOT = interval(
    "istiod-apiserver-unreachable",
    namespace="istio-system",
    workload="istiod",
    pods=("istiod-5d9c7b7d8-abcde",),
    container="discovery",
    first_seen=STREAM_TIME - 400,
    last_seen=STREAM_TIME - 160,
    line="dial tcp 10.96.0.1:443: connect: connection refused",
)
# Proxies meanwhile: recurring past their own windows (open).
NOT_READY = interval(
    "proxy-not-ready",
    namespace="shop",
    workload="cart",
    pods=("cart-7d9f8b6c5d-aaaaa", "cart-7d9f8b6c5d-bbbbb"),
    first_seen=STREAM_TIME - 380,
    last_seen=STREAM_TIME - 10,
)
STREAM_CLOSED = interval(
    "proxy-xds-stream-closed",
    namespace="pay",
    workload="ledger",
    pods=("ledger-6c8d7f9b5-ccccc",),
    first_seen=STREAM_TIME - 300,
    last_seen=STREAM_TIME - 20,
)
NO_HEALTHY = interval(
    "access-upstream-no-healthy",
    namespace="shop",
    workload="cart",
    pods=("cart-7d9f8b6c5d-aaaaa",),
    first_seen=STREAM_TIME - 200,
    last_seen=STREAM_TIME - 30,
)
# Not symptoms: before the root's window (+2m slack), in another cluster, or of a rule it does not cause.
EARLIER = interval(
    "proxy-not-ready", namespace="web", workload="front", first_seen=STREAM_TIME - 1000, last_seen=STREAM_TIME - 5
)
ELSEWHERE = interval(
    "proxy-not-ready", cluster="dev", workload="cart", first_seen=STREAM_TIME - 300, last_seen=STREAM_TIME - 5
)
UNRELATED = interval("istiod-rbac-forbidden", namespace="istio-system", workload="istiod", first_seen=STREAM_TIME - 300)
SYMPTOMS = (NOT_READY, STREAM_CLOSED, NO_HEALTHY)
STANDALONE = (EARLIER, ELSEWHERE, UNRELATED)


async def items(api: Harness, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await api.client.get("/v1/incidents", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        out.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out


async def test_all_lists_every_incident_with_caused_by_and_the_root_with_what_it_affects(api: Harness) -> None:
    await api.commit(ROOT, *SYMPTOMS, *STANDALONE)
    listed = {i["id"]: i for i in await items(api)}
    assert set(listed) == {i.id for i in (ROOT, *SYMPTOMS, *STANDALONE)}
    for symptom in SYMPTOMS:
        assert listed[symptom.id]["caused_by"] == ROOT.id
        assert listed[symptom.id]["affected"] is None
    for other in STANDALONE:
        assert listed[other.id]["caused_by"] is None and listed[other.id]["affected"] is None
    root = listed[ROOT.id]
    assert root["caused_by"] is None
    assert root["affected"] == {"incidents": 3, "workloads": 2, "pods": 3}
    # Alone a suppressed transient; its symptoms recurring past their windows make the group open.
    assert root["status"] == "open"
    assert listed[NOT_READY.id]["status"] == "open"


async def test_roots_leaves_symptoms_out_page_by_page(api: Harness) -> None:
    await api.commit(ROOT, *SYMPTOMS, *STANDALONE)
    expected = {ROOT.id, *(i.id for i in STANDALONE)}
    assert {i["id"] for i in await items(api, view="roots")} == expected
    paged = await items(api, view="roots", limit=1)
    assert [i["id"] for i in paged] == [i["id"] for i in await items(api, view="roots")]
    assert len(paged) == len(expected)
    assert (await api.client.get("/v1/incidents", params={"view": "symptoms"})).status_code == 422


async def test_status_filters_follow_the_group_status(api: Harness) -> None:
    await api.commit(ROOT, *SYMPTOMS)
    assert ROOT.id in {i["id"] for i in await items(api, status="open", view="roots")}
    assert ROOT.id in {i["id"] for i in await items(api, status="open", limit=1)}
    assert ROOT.id not in {i["id"] for i in await items(api, status="suppressed")}
    # Filters other than status still apply to a root found through its symptoms.
    assert await items(api, status="open", view="roots", namespace="shop") == []


async def test_a_root_lists_its_symptoms_and_a_symptom_names_its_root(api: Harness) -> None:
    await api.commit(ROOT, *SYMPTOMS, *STANDALONE)
    root = (await api.client.get(f"/v1/incidents/{ROOT.id}")).json()
    assert [s["id"] for s in root["symptoms"]] == [NOT_READY.id, STREAM_CLOSED.id, NO_HEALTHY.id]  # earliest first
    assert all(s["caused_by"] == ROOT.id for s in root["symptoms"])
    assert root["affected"]["incidents"] == 3
    symptom = (await api.client.get(f"/v1/incidents/{STREAM_CLOSED.id}")).json()
    assert symptom["caused_by"] == ROOT.id and symptom["symptoms"] == []


async def test_without_the_cause_the_same_incidents_stand_alone(api: Harness) -> None:
    await api.commit(*SYMPTOMS)
    listed = await items(api, view="roots")
    assert {i["id"] for i in listed} == {i.id for i in SYMPTOMS}
    assert all(i["caused_by"] is None and i["affected"] is None for i in listed)


async def test_the_stream_says_when_an_incident_becomes_a_symptom(api: Harness) -> None:
    await api.commit(NOT_READY)
    first = await api.client.get("/v1/incidents/stream", params={"once": "true"})
    events = parse_events(first.text)
    assert [e.event for e in events] == ["incident"]
    last_id = [line for line in first.text.splitlines() if line.startswith("id:")][-1].removeprefix("id:").strip()
    await api.commit(ROOT)  # the cause arrives: the proxy incident becomes its symptom
    again = await api.client.get("/v1/incidents/stream", params={"once": "true"}, headers={"Last-Event-ID": last_id})
    events = parse_events(again.text)
    symptom = [json.loads(e.data or "") for e in events if e.event == "symptom"]
    assert symptom == [{"id": NOT_READY.id, "caused_by": ROOT.id}]
    sent = {json.loads(e.data or "")["id"]: json.loads(e.data or "") for e in events if e.event == "incident"}
    assert sent[NOT_READY.id]["caused_by"] == ROOT.id
    assert sent[ROOT.id]["affected"]["incidents"] == 1


async def test_open_roots_counts_each_open_group_once_by_its_root(api: Harness) -> None:
    await api.commit(ROOT, *SYMPTOMS, *STANDALONE)
    rows = await open_roots(api.store, api.service.holder.catalogue.by_id(), STREAM_TIME)
    # The root (open through its symptoms) once; its open symptoms not at all; the standalone ones each.
    assert rows == [
        ("apiserver-connectivity", "high", 1),
        ("proxy-readiness", "medium", 2),
        ("rbac-permissions", "high", 1),
    ]
    api.service.metrics.set_open_roots(rows)
    text = (await api.client.get("/metrics")).text
    assert 'analyzer_open_roots{category="apiserver-connectivity",severity="high"} 1.0' in text
    assert 'analyzer_open_roots{category="xds-config"' not in text and "pod=" not in text


async def test_open_roots_without_the_cause_counts_the_open_symptoms_themselves(api: Harness) -> None:
    await api.commit(*SYMPTOMS)  # only the not-ready one recurred past its transient window
    assert await open_roots(api.store, api.service.holder.catalogue.by_id(), STREAM_TIME) == [
        ("proxy-readiness", "medium", 1)
    ]


async def test_a_group_pages_with_its_most_severe_open_member(api: Harness) -> None:
    # A medium root (no ready istiod behind the webhooks) explaining a high symptom (the injection webhook
    # unreachable) is counted as high, so MeshIncidentOpen still fires for it.
    root = interval(
        "istiod-webhook-endpoint-not-ready", namespace="istio-system", workload="istiod", first_seen=STREAM_TIME - 900,
        last_seen=STREAM_TIME - 10,
    )  # fmt: skip
    symptom = interval(
        "injection-webhook-unreachable", workload="cart", first_seen=STREAM_TIME - 800, last_seen=STREAM_TIME - 5
    )
    await api.commit(root, symptom)
    rows = await open_roots(api.store, api.service.holder.catalogue.by_id(), STREAM_TIME)
    assert rows == [("injection", "high", 1)]


async def test_a_rule_shows_what_it_causes(api: Harness) -> None:
    body = (await api.client.get("/v1/rules/istiod-apiserver-unreachable")).json()
    assert body["causes"]["scope"] == "mesh" and "proxy-readiness" in body["causes"]["categories"]
    assert body["causes"]["slack_seconds"] == 120.0
    assert (await api.client.get("/v1/rules/proxy-not-ready")).json()["causes"] is None


async def test_a_new_stream_announces_the_symptoms_it_sends(api: Harness) -> None:
    await api.commit(ROOT, NOT_READY, EARLIER)
    events = parse_events((await api.client.get("/v1/incidents/stream", params={"once": "true"})).text)
    kinds = [e.event for e in events]
    assert kinds == ["incident"] * 3 + ["symptom"]  # after the incidents it names
    assert json.loads(events[-1].data or "") == {"id": NOT_READY.id, "caused_by": ROOT.id}


async def test_the_stream_filters_on_the_group_status_like_the_list(api: Harness) -> None:
    await api.commit(ROOT, *SYMPTOMS)
    response = await api.client.get("/v1/incidents/stream", params={"once": "true", "status": "open"})
    sent = [json.loads(e.data or "") for e in parse_events(response.text) if e.event == "incident"]
    assert {i["id"] for i in sent} == {i["id"] for i in await items(api, status="open")}
    assert ROOT.id in {i["id"] for i in sent}
