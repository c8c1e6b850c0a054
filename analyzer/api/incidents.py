"""/v1/incidents: list, detail, acknowledge, and a server-sent-event stream of changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import WithJsonSchema

from analyzer.api.auth import AUTH_RESPONSES, Caller
from analyzer.api.context import ApiContext
from analyzer.api.params import MAX_EPOCH, MIN_EPOCH, negotiate_language, parse_time
from analyzer.api.schemas import MAX_NAME, AckRequest, IncidentDetail, IncidentItem, IncidentPageOut, Problem
from analyzer.api.views import incident_detail, incident_item
from analyzer.store import IncidentPage, IncidentQuery, IncidentRow
from analyzer.types import Category, Severity, Status

log = structlog.get_logger("analyzer.api")

MAX_PAGE = 500
MAX_CURSOR = 512

_TIME_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "number", "minimum": MIN_EPOCH, "maximum": MAX_EPOCH},
            {"type": "string", "format": "date-time"},
        ],
        "description": "RFC 3339 time (2024-05-01T12:00:00Z) or epoch seconds",
    }
)
TimeParam = Annotated[str | None, _TIME_SCHEMA]
NameParam = Annotated[str | None, Query(min_length=1, max_length=MAX_NAME)]


def invalid(location: str, name: str, value: object, message: str) -> RequestValidationError:
    """A 422 in the same shape as FastAPI's own validation errors."""
    return RequestValidationError([{"type": "value_error", "loc": (location, name), "msg": message, "input": value}])


@dataclass(frozen=True, slots=True)
class Filters:
    statuses: tuple[Status, ...]
    category: str | None
    severity: str | None
    rule: str | None
    cluster: str | None
    namespace: str | None
    workload: str | None
    pod: str | None
    since: float | None
    until: float | None

    def query(self, *, limit: int, cursor: str | None, stream_time: float, now: float) -> IncidentQuery:
        return IncidentQuery(
            statuses=self.statuses,
            category=self.category,
            severity=self.severity,
            rule=self.rule,
            cluster=self.cluster,
            namespace=self.namespace,
            workload=self.workload,
            pod=self.pod,
            since=self.since,
            until=self.until,
            limit=limit,
            cursor=cursor,
            stream_time=stream_time,
            now=now,
        )


def _time(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise invalid("query", name, value, str(exc)) from None


def incident_filters(
    status: Annotated[
        list[Status] | None, Query(description="repeatable (status=open&status=pending); all statuses when absent")
    ] = None,
    category: Category | None = None,
    severity: Severity | None = None,
    rule: NameParam = None,
    cluster: NameParam = None,
    namespace: NameParam = None,
    workload: NameParam = None,
    pod: Annotated[
        str | None, Query(min_length=1, max_length=MAX_NAME, description="incidents whose pods include it")
    ] = None,
    since: Annotated[TimeParam, Query(description="incidents last seen at or after this time")] = None,
    until: Annotated[TimeParam, Query(description="incidents first seen at or before this time")] = None,
) -> Filters:
    return Filters(
        statuses=tuple(dict.fromkeys(status or ())),
        category=None if category is None else category.value,
        severity=None if severity is None else severity.value,
        rule=rule,
        cluster=cluster,
        namespace=namespace,
        workload=workload,
        pod=pod,
        since=_time("since", since),
        until=_time("until", until),
    )


FiltersDep = Annotated[Filters, Depends(incident_filters)]


@dataclass
class _Seen:
    """What the stream last sent for an incident; a change in any of these is news."""

    count: int
    last_seen: float
    status: Status
    acked: bool
    silenced: bool

    @classmethod
    def of(cls, row: IncidentRow) -> _Seen:
        return cls(row.count, row.last_seen, row.status, row.acked_at is not None, row.silenced)


def changed_rows(rows: Iterable[IncidentRow], seen: dict[str, _Seen]) -> list[IncidentRow]:
    """Rows new or changed since ``seen`` (updated in place to the current page), oldest first."""
    fresh: dict[str, _Seen] = {}
    out: list[IncidentRow] = []
    for row in rows:
        now = _Seen.of(row)
        fresh[row.id] = now
        if seen.get(row.id) != now:
            out.append(row)
    # Only the current page is remembered: an incident that drops off it and changes comes back on top.
    seen.clear()
    seen.update(fresh)
    out.reverse()
    return out


def build_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/incidents", tags=["incidents"])
    service = ctx.service

    async def page(filters: Filters, limit: int, cursor: str | None) -> IncidentPage:
        stream_time = await service.stream_time()
        query = filters.query(limit=limit, cursor=cursor, stream_time=stream_time, now=ctx.wall())
        return await ctx.store_call(service.store.list_incidents(query))

    @router.get("", response_model=IncidentPageOut)
    async def list_incidents(
        filters: FiltersDep,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")] = 50,
        cursor: Annotated[
            str | None, Query(min_length=1, max_length=MAX_CURSOR, description="next_cursor of the previous page")
        ] = None,
    ) -> IncidentPageOut:
        """Incidents, newest (by last seen) first, with their status derived at the stream time."""
        try:
            result = await page(filters, limit, cursor)
        except ValueError as exc:  # a cursor that is not one of ours
            raise invalid("query", "cursor", cursor, str(exc)) from None
        rules = ctx.rules()
        return IncidentPageOut(items=[incident_item(r, rules) for r in result.items], next_cursor=result.next_cursor)

    @router.get(
        "/stream",
        response_class=EventSourceResponse,
        responses={200: {"description": "`incident` events (data: an incident item); `: keepalive` comments"}},
    )
    async def stream_incidents(
        request: Request,
        filters: FiltersDep,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="newest incidents watched per poll")] = 100,
        once: Annotated[bool, Query(description="send the current incidents, then end the stream")] = False,
        max_seconds: Annotated[float | None, Query(gt=0, le=86400, description="end the stream after this")] = None,
        interval: Annotated[float, Query(ge=0.05, le=60, description="seconds between polls of the store")] = 1.0,
        keepalive: Annotated[float, Query(ge=0.1, le=15, description="seconds of silence before a comment")] = 15.0,
    ) -> AsyncIterator[ServerSentEvent]:
        """Server-sent events: the current incidents first, then each new or changed one (count, last seen,
        status, ack, silence) as it happens. Polls the store; ends when the client goes away."""
        loop = asyncio.get_running_loop()
        deadline = None if max_seconds is None else loop.time() + max_seconds
        seen: dict[str, _Seen] = {}
        last_sent = loop.time()
        ctx.active_streams += 1
        try:
            while True:
                try:
                    result = await page(filters, limit, None)
                except HTTPException as exc:
                    yield ServerSentEvent(event="error", data={"detail": exc.detail})
                    last_sent = loop.time()
                else:
                    rules = ctx.rules()
                    for row in changed_rows(result.items, seen):
                        yield ServerSentEvent(event="incident", data=incident_item(row, rules).model_dump(mode="json"))
                        last_sent = loop.time()
                if once or await request.is_disconnected():
                    return
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return
                if now - last_sent >= keepalive:
                    yield ServerSentEvent(comment="keepalive")
                    last_sent = now
                pause = min(interval, keepalive - (now - last_sent))
                if deadline is not None:
                    pause = min(pause, deadline - now)
                await asyncio.sleep(max(pause, 0.0))
        finally:
            ctx.active_streams -= 1

    @router.get("/{incident_id}", response_model=IncidentDetail, responses={404: {"model": Problem}})
    async def get_incident(
        incident_id: str,
        lang: Annotated[str | None, Query(max_length=35, description="en or pt-BR; overrides Accept-Language")] = None,
        accept_language: Annotated[str | None, Header(max_length=1000)] = None,
    ) -> IncidentDetail:
        """One incident with its evidence, remediation (in the language asked) and commands to look further."""
        stream_time = await service.stream_time()
        row = await ctx.store_call(service.store.get_incident(incident_id, stream_time, now=ctx.wall()))
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no incident with id {incident_id!r}")
        return incident_detail(row, ctx.rules(), negotiate_language(lang, accept_language))

    @router.post(
        "/{incident_id}/ack",
        response_model=IncidentItem,
        responses={**AUTH_RESPONSES, 404: {"model": Problem}},
    )
    async def ack_incident(
        incident_id: str,
        caller: Caller,
        body: Annotated[AckRequest | None, Body()] = None,
    ) -> IncidentItem:
        """Acknowledge an incident (it stays listed and counted). Needs the API token."""
        by = body.by if body and body.by else caller
        found = await ctx.store_call(service.store.ack(incident_id, by, ctx.wall()))
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no incident with id {incident_id!r}")
        log.info("incident acknowledged", incident=incident_id, by=by, comment=body.comment if body else None)
        stream_time = await service.stream_time()
        row = await ctx.store_call(service.store.get_incident(incident_id, stream_time, now=ctx.wall()))
        if row is None:  # merged away between the two calls
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"incident {incident_id!r} was merged into another")
        return incident_item(row, ctx.rules())

    return router
