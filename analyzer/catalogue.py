"""Load and validate the signature catalogue (patterns/*.yaml).

Every problem is collected with its file, rule id and reason; a catalogue with any problem is refused whole.
Hyperscan compilation is checked separately by ``analyzer.match.compiler`` (same error type).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from analyzer.errors import CatalogueError, RuleProblem
from analyzer.types import Catalogue, Category, Causes, CauseScope, Component, Expression, Rule, Scope, Severity

RULE_FIELDS = frozenset(
    {
        "id",
        "title",
        "category",
        "component",
        "severity",
        "match",
        "scope",
        "transient",
        "resolve_after",
        "remediation",
        "references",
        "examples",
        "exclude",
        "causes",
    }
)
REQUIRED_FIELDS = ("id", "title", "category", "component", "severity", "match", "remediation", "examples")
EXPRESSION_FIELDS = frozenset({"pattern", "caseless"})
SCOPE_FIELDS = frozenset({"containers", "namespaces"})
EXAMPLE_FIELDS = frozenset({"match", "no_match"})
CAUSES_FIELDS = frozenset({"categories", "rules", "scope", "slack"})
DEFAULT_CAUSE_SLACK = 60.0
LANGUAGES = ("en", "pt-BR")
DEFAULT_RESOLVE_AFTER = 900.0

# libyaml's loader, where PyYAML has it, parses the catalogue 10x faster (the CLI's start-up is mostly this),
# but deep nesting overflows its C stack and kills the process: such a file goes to the pure-Python loader,
# which raises RecursionError (refused with a reason).
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_FAST_DEPTH = 64
_INDENT = re.compile(r"^[ \t-]*", re.M)


def _loader_for(text: str) -> type[yaml.SafeLoader]:
    depth = deepest = 0
    for ch in text:  # flow collections; quoted brackets only make the count err on the safe side
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    indent = max((len(m) for m in _INDENT.findall(text)), default=0)  # block collections
    return _FAST_LOADER if deepest <= _MAX_FAST_DEPTH and indent <= 4 * _MAX_FAST_DEPTH else yaml.SafeLoader


_E = TypeVar("_E", Category, Severity, Component)
_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """'90s', '5m', '1h', or a number of seconds -> seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h)")
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class _RuleReader:
    """Validates one rule mapping, recording problems instead of stopping at the first."""

    def __init__(self, file: str, raw: Mapping[str, Any], index: int) -> None:
        self.file = file
        self.raw = raw
        rid = raw.get("id")
        self.rule_id = rid if isinstance(rid, str) else f"#{index + 1}"
        self.problems: list[RuleProblem] = []

    def problem(self, reason: str) -> None:
        self.problems.append(RuleProblem(self.file, self.rule_id, reason))

    def text(self, name: str) -> str:
        value = self.raw.get(name)
        if not isinstance(value, str) or not value.strip():
            self.problem(f"'{name}' must be a non-empty string")
            return ""
        return value.strip()

    def choice(self, name: str, enum: type[_E]) -> _E | None:
        value = self.raw.get(name)
        try:
            return enum(str(value))
        except ValueError:
            allowed = ", ".join(e.value for e in enum if e.value != "unclassified")  # reserved: see read()
            self.problem(f"'{name}' is {value!r}; expected one of: {allowed}")
            return None

    def strings(self, value: object, what: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(f"'{what}' must be a string or a list of strings")
            return ()
        return tuple(value)

    def expressions(self, name: str = "match") -> tuple[Expression, ...]:
        value = self.raw.get(name)
        items = value if isinstance(value, list) else [value]
        out: list[Expression] = []
        for item in items:
            if isinstance(item, str) and item:
                out.append(Expression(item))
            elif isinstance(item, dict):
                unknown = set(item) - EXPRESSION_FIELDS
                if unknown:
                    self.problem(f"unknown field(s) in '{name}': {', '.join(sorted(map(str, unknown)))}")
                pattern, caseless = item.get("pattern"), item.get("caseless", False)
                if not isinstance(pattern, str) or not pattern or not isinstance(caseless, bool):
                    self.problem(f"'{name}' entries need a non-empty 'pattern' and a boolean 'caseless'")
                    continue
                out.append(Expression(pattern, caseless))
            else:
                self.problem(f"'{name}' must be an expression or a list of expressions")
        for e in out:
            if "\n" in e.pattern:
                self.problem("an expression may not contain a newline; rules match one line at a time")
        return tuple(out)

    def excludes(self) -> tuple[Expression, ...]:
        """Python ``re`` expressions checked on a line after the rule matched it."""
        if self.raw.get("exclude") is None:
            return ()
        out = self.expressions("exclude")
        for e in out:
            try:
                re.compile(e.pattern.encode(), re.I if e.caseless else 0)
            except (re.error, OverflowError, RecursionError) as exc:
                self.problem(f"'exclude' expression {e.pattern!r} does not compile: {exc}")
        return out

    def scope(self) -> Scope:
        value = self.raw.get("scope")
        if value is None:
            return Scope()
        if not isinstance(value, dict):
            self.problem("'scope' must be a mapping with 'containers' and/or 'namespaces'")
            return Scope()
        unknown = set(value) - SCOPE_FIELDS
        if unknown:
            self.problem(f"unknown field(s) in 'scope': {', '.join(sorted(map(str, unknown)))}")
        return Scope(
            containers=self.strings(value.get("containers"), "scope.containers"),
            namespaces=self.strings(value.get("namespaces"), "scope.namespaces"),
        )

    def causes(self) -> Causes | None:
        """``causes: {categories, rules, scope, slack}``; the targets are checked across files (load_catalogue)."""
        value = self.raw.get("causes")
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem("'causes' must be a mapping with 'categories' and/or 'rules', 'scope' and 'slack'")
            return None
        unknown = set(value) - CAUSES_FIELDS
        if unknown:
            self.problem(f"unknown field(s) in 'causes': {', '.join(sorted(map(str, unknown)))}")
        categories: list[Category] = []
        for name in self.strings(value.get("categories"), "causes.categories"):
            try:
                category = Category(name)
            except ValueError:
                category = None
            if category is None or category is Category.UNCLASSIFIED:
                allowed = ", ".join(c.value for c in Category if c is not Category.UNCLASSIFIED)
                self.problem(f"'causes.categories' names unknown category {name!r}; expected one of: {allowed}")
            else:
                categories.append(category)
        rules = self.strings(value.get("rules"), "causes.rules")
        if not categories and not rules and not self.problems:
            self.problem("'causes' needs at least one target in 'categories' or 'rules'")
        try:
            scope = CauseScope(str(value.get("scope")))
        except ValueError:
            allowed = ", ".join(s.value for s in CauseScope)
            self.problem(f"'causes.scope' is {value.get('scope')!r}; expected one of: {allowed}")
            scope = CauseScope.MESH
        slack = DEFAULT_CAUSE_SLACK
        if value.get("slack") is not None:
            try:
                slack = parse_duration(value["slack"])
            except ValueError as exc:
                self.problem(f"'causes.slack': {exc}")
        return Causes(tuple(dict.fromkeys(categories)), tuple(dict.fromkeys(rules)), scope, slack)

    def duration(self, name: str, default: float | None) -> float | None:
        value = self.raw.get(name)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problem(f"'{name}': {exc}")
            return default

    def remediation(self) -> dict[str, str]:
        value = self.raw.get("remediation")
        if not isinstance(value, dict):
            self.problem(f"'remediation' must be a mapping with {' and '.join(LANGUAGES)}")
            return {}
        out: dict[str, str] = {}
        for lang in LANGUAGES:
            text = value.get(lang)
            if not isinstance(text, str) or not text.strip():
                self.problem(f"'remediation.{lang}' must be a non-empty string")
            else:
                out[lang] = text.strip()
        unknown = set(value) - set(LANGUAGES)
        if unknown:
            self.problem(f"unknown language(s) in 'remediation': {', '.join(sorted(map(str, unknown)))}")
        return out

    def examples(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        value = self.raw.get("examples")
        if not isinstance(value, dict):
            self.problem("'examples' must be a mapping with 'match' (and optionally 'no_match')")
            return (), ()
        unknown = set(value) - EXAMPLE_FIELDS
        if unknown:
            self.problem(f"unknown field(s) in 'examples': {', '.join(sorted(map(str, unknown)))}")
        positive = self.strings(value.get("match"), "examples.match")
        negative = self.strings(value.get("no_match"), "examples.no_match")
        if not positive:
            self.problem("'examples.match' needs at least one line the rule must match")
        return positive, negative

    def read(self) -> Rule | None:
        unknown = set(self.raw) - RULE_FIELDS
        if unknown:
            self.problem(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        for name in REQUIRED_FIELDS:
            if name not in self.raw:
                self.problem(f"missing required field '{name}'")
        rid = self.text("id")
        if rid and not _ID.match(rid):
            self.problem(f"id {rid!r} must be kebab-case (a-z, 0-9, single dashes)")
        title = self.text("title")
        category = self.choice("category", Category)
        if category is Category.UNCLASSIFIED:
            # Reserved for the analyzer's own lane of errors no rule knows (analyzer/unclassified.py).
            self.problem("'category' unclassified is reserved for errors no rule knows; pick a real category")
            category = None
        component = self.choice("component", Component)
        severity = self.choice("severity", Severity)
        expressions = self.expressions()
        exclude = self.excludes()
        scope = self.scope()
        transient = self.duration("transient", None)
        resolve_after = self.duration("resolve_after", DEFAULT_RESOLVE_AFTER)
        remediation = self.remediation()
        references = self.strings(self.raw.get("references"), "references")
        positive, negative = self.examples()
        causes = self.causes()
        if self.problems or category is None or component is None or severity is None:
            return None
        assert resolve_after is not None
        return Rule(
            id=rid,
            title=title,
            category=category,
            component=component,
            severity=severity,
            expressions=expressions,
            scope=scope,
            transient=transient,
            resolve_after=resolve_after,
            remediation=remediation,
            references=references,
            examples_match=positive,
            examples_no_match=negative,
            source=self.file,
            exclude=exclude,
            causes=causes,
        )


def _read_file(path: Path) -> tuple[list[Rule], list[RuleProblem]]:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        document = yaml.load(text, Loader=_loader_for(text))
    except (OSError, UnicodeDecodeError) as exc:
        return [], [RuleProblem(name, None, f"cannot read: {exc}")]
    except yaml.YAMLError as exc:
        return [], [RuleProblem(name, None, f"invalid YAML: {exc}")]
    except RecursionError:
        return [], [RuleProblem(name, None, "invalid YAML: nested too deeply")]
    if not isinstance(document, dict) or set(document) != {"rules"} or not isinstance(document["rules"], list):
        return [], [RuleProblem(name, None, "expected a mapping with exactly one key, 'rules', holding a list")]
    rules: list[Rule] = []
    problems: list[RuleProblem] = []
    for index, raw in enumerate(document["rules"]):
        if not isinstance(raw, dict):
            problems.append(RuleProblem(name, f"#{index + 1}", "each rule must be a mapping"))
            continue
        reader = _RuleReader(name, raw, index)
        rule = reader.read()
        problems.extend(reader.problems)
        if rule is not None:
            rules.append(rule)
    return rules, problems


def _causes_canonical(c: Causes) -> dict[str, object]:
    return {
        "categories": [x.value for x in c.categories],
        "rules": list(c.rules),
        "scope": c.scope.value,
        "slack": c.slack,
    }


def cause_problems(rules: Iterable[Rule]) -> list[RuleProblem]:
    """Causes that name no rule of the catalogue, and cycles (a rule that would, through its symptoms, cause
    itself). A category target stands for every rule of that category but the declaring rule itself."""
    rules = list(rules)
    ids = {r.id for r in rules}
    problems: list[RuleProblem] = []
    edges: dict[str, list[str]] = {}
    for rule in rules:
        if rule.causes is None:
            continue
        for target in rule.causes.rules:
            if target not in ids:
                problems.append(RuleProblem(rule.source, rule.id, f"'causes.rules' names unknown rule {target!r}"))
            elif target == rule.id:
                problems.append(RuleProblem(rule.source, rule.id, "'causes.rules' names the rule itself"))
        edges[rule.id] = sorted(r.id for r in rules if r.id != rule.id and rule.causes.targets(r.id, r.category.value))
    # Cycles among the rules that declare causes (only they have outgoing edges); each reported once, by the
    # smallest rule id on it, with its path.
    by_id = {r.id: r for r in rules}
    reported: set[frozenset[str]] = set()
    for start in sorted(edges):
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        visited: set[str] = set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    members = frozenset(path)
                    if members not in reported and min(members) == start:
                        reported.add(members)
                        cycle = " -> ".join([*path, start])
                        problems.append(RuleProblem(by_id[start].source, start, f"'causes' makes a cycle: {cycle}"))
                elif nxt in edges and nxt not in visited:
                    visited.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return problems


def digest_rules(rules: Iterable[Rule]) -> str:
    canonical = [
        {
            "id": r.id,
            "title": r.title,
            "category": r.category.value,
            "component": r.component.value,
            "severity": r.severity.value,
            "match": [[e.pattern, e.caseless] for e in r.expressions],
            "scope": [list(r.scope.containers), list(r.scope.namespaces)],
            "transient": r.transient,
            "resolve_after": r.resolve_after,
            "remediation": dict(r.remediation),
            "references": list(r.references),
            "exclude": [[e.pattern, e.caseless] for e in r.exclude],
            # Only where declared, so the digest (and the compiled-database cache) of a catalogue without causes
            # stays what it was.
            **({"causes": _causes_canonical(r.causes)} if r.causes is not None else {}),
        }
        for r in rules
    ]
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def pattern_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_catalogue(directory: Path | str) -> Catalogue:
    """Read every *.yaml under ``directory``. Raises CatalogueError listing every problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CatalogueError([RuleProblem(str(directory), None, "not a directory")])
    files = pattern_files(directory)
    if not files:
        raise CatalogueError([RuleProblem(str(directory), None, "no *.yaml signature files")])
    rules: list[Rule] = []
    problems: list[RuleProblem] = []
    for path in files:
        file_rules, file_problems = _read_file(path)
        rules.extend(file_rules)
        problems.extend(file_problems)
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.id in seen:
            problems.append(RuleProblem(rule.source, rule.id, f"duplicate id (also in {seen[rule.id]})"))
        seen.setdefault(rule.id, rule.source)
    problems.extend(cause_problems(rules))
    if problems:
        raise CatalogueError(problems)
    rules.sort(key=lambda r: r.id)
    return Catalogue(rules=tuple(rules), digest=digest_rules(rules))


def default_patterns_dir() -> Path:
    """patterns/ of a checkout (editable install, tests), else the catalogue shipped in the package."""
    checkout = Path(__file__).resolve().parent.parent / "patterns"
    if checkout.is_dir() and (checkout.parent / "pyproject.toml").is_file():
        return checkout
    # Installed from a wheel: the catalogue is package data (analyzer/patterns). Wheels install unzipped,
    # so the resource is a real directory.
    return Path(str(resources.files("analyzer") / "patterns"))
