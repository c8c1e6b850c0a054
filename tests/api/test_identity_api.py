"""Stable identity through the HTTP API, on SQLite and PostgreSQL: an incident keeps its id, its ack and its ack
comment however it grows; a late line that bridges two incidents keeps the older id, and the other id still
resolves (GET) and is announced on the stream as merged into the survivor."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from analyzer.types import Interval
from tests.api.support import STREAM_TIME, Harness, auth, interval, make_settings, running
from tests.api.test_stream_api import GUARD, Reader, serving
from tests.conftest import pg_schema

RULE = "access-upstream-connect-failure"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with pg_schema(request.getfixturevalue("pg_dsn")) as url:
        yield url


@pytest.fixture
async def api(tmp_path: Path, store_url: str) -> AsyncIterator[Harness]:
    async with running(make_settings(tmp_path, store_url=store_url)) as harness:
        yield harness


def resolve_after(api: Harness) -> float:
    return api.service.holder.catalogue.by_id()[RULE].resolve_after


def more_of(first: Interval, at: float, count: int) -> Interval:
    """More occurrences of the same rule and key, as a later batch brings them."""
    return replace(interval(RULE, first_seen=at, count=count), key=first.key, pods=first.pods)


async def detail(api: Harness, incident_id: str) -> dict[str, object]:
    response = await api.client.get(f"/v1/incidents/{incident_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_an_ack_and_its_comment_survive_more_occurrences(api: Harness) -> None:
    """The reported bug: ack, then the same rule and key recur; the ack was gone (count 6, acked false)."""
    first = interval(RULE, first_seen=STREAM_TIME - 300, count=3)
    await api.commit(first)
    acked = await api.client.post(
        f"/v1/incidents/{first.id}/ack", json={"by": "alice", "comment": "known, fix rolling out"}, headers=auth()
    )
    assert acked.status_code == 200, acked.text
    assert acked.json()["ack_comment"] == "known, fix rolling out"

    await api.commit(more_of(first, STREAM_TIME - 200, 3))  # recurring: merges into it
    await api.commit(more_of(first, STREAM_TIME - 400, 2))  # a late line moves its start earlier: same id
    body = await detail(api, first.id)
    assert (body["id"], body["count"]) == (first.id, 8)
    assert (body["acked"], body["acked_by"], body["ack_comment"]) == (True, "alice", "known, fix rolling out")
    items = (await api.client.get("/v1/incidents")).json()["items"]
    assert [(i["id"], i["count"], i["acked"]) for i in items] == [(first.id, 8, True)]


async def test_a_bridged_incident_resolves_to_the_older_one(api: Harness) -> None:
    gap = resolve_after(api)
    older = interval(RULE, first_seen=STREAM_TIME - 3 * gap, count=2)
    newer = more_of(older, STREAM_TIME - gap, 3)  # 2 x resolve_after later: its own incident
    await api.commit(newer)
    await api.commit(older)
    await api.client.post(f"/v1/incidents/{newer.id}/ack", json={"by": "bob", "comment": "paged"}, headers=auth())
    assert {i["id"] for i in (await api.client.get("/v1/incidents")).json()["items"]} == {older.id, newer.id}

    await api.commit(more_of(older, STREAM_TIME - 2 * gap, 1))  # within resolve_after of both
    items = (await api.client.get("/v1/incidents")).json()["items"]
    assert [(i["id"], i["count"]) for i in items] == [(older.id, 6)]
    via_alias = await detail(api, newer.id)
    assert via_alias["id"] == older.id and via_alias["count"] == 6
    assert (via_alias["acked_by"], via_alias["ack_comment"]) == ("bob", "paged")  # the ack came along

    # The alias is a full handle: acking through it acks the survivor.
    response = await api.client.post(f"/v1/incidents/{newer.id}/ack", json={"by": "carol"}, headers=auth())
    assert response.status_code == 200 and response.json()["id"] == older.id
    body = await detail(api, older.id)
    assert (body["acked_by"], body["ack_comment"]) == ("carol", None)


async def test_the_stream_says_merged_into(api: Harness) -> None:
    gap = resolve_after(api)
    older = interval(RULE, first_seen=STREAM_TIME - 3 * gap, count=2)
    newer = more_of(older, STREAM_TIME - gap, 3)
    await api.commit(older, newer)
    async with (
        serving(api) as url,
        httpx.AsyncClient(base_url=url, timeout=GUARD) as client,
        client.stream("GET", "/v1/incidents/stream", params={"interval": "0.05"}) as response,
    ):
        reader = Reader(response)
        first = {str((await reader.next_incident())["id"]) for _ in range(2)}
        assert first == {older.id, newer.id}
        await api.commit(more_of(older, STREAM_TIME - 2 * gap, 1))
        events = []
        while not any(e.event == "merged" for e in events):
            events.append(await reader.next())
        merged = next(json.loads(e.data or "") for e in events if e.event == "merged")
        assert merged == {"id": newer.id, "merged_into": older.id}
        grown = [json.loads(e.data or "") for e in events if e.event == "incident"]
        assert [(g["id"], g["count"]) for g in grown] == [(older.id, 6)]
