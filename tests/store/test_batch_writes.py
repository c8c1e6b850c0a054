"""A batch is written in a fixed number of statements, whatever its size, with the merge results of one
interval at a time (see sql.merge_batch_program). Both backends (see conftest.store)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from analyzer.store import Store
from analyzer.store.base import POSTGRESQL, SQLITE
from analyzer.store.sql import Op, commit_program, drive, statements
from analyzer.types import Changes, OffsetUpdate
from tests.store.test_store import PERSISTENT, RULES, ids, iv, make_rule, put


async def test_a_merge_that_widens_the_span_reads_the_rows_it_then_reaches(store: Store) -> None:
    # Two incidents stored 90 s apart (resolve_after 60: separate), then the rule's resolve_after grows to 120
    # (a catalogue reload). A line 55 s after the later one reaches only it at first; merged, its span
    # reaches the earlier one too, which no span of the batch covered when the batch began.
    narrow = {"r": make_rule("r", resolve_after=60.0)}
    wide = {"r": make_rule("r", resolve_after=120.0)}
    earlier, later = iv("r", -100.0, -90.0), iv("r", 0.0, 10.0)
    await store.commit_batch("g", Changes((earlier, later)), [], narrow)
    assert sorted(await ids(store)) == sorted([earlier.id, later.id])

    await store.commit_batch("g", Changes((iv("r", 65.0, 70.0),)), [], wide)
    assert await ids(store) == [earlier.id]  # the one that started first survives
    row = await store.get_incident(earlier.id, 100.0)
    assert row is not None and (row.first_seen, row.last_seen, row.count) == (-100.0, 70.0, 3)
    assert await store.aliases([later.id]) == {later.id: earlier.id}


async def test_several_intervals_of_one_key_in_one_batch_merge_one_after_another(store: Store) -> None:
    stored = iv("persistent", 250.0, 750.0, count=4)
    await put(store, stored)
    # Each is 250 s from the stored incident (resolve_after 300) and 1000 s from the other: the first one widens
    # the stored incident in place, the second one then extends that same (already changed) row.
    await put(store, iv("persistent", 0.0, 0.0), iv("persistent", 1000.0, 1000.0))
    assert await ids(store) == [stored.id]
    row = await store.get_incident(stored.id, 1100.0)
    assert row is not None and (row.first_seen, row.last_seen, row.count) == (0.0, 1000.0, 6)


async def test_many_new_and_extended_incidents_in_one_batch(store: Store) -> None:
    extended = [iv("persistent", 0.0, 10.0, workload=f"w{i}") for i in range(300)]
    await put(store, *extended)
    fresh = [iv("persistent", 100.0, 100.0, workload=f"n{i}") for i in range(300)]
    later = [iv("persistent", 200.0, 200.0, workload=f"w{i}") for i in range(300)]
    await put(store, *fresh, *later, offsets=[OffsetUpdate("t", 0, None, 600)])
    assert sorted(await ids(store, limit=1000)) == sorted(x.id for x in extended + fresh)
    row = await store.get_incident(extended[123].id, 300.0)
    assert row is not None and (row.first_seen, row.last_seen, row.count) == (0.0, 200.0, 2)
    assert await store.load_offsets("g", "t") == {0: 600}


# -- statements per batch (whitebox: the real statements on the real database, counted) -----------------------


def _batch(n: int, first: float) -> Changes:
    """n intervals that extend n stored incidents and n that start new ones."""
    grow = [iv("persistent", first, first, workload=f"w{i}") for i in range(n)]
    new = [iv("persistent", first, first, workload=f"n{first:.0f}-{i}") for i in range(n)]
    return Changes(tuple(grow + new), stream_time=first)


def _count(store_url: str, changes: Changes, offsets: Sequence[OffsetUpdate]) -> list[str]:
    """Run one batch's program in a transaction; the statements it ran, by their first word(s)."""
    ran: list[str] = []
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        try:

            def run(op: Op) -> Any:
                ran.append(op.sql.split(" ", 1)[0])
                cur = conn.execute(op.sql, op.params)
                return cur.fetchall() if op.rows else cur.rowcount

            conn.execute("BEGIN IMMEDIATE")
            drive(commit_program(statements(SQLITE), "g", changes, offsets, RULES), run)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return ran
    with psycopg.connect(store_url) as pg, pg.cursor() as cur:

        def run_pg(op: Op) -> Any:
            ran.append(op.sql.split(" ", 1)[0])
            cur.execute(op.sql, op.params)
            return cur.fetchall() if op.rows else cur.rowcount

        drive(commit_program(statements(POSTGRESQL), "g", changes, offsets, RULES), run_pg)
    return ran


@pytest.mark.parametrize("n", [3, 60])
async def test_a_batch_reads_in_a_fixed_number_of_statements(store: Store, store_url: str, n: int) -> None:
    await put(store, *(iv("persistent", 0.0, 0.0, workload=f"w{i}") for i in range(n)))
    ran = _count(store_url, _batch(n, 100.0), [OffsetUpdate("t", 0, None, 10)])
    # The spans, then the spans widened by the stored rows merged (a stored incident that grows), the ids.
    assert ran.count("SELECT") == 3 + (store_url.startswith("postgres"))  # + the key locks
    if store_url.startswith("postgres"):  # every write one statement too: a batch is a handful of round trips
        assert len(ran) == 8, ran  # offsets, locks, 2 reads, ids, insert, update, stream time
    assert len(await ids(store, limit=1000)) == 2 * n
    assert PERSISTENT.resolve_after > 100.0  # (so each of the batch's intervals extends its stored incident)


@pytest.mark.integration
async def test_an_ack_committed_while_a_batch_merges_is_kept(store: Store, store_url: str) -> None:
    if not store_url.startswith("postgres"):
        pytest.skip("PostgreSQL only: SQLite's batch holds the write lock from its first statement")
    stored = iv("persistent", 0.0, 10.0)
    await put(store, stored)
    ran: list[str] = []
    with psycopg.connect(store_url) as pg, pg.cursor() as cur:

        def run(op: Op) -> Any:
            ran.append(op.sql)
            cur.execute(op.sql, op.params)
            result = cur.fetchall() if op.rows else cur.rowcount
            if op.sql.startswith("SELECT id FROM incidents"):  # the batch has read the row, not written it yet
                with psycopg.connect(store_url, autocommit=True) as api:
                    api.execute(
                        "UPDATE incidents SET acked_at = 5, acked_by = 'bob', ack_comment = 'mine' WHERE id = %s",
                        (stored.id,),
                    )
            return result

        drive(commit_program(statements(POSTGRESQL), "g", Changes((iv("persistent", 50.0, 50.0),)), [], RULES), run)
    row = await store.get_incident(stored.id, 100.0)
    assert row is not None and (row.last_seen, row.count) == (50.0, 2)
    assert (row.acked_at, row.acked_by, row.ack_comment) == (5.0, "bob", "mine")
