"""Statements, row codecs and the one write transaction shared by both backends.

The merge logic is written once, as a generator of statements (``Op``): each backend's driver executes
what it yields and sends back rows or a row count, SQLite synchronously in a worker thread, PostgreSQL with
``await``. Neither backend has a write loop of its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
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

    key_lock: str | None
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
    near: str  # stored intervals of one rule and key within resolve_after of a span
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
        key_lock=d.key_lock,
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
        near=(
            f"SELECT {_INTERVAL_COLUMNS} FROM incidents WHERE rule_id = {p('rule_id')} AND cluster = {p('cluster')} "
            f"AND namespace = {p('namespace')} AND workload = {p('workload')} "
            f"AND last_seen >= {p('lo')} AND first_seen <= {p('hi')} ORDER BY first_seen, id"
        ),
        aliases_since=(
            f"SELECT alias, target FROM incident_aliases WHERE updated_at > {p('since')} "
            f"ORDER BY updated_at DESC, alias LIMIT {p('limit')}"
        ),
        clock=f"SELECT {d.clock}",
        dialect=d,
    )


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
    for iv in merge_order(changes):
        yield from merge_program(s, iv, rules[iv.rule_id])
    if changes.stream_time is not None:
        yield Op(s.stream_time_upsert, {"group": group, "st": float(changes.stream_time)})


def merge_program(s: Statements, iv: Interval, rule: Rule) -> Program[None]:
    """Fold ``iv`` into the stored incidents of its rule and key that it touches.

    None: a new incident. Otherwise the one that started first survives and is updated in place (its id, ack,
    ack comment stay); any other one it bridged is deleted and its id becomes an alias of the survivor.
    """
    if s.key_lock is not None:
        yield Op(s.key_lock, {"key": merge_lock(iv)}, rows=True)
    touched: dict[str, Sequence[Any]] = {}
    current = iv
    while True:  # a merge widens the span, which can reach further rows
        rows = yield Op(s.near, near_params(current, rule.resolve_after), rows=True)
        fresh = [r for r in rows if str(r[0]) not in touched]
        if not fresh:
            break
        for row in fresh:
            touched[str(row[0])] = row
            current = incidents.merge(current, row_to_interval(row))
    if not touched:
        params = {**interval_params(current, rule), "id": iv.id, **_ack(None)}
        while (yield Op(s.insert, params)) != 1:  # the id is taken (after retention deleted its incident)
            params["id"] = hashlib.sha256(params["id"].encode()).hexdigest()[:20]
        return
    ordered = sorted(touched.values(), key=lambda r: (float(r[5]), str(r[0])))
    survivor, absorbed = ordered[0], ordered[1:]
    acked = [r for r in ordered if r[15] is not None]
    ack = survivor if survivor[15] is not None else min(acked, key=lambda r: float(r[15]), default=None)
    yield Op(s.update, {**interval_params(current, rule), "id": survivor[0], **_ack(ack)})
    for row in absorbed:
        yield Op(s.delete, {"id": row[0]})
        yield Op(s.alias_repoint, {"alias": row[0], "target": survivor[0]})
        yield Op(s.alias, {"alias": row[0], "target": survivor[0]})


def _ack(row: Sequence[Any] | None) -> Params:
    if row is None:
        return {"acked_at": None, "acked_by": None, "ack_comment": None}
    return {"acked_at": float(row[15]), "acked_by": row[16], "ack_comment": row[17]}


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
    return f"{iv.rule_id}\x1f{iv.key.cluster}\x1f{iv.key.namespace}\x1f{iv.key.workload}"


def near_params(iv: Interval, resolve_after: float) -> Params:
    return {
        "rule_id": iv.rule_id,
        "cluster": iv.key.cluster,
        "namespace": iv.key.namespace,
        "workload": iv.key.workload,
        "lo": float(iv.first_seen - resolve_after),
        "hi": float(iv.last_seen + resolve_after),
    }


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
