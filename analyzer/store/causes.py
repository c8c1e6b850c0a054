"""Reads what the cause grouping (analyzer/causes.py) needs, for the incidents a reader is about to show.

Grouping is derived at read time, never stored. To say whether an incident is a symptom, only the incidents of
rules that declare causes are needed (a direct cause, and every cause above it, is one of those); to say what a
root affects, the incidents of its cluster that start inside the windows of the causes under it. Both are read
through the store's ordinary list query, so one code path serves SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from analyzer.causes import NOTHING, Affected, Grouping, Span, cause_rules, group, group_status, max_slack
from analyzer.store.base import MAX_LIMIT, IncidentQuery, IncidentRow, Store
from analyzer.types import Causes, Rule, Severity, Status

_SEVERITY_RANK = {s.value: rank for rank, s in enumerate(Severity)}  # critical first
# Bounds what one read may load beside the incidents it shows: past it, `affected` counts what was read.
MAX_PAGES = 20
# Links of a cause chain followed up (CA secret -> signing -> certificate fetches is three).
MAX_CHAIN = 8
# Separate reads for a page's windows when their hull is this many times longer than they are, at most MAX_READS.
HULL_RATIO = 20
MAX_READS = 16
# Seconds of stream time past a root's window (and its slack) after which no new symptom is expected in it.
SETTLE = 60.0
# Shared reads of cause incidents cover whole buckets of this many seconds of stream time (see CauseReader._read).
BUCKET = 3600.0


T = TypeVar("T")


class RecentReads:
    """What the grouping read or derived lately, shared by the requests of one API process.

    Each list request used to read again the cause incidents near its page, each root's symptoms in its window
    and the open symptoms holding causes open: the same rows for every request, since pages overlap and a few
    seconds of traffic ask the same questions. Kept for ``ttl`` seconds whatever the stream time (under ingest it
    moves every second: keyed by it, every second's requests read everything again, more than a core's worth
    at 200 requests/s), a root's symptoms for ``settled_ttl`` once its window has closed (no new symptom can
    start in it; what may still change is a symptom's status), and at most ``max_rows`` rows in all, oldest out
    first. So grouping annotations (caused_by, affected, a root's status through its symptoms) may lag the store
    or a reload by that long; the rows a page shows are always read fresh."""

    def __init__(
        self,
        ttl: float = 5.0,
        settled_ttl: float = 30.0,
        max_rows: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.settled_ttl = settled_ttl
        self.max_rows = max_rows
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, int, Any]] = {}  # key -> (expires, rows, value), oldest first
        self._rows = 0
        self._next_sweep = 0.0
        self._reading: dict[Hashable, asyncio.Task[Any]] = {}  # reads in flight, by key

    async def get(
        self, key: Hashable, read: Callable[[], Awaitable[T]], size: Callable[[T], int], *, settled: bool = False
    ) -> T:
        """The value kept under ``key``, else ``read()``'s, kept. Requests asking for a key being read wait
        for that one read: under load, a second's worth of requests would otherwise all miss at once and each
        read the same rows (seen as the API stalling). The read finishes, and is kept, even when every request
        that waits for it gives up."""
        found = self.peek(key)
        if found is not None:
            cached: T = found
            return cached

        async def read_and_keep() -> T:
            value = await read()
            self.put(key, value, size(value), settled=settled)
            return value

        return await self.once(key, read_and_keep)

    async def once(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """``read()``, or the value of the read under ``key`` already in flight (nothing kept)."""
        task = self._reading.get(key)
        if task is None:

            async def run() -> T:
                try:
                    return await read()
                finally:
                    self._reading.pop(key, None)

            task = asyncio.ensure_future(run())
            task.add_done_callback(_retrieved)
            self._reading[key] = task
        value: T = await asyncio.shield(task)
        return value

    def peek(self, key: Hashable) -> Any:
        """The value kept under ``key`` if it has not expired, else None."""
        now = self._clock()
        if now >= self._next_sweep:
            for k in [k for k, (expires, _, _) in self._entries.items() if expires <= now]:
                self._rows -= self._entries.pop(k)[1]
            self._next_sweep = now + self.ttl
        hit = self._entries.get(key)
        return hit[2] if hit is not None and hit[0] > now else None

    def put(self, key: Hashable, value: Any, rows: int, *, settled: bool = False) -> None:
        if rows > self.max_rows:
            return
        # Other requests ran since this one looked: one may have put or swept this key.
        stale = self._entries.pop(key, None)
        if stale is not None:
            self._rows -= stale[1]
        while self._entries and self._rows + rows > self.max_rows:
            self._rows -= self._entries.pop(next(iter(self._entries)))[1]
        self._entries[key] = (self._clock() + (self.settled_ttl if settled else self.ttl), rows, value)
        self._rows += rows


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Its error reached whoever waited; with nobody left waiting, it is not an unretrieved exception."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True, slots=True)
class CauseView:
    """The grouping of the incidents read, and those incidents, to annotate rows with."""

    grouping: Grouping
    rows: Mapping[str, IncidentRow]

    def caused_by(self, incident_id: str) -> str | None:
        return self.grouping.caused_by(incident_id)

    def is_root(self, incident_id: str) -> bool:
        return incident_id in self.grouping.symptoms

    def affected(self, incident_id: str) -> Affected:
        return self.grouping.affected_of(incident_id)

    def symptoms(self, root_id: str) -> list[IncidentRow]:
        return [self.rows[s] for s in self.grouping.symptoms.get(root_id, ()) if s in self.rows]

    def status(self, row: IncidentRow) -> Status:
        """The row's status; a root's is open while any of its symptoms is (analyzer.causes.group_status)."""
        if row.id not in self.grouping.symptoms:
            return row.status
        return group_status(row.status, (s.status for s in self.symptoms(row.id)))


EMPTY = Grouping({}, {}, {}, {})


def _spans(rows: Iterable[IncidentRow]) -> list[Span]:
    return [Span(r.id, r.rule_id, r.key, r.first_seen, r.last_seen, r.pods) for r in rows]


async def _read_all(store: Store, query: IncidentQuery) -> list[IncidentRow]:
    out: list[IncidentRow] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await store.list_incidents(replace(query, limit=MAX_LIMIT, cursor=cursor))
        out.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    return out


class CauseReader:
    """One read's view of the grouping: each batch of rows to show is grouped against the cause incidents near
    it (up their chains) and, for its roots, against the incidents of the rules they cause inside their windows.
    With ``recent``, what it reads or derives is shared with the other reads of the last few seconds."""

    def __init__(
        self,
        store: Store,
        rules: Mapping[str, Rule],
        stream_time: float,
        now: float | None = None,
        recent: RecentReads | None = None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.stream_time = stream_time
        self.now = now
        self.recent = recent
        self._names, self._targeted, self._targeted_ids, self._slack = _facts(rules)

    async def _read(self, query: IncidentQuery) -> list[IncidentRow]:
        """The cause incidents of a window. Shared: widened to whole buckets of stream time, so pages whose
        windows differ by minutes ask the same read (more causes than the window holds change nothing: the
        grouping checks each window exactly); a bucket long past keeps for ``settled_ttl``."""
        if self.recent is None or query.since is None or query.until is None:
            return await _read_all(self.store, query)
        lo, hi = math.floor(query.since / BUCKET) * BUCKET, math.ceil(query.until / BUCKET) * BUCKET
        query = replace(query, since=lo, until=hi)
        # Not keyed by the stream time or the wall clock: they move every second under ingest, and decide only
        # the rows' statuses (and silences), which may lag like the rest of what is kept.
        key = ("read", replace(query, now=None, stream_time=0.0))
        # No cause incident can start in a bucket this far behind the stream any more; those read may still
        # grow or change status (a lag like a settled root's).
        settled = hi + SETTLE < self.stream_time
        return await self.recent.get(key, lambda: _read_all(self.store, query), len, settled=settled)

    async def open_through_symptoms(self) -> list[IncidentRow]:
        """The cause incidents a symptom can hold open: up the chains of the open incidents a cause targets.
        (A root is open while any of its symptoms is, whatever its own status.)"""
        targeted = self._targeted_ids
        if not targeted:
            return []
        query = IncidentQuery(statuses=(Status.OPEN,), rules=targeted, stream_time=self.stream_time, now=self.now)

        async def read() -> list[IncidentRow]:
            return await self.causes_near(await _read_all(self.store, query))

        return await read() if self.recent is None else await self.recent.get(("open", targeted), read, len)

    async def causes_near(self, focus: Iterable[IncidentRow]) -> list[IncidentRow]:
        """The cause incidents that can explain ``focus``, and theirs up the chain: only those whose window can
        hold a focus row's first occurrence (read per cluster over the merged windows of the rows a cause rule
        targets), so a read costs what its page touches, not every cause incident the store holds."""
        names = self._names
        if not names:
            return []
        slack = self._slack
        targeted = self._targeted
        found: dict[str, IncidentRow] = {}
        pending = [r for r in focus if r.rule_id in targeted]
        looked: set[tuple[str, float]] = set()
        for _ in range(MAX_CHAIN):
            windows: dict[str, list[tuple[float, float]]] = {}
            for r in pending:
                if (r.key.cluster, r.first_seen) not in looked:
                    looked.add((r.key.cluster, r.first_seen))
                    windows.setdefault(r.key.cluster, []).append((r.first_seen - slack, r.first_seen + slack))
            fresh: list[IncidentRow] = []
            for cluster, spans in sorted(windows.items()):
                for lo, hi in _reads(spans):
                    query = IncidentQuery(
                        rules=names,
                        cluster=cluster,
                        since=lo,
                        until=hi,
                        stream_time=self.stream_time,
                        now=self.now,
                    )
                    for row in await self._read(query):
                        if row.id not in found:
                            found[row.id] = row
                            fresh.append(row)
            pending = [r for r in fresh if r.rule_id in targeted]  # a cause may itself be another's symptom
            if not pending:
                break
        return list(found.values())

    async def view(self, focus: Sequence[IncidentRow], *, affected: bool = True) -> CauseView:
        """The grouping as it concerns ``focus``: each one's caused_by, and (``affected``) the symptoms of
        those that are roots."""
        rows: dict[str, IncidentRow] = {r.id: r for r in focus}
        causes = [*await self.causes_near(focus), *(r for r in focus if _causes(self.rules, r) is not None)]
        if not causes:
            return CauseView(EMPTY, rows)
        for row in causes:
            rows.setdefault(row.id, row)
        grouping = group(_spans(rows.values()), self.rules)
        roots = [r for r in focus if r.id not in grouping.root and _causes(self.rules, r) is not None]
        if not affected or not roots:
            return CauseView(grouping, rows)
        # Each root's symptoms apart: what a root affects depends on the incidents of its own windows only, and
        # the same roots come back on page after page (kept per root with ``recent``).
        parent, root_of = dict(grouping.parent), dict(grouping.root)
        symptoms, covered = dict(grouping.symptoms), dict(grouping.affected)
        unders = await self._under(roots)
        for root in roots:
            under = unders[root.id]
            for row in under.rows.values():
                rows.setdefault(row.id, row)
            symptoms[root.id] = under.grouping.symptoms.get(root.id, ())
            covered[root.id] = under.grouping.affected_of(root.id)
            for sid in symptoms[root.id]:
                root_of[sid] = root.id
                parent[sid] = under.grouping.parent[sid]
        return CauseView(Grouping(parent, root_of, symptoms, covered), rows)

    async def _under(self, roots: Sequence[IncidentRow]) -> dict[str, CauseView]:
        """Each root's grouping with every incident its windows can hold: its symptoms and their causes. The
        roots not kept in ``recent`` are read together (their windows merged: one read per cluster and link)."""
        out: dict[str, CauseView] = {}
        keys: dict[str, tuple[Hashable, bool]] = {}
        for root in roots:
            spec = _causes(self.rules, root)
            settled = spec is not None and root.last_seen + spec.slack + SETTLE < self.stream_time
            # Not by last_seen: a root still growing under ingest gets a new one every batch, and read again each
            # time it was the API's whole load; what it grew by shows within the ttl (a settled root that
            # recurs is unsettled again: another key).
            key = ("under", root.id, settled)
            keys[root.id] = (key, settled)
            found = self.recent.peek(key) if self.recent is not None else None
            if found is not None:
                out[root.id] = found
        missing = [r for r in roots if r.id not in out]
        if missing:
            if self.recent is None:
                joint = await self._read_under(missing)
            else:  # one read for the requests of the same page that come together; kept per root below
                joint_key = ("under-joint", *(keys[r.id][0] for r in missing))
                joint = await self.recent.once(joint_key, lambda: self._read_under(missing))
            for root in missing:
                kept = {root.id, *joint.grouping.symptoms.get(root.id, ())}
                view = CauseView(joint.grouping, {i: joint.rows[i] for i in kept if i in joint.rows})
                out[root.id] = view
                if self.recent is not None:
                    self.recent.put(keys[root.id][0], view, len(view.rows), settled=keys[root.id][1])
        return out

    async def _read_under(self, roots: Sequence[IncidentRow]) -> CauseView:
        rows: dict[str, IncidentRow] = {r.id: r for r in roots}
        for row in await self.causes_near(roots):
            rows.setdefault(row.id, row)
        grouping = group(_spans(rows.values()), self.rules)
        # The roots' windows and those of the cause incidents under them, widened as causes under them are found
        # there (CA secret -> signing errors -> their own symptoms).
        wanted = {r.id for r in roots}
        targeted = self._targeted_ids
        read: dict[str, tuple[float, float]] = {}
        for _ in range(MAX_CHAIN):
            windows: dict[str, tuple[float, float]] = {}
            for row in rows.values():
                spec = _causes(self.rules, row)
                if spec is None or grouping.root.get(row.id, row.id) not in wanted:
                    continue
                lo, hi = row.first_seen - spec.slack, row.last_seen + spec.slack
                known = windows.get(row.key.cluster)
                windows[row.key.cluster] = (lo, hi) if known is None else (min(lo, known[0]), max(hi, known[1]))
            windows = {c: w for c, w in windows.items() if read.get(c) != w}
            if not windows:
                break
            inside: list[IncidentRow] = []
            for cluster, (lo, hi) in sorted(windows.items()):
                read[cluster] = (lo, hi)
                # only the rules a cause targets: the cluster's other incidents in the window are no symptoms
                query = IncidentQuery(
                    rules=targeted, cluster=cluster, since=lo, until=hi, stream_time=self.stream_time, now=self.now
                )
                inside += [row for row in await _read_all(self.store, query) if row.id not in rows]
            # what they were read for may have an earlier cause of its own, outside the causes read so far
            for row in [*inside, *await self.causes_near(inside)]:
                rows.setdefault(row.id, row)
            grouping = group(_spans(rows.values()), self.rules)
        return CauseView(grouping, rows)


async def open_roots(store: Store, rules: Mapping[str, Rule], stream_time: float) -> list[tuple[str, str, int]]:
    """(category, severity, count) of the open groups by their root: each open incident stands for its root
    (itself when it is no symptom), so a root counts once, open through itself or any of its symptoms, and a
    grouped symptom never counts on its own. The category is the root's; the severity the most severe of the
    root and its open symptoms. What analyzer_open_roots exports and MeshIncidentOpen alerts on."""
    reader = CauseReader(store, rules, stream_time)
    open_rows = await _read_all(store, IncidentQuery(statuses=(Status.OPEN,), stream_time=stream_time))
    causes = await reader.view(open_rows, affected=False)
    # A group is as severe as its most severe open member: a high symptom under a medium root still pages.
    severity: dict[str, str] = {}
    for row in open_rows:
        root = causes.caused_by(row.id) or row.id
        root_row = causes.rows.get(root)
        own = severity.get(root, root_row.severity if root_row is not None else row.severity)
        severity[root] = min(own, row.severity, key=_SEVERITY_RANK.__getitem__)
    counts: dict[tuple[str, str], int] = {}
    for root, worst in severity.items():
        root_row = causes.rows.get(root)
        if root_row is not None:
            counts[(root_row.category, worst)] = counts.get((root_row.category, worst), 0) + 1
    return [(category, sev, n) for (category, sev), n in sorted(counts.items())]


_Facts = tuple[tuple[str, ...], frozenset[str], tuple[str, ...], float]
_last_facts: tuple[Mapping[str, Rule], _Facts] | None = None


def _facts(rules: Mapping[str, Rule]) -> _Facts:
    """The cause rules, the rules they target (as a set and sorted) and the widest slack: derived once per rules
    mapping (the API hands the same one to its requests until the catalogue or its templates change)."""
    global _last_facts
    last = _last_facts
    if last is not None and last[0] is rules:
        return last[1]
    targeted = _targeted(rules)
    facts = (tuple(cause_rules(rules)), targeted, tuple(sorted(targeted)), max_slack(rules.values()))
    _last_facts = (rules, facts)
    return facts


def _targeted(rules: Mapping[str, Rule]) -> frozenset[str]:
    """Ids of the rules some rule's ``causes`` targets (by id, or by category), a rule never its own target."""
    causers = [(rid, r.causes) for rid, r in rules.items() if r.causes is not None]
    ids = {t for _, c in causers for t in c.rules}
    categories = {cat.value for _, c in causers for cat in c.categories}
    return frozenset(
        rid
        for rid, rule in rules.items()
        if (rid in ids or rule.category.value in categories)
        and any(other != rid and c.targets(rid, rule.category.value) for other, c in causers)
    )


def _reads(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The windows to read: their hull, in one statement, when the windows cover a fair part of it (a row costs
    ~20 us to read, a statement milliseconds); else each group of overlapping windows (rows days apart, say a
    namespace's page, would otherwise read every cause incident of the days between), at most MAX_READS."""
    merged: list[tuple[float, float]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    hull = (merged[0][0], merged[-1][1])
    covered = sum(hi - lo for lo, hi in merged)
    if len(merged) > MAX_READS or covered * HULL_RATIO >= hull[1] - hull[0]:
        return [hull]
    return merged


def _causes(rules: Mapping[str, Rule], row: IncidentRow) -> Causes | None:
    rule = rules.get(row.rule_id)
    return None if rule is None else rule.causes


__all__ = ["NOTHING", "CauseReader", "CauseView", "RecentReads", "open_roots"]
