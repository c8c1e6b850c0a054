"""Build small catalogues in tests without the shipped patterns/."""

from __future__ import annotations

from analyzer.catalogue import digest_rules
from analyzer.types import Catalogue, Category, Component, Expression, Rule, Scope, Severity


def rule(rule_id: str, *patterns: str, caseless: bool = False, source: str = "test.yaml") -> Rule:
    return Rule(
        id=rule_id,
        title=rule_id,
        category=Category.UPSTREAM_ERRORS,
        component=Component.ANY,
        severity=Severity.HIGH,
        expressions=tuple(Expression(p, caseless) for p in patterns),
        scope=Scope(),
        transient=None,
        resolve_after=600.0,
        remediation={"en": "fix it", "pt-BR": "conserte"},
        references=(),
        examples_match=(),
        examples_no_match=(),
        source=source,
    )


def catalogue(*rules: Rule) -> Catalogue:
    return Catalogue(rules=tuple(rules), digest=digest_rules(rules))
