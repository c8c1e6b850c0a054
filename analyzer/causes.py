"""Causes and symptoms: which incident explains which, derived at read time from the stored intervals.

A rule may declare what its incidents cause (``causes:`` in the catalogue). An incident S is a symptom of an
incident C when C's rule causes S's rule (by id, or by category: every rule of the category but C's own), they
are in the same cluster and in C's scope (mesh: the cluster; namespace: the same namespace; workload: the same
namespace and workload), and S's first occurrence falls inside C's interval widened by the slack on both
sides: ``C.first_seen - slack <= S.first_seen <= C.last_seen + slack``. Of several such causes the earliest
(first_seen, then id) is S's direct cause; following direct causes up gives the root, S's ``caused_by``.

Pure: a function of the set of intervals and the rules, never stored. The store folds intervals the same way
whatever the arrival order, batch cuts or partitioning, so the grouping is replay-invariant too (shown in
tests/test_causes.py). The catalogue refuses cycles (analyzer.catalogue.cause_problems), so a chain of
direct causes follows the rule graph and ends.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from analyzer.types import CauseScope, IncidentKey, Interval, Rule, Status


@dataclass(frozen=True, slots=True)
class Span:
    """What grouping reads of one incident."""

    id: str
    rule_id: str
    key: IncidentKey
    first_seen: float
    last_seen: float
    pods: tuple[str, ...] = ()

    @classmethod
    def of(cls, incident_id: str, interval: Interval) -> Span:
        return cls(incident_id, interval.rule_id, interval.key, interval.first_seen, interval.last_seen, interval.pods)


@dataclass(frozen=True, slots=True)
class Affected:
    """What a root's symptoms cover: incidents, distinct workloads and pods (namespace-qualified). Pods are a
    lower bound: an incident keeps a bounded list of them (incidents.MAX_PODS)."""

    incidents: int
    workloads: int
    pods: int


NOTHING = Affected(0, 0, 0)


@dataclass(frozen=True, slots=True)
class Grouping:
    parent: Mapping[str, str]  # symptom id -> its direct cause's id
    root: Mapping[str, str]  # symptom id -> the root of its chain (what the API calls caused_by)
    symptoms: Mapping[str, tuple[str, ...]]  # root id -> every symptom under it, by first_seen then id
    affected: Mapping[str, Affected]  # root id -> what its symptoms cover

    def caused_by(self, incident_id: str) -> str | None:
        return self.root.get(incident_id)

    def affected_of(self, incident_id: str) -> Affected:
        return self.affected.get(incident_id, NOTHING)


def _in_scope(scope: CauseScope, cause: IncidentKey, symptom: IncidentKey) -> bool:
    if cause.cluster != symptom.cluster:
        return False
    if scope is CauseScope.MESH:
        return True
    if cause.namespace != symptom.namespace:
        return False
    return scope is CauseScope.NAMESPACE or cause.workload == symptom.workload


def group(spans: Iterable[Span], rules: Mapping[str, Rule]) -> Grouping:
    """Direct causes, roots, symptoms and what each root affects, for this set of incidents.

    Depends only on the set (duplicates by id count once), not on its order."""
    by_id: dict[str, Span] = {}
    for s in spans:
        by_id.setdefault(s.id, s)
    # Cause incidents by (cluster, rule), and per symptom rule the cause rules that name it: most incidents are
    # no rule's target and cost one lookup.
    causes_of: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for s in by_id.values():
        rule = rules.get(s.rule_id)
        if rule is not None and rule.causes is not None:
            causes_of[(s.key.cluster, s.rule_id)].append(s)
    cause_rule_ids = sorted({rid for _, rid in causes_of})
    specs = {rid: spec for rid in cause_rule_ids if (spec := rules[rid].causes) is not None}
    index = {k: _Index.of(v, _slack(rules, k[1])) for k, v in causes_of.items()}
    targeted_by: dict[str, list[str]] = {}
    parent: dict[str, str] = {}
    for s in by_id.values():
        names = targeted_by.get(s.rule_id)
        if names is None:
            symptom_rule = rules.get(s.rule_id)
            category = symptom_rule.category.value if symptom_rule is not None else ""
            names = [
                rid
                for rid in cause_rule_ids
                if rid != s.rule_id and (c := rules[rid].causes) is not None and c.targets(s.rule_id, category)
            ]
            targeted_by[s.rule_id] = names
        if not names:
            continue
        # The earliest (first_seen, then id) cause in scope whose window, widened by its slack, holds s's start.
        best: Span | None = None
        for rid in names:
            spec = specs[rid]
            for cause in _near(index.get((s.key.cluster, rid)), s.first_seen):
                if not cause.first_seen - spec.slack <= s.first_seen <= cause.last_seen + spec.slack:
                    continue
                if not _in_scope(spec.scope, cause.key, s.key):
                    continue
                if best is None or (cause.first_seen, cause.id) < (best.first_seen, best.id):
                    best = cause
        if best is not None:
            parent[s.id] = best.id
    root: dict[str, str] = {}
    for sid in parent:
        top, seen = sid, {sid}
        while top in parent and parent[top] not in seen:  # the guard only matters for an unchecked catalogue
            top = parent[top]
            seen.add(top)
        root[sid] = top
    members: dict[str, list[Span]] = defaultdict(list)
    for sid, rid in root.items():
        members[rid].append(by_id[sid])
    symptoms: dict[str, tuple[str, ...]] = {}
    affected: dict[str, Affected] = {}
    for rid, group_spans in members.items():
        group_spans.sort(key=lambda s: (s.first_seen, s.id))
        symptoms[rid] = tuple(s.id for s in group_spans)
        affected[rid] = Affected(
            incidents=len(group_spans),
            workloads=len({(s.key.namespace, s.key.workload) for s in group_spans}),
            pods=len({(s.key.namespace, pod) for s in group_spans for pod in s.pods}),
        )
    return Grouping(parent, root, symptoms, affected)


@dataclass(frozen=True, slots=True)
class _Index:
    """One rule's cause incidents in one cluster, by first_seen: those whose window can hold a time are found
    by bisection (their first_seen lies within slack plus the longest interval before it)."""

    firsts: list[float]
    spans: list[Span]
    reach: float  # slack + the longest interval

    @classmethod
    def of(cls, spans: list[Span], slack: float) -> _Index:
        spans = sorted(spans, key=lambda c: (c.first_seen, c.id))
        longest = max((c.last_seen - c.first_seen for c in spans), default=0.0)
        return cls([c.first_seen for c in spans], spans, slack + longest)


def _slack(rules: Mapping[str, Rule], rule_id: str) -> float:
    causes = rules[rule_id].causes
    return causes.slack if causes is not None else 0.0


def _near(index: _Index | None, t: float) -> list[Span]:
    if index is None:
        return []
    lo = bisect.bisect_left(index.firsts, t - index.reach)
    hi = bisect.bisect_right(index.firsts, t + index.reach)
    return index.spans[lo:hi]


def group_status(own: Status, symptom_statuses: Iterable[Status]) -> Status:
    """A root's status: open when it or any of its symptoms is open (symptoms recurring past their window show
    the cause is no transient), else its own."""
    if own is Status.OPEN or any(s is Status.OPEN for s in symptom_statuses):
        return Status.OPEN
    return own


def max_slack(rules: Iterable[Rule]) -> float:
    return max((r.causes.slack for r in rules if r.causes is not None), default=0.0)


def cause_rules(rules: Mapping[str, Rule]) -> list[str]:
    """Ids of the rules that declare causes, sorted."""
    return sorted(rid for rid, r in rules.items() if r.causes is not None)
