"""Quality of the catalogue on a held-out labelled corpus of real lines: precision, recall, benign lines flagged.

Every line is decoded as the service decodes it (``Decoder(Format.AUTO)``), matched with ``Matcher`` (so a
rule's ``exclude`` expressions apply) and filtered by each rule's component/scope like ``Pipeline`` does,
with the container the corpus's component runs as. The predicted categories of a line are those of the rules
left. A problem line is recalled when its label is among them; a benign line is flagged when any is. The
gated rules (``analyzer.correlation.GATED_RULES``) are taken on the line alone, without the readiness gate.

    .venv/bin/python benchmarks/quality.py                  # benchmarks/quality/labelled.jsonl, patterns/
    .venv/bin/python benchmarks/quality.py --misses         # also list missed problem lines and flagged benign ones
    .venv/bin/python benchmarks/quality.py --corpus benchmarks/quality/holdout.jsonl   # the second held-out split
    .venv/bin/python benchmarks/quality.py --both           # headline figures of labelled.jsonl and holdout.jsonl

It is a report: the exit status is 0 whatever the figures; PASS/MISS lines compare them with the targets.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analyzer.types import Category  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parent / "quality" / "labelled.jsonl"
# The second held-out split: measured once at the end, never used to write or tune rules (quality/README.md).
DEFAULT_HOLDOUT = Path(__file__).resolve().parent / "quality" / "holdout.jsonl"
DEFAULT_PATTERNS = REPO / "patterns"
BENIGN = "benign"
NONE = "none"
# The catalogue's categories; "unclassified" is the service's bucket for errors no rule knows, never a label.
CATEGORIES = tuple(c.value for c in Category if c is not Category.UNCLASSIFIED)
LABELS = (*CATEGORIES, BENIGN)
COMPONENTS = ("istiod", "istio-proxy", "istio-init", "istio-cni", "ztunnel", "kubernetes-event", "app")
TARGET_RECALL = 0.95
TARGET_BENIGN_FLAGGED = 0.02

# The container each corpus component runs as (what Fluent Bit's kubernetes filter would report), so rules'
# component filters apply as in the service. ztunnel's and waypoints' container is called istio-proxy too.
# Events carry no container.
CONTAINER_OF: Mapping[str, str | None] = {
    "istiod": "discovery",
    "istio-proxy": "istio-proxy",
    "istio-init": "istio-init",
    "istio-cni": "install-cni",
    "ztunnel": "istio-proxy",
    "kubernetes-event": None,
    "app": "app",
}


@dataclass(frozen=True, slots=True)
class Item:
    line: str
    label: str
    component: str
    source: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class Scored:
    """One corpus line with what the catalogue said about it."""

    item: Item
    categories: frozenset[str]  # predicted categories (empty: no rule)
    rules: tuple[str, ...] = ()
    decode_error: str = ""


@dataclass(slots=True)
class CategoryScore:
    support: int = 0  # lines labelled with the category
    tp: int = 0  # labelled and predicted
    fp: int = 0  # predicted, labelled otherwise (benign included)

    @property
    def fn(self) -> int:
        return self.support - self.tp

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / self.support if self.support else None


@dataclass(slots=True)
class Score:
    per_category: dict[str, CategoryScore] = field(default_factory=dict)
    problems: int = 0
    recalled: int = 0  # problem lines whose label is among the predicted categories
    detected: int = 0  # problem lines with any prediction (right category or not)
    benign: int = 0
    benign_flagged: int = 0
    # label -> predicted category or "none" -> lines (a line predicted as two categories counts in both columns)
    confusion: dict[str, Counter[str]] = field(default_factory=dict)
    per_component: dict[str, tuple[int, int]] = field(default_factory=dict)  # component -> (recalled, problems)

    @property
    def recall(self) -> float | None:
        return self.recalled / self.problems if self.problems else None

    @property
    def benign_flagged_share(self) -> float | None:
        return self.benign_flagged / self.benign if self.benign else None


def score(scored: Iterable[tuple[str, str, Iterable[str]]]) -> Score:
    """(label, component, predicted categories) per line -> the figures. Pure, so a test can check it."""
    out = Score(per_category={c: CategoryScore() for c in CATEGORIES})
    components: dict[str, list[int]] = {}
    for label, component, predicted_it in scored:
        predicted = set(predicted_it)
        row = out.confusion.setdefault(label, Counter())
        for p in sorted(predicted) or [NONE]:
            row[p] += 1
        for p in predicted:
            if p != label and p in out.per_category:
                out.per_category[p].fp += 1
        if label == BENIGN:
            out.benign += 1
            out.benign_flagged += bool(predicted)
            continue
        cat = out.per_category.setdefault(label, CategoryScore())
        cat.support += 1
        hit = label in predicted
        cat.tp += hit
        out.problems += 1
        out.recalled += hit
        out.detected += bool(predicted)
        counts = components.setdefault(component, [0, 0])
        counts[0] += hit
        counts[1] += 1
    out.per_component = {c: (r, n) for c, (r, n) in sorted(components.items())}
    return out


def load_corpus(path: Path) -> list[Item]:
    items = []
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            obj = json.loads(raw)
            try:
                items.append(Item(obj["line"], obj["label"], obj["component"], obj["source"], obj.get("note", "")))
            except KeyError as exc:
                raise SystemExit(f"{path}:{n}: missing field {exc}") from exc
    return items


def predict(items: Sequence[Item], patterns: Path) -> list[Scored]:
    """Decode, match and filter every line as the service does; the categories of the rules left."""
    from analyzer.catalogue import load_catalogue
    from analyzer.decode import Decoder, Format
    from analyzer.match import Matcher, compile_catalogue
    from analyzer.types import LogRecord

    catalogue = load_catalogue(patterns)
    rules = catalogue.by_id()
    matcher = Matcher(compile_catalogue(catalogue))
    out = []
    for item in items:
        # A fresh decoder per line: the lines are unrelated (no CRI partials to join).
        decoded = Decoder(Format.AUTO)(item.line.encode())
        if not isinstance(decoded, LogRecord):
            reason = "partial CRI line" if decoded is None else f"{decoded.reason}: {decoded.detail}"
            out.append(Scored(item, frozenset(), (), reason))
            continue
        container = decoded.container if decoded.container is not None else CONTAINER_OF.get(item.component)
        kept = [
            rule
            for owner in matcher.one(decoded.line)
            if (rule := rules.get(owner)) is not None  # internal signals are not rules
            and rule.applies_to(container, decoded.namespace)
        ]
        out.append(Scored(item, frozenset(r.category.value for r in kept), tuple(r.id for r in kept)))
    return out


def _pct(x: float | None) -> str:
    return "   -" if x is None else f"{x:5.3f}"


def report(scored: Sequence[Scored], s: Score, *, misses: bool, corpus: Path, patterns: Path) -> str:
    lines: list[str] = []
    add = lines.append
    labels = Counter(x.item.label for x in scored)
    add(f"quality: corpus {corpus} ({len(scored)} lines: {s.problems} problem, {s.benign} benign); patterns {patterns}")
    undecoded = [x for x in scored if x.decode_error]
    if undecoded:
        add(f"note: {len(undecoded)} line(s) the decoder rejected (counted as no prediction)")
    add("")
    add(f"{'category':<24} {'precision':>9} {'recall':>7} {'support':>7} {'tp':>4} {'fp':>4} {'fn':>4}")
    add("-" * 65)
    for cat, c in s.per_category.items():
        add(f"{cat:<24} {_pct(c.precision):>9} {_pct(c.recall):>7} {c.support:>7} {c.tp:>4} {c.fp:>4} {c.fn:>4}")
    add("")
    add(f"category recall on problem lines: {_pct(s.recall)} ({s.recalled}/{s.problems})")
    detected = s.detected / s.problems if s.problems else None
    add(f"problem lines flagged with any category: {_pct(detected)} ({s.detected}/{s.problems})")
    add(f"benign lines flagged: {_pct(s.benign_flagged_share)} ({s.benign_flagged}/{s.benign})")
    add("")
    add("per-component recall (problem lines):")
    for comp, (hit, n) in s.per_component.items():
        add(f"  {comp:<18} {_pct(hit / n if n else None)} ({hit}/{n})")
    add("")
    columns = [*CATEGORIES, NONE]
    short = {c: "".join(w[0] for w in c.split("-")) if "-" in c else c[:4] for c in columns}
    add("confusion (rows: label, columns: predicted category; a line with several predictions counts in each):")
    add("  " + "  ".join(f"{short[c]}={c}" for c in columns if short[c] != c))
    add(f"{'label':<24}" + "".join(f"{short[c]:>6}" for c in columns))
    for label in LABELS:
        if not labels.get(label):
            continue
        row = s.confusion.get(label, Counter())
        add(f"{label:<24}" + "".join(f"{row.get(c, 0) or '.':>6}" for c in columns))
    add("")
    ok_recall = s.recall is not None and s.recall >= TARGET_RECALL
    ok_benign = s.benign_flagged_share is not None and s.benign_flagged_share <= TARGET_BENIGN_FLAGGED
    add(f"{'PASS' if ok_recall else 'MISS'}  category recall >= {TARGET_RECALL}: {_pct(s.recall)}")
    add(
        f"{'PASS' if ok_benign else 'MISS'}  benign lines flagged <= {TARGET_BENIGN_FLAGGED:.0%}: "
        f"{_pct(s.benign_flagged_share)}"
    )
    if misses:
        add("")
        add("missed problem lines (label / predicted / component / source):")
        for x in scored:
            if x.item.label != BENIGN and x.item.label not in x.categories:
                got = ",".join(sorted(x.categories)) or NONE
                add(f"  [{x.item.label} / {got} / {x.item.component}] {x.item.source}")
                add(f"      {x.item.line[:300]!r}" + (f"  (decode: {x.decode_error})" if x.decode_error else ""))
        add("")
        add("flagged benign lines (categories / rules / source):")
        for x in scored:
            if x.item.label == BENIGN and x.categories:
                add(f"  [{','.join(sorted(x.categories))} / {','.join(x.rules)}] {x.item.source}")
                add(f"      {x.item.line[:300]!r}")
    return "\n".join(lines)


def compare(named: Sequence[tuple[str, Score]]) -> str:
    """The headline figures of several corpora side by side (one column per corpus). Pure, so a test can check it."""

    def frac(value: float | None, num: int, den: int) -> str:
        return f"{_pct(value).strip()} ({num}/{den})"

    rows: list[tuple[str, list[str]]] = [
        ("lines (problem/benign)", [f"{s.problems + s.benign} ({s.problems}/{s.benign})" for _, s in named]),
        ("category recall", [frac(s.recall, s.recalled, s.problems) for _, s in named]),
        (
            "flagged with any category",
            [frac(s.detected / s.problems if s.problems else None, s.detected, s.problems) for _, s in named],
        ),
        ("benign lines flagged", [frac(s.benign_flagged_share, s.benign_flagged, s.benign) for _, s in named]),
        ("", []),
        ("per-category recall:", []),
    ]
    for cat in CATEGORIES:
        cells = []
        for _, s in named:
            c = s.per_category.get(cat, CategoryScore())
            cells.append(frac(c.recall, c.tp, c.support) if c.support else "-")
        rows.append((f"  {cat}", cells))
    width = 2 + max([len(name) for name, _ in named] + [len(c) for _, cells in rows for c in cells])
    lines = [f"{'':<28}" + "".join(f"{name:>{width}}" for name, _ in named), "-" * (28 + width * len(named))]
    lines += [f"{title:<28}" + "".join(f"{c:>{width}}" for c in cells) for title, cells in rows]
    lines.append("")
    for name, s in named:
        ok_recall = s.recall is not None and s.recall >= TARGET_RECALL
        ok_benign = s.benign_flagged_share is not None and s.benign_flagged_share <= TARGET_BENIGN_FLAGGED
        lines.append(
            f"{name}: {'PASS' if ok_recall else 'MISS'} category recall >= {TARGET_RECALL}; "
            f"{'PASS' if ok_benign else 'MISS'} benign lines flagged <= {TARGET_BENIGN_FLAGGED:.0%}"
        )
    return "\n".join(line.rstrip() for line in lines)


def _score_corpus(corpus: Path, patterns: Path) -> tuple[list[Scored], Score]:
    scored = predict(load_corpus(corpus), patterns)
    return scored, score((x.item.label, x.item.component, x.categories) for x in scored)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--patterns", type=Path, default=DEFAULT_PATTERNS)
    ap.add_argument("--misses", action="store_true", help="list missed problem lines and flagged benign lines")
    ap.add_argument(
        "--both",
        action="store_true",
        help=f"headline figures of {DEFAULT_CORPUS.name} and {DEFAULT_HOLDOUT.name} side by side",
    )
    args = ap.parse_args(argv)
    if args.both:
        if args.misses:
            ap.error("--misses lists one corpus; run it with --corpus instead of --both")
        named = [(path.stem, _score_corpus(path, args.patterns)[1]) for path in (DEFAULT_CORPUS, DEFAULT_HOLDOUT)]
        print(f"quality: {DEFAULT_CORPUS.name} vs {DEFAULT_HOLDOUT.name}; patterns {args.patterns}")
        print("")
        print(compare(named))
        return 0
    items = load_corpus(args.corpus)
    scored = predict(items, args.patterns)
    s = score((x.item.label, x.item.component, x.categories) for x in scored)
    print(report(scored, s, misses=args.misses, corpus=args.corpus, patterns=args.patterns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
