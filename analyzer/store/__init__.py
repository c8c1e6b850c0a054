"""The incident store: SQLite (embedded default) and PostgreSQL behind one protocol."""

from __future__ import annotations

from analyzer.errors import ConfigError
from analyzer.store.base import IncidentPage, IncidentQuery, IncidentRow, Silence, Store

__all__ = ["IncidentPage", "IncidentQuery", "IncidentRow", "Silence", "Store", "open_store"]

_ACCEPTED = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory:, "
    "postgresql://user@host:5432/db (or postgres://...)"
)


def open_store(url: str, *, timeout: float | None = None, readers: int = 1) -> Store:
    """Build (not yet open) the store a URL names; ConfigError lists the accepted forms otherwise.

    ``timeout`` (ANALYZER_STORE_TIMEOUT) bounds each call; the backends keep their own waits (statement,
    connect, busy) below it, so a call fails with the store's own error rather than the caller's timeout.
    ``readers`` (ANALYZER_STORE_READERS): read connections, so a slow read does not hold up the others."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or "?" in path or "#" in path:
            raise ConfigError(f"invalid store URL {url!r}: expected a file path; accepted forms: {_ACCEPTED}")
        from analyzer.store.sqlite import SqliteStore

        if timeout is None:
            return SqliteStore(path, readers=readers)
        return SqliteStore(path, busy_timeout=min(10.0, timeout * 0.8), readers=readers)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so an SQLite deployment never loads the PostgreSQL driver.
        from analyzer.store.postgres import PostgresStore

        return PostgresStore(url, timeout=timeout, readers=readers)
    shown = url.split("://", 1)[0] + "://..." if "://" in url else repr(url)
    raise ConfigError(f"unsupported store URL {shown}; accepted forms: {_ACCEPTED}")
