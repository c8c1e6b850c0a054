"""Store rows and catalogue rules -> response models."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from analyzer import unclassified
from analyzer.api.commands import look_further
from analyzer.api.params import to_datetime
from analyzer.api.schemas import (
    AffectedOut,
    CausesOut,
    EvidenceOut,
    ExamplesOut,
    ExpressionOut,
    IncidentDetail,
    IncidentItem,
    IncidentKeyOut,
    RuleDetail,
    RuleSummary,
    ScopeOut,
    SilenceOut,
)
from analyzer.store import IncidentRow, Silence
from analyzer.store.causes import CauseView
from analyzer.types import Category, Evidence, Rule, Severity

MAX_SYMPTOMS = 1000  # symptoms listed on a root's detail, earliest first


def _rule_of(row: IncidentRow, rules: Mapping[str, Rule]) -> Rule | None:
    """The row's rule; an unclassified template this process does not know is re-derived from its evidence."""
    rule = rules.get(row.rule_id)
    if rule is None and (row.head or row.tail) and unclassified.is_unclassified(row.rule_id):
        rule = unclassified.rule_from_evidence(row.rule_id, [e.line for e in (*row.head, *row.tail)])
    return rule


def _title(row: IncidentRow, rule: Rule | None) -> str:
    if rule is not None:
        return rule.title
    return unclassified.title_from_id(row.rule_id)  # the id itself for anything else


def incident_item(row: IncidentRow, rules: Mapping[str, Rule], causes: CauseView | None = None) -> IncidentItem:
    """The row as listed; with ``causes``, its caused_by, and a root's affected and group status."""
    rule = _rule_of(row, rules)
    affected = None
    if causes is not None and causes.is_root(row.id):
        a = causes.affected(row.id)
        affected = AffectedOut(incidents=a.incidents, workloads=a.workloads, pods=a.pods)
    return IncidentItem(
        id=row.id,
        rule=row.rule_id,
        title=_title(row, rule),
        category=Category(row.category),
        severity=Severity(row.severity),
        status=row.status if causes is None else causes.status(row),
        key=IncidentKeyOut(
            cluster=row.key.cluster, namespace=row.key.namespace, workload=row.key.workload, pods=list(row.pods)
        ),
        first_seen=to_datetime(row.first_seen),
        last_seen=to_datetime(row.last_seen),
        count=row.count,
        acked=row.acked_at is not None,
        acked_by=row.acked_by,
        acked_at=None if row.acked_at is None else to_datetime(row.acked_at),
        ack_comment=row.ack_comment,
        silenced=row.silenced,
        caused_by=None if causes is None else causes.caused_by(row.id),
        affected=affected,
    )


def evidence_of(row: IncidentRow) -> list[Evidence]:
    """Head and tail, oldest first; a short incident's head and tail hold the same lines."""
    unique = dict.fromkeys((*row.head, *row.tail))
    return sorted(unique, key=lambda e: (e.time, e.line))


def incident_detail(
    row: IncidentRow, rules: Mapping[str, Rule], language: str, causes: CauseView | None = None
) -> IncidentDetail:
    rule = _rule_of(row, rules)
    evidence = evidence_of(row)
    listed = [] if causes is None else causes.symptoms(row.id)[:MAX_SYMPTOMS]  # affected counts them all
    symptoms = [incident_item(s, rules, causes) for s in listed]
    return IncidentDetail(
        **incident_item(row, rules, causes).model_dump(),
        symptoms=symptoms,
        evidence=[
            EvidenceOut(time=to_datetime(e.time), pod=e.pod, container=e.container, line=e.line) for e in evidence
        ],
        language=language,
        remediation=rule.remediation.get(language) if rule else None,
        references=list(rule.references) if rule else [],
        commands=look_further(row.key, row.pods, evidence, row.first_seen, rule),
        transient_seconds=row.transient,
        resolve_after_seconds=row.resolve_after,
    )


def rule_summary(rule: Rule) -> RuleSummary:
    return RuleSummary(
        id=rule.id,
        title=rule.title,
        category=rule.category,
        component=rule.component,
        severity=rule.severity,
        transient_seconds=rule.transient,
        resolve_after_seconds=rule.resolve_after,
        source=Path(rule.source).name,
    )


def rule_detail(rule: Rule) -> RuleDetail:
    return RuleDetail(
        **rule_summary(rule).model_dump(),
        expressions=[ExpressionOut(pattern=e.pattern, caseless=e.caseless) for e in rule.expressions],
        exclude=[ExpressionOut(pattern=e.pattern, caseless=e.caseless) for e in rule.exclude],
        scope=ScopeOut(containers=list(rule.scope.containers), namespaces=list(rule.scope.namespaces)),
        remediation=dict(rule.remediation),
        references=list(rule.references),
        examples=ExamplesOut(match=list(rule.examples_match), no_match=list(rule.examples_no_match)),
        causes=None
        if rule.causes is None
        else CausesOut(
            categories=list(rule.causes.categories),
            rules=list(rule.causes.rules),
            scope=rule.causes.scope.value,
            slack_seconds=rule.causes.slack,
        ),
    )


def silence_out(silence: Silence) -> SilenceOut:
    return SilenceOut(
        id=silence.id,
        rule=silence.rule,
        cluster=silence.cluster,
        namespace=silence.namespace,
        workload=silence.workload,
        expires_at=to_datetime(silence.expires_at),
        created_by=silence.created_by,
        comment=silence.comment,
    )
