"""Several writers on one SQLite file (`serve --workers N`): a busy write is run again, on a real file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from analyzer.store.sqlite import retry_busy


def _connect(path: Path, busy_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def test_a_busy_write_is_run_again_until_the_other_writer_commits(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    holder, writer = _connect(db, 0), _connect(db, 0)  # no busy handler: SQLITE_BUSY reaches the caller at once
    holder.execute("CREATE TABLE t (n INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")

    def insert() -> int:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO t VALUES (2)")
        writer.execute("COMMIT")
        return 2

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_busy(insert, budget=0.0)  # no time to retry: the busy error is the caller's
    release = threading.Timer(0.15, lambda: holder.execute("COMMIT"))
    release.start()
    assert retry_busy(insert, budget=5.0) == 2
    release.join()
    assert sorted(r[0] for r in writer.execute("SELECT n FROM t")) == [1, 2]
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_busy(lambda: writer.execute("SELECT * FROM missing"), budget=5.0)  # not busy: never retried
