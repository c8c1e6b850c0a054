"""Catalogue -> Hyperscan databases, with a serialized cache keyed by content hash, and the rule lint."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hyperscan

from analyzer.errors import CatalogueError, RuleProblem
from analyzer.match.literals import can_cross_newline, fragment_options, trailing_unbounded_repeat, variants
from analyzer.match.ordinary import SAMPLE_VERSION, literal_rates
from analyzer.match.windows import Windowed, choose_windows, compile_windows
from analyzer.types import Catalogue, Expression

# Bump when the way databases are built changes, so stale cache entries are never loaded.
_BUILD_VERSION = "4"
# A prefilter literal found in more of the ordinary-traffic sample than this is refused: on some traffic mix
# it would make the prefilter decode most records for nothing.
COMMON_RATE = 0.01
_MODE = hyperscan.HS_MODE_BLOCK


def _flags(expression: Expression) -> int:
    return hyperscan.HS_FLAG_MULTILINE | (hyperscan.HS_FLAG_CASELESS if expression.caseless else 0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One expression in the database: who owns it (a rule id, or an internal ``signal:`` id)."""

    owner: str
    expression: Expression
    source: str


@dataclass(frozen=True, slots=True)
class Warning_:
    file: str
    rule_id: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: rule {self.rule_id}: warning: {self.message}"


class CompiledCatalogue:
    """The compiled databases for one catalogue (plus internal signals).

    ``db`` is the exact database over decoded log text; ``windowed`` is the literal prefilter over raw
    JSON-encoded records: every expression's match implies one of its required ``literals``, none of which
    contains a character a JSON encoder escapes, so a record without a literal hit cannot match. Its database
    holds a window of each long literal (``windows``), and a window's hit is confirmed against the full forms.
    """

    def __init__(
        self,
        entries: Sequence[Entry],
        db: Any,
        windowed: Windowed,
        literals: Sequence[tuple[bytes, bool]],
        windows: Sequence[tuple[bytes, bool, bytes]],
        key: str,
        from_cache: bool,
        excludes: Mapping[str, tuple[re.Pattern[bytes], ...]] | None = None,
    ) -> None:
        self.entries = tuple(entries)
        # rule id -> its exclude expressions, checked on a line after the rule matched it
        self.excludes: Mapping[str, tuple[re.Pattern[bytes], ...]] = dict(excludes or {})
        self.owners = tuple(e.owner for e in entries)
        self.db = db
        self.windowed = windowed
        self.literals = tuple(literals)  # (literal, caseless), one set per expression
        self.windows = tuple(windows)  # (form, caseless, window): one per prefilter form

        self.key = key
        self.from_cache = from_cache
        # No expression can span a newline: a batch scan's (expression, end) pairs are exact per line.
        self.line_local = not any(can_cross_newline(e.expression.pattern) for e in entries)

    @property
    def prefilter_forms(self) -> list[tuple[bytes, bool]]:
        """Every form the literals take in a raw record (a quote also as \\"): what the prefilter looks for."""
        return _raw_forms(self.literals)


def _raw_forms(literals: Sequence[tuple[bytes, bool]]) -> list[tuple[bytes, bool]]:
    """Every form the (literal, caseless) pairs take in a raw record: a quote also JSON-escaped (\\")."""
    return [(form, caseless) for lit, caseless in literals for form in variants(lit)]


def _excludes(catalogue: Catalogue) -> dict[str, tuple[re.Pattern[bytes], ...]]:
    return {
        rule.id: tuple(re.compile(e.pattern.encode(), re.M | (re.I if e.caseless else 0)) for e in rule.exclude)
        for rule in catalogue.rules
        if rule.exclude
    }


def _entries(catalogue: Catalogue, signals: Mapping[str, Expression]) -> list[Entry]:
    entries = [Entry(rule.id, e, rule.source) for rule in catalogue.rules for e in rule.expressions]
    entries.extend(Entry(sid, e, "<internal signals>") for sid, e in signals.items())
    return entries


def _cache_key(entries: Sequence[Entry]) -> str:
    spec = [[e.owner, e.expression.pattern, e.expression.caseless] for e in entries]
    version = getattr(hyperscan, "__version__", "?")
    raw = json.dumps([_BUILD_VERSION, SAMPLE_VERSION, version, spec], sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()


def _compile(patterns: Sequence[bytes], flags: Sequence[int], *, literal: bool = False) -> Any:
    db = hyperscan.Database(mode=_MODE)
    db.compile(
        expressions=list(patterns),
        ids=list(range(len(patterns))),
        elements=len(patterns),
        flags=list(flags),
        literal=literal,
    )
    return db


def compile_problems(entries: Sequence[Entry]) -> list[RuleProblem]:
    """Compile each expression alone: Hyperscan's own message, with the file and rule it belongs to."""
    problems = []
    for entry in entries:
        try:
            _compile([entry.expression.pattern.encode()], [_flags(entry.expression)])
        except hyperscan.error as exc:
            reason = exc.args[0] if exc.args else str(exc)
            problems.append(
                RuleProblem(entry.source, entry.owner, f"Hyperscan rejects {entry.expression.pattern!r}: {reason}")
            )
    return problems


def prefilter_literals(entries: Sequence[Entry]) -> tuple[list[tuple[bytes, bool]], list[RuleProblem]]:
    """Per expression, the rarest set of required literals in ordinary traffic; problems for expressions
    without one, or whose rarest is still common (the prefilter would then decode ordinary records)."""
    options = [fragment_options(e.expression.pattern, e.expression.caseless) for e in entries]
    rates = literal_rates(
        (fragment, e.expression.caseless)
        for e, sets in zip(entries, options, strict=True)
        for o in sets
        for fragment in o
    )
    chosen: set[tuple[bytes, bool]] = set()
    problems: list[RuleProblem] = []
    for entry, sets in zip(entries, options, strict=True):
        pattern, caseless = entry.expression.pattern, entry.expression.caseless
        if not sets:
            problems.append(
                RuleProblem(
                    entry.source,
                    entry.owner,
                    f"{pattern!r} has no required literal of 3+ characters that JSON does not escape (no quote, "
                    "backslash or slash) on every match path: every record would have to be decoded; "
                    "lead with a literal",
                )
            )
            continue

        def cost(o: frozenset[bytes], caseless: bool = caseless) -> tuple[float, int, int]:
            return (max(rates[(f, caseless)] for f in o), -min(map(len, o)), len(o))

        best = min(sets, key=cost)
        rate, common = max((rates[(f, caseless)], f) for f in best)
        if rate > COMMON_RATE:
            problems.append(
                RuleProblem(
                    entry.source,
                    entry.owner,
                    f"{pattern!r}: its best prefilter literal {common.decode()!r} is in {rate:.0%} of ordinary "
                    "traffic records (healthy access logs, info lines, pod metadata): on such traffic the "
                    "prefilter would decode them for nothing; anchor short tokens in their position or lead "
                    "with a rarer literal",
                )
            )
        chosen.update((f, caseless) for f in best)
    return sorted(_without_covered(chosen)), problems


def _without_covered(literals: set[tuple[bytes, bool]]) -> set[tuple[bytes, bool]]:
    """Drop each literal that holds another chosen one: a record with it is a candidate already. Hyperscan's
    literal matcher slows with the number of literals, not with how many expressions they serve."""
    kept: list[tuple[bytes, bool]] = []
    for lit, caseless in sorted(literals, key=lambda item: len(item[0])):
        if not any(_covers(k, k_caseless, lit, caseless) for k, k_caseless in kept):
            kept.append((lit, caseless))
    return set(kept)


def _covers(inner: bytes, inner_caseless: bool, outer: bytes, outer_caseless: bool) -> bool:
    """Does every record holding ``outer`` (as matched) hold ``inner`` (as matched)?"""
    if inner_caseless:
        return inner.lower() in outer.lower()
    return not outer_caseless and inner in outer


def lint(catalogue: Catalogue) -> list[Warning_]:
    """Warnings that do not stop a catalogue from loading but cost speed."""
    warnings = []
    for rule in catalogue.rules:
        for e in rule.expressions:
            if trailing_unbounded_repeat(e.pattern):
                warnings.append(
                    Warning_(
                        rule.source,
                        rule.id,
                        f"{e.pattern!r} ends in an unbounded repeat: trim it (same matching lines, "
                        "one match event instead of one per character)",
                    )
                )
    return warnings


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mesh-analyzer"


def _load_cached(path: Path) -> Any | None:
    try:
        blob = path.read_bytes()
        db = hyperscan.loadb(blob, _MODE)
        db.scratch = hyperscan.Scratch(db)
        return db
    except (OSError, hyperscan.error):
        return None


def _store_cached(path: Path, db: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(hyperscan.dumpb(db))
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation; a read-only home must not stop the analyzer


def compile_catalogue(
    catalogue: Catalogue,
    signals: Mapping[str, Expression] | None = None,
    *,
    cache_dir: Path | None = None,
) -> CompiledCatalogue:
    """Build (or load from cache) the databases. Raises CatalogueError naming file, rule and reason."""
    entries = _entries(catalogue, signals or {})
    if not entries:
        raise CatalogueError([RuleProblem("<catalogue>", None, "no expressions to compile")])
    key = _cache_key(entries)
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    exact_path, pre_path = cache / f"{key}.exact.hsdb", cache / f"{key}.prefilter.hsdb"
    literals_path = cache / f"{key}.literals.json"

    db, prefilter, cached = _load_cached(exact_path), _load_cached(pre_path), _load_literals(literals_path)
    from_cache = False
    if db is not None and prefilter is not None and cached is not None:
        from_cache = True
        literals, windows = cached
        windowed = compile_windows(windows, prefilter)
    else:
        # Checked before the (slower) compile: a refused literal is the more useful message.
        literals, problems = prefilter_literals(entries)
        if problems:
            raise CatalogueError(problems)
        try:
            db = _compile([e.expression.pattern.encode() for e in entries], [_flags(e.expression) for e in entries])
        except hyperscan.error as exc:
            problems = compile_problems(entries)
            if not problems:  # only the combination failed (e.g. too large)
                problems = [RuleProblem("<catalogue>", None, f"Hyperscan cannot compile the catalogue: {exc}")]
            raise CatalogueError(problems) from exc
        db.scratch = hyperscan.Scratch(db)
        encoded = _raw_forms(literals)
        chosen = choose_windows(encoded)
        windows = [(form, caseless, chosen[(form, caseless)]) for form, caseless in encoded]
        windowed = compile_windows(windows)
        _store_cached(exact_path, db)
        _store_cached(pre_path, windowed.db)
        _store_literals(literals_path, literals, windows)
    return CompiledCatalogue(entries, db, windowed, literals, windows, key, from_cache, _excludes(catalogue))


_Cached = tuple[list[tuple[bytes, bool]], list[tuple[bytes, bool, bytes]]]


def _load_literals(path: Path) -> _Cached | None:
    try:
        raw = json.loads(path.read_text())
        literals = [(bytes.fromhex(lit), bool(caseless)) for lit, caseless in raw["literals"]]
        windows = [
            (bytes.fromhex(form), bool(caseless), bytes.fromhex(window)) for form, caseless, window in raw["windows"]
        ]
        return literals, windows
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _store_literals(
    path: Path,
    literals: Sequence[tuple[bytes, bool]],
    windows: Sequence[tuple[bytes, bool, bytes]],
) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".literals-")
        with os.fdopen(fd, "w") as fh:
            json.dump(
                {
                    "literals": [[lit.hex(), caseless] for lit, caseless in literals],
                    "windows": [[form.hex(), caseless, window.hex()] for form, caseless, window in windows],
                },
                fh,
            )
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation
