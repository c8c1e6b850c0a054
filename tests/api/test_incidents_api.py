"""GET /v1/incidents and /v1/incidents/{id} over a real service (real catalogue, real SQLite store)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from analyzer.catalogue import load_catalogue
from analyzer.types import Interval
from tests.api.support import PATTERNS, STREAM_TIME, Harness, interval

CATALOGUE = load_catalogue(PATTERNS).by_id()
RULE_IDS = sorted(CATALOGUE)
BRT = timezone(timedelta(hours=-3))


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- pagination -----------------------------------------------------------------------------------------------


async def test_three_pages_over_120_incidents_have_no_duplicates_or_gaps(api: Harness) -> None:
    # Three incidents share each last_seen, so page boundaries fall inside ties (keyset needs the id too).
    made = [
        interval(
            RULE_IDS[i % len(RULE_IDS)],
            workload=f"wl-{i}",
            first_seen=STREAM_TIME - 5000 - i,
            last_seen=STREAM_TIME - 100 - (i // 3),
        )
        for i in range(120)
    ]
    await api.commit(*made)

    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 50}
        if cursor:
            params["cursor"] = cursor
        response = await api.client.get("/v1/incidents", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "pagination does not end"

    assert [len(p) for p in pages] == [50, 50, 20]
    ids = [item["id"] for page in pages for item in page]
    assert len(ids) == len(set(ids)) == 120
    assert set(ids) == {iv.id for iv in made}
    last_seen = [item["last_seen"] for page in pages for item in page]
    assert last_seen == sorted(last_seen, reverse=True)  # newest first across pages


async def test_default_page_size_is_50_and_limit_bounds_are_enforced(api: Harness) -> None:
    await api.commit(*(interval(RULE_IDS[0], workload=f"w{i}", first_seen=STREAM_TIME - 900 + i) for i in range(60)))
    body = (await api.client.get("/v1/incidents")).json()
    assert len(body["items"]) == 50 and body["next_cursor"]
    assert len((await api.client.get("/v1/incidents", params={"limit": 500})).json()["items"]) == 60
    for bad in (0, 501, -1, "many"):
        response = await api.client.get("/v1/incidents", params={"limit": bad})
        assert response.status_code == 422, bad
        assert "'limit'" in response.json()["message"]


# -- filters --------------------------------------------------------------------------------------------------

# Four incidents whose statuses follow from their rules' windows at STREAM_TIME (DESIGN.md, "Incidents"):
PENDING = interval(  # transient 5m, resolve 10m: 100 s old and seen 10 s ago -> still inside the window
    "access-upstream-connect-failure",
    namespace="shop",
    workload="checkout",
    pods=("checkout-7d9f8b6c5d-x2x4q",),
    first_seen=STREAM_TIME - 100,
    last_seen=STREAM_TIME - 10,
)
OPEN = interval(  # no transient window, seen 20 s ago -> open
    "istiod-rbac-forbidden",
    namespace="istio-system",
    workload="istiod",
    pods=("istiod-5c7f9b8d4-abcde",),
    container="discovery",
    first_seen=STREAM_TIME - 5000,
    last_seen=STREAM_TIME - 20,
)
SUPPRESSED = interval(  # transient 2m, lasted 10 s, quiet for 990 s > resolve 5m -> a suppressed transient
    "proxy-not-ready",
    namespace="shop",
    workload="cart",
    pods=("cart-6b8d9c7f5-q2w4e",),
    first_seen=STREAM_TIME - 1000,
    last_seen=STREAM_TIME - 990,
)
RESOLVED = interval(  # no window, quiet for 5000 s > resolve 15m -> resolved
    "istio-init-iptables-failure",
    namespace="pay",
    workload="payments",
    pods=("payments-0",),
    container="istio-init",
    first_seen=STREAM_TIME - 10000,
    last_seen=STREAM_TIME - 5000,
)
FOUR = {"pending": PENDING, "open": OPEN, "suppressed": SUPPRESSED, "resolved": RESOLVED}


async def ids_for(api: Harness, params: Mapping[str, str] | str) -> set[str]:
    response = await api.client.get("/v1/incidents", params=params)
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


def test_the_four_rules_have_the_windows_the_statuses_rely_on() -> None:
    pending, open_, suppressed, resolved = (CATALOGUE[iv.rule_id] for iv in (PENDING, OPEN, SUPPRESSED, RESOLVED))
    assert pending.transient is not None and pending.transient > 100 and pending.resolve_after > 10
    assert open_.transient is None and open_.resolve_after > 20
    assert suppressed.transient is not None and 10 < suppressed.transient <= 1000 and suppressed.resolve_after <= 990
    assert resolved.transient is None and resolved.resolve_after <= 5000


@pytest.fixture
async def four(api: Harness) -> Harness:
    await api.commit(PENDING, OPEN, SUPPRESSED, RESOLVED)
    return api


async def test_status_is_derived_at_stream_time(four: Harness) -> None:
    items = (await four.client.get("/v1/incidents")).json()["items"]
    assert {item["id"]: item["status"] for item in items} == {iv.id: status for status, iv in FOUR.items()}


@pytest.mark.parametrize("status", ["pending", "open", "suppressed", "resolved"])
async def test_filter_by_one_status(four: Harness, status: str) -> None:
    assert await ids_for(four, {"status": status}) == {FOUR[status].id}


async def test_status_is_repeatable_and_absent_means_all(four: Harness) -> None:
    assert await ids_for(four, "status=open&status=pending") == {OPEN.id, PENDING.id}
    assert await ids_for(four, {}) == {iv.id for iv in FOUR.values()}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"category": "upstream-errors"}, [PENDING]),
        ({"category": "sidecar-init"}, [RESOLVED]),
        ({"severity": "medium"}, [SUPPRESSED]),
        ({"severity": "high"}, [PENDING, OPEN, RESOLVED]),
        ({"rule": "istiod-rbac-forbidden"}, [OPEN]),
        ({"namespace": "shop"}, [PENDING, SUPPRESSED]),
        ({"workload": "cart"}, [SUPPRESSED]),
        ({"pod": "payments-0"}, [RESOLVED]),
        ({"pod": "payments"}, []),  # a pod filter is exact, not a prefix
        ({"cluster": "prod"}, [PENDING, OPEN, SUPPRESSED, RESOLVED]),
        ({"cluster": "staging"}, []),
        ({"since": rfc3339(STREAM_TIME - 15)}, [PENDING]),  # last seen at or after
        ({"since": str(STREAM_TIME - 20)}, [PENDING, OPEN]),  # epoch seconds, inclusive
        ({"until": rfc3339(STREAM_TIME - 4000)}, [OPEN, RESOLVED]),  # first seen at or before
        ({"until": datetime.fromtimestamp(STREAM_TIME - 10000, BRT).isoformat()}, [RESOLVED]),  # with an offset
        ({"since": rfc3339(STREAM_TIME - 995), "until": rfc3339(STREAM_TIME - 999)}, [SUPPRESSED, OPEN]),
        ({"namespace": "shop", "severity": "high"}, [PENDING]),
    ],
)
async def test_filters(four: Harness, params: dict[str, str], expected: list[Interval]) -> None:
    assert await ids_for(four, params) == {iv.id for iv in expected}


async def test_items_carry_title_key_times_and_flags(four: Harness) -> None:
    items = (await four.client.get("/v1/incidents", params={"rule": "istiod-rbac-forbidden"})).json()["items"]
    (item,) = items
    assert item["title"] == CATALOGUE["istiod-rbac-forbidden"].title
    assert item["category"] == "rbac-permissions" and item["severity"] == "high"
    assert item["key"] == {
        "cluster": "prod",
        "namespace": "istio-system",
        "workload": "istiod",
        "pods": ["istiod-5c7f9b8d4-abcde"],
    }
    assert item["first_seen"] == rfc3339(OPEN.first_seen)
    assert item["last_seen"] == rfc3339(OPEN.last_seen)
    assert item["count"] == OPEN.count
    assert item["acked"] is False and item["silenced"] is False


# -- bad parameters -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"status": "burning"}, "status"),
        ({"category": "dns"}, "category"),
        ({"severity": "urgent"}, "severity"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2024-02-30T00:00:00Z"}, "since"),
        ({"until": "2024-01-01T25:00:00Z"}, "until"),
        ({"until": "1e400"}, "until"),
        ({"since": "nan"}, "since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WzEsMl0"}, "cursor"),  # base64 of [1,2]: decodes, but is not ours
        ({"limit": "1.5"}, "limit"),
    ],
)
async def test_bad_parameters_are_422_with_a_message_naming_them(
    four: Harness, params: dict[str, str], name: str
) -> None:
    response = await four.client.get("/v1/incidents", params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert f"'{name}" in body["message"]
    assert any(error["loc"][:2] == ["query", name] for error in body["detail"])


# -- detail ---------------------------------------------------------------------------------------------------


async def test_detail_has_evidence_remediation_references_and_commands(four: Harness) -> None:
    response = await four.client.get(f"/v1/incidents/{PENDING.id}")
    assert response.status_code == 200
    body = response.json()
    rule = CATALOGUE[PENDING.rule_id]
    assert body["id"] == PENDING.id and body["status"] == "pending"
    assert [e["line"] for e in body["evidence"]] == [e.line for e in (*PENDING.head, *PENDING.tail)]
    assert {(e["pod"], e["container"]) for e in body["evidence"]} == {("checkout-7d9f8b6c5d-x2x4q", "istio-proxy")}
    assert body["evidence"][0]["time"] == rfc3339(PENDING.first_seen)
    assert body["language"] == "en" and body["remediation"] == rule.remediation["en"]
    assert body["references"] == list(rule.references)
    assert body["transient_seconds"] == rule.transient and body["resolve_after_seconds"] == rule.resolve_after
    commands = [shlex.split(c) for c in body["commands"]]
    assert ["kubectl", "-n", "shop", "describe", "pod", "checkout-7d9f8b6c5d-x2x4q"] in commands
    logs = [c for c in commands if c[:4] == ["kubectl", "-n", "shop", "logs"]]
    assert logs and logs[0][4:7] == ["checkout-7d9f8b6c5d-x2x4q", "-c", "istio-proxy"]
    assert logs[0][7] == "--since-time=" + rfc3339(PENDING.first_seen - 60)


async def test_istiod_detail_points_at_istiod_logs_and_proxy_status(four: Harness) -> None:
    body = (await four.client.get(f"/v1/incidents/{OPEN.id}")).json()
    commands = [shlex.split(c) for c in body["commands"]]
    assert any(c[:5] == ["kubectl", "-n", "istio-system", "logs", "deploy/istiod"] for c in commands)
    assert ["kubectl", "-n", "istio-system", "describe", "pod", "istiod-5c7f9b8d4-abcde"] in commands


async def test_commands_leave_out_names_that_are_not_kubernetes_names(api: Harness) -> None:
    pod = "web-1; rm -rf / #"
    namespace = "ns $(reboot)"
    await api.commit(interval("proxy-envoy-crashed", namespace=namespace, pods=(pod,), first_seen=STREAM_TIME - 30))
    (item,) = (await api.client.get("/v1/incidents")).json()["items"]
    body = (await api.client.get(f"/v1/incidents/{item['id']}")).json()
    assert body["commands"], "mesh-wide commands remain"
    for command in body["commands"]:
        assert "reboot" not in command and "rm -rf" not in command, command


async def test_commands_for_a_crashed_proxy(api: Harness) -> None:
    pod = "web-7d9f8b6c5d-x2x4q"
    await api.commit(interval("proxy-envoy-crashed", namespace="shop", pods=(pod,), first_seen=STREAM_TIME - 30))
    (item,) = (await api.client.get("/v1/incidents")).json()["items"]
    body = (await api.client.get(f"/v1/incidents/{item['id']}")).json()
    split = [shlex.split(c) for c in body["commands"]]
    assert ["kubectl", "-n", "shop", "describe", "pod", pod] in split
    # proxy-crash: also the previous container's logs
    assert any(c[-1] == "--previous" and pod in c for c in split)


async def test_unknown_incident_is_404_with_a_message(api: Harness) -> None:
    response = await api.client.get("/v1/incidents/0123456789abcdef0123")
    assert response.status_code == 404
    assert "0123456789abcdef0123" in response.json()["detail"]


# -- language -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        ({}, None, "en"),
        ({"lang": "en"}, None, "en"),
        ({"lang": "pt-BR"}, None, "pt-BR"),
        ({"lang": "pt-br"}, None, "pt-BR"),
        ({"lang": "fr"}, None, "en"),  # unknown: fall back to English
        ({}, "pt-BR", "pt-BR"),
        ({}, "pt-BR,pt;q=0.9,en;q=0.8", "pt-BR"),
        ({}, "en;q=0.4, pt-BR;q=0.8", "pt-BR"),  # q-values, not order, decide
        ({}, "pt-BR;q=0.2, en;q=0.9", "en"),
        ({}, "pt", "pt-BR"),
        ({}, "pt-PT", "pt-BR"),  # same primary language
        ({}, "fr-FR, de;q=0.9", "en"),  # nothing we have
        ({}, "pt-BR;q=0, *;q=0.1", "en"),  # q=0: not acceptable
        ({}, "en-GB;q=0.5, pt-BR;q=0.5", "en"),  # equal q: the first listed
        ({"lang": "en"}, "pt-BR", "en"),  # ?lang= wins over the header
        ({"lang": "pt-BR"}, "en", "pt-BR"),
        ({}, ";;;q=abc, , pt-BR;q=zz", "en"),  # garbage is ignored, not an error
    ],
)
async def test_remediation_language(four: Harness, query: dict[str, str], accept: str | None, expected: str) -> None:
    headers = {"Accept-Language": accept} if accept is not None else {}
    response = await four.client.get(f"/v1/incidents/{OPEN.id}", params=query, headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["language"] == expected
    assert body["remediation"] == CATALOGUE[OPEN.rule_id].remediation[expected]
