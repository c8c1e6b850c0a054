"""The one fold, end to end: raw records -> Pipeline -> a real store (SQLite and PostgreSQL).

The properties the service relies on, shown on the path it runs: whatever the arrival order, the batch cuts
and the partitioning over consumers, the incidents in the store are the reference fold of the occurrences;
an incident keeps its id (an absorbed one resolves to its survivor), and acks and silences stay attached.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.correlation import SIGNALS
from analyzer.incidents import EVIDENCE_LINES, MAX_PODS, StreamClock
from analyzer.match import CompiledCatalogue, compile_catalogue
from analyzer.pipeline import Pipeline
from analyzer.store import IncidentQuery, IncidentRow, Silence, Store, open_store
from analyzer.types import (
    Catalogue,
    Category,
    Changes,
    Component,
    Evidence,
    Expression,
    IncidentKey,
    Interval,
    Rule,
    Scope,
    Severity,
    Status,
)
from tests.conftest import pg_schema

T0 = 1_700_000_000.0
NAMESPACE = "shop"


def make_rule(rule_id: str, literal: str, *, transient: float | None, resolve_after: float) -> Rule:
    return Rule(
        id=rule_id,
        title=rule_id,
        category=Category.UPSTREAM_ERRORS,
        component=Component.ANY,
        severity=Severity.HIGH,
        expressions=(Expression(literal),),
        scope=Scope(),
        transient=transient,
        resolve_after=resolve_after,
        remediation={"en": "fix it"},
        references=(),
        examples_match=(),
        examples_no_match=(),
        source="test",
    )


RULES = (
    make_rule("r", "ERRALPHA-FAILED", transient=None, resolve_after=10),
    make_rule("q", "ERRBRAVO-FAILED", transient=15, resolve_after=25),
)
LITERAL = {r.id: r.expressions[0].pattern for r in RULES}
RESOLVE = {r.id: r.resolve_after for r in RULES}
WORKLOADS = ("cart", "pay", "web")
CATALOGUE = Catalogue(RULES, digest="pipeline-store-" + "-".join(LITERAL.values()))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> CompiledCatalogue:
    return compile_catalogue(CATALOGUE, SIGNALS, cache_dir=tmp_path_factory.mktemp("hs"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store_kind(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: a fresh in-memory SQLite store per example; else one PostgreSQL schema for the test, each example
    in a cluster of its own."""
    if request.param == "sqlite":
        yield None
        return
    with pg_schema(request.getfixturevalue("pg_dsn")) as url:
        yield url


@dataclass(frozen=True)
class Occ:
    rule: str
    workload: str
    time: float
    line: str
    pod: str | None


def record(o: Occ, cluster: str) -> bytes:
    kubernetes: dict[str, object] = {"namespace_name": NAMESPACE, "container_name": "app"}
    if o.pod is not None:
        kubernetes["pod_name"] = o.pod
    # A label names the workload, so the key does not depend on the pod name the test draws.
    kubernetes["labels"] = {"app": o.workload}
    value = {"log": f"{LITERAL[o.rule]} {o.line}", "@timestamp": o.time, "cluster_name": cluster}
    return orjson.dumps({**value, "kubernetes": kubernetes})


def reference(occs: Sequence[Occ], cluster: str) -> list[Interval]:
    """The fold written out: per rule and key, time-sorted occurrences split at gaps > resolve_after."""

    def ev(o: Occ) -> Evidence:
        return Evidence(o.time, f"{LITERAL[o.rule]} {o.line}", o.pod, "app")

    def order(e: Evidence) -> tuple[float, str, bool, str, bool, str]:
        return (e.time, e.line, e.pod is not None, e.pod or "", e.container is not None, e.container or "")

    out = []
    for (rule, workload), group in itertools.groupby(
        sorted(occs, key=lambda o: (o.rule, o.workload, o.time)), key=lambda o: (o.rule, o.workload)
    ):
        items = list(group)
        run: list[Occ] = []
        for o in [*items, None]:
            if run and (o is None or o.time - run[-1].time > RESOLVE[rule]):
                evs = sorted((ev(x) for x in run), key=order)
                pods = sorted({x.pod for x in run if x.pod})[:MAX_PODS]
                key = IncidentKey(cluster, NAMESPACE, workload)
                first, last = run[0].time, run[-1].time
                out.append(
                    Interval(
                        rule,
                        key,
                        first,
                        last,
                        len(run),
                        tuple(evs[:EVIDENCE_LINES]),
                        tuple(evs[-EVIDENCE_LINES:]),
                        tuple(pods),
                    )
                )
                run = []
            if o is not None:
                run.append(o)
    return sorted(out, key=_order)


def _order(i: Interval) -> tuple[str, str, float]:
    return (i.rule_id, i.key.workload, i.first_seen)


occurrences = st.builds(
    Occ,
    rule=st.sampled_from([r.id for r in RULES]),
    workload=st.sampled_from(WORKLOADS),
    # Integer seconds over a short span: ties and gaps of exactly resolve_after (10, 25) are common.
    time=st.integers(min_value=0, max_value=120).map(lambda s: T0 + s),
    line=st.sampled_from(["a", "b", "c"]),
    pod=st.one_of(st.none(), st.sampled_from([f"p{i:02d}" for i in range(MAX_PODS + 4)])),
)


def split(items: list[Occ], cuts: Sequence[int]) -> list[list[Occ]]:
    bounds = sorted({c % (len(items) + 1) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


async def open_example(url: str | None) -> Store:
    store = open_store(url or "sqlite:///:memory:")
    await store.open()
    return store


async def stored(store: Store, cluster: str) -> list[IncidentRow]:
    page = await store.list_incidents(IncidentQuery(stream_time=T0 + 1000, cluster=cluster, limit=1000))
    rows = []
    for item in page.items:
        row = await store.get_incident(item.id, T0 + 1000, now=0.0)
        assert row is not None
        rows.append(row)
    return sorted(rows, key=lambda r: _order(r.interval))


@dataclass
class Known:
    """An incident as it was when the test looked (and maybe acked it)."""

    id: str
    rule: str
    workload: str
    first: float
    last: float
    acked: bool


async def feed(
    store: Store,
    compiled: CompiledCatalogue,
    batches: Sequence[Sequence[Occ]],
    partitions: int,
    cluster: str,
    ack_share: float,
    rnd: random.Random,
    ack_after: Collection[int] | None = None,
) -> list[Known]:
    """Each partition (keys spread by workload) is a consumer with its own pipeline, writing to one store.
    After each batch (or those in ``ack_after``) the test notes every stored incident and acks a share of the
    unacked ones (by a name carrying the id), so later merges meet acked and unacked incidents on both sides."""
    pipelines = [Pipeline(CATALOGUE, compiled, default_cluster="unused") for _ in range(partitions)]
    rules = CATALOGUE.by_id()
    known: list[Known] = []
    for number, batch in enumerate(batches):
        for n, pipeline in enumerate(pipelines):
            mine = [o for o in batch if WORKLOADS.index(o.workload) % partitions == n]
            result = pipeline([record(o, cluster) for o in mine], [T0] * len(mine))
            assert sum(result.matches.values()) == len(mine) and not result.rejected
            await store.commit_batch(f"g{n}", Changes(tuple(result.intervals), T0), [], rules)
        if ack_share and (ack_after is None or number in ack_after):
            for row in await stored(store, cluster):
                ack = row.acked_by is None and rnd.random() < ack_share
                if ack:
                    assert await store.ack(row.id, f"by-{row.id}", 1.0, f"comment-{row.id}")
                known.append(Known(row.id, row.rule_id, row.key.workload, row.first_seen, row.last_seen, ack))
    return known


async def check(store: Store, occs: Sequence[Occ], cluster: str, known: Sequence[Known]) -> None:
    expected = reference(occs, cluster)
    rows = await stored(store, cluster)
    assert [r.interval for r in rows] == expected
    for row in rows:
        inside = [k for k in known if (k.rule, k.workload) == (row.rule_id, row.key.workload)]
        inside = [k for k in inside if row.first_seen <= k.first and k.last <= row.last_seen]
        # The older id survives: the earliest-starting incident it absorbed, or one that started earlier still.
        if inside:
            oldest = min(inside, key=lambda k: k.first)
            if any(k.id == row.id for k in inside):
                assert row.id == oldest.id
            else:
                assert row.first_seen < oldest.first
        # Acked iff it holds an incident that was acked; the ack (and its comment) is one of those.
        acked = [k for k in inside if k.acked]
        assert (row.acked_by is not None) == bool(acked)
        if acked:
            assert row.acked_by in {f"by-{k.id}" for k in acked}
            assert row.ack_comment == "comment-" + row.acked_by.removeprefix("by-")
        # Silences match by key: a silence on "cart" silences every cart incident, and only those.
        assert row.silenced == (row.key.workload == "cart")
    # Every id ever handed out still resolves, to the incident that now holds its occurrences.
    for a in known:
        row = await store.get_incident(a.id, T0 + 1000)
        assert row is not None
        assert (row.rule_id, row.key.workload) == (a.rule, a.workload)
        assert row.first_seen <= a.first and a.last <= row.last_seen


async def run_example(
    url: str | None,
    compiled: CompiledCatalogue,
    occs: list[Occ],
    cuts: list[int],
    partitions: int,
    ack_share: float,
    rnd: random.Random,
) -> None:
    cluster = f"c-{uuid.uuid4().hex[:10]}"
    arrival = occs[:]
    rnd.shuffle(arrival)
    store = await open_example(url)
    try:
        await store.add_silence(Silence("", None, cluster, NAMESPACE, "cart", 9e9, "test", "cart is known"))
        known = await feed(store, compiled, split(arrival, cuts), partitions, cluster, ack_share, rnd)
        await check(store, occs, cluster, known)
    finally:
        await store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(occurrences, min_size=8, max_size=60),
    st.lists(st.integers(min_value=0, max_value=60), min_size=2, max_size=10),
    st.sampled_from([1, 2, 3]),
    st.sampled_from([0.0, 0.3, 0.6]),
    st.randoms(use_true_random=False),
)
def test_any_order_batches_and_partitioning_give_the_same_incidents_acks_and_ids(
    store_kind: str | None,
    compiled: CompiledCatalogue,
    occs: list[Occ],
    cuts: list[int],
    partitions: int,
    ack_share: float,
    rnd: random.Random,
) -> None:
    asyncio.run(run_example(store_kind, compiled, occs, cuts, partitions, ack_share, rnd))


@st.composite
def islands_then_bridges(draw: st.DrawFn) -> tuple[list[Occ], list[Occ]]:
    """Per key, separate runs (further apart than resolve_after) that arrive first, then lines in the gaps
    that arrive later and bridge some of them: the merges that absorb a stored incident into another."""
    first: list[Occ] = []
    later: list[Occ] = []
    for rule in RULES:
        for workload in draw(st.lists(st.sampled_from(WORKLOADS), min_size=1, max_size=3, unique=True)):
            gap = rule.resolve_after
            starts = [i * 3 * gap for i in range(draw(st.integers(min_value=2, max_value=4)))]
            for start in starts:
                first.append(Occ(rule.id, workload, T0 + start, "island", None))
            for left in starts[:-1]:
                if draw(st.booleans()):  # bridge this gap: two lines, each within resolve_after of the next
                    later.append(Occ(rule.id, workload, T0 + left + gap, "bridge", draw(st.sampled_from(["p1", None]))))
                    later.append(Occ(rule.id, workload, T0 + left + 2 * gap, "bridge", None))
    return first, later


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    islands_then_bridges(),
    st.sampled_from([1, 2, 3]),
    st.sampled_from([0.3, 0.6]),
    st.randoms(use_true_random=False),
)
def test_bridges_keep_the_older_id_and_every_ack(
    store_kind: str | None,
    compiled: CompiledCatalogue,
    scenario: tuple[list[Occ], list[Occ]],
    partitions: int,
    ack_share: float,
    rnd: random.Random,
) -> None:
    first, later = scenario
    rnd.shuffle(first)
    rnd.shuffle(later)

    async def run() -> None:
        cluster = f"c-{uuid.uuid4().hex[:10]}"
        store = await open_example(store_kind)
        try:
            await store.add_silence(Silence("", None, cluster, NAMESPACE, "cart", 9e9, "test", "cart is known"))
            batches = [first[: len(first) // 2], first[len(first) // 2 :], *([o] for o in later)]
            known = await feed(store, compiled, batches, partitions, cluster, ack_share, rnd, ack_after={1})
            await check(store, [*first, *later], cluster, known)
        finally:
            await store.close()

    asyncio.run(run())


async def test_late_data_merges_however_late_it_comes(compiled: CompiledCatalogue, tmp_path: Path) -> None:
    """No in-memory state decides a merge any more: a line days late still joins its incident."""
    store = await open_example(f"sqlite:///{tmp_path / 's.db'}")
    try:
        occs = [Occ("r", "cart", T0, "a", None), Occ("r", "cart", T0 + 10, "b", None)]
        cluster = "late"
        await feed(store, compiled, [[occs[1]]], 1, cluster, 1.0, random.Random(1))
        (first,) = await stored(store, cluster)
        pipeline = Pipeline(CATALOGUE, compiled, default_cluster="unused")
        pipeline.evict(T0 + 86_400 * 3)  # days pass: the pipeline forgets everything
        result = pipeline([record(occs[0], cluster)], [T0])
        await store.commit_batch("g0", Changes(tuple(result.intervals), T0 + 86_400 * 3), [], CATALOGUE.by_id())
        (row,) = await stored(store, cluster)
        assert row.id == first.id and row.acked_by == first.acked_by
        assert row.interval == reference(occs, cluster)[0]
    finally:
        await store.close()


# -- the seed scenario: istiod cannot reach the API server -------------------------------------------------

SEED = make_rule("istiod-apiserver-unreachable", "SEEDCONNECT-REFUSED", transient=300, resolve_after=600)
SEED_CATALOGUE = Catalogue((SEED,), digest="pipeline-store-seed")


class Wall:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def live_feed(
    store: Store, compiled: CompiledCatalogue, times: Sequence[float]
) -> tuple[StreamClock, Wall, list[Status]]:
    """Each error as it happens (wall = event time), through the pipeline into the store; the status the
    store derives after each one."""
    wall = Wall(times[0])
    clock = StreamClock(wall, allowed_lateness=30)
    pipeline = Pipeline(SEED_CATALOGUE, compiled, default_cluster="c1")
    seen = []
    for t in times:
        wall.now = t
        line = orjson.dumps({"log": "SEEDCONNECT-REFUSED Failed to watch", "@timestamp": t})
        result = pipeline([line], [t])
        if result.max_event_time is not None:
            clock.observe(result.max_event_time)
        await store.commit_batch("g", Changes(tuple(result.intervals), clock.now()), [], SEED_CATALOGUE.by_id())
        (row,) = (await store.list_incidents(IncidentQuery(stream_time=clock.now()))).items
        seen.append(row.status)
    return clock, wall, seen


async def status_at(store: Store, clock: StreamClock, wall: Wall, at: float) -> tuple[Status, int]:
    wall.now = at
    (row,) = (await store.list_incidents(IncidentQuery(stream_time=clock.now()))).items
    return row.status, row.count


@pytest.fixture(scope="module")
def seed_compiled(tmp_path_factory: pytest.TempPathFactory) -> CompiledCatalogue:
    return compile_catalogue(SEED_CATALOGUE, SIGNALS, cache_dir=tmp_path_factory.mktemp("hs-seed"))


async def test_seed_burst_during_apiserver_restart_is_suppressed(seed_compiled: CompiledCatalogue) -> None:
    store = await open_example(None)
    try:
        burst = [T0 + s for s in range(0, 61, 5)]
        clock, wall, seen = await live_feed(store, seed_compiled, burst)
        assert set(seen) == {Status.PENDING}
        assert await status_at(store, clock, wall, T0 + 200) == (Status.PENDING, len(burst))  # inside the window
        assert await status_at(store, clock, wall, T0 + 331) == (Status.SUPPRESSED, len(burst))  # it had stopped
        assert await status_at(store, clock, wall, T0 + 86_400) == (Status.SUPPRESSED, len(burst))  # never alerted
    finally:
        await store.close()


async def test_seed_recurring_errors_escalate_then_resolve(seed_compiled: CompiledCatalogue) -> None:
    store = await open_example(None)
    try:
        recurring = [T0 + s for s in range(0, 8 * 60 + 1, 20)]
        clock, wall, seen = await live_feed(store, seed_compiled, recurring)
        # Stream time trails event time by the allowed lateness (30 s).
        assert [t for t, s in zip(recurring, seen, strict=True) if s is Status.PENDING] == [
            t for t in recurring if t - T0 < 300
        ]
        assert [t for t, s in zip(recurring, seen, strict=True) if s is Status.OPEN] == [
            t for t in recurring if t - T0 >= 300
        ]
        last = recurring[-1]
        assert await status_at(store, clock, wall, last + 600) == (Status.OPEN, len(recurring))
        assert await status_at(store, clock, wall, last + 630) == (Status.RESOLVED, len(recurring))
    finally:
        await store.close()
