"""PostgreSQL backend (psycopg 3, async): one connection for writes, one for reads, reconnecting on failure."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from analyzer.errors import ConfigError, StaleOffsetError, StoreError
from analyzer.store import migrations as mig
from analyzer.store.base import POSTGRESQL, IncidentPage, IncidentQuery, IncidentRow, Silence, encode_cursor
from analyzer.store.sql import (
    absorb,
    check_rules,
    inherit_acks,
    list_query,
    merge_lock,
    merge_order,
    near_params,
    row_to_incident,
    row_to_interval,
    row_to_silence,
    silence_params,
    statements,
    upsert_params,
)
from analyzer.types import Changes, Interval, OffsetUpdate, Rule

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

_SQL = statements(POSTGRESQL)
# Serialises concurrent migrations from several replicas (CREATE TABLE IF NOT EXISTS alone races).
_MIGRATION_LOCK = 0x6D6C615F736368  # "mla_sch"


class _Link:
    """One connection behind a lock; (re)connected on first use after a failure."""

    def __init__(self, conninfo: str, statement_timeout: float) -> None:
        self._conninfo = conninfo
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._conn: Conn | None = None
        self.lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def connection(self) -> Conn:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            # Session settings, not startup options: works behind PgBouncer and keeps the DSN's own options.
            await conn.execute(f"SET statement_timeout = {self._statement_timeout_ms}")
            await conn.execute(f"SET idle_in_transaction_session_timeout = {self._statement_timeout_ms}")
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    def broken(self) -> bool:
        return self._conn is None or self._conn.closed or self._conn.broken

    async def discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already unusable; we only release the socket
                await conn.close()


class PostgresStore:
    """Shared store for several replicas. ``url`` is a libpq URL or key=value DSN."""

    def __init__(self, url: str, *, statement_timeout: float = 10.0, connect_timeout: float = 5.0) -> None:
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as e:
            raise ConfigError(f"invalid PostgreSQL URL: {e}") from e
        extra: dict[str, Any] = {}
        if "connect_timeout" not in given:
            extra["connect_timeout"] = max(1, round(connect_timeout))
        if "application_name" not in given:
            extra["application_name"] = "mesh-log-analyzer"
        conninfo = make_conninfo(url, **extra)
        connect_budget = float(given.get("connect_timeout") or extra.get("connect_timeout") or connect_timeout)
        # The client-side bound covers what statement_timeout cannot: a frozen server or a dead network.
        self._op_timeout = statement_timeout + connect_budget + 5.0
        self._writer = _Link(conninfo, statement_timeout)
        self._reader = _Link(conninfo, statement_timeout)
        self._where = _redacted(given)
        self._open = False

    def __repr__(self) -> str:
        return f"PostgresStore({self._where})"

    async def _run(self, link: _Link, op: Callable[[Conn], Awaitable[T]], *, bound: float | None = None) -> T:
        """Run ``op`` on the link's connection, translating driver errors into StoreError.

        A connection found broken is replaced and the operation retried once. That is safe for every
        operation here: writes are idempotent upserts, and a batch that did commit before the link broke
        fails its offset check on the retry (StaleOffsetError) instead of applying twice.
        """
        if not self._open:
            raise StoreError("the PostgreSQL store is not open")
        limit = bound or self._op_timeout
        async with link.lock:
            for attempt in range(2):
                fresh = not link.connected
                try:
                    async with asyncio.timeout(limit):
                        return await op(await link.connection())
                except StoreError:
                    raise
                except asyncio.CancelledError:
                    await link.discard()  # interrupted mid-statement: its session state is unknown
                    raise
                except TimeoutError as e:
                    await link.discard()
                    raise StoreError(f"PostgreSQL {self._where}: no answer within {limit}s") from e
                except psycopg.OperationalError as e:
                    if link.broken():
                        await link.discard()
                        if not fresh and attempt == 0:
                            continue
                    raise StoreError(f"PostgreSQL {self._where}: {e}") from e
                except psycopg.Error as e:
                    raise StoreError(f"PostgreSQL {self._where}: {e}") from e
            raise AssertionError("unreachable")

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        self._open = True
        try:
            await self._run(self._writer, _migrate)
            await self._run(self._reader, _select_one)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._open = False
        for link in (self._writer, self._reader):
            async with link.lock:
                await link.discard()

    async def ping(self) -> bool:
        try:
            return await self._run(self._reader, _select_one, bound=5.0)
        except Exception:
            return False

    # -- writes -----------------------------------------------------------------------------------------------

    async def commit_batch(
        self,
        group: str,
        changes: Changes,
        offsets: Sequence[OffsetUpdate],
        rules: Mapping[str, Rule],
    ) -> None:
        check_rules(changes, rules)

        async def apply(conn: Conn) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                # Offsets first: a fenced zombie stops before touching (and locking) any incident row.
                for o in sorted(offsets, key=lambda o: (o.topic, o.partition)):
                    params: dict[str, Any] = {"group": group, "topic": o.topic, "partition": o.partition}
                    params["next"] = o.next
                    if o.previous is None:
                        await cur.execute(_SQL.offset_insert, params)
                    else:
                        await cur.execute(_SQL.offset_update, {**params, "previous": o.previous})
                    if cur.rowcount != 1:
                        raise StaleOffsetError(
                            f"offset of {group}/{o.topic}[{o.partition}] is no longer {o.previous}: "
                            "another consumer owns this partition now"
                        )
                acked: list[TupleRow] = []
                for incident_id in changes.deletes:
                    await cur.execute(_SQL.acked_among, {"id": incident_id})
                    acked.extend(await cur.fetchall())
                if changes.deletes:
                    await cur.executemany(_SQL.delete, [{"id": i} for i in changes.deletes])
                if changes.upserts:
                    await cur.executemany(_SQL.upsert, upsert_params(changes, rules, inherit_acks(changes, acked)))
                for iv in merge_order(changes):
                    await _merge_one(cur, iv, rules)
                if changes.stream_time is not None:
                    await cur.execute(_SQL.stream_time_upsert, {"group": group, "st": float(changes.stream_time)})

        await self._run(self._writer, apply)

    async def ack(self, incident_id: str, by: str, at: float) -> bool:
        async def apply(conn: Conn) -> bool:
            cur = await conn.execute(_SQL.ack, {"id": incident_id, "by": by, "at": float(at)})
            return cur.rowcount == 1

        return await self._run(self._writer, apply)

    async def add_silence(self, silence: Silence) -> str:
        silence_id = silence.id or uuid.uuid4().hex
        params = silence_params(silence, silence_id)

        async def apply(conn: Conn) -> None:
            await conn.execute(_SQL.add_silence, params)

        await self._run(self._writer, apply)
        return silence_id

    # -- reads ------------------------------------------------------------------------------------------------

    async def _fetchall(self, sql: str, params: Mapping[str, Any]) -> list[TupleRow]:
        async def fetch(conn: Conn) -> list[TupleRow]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return await self._run(self._reader, fetch)

    async def load_offsets(self, group: str, topic: str) -> dict[int, int]:
        rows = await self._fetchall(_SQL.load_offsets, {"group": group, "topic": topic})
        return {int(p): int(o) for p, o in rows}

    async def stream_time(self, group: str | None = None) -> float | None:
        if group is None:
            rows = await self._fetchall(_SQL.stream_time_max, {})
        else:
            rows = await self._fetchall(_SQL.stream_time_of, {"group": group})
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def live_intervals(self, group_stream_time: float) -> list[Interval]:
        rows = await self._fetchall(_SQL.live_intervals, {"st": float(group_stream_time)})
        return [row_to_interval(r) for r in rows]

    async def list_incidents(self, query: IncidentQuery) -> IncidentPage:
        sql, params = list_query(POSTGRESQL, query)
        rows = await self._fetchall(sql, params)
        items = [row_to_incident(r, evidence=False) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        return IncidentPage(items, encode_cursor(items[-1].last_seen, items[-1].id) if more else None)

    async def get_incident(self, incident_id: str, stream_time: float, now: float | None = None) -> IncidentRow | None:
        params = {"id": incident_id, "st": float(stream_time), "now": float(stream_time if now is None else now)}
        rows = await self._fetchall(_SQL.get_incident, params)
        return row_to_incident(rows[0]) if rows else None

    async def list_silences(self, now: float) -> list[Silence]:
        return [row_to_silence(r) for r in await self._fetchall(_SQL.list_silences, {"now": float(now)})]

    async def suppressed_by_rule(self, stream_time: float) -> list[tuple[str, int]]:
        rows = await self._fetchall(_SQL.suppressed_by_rule, {"st": float(stream_time)})
        return [(str(r), int(n)) for r, n in rows]

    async def counts_by_status(self, stream_time: float) -> list[tuple[str, str, str, int]]:
        rows = await self._fetchall(_SQL.counts_by_status, {"st": float(stream_time)})
        return [(str(s), str(c), str(v), int(n)) for s, c, v, n in rows]


async def _merge_one(cur: Any, iv: Interval, rules: Mapping[str, Rule]) -> None:
    """Fold ``iv`` into the stored intervals it touches, under a per-(rule, key) transaction lock so two
    consumers merging the same key serialise instead of both inserting."""
    await cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (merge_lock(iv),))
    resolve_after = rules[iv.rule_id].resolve_after
    replaced: list[str] = []
    while True:
        await cur.execute(_SQL.near, near_params(iv, resolve_after))
        rows = await cur.fetchall()
        if not rows:
            break
        iv, ids = absorb(iv, rows)
        replaced.extend(ids)
        await cur.executemany(_SQL.delete, [{"id": i} for i in ids])
    merged = Changes(upserts=(iv,), deletes=tuple(replaced))
    acked: list[Any] = []
    for incident_id in replaced:
        await cur.execute(_SQL.acked_among, {"id": incident_id})
        acked.extend(await cur.fetchall())
    await cur.executemany(_SQL.upsert, upsert_params(merged, rules, inherit_acks(merged, acked)))


async def _select_one(conn: Conn) -> bool:
    cur = await conn.execute("SELECT 1")
    return await cur.fetchone() == (1,)


async def _migrate(conn: Conn) -> None:
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await cur.execute(mig.POSTGRES_SCHEMA_VERSION_TABLE)
        await cur.execute("SELECT MAX(version) FROM schema_version")
        row = await cur.fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        newest = mig.latest(mig.POSTGRES_MIGRATIONS)
        if current > newest:
            raise StoreError(f"database schema version {current} is newer than this analyzer knows ({newest})")
        for m in mig.pending(mig.POSTGRES_MIGRATIONS, current):
            for statement in m.statements:
                await cur.execute(statement)
            await cur.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (m.version, time.time())
            )


def _redacted(params: Mapping[str, Any]) -> str:
    """Where we connect, for messages: host, port and database, never the password."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
