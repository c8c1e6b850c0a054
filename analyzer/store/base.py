"""The store protocol, the query and row types it speaks, and the SQL form of the derived status."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from analyzer.types import Changes, Evidence, IncidentKey, Interval, OffsetUpdate, Rule, Status

MAX_LIMIT = 1000  # page size ceiling; a larger limit is a caller error, not a silent truncation


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes matching incidents until ``expires_at``. A ``None`` matcher matches anything."""

    id: str  # "" lets the store pick one (returned by add_silence)
    rule: str | None
    cluster: str | None
    namespace: str | None
    workload: str | None
    expires_at: float
    created_by: str
    comment: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentQuery:
    """Filters for list_incidents. ``None`` / empty means "no filter"; status is derived at ``stream_time``."""

    statuses: tuple[Status, ...] = ()
    category: str | None = None
    severity: str | None = None
    rule: str | None = None
    rules: tuple[str, ...] = ()  # incidents of any of these rules (the read path's cause incidents)
    cluster: str | None = None
    namespace: str | None = None
    workload: str | None = None
    pod: str | None = None  # incidents whose pods include it
    since: float | None = None  # last_seen >= since
    until: float | None = None  # first_seen <= until
    limit: int = 50
    cursor: str | None = None  # opaque, from the previous page's next_cursor
    stream_time: float
    now: float | None = None  # wall clock for silence expiry; defaults to stream_time


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """One stored interval with what the API shows beside it."""

    id: str
    rule_id: str
    key: IncidentKey
    first_seen: float
    last_seen: float
    count: int
    head: tuple[Evidence, ...]
    tail: tuple[Evidence, ...]
    pods: tuple[str, ...]
    category: str
    severity: str
    transient: float | None
    resolve_after: float
    status: Status
    acked_at: float | None
    acked_by: str | None
    silenced: bool
    ack_comment: str | None = None
    updated_at: float = 0.0  # the database clock at the row's last write (merge, ack): what SSE resumes from

    @property
    def interval(self) -> Interval:
        return Interval(
            rule_id=self.rule_id,
            key=self.key,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            count=self.count,
            head=self.head,
            tail=self.tail,
            pods=self.pods,
        )


@dataclass(frozen=True, slots=True)
class IncidentPage:
    items: list[IncidentRow]
    next_cursor: str | None


class Store(Protocol):
    """What the consumer, the API and the metrics collector need from persistence."""

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the store answers; never raises."""

    def write_failure(self) -> str | None:
        """The last write's error (bounded text) while writes fail; None once a write succeeds again."""

    async def commit_batch(
        self,
        group: str,
        changes: Changes,
        offsets: Sequence[OffsetUpdate],
        rules: Mapping[str, Rule],
    ) -> None:
        """Apply one batch and its offsets atomically; StaleOffsetError (nothing applied) if fenced."""

    async def load_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Partition -> next offset to consume."""

    async def stream_time(self, group: str | None = None) -> float | None:
        """The group's stream time, or the maximum over all groups."""

    async def list_incidents(self, query: IncidentQuery) -> IncidentPage:
        """Newest first, keyset-paginated, without evidence (get_incident has it). ValueError on a malformed
        cursor or limit."""

    async def get_incident(self, incident_id: str, stream_time: float, now: float | None = None) -> IncidentRow | None:
        """One incident with its status at ``stream_time`` (silence expiry at ``now``, default stream_time).

        The id of an incident merged into another (an alias) gives the surviving incident."""

    async def aliases(self, incident_ids: Sequence[str]) -> dict[str, str]:
        """Which of these ids were merged into another incident: alias -> surviving id."""

    async def aliases_since(self, since: float, limit: int) -> dict[str, str]:
        """Aliases made or re-pointed after ``since`` (database clock), at most ``limit``, newest first."""

    async def clock(self) -> float:
        """The database's clock (epoch seconds): the time every write's ``updated_at`` is stamped with."""

    async def ack(self, incident_id: str, by: str, at: float, comment: str | None = None) -> bool:
        """False if there is no such incident (an alias acks the surviving incident)."""

    async def add_silence(self, silence: Silence) -> str:
        """Store the silence; returns its id."""

    async def list_silences(self, now: float) -> list[Silence]:
        """Unexpired silences, soonest expiry first."""

    async def counts_by_status(self, stream_time: float) -> list[tuple[str, str, str, int]]:
        """(status, category, severity, count) rows, silenced incidents included."""

    async def claim_suppressed(self, stream_time: float) -> list[tuple[str, int]]:
        """(rule id, incidents newly suppressed at ``stream_time``) rows, each incident returned once ever,
        to one caller: what analyzer_transients_suppressed_total counts, across restarts and replicas."""

    async def purge(
        self, incidents_before: float | None, silences_before: float | None, limit: int = 500
    ) -> tuple[int, int, int]:
        """One retention batch (one transaction): at most ``limit`` incidents settled before
        ``incidents_before`` (stream time; last_seen + resolve_after) with their aliases, and at most ``limit``
        silences expired before ``silences_before`` (wall clock). None skips that part. Returns the numbers
        of incidents, aliases and silences deleted; a caller repeats while a count reaches ``limit``."""


# -- SQL shared by both backends ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dialect:
    """The few places where the two backends' SQL differ."""

    name: str
    named_param: str  # format with the parameter name: ":{}" or "%({})s"
    greatest: str  # two-argument maximum: SQLite's scalar max(), PostgreSQL's GREATEST()
    json_cast: str  # how a JSON text parameter is written into a JSON column
    key_lock: str | None = None  # serialises merges of one (rule, key) across writers (SQLite: the file lock)
    # The database's clock in epoch seconds (one clock for every replica): stamps each write's updated_at.
    clock: str = "((julianday('now') - 2440587.5) * 86400.0)"

    def p(self, name: str) -> str:
        return self.named_param.format(name)

    def json_param(self, name: str) -> str:
        return self.json_cast.format(self.p(name))

    def pods_contain(self, name: str) -> str:
        """Condition: the pods column holds the pod passed (as ``pods_param``) in parameter ``name``."""
        if self.name == "postgresql":
            return f"pods @> {self.p(name)}::jsonb"  # containment of a one-element array; GIN-indexed
        return f"EXISTS (SELECT 1 FROM json_each(pods) WHERE json_each.value = {self.p(name)})"

    def pods_param(self, pod: str) -> str:
        return orjson.dumps([pod]).decode() if self.name == "postgresql" else pod


SQLITE = Dialect(name="sqlite", named_param=":{}", greatest="max", json_cast="{}")
POSTGRESQL = Dialect(
    name="postgresql",
    named_param="%({})s",
    greatest="GREATEST",
    json_cast="{}::jsonb",
    key_lock="SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))",
    clock="EXTRACT(EPOCH FROM clock_timestamp())::double precision",
)


def status_sql(d: Dialect, stream_time: str = "st") -> str:
    """The derived status as a CASE expression over the incidents columns, at parameter ``stream_time``.

    The twin of analyzer.incidents.status_of: with no transient window (or once the interval outlasted it)
    the incident is open until quiet for resolve_after; inside the window it is pending while the window is
    still running and the problem still recurring, else a suppressed transient.
    """
    st = d.p(stream_time)
    return (
        "CASE"
        " WHEN transient IS NULL OR last_seen - first_seen >= transient"
        f" THEN CASE WHEN {st} - last_seen < resolve_after THEN 'open' ELSE 'resolved' END"
        f" WHEN {st} - first_seen < transient AND {st} - last_seen < resolve_after THEN 'pending'"
        " ELSE 'suppressed'"
        " END"
    )


def silenced_sql(d: Dialect, now: str = "now") -> str:
    """True when an unexpired silence matches every one of its non-None matchers."""
    return (
        "EXISTS (SELECT 1 FROM silences s"
        f" WHERE s.expires_at > {d.p(now)}"
        " AND (s.rule IS NULL OR s.rule = incidents.rule_id)"
        " AND (s.cluster IS NULL OR s.cluster = incidents.cluster)"
        " AND (s.namespace IS NULL OR s.namespace = incidents.namespace)"
        " AND (s.workload IS NULL OR s.workload = incidents.workload))"
    )


# -- cursors --------------------------------------------------------------------------------------------------


def encode_cursor(last_seen: float, incident_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([last_seen, incident_id])).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(last_seen, id) of the last row of the previous page; ValueError when it is not one of ours."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        value = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as e:
        raise ValueError(f"malformed cursor {cursor!r}: not a cursor returned by a previous page") from e
    if (
        not isinstance(value, list)
        or len(value) != 2
        or isinstance(value[0], bool)
        or not isinstance(value[0], int | float)
        or not math.isfinite(value[0])
        or not isinstance(value[1], str)
    ):
        raise ValueError(f"malformed cursor {cursor!r}: not a cursor returned by a previous page")
    return float(value[0]), value[1]
