"""Causes and symptoms: the catalogue's `causes:` (targets, cycles, the shipped Istio graph) and the grouping
derived from intervals (analyzer/causes.py): windows, scopes, chains, tie-breaks, and invariance under arrival
order, batch cuts and partitioning."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.catalogue import load_catalogue
from analyzer.causes import Affected, Span, group, group_status
from analyzer.errors import CatalogueError
from analyzer.incidents import fold, singleton, status
from analyzer.types import (
    Category,
    Causes,
    CauseScope,
    Component,
    Evidence,
    Expression,
    IncidentKey,
    Interval,
    Occurrence,
    Rule,
    Scope,
    Severity,
    Status,
)
from tests.conftest import PATTERNS

T0 = 1_700_000_000.0

# -- the catalogue ----------------------------------------------------------------------------------------


def rule_yaml(rid: str, category: str, causes: str = "") -> str:
    text = (
        f"  - id: {rid}\n    title: t\n    category: {category}\n    component: any\n    severity: low\n"
        f"    match: '{rid} failed badly'\n    remediation: {{en: x, pt-BR: y}}\n"
        f"    examples: {{match: ['{rid} failed badly']}}\n"
    )
    return text + (f"    causes: {causes}\n" if causes else "")


def write(tmp_path: Path, *rules: str) -> Path:
    (tmp_path / "r.yaml").write_text("rules:\n" + "".join(rules))
    return tmp_path


def problems(tmp_path: Path) -> list[str]:
    with pytest.raises(CatalogueError) as info:
        load_catalogue(tmp_path)
    return [str(p) for p in info.value.problems]


def test_causes_are_parsed_with_scope_slack_and_targets(tmp_path: Path) -> None:
    write(
        tmp_path,
        rule_yaml(
            "cp-down",
            "apiserver-connectivity",
            "{categories: [xds-config], rules: [sym-b], scope: namespace, slack: 90s}",
        ),
        rule_yaml("sym-a", "xds-config"),
        rule_yaml("sym-b", "upstream-errors"),
    )
    catalogue = load_catalogue(tmp_path)
    causes = catalogue.by_id()["cp-down"].causes
    assert causes == Causes((Category.XDS_CONFIG,), ("sym-b",), CauseScope.NAMESPACE, 90.0)
    assert causes.targets("sym-a", "xds-config") and causes.targets("sym-b", "upstream-errors")
    assert not causes.targets("other", "upstream-errors")
    assert catalogue.by_id()["sym-a"].causes is None


def test_causes_change_the_digest_and_absent_causes_do_not(tmp_path: Path) -> None:
    write(tmp_path, rule_yaml("cp-down", "cni"), rule_yaml("sym-a", "xds-config"))
    plain = load_catalogue(tmp_path).digest
    write(tmp_path, rule_yaml("cp-down", "cni", "{rules: [sym-a], scope: mesh}"), rule_yaml("sym-a", "xds-config"))
    assert load_catalogue(tmp_path).digest != plain


@pytest.mark.parametrize(
    ("causes", "reason"),
    [
        ("{rules: [nope], scope: mesh}", "'causes.rules' names unknown rule 'nope'"),
        ("{categories: [dns], scope: mesh}", "'causes.categories' names unknown category 'dns'"),
        ("{categories: [unclassified], scope: mesh}", "'causes.categories' names unknown category 'unclassified'"),
        ("{rules: [sym-a], scope: node}", "'causes.scope' is 'node'; expected one of: mesh, namespace, workload"),
        ("{rules: [sym-a], scope: mesh, slack: soon}", "'causes.slack': not a duration"),
        ("{scope: mesh}", "'causes' needs at least one target"),
        ("{rules: [sym-a], scope: mesh, colour: red}", "unknown field(s) in 'causes': colour"),
        ("[sym-a]", "'causes' must be a mapping"),
        ("{rules: [cp-down], scope: mesh}", "'causes.rules' names the rule itself"),
    ],
)
def test_bad_causes_are_refused_with_file_rule_and_reason(tmp_path: Path, causes: str, reason: str) -> None:
    write(tmp_path, rule_yaml("cp-down", "cni", causes), rule_yaml("sym-a", "xds-config"))
    found = problems(tmp_path)
    assert any(p.startswith(f"{tmp_path / 'r.yaml'}: rule cp-down: ") and reason in p for p in found), found


def test_cycles_are_refused_by_rule_and_category(tmp_path: Path) -> None:
    write(
        tmp_path,
        rule_yaml("a-cause", "cni", "{rules: [b-cause], scope: mesh}"),
        rule_yaml("b-cause", "xds-config", "{categories: [certificates], scope: mesh}"),
        rule_yaml("c-cause", "certificates", "{categories: [cni], scope: mesh}"),
    )
    found = problems(tmp_path)
    assert found == [
        f"{tmp_path / 'r.yaml'}: rule a-cause: 'causes' makes a cycle: a-cause -> b-cause -> c-cause -> a-cause"
    ]


def test_a_category_target_leaves_out_the_declaring_rule(tmp_path: Path) -> None:
    # A CA failure (certificates) causing certificate symptoms is no cycle with itself...
    write(
        tmp_path,
        rule_yaml("ca-down", "certificates", "{categories: [certificates], scope: mesh}"),
        rule_yaml("sym-a", "certificates"),
    )
    load_catalogue(tmp_path)
    # ...but two such rules cause each other.
    write(
        tmp_path,
        rule_yaml("ca-down", "certificates", "{categories: [certificates], scope: mesh}"),
        rule_yaml("ca-other", "certificates", "{categories: [certificates], scope: mesh}"),
    )
    assert "'causes' makes a cycle: ca-down -> ca-other -> ca-down" in problems(tmp_path)[0]


def test_rules_check_refuses_a_cycle(tmp_path: Path) -> None:
    write(
        tmp_path,
        rule_yaml("a-cause", "cni", "{rules: [b-cause], scope: mesh}"),
        rule_yaml("b-cause", "xds-config", "{rules: [a-cause], scope: mesh}"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "analyzer", "rules", "check", "--patterns", str(tmp_path)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert b"rule a-cause: 'causes' makes a cycle: a-cause -> b-cause -> a-cause" in result.stderr


def test_the_shipped_catalogue_carries_the_istio_cause_graph() -> None:
    rules = load_catalogue(PATTERNS).by_id()

    def targets(cause: str, symptom: str) -> bool:
        c = rules[cause].causes
        return c is not None and c.targets(symptom, rules[symptom].category.value)

    # The control plane unreachable from the API server: config, readiness and 503 UH/UF symptoms, mesh-wide.
    apiserver = rules["istiod-apiserver-unreachable"].causes
    assert apiserver is not None and apiserver.scope is CauseScope.MESH
    for symptom in ("proxy-not-ready", "proxy-xds-stream-closed", "access-upstream-no-healthy",
                    "access-upstream-connect-failure", "proxy-istiod-unreachable"):  # fmt: skip
        assert targets("istiod-apiserver-unreachable", symptom), symptom
    # CA/signing failures -> certificate fetch failures, with a chain CA secret -> signing errors -> proxies.
    for cause in ("istiod-ca-secret-failure", "istiod-plugged-ca-invalid", "istiod-csr-signing-error"):
        assert targets(cause, "proxy-csr-rejected") and targets(cause, "proxy-ca-unreachable")
    assert targets("istiod-ca-secret-failure", "istiod-csr-signing-error")
    # The injection webhook down -> pods without sidecars.
    assert targets("istiod-webhook-endpoint-not-ready", "injection-webhook-unreachable")
    assert targets("injection-webhook-unreachable", "injection-sidecar-missing")
    # istio-cni down on a node -> sandbox and redirection failures.
    for cause in ("k8s-event-istio-cni-crashloop", "istio-cni-node-not-ready", "istio-cni-install-failed"):
        assert targets(cause, "k8s-event-pod-sandbox-istio-cni") and targets(cause, "istio-validation-redirect-missing")
    # Symptoms do not explain their cause.
    assert not targets("istiod-apiserver-unreachable", "istiod-apiserver-unreachable")
    assert rules["proxy-not-ready"].causes is None


# -- the grouping -----------------------------------------------------------------------------------------


def make_rule(rid: str, category: Category, causes: Causes | None = None, transient: float | None = None) -> Rule:
    return Rule(
        id=rid,
        title=rid,
        category=category,
        component=Component.ANY,
        severity=Severity.HIGH,
        expressions=(Expression(rid),),
        scope=Scope(),
        transient=transient,
        resolve_after=60.0,
        remediation={"en": "x"},
        references=(),
        examples_match=(),
        examples_no_match=(),
        source="test",
        causes=causes,
    )


RULES = {
    r.id: r
    for r in (
        make_rule(
            "cp", Category.APISERVER_CONNECTIVITY, Causes((Category.XDS_CONFIG,), ("ca",), CauseScope.MESH, 30.0), 100.0
        ),
        make_rule("ca", Category.CERTIFICATES, Causes((), ("cert",), CauseScope.NAMESPACE, 10.0)),
        make_rule("wl", Category.CNI, Causes((Category.PROXY_READINESS,), (), CauseScope.WORKLOAD, 5.0)),
        make_rule("xds", Category.XDS_CONFIG, transient=30.0),
        make_rule("cert", Category.CERTIFICATES),
        make_rule("ready", Category.PROXY_READINESS),
    )
}


def span(sid: str, rule: str, first: float, last: float, ns: str = "a", wl: str = "w", cluster: str = "c") -> Span:
    return Span(sid, rule, IncidentKey(cluster, ns, wl), T0 + first, T0 + last, (f"{wl}-pod",))


def test_a_symptom_inside_the_window_plus_slack_is_grouped_and_outside_is_not() -> None:
    spans = [
        span("cause", "cp", 100, 200),
        span("early", "xds", 70, 300, wl="e"),  # 30s before: the slack
        span("late", "xds", 230, 240, wl="l"),  # 30s after
        span("too-early", "xds", 69.9, 100, wl="x"),
        span("too-late", "xds", 230.1, 240, wl="y"),
        span("other-cluster", "xds", 150, 160, cluster="d"),
        span("not-a-target", "ready", 150, 160),
    ]
    g = group(spans, RULES)
    assert g.root == {"early": "cause", "late": "cause"}
    assert g.symptoms == {"cause": ("early", "late")}
    assert g.affected_of("cause") == Affected(incidents=2, workloads=2, pods=2)
    assert g.caused_by("cause") is None and g.affected_of("early") == Affected(0, 0, 0)


def test_scopes() -> None:
    spans = [
        span("ca1", "ca", 0, 100, ns="a"),
        span("cert-a", "cert", 50, 60, ns="a", wl="x"),
        span("cert-b", "cert", 50, 60, ns="b", wl="x"),
        span("wl1", "wl", 0, 100, ns="a", wl="w"),
        span("ready-w", "ready", 50, 60, ns="a", wl="w"),
        span("ready-v", "ready", 50, 60, ns="a", wl="v"),
    ]
    assert group(spans, RULES).root == {"cert-a": "ca1", "ready-w": "wl1"}


def test_chains_end_at_the_root_and_ties_break_on_first_seen_then_id() -> None:
    spans = [
        span("cp1", "cp", 0, 100),
        span("ca1", "ca", 20, 300),  # caused by cp1 (a target rule, inside its window)
        span("cert1", "cert", 250, 260, wl="p"),  # only ca1's window reaches it
        span("cp2", "cp", 0, 50),  # same first_seen as cp1: the id decides
        span("cpz", "cp", -10, 5),  # earlier still
        span("xds1", "xds", 40, 50, wl="q"),
    ]
    g = group(spans, RULES)
    assert g.parent["cert1"] == "ca1" and g.parent["ca1"] == "cpz"  # cpz started first
    assert g.root["cert1"] == "cpz"
    assert g.parent["xds1"] == "cp1"  # cpz's window ended at 35; cp1 and cp2 started together: the id decides
    # Incidents of one rule never explain each other.
    assert not {"cp1", "cp2", "cpz"} & set(g.root)
    assert g.symptoms == {"cpz": ("ca1", "cert1"), "cp1": ("xds1",)}


def test_a_root_with_an_open_symptom_is_open() -> None:
    assert group_status(Status.SUPPRESSED, [Status.PENDING, Status.OPEN]) is Status.OPEN
    assert group_status(Status.PENDING, [Status.RESOLVED]) is Status.PENDING
    assert group_status(Status.RESOLVED, []) is Status.RESOLVED


# -- invariance -------------------------------------------------------------------------------------------

CLUSTERS = ("c", "d")
NAMESPACES = ("a", "b")
WORKLOADS = ("w", "v")
RULE_IDS = sorted(RULES)


@st.composite
def occurrences(draw: st.DrawFn) -> list[Occurrence]:
    out = []
    for _ in range(draw(st.integers(1, 30))):
        rule = draw(st.sampled_from(RULE_IDS))
        key = IncidentKey(
            draw(st.sampled_from(CLUSTERS)), draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(WORKLOADS))
        )
        t = T0 + draw(st.integers(0, 600))
        pod = f"{key.workload}-{draw(st.integers(0, 3))}"
        out.append(Occurrence(rule, key, t, Evidence(t, f"{rule} line", pod, "istio-proxy")))
    return out


def grouping_of(occs: list[Occurrence], rnd: random.Random, parts: int, at: float) -> tuple[object, ...]:
    """Occurrences dealt to ``parts`` consumers in a random order, each folding its own batches, the store
    folding what they wrote: then grouped, the spans handed over in a random order."""
    shuffled = occs[:]
    rnd.shuffle(shuffled)
    consumers: list[list[Occurrence]] = [[] for _ in range(parts)]
    for o in shuffled:
        consumers[rnd.randrange(parts)].append(o)
    written = []
    for mine in consumers:
        start = 0
        while start < len(mine):
            cut = start + rnd.randint(1, 5)
            written.extend(fold((singleton(o) for o in mine[start:cut]), 60.0))
            start = cut
    stored = fold(written, 60.0)
    rnd.shuffle(stored)
    return summary(stored, at)


def summary(intervals: list[Interval], at: float) -> tuple[object, ...]:
    """The grouping of these intervals, and each root's group status at stream time ``at``."""
    g = group([Span.of(i.id, i) for i in intervals], RULES)
    by_id = {i.id: i for i in intervals}

    def own(iid: str) -> Status:
        return status(by_id[iid], RULES[by_id[iid].rule_id], at)

    statuses = {root: group_status(own(root), (own(s) for s in ids)) for root, ids in g.symptoms.items()}
    return (dict(sorted(g.parent.items())), dict(sorted(g.root.items())), dict(sorted(g.symptoms.items())),
            dict(sorted(g.affected.items())), dict(sorted(statuses.items())))  # fmt: skip


def reference_cause(symptom: Span, candidates: list[Span]) -> Span | None:
    """The definition by a plain scan (group() searches an index): the earliest (first_seen, then id) incident
    of a rule that targets the symptom's, in its cluster and scope, whose window widened by the slack holds
    the symptom's first occurrence."""
    category = RULES[symptom.rule_id].category.value
    best: Span | None = None
    for cause in candidates:
        causes = RULES[cause.rule_id].causes
        if causes is None or cause.rule_id == symptom.rule_id or not causes.targets(symptom.rule_id, category):
            continue
        same = [cause.key.cluster == symptom.key.cluster]
        if causes.scope is not CauseScope.MESH:
            same.append(cause.key.namespace == symptom.key.namespace)
        if causes.scope is CauseScope.WORKLOAD:
            same.append(cause.key.workload == symptom.key.workload)
        if not all(same) or not cause.first_seen - causes.slack <= symptom.first_seen <= cause.last_seen + causes.slack:
            continue
        if best is None or (cause.first_seen, cause.id) < (best.first_seen, best.id):
            best = cause
    return best


@settings(max_examples=200, deadline=None)
@given(occurrences(), st.randoms(use_true_random=False), st.integers(1, 4), st.integers(0, 800))
def test_grouping_is_independent_of_order_batches_and_partitioning(
    occs: list[Occurrence], rnd: random.Random, parts: int, at_offset: int
) -> None:
    at = T0 + at_offset
    reference = fold((singleton(o) for o in sorted(occs, key=lambda o: o.time)), 60.0)
    g = group([Span.of(i.id, i) for i in reference], RULES)
    assert grouping_of(occs, rnd, parts, at) == summary(reference, at)
    # What it means, checked on every example: a direct cause's rule declares the symptom, shares its scope and
    # its window holds the symptom's start; a root is no symptom; every symptom is counted under its root.
    spans = {i.id: i for i in reference}
    # The indexed search finds what a plain scan over every incident finds.
    every = [Span.of(i.id, i) for i in reference]
    for one in every:
        best = reference_cause(one, every)
        assert g.parent.get(one.id) == (best.id if best is not None else None)
    for sid, pid in g.parent.items():
        s, p = spans[sid], spans[pid]
        causes = RULES[p.rule_id].causes
        assert causes is not None and causes.targets(s.rule_id, RULES[s.rule_id].category.value)
        assert p.first_seen - causes.slack <= s.first_seen <= p.last_seen + causes.slack
        assert s.key.cluster == p.key.cluster
    assert all(root not in g.root for root in g.root.values())
    assert sum(a.incidents for a in g.affected.values()) == len(g.root)
