"""Incident core: keys, the interval merge, derived status, stream time and the live tracker."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.incidents import (
    EVIDENCE_LINES,
    MAX_EVIDENCE_CHARS,
    MAX_PODS,
    IncidentTracker,
    StreamClock,
    fold,
    key_for,
    merge,
    occurrence,
    singleton,
    status,
    status_of,
    workload_of,
)
from analyzer.types import (
    Category,
    Changes,
    Component,
    Evidence,
    Expression,
    IncidentKey,
    Interval,
    LogRecord,
    Occurrence,
    Rule,
    Scope,
    Severity,
    Status,
)

T0 = 1_700_000_000.0


def make_rule(
    rule_id: str = "r",
    *,
    component: Component = Component.ANY,
    transient: float | None = None,
    resolve_after: float = 600.0,
) -> Rule:
    return Rule(
        id=rule_id,
        title=rule_id,
        category=Category.APISERVER_CONNECTIVITY,
        component=component,
        severity=Severity.HIGH,
        expressions=(Expression("error"),),
        scope=Scope(),
        transient=transient,
        resolve_after=resolve_after,
        remediation={"en": "fix it"},
        references=(),
        examples_match=(),
        examples_no_match=(),
        source="test",
    )


class FakeWall:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


KEY_A = IncidentKey("c1", "ns", "a")
KEY_B = IncidentKey("c1", "ns", "b")


def occ(rule_id: str, key: IncidentKey, time: float, line: str = "err", pod: str | None = None) -> Occurrence:
    return Occurrence(rule_id, key, time, Evidence(time, line, pod, None))


def apply(store: dict[str, Interval], changes: Changes) -> None:
    assert not set(changes.deletes) & {u.id for u in changes.upserts}
    for d in changes.deletes:
        store.pop(d, None)
    for u in changes.upserts:
        store[u.id] = u


def _order(i: Interval) -> tuple[str, str, str, str, float]:
    return (i.rule_id, i.key.cluster, i.key.namespace, i.key.workload, i.first_seen)


# --- workloads and keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "workload"),
    [
        ("reviews-v3-56997446d9-bp6m5", "reviews-v3"),  # Deployment: ReplicaSet hash + pod suffix
        ("reviews-v1-3848839839-x7kqz", "reviews-v1"),  # old decimal ReplicaSet hash
        ("istiod-1-20-6c8d9f7b5-x2v4q", "istiod-1-20"),
        ("istio-cni-node-tf8bz", "istio-cni-node"),  # DaemonSet
        ("web-0", "web"),  # StatefulSet
        ("kafka-broker-12", "kafka-broker"),
        ("backup-28373740-bzq4v", "backup"),  # CronJob -> Job -> pod
        ("nginx", "nginx"),  # bare pod
        ("my-app", "my-app"),  # no generated suffix: "app" has vowels
        (None, "-"),
        ("", "-"),
    ],
)
def test_workload_from_pod_name(pod: str | None, workload: str) -> None:
    assert workload_of(pod, {}) == workload


def test_workload_labels_win_in_order() -> None:
    pod = "reviews-v3-56997446d9-bp6m5"
    labels = {
        "k8s-app": "d",
        "app": "c",
        "app.kubernetes.io/name": "b",
        "service.istio.io/canonical-name": "a",
    }
    assert workload_of(pod, labels) == "a"
    del labels["service.istio.io/canonical-name"]
    assert workload_of(pod, labels) == "b"
    del labels["app.kubernetes.io/name"]
    assert workload_of(pod, labels) == "c"
    del labels["app"]
    assert workload_of(pod, labels) == "d"
    assert workload_of(pod, {"app": ""}) == "reviews-v3"  # an empty label is no label


def test_key_for_defaults_and_istiod_revision() -> None:
    istiod = make_rule("i", component=Component.ISTIOD)
    proxy = make_rule("p", component=Component.ISTIO_PROXY)
    bare = LogRecord(b"x")
    assert key_for(proxy, bare, "dflt") == IncidentKey("dflt", "-", "-")

    rev = LogRecord(
        b"x",
        cluster="east",
        namespace="istio-system",
        pod="istiod-1-20-6c8d9f7b5-x2v4q",
        labels={"app": "istiod", "istio.io/rev": "1-20"},
    )
    assert key_for(istiod, rev, "dflt") == IncidentKey("east", "istio-system", "istiod-1-20")
    # Only istiod rules group by revision.
    assert key_for(proxy, rev, "dflt") == IncidentKey("east", "istio-system", "istiod")

    default_rev = LogRecord(
        b"x",
        namespace="istio-system",
        pod="istiod-7d4f9b8c6-q2w4z",
        labels={"app": "istiod", "istio.io/rev": "default"},
    )
    assert key_for(istiod, default_rev, "dflt") == IncidentKey("dflt", "istio-system", "istiod")
    unlabelled = LogRecord(b"x", namespace="istio-system", pod="istiod-7d4f9b8c6-q2w4z")
    assert key_for(istiod, unlabelled, "dflt").workload == "istiod"


def test_occurrence_time_and_evidence() -> None:
    rule = make_rule("r")
    rec = LogRecord(b"boom\n", time=T0, cluster="c", namespace="n", pod="web-0", container="app")
    o = occurrence(rule, rec, "d", fallback_time=T0 + 99)
    assert o.time == T0
    assert o.rule_id == "r"
    assert o.key == IncidentKey("c", "n", "web")
    assert o.evidence == Evidence(T0, "boom", "web-0", "app")

    untimed = occurrence(rule, LogRecord(b"boom"), "d", fallback_time=T0 + 99)
    assert untimed.time == T0 + 99
    assert untimed.evidence.time == T0 + 99

    long = occurrence(rule, LogRecord(b"x" * (MAX_EVIDENCE_CHARS * 3)), "d", fallback_time=T0)
    assert len(long.evidence.line) == MAX_EVIDENCE_CHARS
    assert long.evidence.line.startswith("xxx")

    invalid = occurrence(rule, LogRecord(b"bad \xff byte"), "d", fallback_time=T0)
    assert invalid.evidence.line == "bad \ufffd byte"


# --- merge and fold ----------------------------------------------------------------------------------

# Integer seconds over a short span: ties and gaps of exactly resolve_after are common.
times = st.integers(min_value=0, max_value=150).map(float)
evidence_st = st.builds(
    Evidence,
    time=times,
    line=st.sampled_from(["a", "b", "c"]),
    pod=st.one_of(st.none(), st.sampled_from(["", *(f"p{i:02d}" for i in range(MAX_PODS + 6))])),
    container=st.sampled_from([None, "app", "istio-proxy"]),
)


@st.composite
def occurrences_st(
    draw: st.DrawFn, keys: Sequence[IncidentKey] = (KEY_A,), rules: Sequence[str] = ("r",)
) -> Occurrence:
    ev = draw(evidence_st)
    return Occurrence(draw(st.sampled_from(rules)), draw(st.sampled_from(keys)), ev.time, ev)


def interval_of(occs: Iterable[Occurrence]) -> Interval:
    items = list(occs)
    out = singleton(items[0])
    for o in items[1:]:
        out = merge(out, singleton(o))
    return out


def reference_fold(occs: Sequence[Occurrence], resolve_after: dict[str, float]) -> list[Interval]:
    """Fold written out directly: per rule and key, split time-sorted occurrences at gaps > resolve_after."""

    def ev_order(e: Evidence) -> tuple[float, str, bool, str, bool, str]:
        return (e.time, e.line, e.pod is not None, e.pod or "", e.container is not None, e.container or "")

    out = []
    for (rule_id, key), group in itertools.groupby(
        sorted(occs, key=lambda o: _order(singleton(o))), key=lambda o: (o.rule_id, o.key)
    ):
        items = list(group)
        run: list[Occurrence] = []
        for o in [*items, None]:
            if run and (o is None or o.time - run[-1].time > resolve_after[rule_id]):
                evs = sorted((x.evidence for x in run), key=ev_order)
                out.append(
                    Interval(
                        rule_id,
                        key,
                        min(x.time for x in run),
                        max(x.time for x in run),
                        len(run),
                        tuple(evs[:EVIDENCE_LINES]),
                        tuple(evs[-EVIDENCE_LINES:]),
                        tuple(sorted({x.evidence.pod for x in run if x.evidence.pod})[:MAX_PODS]),
                    )
                )
                run = []
            if o is not None:
                run.append(o)
    return sorted(out, key=_order)


@settings(max_examples=200, deadline=None)
@given(st.lists(occurrences_st(), min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_merge_is_commutative_and_associative(occs: list[Occurrence], rnd: random.Random) -> None:
    singles = [singleton(o) for o in occs]
    left = singles[0]
    for s in singles[1:]:
        left = merge(left, s)
    shuffled = singles[:]
    rnd.shuffle(shuffled)
    # a random tree of merges over a shuffled order
    pool = shuffled
    while len(pool) > 1:
        i = rnd.randrange(len(pool) - 1)
        pool[i : i + 2] = [merge(pool[i + 1], pool[i]) if rnd.random() < 0.5 else merge(pool[i], pool[i + 1])]
    assert pool[0] == left
    assert left.count == len(occs)
    assert left.first_seen == min(o.time for o in occs)
    assert left.last_seen == max(o.time for o in occs)
    assert len(left.head) == min(EVIDENCE_LINES, len(occs))
    assert len(left.pods) <= MAX_PODS


@settings(max_examples=200, deadline=None)
@given(
    st.lists(occurrences_st(keys=(KEY_A, KEY_B)), min_size=0, max_size=60),
    st.sampled_from([0.0, 5.0, 20.0]),
    st.randoms(use_true_random=False),
)
def test_fold_matches_reference_in_any_order(occs: list[Occurrence], gap: float, rnd: random.Random) -> None:
    expected = reference_fold(occs, {"r": gap})
    singles = [singleton(o) for o in occs]
    rnd.shuffle(singles)
    assert fold(singles, gap) == expected
    # folding partial folds gives the same result
    half = len(singles) // 2
    assert fold([*fold(singles[:half], gap), *fold(singles[half:], gap)], gap) == expected


def test_merge_keeps_both_ends_of_the_evidence() -> None:
    occs = [occ("r", KEY_A, T0 + i, f"line {i:02d}", pod=f"p{i:02d}") for i in range(30)]
    i = interval_of(reversed(occs))
    assert [e.line for e in i.head] == [f"line {n:02d}" for n in range(EVIDENCE_LINES)]
    assert [e.line for e in i.tail] == [f"line {n:02d}" for n in range(30 - EVIDENCE_LINES, 30)]
    assert i.pods == tuple(f"p{n:02d}" for n in range(MAX_PODS))
    with pytest.raises(ValueError):
        merge(i, singleton(occ("r", KEY_B, T0)))


def test_merge_orders_evidence_that_differs_only_in_missing_metadata() -> None:
    variants = [Evidence(T0, "x", pod, container) for pod in (None, "") for container in (None, "")]
    singles = [singleton(Occurrence("r", KEY_A, T0, e)) for e in variants * 2]
    merged = {interval_of_intervals(order) for order in itertools.permutations(singles[:4])}
    assert len(merged) == 1
    (one,) = merged
    assert one.head == tuple(variants)  # missing sorts before empty
    assert interval_of_intervals(singles).head == tuple(sorted(variants * 2, key=variants.index))[:EVIDENCE_LINES]


def interval_of_intervals(intervals: Iterable[Interval]) -> Interval:
    items = list(intervals)
    out = items[0]
    for i in items[1:]:
        out = merge(out, i)
    return out


def test_fold_merges_at_exactly_resolve_after_and_not_beyond() -> None:
    a, b, c = (singleton(occ("r", KEY_A, t)) for t in (T0, T0 + 10, T0 + 20.5))
    assert [(i.first_seen, i.last_seen, i.count) for i in fold([c, a, b], 10)] == [
        (T0, T0 + 10, 2),
        (T0 + 20.5, T0 + 20.5, 1),
    ]


# --- status ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "last", "transient", "now", "expected"),
    [
        # no window: open until quiet for resolve_after (100)
        (0, 10, None, 50, Status.OPEN),
        (0, 10, None, 109.9, Status.OPEN),
        (0, 10, None, 110, Status.RESOLVED),
        # with a window of 30: young and recurring
        (0, 10, 30, 20, Status.PENDING),
        # stopped within the window: a transient
        (0, 10, 30, 30, Status.SUPPRESSED),
        (0, 10, 30, 500, Status.SUPPRESSED),
        # young but already quiet for resolve_after (possible when resolve_after < transient)
        (0, 10, 300, 111, Status.SUPPRESSED),
        # recurred for the whole window: escalated
        (0, 30, 30, 31, Status.OPEN),
        (0, 30, 30, 129.9, Status.OPEN),
        (0, 30, 30, 130, Status.RESOLVED),
    ],
)
def test_status_table(first: float, last: float, transient: float | None, now: float, expected: Status) -> None:
    assert status_of(first, last, transient, 100, now) is expected
    rule = make_rule(transient=transient, resolve_after=100)
    interval = Interval("r", KEY_A, first, last, 2, (), ())
    assert status(interval, rule, now) is expected


# --- stream clock ------------------------------------------------------------------------------------


def test_stream_clock_follows_event_time_during_replay_and_the_wall_when_quiet() -> None:
    wall = FakeWall(T0)
    clock = StreamClock(wall, allowed_lateness=30)
    assert clock.now() == T0 - 30  # nothing seen yet

    # replay of day-old data: records keep arriving, stream time is event time
    for step in range(10):
        wall.now = T0 + step
        clock.observe(T0 - 86_400 + step * 60)
        assert clock.now() == T0 - 86_400 + step * 60 - 30
    # an older record does not move the watermark back
    clock.observe(T0 - 90_000)
    assert clock.now() == T0 - 86_400 + 540 - 30

    # quiet: advances with the wall from the last observation ...
    wall.now += 100
    assert clock.now() == T0 - 86_400 + 540 - 30 + 100
    # ... but never past wall - lateness (here the events ran 100s ahead of this wall clock)
    live = StreamClock(wall, allowed_lateness=30)
    start = wall.now
    live.observe(start + 100)
    wall.now = start + 50
    assert live.now() == start + 70
    wall.now = start + 1000
    assert live.now() == wall.now - 30


def test_stream_clock_clamps_far_future_event_times() -> None:
    wall = FakeWall(T0)
    clock = StreamClock(wall, allowed_lateness=30)
    clock.observe(T0 + 86_400 * 365)
    assert clock.now() == T0 - 30
    clock.observe(T0 + 200)  # a little ahead (skew) is believed
    assert clock.now() == T0 + 170
    clock.observe(float("nan"))
    assert clock.now() == T0 + 170


# --- the tracker -------------------------------------------------------------------------------------


def tracker_for(rules: Iterable[Rule], wall: FakeWall, lateness: float = 30.0, **kw: int) -> IncidentTracker:
    return IncidentTracker({r.id: r for r in rules}, StreamClock(wall, lateness), **kw)


def test_tracker_merges_and_bridges_with_deletes_for_replaced_ids() -> None:
    wall = FakeWall(T0 + 1000)
    t = tracker_for([make_rule("r", resolve_after=10)], wall)
    store: dict[str, Interval] = {}

    t.add([occ("r", KEY_A, T0 + 100), occ("r", KEY_A, T0 + 105)])
    ch = t.changes()
    assert ch.deletes == ()
    (first,) = ch.upserts
    assert (first.first_seen, first.last_seen, first.count) == (T0 + 100, T0 + 105, 2)
    apply(store, ch)

    t.add([occ("r", KEY_A, T0 + 130)])  # separate interval
    apply(store, t.changes())
    assert len(store) == 2

    t.add([occ("r", KEY_A, T0 + 114)])  # extends the first: same first_seen, same id
    ch = t.changes()
    assert ch.deletes == ()
    assert [u.id for u in ch.upserts] == [first.id]
    apply(store, ch)

    t.add([occ("r", KEY_A, T0 + 122)])  # bridges both: the later one's id is replaced
    ch = t.changes()
    later = next(i for i in store.values() if i.first_seen == T0 + 130)
    assert ch.deletes == (later.id,)
    apply(store, ch)

    t.add([occ("r", KEY_A, T0 + 95)])  # earlier first_seen: a new id replaces the old
    ch = t.changes()
    assert ch.deletes == (first.id,)
    apply(store, ch)
    (final,) = store.values()
    assert (final.first_seen, final.last_seen, final.count) == (T0 + 95, T0 + 130, 6)
    assert t.live_count() == 1
    assert t.changes() == Changes((), (), t.stream_time)


def test_tracker_batch_folds_at_exactly_resolve_after_and_keeps_both_ends() -> None:
    t = tracker_for([make_rule("r", resolve_after=10)], FakeWall(T0 + 1000))
    batch = [occ("r", KEY_A, T0 + 10 * n, f"line {n}") for n in range(8)] + [occ("r", KEY_A, T0 + 80.5, "late")]
    t.add(reversed(batch))
    first, second = t.changes().upserts
    assert (first.first_seen, first.last_seen, first.count) == (T0, T0 + 70, 8)
    assert [e.line for e in first.head] == [f"line {n}" for n in range(5)]
    assert [e.line for e in first.tail] == [f"line {n}" for n in range(3, 8)]
    assert (second.first_seen, second.count) == (T0 + 80.5, 1)
    t.add([occ("r", KEY_A, T0 + 90.5)])  # exactly resolve_after after the second, across batches
    (extended,) = t.changes().upserts
    assert (extended.id, extended.count) == (second.id, 2)
    t.add([occ("r", KEY_A, T0 + 100.6)])
    assert [u.count for u in t.changes().upserts] == [1]


def test_tracker_stream_time_follows_the_latest_event_of_a_batch() -> None:
    t = tracker_for([make_rule("r")], FakeWall(T0 + 1000), lateness=30)
    t.add([occ("r", KEY_A, T0 + 50), occ("r", KEY_A, T0 + 90), occ("r", KEY_A, T0 + 10)])
    assert t.stream_time == T0 + 60
    assert t.changes().stream_time == T0 + 60


def test_tracker_late_data_after_eviction_keeps_every_count() -> None:
    wall = FakeWall(T0 + 100)
    t = tracker_for([make_rule("r", resolve_after=10)], wall, lateness=30)
    t.add([occ("r", KEY_A, T0 + 5)])
    t.add([occ("r", KEY_A, T0)])  # replaces the interval starting at T0+5 with one starting at T0
    wall.now = T0 + 1000  # quiet: stream time moves on and the interval settles
    assert t.evict() == 1
    t.add([occ("r", KEY_A, T0 + 5)])  # far too late: a new interval, with the id deleted above
    store: dict[str, Interval] = {}
    apply(store, t.changes())
    assert sorted((i.first_seen, i.count) for i in store.values()) == [(T0, 2), (T0 + 5, 1)]


def test_tracker_rejects_unknown_rules() -> None:
    t = tracker_for([make_rule("r")], FakeWall(T0))
    with pytest.raises(KeyError):
        t.add([occ("nope", KEY_A, T0)])


def test_tracker_overflow_key_caps_memory_and_counts() -> None:
    t = tracker_for([make_rule("r"), make_rule("s")], FakeWall(T0), max_keys_per_rule=2)
    keys = [IncidentKey("c1", "ns", f"w{i}") for i in range(5)]
    t.add([occ("r", k, T0) for k in keys] + [occ("r", keys[0], T0 + 1), occ("s", keys[4], T0)])
    by_key = {(u.rule_id, u.key): u for u in t.changes().upserts}
    overflow = IncidentKey("c1", "-", "(overflow)")
    assert set(by_key) == {("r", keys[0]), ("r", keys[1]), ("r", overflow), ("s", keys[4])}
    assert by_key["r", overflow].count == 3
    assert by_key["r", keys[0]].count == 2
    assert t.overflowed == {"r": 3}
    assert sum(u.count for u in by_key.values()) == 7  # nothing dropped


def test_tracker_restore_then_continue() -> None:
    wall = FakeWall(T0 + 10_000)
    rules = [make_rule("r", resolve_after=10)]
    before = tracker_for(rules, wall)
    before.add([occ("r", KEY_A, T0), occ("r", KEY_A, T0 + 5), occ("r", KEY_A, T0 + 22)])
    stored = {i.id: i for i in before.changes().upserts}

    after = tracker_for(rules, wall)
    unknown = Interval("gone", KEY_A, T0, T0, 1, (), ())
    after.restore([*stored.values(), unknown])
    assert after.live_count() == 2
    assert after.changes().upserts == ()  # restoring changes nothing by itself
    # the clock resumes from the restored data, not from the wall: evicting now keeps what a replay extends
    assert after.stream_time == T0 + 22 - 30
    assert after.evict() == 0

    after.add([occ("r", KEY_A, T0 + 14)])  # bridges the two restored intervals
    ch = after.changes()
    apply(stored, ch)
    (merged,) = stored.values()
    assert merged.count == 4
    assert (merged.first_seen, merged.last_seen) == (T0, T0 + 22)


def test_tracker_restore_merges_touching_intervals_and_reports_it() -> None:
    t = tracker_for([make_rule("r", resolve_after=10)], FakeWall(T0))
    a = singleton(occ("r", KEY_A, T0))
    b = singleton(occ("r", KEY_A, T0 + 8))
    t.restore([a, b, a])  # a twice: already live, not double counted
    ch = t.changes()
    assert ch.deletes == (b.id,)
    assert [(u.id, u.count) for u in ch.upserts] == [(a.id, 2)]


# --- the seed scenario: istiod cannot reach the API server -----------------------------------------


SEED = make_rule("istiod-apiserver-unreachable", component=Component.ISTIOD, transient=300, resolve_after=600)
ISTIOD = IncidentKey("c1", "istio-system", "istiod")


def live_feed(times: Sequence[float]) -> tuple[IncidentTracker, FakeWall, list[tuple[float, Status]]]:
    """Feed each error as it happens (wall = event time) and note the status seen after each one."""
    wall = FakeWall(times[0])
    tracker = tracker_for([SEED], wall)
    seen = []
    for time in times:
        wall.now = time
        tracker.add([occ(SEED.id, ISTIOD, time, "Failed to watch: connect: connection refused")])
        (interval,) = tracker.live_intervals()
        seen.append((time, status(interval, SEED, tracker.stream_time)))
    return tracker, wall, seen


def status_at(tracker: IncidentTracker, wall: FakeWall, at: float) -> Status:
    wall.now = at
    (interval,) = tracker.live_intervals()
    return status(interval, SEED, tracker.stream_time)


def test_seed_burst_during_apiserver_restart_is_suppressed() -> None:
    burst = [T0 + s for s in range(0, 61, 5)]
    tracker, wall, seen = live_feed(burst)
    assert {s for _, s in seen} == {Status.PENDING}
    assert status_at(tracker, wall, T0 + 200) is Status.PENDING  # stream time T0+170: inside the window
    assert status_at(tracker, wall, T0 + 331) is Status.SUPPRESSED  # window over, it had stopped
    assert status_at(tracker, wall, T0 + 600) is Status.SUPPRESSED
    assert tracker.evict() == 0  # not settled yet: it could still come back and escalate
    wall.now = T0 + 60 + 600 + 30  # quiet for resolve_after at stream time
    (interval,) = tracker.live_intervals()
    assert status(interval, SEED, tracker.stream_time) is Status.SUPPRESSED  # settled, never alerted
    assert tracker.evict() == 1
    assert tracker.live_count() == 0
    (final,) = tracker.changes().upserts
    assert final.count == len(burst)
    assert status(final, SEED, tracker.stream_time + 86_400) is Status.SUPPRESSED


def test_seed_recurring_errors_escalate_then_resolve() -> None:
    recurring = [T0 + s for s in range(0, 8 * 60 + 1, 20)]
    tracker, wall, seen = live_feed(recurring)
    assert [t for t, s in seen if s is Status.PENDING] == [t for t in recurring if t - T0 < 300]
    assert [t for t, s in seen if s is Status.OPEN] == [t for t in recurring if t - T0 >= 300]
    last = recurring[-1]
    assert status_at(tracker, wall, last + 600) is Status.OPEN  # stream time last + 570
    assert tracker.evict() == 0
    assert status_at(tracker, wall, last + 630) is Status.RESOLVED
    assert tracker.evict() == 1
    (final,) = tracker.changes().upserts
    assert final.count == len(recurring)
    assert (final.first_seen, final.last_seen) == (T0, last)


# --- the property: same occurrences, any order, any batches, any partitioning -> same incidents ----

RULES = (make_rule("r", resolve_after=10), make_rule("q", transient=15, resolve_after=25))
KEYS = (KEY_A, KEY_B, IncidentKey("c2", "ns", "a"))


def run_trackers(
    batches: Sequence[Sequence[Occurrence]], partitions: int, evict: bool, lateness: float, flush_every: int = 1
) -> list[Interval]:
    """Feed batches to trackers (keys partitioned over them), applying their changes to one store."""
    wall = FakeWall(T0 + 1_000_000)  # fixed: stream time is the watermark
    trackers = [tracker_for(RULES, wall, lateness) for _ in range(partitions)]
    store: dict[str, Interval] = {}
    for number, batch in enumerate(batches, start=1):
        for n, tracker in enumerate(trackers):
            tracker.add([o for o in batch if KEYS.index(o.key) % partitions == n])
            if evict:
                tracker.evict()
            if number % flush_every == 0:
                apply(store, tracker.changes())
    for tracker in trackers:
        apply(store, tracker.changes())
    return sorted(store.values(), key=_order)


def split(items: list[Occurrence], cuts: list[int]) -> list[list[Occurrence]]:
    bounds = sorted({c % (len(items) + 1) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def timed_occurrences(draw: st.DrawFn) -> Occurrence:
    ev = draw(evidence_st)
    # denser than ``times``: long runs within one batch, gaps of exactly 10 and 25 often
    ev = Evidence(T0 + ev.time % 80, ev.line, ev.pod, ev.container)
    return Occurrence(draw(st.sampled_from([r.id for r in RULES])), draw(st.sampled_from(KEYS)), ev.time, ev)


def expected_incidents(occs: Sequence[Occurrence]) -> list[Interval]:
    singles = [singleton(o) for o in occs]
    out = [i for r in RULES for i in fold([s for s in singles if s.rule_id == r.id], r.resolve_after)]
    expected = sorted(out, key=_order)
    assert expected == reference_fold(occs, {r.id: r.resolve_after for r in RULES})
    return expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(timed_occurrences(), min_size=1, max_size=60),
    st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    st.sampled_from([1, 2]),
    st.sampled_from([1, 2, 3]),
    st.randoms(use_true_random=False),
)
def test_any_order_batches_and_partitioning_give_the_same_incidents(
    occs: list[Occurrence], cuts: list[int], partitions: int, flush_every: int, rnd: random.Random
) -> None:
    arrival = occs[:]
    rnd.shuffle(arrival)
    got = run_trackers(split(arrival, cuts), partitions, evict=False, lateness=30, flush_every=flush_every)
    assert got == expected_incidents(occs)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(timed_occurrences(), st.floats(min_value=0, max_value=29.5)), min_size=1, max_size=60),
    st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    st.sampled_from([1, 2]),
    st.sampled_from([1, 2]),
)
def test_eviction_is_safe_for_data_within_the_allowed_lateness(
    jittered: list[tuple[Occurrence, float]], cuts: list[int], partitions: int, flush_every: int
) -> None:
    # Arrival out of order by less than the allowed lateness (30s), evicting after every batch.
    arrival = [o for o, _ in sorted(jittered, key=lambda p: p[0].time + p[1])]
    got = run_trackers(split(arrival, cuts), partitions, evict=True, lateness=30, flush_every=flush_every)
    assert got == expected_incidents(arrival)


def test_eviction_happens_and_late_data_beyond_lateness_starts_a_new_interval() -> None:
    # The documented limit, shown so nobody mistakes it for the property above.
    occs = [occ("r", KEY_A, T0), occ("r", KEY_A, T0 + 100), occ("r", KEY_A, T0 + 5)]
    got = run_trackers([[o] for o in occs], 1, evict=True, lateness=30)
    assert [(i.first_seen, i.count) for i in got] == [(T0, 1), (T0 + 5, 1), (T0 + 100, 1)]
    assert expected_incidents(occs) != got
