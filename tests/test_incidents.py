"""Incident core: keys, the interval merge, derived status and stream time.

The order-, batch- and partition-invariance of the whole fold (pipeline + store, with acks and silences) is
shown end to end in tests/store/test_pipeline_store.py."""

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
