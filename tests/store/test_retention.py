"""Retention (ANALYZER_RETENTION): settled incidents older than it go with their aliases, expired silences too;
in batches of ANALYZER_RETENTION_BATCH rows, on both stores (the ``store`` fixture runs SQLite and PostgreSQL)."""

from __future__ import annotations

from analyzer.config import Settings
from analyzer.service import purge_once
from analyzer.store import IncidentQuery, Silence, Store
from analyzer.types import Changes, Evidence, IncidentKey, Interval
from tests.store.test_store import PERSISTENT, RULES, TRANSIENT

DAY = 86_400.0
NOW = 1_700_000_000.0  # stream time and wall clock of the pass
RETENTION = 30 * DAY


def interval(rule_id: str, workload: str, first: float, last: float, count: int = 1) -> Interval:
    e = Evidence(first, f"{rule_id} line", f"{workload}-0", "app")
    return Interval(rule_id, IncidentKey("c1", "ns", workload), first, last, count, (e,), (e,), (f"{workload}-0",))


async def ids(store: Store) -> set[str]:
    page = await store.list_incidents(IncidentQuery(stream_time=NOW, limit=1000))
    assert page.next_cursor is None
    return {row.id for row in page.items}


def silence(name: str, expires_at: float) -> Silence:
    return Silence("", name, None, None, None, expires_at, "test", name)


async def test_purge_deletes_settled_incidents_older_than_retention_with_aliases_and_silences(store: Store) -> None:
    resolve = PERSISTENT.resolve_after
    cutoff = NOW - RETENTION
    old = interval(PERSISTENT.id, "old", cutoff - 10 * DAY, cutoff - resolve - 1)  # settled before the cutoff
    edge = interval(PERSISTENT.id, "edge", cutoff - DAY, cutoff - resolve + 1)  # settles just after it: kept
    fresh = interval(PERSISTENT.id, "fresh", NOW - 100, NOW - 50)
    transient = interval(TRANSIENT.id, "blip", cutoff - 5 * DAY, cutoff - 5 * DAY + 10)  # a suppressed transient
    # Two old incidents of one key, then a late line bridging them: one survives, the other is an alias of it.
    left = interval(PERSISTENT.id, "bridged", cutoff - 9 * DAY, cutoff - 9 * DAY)
    right = interval(PERSISTENT.id, "bridged", cutoff - 9 * DAY + 2 * resolve, cutoff - 9 * DAY + 2 * resolve)
    bridge = interval(PERSISTENT.id, "bridged", cutoff - 9 * DAY + resolve, cutoff - 9 * DAY + resolve)
    await store.commit_batch("g", Changes((old, edge, fresh, transient, left, right), NOW), [], RULES)
    await store.commit_batch("g", Changes((bridge,), NOW), [], RULES)
    assert await store.aliases([right.id]) == {right.id: left.id}
    assert (await store.get_incident(right.id, NOW)) is not None  # the alias resolves before retention

    await store.add_silence(silence("long-expired", cutoff - 1))
    await store.add_silence(silence("recently-expired", NOW - 10))
    await store.add_silence(silence("active", NOW + DAY))

    settings = Settings(retention=RETENTION, retention_batch=2)  # batches of 2: several transactions
    totals = await purge_once(store, settings, stream_time=NOW, now=NOW)
    assert totals == {"incidents": 3, "aliases": 1, "silences": 1}
    assert await ids(store) == {edge.id, fresh.id}
    assert await store.aliases([right.id]) == {}
    assert await store.get_incident(right.id, NOW) is None and await store.get_incident(old.id, NOW) is None
    assert [s.rule for s in await store.list_silences(NOW - 20)] == ["recently-expired", "active"]

    # Nothing left to delete: a second pass deletes nothing, and a line for a deleted key starts afresh.
    assert await purge_once(store, settings, stream_time=NOW, now=NOW) == {"incidents": 0, "aliases": 0, "silences": 0}
    again = interval(PERSISTENT.id, "old", NOW - 5, NOW - 5)
    await store.commit_batch("g", Changes((again,), NOW), [], RULES)
    assert await ids(store) == {edge.id, fresh.id, again.id}


async def test_purge_goes_in_bounded_batches(store: Store) -> None:
    cutoff = NOW - RETENTION
    old = [interval(PERSISTENT.id, f"w{i}", cutoff - DAY - i * 1000, cutoff - DAY - i * 1000) for i in range(7)]
    await store.commit_batch("g", Changes(tuple(old), NOW), [], RULES)
    for i in range(5):
        await store.add_silence(silence(f"s{i}", cutoff - i - 1))
    # One call is one transaction of at most `limit` rows of each kind, oldest first.
    assert await store.purge(cutoff, cutoff, 3) == (3, 0, 3)
    assert await ids(store) == {iv.id for iv in old[:4]}
    assert await store.purge(cutoff, None, 3) == (3, 0, 0)
    assert await store.purge(cutoff, cutoff, 3) == (1, 0, 2)
    assert await ids(store) == set()


async def test_no_stream_time_keeps_every_incident(store: Store) -> None:
    """Incidents age in stream time: without one (nothing consumed yet) none is deleted; silences still are."""
    old = interval(PERSISTENT.id, "old", 1.0, 2.0)
    await store.commit_batch("g", Changes((old,), None), [], RULES)
    await store.add_silence(silence("expired", 5.0))
    totals = await purge_once(store, Settings(retention=DAY), stream_time=None, now=NOW)
    assert totals == {"incidents": 0, "aliases": 0, "silences": 1}
    assert await ids(store) == {old.id}
