"""Versioned schema migrations: one logical schema, one list of steps per backend.

Append new versions at the end of BOTH lists (same version numbers); never edit an applied step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


SQLITE_SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
)
POSTGRES_SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)

# Indexes serve the API: newest first, and the equality filters followed by the same ordering.
_COMMON_INDEXES = (
    "CREATE INDEX incidents_last_seen ON incidents (last_seen DESC, id DESC)",
    "CREATE INDEX incidents_rule ON incidents (rule_id, last_seen DESC)",
    "CREATE INDEX incidents_category ON incidents (category, severity, last_seen DESC)",
    "CREATE INDEX incidents_severity ON incidents (severity, last_seen DESC)",
    "CREATE INDEX incidents_workload ON incidents (namespace, workload, last_seen DESC)",
    "CREATE INDEX silences_expires ON silences (expires_at)",
)

# Version 2: the API's single-column filters ordered newest first (category alone could not use the
# (category, severity, last_seen) index for its ORDER BY, nor namespace alone the workload one).
_V2_INDEXES = (
    "CREATE INDEX incidents_category_recent ON incidents (category, last_seen DESC, id DESC)",
    "CREATE INDEX incidents_namespace_recent ON incidents (namespace, last_seen DESC, id DESC)",
)

# Version 3: stable identity. A merge updates the surviving row in place; the ids of rows it absorbed live on as
# aliases the API resolves. Ack comments are stored with the ack.
_V3_IDENTITY = (
    "ALTER TABLE incidents ADD COLUMN ack_comment TEXT",
    "CREATE TABLE incident_aliases (alias TEXT PRIMARY KEY, target TEXT NOT NULL)",
    "CREATE INDEX incident_aliases_target ON incident_aliases (target)",
)

# Version 4: when each row was last written (the database clock), so an SSE client that reconnects gets the
# incidents and merges written since its last event.
_V4_UPDATED = (
    "ALTER TABLE incidents ADD COLUMN updated_at {real} NOT NULL DEFAULT 0",
    "ALTER TABLE incident_aliases ADD COLUMN updated_at {real} NOT NULL DEFAULT 0",
    "CREATE INDEX incident_aliases_updated ON incident_aliases (updated_at)",
)

# Whether analyzer_transients_suppressed_total has counted the incident: claimed once, by one replica.
_V5_SUPPRESSION = ("ALTER TABLE incidents ADD COLUMN suppression_counted INTEGER NOT NULL DEFAULT 0",)

# Version 6: the equality filters followed by the page's whole order (last_seen DESC, id DESC). Without the id,
# SQLite preferred the namespace index, which orders fully, and walked a whole namespace for one workload's page.
_V6_ORDERED = (
    "DROP INDEX incidents_workload",
    "CREATE INDEX incidents_workload_recent ON incidents (namespace, workload, last_seen DESC, id DESC)",
    "DROP INDEX incidents_category",
    "CREATE INDEX incidents_category_severity_recent ON incidents (category, severity, last_seen DESC, id DESC)",
    "DROP INDEX incidents_severity",
    "CREATE INDEX incidents_severity_recent ON incidents (severity, last_seen DESC, id DESC)",
)

# Version 7: the largest resolve_after in one index lookup. An incident is open or pending only while
# stream_time - last_seen < resolve_after, so `last_seen > stream_time - MAX(resolve_after)` bounds those
# statuses to the newest rows: reading every open incident (the metrics' open roots, the grouping's open
# symptoms) scanned the whole table to evaluate the status of incidents settled days ago.
_V7_RESOLVE_AFTER = ("CREATE INDEX incidents_resolve_after ON incidents (resolve_after)",)

SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "incidents, offsets, stream times, silences",
        (
            """CREATE TABLE incidents (
                id TEXT PRIMARY KEY,
                rule_id TEXT NOT NULL,
                cluster TEXT NOT NULL,
                namespace TEXT NOT NULL,
                workload TEXT NOT NULL,
                first_seen REAL NOT NULL,
                last_seen REAL NOT NULL,
                count INTEGER NOT NULL,
                head TEXT NOT NULL,
                tail TEXT NOT NULL,
                pods TEXT NOT NULL,
                category TEXT NOT NULL,
                severity TEXT NOT NULL,
                transient REAL,
                resolve_after REAL NOT NULL,
                acked_at REAL,
                acked_by TEXT
            )""",
            """CREATE TABLE offsets (
                consumer_group TEXT NOT NULL,
                topic TEXT NOT NULL,
                partition_id INTEGER NOT NULL,
                next_offset INTEGER NOT NULL,
                PRIMARY KEY (consumer_group, topic, partition_id)
            )""",
            "CREATE TABLE stream_times (consumer_group TEXT PRIMARY KEY, stream_time REAL NOT NULL)",
            """CREATE TABLE silences (
                id TEXT PRIMARY KEY,
                rule TEXT,
                cluster TEXT,
                namespace TEXT,
                workload TEXT,
                expires_at REAL NOT NULL,
                created_by TEXT NOT NULL,
                comment TEXT NOT NULL
            )""",
            *_COMMON_INDEXES,
        ),
    ),
    Migration(2, "indexes for category-only and namespace-only filters", _V2_INDEXES),
    Migration(3, "ack comments; aliases of incidents merged into another", _V3_IDENTITY),
    Migration(4, "when each incident and alias was last written", tuple(x.format(real="REAL") for x in _V4_UPDATED)),
    Migration(5, "suppressed transients counted once", _V5_SUPPRESSION),
    Migration(6, "filter indexes in the page's order", _V6_ORDERED),
    Migration(7, "the largest resolve_after, indexed", _V7_RESOLVE_AFTER),
)

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "incidents, offsets, stream times, silences",
        (
            """CREATE TABLE incidents (
                id TEXT PRIMARY KEY,
                rule_id TEXT NOT NULL,
                cluster TEXT NOT NULL,
                namespace TEXT NOT NULL,
                workload TEXT NOT NULL,
                first_seen DOUBLE PRECISION NOT NULL,
                last_seen DOUBLE PRECISION NOT NULL,
                count BIGINT NOT NULL,
                head JSONB NOT NULL,
                tail JSONB NOT NULL,
                pods JSONB NOT NULL,
                category TEXT NOT NULL,
                severity TEXT NOT NULL,
                transient DOUBLE PRECISION,
                resolve_after DOUBLE PRECISION NOT NULL,
                acked_at DOUBLE PRECISION,
                acked_by TEXT
            )""",
            """CREATE TABLE offsets (
                consumer_group TEXT NOT NULL,
                topic TEXT NOT NULL,
                partition_id INTEGER NOT NULL,
                next_offset BIGINT NOT NULL,
                PRIMARY KEY (consumer_group, topic, partition_id)
            )""",
            "CREATE TABLE stream_times (consumer_group TEXT PRIMARY KEY, stream_time DOUBLE PRECISION NOT NULL)",
            """CREATE TABLE silences (
                id TEXT PRIMARY KEY,
                rule TEXT,
                cluster TEXT,
                namespace TEXT,
                workload TEXT,
                expires_at DOUBLE PRECISION NOT NULL,
                created_by TEXT NOT NULL,
                comment TEXT NOT NULL
            )""",
            *_COMMON_INDEXES,
            # The pod filter is jsonb containment (pods @> '["name"]').
            "CREATE INDEX incidents_pods ON incidents USING GIN (pods jsonb_path_ops)",
        ),
    ),
    Migration(2, "indexes for category-only and namespace-only filters", _V2_INDEXES),
    Migration(3, "ack comments; aliases of incidents merged into another", _V3_IDENTITY),
    Migration(
        4,
        "when each incident and alias was last written",
        tuple(x.format(real="DOUBLE PRECISION") for x in _V4_UPDATED),
    ),
    Migration(5, "suppressed transients counted once", _V5_SUPPRESSION),
    Migration(6, "filter indexes in the page's order", _V6_ORDERED),
    Migration(7, "the largest resolve_after, indexed", _V7_RESOLVE_AFTER),
)


def pending(migrations: tuple[Migration, ...], current: int) -> tuple[Migration, ...]:
    """The steps after ``current``; the caller refuses a database newer than the code."""
    return tuple(m for m in migrations if m.version > current)


def latest(migrations: tuple[Migration, ...]) -> int:
    return max((m.version for m in migrations), default=0)
