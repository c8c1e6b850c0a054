"""The signature catalogue (patterns/*.yaml): compiles, its examples hold, and it recognises the real corpus.

Every expression is checked twice, with Hyperscan (the production matcher) and with Python ``re`` on bytes
(the reference semantics); the two must agree on every example and corpus line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parser  # type: ignore[attr-defined]
from typing import Any

import hyperscan
import pytest

from analyzer.catalogue import load_catalogue
from analyzer.types import Catalogue, Category, Component, Expression, Rule, Severity

PATTERNS = Path(__file__).parents[1] / "patterns"
CORPUS_CANDIDATES = (
    Path(os.environ.get("MESH_CORPUS", "/nonexistent")),
    Path(__file__).parents[1] / "tests" / "data" / "istio_real_lines.jsonl",
    Path(__file__).resolve().parents[2] / "shared" / "corpus" / "istio_real_lines.jsonl",
)
MIN_RULES = 38
MIN_LITERAL = 4  # the JSON prefilter needs a required literal this long with no JSON-escaped characters


def _flags(expr: Expression) -> int:
    return hyperscan.HS_FLAG_MULTILINE | (hyperscan.HS_FLAG_CASELESS if expr.caseless else 0)


def _re_flags(expr: Expression) -> int:
    return re.M | (re.I if expr.caseless else 0)


@dataclass(frozen=True)
class Compiled:
    """All expressions of the catalogue in one Hyperscan database plus their ``re`` twins."""

    catalogue: Catalogue
    owners: tuple[Rule, ...]  # expression index -> rule
    expressions: tuple[Expression, ...]
    regexes: tuple[re.Pattern[bytes], ...]
    database: Any

    def hyperscan_hits(self, line: str) -> set[int]:
        hits: set[int] = set()

        def on_match(eid: int, start: int, end: int, flags: int, context: object) -> None:
            hits.add(eid)

        self.database.scan(line.encode(), match_event_handler=on_match)
        return hits

    def re_hits(self, line: str) -> set[int]:
        data = line.encode()
        return {i for i, rx in enumerate(self.regexes) if rx.search(data)}

    def rules_matching(self, line: str) -> set[str]:
        hs, ref = self.hyperscan_hits(line), self.re_hits(line)
        assert hs == ref, f"hyperscan and re disagree on {line!r}: " + ", ".join(
            f"{self.owners[i].id}:{self.expressions[i].pattern!r} (hs={i in hs}, re={i in ref})" for i in hs ^ ref
        )
        rules = {self.owners[i].id: self.owners[i] for i in hs}
        return {rid for rid, r in rules.items() if not excluded(r, line.encode())}


def excluded(rule: Rule, data: bytes) -> bool:
    """A rule's ``exclude`` expressions, checked after a match (the reference for Matcher's filter)."""
    return any(re.search(e.pattern.encode(), data, _re_flags(e)) for e in rule.exclude)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(PATTERNS)


@pytest.fixture(scope="module")
def compiled(catalogue: Catalogue) -> Compiled:
    owners = tuple(r for r in catalogue.rules for _ in r.expressions)
    expressions = tuple(e for r in catalogue.rules for e in r.expressions)
    database = hyperscan.Database()
    database.compile(
        expressions=[e.pattern.encode() for e in expressions],
        ids=list(range(len(expressions))),
        elements=len(expressions),
        flags=[_flags(e) for e in expressions],
    )
    regexes = tuple(re.compile(e.pattern.encode(), _re_flags(e)) for e in expressions)
    return Compiled(catalogue, owners, expressions, regexes, database)


def _corpus_path() -> Path | None:
    return next((p for p in CORPUS_CANDIDATES if p.is_file()), None)


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, str]]:
    path = _corpus_path()
    if path is None:
        pytest.skip("corpus istio_real_lines.jsonl not found (set MESH_CORPUS)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


RULES = list(load_catalogue(PATTERNS).rules)  # for parametrize ids; a broken catalogue fails collection loudly


# --- every rule, every expression -------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_each_expression_compiles_in_hyperscan(rule: Rule) -> None:
    for expr in rule.expressions:
        db = hyperscan.Database()
        try:
            db.compile(expressions=[expr.pattern.encode()], ids=[0], elements=1, flags=[_flags(expr)])
        except hyperscan.error as exc:
            pytest.fail(f"{rule.id}: {expr.pattern!r} does not compile: {exc}")
        re.compile(expr.pattern.encode(), _re_flags(expr))


def _rule_matcher(rule: Rule) -> Callable[[str], tuple[bool, bool]]:
    """A function giving (hyperscan matched, re matched) for this rule on one line."""
    db = hyperscan.Database()
    db.compile(
        expressions=[e.pattern.encode() for e in rule.expressions],
        ids=list(range(len(rule.expressions))),
        elements=len(rule.expressions),
        flags=[_flags(e) for e in rule.expressions],
    )
    regexes = [re.compile(e.pattern.encode(), _re_flags(e)) for e in rule.expressions]

    def matches(line: str) -> tuple[bool, bool]:
        data = line.encode()
        seen: list[int] = []
        db.scan(data, match_event_handler=lambda eid, *_: seen.append(eid))
        dropped = excluded(rule, data)
        return bool(seen) and not dropped, any(rx.search(data) for rx in regexes) and not dropped

    return matches


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_examples(rule: Rule) -> None:
    assert rule.examples_match, f"{rule.id} has no examples.match"
    assert rule.examples_no_match, f"{rule.id} has no examples.no_match (near-misses are wanted)"
    matches = _rule_matcher(rule)
    for line in rule.examples_match:
        hs, ref = matches(line)
        assert hs and ref, f"{rule.id} must match (hyperscan={hs}, re={ref}): {line!r}"
    for line in rule.examples_no_match:
        hs, ref = matches(line)
        assert not hs and not ref, f"{rule.id} must not match (hyperscan={hs}, re={ref}): {line!r}"


def test_hyperscan_and_re_agree_on_every_example(compiled: Compiled, catalogue: Catalogue) -> None:
    for rule in catalogue.rules:
        for line in (*rule.examples_match, *rule.examples_no_match):
            compiled.rules_matching(line)  # asserts agreement expression by expression


def test_hyperscan_and_re_agree_on_every_corpus_line(compiled: Compiled, corpus: list[dict[str, str]]) -> None:
    for entry in corpus:
        compiled.rules_matching(entry["line"])


# --- performance hygiene ----------------------------------------------------------------------------------

_UNBOUNDED_TAIL = re.compile(r"(?:[*+]|\{\d+,\})\??$")


def _ok_literal(code: int) -> bool:
    return 0x20 <= code < 0x7F and chr(code) not in '"\\/'


def _items(sub: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
    """Parsed items with plain (branch-free) groups spliced in, so literal runs continue across them."""
    for op, av in sub:
        if op is sre_constants.SUBPATTERN:
            inner = list(av[-1])
            if not any(o is sre_constants.BRANCH for o, _ in inner):
                yield from _items(inner)
                continue
        yield op, av


def _has_required_literal(sub: Iterable[tuple[Any, Any]]) -> bool:
    """True if every match path contains a literal run of MIN_LITERAL prefilter-safe characters."""
    run = 0
    for op, av in _items(sub):
        if op is sre_constants.LITERAL and _ok_literal(av):
            run += 1
            if run >= MIN_LITERAL:
                return True
            continue
        run = 0
        if op is sre_constants.SUBPATTERN:
            op, av = sre_constants.BRANCH, (None, [av[-1]])
        if op is sre_constants.BRANCH and all(_has_required_literal(alt) for alt in av[1]):
            return True
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT) and av[0] >= 1 and _has_required_literal(av[2]):
            return True
    return False


def _ends_unbounded(pattern: str) -> bool:
    items = list(sre_parser.parse(pattern))
    if not items:
        return False
    op, av = items[-1]
    return op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT) and av[1] == sre_constants.MAXREPEAT


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_expressions_are_cheap_to_scan(rule: Rule) -> None:
    for expr in rule.expressions:
        p = expr.pattern
        assert not _UNBOUNDED_TAIL.search(p), f"{rule.id}: {p!r} ends in an unbounded repeat; trim it"
        assert not _ends_unbounded(p), f"{rule.id}: {p!r} ends in an unbounded repeat; trim it"
        assert _has_required_literal(sre_parser.parse(p)), (
            f"{rule.id}: {p!r} needs a required literal of {MIN_LITERAL}+ characters without quote, "
            "backslash, slash, control or non-ASCII characters on every match path (JSON prefilter)"
        )
        assert "\\s" not in p and "\\S" not in p, f"{rule.id}: {p!r} uses \\s; use a space or [ \\t]"
        assert not re.match(r"\.\*|\.\{0,\d+\}", p), f"{rule.id}: {p!r} starts with a gap; lead with a literal"


def test_literal_check_rejects_what_it_should() -> None:
    def ok(p: str) -> bool:
        return _has_required_literal(sre_parser.parse(p))

    assert ok("Failed to watch")
    assert ok('"response_flags":"UH"')
    assert ok("(?:dial tcp|i/o timeout)x")
    assert not ok('" [0-9]{1,3} UH[ ,]')
    assert not ok("(?:dial tcp|io)x")
    assert not ok("(?:Failed to watch)?x")
    assert not ok("a\tb\tc\td")
    assert _ends_unbounded("abcd.*") and _ends_unbounded('abcd[^"]+') and not _ends_unbounded("abc.{0,3}d")


# --- catalogue-wide requirements --------------------------------------------------------------------------


def test_catalogue_size_and_categories(catalogue: Catalogue) -> None:
    assert len(catalogue.rules) >= MIN_RULES
    # Every category but the analyzer's own lane for errors no rule knows, which rules may not use.
    assert {r.category for r in catalogue.rules} == set(Category) - {Category.UNCLASSIFIED}


REQUIRED: dict[str, tuple[Category, Component | None]] = {
    "istiod-apiserver-unreachable": (Category.APISERVER_CONNECTIVITY, Component.ISTIOD),
    "istiod-rbac-forbidden": (Category.RBAC_PERMISSIONS, None),
    "istio-init-iptables-failure": (Category.SIDECAR_INIT, None),
    "app-started-before-proxy": (Category.PROXY_READINESS, Component.APP),
    "proxy-not-ready": (Category.PROXY_READINESS, Component.ISTIO_PROXY),
}


def test_required_rules(catalogue: Catalogue) -> None:
    rules = catalogue.by_id()
    for rid, (category, component) in REQUIRED.items():
        assert rid in rules, f"missing required rule {rid}"
        assert rules[rid].category is category
        if component is not None:
            assert rules[rid].component is component
    outage = rules["istiod-apiserver-unreachable"]
    assert (outage.transient, outage.resolve_after) == (300.0, 600.0)
    assert rules["istiod-rbac-forbidden"].transient is None, "RBAC errors are persistent: no transient window"
    assert rules["proxy-not-ready"].transient is not None, "not-ready is normal during start-up"
    app = rules["app-started-before-proxy"].remediation["en"]
    assert "localhost:15020/healthz/ready" in app and "holdApplicationUntilProxyStarts" in app
    assert "regional" in outage.remediation["en"] and "network polic" in outage.remediation["en"].lower()
    init = rules["istio-init-iptables-failure"].remediation["en"]
    assert "CNI" in init and "CAP_NET_ADMIN" in init


def test_persistent_problems_have_no_transient_window(catalogue: Catalogue) -> None:
    rules = catalogue.by_id()
    for rid in ("istiod-rbac-forbidden", "certificate-expired", "proxy-envoy-crashed"):
        assert rules[rid].transient is None, rid
    for rule in catalogue.rules:
        if rule.id.startswith("access-") and rule.severity in (Severity.HIGH, Severity.MEDIUM):
            assert rule.transient is not None, f"{rule.id}: one 5xx is not an incident; give it a window"


# --- the real corpus --------------------------------------------------------------------------------------

# Corpus category -> the rule that must recognise every line of it. (category, substring) narrows a mixed
# category to one line.
EXPECTED: dict[str | tuple[str, str], str] = {
    "istiod-klog-reflector": "istiod-apiserver-slow-list",
    "istiod-klog-reflector-rbac": "istiod-rbac-forbidden",
    "istiod-json-klog-reflector-rbac": "istiod-rbac-forbidden",
    "controller-runtime-reflector-rbac": "istiod-rbac-forbidden",
    "klog-native-reflector": "istiod-apiserver-unreachable",
    "istiod-klog-reflector-apiserver-refused": "istiod-apiserver-unreachable",
    "asm-doc-seed-apiserver": "istiod-apiserver-unreachable",
    "istio-cni-klog-reflector": "istio-cni-apiserver-unreachable",
    "istiod-klog-watch-ended": "istiod-watch-error",
    "istiod-xds-nack": "istiod-xds-nack",
    "istiod-ca-auth-failure": "istiod-client-auth-failed",
    "istiod-debug-auth": "istiod-debug-endpoint-unauthenticated",
    "istiod-gateway-port-conflict": "istiod-gateway-port-conflict",
    "galley-validation-webhook": "istiod-webhook-endpoint-not-ready",
    # "closed: 13," alone is istiod closing the stream on purpose (every ~30 min): benign, not expected here.
    ("envoy-legacy-xds-stream", "closed: 14"): "proxy-xds-stream-closed",
    ("envoy-legacy-xds-stream", "Unable to establish new stream"): "proxy-xds-stream-closed",
    "envoy-legacy-xds-stream-503": "proxy-xds-stream-closed",
    "envoy-xds-stream-closed": "proxy-xds-stream-closed",
    "format-derived:envoy-app-log-text": "proxy-xds-stream-closed",
    "envoy-legacy-lds-reject": "proxy-xds-config-rejected",
    "envoy-xds-nack": "proxy-xds-config-rejected",
    "pilot-agent-xds-token": "proxy-istio-token-unreadable",
    "pilot-agent-not-ready": "proxy-not-ready",
    "pilot-agent-not-ready-legacy": "proxy-not-ready",
    "envoy-sds-stream-closed": "proxy-sds-stream-closed",
    "pilot-agent-csr-failure": "proxy-csr-rejected",
    "pilot-agent-csr-failure-legacy": "proxy-ca-unreachable",
    "pilot-agent-warm-cert": "proxy-ca-unreachable",
    "mtls-cert-verify-failed": "mtls-certificate-verify-failed",
    "envoy-503-details-tls": "mtls-certificate-verify-failed",
    "cert-expired-webhook": "certificate-expired",
    "injection-webhook-x509": "webhook-certificate-untrusted",
    "injection-webhook-event": "injection-webhook-unreachable",
    "injection-webhook-apiserver": "injection-webhook-unreachable",
    "istio-init-failure": "istio-init-iptables-failure",
    "istio-init-panic": "istio-init-iptables-failure",
    "istio-validation-failure": "istio-validation-redirect-missing",
    "istio-cni-ambient-error": "istio-cni-ztunnel-unavailable",
    ("kubelet-event-probe", "pod/istio-cni-node-"): "istio-cni-node-not-ready",
    ("kubelet-event-probe", ":15021/healthz/ready"): "sidecar-readiness-probe-failed",
    "asm-doc-app-econnrefused": "app-started-before-proxy",
    "envoy-access-text-UC (leading [START_TIME] cut in source)": "access-upstream-connection-termination",
    "envoy-access-text-NR": "access-no-route",
    "envoy-access-text-NR-pre1.9": "access-no-route",
    "envoy-access-text-DC (fragment as quoted in source)": "access-downstream-disconnect",
    "envoy-access-json-UAEX-pre1.5": "access-ext-authz-denied",
    "fluentbit-flattened-record-UH": "access-upstream-no-healthy",
    "envoy-access-json-UH": "access-upstream-no-healthy",
    "envoy-access-text-UF": "access-upstream-connect-failure",
    "envoy-503-details (issue title)": "access-upstream-connect-failure",
    "envoy-access-text-rbac-403 (tail cut in index excerpt)": "access-rbac-denied",
    "envoy-503-body": "upstream-connect-error-body",
}

# Rules that may legitimately fire together with the expected one on the same corpus line (one line can
# show two true problems, e.g. an unreadable token breaks the xDS stream). Anything else is a false positive.
ALSO: dict[str, set[str]] = {
    "istiod-apiserver-unreachable": {"istio-cni-apiserver-unreachable"},  # same client-go line, other component
    "istio-cni-apiserver-unreachable": {"istiod-apiserver-unreachable"},
    "proxy-istio-token-unreadable": {"proxy-istiod-unreachable", "proxy-xds-stream-closed"},
    "proxy-xds-stream-closed": {"proxy-istio-token-unreadable"},
    "proxy-ca-unreachable": {"proxy-istiod-unreachable"},
    "access-upstream-no-healthy": {"access-blackhole-egress"},
    # a pod not created because the injector's certificate is untrusted: the effect and the cause
    "webhook-certificate-untrusted": {"k8s-event-injection-webhook-tls-failed"},
}

# Healthy or purely informational lines: no rule above severity info may fire on them.
HEALTHY = {
    "istiod-xds-info",
    "istiod-json-xds-info",
    "istiod-xds-disconnect",
    "istiod-json-startup",
    "pilot-agent-ready",
    "pilot-agent-sds",
    "pilot-agent-sds-json",
    "pilot-agent-startup",
    "pilot-agent-startup-flags",
    "pilot-agent-text-startup",
    "istio-cni-agent",
    "istio-init-rules",
    "istio-init-log",
    "envoy-log-xds",
    "envoy-log-json-proxy",
    "envoy-upstream-debug",
    "envoy-access-text-default",
    "docker-json-file-envoy-debug",
    "cri-log-line",
    "fluentbit-record-stdout",
    "fluentbit-own-log",
}

# Lines that must never be taken for the app-started-before-proxy symptom.
NOT_APP = {
    "klog-native-reflector",
    "istiod-klog-reflector-apiserver-refused",
    "asm-doc-seed-apiserver",
    "istio-cni-klog-reflector",
    "kubelet-event-probe",
    "istio-validation-failure",
    "pilot-agent-warm-cert",
    "pilot-agent-csr-failure-legacy",
}


def _expected_rule(entry: dict[str, str]) -> str | None:
    for key, rid in EXPECTED.items():
        if isinstance(key, tuple):
            if entry["category"] == key[0] and key[1] in entry["line"]:
                return rid
        elif entry["category"] == key:
            return rid
    return None


def test_corpus_problem_lines_are_recognised(compiled: Compiled, corpus: list[dict[str, str]]) -> None:
    known = {r.id for r in compiled.catalogue.rules}
    assert set(EXPECTED.values()) <= known, set(EXPECTED.values()) - known
    categories = {c["category"] for c in corpus}
    stale = {k if isinstance(k, str) else k[0] for k in EXPECTED} - categories
    assert not stale, f"EXPECTED names categories the corpus no longer has: {stale}"
    checked = 0
    for entry in corpus:
        rid = _expected_rule(entry)
        if rid is None:
            continue
        matched = compiled.rules_matching(entry["line"])
        assert rid in matched, f"{entry['category']}: expected {rid}, got {sorted(matched)}: {entry['line']!r}"
        checked += 1
    assert checked >= 50


def test_corpus_problem_lines_raise_nothing_unexpected(compiled: Compiled, corpus: list[dict[str, str]]) -> None:
    for entry in corpus:
        rid = _expected_rule(entry)
        if rid is None:
            continue
        extra = compiled.rules_matching(entry["line"]) - {rid} - ALSO.get(rid, set())
        assert not extra, f"{entry['category']}: unexpected {sorted(extra)} besides {rid}: {entry['line']!r}"


def test_corpus_healthy_lines_raise_nothing(compiled: Compiled, corpus: list[dict[str, str]]) -> None:
    rules = compiled.catalogue.by_id()
    healthy = [c for c in corpus if c["category"] in HEALTHY]
    assert len(healthy) >= 15
    for entry in healthy:
        loud = {rid for rid in compiled.rules_matching(entry["line"]) if rules[rid].severity is not Severity.INFO}
        assert not loud, f"healthy line ({entry['category']}) raised {sorted(loud)}: {entry['line']!r}"


def test_app_rule_spares_control_plane_and_probe_lines(compiled: Compiled, corpus: list[dict[str, str]]) -> None:
    for entry in corpus:
        if entry["category"] in NOT_APP:
            assert "app-started-before-proxy" not in compiled.rules_matching(entry["line"]), entry["line"]


def test_outage_and_rbac_are_told_apart(compiled: Compiled, corpus: list[dict[str, str]]) -> None:
    for entry in corpus:
        matched = compiled.rules_matching(entry["line"])
        assert not {"istiod-apiserver-unreachable", "istiod-rbac-forbidden"} <= matched, entry["line"]


def test_catalogue_database_finds_each_rule_on_its_own_examples(compiled: Compiled) -> None:
    # The combined database (one id per expression, as production builds it) must agree with the per-rule one.
    for rule in compiled.catalogue.rules:
        for line in rule.examples_match:
            assert rule.id in compiled.rules_matching(line), (rule.id, line)
        for line in rule.examples_no_match:
            assert rule.id not in compiled.rules_matching(line), (rule.id, line)
