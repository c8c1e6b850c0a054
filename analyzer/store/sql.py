"""Statements and row codecs shared by both backends; each backend only executes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from analyzer import incidents
from analyzer.errors import StoreError
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
from analyzer.types import Changes, Evidence, IncidentKey, Interval, Rule, Status

Params = dict[str, Any]

_INTERVAL_COLUMNS = (
    "id, rule_id, cluster, namespace, workload, first_seen, last_seen, count, head, tail, pods, "
    "category, severity, transient, resolve_after, acked_at, acked_by"
)


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement of one dialect, rendered once."""

    upsert: str
    delete: str
    acked_among: str  # acks of one replaced interval, to carry over to its successor
    stream_time_upsert: str
    offset_insert: str
    offset_update: str
    load_offsets: str
    stream_time_of: str
    stream_time_max: str
    live_intervals: str
    get_incident: str
    ack: str
    add_silence: str
    list_silences: str
    counts_by_status: str
    suppressed_by_rule: str
    near: str  # stored intervals of one rule and key within resolve_after of a span


def statements(d: Dialect) -> Statements:
    p = d.p
    return Statements(
        upsert=(
            f"INSERT INTO incidents ({_INTERVAL_COLUMNS}) VALUES ("
            f"{p('id')}, {p('rule_id')}, {p('cluster')}, {p('namespace')}, {p('workload')}, "
            f"{p('first_seen')}, {p('last_seen')}, {p('count')}, "
            f"{d.json_param('head')}, {d.json_param('tail')}, {d.json_param('pods')}, "
            f"{p('category')}, {p('severity')}, {p('transient')}, {p('resolve_after')}, "
            f"{p('acked_at')}, {p('acked_by')}) "
            "ON CONFLICT (id) DO UPDATE SET "
            "rule_id = excluded.rule_id, cluster = excluded.cluster, namespace = excluded.namespace, "
            "workload = excluded.workload, first_seen = excluded.first_seen, last_seen = excluded.last_seen, "
            "count = excluded.count, head = excluded.head, tail = excluded.tail, pods = excluded.pods, "
            "category = excluded.category, severity = excluded.severity, transient = excluded.transient, "
            "resolve_after = excluded.resolve_after, "
            # An existing ack wins; an inherited one (from an interval merged into this one) fills a gap.
            "acked_at = COALESCE(incidents.acked_at, excluded.acked_at), "
            "acked_by = CASE WHEN incidents.acked_at IS NULL THEN excluded.acked_by ELSE incidents.acked_by END"
        ),
        delete=f"DELETE FROM incidents WHERE id = {p('id')}",
        acked_among=(
            "SELECT rule_id, cluster, namespace, workload, first_seen, last_seen, acked_at, acked_by "
            f"FROM incidents WHERE id = {p('id')} AND acked_at IS NOT NULL"
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
        live_intervals=(
            f"SELECT {_INTERVAL_COLUMNS} FROM incidents WHERE {p('st')} - last_seen < resolve_after "
            "ORDER BY rule_id, cluster, namespace, workload, first_seen"
        ),
        get_incident=(
            f"SELECT {_INTERVAL_COLUMNS}, {status_sql(d)}, {silenced_sql(d)} FROM incidents WHERE id = {p('id')}"
        ),
        ack=f"UPDATE incidents SET acked_at = {p('at')}, acked_by = {p('by')} WHERE id = {p('id')}",
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
        suppressed_by_rule=(
            f"SELECT rule_id, COUNT(*) FROM incidents WHERE {status_sql(d)} = 'suppressed' GROUP BY rule_id ORDER BY 1"
        ),
        near=(
            f"SELECT {_INTERVAL_COLUMNS} FROM incidents WHERE rule_id = {p('rule_id')} AND cluster = {p('cluster')} "
            f"AND namespace = {p('namespace')} AND workload = {p('workload')} "
            f"AND last_seen >= {p('lo')} AND first_seen <= {p('hi')}"
        ),
    )


# -- writes ---------------------------------------------------------------------------------------------------


def check_rules(changes: Changes, rules: Mapping[str, Rule]) -> None:
    missing = sorted({iv.rule_id for iv in (*changes.upserts, *changes.merges) if iv.rule_id not in rules})
    if missing:
        raise StoreError(f"commit_batch: no rule given for {', '.join(missing)} (pass every rule of the batch)")


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()


def _evidence_json(items: Sequence[Evidence]) -> str:
    return _dump([{"time": e.time, "line": e.line, "pod": e.pod, "container": e.container} for e in items])


def upsert_params(
    changes: Changes, rules: Mapping[str, Rule], inherited: Mapping[str, tuple[float, str | None]]
) -> list[Params]:
    """One parameter set per upsert, ordered by id so concurrent writers lock rows in the same order."""
    out = []
    for iv in sorted(changes.upserts, key=lambda i: i.id):
        rule = rules[iv.rule_id]
        acked = inherited.get(iv.id)
        out.append(
            {
                "id": iv.id,
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
                "acked_at": acked[0] if acked else None,
                "acked_by": acked[1] if acked else None,
            }
        )
    return out


def inherit_acks(changes: Changes, acked: Sequence[Sequence[Any]]) -> dict[str, tuple[float, str | None]]:
    """Upsert id -> ack carried over from a replaced (deleted) interval that the upsert now covers.

    A merge replaces intervals by one with a new id; without this an operator's ack would vanish with it.
    ``acked`` holds rows of the ``acked_among`` statement.
    """
    out: dict[str, tuple[float, str | None]] = {}
    for rule_id, cluster, namespace, workload, first_seen, last_seen, acked_at, acked_by in acked:
        key = IncidentKey(cluster, namespace, workload)
        for iv in changes.upserts:
            if iv.rule_id == rule_id and iv.key == key and iv.first_seen <= first_seen and iv.last_seen >= last_seen:
                prior = out.get(iv.id)
                if prior is None or acked_at < prior[0]:
                    out[iv.id] = (float(acked_at), acked_by)
    return out


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
        status=Status(row[17]),
        silenced=bool(row[18]),
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
        "id": silence_id,
        "rule": silence.rule,
        "cluster": silence.cluster,
        "namespace": silence.namespace,
        "workload": silence.workload,
        "expires_at": float(silence.expires_at),
        "created_by": silence.created_by,
        "comment": silence.comment,
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
            params[column] = value
            where.append(f"{column} = {p(column)}")
    if q.pod is not None:
        params["pod"] = d.pods_param(q.pod)
        where.append(d.pods_contain("pod"))
    if q.since is not None:
        params["since"] = float(q.since)
        where.append(f"last_seen >= {p('since')}")
    if q.until is not None:
        params["until"] = float(q.until)
        where.append(f"first_seen <= {p('until')}")
    if q.cursor is not None:
        params["c_last"], params["c_id"] = decode_cursor(q.cursor)
        where.append(f"(last_seen < {p('c_last')} OR (last_seen = {p('c_last')} AND id < {p('c_id')}))")
    sql = f"SELECT {_INTERVAL_COLUMNS}, {status_sql(d)}, {silenced_sql(d)} FROM incidents"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY last_seen DESC, id DESC LIMIT {p('limit')}"
    return sql, params


# -- merge on write -------------------------------------------------------------------------------------------


def merge_order(changes: Changes) -> list[Interval]:
    """Merges in a fixed (rule, key) order, so concurrent writers take per-key locks in the same order."""
    return sorted(changes.merges, key=lambda i: (merge_lock(i), i.first_seen))


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


def absorb(current: Interval, rows: Sequence[Sequence[Any]]) -> tuple[Interval, list[str]]:
    """Merge stored rows into ``current``; returns the result and the ids of the rows it replaces."""
    ids = []
    for row in rows:
        ids.append(str(row[0]))
        current = incidents.merge(current, row_to_interval(row))
    return current, ids
