"""GET /v1/incidents/stream: server-sent events, in process (bounded) and over a real uvicorn socket (live)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import httpx
import pytest
import uvicorn

from analyzer.api.context import ApiContext
from tests.api.support import STREAM_TIME, Harness, interval

GUARD = 60.0  # only against a hang; nothing below depends on how fast things happen

A = interval("access-upstream-connect-failure", namespace="shop", workload="checkout", first_seen=STREAM_TIME - 300)
B = interval("proxy-not-ready", namespace="shop", workload="cart", first_seen=STREAM_TIME - 200)
C = interval("istiod-rbac-forbidden", namespace="istio-system", workload="istiod", first_seen=STREAM_TIME - 100)


@dataclass
class Event:
    event: str | None
    data: str | None
    comment: str | None


def parse_events(text: str) -> list[Event]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        data = fields.get("data")
        events.append(
            Event(
                event=fields.get("event", [None])[0],
                data="\n".join(data) if data else None,
                comment=fields.get("", [None])[0],
            )
        )
    return events


async def test_once_sends_the_current_incidents_oldest_first_and_ends(api: Harness) -> None:
    await api.commit(A, B, C)
    response = await api.client.get("/v1/incidents/stream", params={"once": "true"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    assert [e.event for e in events] == ["incident"] * 3
    items = [json.loads(e.data or "") for e in events]
    assert [i["id"] for i in items] == [A.id, B.id, C.id]
    listed = {i["id"]: i for i in (await api.client.get("/v1/incidents")).json()["items"]}
    assert all(item == listed[item["id"]] for item in items)  # same item as the list endpoint


async def test_stream_filters_like_the_list(api: Harness) -> None:
    await api.commit(A, B, C)
    response = await api.client.get("/v1/incidents/stream", params={"once": "true", "namespace": "shop"})
    ids = [json.loads(e.data or "")["id"] for e in parse_events(response.text)]
    assert ids == [A.id, B.id]
    response = await api.client.get("/v1/incidents/stream", params={"once": "true", "status": "resolved"})
    assert parse_events(response.text) == []


async def test_a_bounded_stream_ends_by_itself(api: Harness) -> None:
    await api.commit(A)
    response = await api.client.get("/v1/incidents/stream", params={"max_seconds": 0.3, "interval": 0.05})
    events = [e for e in parse_events(response.text) if e.event == "incident"]
    assert len(events) == 1  # an unchanged incident is sent once, not at every poll


@pytest.mark.parametrize(
    "params",
    [{"status": "nope"}, {"since": "whenever"}, {"interval": "0"}, {"max_seconds": "-1"}, {"keepalive": "x"}],
)
async def test_bad_stream_parameters_are_422(api: Harness, params: dict[str, str]) -> None:
    response = await api.client.get("/v1/incidents/stream", params=params)
    assert response.status_code == 422
    assert "message" in response.json()


# -- live, over a socket --------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()  # leave pytest's signal handlers alone


@contextlib.asynccontextmanager
async def serving(api: Harness) -> AsyncIterator[str]:
    config = uvicorn.Config(api.app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off")
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Reader:
    """Reads events off a live response one at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self) -> Event:
        block: list[str] = []
        async with asyncio.timeout(GUARD):
            async for line in self._lines:
                if line == "" and block:
                    return parse_events("\n".join(block) + "\n\n")[0]
                if line:
                    block.append(line)
        raise AssertionError("the stream ended")

    async def next_incident(self) -> dict[str, object]:
        while True:
            event = await self.next()
            if event.event == "incident":
                return dict(json.loads(event.data or ""))


async def test_live_stream_sends_changes_then_stops_when_the_client_leaves(api: Harness) -> None:
    ctx: ApiContext = api.app.state.api
    await api.commit(A)
    async with serving(api) as url, httpx.AsyncClient(base_url=url, timeout=GUARD) as client:
        params = {"interval": "0.05", "keepalive": "0.2"}
        async with client.stream("GET", "/v1/incidents/stream", params=params) as response:
            assert response.status_code == 200
            reader = Reader(response)
            first = await reader.next_incident()
            assert (first["id"], first["count"]) == (A.id, A.count)
            assert ctx.active_streams == 1

            # The same incident grows (a batch of 4 more lines merges into it): one event, same id.
            more = replace(A, first_seen=A.first_seen + 40, last_seen=A.first_seen + 50, count=4)
            await api.commit(more)
            update = await reader.next_incident()
            assert (update["id"], update["count"]) == (A.id, A.count + 4)
            assert update["last_seen"] != first["last_seen"]

            # A new incident appears.
            await api.commit(B)
            fresh = await reader.next_incident()
            assert fresh["id"] == B.id

            # Nothing changes: keep-alive comments, no repeated incidents.
            quiet = await reader.next()
            assert quiet.event is None and quiet.comment == "keepalive"

        # The client went away: the server-side generator ends.
        await wait_until(lambda: ctx.active_streams == 0)


async def test_live_stream_reports_a_status_change(api: Harness) -> None:
    ctx: ApiContext = api.app.state.api
    await api.commit(C, stream_time=STREAM_TIME)
    async with (
        serving(api) as url,
        httpx.AsyncClient(base_url=url, timeout=GUARD) as client,
        client.stream("GET", "/v1/incidents/stream", params={"interval": "0.05"}) as response,
    ):
        reader = Reader(response)
        assert (await reader.next_incident())["status"] == "open"
        # Stream time moves past resolve_after: same incident, now resolved.
        resolve_after = ctx.rules()[C.rule_id].resolve_after
        await api.commit(stream_time=C.last_seen + resolve_after + 1)
        changed = await reader.next_incident()
        assert (changed["id"], changed["status"]) == (C.id, "resolved")
