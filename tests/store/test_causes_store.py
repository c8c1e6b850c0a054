"""The read path of the cause grouping on both stores: the list query's rule set, a root's symptoms read from
its cluster inside its window, and the open-root counts (analyzer/store/causes.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from analyzer.catalogue import load_catalogue
from analyzer.store import IncidentQuery, Store
from analyzer.store.causes import CauseReader, RecentReads, open_roots
from analyzer.types import Changes, Evidence, IncidentKey, Interval, Status
from tests.conftest import PATTERNS

T0 = 1_700_000_000.0
RULES = load_catalogue(PATTERNS).by_id()


def iv(rule: str, first: float, last: float, *, cluster: str = "prod", ns: str = "shop", wl: str = "cart") -> Interval:
    pod = f"{wl}-6b746f74dc-9stvs"
    e = Evidence(T0 + first, f"{rule} line", pod, "istio-proxy")
    return Interval(rule, IncidentKey(cluster, ns, wl), T0 + first, T0 + last, 2, (e,), (e,), (pod,))


ROOT = iv("istiod-apiserver-unreachable", 0, 240, ns="istio-system", wl="istiod")
SYMPTOM = iv("proxy-not-ready", 30, 290)
LATE = iv("proxy-not-ready", 400, 500, wl="web")  # after the root's window (+2m): standalone
OTHER_CLUSTER = iv("proxy-not-ready", 30, 290, cluster="dev")


@pytest.fixture
async def filled(store: Store) -> Store:
    changes = Changes(merges=(ROOT, SYMPTOM, LATE, OTHER_CLUSTER), stream_time=T0 + 510)
    await store.commit_batch("g", changes, [], RULES)
    return store


async def test_the_list_query_takes_a_set_of_rules(filled: Store) -> None:
    query = IncidentQuery(rules=("istiod-apiserver-unreachable", "nope"), stream_time=T0 + 510)
    assert [r.id for r in (await filled.list_incidents(query)).items] == [ROOT.id]
    query = IncidentQuery(rules=("proxy-not-ready",), cluster="prod", stream_time=T0 + 510)
    assert {r.id for r in (await filled.list_incidents(query)).items} == {SYMPTOM.id, LATE.id}


async def test_a_root_reads_its_symptoms_from_its_window(filled: Store) -> None:
    (root,) = (await filled.list_incidents(IncidentQuery(rules=(ROOT.rule_id,), stream_time=T0 + 510))).items
    view = await CauseReader(filled, RULES, T0 + 510).view([root])
    assert [s.id for s in view.symptoms(ROOT.id)] == [SYMPTOM.id]
    assert view.affected(ROOT.id).pods == 1 and view.caused_by(SYMPTOM.id) == ROOT.id
    assert view.caused_by(LATE.id) is None and view.caused_by(OTHER_CLUSTER.id) is None
    # Suppressed on its own (4 minutes < its 5-minute window); open while its symptom is (quiet for less than
    # the symptom's 5-minute resolve_after).
    assert root.status is Status.SUPPRESSED and view.status(root) is Status.OPEN
    later = await CauseReader(filled, RULES, T0 + 600).view([root])
    assert later.status(root) is Status.SUPPRESSED


async def test_open_roots_on_both_stores(filled: Store) -> None:
    # At 300 s the symptom is open (recurring past its 2-minute window): so is its root's group, counted once
    # with the root's category and severity; the same trouble in another cluster stands alone.
    assert await open_roots(filled, RULES, T0 + 300) == [
        ("apiserver-connectivity", "high", 1),
        ("proxy-readiness", "medium", 1),
    ]


CHAIN_RULES = (
    "istiod-apiserver-unreachable",
    "istiod-ca-secret-failure",  # causes the signing errors, which cause the proxies' certificate trouble
    "istiod-csr-signing-error",
    "proxy-ca-unreachable",
    "proxy-not-ready",
    "access-upstream-no-healthy",
    "istiod-rbac-forbidden",  # causes nothing, caused by nothing
)


async def test_a_page_is_grouped_as_the_whole_store_is(store: Store) -> None:
    """The reader reads only the causes near a page (and up their chains): every page's caused_by and every
    root's affected must be what grouping all the store's incidents at once gives."""
    import random

    from analyzer.causes import Span, group

    rng = random.Random(20261129)
    chained = 0
    for scenario in range(12):
        clusters = (f"s{scenario}-a", f"s{scenario}-b")
        intervals = []
        for n in range(rng.randint(20, 70)):
            first = rng.uniform(0, 7200)
            intervals.append(
                iv(
                    rng.choices(CHAIN_RULES, weights=(1, 2, 3, 3, 3, 2, 1))[0],
                    first,
                    first + rng.choice((0, 30, 240, 1800, 5400)),
                    cluster=rng.choice(clusters),
                    ns=rng.choice(("shop", "pay", "istio-system")),
                    wl=f"w{n % 7}",
                )
            )
        at = T0 + 9000
        await store.commit_batch("g", Changes(merges=tuple(intervals), stream_time=at), [], RULES)
        rows = []
        for cluster in clusters:
            rows += (await store.list_incidents(IncidentQuery(cluster=cluster, limit=1000, stream_time=at))).items
        whole = group([Span(r.id, r.rule_id, r.key, r.first_seen, r.last_seen, r.pods) for r in rows], RULES)
        chained += sum(1 for sid, parent in whole.parent.items() if whole.root[sid] != parent)
        recent = RecentReads(ttl=3600.0)
        for cluster in clusters:
            cursor = None
            while True:
                page = await store.list_incidents(
                    IncidentQuery(cluster=cluster, limit=7, cursor=cursor, stream_time=at)
                )
                # alone, and sharing what it read with the pages before (as the API's requests do)
                for reader in (CauseReader(store, RULES, at), CauseReader(store, RULES, at, recent=recent)):
                    view = await reader.view(page.items)
                    for row in page.items:
                        assert view.caused_by(row.id) == whole.caused_by(row.id), (scenario, row.rule_id)
                        if row.id in whole.symptoms:
                            assert view.affected(row.id) == whole.affected_of(row.id), (scenario, row.rule_id)
                            assert set(whole.symptoms[row.id]) == {s.id for s in view.symptoms(row.id)}
                if (cursor := page.next_cursor) is None:
                    break
    assert chained > 0, "some symptoms' roots are causes of their causes"


async def test_recent_reads_keep_a_read_for_their_ttl_and_within_their_rows() -> None:
    clock = [0.0]
    recent = RecentReads(ttl=1.0, max_rows=5, clock=lambda: clock[0])
    reads: list[str] = []

    def reader(key: str, rows: int) -> Callable[[], Awaitable[list[int]]]:
        async def read() -> list[int]:
            reads.append(key)
            return list(range(rows))

        return read

    assert await recent.get("a", reader("a", 2), len) == [0, 1]
    await recent.get("a", reader("a", 2), len)
    assert reads == ["a"], "within the second: read once"
    clock[0] = 1.0
    await recent.get("a", reader("a", 2), len)
    assert reads == ["a", "a"], "a second later: read again"
    await recent.get("b", reader("b", 3), len)  # 2 + 3 rows: both kept
    await recent.get("c", reader("c", 1), len)  # 6 rows: the oldest ("a") goes
    await recent.get("b", reader("b", 3), len)
    await recent.get("a", reader("a", 2), len)
    assert reads == ["a", "a", "b", "c", "a"]
    await recent.get("big", reader("big", 6), len)
    await recent.get("big", reader("big", 6), len)
    assert reads[-2:] == ["big", "big"], "more rows than the bound: never kept"


async def test_recent_reads_survive_requests_that_interleave() -> None:
    """A read in flight while another request sweeps its expired key away (seen under load as a KeyError)."""
    import asyncio

    clock = [0.0]
    recent = RecentReads(ttl=1.0, clock=lambda: clock[0])
    release = asyncio.Event()

    async def slow() -> list[int]:
        await release.wait()
        return [1]

    async def quick() -> list[int]:
        return [2]

    await recent.get("other", quick, len)  # t=0: the next sweep is due at t=1
    clock[0] = 0.5
    await recent.get("k", quick, len)  # expires at 1.5
    clock[0] = 1.0
    await recent.get("other", quick, len)  # sweeps; the next sweep is due at t=2
    clock[0] = 1.6
    in_flight = asyncio.ensure_future(recent.get("k", slow, len))  # expired, not yet swept: read again
    await asyncio.sleep(0)
    clock[0] = 2.1
    assert await recent.get("other", quick, len) == [2]  # sweeps "k" away meanwhile
    release.set()
    assert await in_flight == [1]
    assert await recent.get("k", quick, len) == [1], "the fresh read is kept"


async def test_recent_reads_read_once_for_requests_that_come_together() -> None:
    """A second's requests all missing at once must not each read the same rows (the API stalled so)."""
    import asyncio

    recent = RecentReads(ttl=60.0)
    release = asyncio.Event()
    reads = 0

    async def slow() -> list[int]:
        nonlocal reads
        reads += 1
        await release.wait()
        return [reads]

    waiting = [asyncio.ensure_future(recent.get("k", slow, len)) for _ in range(20)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # a request that gives up (its client timed out) leaves the read to the others
    release.set()
    results = await asyncio.gather(*waiting[1:])
    assert reads == 1 and all(r == [1] for r in results)
    assert await recent.get("k", slow, len) == [1] and reads == 1, "kept"
