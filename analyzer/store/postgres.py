"""PostgreSQL backend (psycopg 3, async): one connection for writes, a few for reads, reconnecting on failure."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import PipelineStatus, TransactionStatus
from psycopg.rows import TupleRow

from analyzer.errors import ConfigError, StaleOffsetError, StoreError
from analyzer.store import migrations as mig
from analyzer.store.base import POSTGRESQL, IncidentPage, IncidentQuery, IncidentRow, Silence, encode_cursor
from analyzer.store.health import WriteHealth
from analyzer.store.slots import Slots
from analyzer.store.sql import (
    Program,
    alias_params,
    bounded,
    check_rules,
    commit_program,
    list_query,
    purge_program,
    retention_statements,
    row_to_incident,
    row_to_silence,
    silence_params,
    statements,
    storable,
)
from analyzer.types import Changes, OffsetUpdate, Rule

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

_SQL = statements(POSTGRESQL)
_RETENTION = retention_statements(POSTGRESQL)
# Serialises concurrent migrations from several replicas (CREATE TABLE IF NOT EXISTS alone races).
_MIGRATION_LOCK = 0x6D6C615F736368  # "mla_sch"
# Bounded back-off between connection attempts after a failed one: an outage costs a few cheap failures a
# second at most, and the first attempt after the server is back waits at most BACKOFF_MAX.
BACKOFF_MIN = 0.25
BACKOFF_MAX = 2.0


class _Link:
    """One connection behind a lock. Replaced after any failed operation (its session state is unknown: the
    wedge after a server restart was a connection left in pipeline mode that the driver never flagged broken),
    and (re)connected on first use, with bounded back-off after a failed attempt."""

    def __init__(self, conninfo: str, statement_timeout: float) -> None:
        self._conninfo = conninfo
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._conn: Conn | None = None
        self.lock = asyncio.Lock()
        self._delay = 0.0
        self._retry_at = 0.0  # monotonic; no connection attempt before it
        self._last_error = ""

    @property
    def connected(self) -> bool:
        return self._conn is not None and _usable(self._conn)

    async def connection(self, where: str) -> Conn:
        if self._conn is not None:
            if _usable(self._conn):
                return self._conn
            await self.discard()
        wait = self._retry_at - time.monotonic()
        if wait > 0:  # fail fast while backing off: a read gets its 503 now, not after a connect timeout
            raise StoreError(f"PostgreSQL {where} unavailable ({self._last_error}); next attempt in {wait:.1f}s")
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except (psycopg.Error, OSError) as e:
            self._delay = min(max(self._delay * 2, BACKOFF_MIN), BACKOFF_MAX)
            self._retry_at = time.monotonic() + self._delay
            self._last_error = bounded(str(e), 200)
            raise
        try:
            # Session settings, not startup options: works behind PgBouncer and keeps the DSN's own options.
            await conn.execute(f"SET statement_timeout = {self._statement_timeout_ms}")
            await conn.execute(f"SET idle_in_transaction_session_timeout = {self._statement_timeout_ms}")
        except BaseException:
            await conn.close()
            raise
        self._delay = 0.0
        self._conn = conn
        return conn

    async def discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already unusable; we only release the socket
                await conn.close()


def _usable(conn: Conn) -> bool:
    """Open, idle, outside any transaction or pipeline: the only state an operation may start from."""
    return (
        not conn.closed
        and not conn.broken
        and conn.info.transaction_status == TransactionStatus.IDLE
        and conn.pgconn.pipeline_status == PipelineStatus.OFF
    )


class PostgresStore:
    """Shared store for several replicas. ``url`` is a libpq URL or key=value DSN."""

    def __init__(
        self,
        url: str,
        *,
        statement_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        timeout: float | None = None,
        readers: int = 1,
    ) -> None:
        """``timeout``: the bound of every call, lock wait included (ANALYZER_STORE_TIMEOUT); statement and
        connect timeouts are then kept below it, so the server gives up before the caller does. ``readers``:
        read connections (ANALYZER_STORE_READERS), each made when calls first overlap that far."""
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as e:
            raise ConfigError(f"invalid PostgreSQL URL: {e}") from e
        if timeout is not None:
            statement_timeout = min(statement_timeout, max(0.5, timeout * 0.6))
            connect_timeout = min(connect_timeout, max(1.0, timeout * 0.3))
        extra: dict[str, Any] = {}
        if "connect_timeout" not in given:
            extra["connect_timeout"] = max(1, round(connect_timeout))
        if "application_name" not in given:
            extra["application_name"] = "mesh-log-analyzer"
        conninfo = make_conninfo(url, **extra)
        connect_budget = float(given.get("connect_timeout") or extra.get("connect_timeout") or connect_timeout)
        # The client-side bound covers what statement_timeout cannot: a frozen server or a dead network.
        self._op_timeout = 0.9 * timeout if timeout is not None else statement_timeout + connect_budget + 5.0
        self._writer = Slots([_Link(conninfo, statement_timeout)])
        self._readers = Slots(_Link(conninfo, statement_timeout) for _ in range(max(1, readers)))
        self._where = _redacted(given)
        self._open = False
        self._health = WriteHealth(f"postgresql:{self._where}")

    def __repr__(self) -> str:
        return f"PostgresStore({self._where})"

    async def _run(self, links: Slots[_Link], op: Callable[[Conn], Awaitable[T]], *, bound: float | None = None) -> T:
        """Run ``op`` on a free link's connection within a bound (waits included), driver errors as StoreError.

        Any failure discards the connection. A failure of a connection made before this call (one that went
        stale in a server restart) is retried once on a fresh one. That is safe for every operation here: a
        batch that did commit before its connection broke fails its offset check on the retry
        (StaleOffsetError) instead of applying twice.
        """
        if not self._open:
            raise StoreError("the PostgreSQL store is not open")
        limit = bound or self._op_timeout
        try:
            async with asyncio.timeout(limit), links.take() as link, link.lock:
                for attempt in range(2):
                    reused = link.connected
                    conn = await link.connection(self._where)
                    try:
                        return await op(conn)
                    except StaleOffsetError:
                        raise  # rolled back cleanly; the connection is fine
                    except BaseException as e:
                        await link.discard()
                        if attempt == 0 and reused and isinstance(e, psycopg.OperationalError):
                            continue
                        raise
        except StoreError:
            raise
        except TimeoutError as e:
            raise StoreError(f"PostgreSQL {self._where}: no answer within {limit}s") from e
        except psycopg.Error as e:
            raise StoreError(bounded(f"PostgreSQL {self._where}: {type(e).__name__}: {e}")) from e
        raise AssertionError("unreachable")

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        self._open = True
        try:
            await self._run(self._writer, _migrate)
            await self._run(self._readers, _select_one)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._open = False
        for link in (*self._writer.items, *self._readers.items):
            async with link.lock:
                await link.discard()

    async def ping(self) -> bool:
        try:
            return await self._run(self._readers, _select_one, bound=5.0)
        except Exception:
            return False

    def write_failure(self) -> str | None:
        return self._health.failure

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
            async with conn.transaction():
                await _drive(commit_program(_SQL, group, changes, offsets, rules), conn.cursor())

        await self._health.watch(self._run(self._writer, apply))

    async def purge(
        self, incidents_before: float | None, silences_before: float | None, limit: int = 500
    ) -> tuple[int, int, int]:
        async def apply(conn: Conn) -> tuple[int, int, int]:
            async with conn.transaction():
                program = purge_program(POSTGRESQL, _RETENTION, incidents_before, silences_before, limit)
                return await _drive(program, conn.cursor())

        return await self._run(self._writer, apply)

    async def ack(self, incident_id: str, by: str, at: float, comment: str | None = None) -> bool:
        params = {
            "id": storable(incident_id),
            "by": storable(by),
            "at": float(at),
            "comment": None if comment is None else storable(comment),
        }

        async def apply(conn: Conn) -> bool:
            cur = await conn.execute(_SQL.ack, params)
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

        return await self._run(self._readers, fetch)

    async def load_offsets(self, group: str, topic: str) -> dict[int, int]:
        rows = await self._fetchall(_SQL.load_offsets, {"group": group, "topic": topic})
        return {int(p): int(o) for p, o in rows}

    async def stream_time(self, group: str | None = None) -> float | None:
        if group is None:
            rows = await self._fetchall(_SQL.stream_time_max, {})
        else:
            rows = await self._fetchall(_SQL.stream_time_of, {"group": group})
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def list_incidents(self, query: IncidentQuery) -> IncidentPage:
        sql, params = list_query(POSTGRESQL, query)
        rows = await self._fetchall(sql, params)
        items = [row_to_incident(r, evidence=False) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        return IncidentPage(items, encode_cursor(items[-1].last_seen, items[-1].id) if more else None)

    async def get_incident(self, incident_id: str, stream_time: float, now: float | None = None) -> IncidentRow | None:
        params = {
            "id": storable(incident_id),
            "st": float(stream_time),
            "now": float(stream_time if now is None else now),
        }
        rows = await self._fetchall(_SQL.get_incident, params)
        return row_to_incident(rows[0]) if rows else None

    async def aliases(self, incident_ids: Sequence[str]) -> dict[str, str]:
        if not incident_ids:
            return {}
        rows = await self._fetchall(_SQL.aliases(len(incident_ids)), alias_params(incident_ids))
        return {str(a): str(t) for a, t in rows}

    async def aliases_since(self, since: float, limit: int) -> dict[str, str]:
        rows = await self._fetchall(_SQL.aliases_since, {"since": float(since), "limit": int(limit)})
        return {str(a): str(t) for a, t in rows}

    async def clock(self) -> float:
        rows = await self._fetchall(_SQL.clock, {})
        return float(rows[0][0])

    async def list_silences(self, now: float) -> list[Silence]:
        return [row_to_silence(r) for r in await self._fetchall(_SQL.list_silences, {"now": float(now)})]

    async def claim_suppressed(self, stream_time: float) -> list[tuple[str, int]]:
        async def apply(conn: Conn) -> list[TupleRow]:
            async with conn.transaction():
                cur = conn.cursor()
                await cur.execute(_SQL.claim_suppressed, {"st": float(stream_time)})
                return await cur.fetchall()

        return sorted(Counter(str(r[0]) for r in await self._run(self._writer, apply)).items())

    async def counts_by_status(self, stream_time: float) -> list[tuple[str, str, str, int]]:
        rows = await self._fetchall(_SQL.counts_by_status, {"st": float(stream_time)})
        return [(str(s), str(c), str(v), int(n)) for s, c, v, n in rows]


async def _drive(program: Program[T], cur: psycopg.AsyncCursor[TupleRow]) -> T:
    """The async twin of sql.drive: one statement at a time (never executemany, which uses pipeline mode)."""
    try:
        op = next(program)
        while True:
            await cur.execute(op.sql, op.params)
            op = program.send(await cur.fetchall() if op.rows else cur.rowcount)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


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
