"""GET /v1/incidents/stream: an id on every event and Last-Event-ID resume (only what changed since), a cap on
concurrent streams (503 beyond it), a minimum poll interval. On SQLite and PostgreSQL, over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from analyzer.store import Silence
from tests.api.support import STREAM_TIME, WALL, Harness, auth, interval, make_settings, running
from tests.api.test_stream_api import GUARD, A, B, C, Event, Reader, parse_events, serving, wait_until
from tests.conftest import pg_schema

STORE_TIMEOUT = 1.0  # resume reaches back store_timeout + 1 s (a write stamped before its commit): kept short
REACH = STORE_TIMEOUT + 1.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with pg_schema(request.getfixturevalue("pg_dsn")) as url:
        yield url


@pytest.fixture
async def api(tmp_path: Path, store_url: str) -> AsyncIterator[Harness]:
    settings = make_settings(tmp_path, store_url=store_url, store_timeout=STORE_TIMEOUT, max_streams=2)
    async with running(settings) as harness:
        yield harness


def event_ids(text: str) -> list[str | None]:
    ids: list[str | None] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if block.strip() and not block.startswith(":"):
            ids.append(next((line[4:] for line in block.split("\n") if line.startswith("id: ")), None))
    return ids


async def once(api: Harness, last_event_id: str | None = None) -> tuple[list[Event], list[str | None]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    response = await api.client.get("/v1/incidents/stream", params={"once": "true"}, headers=headers)
    assert response.status_code == 200, response.text
    return parse_events(response.text), event_ids(response.text)


def incident_ids(events: list[Event]) -> list[str]:
    return [json.loads(e.data or "")["id"] for e in events if e.event == "incident"]


async def test_every_event_has_an_id_and_a_resumed_stream_sends_only_what_changed(api: Harness) -> None:
    await api.commit(A, B, C)
    await asyncio.sleep(REACH)  # these writes are older than the reach-back of what follows
    events, ids = await once(api)
    assert incident_ids(events) == [A.id, B.id, C.id]
    # Every event has an id; only the last names this poll (one cut off mid-poll gets the rest again).
    assert ids[:-1] == ["0", "0"] and ids[-1] not in (None, "0")
    position = ids[-1]
    assert position is not None

    assert await once(api, position) == ([], [])  # nothing changed since: nothing sent

    # A grows (a later batch), B is acknowledged; C does not change.
    await api.commit(replace(interval(A.rule_id, first_seen=A.last_seen + 5, count=2), key=A.key, pods=A.pods))
    assert (await api.client.post(f"/v1/incidents/{B.id}/ack", json={"by": "bob"}, headers=auth())).status_code == 200
    events, ids = await once(api, position)
    got = {json.loads(e.data or "")["id"]: json.loads(e.data or "") for e in events}
    assert set(got) == {A.id, B.id}
    assert got[A.id]["count"] == A.count + 2 and got[B.id]["acked"] is True
    listed = {i["id"]: i for i in (await api.client.get("/v1/incidents")).json()["items"]}
    assert all(item == listed[i] for i, item in got.items())  # the same items as the list
    assert all(i is not None for i in ids)

    # An id that is not ours starts afresh: everything.
    events, _ = await once(api, "not-an-id-of-ours")
    assert sorted(incident_ids(events)) == sorted([A.id, B.id, C.id])


async def test_resume_sends_status_changes_silences_and_merges(api: Harness) -> None:
    await api.commit(A, B, C)
    await asyncio.sleep(REACH)
    events, ids = await once(api)
    before = {json.loads(e.data or "")["id"]: json.loads(e.data or "")["status"] for e in events}
    position = ids[-1]
    assert position is not None and before[C.id] == "open"

    # Stream time moves past C's resolve_after (derived status: no row is written): C comes back resolved,
    # with every other incident whose status changed, and none whose status did not.
    c_resolves = C.last_seen + api.service.holder.catalogue.by_id()[C.rule_id].resolve_after + 1
    await api.commit(stream_time=c_resolves)
    api.service._stream_time = None  # the API rereads stream time at most once a second; not a second later
    events, ids = await once(api, position)
    after = {json.loads(e.data or "")["id"]: json.loads(e.data or "")["status"] for e in events}
    assert after[C.id] == "resolved"
    assert all(status != before[i] for i, status in after.items())
    position = ids[-1]
    assert position is not None

    # A silence is added: any silenced flag may have changed, so everything comes again.
    await api.store.add_silence(Silence("", B.rule_id, None, None, None, WALL + 3600, "test", "muted"))
    events, ids = await once(api, position)
    items = {json.loads(e.data or "")["id"]: json.loads(e.data or "") for e in events}
    assert set(items) == {A.id, B.id, C.id} and items[B.id]["silenced"] is True
    position = ids[-1]
    assert position is not None

    # A late line bridges two incidents of one key: the resumed stream says which id was merged into which.
    rule = A.rule_id
    ra = api.service.holder.catalogue.by_id()[rule].resolve_after
    left = interval(rule, workload="bridged", first_seen=STREAM_TIME - 4 * ra, count=1)
    right = interval(rule, workload="bridged", first_seen=STREAM_TIME - 4 * ra + 2 * ra, count=1)
    await api.commit(left, right, stream_time=c_resolves)
    await asyncio.sleep(REACH)
    events, ids = await once(api, position)
    position = ids[-1]
    assert position is not None
    bridge = interval(rule, workload="bridged", first_seen=STREAM_TIME - 4 * ra + ra, count=1)
    await api.commit(bridge, stream_time=c_resolves)
    events, _ = await once(api, position)
    merged = [json.loads(e.data or "") for e in events if e.event == "merged"]
    assert merged == [{"id": right.id, "merged_into": left.id}]
    assert incident_ids(events) == [left.id]


async def test_streams_beyond_the_cap_get_503_until_one_closes(api: Harness) -> None:
    async with serving(api) as url, httpx.AsyncClient(base_url=url, timeout=GUARD) as client:
        async with (
            client.stream("GET", "/v1/incidents/stream") as first,
            client.stream("GET", "/v1/incidents/stream") as second,
        ):
            assert (first.status_code, second.status_code) == (200, 200)
            refused = await client.get("/v1/incidents/stream")
            assert refused.status_code == 503
            assert "ANALYZER_MAX_STREAMS" in refused.json()["detail"] and int(refused.headers["Retry-After"]) > 0
            assert api.service.registry.get_sample_value("analyzer_sse_streams") == 2
            assert api.service.registry.get_sample_value("analyzer_sse_streams_refused_total") == 1
        ctx = api.app.state.api
        await wait_until(lambda: ctx.active_streams == 0)
        again = await client.get("/v1/incidents/stream", params={"once": "true"})
        assert again.status_code == 200
    schema = (await api.client.get("/openapi.json")).json()
    responses = schema["paths"]["/v1/incidents/stream"]["get"]["responses"]
    assert responses["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    parameters = {p["name"] for p in schema["paths"]["/v1/incidents/stream"]["get"]["parameters"]}
    assert "last-event-id" in {p.lower() for p in parameters}


async def test_a_stream_polls_no_more_often_than_the_minimum_interval(api: Harness) -> None:
    """interval=0.05 asks for 20 polls a second; the store is polled once a second (the default minimum)."""
    assert api.settings.stream_min_interval == 1.0
    await api.commit(A)
    async with (
        serving(api) as url,
        httpx.AsyncClient(base_url=url, timeout=GUARD) as client,
        client.stream("GET", "/v1/incidents/stream", params={"interval": "0.05", "keepalive": "0.1"}) as response,
    ):
        reader = Reader(response)
        await reader.next_incident()
        polled = time.monotonic()  # the first poll ended just now
        await api.commit(B)  # right after a poll: the next poll is a full interval away
        assert (await reader.next_incident())["id"] == B.id
        assert time.monotonic() - polled >= 0.9 * api.settings.stream_min_interval
