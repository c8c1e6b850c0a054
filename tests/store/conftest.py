"""Every store test runs against both backends: SQLite in a temporary file, PostgreSQL in a fresh schema."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from analyzer.store import Store, open_store
from tests.conftest import pg_schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"  # tmp_path is absolute: sqlite:////tmp/...
        return
    with pg_schema(request.getfixturevalue("pg_dsn")) as url:
        yield url


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
