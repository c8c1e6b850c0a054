"""The held-out quality corpora (benchmarks/quality/labelled.jsonl and the second split holdout.jsonl) are well
formed and disjoint, and benchmarks/quality.py scores correctly.

No threshold on the catalogue's score here: that is a report (``benchmarks/quality.py``), not a test.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "quality.py"
CORPUS = ROOT / "benchmarks" / "quality" / "labelled.jsonl"
HOLDOUT = ROOT / "benchmarks" / "quality" / "holdout.jsonl"
SHARED_CANDIDATES = (
    ROOT / "tests" / "data" / "istio_real_lines.jsonl",
    ROOT.parent / "shared" / "corpus" / "istio_real_lines.jsonl",
)
FIELDS = {"line", "label", "component", "source", "note"}
MIN_LINES, MIN_PROBLEMS, MIN_BENIGN = 400, 250, 150
MIN_PER_CATEGORY = 8
HOLDOUT_MIN_LINES, HOLDOUT_MIN_PROBLEMS, HOLDOUT_MIN_BENIGN = 250, 150, 100
URL = re.compile(r"^https?://\S+$")


def _load_script() -> ModuleType:
    name = "benchmarks_quality"  # not "quality": benchmarks/quality/ is a data directory
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


quality = _load_script()


def _read_rows(path: Path) -> list[dict[str, str]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            assert raw.strip(), f"{path.name} line {n}: blank line"
            obj = json.loads(raw)
            assert isinstance(obj, dict), f"{path.name} line {n}: not an object"
            out.append(obj)
    return out


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return _read_rows(CORPUS)


@pytest.fixture(scope="module")
def holdout_rows() -> list[dict[str, str]]:
    return _read_rows(HOLDOUT)


def _norm(line: str) -> str:
    return " ".join(line.split())


def _shared_lines() -> set[str] | None:
    shared_path = next((p for p in SHARED_CANDIDATES if p.is_file()), None)
    if shared_path is None:
        return None
    with shared_path.open(encoding="utf-8") as fh:
        return {_norm(json.loads(raw)["line"]) for raw in fh if raw.strip()}


def test_every_row_is_well_formed(rows: list[dict[str, str]]) -> None:
    _assert_well_formed(rows)


def _assert_well_formed(rows: list[dict[str, str]]) -> None:
    for n, row in enumerate(rows, 1):
        assert set(row) <= FIELDS, f"row {n}: unknown fields {set(row) - FIELDS}"
        assert {"line", "label", "component", "source"} <= set(row), f"row {n}: missing fields"
        assert all(isinstance(v, str) for v in row.values()), f"row {n}: non-string field"
        assert row["line"].strip(), f"row {n}: empty line"
        assert "\n" not in row["line"], f"row {n}: a corpus entry is one log line"
        assert row["label"] in quality.LABELS, f"row {n}: label {row['label']!r}"
        assert row["component"] in quality.COMPONENTS, f"row {n}: component {row['component']!r}"
        assert URL.match(row["source"]), f"row {n}: source {row['source']!r} is not a URL"


def test_no_duplicate_lines(rows: list[dict[str, str]]) -> None:
    dup = [line for line, k in Counter(_norm(r["line"]) for r in rows).items() if k > 1]
    assert not dup, dup[:3]


def test_no_line_from_the_shared_corpus(rows: list[dict[str, str]]) -> None:
    shared = _shared_lines()
    if shared is None:
        pytest.skip("shared corpus not available")
    overlap = [r["line"] for r in rows if _norm(r["line"]) in shared]
    assert not overlap, overlap[:3]


def test_counts_meet_the_minimums(rows: list[dict[str, str]]) -> None:
    labels = Counter(r["label"] for r in rows)
    components = Counter(r["component"] for r in rows)
    problems = sum(k for label, k in labels.items() if label != quality.BENIGN)
    assert len(rows) >= MIN_LINES
    assert problems >= MIN_PROBLEMS
    assert labels[quality.BENIGN] >= MIN_BENIGN
    for category in quality.CATEGORIES:
        assert labels[category] >= MIN_PER_CATEGORY, f"{category}: {labels[category]} lines"
    # Kubernetes events and ambient mode are in, with problem lines of their own.
    problem_components = Counter(r["component"] for r in rows if r["label"] != quality.BENIGN)
    for component in ("kubernetes-event", "ztunnel", "istio-cni", "istio-init", "istiod", "istio-proxy"):
        assert problem_components[component] >= 5, f"{component}: {problem_components[component]} problem lines"
    assert components["app"] >= 1


# The second split (holdout.jsonl): measured once at the end, never used to write rules; see quality/README.md.


def test_holdout_rows_are_well_formed(holdout_rows: list[dict[str, str]]) -> None:
    _assert_well_formed(holdout_rows)


def test_holdout_has_no_duplicate_lines(holdout_rows: list[dict[str, str]]) -> None:
    dup = [line for line, k in Counter(_norm(r["line"]) for r in holdout_rows).items() if k > 1]
    assert not dup, dup[:3]


def test_holdout_is_disjoint_from_labelled_and_shared(
    rows: list[dict[str, str]], holdout_rows: list[dict[str, str]]
) -> None:
    labelled = {_norm(r["line"]) for r in rows}
    overlap = [r["line"] for r in holdout_rows if _norm(r["line"]) in labelled]
    assert not overlap, overlap[:3]
    shared = _shared_lines()
    if shared is None:
        pytest.skip("shared corpus not available")
    overlap = [r["line"] for r in holdout_rows if _norm(r["line"]) in shared]
    assert not overlap, overlap[:3]


def test_holdout_counts_meet_the_minimums(holdout_rows: list[dict[str, str]]) -> None:
    labels = Counter(r["label"] for r in holdout_rows)
    problems = sum(k for label, k in labels.items() if label != quality.BENIGN)
    assert len(holdout_rows) >= HOLDOUT_MIN_LINES
    assert problems >= HOLDOUT_MIN_PROBLEMS
    assert labels[quality.BENIGN] >= HOLDOUT_MIN_BENIGN
    for category in quality.CATEGORIES:
        assert labels[category] >= MIN_PER_CATEGORY, f"{category}: {labels[category]} lines"
    problem_components = Counter(r["component"] for r in holdout_rows if r["label"] != quality.BENIGN)
    for component in ("kubernetes-event", "ztunnel", "istio-cni", "istio-init", "istiod", "istio-proxy", "app"):
        assert problem_components[component] >= 5, f"{component}: {problem_components[component]} problem lines"


def test_holdout_loads(holdout_rows: list[dict[str, str]]) -> None:
    items = quality.load_corpus(HOLDOUT)
    assert [i.line for i in items] == [r["line"] for r in holdout_rows]
    assert quality.DEFAULT_HOLDOUT == HOLDOUT


def test_load_corpus_reads_every_row(rows: list[dict[str, str]]) -> None:
    items = quality.load_corpus(CORPUS)
    assert len(items) == len(rows)
    assert items[0].line == rows[0]["line"] and items[0].label == rows[0]["label"]


def test_unclassified_is_not_a_label() -> None:
    assert "unclassified" not in quality.LABELS
    assert quality.BENIGN in quality.LABELS


# A tiny hand-made example: (label, component, predicted categories).
EXAMPLE = [
    ("cni", "istio-cni", {"cni"}),  # recalled
    ("cni", "kubernetes-event", set()),  # missed, nothing predicted
    ("certificates", "istio-proxy", {"certificates", "xds-config"}),  # recalled; also a false xds-config
    ("xds-config", "istio-proxy", {"proxy-readiness"}),  # missed: wrong category
    ("benign", "istio-proxy", set()),
    ("benign", "istiod", {"cni"}),  # flagged; a false cni
]


def test_score_per_category() -> None:
    s = quality.score(EXAMPLE)
    cni, cert, xds, ready = (s.per_category[c] for c in ("cni", "certificates", "xds-config", "proxy-readiness"))
    assert (cni.support, cni.tp, cni.fp, cni.fn) == (2, 1, 1, 1)
    assert cni.precision == 0.5 and cni.recall == 0.5
    assert (cert.support, cert.tp, cert.fp) == (1, 1, 0)
    assert cert.precision == 1.0 and cert.recall == 1.0
    assert (xds.support, xds.tp, xds.fp) == (1, 0, 1)
    assert xds.precision == 0.0 and xds.recall == 0.0
    assert (ready.support, ready.tp, ready.fp) == (0, 0, 1)
    assert ready.precision == 0.0 and ready.recall is None
    untouched = s.per_category["injection"]
    assert untouched.precision is None and untouched.recall is None
    assert set(s.per_category) == set(quality.CATEGORIES)


def test_score_totals() -> None:
    s = quality.score(EXAMPLE)
    assert (s.problems, s.recalled, s.detected) == (4, 2, 3)
    assert s.recall == 0.5
    assert (s.benign, s.benign_flagged) == (2, 1)
    assert s.benign_flagged_share == 0.5


def test_score_confusion_and_components() -> None:
    s = quality.score(EXAMPLE)
    assert s.confusion["cni"] == Counter({"cni": 1, "none": 1})
    assert s.confusion["certificates"] == Counter({"certificates": 1, "xds-config": 1})
    assert s.confusion["xds-config"] == Counter({"proxy-readiness": 1})
    assert s.confusion["benign"] == Counter({"none": 1, "cni": 1})
    assert s.per_component == {"istio-cni": (1, 1), "istio-proxy": (1, 2), "kubernetes-event": (0, 1)}


def test_score_of_nothing() -> None:
    s = quality.score([])
    assert s.recall is None and s.benign_flagged_share is None and s.problems == 0


def test_report_marks_targets() -> None:
    scored = [
        quality.Scored(quality.Item("x", label, component, "https://example.org"), frozenset(pred))
        for label, component, pred in EXAMPLE
    ]
    s = quality.score((x.item.label, x.item.component, x.categories) for x in scored)
    text = quality.report(scored, s, misses=True, corpus=CORPUS, patterns=ROOT / "patterns")
    assert "MISS  category recall >= 0.95" in text
    assert "MISS  benign lines flagged <= 2%" in text
    assert "missed problem lines" in text and "flagged benign lines" in text

    perfect = [
        quality.Scored(quality.Item("x", "cni", "istio-cni", "u"), frozenset({"cni"})),
        quality.Scored(quality.Item("y", "benign", "app", "u"), frozenset()),
    ]
    s = quality.score((x.item.label, x.item.component, x.categories) for x in perfect)
    text = quality.report(perfect, s, misses=False, corpus=CORPUS, patterns=ROOT / "patterns")
    assert "PASS  category recall" in text and "PASS  benign lines flagged" in text


def test_main_runs_on_a_small_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.jsonl"
    with CORPUS.open(encoding="utf-8") as src:
        corpus.write_text("".join(src.readline() for _ in range(5)), encoding="utf-8")
    assert quality.main(["--corpus", str(corpus), "--misses"]) == 0
    out = capsys.readouterr().out
    assert "category recall on problem lines" in out
    assert re.search(r"^(PASS|MISS)  benign lines flagged", out, re.M)


def test_compare_puts_corpora_side_by_side() -> None:
    a = quality.score(EXAMPLE)
    b = quality.score([("cni", "istio-cni", {"cni"}), ("benign", "app", set())])
    text = quality.compare([("labelled", a), ("holdout", b)])
    header = text.splitlines()[0]
    assert header.index("labelled") < header.index("holdout")
    recall = next(line for line in text.splitlines() if line.startswith("category recall"))
    assert "0.500 (2/4)" in recall and "1.000 (1/1)" in recall
    benign = next(line for line in text.splitlines() if line.startswith("benign lines flagged"))
    assert "0.500 (1/2)" in benign and "0.000 (0/1)" in benign
    injection = next(line for line in text.splitlines() if line.strip().startswith("injection"))
    assert injection.split()[1:] == ["-", "-"]  # no injection lines in either
    assert "holdout: PASS category recall >= 0.95; PASS benign lines flagged <= 2%" in text
    assert "labelled: MISS category recall" in text


def test_main_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    small = {}
    for name, path in (("labelled", CORPUS), ("holdout", HOLDOUT)):
        small[name] = tmp_path / f"{name}.jsonl"
        with path.open(encoding="utf-8") as src:
            small[name].write_text("".join(src.readline() for _ in range(4)), encoding="utf-8")
    monkeypatch.setattr(quality, "DEFAULT_CORPUS", small["labelled"])
    monkeypatch.setattr(quality, "DEFAULT_HOLDOUT", small["holdout"])
    assert quality.main(["--both"]) == 0
    out = capsys.readouterr().out
    assert "labelled.jsonl vs holdout.jsonl" in out
    assert re.search(r"^category recall .*\(\d+/\d+\).*\(\d+/\d+\)", out, re.M)
    with pytest.raises(SystemExit):
        quality.main(["--both", "--misses"])
