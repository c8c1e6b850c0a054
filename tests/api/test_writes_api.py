"""Write endpoints (ack, silences, reload): bearer auth, and what they change; body limits and CORS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from analyzer.service import api_for
from tests.api.support import STREAM_TIME, TOKEN, WALL, Harness, auth, interval, make_settings, running

WRITES = [
    ("POST", "/v1/incidents/{id}/ack", None),
    ("POST", "/v1/silences", {"rule": "proxy-not-ready", "duration": "1h"}),
    ("POST", "/v1/rules/reload", None),
]

INCIDENT = interval("access-upstream-connect-failure", namespace="shop", first_seen=STREAM_TIME - 100)
OTHER = interval("istiod-rbac-forbidden", namespace="istio-system", workload="istiod", first_seen=STREAM_TIME - 50)


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def send(client: httpx.AsyncClient, method: str, path: str, body: object, **kw: object) -> httpx.Response:
    return await client.request(method, path.format(id=INCIDENT.id), json=body, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def no_token(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_settings(tmp_path, api_token=None)) as harness:
        await harness.commit(INCIDENT)
        yield harness


@pytest.fixture
async def seeded(api: Harness) -> Harness:
    await api.commit(INCIDENT, OTHER)
    return api


# -- auth -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_without_a_configured_token_writes_are_disabled_not_open(
    no_token: Harness, method: str, path: str, body: object
) -> None:
    for headers in ({}, auth("anything"), auth("")):
        response = await send(no_token.client, method, path, body, headers=headers)
        assert response.status_code == 403, response.text
        assert "disabled" in response.json()["detail"]
    item = (await no_token.client.get("/v1/incidents")).json()["items"][0]
    assert item["acked"] is False


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_missing_token_is_401_with_a_bearer_challenge(
    seeded: Harness, method: str, path: str, body: object
) -> None:
    for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}):
        response = await send(seeded.client, method, path, body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_wrong_token_is_403(seeded: Harness, method: str, path: str, body: object) -> None:
    for token in ("nope", TOKEN + "x", TOKEN[:-1], TOKEN.upper()):
        response = await send(seeded.client, method, path, body, headers=auth(token))
        assert response.status_code == 403, response.text
        assert "invalid bearer token" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_right_token_is_admitted(seeded: Harness, method: str, path: str, body: object) -> None:
    response = await send(seeded.client, method, path, body, headers=auth())
    assert response.status_code in (200, 201), response.text


async def test_reads_need_no_token(seeded: Harness) -> None:
    for path in ("/v1/incidents", f"/v1/incidents/{INCIDENT.id}", "/v1/silences", "/v1/rules", "/healthz"):
        assert (await seeded.client.get(path)).status_code == 200, path


async def test_the_token_is_never_logged(seeded: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    await seeded.client.post(f"/v1/incidents/{INCIDENT.id}/ack", headers=auth())
    await seeded.client.post(f"/v1/incidents/{INCIDENT.id}/ack", headers=auth(TOKEN + "-wrong"))
    await seeded.client.post("/v1/silences", json={"rule": "x", "duration": "1h"}, headers=auth())
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err


# -- ack ------------------------------------------------------------------------------------------------------


async def test_ack_marks_the_incident_and_keeps_it_listed(seeded: Harness) -> None:
    response = await seeded.client.post(
        f"/v1/incidents/{INCIDENT.id}/ack", json={"by": "alice", "comment": "on it"}, headers=auth()
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == INCIDENT.id and body["acked"] is True and body["acked_by"] == "alice"
    assert body["acked_at"] == rfc3339(WALL)
    detail = (await seeded.client.get(f"/v1/incidents/{INCIDENT.id}")).json()
    assert detail["acked"] is True and detail["count"] == INCIDENT.count
    listed = {i["id"]: i["acked"] for i in (await seeded.client.get("/v1/incidents")).json()["items"]}
    assert listed == {INCIDENT.id: True, OTHER.id: False}


async def test_ack_without_a_body_names_the_token_holder(seeded: Harness) -> None:
    body = (await seeded.client.post(f"/v1/incidents/{OTHER.id}/ack", headers=auth())).json()
    assert body["acked"] is True and body["acked_by"] == "api-token"


async def test_ack_of_an_unknown_incident_is_404(seeded: Harness) -> None:
    response = await seeded.client.post("/v1/incidents/ffffffffffffffffffff/ack", headers=auth())
    assert response.status_code == 404
    assert "ffffffffffffffffffff" in response.json()["detail"]


@pytest.mark.parametrize("body", [{"by": ""}, {"unknown": 1}, {"comment": "x" * 2001}, [1, 2]])
async def test_bad_ack_bodies_are_422(seeded: Harness, body: object) -> None:
    response = await seeded.client.post(f"/v1/incidents/{INCIDENT.id}/ack", json=body, headers=auth())
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith("invalid request: request body")


# -- silences -------------------------------------------------------------------------------------------------


async def test_silence_marks_matching_incidents_which_still_count(seeded: Harness) -> None:
    request = {"rule": INCIDENT.rule_id, "namespace": "shop", "duration": "2h", "comment": "deploy", "by": "bob"}
    response = await seeded.client.post("/v1/silences", json=request, headers=auth())
    assert response.status_code == 201, response.text
    silence = response.json()
    assert silence["expires_at"] == rfc3339(WALL + 7200)
    assert (silence["rule"], silence["namespace"], silence["cluster"], silence["workload"]) == (
        INCIDENT.rule_id,
        "shop",
        None,
        None,
    )
    assert silence["created_by"] == "bob" and silence["comment"] == "deploy" and silence["id"]

    listed = (await seeded.client.get("/v1/silences")).json()["items"]
    assert [s["id"] for s in listed] == [silence["id"]]

    items = {i["id"]: i for i in (await seeded.client.get("/v1/incidents")).json()["items"]}
    assert items[INCIDENT.id]["silenced"] is True and items[OTHER.id]["silenced"] is False
    assert items[INCIDENT.id]["count"] == INCIDENT.count  # silenced, still listed and counted
    detail = (await seeded.client.get(f"/v1/incidents/{INCIDENT.id}")).json()
    assert detail["silenced"] is True


async def test_silence_matchers_must_all_match(seeded: Harness) -> None:
    request = {"rule": INCIDENT.rule_id, "namespace": "elsewhere", "duration": "1h"}
    assert (await seeded.client.post("/v1/silences", json=request, headers=auth())).status_code == 201
    items = (await seeded.client.get("/v1/incidents")).json()["items"]
    assert not any(i["silenced"] for i in items)


async def test_silence_expires_by_the_wall_clock(seeded: Harness) -> None:
    request = {"workload": "istiod", "expires_at": rfc3339(WALL + 10)}
    assert (await seeded.client.post("/v1/silences", json=request, headers=auth())).status_code == 201
    assert (await seeded.client.get(f"/v1/incidents/{OTHER.id}")).json()["silenced"] is True

    later = api_for(seeded.service, wall=lambda: WALL + 20)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=later), base_url="http://analyzer") as client:
        assert (await client.get(f"/v1/incidents/{OTHER.id}")).json()["silenced"] is False
        assert (await client.get("/v1/silences")).json()["items"] == []


async def test_silence_accepts_epoch_seconds(seeded: Harness) -> None:
    request = {"cluster": "prod", "expires_at": WALL + 3600}
    response = await seeded.client.post("/v1/silences", json=request, headers=auth())
    assert response.status_code == 201
    assert response.json()["expires_at"] == rfc3339(WALL + 3600)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"duration": "1h"}, "at least one matcher"),
        ({"rule": "x"}, "exactly one of expires_at and duration"),
        ({"rule": "x", "duration": "1h", "expires_at": WALL + 60}, "exactly one"),
        ({"rule": "x", "duration": "soon"}, "'duration'"),
        ({"rule": "x", "duration": "0s"}, "'duration'"),
        ({"rule": "x", "duration": "400d"}, "'duration'"),
        ({"rule": "x", "expires_at": WALL - 1}, "already be expired"),
        ({"rule": "x", "expires_at": "next week"}, "'expires_at'"),
        ({"rule": "x", "expires_at": 1e300}, "'expires_at'"),
        ({"rule": "", "duration": "1h"}, "'rule'"),
        ({"rule": "x", "duration": "1h", "color": "red"}, "'color'"),
    ],
)
async def test_bad_silences_are_422(seeded: Harness, body: dict[str, object], field: str) -> None:
    response = await seeded.client.post("/v1/silences", json=body, headers=auth())
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]
    assert (await seeded.client.get("/v1/silences")).json()["items"] == []


# -- request size, CORS ---------------------------------------------------------------------------------------


async def test_large_bodies_are_413(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, max_body_bytes=1024)) as h:
        big = {"rule": "x", "duration": "1h", "comment": "y" * 2000}
        response = await h.client.post("/v1/silences", json=big, headers=auth())
        assert response.status_code == 413
        assert "1024" in response.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"rule": "x", "duration": "1h", "comment": "'
            for _ in range(40):
                yield b"z" * 100
            yield b'"}'

        headers = {**auth(), "Content-Type": "application/json"}
        response = await h.client.post("/v1/silences", content=chunks(), headers=headers)
        assert response.status_code == 413, response.text
        assert (await h.client.get("/v1/silences")).json()["items"] == []

        small = {"rule": "x", "duration": "1h", "comment": "y" * 100}
        assert (await h.client.post("/v1/silences", json=small, headers=auth())).status_code == 201


async def test_cors_is_off_by_default(api: Harness) -> None:
    origin = {"Origin": "https://grafana.example"}
    response = await api.client.get("/v1/incidents", headers=origin)
    assert "access-control-allow-origin" not in response.headers
    preflight = await api.client.options("/v1/incidents", headers={**origin, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_only_the_configured_origins(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, cors_origins=("https://grafana.example",))) as h:
        allowed = await h.client.get("/v1/incidents", headers={"Origin": "https://grafana.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://grafana.example"
        other = await h.client.get("/v1/incidents", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
