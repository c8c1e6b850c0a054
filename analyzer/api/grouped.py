"""Pages of incidents with their cause grouping (analyzer/causes.py), for /v1/incidents and its stream.

The store pages incidents by (last_seen, id); grouping is derived after it, so a filter on what grouping
decides (``view=roots`` drops symptoms; a root's status is open while a symptom is) is applied here, page by
page of the store, and the next cursor names the last incident looked at, in the store's own cursor format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from analyzer.store import IncidentQuery, IncidentRow
from analyzer.store.base import MAX_LIMIT, decode_cursor, encode_cursor
from analyzer.store.causes import CauseReader, CauseView
from analyzer.types import Status

# Store pages looked at for one response when a filter drops rows; past it the page is short and its
# next_cursor goes on from where it stopped.
MAX_SCANNED_PAGES = 10
MIN_CHUNK = 200


class View(StrEnum):
    ALL = "all"  # every incident, symptoms included (each with its caused_by)
    ROOTS = "roots"  # root causes and standalone incidents, each root with what it affects


@dataclass(frozen=True, slots=True)
class GroupedPage:
    items: list[tuple[IncidentRow, CauseView]]
    next_cursor: str | None


def _position(row: IncidentRow) -> tuple[float, str]:
    return (row.last_seen, row.id)


async def grouped_page(
    reader: CauseReader, query: IncidentQuery, view: View, admits: Callable[[IncidentRow], bool]
) -> GroupedPage:
    """``query``'s page, grouped. ``admits`` is ``query``'s filters other than status, in Python: a root whose
    own status is not asked for may be open through its symptoms, and is found among the cause incidents."""
    wanted = set(query.statuses)
    extra: list[IncidentRow] = []
    if Status.OPEN in wanted and len(wanted) < len(Status):
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        extra = [
            r
            for r in await reader.open_through_symptoms()
            if r.status not in wanted and admits(r) and (after is None or _position(r) < after)
        ]
        extra.sort(key=_position, reverse=True)
    # Read ahead only when rows may be left out here; otherwise the store's page is the page.
    filtered = view is View.ROOTS or bool(wanted)
    chunk_size = min(max(query.limit, MIN_CHUNK), MAX_LIMIT) if filtered else query.limit
    out: list[tuple[IncidentRow, CauseView]] = []
    cursor = query.cursor
    for _ in range(MAX_SCANNED_PAGES):
        page = await reader.store.list_incidents(replace(query, cursor=cursor, limit=chunk_size))
        if page.next_cursor is None or not page.items:
            taken, extra = extra, []
        else:
            end = _position(page.items[-1])
            taken = [r for r in extra if _position(r) > end]
            extra = extra[len(taken) :]
        chunk = sorted([*page.items, *taken], key=_position, reverse=True)
        causes = await reader.view(chunk)
        for k, row in enumerate(chunk):
            if view is View.ROOTS and causes.caused_by(row.id) is not None:
                continue
            if wanted and causes.status(row) not in wanted:
                continue
            out.append((row, causes))
            if len(out) == query.limit:
                more = k + 1 < len(chunk) or page.next_cursor is not None or bool(extra)
                return GroupedPage(out, encode_cursor(row.last_seen, row.id) if more else None)
        if page.next_cursor is None and not extra:
            return GroupedPage(out, None)
        cursor = page.next_cursor if page.next_cursor is not None else cursor
        if chunk:
            last = chunk[-1]
            cursor = encode_cursor(last.last_seen, last.id)
    return GroupedPage(out, cursor)
