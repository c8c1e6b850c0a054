"""Embedded SQLite backend: one writing connection and a few reading ones, WAL mode, calls in worker threads."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from analyzer.errors import StoreError
from analyzer.store import migrations as mig
from analyzer.store.base import SQLITE, IncidentPage, IncidentQuery, IncidentRow, Silence, encode_cursor
from analyzer.store.health import WriteHealth
from analyzer.store.slots import Slots
from analyzer.store.sql import (
    Op,
    alias_params,
    bounded,
    check_rules,
    commit_program,
    drive,
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

_SQL = statements(SQLITE)
_RETENTION = retention_statements(SQLITE)
# Several processes on one file (`serve --workers N`): WAL lets one write at a time. A writer waits for the
# lock in BEGIN IMMEDIATE (busy_timeout); SQLITE_BUSY that reaches us anyway (the busy handler is not called in
# every case: WAL recovery, a journal-mode switch at open) rolls the whole transaction back and runs it again,
# a few times within the busy timeout. A batch and its offsets are one transaction, so a retry can neither
# lose nor repeat any of it.
BUSY_RETRIES = 6
BUSY_PAUSE = 0.02  # seconds before the first retry, doubling, with jitter
MMAP_BYTES = 1 << 30  # address space, not memory: pages are the OS page cache's, shared by every connection


class _Connection:
    """A connection and the thread lock of its calls: the caller's asyncio side keeps one call in flight, this
    also covers a worker thread that outlives its cancelled caller (a thread cannot be interrupted), so the
    next call never shares the connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.thread_lock = threading.Lock()

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self.thread_lock:
            return fn(self.conn)


class SqliteStore:
    """The embedded default. ``path`` is a file path or ``:memory:``; ``readers``: read connections."""

    def __init__(self, path: str, *, busy_timeout: float = 10.0, readers: int = 1) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._writer: _Connection | None = None
        self._lock = asyncio.Lock()
        # Reads (the API) use connections of their own: in WAL mode they never wait for a batch being written,
        # and with several, a slow read never holds up the others. A :memory: database exists once per
        # connection, so there reads share the writer's.
        self._reader_count = max(1, readers)
        self._readers: Slots[_Connection] | None = None
        self._health = WriteHealth(f"sqlite:{path}")

    def __repr__(self) -> str:
        return f"SqliteStore({self._path!r})"

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            return await self._call(self._writer, fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A write (one transaction or one statement), run again on SQLITE_BUSY (see BUSY_RETRIES)."""
        budget = self._busy_timeout
        return await self._run(lambda conn: retry_busy(lambda: fn(conn), budget))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        readers = self._readers
        if readers is None:
            return await self._run(fn)
        async with readers.take() as reader:
            return await self._call(reader, fn)

    async def _call(self, conn: _Connection | None, fn: Callable[[sqlite3.Connection], T]) -> T:
        if conn is None:
            raise StoreError("the SQLite store is not open")
        try:
            return await asyncio.to_thread(conn.call, fn)
        except sqlite3.Error as e:
            raise StoreError(bounded(f"SQLite {self._path}: {e}")) from e

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        try:
            self._writer = _Connection(await asyncio.to_thread(self._connect))
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open SQLite database {self._path}: {e}") from e
        try:
            await self._write(_migrate)
            if self._path != ":memory:":
                readers = [_Connection(await asyncio.to_thread(self._connect)) for _ in range(self._reader_count)]
                self._readers = Slots(readers)
        except BaseException:
            await self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread=False: calls hop between
        # worker threads but never overlap (see the locks).
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            # Several processes may open a new file at once (`serve --workers N`): the switch to WAL can meet
            # SQLITE_BUSY without the busy handler being asked.
            retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL"), self._busy_timeout)
            # In WAL mode NORMAL may lose the last commits on power loss but never tears one: offsets roll back
            # together with their incidents, so the batch is simply consumed again.
            conn.execute("PRAGMA synchronous = NORMAL")
            # Reads through a memory map, not into each connection's own page cache: another connection's commit
            # (the ingest's, every batch) empties that cache, and the API's reads then copied every page again.
            conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        readers, self._readers = self._readers, None
        for reader in readers.items if readers is not None else ():
            # Waits for a call in flight on it (its thread lock); later calls find the store closed.
            await asyncio.to_thread(reader.call, sqlite3.Connection.close)
        writer, self._writer = self._writer, None
        if writer is not None:
            async with self._lock:
                await asyncio.to_thread(writer.call, sqlite3.Connection.close)

    async def ping(self) -> bool:
        # On the reader connection: a probe never waits behind a batch write (WAL readers do not block).
        try:
            return await self._read(lambda c: c.execute("SELECT 1").fetchone() == (1,))
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

        def apply(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                drive(commit_program(_SQL, group, changes, offsets, rules), lambda op: _execute(conn, op))

        await self._health.watch(self._write(apply))

    async def purge(
        self, incidents_before: float | None, silences_before: float | None, limit: int = 500
    ) -> tuple[int, int, int]:
        def apply(conn: sqlite3.Connection) -> tuple[int, int, int]:
            with _transaction(conn):
                program = purge_program(SQLITE, _RETENTION, incidents_before, silences_before, limit)
                return drive(program, lambda op: _execute(conn, op))

        return await self._write(apply)

    async def ack(self, incident_id: str, by: str, at: float, comment: str | None = None) -> bool:
        params = {"id": storable(incident_id), "by": storable(by), "at": float(at), "comment": _opt(comment)}

        def apply(conn: sqlite3.Connection) -> bool:
            return conn.execute(_SQL.ack, params).rowcount == 1

        return await self._write(apply)

    async def add_silence(self, silence: Silence) -> str:
        silence_id = silence.id or uuid.uuid4().hex
        params = silence_params(silence, silence_id)
        await self._write(lambda c: c.execute(_SQL.add_silence, params))
        return silence_id

    # -- reads ------------------------------------------------------------------------------------------------

    async def load_offsets(self, group: str, topic: str) -> dict[int, int]:
        rows = await self._run(lambda c: c.execute(_SQL.load_offsets, {"group": group, "topic": topic}).fetchall())
        return {int(p): int(o) for p, o in rows}

    async def stream_time(self, group: str | None = None) -> float | None:
        if group is None:
            row = await self._read(lambda c: c.execute(_SQL.stream_time_max).fetchone())
        else:
            row = await self._read(lambda c: c.execute(_SQL.stream_time_of, {"group": group}).fetchone())
        return None if row is None or row[0] is None else float(row[0])

    async def list_incidents(self, query: IncidentQuery) -> IncidentPage:
        sql, params = list_query(SQLITE, query)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        items = [row_to_incident(r, evidence=False) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        return IncidentPage(items, encode_cursor(items[-1].last_seen, items[-1].id) if more else None)

    async def get_incident(self, incident_id: str, stream_time: float, now: float | None = None) -> IncidentRow | None:
        params = {
            "id": storable(incident_id),
            "st": float(stream_time),
            "now": float(stream_time if now is None else now),
        }
        row = await self._read(lambda c: c.execute(_SQL.get_incident, params).fetchone())
        return None if row is None else row_to_incident(row)

    async def aliases(self, incident_ids: Sequence[str]) -> dict[str, str]:
        if not incident_ids:
            return {}
        sql, params = _SQL.aliases(len(incident_ids)), alias_params(incident_ids)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return {str(a): str(t) for a, t in rows}

    async def aliases_since(self, since: float, limit: int) -> dict[str, str]:
        params = {"since": float(since), "limit": int(limit)}
        rows = await self._read(lambda c: c.execute(_SQL.aliases_since, params).fetchall())
        return {str(a): str(t) for a, t in rows}

    async def clock(self) -> float:
        row = await self._read(lambda c: c.execute(_SQL.clock).fetchone())
        return float(row[0])

    async def list_silences(self, now: float) -> list[Silence]:
        rows = await self._read(lambda c: c.execute(_SQL.list_silences, {"now": float(now)}).fetchall())
        return [row_to_silence(r) for r in rows]

    async def claim_suppressed(self, stream_time: float) -> list[tuple[str, int]]:
        def apply(conn: sqlite3.Connection) -> list[Any]:
            with _transaction(conn):
                return conn.execute(_SQL.claim_suppressed, {"st": float(stream_time)}).fetchall()

        return sorted(Counter(str(r[0]) for r in await self._write(apply)).items())

    async def counts_by_status(self, stream_time: float) -> list[tuple[str, str, str, int]]:
        rows = await self._read(lambda c: c.execute(_SQL.counts_by_status, {"st": float(stream_time)}).fetchall())
        return [(str(s), str(c), str(v), int(n)) for s, c, v, n in rows]


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception.

    IMMEDIATE takes the write lock up front, so two writers on one file serialise at BEGIN (waiting up to the
    busy timeout) and the second sees the first one's offsets.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                # A COMMIT that fails (SQLITE_BUSY, disk full) can leave the transaction open: roll it back, so
                # the connection is clean for a retry and the next call.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        elif self._conn.in_transaction:  # some errors (SQLITE_FULL, ...) have rolled back already
            self._conn.execute("ROLLBACK")


def is_busy(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, extended codes included: another connection holds the lock."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # raised by the sqlite3 module itself, without an engine code
        return "database is locked" in str(error)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def retry_busy(fn: Callable[[], T], budget: float) -> T:
    """``fn()``, called again after SQLITE_BUSY while attempts (BUSY_RETRIES) and time (``budget``) remain.
    ``fn`` must be one whole transaction or one statement: what failed busy has been rolled back."""
    deadline = time.monotonic() + budget
    pause = BUSY_PAUSE
    for attempt in range(1, BUSY_RETRIES + 1):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            wait = pause * random.uniform(0.5, 1.5)  # jitter: writers that collided do not collide again
            if not is_busy(e) or attempt == BUSY_RETRIES or time.monotonic() + wait > deadline:
                raise
            time.sleep(wait)
            pause *= 2
    raise AssertionError("unreachable")


def _execute(conn: sqlite3.Connection, op: Op) -> Any:
    cur = conn.execute(op.sql, op.params)
    return cur.fetchall() if op.rows else cur.rowcount


def _opt(text: str | None) -> str | None:
    return None if text is None else storable(text)


def _migrate(conn: sqlite3.Connection) -> None:
    with _transaction(conn):
        conn.execute(mig.SQLITE_SCHEMA_VERSION_TABLE)
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        newest = mig.latest(mig.SQLITE_MIGRATIONS)
        if current > newest:
            raise StoreError(f"database schema version {current} is newer than this analyzer knows ({newest})")
        for m in mig.pending(mig.SQLITE_MIGRATIONS, current):
            for statement in m.statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (m.version, time.time()))
