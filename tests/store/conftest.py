"""Every store test runs against both backends: SQLite in a temporary file, PostgreSQL in a fresh schema."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from analyzer.store import Store, open_store

PG_DSN = os.environ.get("ANALYZER_TEST_POSTGRES_DSN", "postgresql://root@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The PostgreSQL DSN, or a visible skip when no server answers there."""
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            pass
    except psycopg.Error as e:
        pytest.skip(f"PostgreSQL unreachable at {PG_DSN} (set ANALYZER_TEST_POSTGRES_DSN): {e}")
    return PG_DSN


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"  # tmp_path is absolute: sqlite:////tmp/...
        return
    dsn = request.getfixturevalue("pg_dsn")
    schema = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            sep = "&" if "?" in dsn else "?"
            yield f"{dsn}{sep}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


RawExecute = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def raw_execute() -> RawExecute:
    """Runs one statement with the bare driver, beside the store (to inspect or tamper with the schema)."""
    return _raw_execute


def _raw_execute(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            cur = conn.execute(sql.replace("%s", "?"), params)
            rows = cur.fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as pg:
        cur2 = pg.execute(sql, params)
        return cur2.fetchall() if cur2.description else []
