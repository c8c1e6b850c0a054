from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ROOT / "patterns"
# A copy of ../shared/corpus/istio_real_lines.jsonl (real public Istio lines, each with its source).
CORPUS = ROOT / "tests" / "data" / "istio_real_lines.jsonl"


def corpus_lines() -> list[dict[str, str]]:
    """The real public Istio lines; tests that need them skip visibly without them."""
    if not CORPUS.exists():
        pytest.skip(f"corpus not found at {CORPUS}")
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _isolated_hs_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Compiled databases are cached under $XDG_CACHE_HOME; keep tests off the developer's cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


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


@contextlib.contextmanager
def pg_schema(dsn: str) -> Iterator[str]:
    """A fresh schema; yields a store URL whose search_path points at it. Dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            sep = "&" if "?" in dsn else "?"
            yield f"{dsn}{sep}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
