"""The store contract, run against SQLite and PostgreSQL alike (see conftest.store)."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from analyzer.errors import ConfigError, StaleOffsetError, StoreError
from analyzer.incidents import merge, status_of
from analyzer.store import IncidentQuery, Silence, Store, open_store
from analyzer.store.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from analyzer.store.postgres import PostgresStore
from analyzer.store.sqlite import SqliteStore
from analyzer.types import (
    Category,
    Changes,
    Component,
    Evidence,
    IncidentKey,
    Interval,
    OffsetUpdate,
    Rule,
    Scope,
    Severity,
    Status,
)

RawExecute = Callable[..., list[tuple[Any, ...]]]

# -- builders -------------------------------------------------------------------------------------------------


def make_rule(
    rule_id: str,
    *,
    transient: float | None = None,
    resolve_after: float = 300.0,
    category: Category = Category.APISERVER_CONNECTIVITY,
    severity: Severity = Severity.HIGH,
) -> Rule:
    return Rule(
        id=rule_id,
        title=rule_id,
        category=category,
        component=Component.ANY,
        severity=severity,
        expressions=(),
        scope=Scope(),
        transient=transient,
        resolve_after=resolve_after,
        remediation={"en": "fix it"},
        references=(),
        examples_match=(),
        examples_no_match=(),
        source="test",
    )


PERSISTENT = make_rule("persistent")  # no transient window, resolve_after 300
TRANSIENT = make_rule("transient", transient=60.0, category=Category.RBAC_PERMISSIONS, severity=Severity.CRITICAL)
SIDECAR = make_rule("sidecar", category=Category.SIDECAR_INIT, severity=Severity.LOW)
RULES = {r.id: r for r in (PERSISTENT, TRANSIENT, SIDECAR)}


def iv(
    rule_id: str,
    first: float,
    last: float,
    *,
    cluster: str = "c1",
    namespace: str = "shop",
    workload: str = "cart",
    count: int = 1,
    pods: tuple[str, ...] = (),
) -> Interval:
    return Interval(
        rule_id=rule_id,
        key=IncidentKey(cluster, namespace, workload),
        first_seen=first,
        last_seen=last,
        count=count,
        head=(Evidence(first, f"{rule_id} first"),),
        tail=(Evidence(last, f"{rule_id} last"),),
        pods=pods,
    )


async def put(
    store: Store,
    *merges: Interval,
    offsets: Sequence[OffsetUpdate] = (),
    stream_time: float | None = None,
    group: str = "g",
) -> None:
    """One batch: its intervals merge into what the store holds (a new key or a far-off span: a new incident)."""
    await store.commit_batch(group, Changes(tuple(merges), stream_time), offsets, RULES)


async def ids(store: Store, **query: object) -> list[str]:
    query.setdefault("stream_time", 10_000.0)
    page = await store.list_incidents(IncidentQuery(**query))  # type: ignore[arg-type]
    return [row.id for row in page.items]


# -- schema ---------------------------------------------------------------------------------------------------


async def test_migrations_are_idempotent(store: Store, store_url: str, raw_execute: RawExecute) -> None:
    a = iv("persistent", 100.0, 200.0)
    await put(store, a)
    await store.close()
    for _ in range(2):  # reopening an up-to-date schema changes nothing and loses nothing
        again = open_store(store_url)
        await again.open()
        await again.open()  # a second open on the same instance is a no-op
        assert (await again.get_incident(a.id, 250.0)) is not None
        await again.close()
    versions = raw_execute(store_url, "SELECT version FROM schema_version ORDER BY version")
    assert [v for (v,) in versions] == [m.version for m in SQLITE_MIGRATIONS]


def test_backends_share_one_logical_schema_history() -> None:
    assert [m.version for m in SQLITE_MIGRATIONS] == [m.version for m in POSTGRES_MIGRATIONS]
    assert [m.version for m in SQLITE_MIGRATIONS] == list(range(1, len(SQLITE_MIGRATIONS) + 1))


async def test_a_newer_schema_is_refused(store: Store, store_url: str, raw_execute: RawExecute) -> None:
    await store.close()
    raw_execute(store_url, "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (999, 0.0))
    newer = open_store(store_url)
    with pytest.raises(StoreError, match="newer"):
        await newer.open()
    assert not await newer.ping()


# -- intervals ------------------------------------------------------------------------------------------------


async def test_a_new_incident_round_trips_and_grows_in_place(store: Store) -> None:
    a = Interval(
        rule_id="persistent",
        key=IncidentKey("prod-eu", "shop", "cart"),
        first_seen=1700000000.125,
        last_seen=1700000042.5,
        count=7,
        head=(
            Evidence(1700000000.125, 'error "quoted" \\ back\tslash', pod="cart-7d9f-abcde", container="istio-proxy"),
            Evidence(1700000001.0, "non-ASCII: ção ✓"),
        ),
        tail=(Evidence(1700000042.5, "last line", pod="cart-7d9f-xyz12", container=None),),
        pods=("cart-7d9f-abcde", "cart-7d9f-xyz12"),
    )
    b = iv("sidecar", 10.0, 20.0, namespace="other")
    await put(store, a, b)

    row = await store.get_incident(a.id, 1700000050.0)
    assert row is not None
    assert row.interval == a
    assert row.id == a.id
    assert (row.category, row.severity) == ("apiserver-connectivity", "high")
    assert (row.transient, row.resolve_after) == (None, 300.0)
    assert (row.acked_at, row.acked_by, row.ack_comment, row.silenced) == (None, None, None, False)

    more = Interval(a.rule_id, a.key, 1700000090.0, 1700000099.0, 2, (Evidence(1700000090.0, "x"),), (), ("z-1",))
    await put(store, more)
    row = await store.get_incident(a.id, 1700000100.0)
    assert row is not None and row.id == a.id
    assert row.interval == merge(a, more)
    assert (row.count, row.last_seen) == (9, 1700000099.0)
    assert await ids(store, stream_time=1700000100.0) == [a.id, b.id]  # updated in place: no new row


async def test_an_upsert_without_its_rule_is_refused(store: Store) -> None:
    orphan = iv("no-such-rule", 1.0, 2.0)
    with pytest.raises(StoreError, match="no-such-rule"):
        await put(store, orphan, offsets=[OffsetUpdate("t", 0, None, 5)])
    assert await store.get_incident(orphan.id, 3.0) is None
    assert await store.load_offsets("g", "t") == {}


# -- offsets and fencing --------------------------------------------------------------------------------------


async def test_offsets_insert_then_advance(store: Store) -> None:
    assert await store.load_offsets("g", "logs") == {}
    await put(store, offsets=[OffsetUpdate("logs", 0, None, 10), OffsetUpdate("logs", 1, None, 3)])
    await put(store, offsets=[OffsetUpdate("other", 0, None, 99)])
    await put(store, offsets=[OffsetUpdate("logs", 0, None, 7)], group="g2")
    assert await store.load_offsets("g", "logs") == {0: 10, 1: 3}
    await put(store, offsets=[OffsetUpdate("logs", 0, 10, 25)])
    assert await store.load_offsets("g", "logs") == {0: 25, 1: 3}
    assert await store.load_offsets("g2", "logs") == {0: 7}
    assert await store.load_offsets("g", "other") == {0: 99}


@pytest.mark.parametrize(
    "stale",
    [
        OffsetUpdate("logs", 0, 9, 30),  # wrong previous
        OffsetUpdate("logs", 0, None, 30),  # "first" insert of a partition that already has an offset
        OffsetUpdate("logs", 5, 4, 30),  # update of a partition that has none
    ],
)
async def test_a_stale_offset_rolls_back_the_whole_batch(store: Store, stale: OffsetUpdate) -> None:
    await put(store, offsets=[OffsetUpdate("logs", 0, None, 10)], stream_time=100.0)
    kept = iv("persistent", 1.0, 2.0)
    await put(store, kept)
    fresh = iv("sidecar", 50.0, 60.0)
    grows_kept = iv("persistent", 0.5, 9.0, count=4)
    with pytest.raises(StaleOffsetError):
        await put(
            store,
            fresh,
            grows_kept,
            offsets=[OffsetUpdate("logs", 1, None, 4), stale],  # the good one must roll back too
            stream_time=500.0,
        )
    assert await store.get_incident(fresh.id, 100.0) is None
    row = await store.get_incident(kept.id, 100.0)
    assert row is not None and row.interval == kept
    assert await store.load_offsets("g", "logs") == {0: 10}
    assert await store.stream_time("g") == 100.0


async def test_zombie_writers_exactly_one_wins(store: Store, store_url: str) -> None:
    await put(store, offsets=[OffsetUpdate("logs", 0, None, 10)])
    zombie = open_store(store_url)
    await zombie.open()
    try:
        ours, theirs = iv("persistent", 1.0, 2.0, workload="a"), iv("persistent", 1.0, 2.0, workload="b")
        results = await asyncio.gather(
            put(store, ours, offsets=[OffsetUpdate("logs", 0, 10, 20)]),
            put(zombie, theirs, offsets=[OffsetUpdate("logs", 0, 10, 20)]),
            return_exceptions=True,
        )
    finally:
        await zombie.close()
    assert sorted(type(r).__name__ for r in results) == ["NoneType", "StaleOffsetError"]
    winner, loser = (ours, theirs) if results[0] is None else (theirs, ours)
    assert await store.get_incident(winner.id, 3.0) is not None
    assert await store.get_incident(loser.id, 3.0) is None
    assert await store.load_offsets("g", "logs") == {0: 20}


async def test_stream_time_keeps_the_maximum(store: Store) -> None:
    assert await store.stream_time() is None
    assert await store.stream_time("g") is None
    await put(store, stream_time=100.0)
    await put(store, stream_time=50.0)  # a late batch never moves stream time back
    assert await store.stream_time("g") == 100.0
    await put(store)  # no stream time in the batch: unchanged
    assert await store.stream_time("g") == 100.0
    await put(store, stream_time=150.5)
    await put(store, stream_time=120.0, group="g2")
    assert await store.stream_time("g") == 150.5
    assert await store.stream_time("g2") == 120.0
    assert await store.stream_time() == 150.5
    assert await store.stream_time("nobody") is None


# -- derived status -------------------------------------------------------------------------------------------

# Hand-computed expectations. PERSISTENT: no window, resolve_after 300. TRANSIENT: window 60, resolve_after 300.
STATUS_CASES = [
    # rule, first, last, stream time, expected
    ("persistent", 1000.0, 1100.0, 1200.0, Status.OPEN),  # quiet 100 < 300
    ("persistent", 1000.0, 1100.0, 1399.0, Status.OPEN),  # quiet 299
    ("persistent", 1000.0, 1100.0, 1400.0, Status.RESOLVED),  # quiet 300: not < 300
    ("persistent", 1000.0, 1000.0, 1000.0, Status.OPEN),  # a single occurrence, just seen
    ("transient", 1000.0, 1030.0, 1050.0, Status.PENDING),  # 50 s into the window, quiet 20
    ("transient", 1000.0, 1030.0, 1059.0, Status.PENDING),  # 59 s into the window
    ("transient", 1000.0, 1030.0, 1060.0, Status.SUPPRESSED),  # window over, it stopped after 30 s
    ("transient", 1000.0, 1030.0, 1400.0, Status.SUPPRESSED),  # a transient never becomes "resolved"
    ("transient", 1000.0, 1059.0, 1059.5, Status.PENDING),  # still inside the window
    ("transient", 1000.0, 1060.0, 1061.0, Status.OPEN),  # lasted exactly the window: escalated
    ("transient", 1000.0, 1100.0, 1200.0, Status.OPEN),  # recurring past the window, quiet 100
    ("transient", 1000.0, 1100.0, 1400.0, Status.RESOLVED),  # escalated, then quiet 300
]


@pytest.mark.parametrize(("rule_id", "first", "last", "at", "expected"), STATUS_CASES)
async def test_status_is_derived_at_the_stream_time(
    store: Store, rule_id: str, first: float, last: float, at: float, expected: Status
) -> None:
    a = iv(rule_id, first, last)
    await put(store, a)
    row = await store.get_incident(a.id, at)
    assert row is not None and row.status is expected
    assert await ids(store, stream_time=at, statuses=(expected,)) == [a.id]
    others = tuple(s for s in Status if s is not expected)
    assert await ids(store, stream_time=at, statuses=others) == []


async def test_every_status_filter_finds_what_the_derived_status_says_whatever_resolve_after(store: Store) -> None:
    """open and pending are read among the newest rows only (last seen after the stream time less the largest
    resolve_after, an index range): with rules of short and long resolve_after, each status filter (and both
    together) still returns exactly the incidents analyzer.incidents.status_of gives that status."""
    import random

    long = make_rule("long", resolve_after=3600.0)
    long_transient = make_rule("long-transient", transient=120.0, resolve_after=1800.0)
    rules = {**RULES, long.id: long, long_transient.id: long_transient}
    rng = random.Random(20261129)
    intervals = []
    for n in range(300):
        rule = rng.choice(list(rules.values()))
        first = rng.uniform(0, 10_000)
        intervals.append(iv(rule.id, first, first + rng.choice((0.0, 30.0, 90.0, 150.0, 600.0)), workload=f"w{n}"))
    await store.commit_batch("g", Changes(tuple(intervals), None), [], rules)

    def derived(i: Interval, at: float) -> Status:
        rule = rules[i.rule_id]
        return status_of(i.first_seen, i.last_seen, rule.transient, rule.resolve_after, at)

    for at in (2_000.0, 6_000.0, 10_000.0, 10_700.0, 12_500.0, 20_000.0):
        for wanted in [(s,) for s in Status] + [(Status.OPEN, Status.PENDING)]:
            found = await ids(store, stream_time=at, statuses=wanted, limit=500)
            assert sorted(found) == sorted(i.id for i in intervals if derived(i, at) in wanted), (at, wanted)


async def test_counts_by_status(store: Store) -> None:
    await put(
        store,
        iv("persistent", 1000.0, 1100.0, workload="a"),  # open at 1200
        iv("persistent", 500.0, 600.0, workload="b"),  # resolved at 1200 (quiet 600)
        iv("persistent", 1150.0, 1190.0, workload="c"),  # open
        iv("transient", 1170.0, 1180.0, workload="d"),  # pending (30 s into the window)
        iv("transient", 1000.0, 1010.0, workload="e"),  # suppressed
        iv("sidecar", 1000.0, 1000.0, workload="f"),  # open
    )
    await store.add_silence(Silence("", None, None, None, "a", 9e9, "me", "silenced ones still count"))
    assert await store.counts_by_status(1200.0) == [
        ("open", "apiserver-connectivity", "high", 2),
        ("open", "sidecar-init", "low", 1),
        ("pending", "rbac-permissions", "critical", 1),
        ("resolved", "apiserver-connectivity", "high", 1),
        ("suppressed", "rbac-permissions", "critical", 1),
    ]
    assert await store.counts_by_status(5000.0) == [
        ("resolved", "apiserver-connectivity", "high", 3),
        ("resolved", "sidecar-init", "low", 1),
        ("suppressed", "rbac-permissions", "critical", 2),
    ]


async def test_suppressed_transients_are_claimed_once(store: Store) -> None:
    """Each incident counts once toward analyzer_transients_suppressed_total, whoever asks and however often:
    the claim marks it in the same statement (so a restart or a second replica does not count it again)."""
    await put(
        store,
        iv("transient", 1170.0, 1180.0, workload="d"),  # pending at 1200, suppressed by 5000
        iv("transient", 1000.0, 1010.0, workload="e"),  # suppressed at 1200
        iv("persistent", 1000.0, 1100.0, workload="a"),  # never suppressed
    )
    assert await store.claim_suppressed(1200.0) == [("transient", 1)]
    assert await store.claim_suppressed(1200.0) == []
    assert await store.claim_suppressed(5000.0) == [("transient", 1)]
    assert await store.claim_suppressed(9000.0) == []


# -- listing --------------------------------------------------------------------------------------------------


async def test_every_filter(store: Store) -> None:
    a = iv("persistent", 1000.0, 1100.0, cluster="eu", namespace="shop", workload="cart", pods=("cart-1", "cart-2"))
    b = iv("transient", 1150.0, 1190.0, cluster="eu", namespace="shop", workload="pay", pods=("pay-1",))
    c = iv("sidecar", 900.0, 950.0, cluster="us", namespace="shop", workload="cart", pods=("cart-2",))
    d = iv("persistent", 100.0, 200.0, cluster="us", namespace="infra", workload="gw")
    await put(store, a, b, c, d)
    st = 1200.0  # a open, b pending, c open (quiet 250), d resolved

    assert await ids(store, stream_time=st) == [b.id, a.id, c.id, d.id]  # newest last_seen first
    assert await ids(store, stream_time=st, statuses=(Status.OPEN,)) == [a.id, c.id]
    assert await ids(store, stream_time=st, statuses=(Status.PENDING, Status.RESOLVED)) == [b.id, d.id]
    assert await ids(store, stream_time=st, statuses=(Status.SUPPRESSED,)) == []
    assert await ids(store, stream_time=st, category="apiserver-connectivity") == [a.id, d.id]
    assert await ids(store, stream_time=st, severity="low") == [c.id]
    assert await ids(store, stream_time=st, rule="transient") == [b.id]
    assert await ids(store, stream_time=st, cluster="us") == [c.id, d.id]
    assert await ids(store, stream_time=st, namespace="shop") == [b.id, a.id, c.id]
    assert await ids(store, stream_time=st, workload="cart") == [a.id, c.id]
    assert await ids(store, stream_time=st, namespace="shop", workload="cart", cluster="eu") == [a.id]
    assert await ids(store, stream_time=st, pod="cart-2") == [a.id, c.id]
    assert await ids(store, stream_time=st, pod="cart") == []  # whole names, not substrings
    assert await ids(store, stream_time=st, since=950.0) == [b.id, a.id, c.id]  # last_seen >= since
    assert await ids(store, stream_time=st, until=1000.0) == [a.id, c.id, d.id]  # first_seen <= until
    assert await ids(store, stream_time=st, since=960.0, until=1100.0) == [a.id]
    assert await ids(store, stream_time=st, statuses=(Status.OPEN,), severity="high") == [a.id]


async def test_pagination_is_complete_and_newest_first(store: Store) -> None:
    # Pairs share last_seen, so the id tie-break is exercised on every page boundary.
    intervals = [iv("persistent", 10.0 * i, 1000.0 + i // 2, workload=f"w{i:03d}") for i in range(120)]
    await put(store, *intervals)
    seen: list[str] = []
    cursor = None
    pages = []
    while True:
        page = await store.list_incidents(IncidentQuery(stream_time=2000.0, limit=50, cursor=cursor))
        pages.append(len(page.items))
        seen += [r.id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [50, 50, 20]
    expected = [i.id for i in sorted(intervals, key=lambda i: (i.last_seen, i.id), reverse=True)]
    assert seen == expected  # no duplicates, no gaps, newest first


async def test_a_page_that_ends_exactly_has_no_next_cursor(store: Store) -> None:
    await put(store, *(iv("persistent", float(i), float(i), workload=str(i)) for i in range(4)))
    first = await store.list_incidents(IncidentQuery(stream_time=10.0, limit=2))
    assert first.next_cursor is not None
    second = await store.list_incidents(IncidentQuery(stream_time=10.0, limit=2, cursor=first.next_cursor))
    assert [row.key.workload for row in second.items] == ["1", "0"]
    assert second.next_cursor is None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    ["", "not a cursor!", "%%%", _b64(b"not json"), _b64(b"{}"), _b64(b"[1]"), _b64(b'["x", "id"]'), _b64(b"[1, 2]")],
)
async def test_a_malformed_cursor_is_a_value_error(store: Store, cursor: str) -> None:
    with pytest.raises(ValueError, match="malformed cursor"):
        await store.list_incidents(IncidentQuery(stream_time=1.0, cursor=cursor))


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_an_out_of_range_limit_is_a_value_error(store: Store, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.list_incidents(IncidentQuery(stream_time=1.0, limit=limit))


# -- acks and silences ----------------------------------------------------------------------------------------


async def test_ack_and_its_comment_survive_growth_and_an_earlier_start(store: Store) -> None:
    a = iv("persistent", 1000.0, 1100.0)
    await put(store, a)
    assert await store.ack(a.id, "alice", 1234.5, "on it") is True
    assert await store.ack("no-such-incident", "alice", 1234.5) is False
    row = await store.get_incident(a.id, 1200.0)
    assert row is not None and (row.acked_at, row.acked_by, row.ack_comment) == (1234.5, "alice", "on it")

    # The incident keeps growing, then a late line moves its start earlier: same id, same ack.
    await put(store, iv("persistent", 1120.0, 1150.0, count=2))
    await put(store, iv("persistent", 900.0, 900.0))
    row = await store.get_incident(a.id, 1200.0)
    assert row is not None and row.id == a.id
    assert (row.first_seen, row.last_seen, row.count) == (900.0, 1150.0, 4)
    assert (row.acked_at, row.acked_by, row.ack_comment) == (1234.5, "alice", "on it")
    assert await ids(store, stream_time=1200.0) == [a.id]


async def test_a_bridge_keeps_the_older_id_and_the_other_becomes_an_alias(store: Store) -> None:
    older = iv("persistent", 100.0, 150.0, count=2)
    newer = iv("persistent", 700.0, 750.0, count=3)  # 550 s after: a separate incident (resolve_after 300)
    await put(store, newer)
    await put(store, older)
    await store.ack(newer.id, "bob", 800.0, "paged the owner")  # only the newer one is acked
    assert await ids(store, stream_time=800.0) == [newer.id, older.id]

    await put(store, iv("persistent", 420.0, 420.0))  # a late line within 300 s of both: one incident
    assert await ids(store, stream_time=800.0) == [older.id]
    row = await store.get_incident(older.id, 800.0)
    assert row is not None and (row.first_seen, row.last_seen, row.count) == (100.0, 750.0, 6)
    assert (row.acked_by, row.ack_comment) == ("bob", "paged the owner")  # the absorbed one's ack carries over
    via_alias = await store.get_incident(newer.id, 800.0)
    assert via_alias is not None and via_alias.id == older.id and via_alias.count == 6
    assert await store.aliases([newer.id, older.id, "nope"]) == {newer.id: older.id}
    assert await store.ack(newer.id, "carol", 900.0) is True  # an alias acks the surviving incident
    row = await store.get_incident(older.id, 800.0)
    assert row is not None and row.acked_by == "carol"

    # A still older incident then absorbs the survivor: the first alias follows it.
    oldest = iv("persistent", -500.0, -450.0)
    await put(store, oldest)
    await put(store, iv("persistent", -200.0, -200.0))
    assert await ids(store, stream_time=800.0) == [oldest.id]
    assert await store.aliases([newer.id, older.id]) == {newer.id: oldest.id, older.id: oldest.id}
    row = await store.get_incident(newer.id, 800.0)
    assert row is not None and (row.id, row.count, row.acked_by) == (oldest.id, 8, "carol")


async def test_an_unrelated_incident_does_not_inherit_an_ack(store: Store) -> None:
    a = iv("persistent", 1000.0, 1100.0, workload="a")
    await put(store, a)
    await store.ack(a.id, "bob", 1.0)
    other = iv("persistent", 900.0, 1150.0, workload="b")
    await put(store, other)
    row = await store.get_incident(other.id, 1200.0)
    assert row is not None and row.acked_at is None


async def test_an_id_is_never_reused(store: Store, store_url: str, raw_execute: RawExecute) -> None:
    a = iv("persistent", 1000.0, 1000.0)
    await put(store, iv("persistent", 500.0, 500.0), a)
    await put(store, iv("persistent", 750.0, 750.0))  # bridges: `a` is now an alias of the incident at 500
    (survivor,) = await ids(store)
    raw_execute(store_url, "DELETE FROM incidents WHERE id = %s", (survivor,))  # as retention would
    again = iv("persistent", 1000.0, 1000.0)  # same rule, key and start: the same natural id as `a`
    assert again.id == a.id
    await put(store, again)
    (fresh,) = await ids(store)
    assert fresh not in (a.id, survivor)
    row = await store.get_incident(fresh, 1100.0)
    assert row is not None and row.interval == again


async def test_silences_match_and_expire(store: Store) -> None:
    cart = iv("persistent", 1000.0, 1100.0, namespace="shop", workload="cart")
    pay = iv("persistent", 1000.0, 1090.0, namespace="shop", workload="pay")
    infra = iv("sidecar", 1000.0, 1080.0, namespace="infra", workload="cart")
    await put(store, cart, pay, infra)

    sid = await store.add_silence(Silence("", "persistent", None, "shop", "cart", 5000.0, "alice", "deploying"))
    assert sid
    wide = Silence("s-wide", None, None, "infra", None, 3000.0, "bob", "maintenance")
    assert await store.add_silence(wide) == "s-wide"

    async def silenced(now: float) -> dict[str, bool]:
        page = await store.list_incidents(IncidentQuery(stream_time=1200.0, now=now))
        return {r.key.workload + "@" + r.key.namespace: r.silenced for r in page.items}

    assert await silenced(2000.0) == {"cart@shop": True, "pay@shop": False, "cart@infra": True}
    assert await silenced(4000.0) == {"cart@shop": True, "pay@shop": False, "cart@infra": False}
    assert await silenced(5000.0) == {"cart@shop": False, "pay@shop": False, "cart@infra": False}

    row = await store.get_incident(cart.id, 1200.0, now=4999.0)
    assert row is not None and row.silenced
    row = await store.get_incident(cart.id, 1200.0)  # now defaults to the stream time
    assert row is not None and row.silenced

    assert [s.id for s in await store.list_silences(2000.0)] == ["s-wide", sid]
    assert await store.list_silences(4000.0) == [
        Silence(sid, "persistent", None, "shop", "cart", 5000.0, "alice", "deploying")
    ]
    assert await store.list_silences(5000.0) == []


# -- lifecycle and URLs ---------------------------------------------------------------------------------------


async def test_ping_and_close(store_url: str) -> None:
    s = open_store(store_url)
    assert not await s.ping()  # not open yet
    await s.open()
    assert await s.ping()
    await s.close()
    assert not await s.ping()
    with pytest.raises(StoreError, match="not open"):
        await s.load_offsets("g", "t")
    await s.close()  # closing twice is harmless


async def test_in_memory_sqlite() -> None:
    s = open_store("sqlite:///:memory:")
    await s.open()
    try:
        a = iv("persistent", 1.0, 2.0)
        await put(s, a, offsets=[OffsetUpdate("t", 0, None, 1)], stream_time=2.0)
        assert await s.stream_time() == 2.0
        assert (await s.get_incident(a.id, 2.0)) is not None
    finally:
        await s.close()


async def test_sqlite_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url, path in [
        ("sqlite:///data/rel.db", tmp_path / "data" / "rel.db"),
        (f"sqlite:///{tmp_path / 'abs.db'}", tmp_path / "abs.db"),
    ]:
        s = open_store(url)
        await s.open()
        await s.close()
        assert path.is_file(), url


@pytest.mark.parametrize("url", ["", "mysql://h/db", "sqlite://", "sqlite:///", "sqlite:relative.db", "file:x.db"])
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="sqlite:///:memory:"):
        open_store(url)


async def test_an_unreachable_postgres_is_a_store_error() -> None:
    s = open_store("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(StoreError):
        await s.open()
    assert not await s.ping()


@pytest.mark.integration
async def test_postgres_reconnects_after_losing_its_connections(
    store: Store, store_url: str, raw_execute: RawExecute
) -> None:
    if not store_url.startswith("postgres"):
        pytest.skip("PostgreSQL only")
    a = iv("persistent", 1.0, 2.0)
    await put(store, a, offsets=[OffsetUpdate("t", 0, None, 1)])
    assert await store.get_incident(a.id, 3.0) is not None  # both connections in use
    # Whitebox: end exactly this store's two server sessions (other sessions on the server are not ours).
    links = (*store._writer.items, *store._readers.items)  # type: ignore[attr-defined]
    pids = [link._conn.info.backend_pid for link in links if link._conn is not None]
    raw_execute(store_url, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    assert await store.get_incident(a.id, 3.0) is not None
    await put(store, offsets=[OffsetUpdate("t", 0, 1, 2)])
    assert await store.load_offsets("g", "t") == {0: 2}


@pytest.mark.parametrize("readers", [1, 2])
async def test_a_slow_read_holds_up_the_others_only_without_a_spare_connection(store_url: str, readers: int) -> None:
    """ANALYZER_STORE_READERS: while one read is stuck (the metrics' counts over every incident, a cold grouping
    read), the others go through on another connection; with a single one they wait behind it."""
    s = open_store(store_url, readers=readers)
    await s.open()
    a = iv("persistent", 1.0, 2.0)
    await put(s, a, offsets=[OffsetUpdate("t", 0, None, 1)])
    released = asyncio.Event()
    # Whitebox: a read that holds its connection until released.
    if isinstance(s, SqliteStore):
        stuck_thread = threading.Event()
        slow = asyncio.create_task(s._read(lambda c: stuck_thread.wait(10)))  # type: ignore[attr-defined]
        released_hook: Callable[[], None] = stuck_thread.set
    else:
        assert isinstance(s, PostgresStore)

        async def sleep_until_released(conn: Any) -> None:
            await conn.execute("SELECT pg_sleep(0.05)")
            await released.wait()

        slow = asyncio.create_task(s._run(s._readers, sleep_until_released))  # type: ignore[attr-defined]
        released_hook = released.set
    try:
        await asyncio.sleep(0.2)
        assert not slow.done()
        if readers > 1:
            assert await asyncio.wait_for(s.get_incident(a.id, 3.0), 5.0) is not None
        else:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(s.get_incident(a.id, 3.0), 0.5)
    finally:
        released_hook()
        await slow
        await s.close()


async def test_a_blocked_write_gives_up_within_the_bound(store: Store, store_url: str) -> None:
    await put(store, offsets=[OffsetUpdate("t", 0, None, 1)])
    sqlite_path = store_url.removeprefix("sqlite:///")
    small: Store = (
        SqliteStore(sqlite_path, busy_timeout=0.2)
        if store_url.startswith("sqlite")
        else PostgresStore(store_url, statement_timeout=0.3)
    )
    await small.open()
    # Another process / session holds the write lock / the offset row.
    holder: sqlite3.Connection | psycopg.Connection[tuple[Any, ...]]
    if store_url.startswith("sqlite"):
        holder = sqlite3.connect(sqlite_path)
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder = psycopg.connect(store_url)
        holder.execute("SELECT * FROM offsets FOR UPDATE")
    try:
        with pytest.raises(StoreError):
            await put(small, offsets=[OffsetUpdate("t", 0, 1, 2)])
        holder.rollback()
        await put(small, offsets=[OffsetUpdate("t", 0, 1, 2)])  # the same store recovers
        assert await store.load_offsets("g", "t") == {0: 2}
    finally:
        holder.close()
        await small.close()


# -- merge on write -------------------------------------------------------------------------------------------


async def test_merges_fold_into_stored_intervals_in_any_order(store_url: str) -> None:
    """Two consumers' batch-local intervals of one key become one incident, whatever the write order."""
    pieces = [iv("persistent", 100, 150, count=3), iv("persistent", 400, 420, count=2), iv("persistent", 160, 390)]
    results = []
    for n, order in enumerate(([0, 1, 2], [2, 1, 0], [1, 0, 2])):
        s = open_store(store_url)
        await s.open()
        try:
            await s.commit_batch("g", Changes(), [], RULES)  # nothing: a no-op batch
            for index in order:  # each order on a key of its own
                await s.commit_batch(
                    "g", Changes(merges=(replace(pieces[index], key=IncidentKey("c", "n", str(n))),)), [], RULES
                )
            page = await s.list_incidents(IncidentQuery(stream_time=500.0, limit=50, workload=str(n)))
            results.append([(r.first_seen, r.last_seen, r.count) for r in page.items])
        finally:
            await s.close()
    # 100..150 and 160..390 and 400..420 are all within resolve_after (300) of each other: one incident.
    assert results == [[(100.0, 420.0, 6)]] * 3


async def test_merges_keep_far_apart_intervals_separate(store: Store) -> None:
    await store.commit_batch("g", Changes(merges=(iv("persistent", 0, 10, count=2),)), [], RULES)
    await store.commit_batch("g", Changes(merges=(iv("persistent", 1000, 1010, count=5),)), [], RULES)
    await store.commit_batch("g", Changes(merges=(iv("persistent", 1005, 1020, count=1),)), [], RULES)
    page = await store.list_incidents(IncidentQuery(stream_time=1100.0, limit=50))
    assert sorted((r.first_seen, r.last_seen, r.count) for r in page.items) == [(0.0, 10.0, 2), (1000.0, 1020.0, 6)]


async def test_an_offset_never_moves_backwards(store: Store) -> None:
    await put(store, offsets=[OffsetUpdate("t", 0, None, 100)])
    with pytest.raises(StaleOffsetError):
        await put(store, iv("persistent", 1, 2), offsets=[OffsetUpdate("t", 0, 100, 40)])
    assert await store.load_offsets("g", "t") == {0: 100}
    assert await ids(store) == []


# -- text a store cannot hold, and a store that cannot write --------------------------------------------------

POISON = "bad \x00 byte, lone \ud800 surrogate"


async def test_nul_and_lone_surrogates_are_stored_escaped_never_refused(store: Store) -> None:
    evidence = Evidence(100.0, f"error: {POISON}", pod="p\x00d", container="c\udfff")
    poison = Interval("persistent", IncidentKey("c1", "ns\x00", "w\ud800"), 100.0, 100.0, 1, (evidence,), (evidence,))
    poison = replace(poison, pods=("p\x00d",))
    good = iv("sidecar", 100.0, 110.0)
    await put(store, poison, good, offsets=[OffsetUpdate("t", 0, None, 2)])  # the batch is stored whole
    assert await store.load_offsets("g", "t") == {0: 2}
    page = await store.list_incidents(IncidentQuery(stream_time=200.0, rule="persistent"))
    (row,) = page.items
    assert (row.key.namespace, row.key.workload, row.pods) == ("ns\\u0000", "w\\ud800", ("p\\u0000d",))
    full = await store.get_incident(row.id, 200.0)
    assert full is not None
    assert full.head[0].line == "error: bad \\u0000 byte, lone \\ud800 surrogate"
    assert (full.head[0].pod, full.head[0].container) == ("p\\u0000d", "c\\udfff")
    # The same escaping applies to what is asked: a NUL in a filter, an id or an ack finds the stored text.
    assert await ids(store, stream_time=200.0, namespace="ns\x00", workload="w\ud800", pod="p\x00d") == [row.id]
    assert await store.get_incident("id\x00", 200.0) is None
    assert await store.ack("id\x00\ud800", "me\x00", 1.0, "c\x00") is False
    assert await store.ack(row.id, "me\x00", 1.0, "see \ud800") is True
    acked = await store.get_incident(row.id, 200.0)
    assert acked is not None and (acked.acked_by, acked.ack_comment) == ("me\\u0000", "see \\ud800")
    await store.add_silence(Silence("", None, None, "ns\x00", None, 9e9, "x\x00", "y\ud800"))
    assert [s.namespace for s in await store.list_silences(0.0)] == ["ns\\u0000"]
    # More of the same key merges into the same incident.
    await put(store, replace(poison, first_seen=150.0, last_seen=150.0))
    again = await store.get_incident(row.id, 200.0)
    assert again is not None and again.count == 2


@pytest.mark.parametrize("condition", ["read-only", "full"])
async def test_sqlite_that_cannot_write_says_so_and_loses_nothing(tmp_path: Path, condition: str) -> None:
    s = SqliteStore(str(tmp_path / "store.db"))
    await s.open()
    try:
        await put(s, iv("persistent", 1.0, 2.0), offsets=[OffsetUpdate("t", 0, None, 10)])
        assert s.write_failure() is None
        big = replace(iv("persistent", 100.0, 100.0, workload="w"), head=(Evidence(100.0, "x" * 100_000),))
        if condition == "read-only":
            await s._run(lambda c: c.execute("PRAGMA query_only = ON"))  # type: ignore[attr-defined]
            expected = "readonly"
        else:  # no page beyond the current ones: SQLite's own "disk is full" path
            await s._run(  # type: ignore[attr-defined]
                lambda c: c.execute(f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}")
            )
            expected = "full"
        with pytest.raises(StoreError, match=expected) as failed:
            await put(s, big, offsets=[OffsetUpdate("t", 0, 10, 20)], stream_time=100.0)
        assert str(failed.value).startswith(f"SQLite {tmp_path / 'store.db'}: ")
        failure = s.write_failure()
        assert failure is not None and expected in failure and len(failure) <= 300
        assert await s.ping()  # reads still answer: readiness must look at writes too (Service.ready)
        assert await s.load_offsets("g", "t") == {0: 10}  # nothing half-applied

        if condition == "read-only":
            await s._run(lambda c: c.execute("PRAGMA query_only = OFF"))  # type: ignore[attr-defined]
        else:
            await s._run(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))  # type: ignore[attr-defined]
        await put(s, big, offsets=[OffsetUpdate("t", 0, 10, 20)], stream_time=100.0)  # the same batch, again
        assert s.write_failure() is None
        assert await s.load_offsets("g", "t") == {0: 20}
        assert await ids(s, workload="w") == [big.id]
    finally:
        await s.close()


@pytest.mark.integration
@pytest.mark.parametrize("state", ["in-transaction", "pipeline-mode"])
async def test_postgres_replaces_a_connection_left_in_an_unexpected_state(
    store: Store, store_url: str, state: str
) -> None:
    if not store_url.startswith("postgres"):
        pytest.skip("PostgreSQL only")
    await put(store, offsets=[OffsetUpdate("t", 0, None, 1)])
    writer = store._writer.items[0]._conn  # type: ignore[attr-defined]
    # Whitebox: a session left inside a transaction (as after a cancelled call), or in pipeline mode (the
    # reported wedge after `pg_ctl restart`: "cannot exit pipeline mode while busy" on every later batch).
    if state == "in-transaction":
        await writer.execute("BEGIN")
    else:
        writer.pgconn.enter_pipeline_mode()
    await put(store, iv("persistent", 1.0, 2.0), offsets=[OffsetUpdate("t", 0, 1, 2)])
    assert store._writer.items[0]._conn is not writer  # type: ignore[attr-defined]
    assert await store.load_offsets("g", "t") == {0: 2}
    assert store.write_failure() is None


async def test_the_store_timeout_bounds_a_blocked_write(store: Store, store_url: str) -> None:
    """open_store(timeout=...) (ANALYZER_STORE_TIMEOUT): the store's own waits stay below it."""
    await put(store, offsets=[OffsetUpdate("t", 0, None, 1)])
    bounded_store = open_store(store_url, timeout=1.0)
    await bounded_store.open()
    holder: sqlite3.Connection | psycopg.Connection[tuple[Any, ...]]
    if store_url.startswith("sqlite"):
        holder = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder = psycopg.connect(store_url)
        holder.execute("SELECT * FROM offsets FOR UPDATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError):
            await put(bounded_store, offsets=[OffsetUpdate("t", 0, 1, 2)])
        assert time.monotonic() - started < 1.5
        assert bounded_store.write_failure() is not None
    finally:
        holder.close()
        await bounded_store.close()
