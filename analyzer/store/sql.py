"""Statements, row codecs and the one write transaction shared by both backends.

The merge logic is written once, as a generator of statements (``Op``): each backend's driver executes
what it yields and sends back rows or a row count, SQLite synchronously in a worker thread, PostgreSQL with
``await``. Neither backend has a write loop of its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson

from analyzer import incidents
from analyzer.errors import StaleOffsetError, StoreError
from analyzer.store.base import (
    MAX_LIMIT,
    Dialect,
    IncidentQuery,
    IncidentRow,
    Silence,
    decode_cursor,
    silenced_sql,
    status_sql,
)
from analyzer.types import Changes, Evidence, IncidentKey, Interval, OffsetUpdate, Rule, Status

Params = dict[str, Any]
T = TypeVar("T")

_INTERVAL_COLUMNS = (
    "id, rule_id, cluster, namespace, workload, first_seen, last_seen, count, head, tail, pods, "
    "category, severity, transient, resolve_after, acked_at, acked_by, ack_comment"
)
_ALIAS_OF = "COALESCE((SELECT target FROM incident_aliases WHERE alias = {id}), {id})"


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement of one dialect, rendered once."""

    insert: str
    update: str  # a merge: the surviving row, in place
    delete: str  # a row absorbed by a merge
    alias: str
    alias_repoint: str
    stream_time_upsert: str
    offset_insert: str
    offset_update: str
    load_offsets: str
    stream_time_of: str
    stream_time_max: str
    get_incident: str
    ack: str
    add_silence: str
    list_silences: str
    counts_by_status: str
    claim_suppressed: str
    # One statement each for a whole batch (see merge_batch_program): the key locks (PostgreSQL), the stored
    # rows near any of the batch's spans, which of some ids are taken, and the batch's new and changed rows.
    key_locks: str | None
    near_many: str
    taken: str
    insert_many: str | None  # PostgreSQL only: SQLite runs ``insert`` and ``update`` per row (see _write_rows)
    update_many: str | None
    aliases_since: str
    clock: str
    dialect: Dialect

    def aliases(self, n: int) -> str:
        names = ", ".join(self.dialect.p(f"a{i}") for i in range(n))
        return f"SELECT alias, target FROM incident_aliases WHERE alias IN ({names})"


def statements(d: Dialect) -> Statements:
    p = d.p
    merged = (
        f"first_seen = {p('first_seen')}, last_seen = {p('last_seen')}, count = {p('count')}, "
        f"head = {d.json_param('head')}, tail = {d.json_param('tail')}, pods = {d.json_param('pods')}, "
        f"category = {p('category')}, severity = {p('severity')}, transient = {p('transient')}, "
        f"resolve_after = {p('resolve_after')}, "
        # The row's own ack wins, read at write time: an ack the API committed since this merge read the row is
        # kept, not overwritten. Else the ack carried over from an absorbed incident, if any.
        f"acked_at = COALESCE(acked_at, {p('acked_at')}), "
        f"acked_by = CASE WHEN acked_at IS NULL THEN {p('acked_by')} ELSE acked_by END, "
        f"ack_comment = CASE WHEN acked_at IS NULL THEN {p('ack_comment')} ELSE ack_comment END, "
        f"updated_at = {d.clock}"
    )
    return Statements(
        # Inserts nothing (row count 0) when the id is taken, by an incident or an alias: ids are never reused.
        insert=(
            f"INSERT INTO incidents ({_INTERVAL_COLUMNS}, updated_at) SELECT "
            f"{p('id')}, {p('rule_id')}, {p('cluster')}, {p('namespace')}, {p('workload')}, "
            f"{p('first_seen')}, {p('last_seen')}, {p('count')}, "
            f"{d.json_param('head')}, {d.json_param('tail')}, {d.json_param('pods')}, "
            f"{p('category')}, {p('severity')}, {p('transient')}, {p('resolve_after')}, "
            f"{p('acked_at')}, {p('acked_by')}, {p('ack_comment')}, {d.clock} "
            f"WHERE NOT EXISTS (SELECT 1 FROM incident_aliases WHERE alias = {p('id')}) "
            "ON CONFLICT (id) DO NOTHING"
        ),
        update=f"UPDATE incidents SET {merged} WHERE id = {p('id')}",
        delete=f"DELETE FROM incidents WHERE id = {p('id')}",
        alias=(
            f"INSERT INTO incident_aliases (alias, target, updated_at) VALUES ({p('alias')}, {p('target')}, {d.clock}) "
            "ON CONFLICT (alias) DO UPDATE SET target = excluded.target, updated_at = excluded.updated_at"
        ),
        alias_repoint=(
            f"UPDATE incident_aliases SET target = {p('target')}, updated_at = {d.clock} WHERE target = {p('alias')}"
        ),
        stream_time_upsert=(
            f"INSERT INTO stream_times (consumer_group, stream_time) VALUES ({p('group')}, {p('st')}) "
            "ON CONFLICT (consumer_group) DO UPDATE SET "
            f"stream_time = {d.greatest}(stream_times.stream_time, excluded.stream_time)"
        ),
        offset_insert=(
            "INSERT INTO offsets (consumer_group, topic, partition_id, next_offset) "
            f"VALUES ({p('group')}, {p('topic')}, {p('partition')}, {p('next')}) ON CONFLICT DO NOTHING"
        ),
        offset_update=(
            f"UPDATE offsets SET next_offset = {p('next')} WHERE consumer_group = {p('group')} "
            f"AND topic = {p('topic')} AND partition_id = {p('partition')} AND next_offset = {p('previous')} "
            f"AND {p('next')} > {p('previous')}"  # offsets only move forward: a stale writer cannot rewind
        ),
        load_offsets=(
            "SELECT partition_id, next_offset FROM offsets "
            f"WHERE consumer_group = {p('group')} AND topic = {p('topic')} ORDER BY partition_id"
        ),
        stream_time_of=f"SELECT stream_time FROM stream_times WHERE consumer_group = {p('group')}",
        stream_time_max="SELECT MAX(stream_time) FROM stream_times",
        get_incident=(
            f"SELECT {_INTERVAL_COLUMNS}, {status_sql(d)}, {silenced_sql(d)}, updated_at FROM incidents "
            f"WHERE id = {_ALIAS_OF.format(id=p('id'))}"
        ),
        ack=(
            f"UPDATE incidents SET acked_at = {p('at')}, acked_by = {p('by')}, ack_comment = {p('comment')}, "
            f"updated_at = {d.clock} WHERE id = {_ALIAS_OF.format(id=p('id'))}"
        ),
        add_silence=(
            "INSERT INTO silences (id, rule, cluster, namespace, workload, expires_at, created_by, comment) VALUES ("
            f"{p('id')}, {p('rule')}, {p('cluster')}, {p('namespace')}, {p('workload')}, {p('expires_at')}, "
            f"{p('created_by')}, {p('comment')})"
        ),
        list_silences=(
            "SELECT id, rule, cluster, namespace, workload, expires_at, created_by, comment FROM silences "
            f"WHERE expires_at > {p('now')} ORDER BY expires_at, id"
        ),
        counts_by_status=(
            f"SELECT {status_sql(d)} AS status, category, severity, COUNT(*) FROM incidents "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ),
        # Marks each newly suppressed incident as counted and returns its rule: one replica claims each.
        claim_suppressed=(
            f"UPDATE incidents SET suppression_counted = 1 WHERE suppression_counted = 0 "
            f"AND {status_sql(d)} = 'suppressed' RETURNING rule_id"
        ),
        **_bulk_statements(d),
        aliases_since=(
            f"SELECT alias, target FROM incident_aliases WHERE updated_at > {p('since')} "
            f"ORDER BY updated_at DESC, alias LIMIT {p('limit')}"
        ),
        clock=f"SELECT {d.clock}",
        dialect=d,
    )


_ROW_COLUMNS = tuple(_INTERVAL_COLUMNS.split(", "))
# A written row's columns with their PostgreSQL array types, in _INTERVAL_COLUMNS order.
_ROW_TYPES = dict(
    zip(
        _ROW_COLUMNS,
        ("text",) * 5 + ("float8", "float8", "int8") + ("text",) * 5 + ("float8",) * 3 + ("text", "text"),
        strict=True,
    )
)
_SPAN_TYPES = {"rule_id": "text", "cluster": "text", "namespace": "text", "workload": "text"}
_SPAN_TYPES.update(lo="float8", hi="float8")
_JSON_COLUMNS = frozenset({"head", "tail", "pods"})
_KEPT_ON_UPDATE = frozenset(
    {"id", "rule_id", "cluster", "namespace", "workload", "acked_at", "acked_by", "ack_comment"}
)


def _bulk_statements(d: Dialect) -> dict[str, Any]:
    """The batch-wide statements. Each takes a whole table of values in one parameter set: PostgreSQL as one
    array per column (``unnest``; not executemany, which would use pipeline mode), SQLite as one JSON array
    (``json_each``). SQLite writes rows one statement each: in process, a statement costs no round trip, and a
    multi-row UPDATE ... FROM measured 3x slower a row than single-row statements (it copies the rows first)."""
    p = d.p
    pg = d.name == "postgresql"
    if pg:
        arrays = ", ".join(f"{p(c)}::{t}[]" for c, t in _SPAN_TYPES.items())
        spans = f"unnest({arrays}) AS q({', '.join(_SPAN_TYPES)})"
        arrays = ", ".join(f"{p(c)}::{t}[]" for c, t in _ROW_TYPES.items())
        rows = f"unnest({arrays}) AS u({', '.join(_ROW_COLUMNS)})"
        ids = f"= ANY({p('ids')}::text[])"
    else:
        fields = ", ".join(f"json_extract(value, '$[{n}]') AS {c}" for n, c in enumerate(_SPAN_TYPES))
        spans = f"(SELECT {fields} FROM json_each({p('table')})) AS q"
        rows = ""
        ids = f"IN (SELECT value FROM json_each({p('ids')}))"

    def value(c: str) -> str:
        return f"u.{c}::jsonb" if pg and c in _JSON_COLUMNS else f"u.{c}"

    kept = ", ".join(f"{c} = {value(c)}" for c in _ROW_COLUMNS if c not in _KEPT_ON_UPDATE)
    return {
        # d.key_lock for every key of the batch in one statement, in the (sorted) order given.
        "key_locks": None
        if d.key_lock is None
        else "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
        f"FROM unnest({p('keys')}::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
        "near_many": f"SELECT {', '.join(f'i.{c}' for c in _ROW_COLUMNS)} FROM {spans} "
        "JOIN incidents AS i ON i.rule_id = q.rule_id AND i.cluster = q.cluster AND i.namespace = q.namespace "
        "AND i.workload = q.workload AND i.last_seen >= q.lo AND i.first_seen <= q.hi",
        "taken": f"SELECT id FROM incidents WHERE id {ids} "
        f"UNION ALL SELECT alias FROM incident_aliases WHERE alias {ids}",
        # As ``insert``: nothing (a row count short of the rows given) where an id is taken.
        "insert_many": None
        if not pg
        else f"INSERT INTO incidents ({_INTERVAL_COLUMNS}, updated_at) "
        f"SELECT {', '.join(value(c) for c in _ROW_COLUMNS)}, {d.clock} FROM {rows} "
        "WHERE NOT EXISTS (SELECT 1 FROM incident_aliases AS a WHERE a.alias = u.id) ON CONFLICT (id) DO NOTHING",
        # As ``update``: the row's own ack, read at write time, wins over one carried from an absorbed row.
        "update_many": None
        if not pg
        else f"UPDATE incidents AS i SET {kept}, "
        "acked_at = COALESCE(i.acked_at, u.acked_at), "
        "acked_by = CASE WHEN i.acked_at IS NULL THEN u.acked_by ELSE i.acked_by END, "
        "ack_comment = CASE WHEN i.acked_at IS NULL THEN u.ack_comment ELSE i.ack_comment END, "
        f"updated_at = {d.clock} FROM {rows} WHERE i.id = u.id",
    }


def spans_params(d: Dialect, table: Sequence[Sequence[Any]]) -> Params:
    if d.name == "postgresql":
        return {c: [r[n] for r in table] for n, c in enumerate(_SPAN_TYPES)}
    return {"table": _dump(table)}


# -- text a store can hold ------------------------------------------------------------------------------------

_NUL = "\x00"


def storable(text: str) -> str:
    """``text`` as both stores can hold it: NUL (which PostgreSQL text and jsonb refuse) as the six characters
    ``\\u0000``, a lone surrogate (which no UTF-8 encoder takes) as its ``\\udXXX`` escape. Anything else
    unchanged, so a poison record cannot exist: every line the decoder accepts is storable."""
    if _NUL in text:
        text = text.replace(_NUL, "\\u0000")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _storable_opt(text: str | None) -> str | None:
    return None if text is None else storable(text)


def _storable_evidence(e: Evidence) -> Evidence:
    line, pod, container = storable(e.line), _storable_opt(e.pod), _storable_opt(e.container)
    if line is e.line and pod is e.pod and container is e.container:
        return e
    return Evidence(e.time, line, pod, container)


def storable_interval(iv: Interval) -> Interval:
    """The interval with every text made storable (the same object when nothing needed it: the common case)."""
    key = IncidentKey(storable(iv.key.cluster), storable(iv.key.namespace), storable(iv.key.workload))
    head = tuple(_storable_evidence(e) for e in iv.head)
    tail = tuple(_storable_evidence(e) for e in iv.tail)
    pods = tuple(storable(p) for p in iv.pods)
    if key == iv.key and head == iv.head and tail == iv.tail and pods == iv.pods:
        return iv
    return replace(iv, key=key, head=head, tail=tail, pods=tuple(sorted(set(pods))))


_SPACE = re.compile(r"\s+")


def bounded(message: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters: driver messages can be long, multi-line, or grow per retry."""
    text = _SPACE.sub(" ", message).strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# -- the write transaction ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One statement for a driver to run: it sends back the rows (``rows``) or the row count."""

    sql: str
    params: Params
    rows: bool = False


Program = Generator[Op, Any, T]


def drive(program: Program[T], execute: Callable[[Op], Any]) -> T:
    """Run a program with a blocking ``execute`` (SQLite). The async twin lives in the PostgreSQL backend."""
    try:
        op = next(program)
        while True:
            op = program.send(execute(op))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def check_rules(changes: Changes, rules: Mapping[str, Rule]) -> None:
    missing = sorted({iv.rule_id for iv in changes.merges if iv.rule_id not in rules})
    if missing:
        raise StoreError(f"commit_batch: no rule given for {', '.join(missing)} (pass every rule of the batch)")


def commit_program(
    s: Statements, group: str, changes: Changes, offsets: Sequence[OffsetUpdate], rules: Mapping[str, Rule]
) -> Program[None]:
    """One batch, in the caller's transaction: offsets (checked), merges in place, stream time.

    Offsets first: a fenced zombie stops (StaleOffsetError, the caller rolls back) before touching, and on
    PostgreSQL locking, any incident row.
    """
    for o in sorted(offsets, key=lambda o: (o.topic, o.partition)):
        params: Params = {"group": group, "topic": o.topic, "partition": o.partition, "next": o.next}
        if o.previous is None:
            n = yield Op(s.offset_insert, params)
        else:
            n = yield Op(s.offset_update, {**params, "previous": o.previous})
        if n != 1:
            raise StaleOffsetError(
                f"offset of {group}/{o.topic}[{o.partition}] is no longer {o.previous}: "
                "another consumer owns this partition now"
            )
    ordered = merge_order(changes)
    if ordered:
        yield from merge_batch_program(s, ordered, rules)
    if changes.stream_time is not None:
        yield Op(s.stream_time_upsert, {"group": group, "st": float(changes.stream_time)})


@dataclass(slots=True)
class _Row:
    """An incident row as this transaction sees it (stored, or as the batch's writes will leave it)."""

    id: str
    interval: Interval
    acked_at: float | None = None
    acked_by: str | None = None
    ack_comment: str | None = None

    @staticmethod
    def stored(row: Sequence[Any]) -> _Row:
        return _Row(str(row[0]), row_to_interval(row), None if row[15] is None else float(row[15]), row[16], row[17])

    def ack(self) -> Params:
        return {"acked_at": self.acked_at, "acked_by": self.acked_by, "ack_comment": self.ack_comment}


class _KeyRows:
    """One (rule, key)'s stored rows, as read over the spans in ``spans``."""

    __slots__ = ("rows", "spans")

    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}
        self.spans: list[tuple[float, float]] = []

    def covers(self, lo: float, hi: float) -> bool:
        """Every stored row touching [lo, hi] has been read: the spans read cover it (a row touching a point of
        it touches the span read that holds the point)."""
        at = lo
        for a, b in sorted(self.spans):
            if b < at:
                continue
            if a > at:
                return False
            at = b
            if at >= hi:
                return True
        return False


@dataclass(slots=True)
class _Writes:
    """What a batch's merges leave to write (final states), and what they still need read."""

    new: dict[str, tuple[_Row, Rule]] = field(default_factory=dict)  # incidents the batch creates
    changed: dict[str, tuple[_Row, Rule]] = field(default_factory=dict)  # stored rows updated in place
    deleted: list[str] = field(default_factory=list)  # stored rows absorbed
    aliases: list[tuple[str, str]] = field(default_factory=list)  # (absorbed id, survivor id), in merge order
    taken: set[str] = field(default_factory=set)  # ids this batch gives out (new rows, aliases)
    spans: list[tuple[str, tuple[float, float]]] = field(default_factory=list)  # to read before planning again
    ids: set[str] = field(default_factory=set)  # to check before planning again


def merge_batch_program(s: Statements, ivs: Sequence[Interval], rules: Mapping[str, Rule]) -> Program[None]:
    """Fold the batch's intervals (in ``merge_order``) into the stored incidents they touch, in a fixed number
    of statements: lock the keys (PostgreSQL), read the stored rows near every span and which new ids are taken,
    merge in memory, then write the new rows and the changed rows (PostgreSQL: one statement each; SQLite, in
    process: a statement a row). Merges that bridge incidents add a delete and two alias writes each.

    Each interval is merged as if alone, in turn: touching nothing, it is a new incident; otherwise the touched
    row that started first survives and is updated in place (its id, ack, ack comment stay); any other one it
    bridged is deleted and its id becomes an alias of the survivor. A merge widens the span, which can reach
    rows not read yet: then those spans (of every key that needs one) are read in one more statement and the
    merges planned again, until nothing is missing (typically twice: a stored row extended widens the span).
    """
    by_key: dict[str, list[tuple[Interval, Rule]]] = {}
    for iv in ivs:
        by_key.setdefault(merge_lock(iv), []).append((iv, rules[iv.rule_id]))
    first = {k: items[0][0] for k, items in by_key.items()}
    parts = {k: (iv.rule_id, iv.key.cluster, iv.key.namespace, iv.key.workload) for k, iv in first.items()}
    if s.key_locks is not None:
        yield Op(s.key_locks, {"keys": sorted(by_key)}, rows=True)
    stored = {k: _KeyRows() for k in by_key}
    taken: set[str] = set()  # ids held by a stored incident or alias, among the ``checked``
    checked: set[str] = set()
    spans = [(k, _span(iv, rule.resolve_after)) for k, items in by_key.items() for iv, rule in items]
    ids = {iv.id for iv in ivs}
    while True:
        if spans:
            yield from _read_near(s, stored, parts, spans)
        if ids:
            taken.update(str(r[0]) for r in (yield _ids_op(s, sorted(ids))))
            checked |= ids
        plan = _Writes()
        for k, items in by_key.items():
            _plan_key(stored[k], items, taken, checked, plan)
        if not plan.spans and not plan.ids:
            break
        spans, ids = plan.spans, plan.ids

    for incident_id in plan.deleted:
        yield Op(s.delete, {"id": incident_id})
    if plan.new:
        inserted = yield from _write_rows(s, s.insert, s.insert_many, list(plan.new.values()))
        if inserted != len(plan.new):  # an id taken since it was checked: roll back, the batch is tried again
            raise StoreError(f"commit_batch: {len(plan.new) - inserted} new incident ids taken meanwhile")
    if plan.changed:
        yield from _write_rows(s, s.update, s.update_many, list(plan.changed.values()))
    for alias, target in plan.aliases:
        yield Op(s.alias_repoint, {"alias": alias, "target": target})
        yield Op(s.alias, {"alias": alias, "target": target})


def _plan_key(
    stored: _KeyRows, items: Sequence[tuple[Interval, Rule]], taken: set[str], checked: set[str], plan: _Writes
) -> None:
    """Merge one key's intervals into its rows (a copy: planning may start again), adding the writes to
    ``plan``; or stop at the first span or id not read yet, adding it to the plan's reads instead."""
    rows = dict(stored.rows)
    for iv, rule in items:
        touched: dict[str, _Row] = {}
        current = iv
        while True:
            lo, hi = _span(current, rule.resolve_after)
            if not stored.covers(lo, hi):
                plan.spans.append((merge_lock(iv), (lo, hi)))
                return
            near = sorted(
                (r for r in rows.values() if r.interval.last_seen >= lo and r.interval.first_seen <= hi),
                key=lambda r: (r.interval.first_seen, r.id),
            )
            fresh = [r for r in near if r.id not in touched]
            if not fresh:
                break
            for row in fresh:
                touched[row.id] = row
                current = incidents.merge(current, row.interval)
        if not touched:
            incident_id = iv.id
            # An id is never reused (retention may have deleted its incident and left its aliases).
            while incident_id in taken or incident_id in plan.taken:
                incident_id = hashlib.sha256(incident_id.encode()).hexdigest()[:20]
            if incident_id not in checked:
                plan.ids.add(incident_id)
                return
            row = _Row(incident_id, current)
            rows[incident_id] = row
            plan.new[incident_id] = (row, rule)
            plan.taken.add(incident_id)
            continue
        ordered = sorted(touched.values(), key=lambda r: (r.interval.first_seen, r.id))
        survivor, absorbed = ordered[0], ordered[1:]
        acked = [r for r in ordered if r.acked_at is not None]
        ack = survivor if survivor.acked_at is not None else min(acked, key=_acked_at, default=None)
        kept = _Row(survivor.id, current)
        if ack is not None:
            kept.acked_at, kept.acked_by, kept.ack_comment = ack.acked_at, ack.acked_by, ack.ack_comment
        rows[kept.id] = kept
        (plan.new if kept.id in plan.new else plan.changed)[kept.id] = (kept, rule)
        for row in absorbed:
            del rows[row.id]
            if plan.new.pop(row.id, None) is None:  # a stored row (one this batch created is just not written)
                plan.changed.pop(row.id, None)
                plan.deleted.append(row.id)
            plan.aliases.append((row.id, survivor.id))
            plan.taken.add(row.id)


def _acked_at(row: _Row) -> float:
    return row.acked_at if row.acked_at is not None else float("inf")


def _span(iv: Interval, resolve_after: float) -> tuple[float, float]:
    return float(iv.first_seen - resolve_after), float(iv.last_seen + resolve_after)


def _read_near(
    s: Statements,
    keys: Mapping[str, _KeyRows],
    parts_of: Mapping[str, tuple[str, str, str, str]],
    spans: Sequence[tuple[str, tuple[float, float]]],
) -> Program[None]:
    """Read the stored rows touching the spans (one statement) into their keys."""
    table = [(*parts_of[k], float(lo), float(hi)) for k, (lo, hi) in spans]
    found = yield Op(s.near_many, spans_params(s.dialect, table), rows=True)
    for k, span in spans:
        keys[k].spans.append(span)
    for r in found:
        rows = keys[merge_lock_of(r[1], r[2], r[3], r[4])].rows
        if str(r[0]) not in rows:
            rows[str(r[0])] = _Row.stored(r)


def _ids_op(s: Statements, ids: Sequence[str]) -> Op:
    return Op(s.taken, {"ids": list(ids) if s.dialect.name == "postgresql" else _dump(list(ids))}, rows=True)


def _write_rows(s: Statements, one: str, many: str | None, rows: Sequence[tuple[_Row, Rule]]) -> Program[int]:
    """Write rows: with ``many`` (PostgreSQL), all in one statement over arrays; else one statement a row.
    Returns the row count."""
    sets = [{**interval_params(row.interval, rule), "id": row.id, **row.ack()} for row, rule in rows]
    if many is None:
        count = 0
        for params in sets:
            count += yield Op(one, params)
        return count
    n = yield Op(many, {c: [p[c] for p in sets] for c in _ROW_COLUMNS})
    return int(n)


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()


def _evidence_json(items: Sequence[Evidence]) -> str:
    return _dump([{"time": e.time, "line": e.line, "pod": e.pod, "container": e.container} for e in items])


def interval_params(iv: Interval, rule: Rule) -> Params:
    return {
        "rule_id": iv.rule_id,
        "cluster": iv.key.cluster,
        "namespace": iv.key.namespace,
        "workload": iv.key.workload,
        "first_seen": float(iv.first_seen),
        "last_seen": float(iv.last_seen),
        "count": iv.count,
        "head": _evidence_json(iv.head),
        "tail": _evidence_json(iv.tail),
        "pods": _dump(list(iv.pods)),
        "category": str(rule.category),
        "severity": str(rule.severity),
        "transient": None if rule.transient is None else float(rule.transient),
        "resolve_after": float(rule.resolve_after),
    }


def merge_order(changes: Changes) -> list[Interval]:
    """Merges in a fixed (rule, key) order, so concurrent writers take per-key locks in the same order."""
    return sorted((storable_interval(i) for i in changes.merges), key=lambda i: (merge_lock(i), i.first_seen))


def merge_lock(iv: Interval) -> str:
    return merge_lock_of(iv.rule_id, iv.key.cluster, iv.key.namespace, iv.key.workload)


def merge_lock_of(rule_id: str, cluster: str, namespace: str, workload: str) -> str:
    return f"{rule_id}\x1f{cluster}\x1f{namespace}\x1f{workload}"


def alias_params(ids: Sequence[str]) -> Params:
    return {f"a{i}": storable(x) for i, x in enumerate(ids)}


# -- retention ------------------------------------------------------------------------------------------------


def retention_statements(d: Dialect) -> tuple[str, str, str]:
    """(incidents, aliases, silences) deletes of one retention batch.

    An incident goes once it has been settled (quiet past its resolve_after, so resolved or a suppressed
    transient) for longer than the retention: ``last_seen + resolve_after < cutoff``. The DELETE re-checks
    the condition on the row it deletes, so a row a concurrent merge just extended (PostgreSQL, read
    committed re-evaluates it) is kept. ``last_seen < cutoff`` lets the scan use the last_seen index.
    """
    p = d.p
    settled = f"last_seen < {p('cutoff')} AND last_seen + resolve_after < {p('cutoff')}"
    incidents_sql = (
        f"DELETE FROM incidents WHERE id IN (SELECT id FROM incidents WHERE {settled} "
        f"ORDER BY last_seen LIMIT {p('n')}) AND {settled} RETURNING id"
    )
    if d.name == "postgresql":
        aliases_sql = f"DELETE FROM incident_aliases WHERE target = ANY({p('ids')})"
    else:
        aliases_sql = f"DELETE FROM incident_aliases WHERE target IN (SELECT value FROM json_each({p('ids')}))"
    silences_sql = (
        f"DELETE FROM silences WHERE id IN (SELECT id FROM silences WHERE expires_at < {p('expired')} "
        f"ORDER BY expires_at LIMIT {p('n')})"
    )
    return incidents_sql, aliases_sql, silences_sql


def purge_program(
    d: Dialect, sql: tuple[str, str, str], incidents_before: float | None, silences_before: float | None, n: int
) -> Program[tuple[int, int, int]]:
    """One retention batch, in the caller's transaction: at most ``n`` incidents (and their aliases) and ``n``
    silences. Returns how many incidents, aliases and silences it deleted."""
    deleted_incidents = deleted_aliases = deleted_silences = 0
    if incidents_before is not None:
        rows = yield Op(sql[0], {"cutoff": float(incidents_before), "n": n}, rows=True)
        ids = [str(r[0]) for r in rows]
        deleted_incidents = len(ids)
        if ids:
            deleted_aliases = yield Op(sql[1], {"ids": ids if d.name == "postgresql" else _dump(ids)})
    if silences_before is not None:
        deleted_silences = yield Op(sql[2], {"expired": float(silences_before), "n": n})
    return deleted_incidents, max(0, deleted_aliases), max(0, deleted_silences)


# -- reads ----------------------------------------------------------------------------------------------------


def _json(value: Any) -> Any:
    # SQLite hands back JSON text; psycopg has already parsed jsonb.
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _evidence(value: Any) -> tuple[Evidence, ...]:
    return tuple(
        Evidence(time=float(e["time"]), line=e["line"], pod=e.get("pod"), container=e.get("container"))
        for e in _json(value)
    )


def row_to_interval(row: Sequence[Any]) -> Interval:
    return Interval(
        rule_id=row[1],
        key=IncidentKey(row[2], row[3], row[4]),
        first_seen=float(row[5]),
        last_seen=float(row[6]),
        count=int(row[7]),
        head=_evidence(row[8]),
        tail=_evidence(row[9]),
        pods=tuple(_json(row[10])),
    )


def row_to_incident(row: Sequence[Any], *, evidence: bool = True) -> IncidentRow:
    """A row of ``_INTERVAL_COLUMNS`` followed by the status and silenced expressions.

    ``evidence=False`` leaves head and tail empty: a page of 50 items shows none, and decoding them was
    most of a list request's cost.
    """
    return IncidentRow(
        id=row[0],
        rule_id=row[1],
        key=IncidentKey(row[2], row[3], row[4]),
        first_seen=float(row[5]),
        last_seen=float(row[6]),
        count=int(row[7]),
        head=_evidence(row[8]) if evidence else (),
        tail=_evidence(row[9]) if evidence else (),
        pods=tuple(_json(row[10])),
        category=row[11],
        severity=row[12],
        transient=None if row[13] is None else float(row[13]),
        resolve_after=float(row[14]),
        acked_at=None if row[15] is None else float(row[15]),
        acked_by=row[16],
        ack_comment=row[17],
        status=Status(row[18]),
        silenced=bool(row[19]),
        updated_at=float(row[20]) if len(row) > 20 else 0.0,
    )


def row_to_silence(row: Sequence[Any]) -> Silence:
    return Silence(
        id=row[0],
        rule=row[1],
        cluster=row[2],
        namespace=row[3],
        workload=row[4],
        expires_at=float(row[5]),
        created_by=row[6],
        comment=row[7],
    )


def silence_params(silence: Silence, silence_id: str) -> Params:
    return {
        "id": storable(silence_id),
        "rule": _storable_opt(silence.rule),
        "cluster": _storable_opt(silence.cluster),
        "namespace": _storable_opt(silence.namespace),
        "workload": _storable_opt(silence.workload),
        "expires_at": float(silence.expires_at),
        "created_by": storable(silence.created_by),
        "comment": storable(silence.comment),
    }


# Open and pending both need stream_time - last_seen < resolve_after (analyzer.incidents.status_of), so their
# rows were last seen after stream_time - MAX(resolve_after) (indexed: one lookup). Resolved and suppressed
# incidents are most of a store that has run for a while; these two statuses are the newest few.
_RECENT_STATUSES = frozenset({Status.OPEN, Status.PENDING})


def list_query(d: Dialect, q: IncidentQuery) -> tuple[str, Params]:
    """The page query (one row more than the limit, to know whether a next page exists)."""
    if not 1 <= q.limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {q.limit}")
    p = d.p
    params: Params = {
        "st": float(q.stream_time),
        "now": float(q.stream_time if q.now is None else q.now),
        "limit": q.limit + 1,
    }
    where: list[str] = []
    if q.statuses:
        names = []
        for i, status in enumerate(dict.fromkeys(q.statuses)):
            params[f"status{i}"] = Status(status).value
            names.append(p(f"status{i}"))
        where.append(f"({status_sql(d)}) IN ({', '.join(names)})")
        if {Status(x) for x in q.statuses} <= _RECENT_STATUSES:
            # Implied by the status (see _RECENT_STATUSES), and an index range: the newest rows only. A second
            # of slack: the CASE compares st - last_seen, this last_seen itself (floating point may round apart).
            where.append(f"last_seen >= {p('st')} - 1.0 - (SELECT MAX(resolve_after) FROM incidents)")
    for column, value in (
        ("category", q.category),
        ("severity", q.severity),
        ("rule_id", q.rule),
        ("cluster", q.cluster),
        ("namespace", q.namespace),
        ("workload", q.workload),
    ):
        if value is not None:
            params[column] = storable(value)
            where.append(f"{column} = {p(column)}")
    if q.rules:
        names = []
        for i, rule_id in enumerate(dict.fromkeys(q.rules)):
            params[f"rule{i}"] = storable(rule_id)
            names.append(p(f"rule{i}"))
        where.append(f"rule_id IN ({', '.join(names)})")
    if q.pod is not None:
        params["pod"] = d.pods_param(storable(q.pod))
        where.append(d.pods_contain("pod"))
    if q.since is not None:
        params["since"] = float(q.since)
        where.append(f"last_seen >= {p('since')}")
    if q.until is not None:
        params["until"] = float(q.until)
        where.append(f"first_seen <= {p('until')}")
    if q.cursor is not None:
        params["c_last"], c_id = decode_cursor(q.cursor)
        params["c_id"] = storable(c_id)
        where.append(f"(last_seen < {p('c_last')} OR (last_seen = {p('c_last')} AND id < {p('c_id')}))")
    sql = f"SELECT {_INTERVAL_COLUMNS}, {status_sql(d)}, {silenced_sql(d)}, updated_at FROM incidents"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY last_seen DESC, id DESC LIMIT {p('limit')}"
    return sql, params
