"""/v1/incidents: list, detail, acknowledge, and a server-sent-event stream of changes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Annotated

import orjson
import structlog
from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import WithJsonSchema

from analyzer.api.auth import AUTH_RESPONSES, Caller
from analyzer.api.context import ApiContext
from analyzer.api.grouped import View, grouped_page
from analyzer.api.params import MAX_EPOCH, MIN_EPOCH, negotiate_language, parse_time
from analyzer.api.schemas import MAX_NAME, AckRequest, IncidentDetail, IncidentItem, IncidentPageOut, Problem
from analyzer.api.views import incident_detail, incident_item
from analyzer.incidents import status_of
from analyzer.store import IncidentQuery, IncidentRow
from analyzer.store.causes import CauseReader, CauseView
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

    def admits(self, row: IncidentRow) -> bool:
        """Every filter but status, on a row read otherwise (a root found among the cause incidents)."""
        matchers = (
            (self.category, row.category),
            (self.severity, row.severity),
            (self.rule, row.rule_id),
            (self.cluster, row.key.cluster),
            (self.namespace, row.key.namespace),
            (self.workload, row.key.workload),
        )
        if any(want is not None and want != have for want, have in matchers):
            return False
        if self.pod is not None and self.pod not in row.pods:
            return False
        if self.since is not None and row.last_seen < self.since:
            return False
        return self.until is None or row.first_seen <= self.until


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
    caused_by: str | None = None

    @classmethod
    def of(cls, row: IncidentRow, causes: CauseView | None = None) -> _Seen:
        if causes is None:
            return cls(row.count, row.last_seen, row.status, row.acked_at is not None, row.silenced)
        return cls(
            row.count,
            row.last_seen,
            causes.status(row),
            row.acked_at is not None,
            row.silenced,
            causes.caused_by(row.id),
        )


def changed_rows(
    rows: Iterable[IncidentRow], seen: dict[str, _Seen], causes: CauseView | None = None
) -> list[IncidentRow]:
    """Rows new or changed since ``seen`` (updated in place to the current page), oldest first."""
    fresh: dict[str, _Seen] = {}
    out: list[IncidentRow] = []
    for row in rows:
        now = _Seen.of(row, causes)
        fresh[row.id] = now
        if seen.get(row.id) != now:
            out.append(row)
    # Only the current page is remembered: an incident that drops off it and changes comes back on top.
    seen.clear()
    seen.update(fresh)
    out.reverse()
    return out


STREAM_RETRY_AFTER = 5  # seconds a refused stream is told to wait


@dataclass(frozen=True, slots=True)
class Position:
    """Where a stream's client is: it has every incident as of this point. An event's ``id:``, opaque."""

    written: float  # the database clock before the poll: rows written (updated_at) later are news
    stream_time: float  # the stream time statuses were derived at
    silences: str  # signature of the active silences before the poll


def encode_event_id(p: Position) -> str:
    raw = orjson.dumps([p.written, p.stream_time, p.silences])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_event_id(value: str | None) -> Position | None:
    """The position an event id names; None for no id, "0", or anything that is not one of ours."""
    if not value or value == "0":
        return None
    try:
        raw = orjson.loads(base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    if (
        not isinstance(raw, list)
        or len(raw) != 3
        or not all(type(x) in (int, float) and math.isfinite(x) for x in raw[:2])
        or not isinstance(raw[2], str)
    ):
        return None
    return Position(float(raw[0]), float(raw[1]), raw[2])


def resumed_rows(
    rows: Iterable[IncidentRow],
    since: Position,
    silences: str,
    margin: float,
    seen: dict[str, _Seen],
    causes: CauseView | None = None,
) -> list[IncidentRow]:
    """The first poll after a reconnect: the rows that changed since ``since`` (``seen`` is set to the page).

    A merge or an ack stamps the row's updated_at with the database clock; a write that committed after the
    position was taken may carry an earlier stamp (its statement ran first), so ``margin`` (longer than any
    write transaction) reaches back: a few rows may come twice, none is missed. A status is derived, so it
    changed iff it differs at the two stream times. When the set of active silences changed (one was added or
    expired) any silenced flag may have, and every row is sent. Grouping is derived from other incidents (the
    causes): a row under a cause that was written since is sent too.
    """
    everything = silences != since.silences
    out: list[IncidentRow] = []
    seen.clear()
    for row in rows:
        seen[row.id] = _Seen.of(row, causes)
        then = status_of(row.first_seen, row.last_seen, row.transient, row.resolve_after, since.stream_time)
        grouped = causes is not None and _cause_written_since(row, causes, since.written - margin)
        if everything or grouped or row.updated_at > since.written - margin or then is not row.status:
            out.append(row)
    out.reverse()
    return out


def _cause_written_since(row: IncidentRow, causes: CauseView, since: float) -> bool:
    """Whether the incidents that make ``row`` a symptom, or a root, changed after ``since``: its causes up
    the chain, or (for a root) its symptoms."""
    parent = causes.grouping.parent
    related = [*causes.symptoms(row.id)]
    current = row.id
    while current in parent and len(related) < 64:
        current = parent[current]
        if current in causes.rows:
            related.append(causes.rows[current])
    return any(r.updated_at > since for r in related)


def symptom_events(
    changed: Iterable[IncidentRow], seen_before: dict[str, _Seen], causes: CauseView
) -> list[ServerSentEvent]:
    """``symptom`` events: incidents that became (or changed to) a symptom of another root since last sent."""
    out = []
    for row in changed:
        root = causes.caused_by(row.id)
        before = seen_before.get(row.id)
        if root is not None and (before is None or before.caused_by != root):
            out.append(ServerSentEvent(event="symptom", data={"id": row.id, "caused_by": root}))
    return out


def build_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/incidents", tags=["incidents"])
    store, settings, metrics, running = ctx.store, ctx.settings, ctx.metrics, ctx.running

    @router.get("", response_model=IncidentPageOut)
    async def list_incidents(
        filters: FiltersDep,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")] = 50,
        cursor: Annotated[
            str | None, Query(min_length=1, max_length=MAX_CURSOR, description="next_cursor of the previous page")
        ] = None,
        view: Annotated[
            View,
            Query(
                description="all: every incident, a symptom with its caused_by; roots: root causes (with what "
                "they affect) and standalone incidents, symptoms left out. A page may come short of the limit "
                "when many were left out: follow next_cursor until it is null"
            ),
        ] = View.ALL,
    ) -> IncidentPageOut:
        """Incidents, newest (by last seen) first, with their status derived at the stream time and their cause
        grouping derived from the catalogue's causes."""
        stream_time = await running.stream_time()
        now = ctx.wall()
        rules = ctx.rules()
        query = filters.query(limit=limit, cursor=cursor, stream_time=stream_time, now=now)
        # Pages share the grouping's reads (what a root affects, the causes near a page) for 5 s, a settled
        # root's for 30 s: pages overlap, and one request used to read them all again (store/causes.RecentReads).
        reader = CauseReader(store, rules, stream_time, now, ctx.recent)
        try:
            result = await ctx.store_call(grouped_page(reader, query, view, filters.admits))
        except ValueError as exc:  # a cursor that is not one of ours
            raise invalid("query", "cursor", cursor, str(exc)) from None
        return IncidentPageOut(
            items=[incident_item(row, rules, causes) for row, causes in result.items], next_cursor=result.next_cursor
        )

    async def stream_slot() -> AsyncIterator[None]:
        """Holds one of ANALYZER_MAX_STREAMS for the life of the response; 503 beyond the cap."""
        cap = settings.max_streams
        if ctx.active_streams >= cap:
            metrics.streams_refused.inc()
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"too many open incident streams (ANALYZER_MAX_STREAMS={cap}); retry later or poll /v1/incidents",
                headers={"Retry-After": str(STREAM_RETRY_AFTER)},
            )
        ctx.active_streams += 1
        metrics.streams.set(ctx.active_streams)
        try:
            yield
        finally:
            ctx.active_streams -= 1
            metrics.streams.set(ctx.active_streams)

    async def silence_signature() -> str:
        """Names the set of active silences: when it differs from a resume point's, any silenced flag may have."""
        active = await ctx.store_call(store.list_silences(ctx.wall()))
        return hashlib.sha256("\x1f".join(sorted(s.id for s in active)).encode()).hexdigest()[:12]

    @router.get(
        "/stream",
        response_class=EventSourceResponse,
        dependencies=[Depends(stream_slot)],
        responses={
            200: {
                "description": "`incident` events (data: an incident item); `merged` events (data: `id` and "
                "`merged_into`, for an incident a late line bridged into an older one); `symptom` events (data: `id` "
                "and `caused_by`, after the incident's own event, when it became the symptom of a root cause); "
                "`: keepalive` comments. "
                "Every event has an `id:`; a client that reconnects with it as `Last-Event-ID` gets only the "
                "incidents that changed since (new lines, status, ack, silence), not the whole page again"
            },
            503: {
                "description": "ANALYZER_MAX_STREAMS streams are open already (Retry-After)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            },
        },
    )
    async def stream_incidents(
        request: Request,
        filters: FiltersDep,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="newest incidents watched per poll")] = 100,
        once: Annotated[bool, Query(description="send the current incidents, then end the stream")] = False,
        max_seconds: Annotated[float | None, Query(gt=0, le=86400, description="end the stream after this")] = None,
        interval: Annotated[
            float,
            Query(
                ge=0.05,
                le=60,
                description="seconds between polls of the store; raised to ANALYZER_STREAM_MIN_INTERVAL "
                "(default 1) when smaller",
            ),
        ] = 1.0,
        keepalive: Annotated[float, Query(ge=0.1, le=15, description="seconds of silence before a comment")] = 15.0,
        last_event_id: Annotated[
            str | None,
            Header(
                max_length=MAX_CURSOR,
                description="resume: the id of the last event received (EventSource "
                "sends it on reconnect); an id that is not one of ours starts afresh",
            ),
        ] = None,
    ) -> AsyncIterator[ServerSentEvent]:
        """Server-sent events: the current incidents first, then each new or changed one (count, last seen,
        status, ack, silence) as it happens, and `merged` when one was merged into another. Polls the store
        (at most once per ANALYZER_STREAM_MIN_INTERVAL); ends when the client goes away. With `Last-Event-ID`
        the first poll sends only what changed since that event."""
        loop = asyncio.get_running_loop()
        every = max(interval, settings.stream_min_interval)
        deadline = None if max_seconds is None else loop.time() + max_seconds
        seen: dict[str, _Seen] = {}  # bounded: the rows of the last page (at most ``limit``)
        position = decode_event_id(last_event_id)  # what the client is known to have; None: nothing
        resuming = position is not None
        # Longer than a write transaction can stay open between its clock stamp and its commit (store calls are
        # bounded by the store timeout; PostgreSQL's statement and idle-in-transaction timeouts are below it).
        margin = settings.store_timeout + 1.0
        last_sent = loop.time()
        next_poll = loop.time()
        while True:
            now = loop.time()
            if now >= next_poll:
                next_poll = now + every
                try:
                    # Read before the page, so the position an event names never claims more than was sent.
                    signature = await silence_signature()
                    written = await ctx.store_call(store.clock())
                    stream_time = await running.stream_time()
                    now = ctx.wall()
                    query = filters.query(limit=limit, cursor=None, stream_time=stream_time, now=now)
                    rules = ctx.rules()
                    # Not from the requests' shared reads: what a stream sends must not lag what it reports.
                    reader = CauseReader(store, rules, stream_time, now)
                    # The list's page (a status filter follows a root's group status), grouped as one view.
                    page = await ctx.store_call(grouped_page(reader, query, View.ALL, filters.admits))
                    rows = [row for row, _ in page.items]
                    causes = await ctx.store_call(reader.view(rows))
                except HTTPException as exc:
                    yield ServerSentEvent(event="error", data={"detail": exc.detail})
                    last_sent = loop.time()
                else:
                    before = set(seen)
                    seen_before = dict(seen)
                    merged: dict[str, str] = {}
                    if resuming and position is not None:
                        changed = resumed_rows(rows, position, signature, margin, seen, causes)
                        since = position.written - margin
                        with contextlib.suppress(HTTPException):  # then the client misses no incident, only merges
                            merged = await ctx.store_call(store.aliases_since(since, limit))
                        resuming = False
                    else:
                        changed = changed_rows(rows, seen, causes)
                    events: list[ServerSentEvent] = [
                        ServerSentEvent(
                            event="incident", data=incident_item(row, rules, causes).model_dump(mode="json")
                        )
                        for row in changed
                    ]
                    # After the incident events: the client has the incidents the symptom events name.
                    events.extend(symptom_events(changed, seen_before, causes))
                    # An incident that left the page either fell off its end or was merged into another.
                    gone = sorted(before - set(seen))
                    if gone:
                        with contextlib.suppress(HTTPException):  # the next page's error event says it
                            merged = await ctx.store_call(store.aliases(gone))
                    events.extend(
                        ServerSentEvent(event="merged", data={"id": alias, "merged_into": target})
                        for alias, target in sorted(merged.items())
                    )
                    if events:
                        # Every event names a point to resume from; only the poll's last one names this poll,
                        # so a client cut off in the middle of a poll gets the rest of it again.
                        current = Position(written=written, stream_time=stream_time, silences=signature)
                        earlier = encode_event_id(position) if position is not None else "0"
                        for k, event in enumerate(events):
                            event.id = encode_event_id(current) if k == len(events) - 1 else earlier
                            yield event
                        position = current
                        last_sent = loop.time()
                if once:
                    return
            if await request.is_disconnected():
                return
            now = loop.time()
            if deadline is not None and now >= deadline:
                return
            if now - last_sent >= keepalive:
                yield ServerSentEvent(comment="keepalive")
                last_sent = now
            # Wake for the next poll or the next keep-alive, whichever comes first; keep-alives never poll.
            pause = min(next_poll - now, keepalive - (now - last_sent))
            if deadline is not None:
                pause = min(pause, deadline - now)
            await asyncio.sleep(max(pause, 0.0))

    @router.get("/{incident_id}", response_model=IncidentDetail, responses={404: {"model": Problem}})
    async def get_incident(
        incident_id: str,
        lang: Annotated[str | None, Query(max_length=35, description="en or pt-BR; overrides Accept-Language")] = None,
        accept_language: Annotated[str | None, Header(max_length=1000)] = None,
    ) -> IncidentDetail:
        """One incident with its evidence, remediation (in the language asked) and commands to look further; a
        root cause with the incidents it explains, a symptom with its root's id."""
        stream_time = await running.stream_time()
        now = ctx.wall()
        row = await ctx.store_call(store.get_incident(incident_id, stream_time, now=now))
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no incident with id {incident_id!r}")
        rules = ctx.rules()
        causes = await ctx.store_call(CauseReader(store, rules, stream_time, now).view([row]))  # exact, uncached
        return incident_detail(row, rules, negotiate_language(lang, accept_language), causes)

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
        comment = body.comment if body else None
        found = await ctx.store_call(store.ack(incident_id, by, ctx.wall(), comment))
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no incident with id {incident_id!r}")
        log.info("incident acknowledged", incident=incident_id, by=by, comment=comment)
        stream_time = await running.stream_time()
        now = ctx.wall()
        row = await ctx.store_call(store.get_incident(incident_id, stream_time, now=now))
        if row is None:  # a merge never removes an id (it becomes an alias): only retention can
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no incident with id {incident_id!r}")
        rules = ctx.rules()
        causes = await ctx.store_call(CauseReader(store, rules, stream_time, now).view([row]))  # exact, uncached
        return incident_item(row, rules, causes)

    return router
