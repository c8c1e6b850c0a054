"""The Matcher's two stages (literal prefilter over every line, exact scan over the lines it flags) give what
an exact scan of each line alone gives: the same lines, owners and order, excludes applied."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.catalogue import load_catalogue
from analyzer.match import CompiledCatalogue, Matcher
from analyzer.match import scanner as scanner_module
from tests.conftest import PATTERNS


def per_line(matcher: Matcher, lines: Sequence[bytes]) -> list[tuple[int, tuple[str, ...]]]:
    """The reference: one exact Hyperscan scan per line (``Matcher.one``, excludes applied)."""
    return [(i, owners) for i, line in enumerate(lines) if (owners := matcher.one(line))]


@pytest.fixture(scope="module")
def matcher(shipped: CompiledCatalogue) -> Matcher:
    assert shipped.line_local and shipped.excludes  # the shipped catalogue: batch pairs, then excludes
    return Matcher(shipped)


@pytest.mark.parametrize("mix", ["corpus", "methods", "codes-flags", "control-plane", "json-full", "long-lines"])
def test_the_shipped_catalogue_on_the_corpus_and_every_mix(
    matcher: Matcher, corpus_module: ModuleType, mix: str
) -> None:
    sample = corpus_module.generate(20_000) if mix == "corpus" else corpus_module.generate_mix(mix, 20_000)
    got = matcher(sample.lines)
    assert len(got) > 50 and got == per_line(matcher, sample.lines) == matcher.exact(sample.lines)


def test_many_small_batches_give_the_same_answer(
    matcher: Matcher, corpus_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = corpus_module.generate(3_000).lines
    expected = per_line(matcher, lines)
    monkeypatch.setattr(scanner_module, "BATCH_LINES", 5)
    monkeypatch.setattr(scanner_module, "BATCH_BYTES", 300)
    assert matcher(lines) == expected


def _pieces() -> list[bytes]:
    """The rules' example lines (matching and not) and their exclude expressions' text (look-alikes)."""
    catalogue = load_catalogue(PATTERNS)
    out: set[bytes] = set()
    for rule in catalogue.rules:
        out.update(line.encode() for line in rule.examples_match + rule.examples_no_match)
        for e in rule.exclude:
            out.add(e.pattern.encode())
    return sorted(out)


_EXAMPLES = _pieces()
_noise = st.sampled_from([b" ", b"\t", b":", b'"', b"\\", b"x", b"error", b"failed", b"\x00", "é".encode(), b""])


@st.composite
def _lines(draw: st.DrawFn, literals: Sequence[bytes]) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            parts.append(draw(st.sampled_from(_EXAMPLES)))
        elif kind in (1, 2):
            lit = draw(st.sampled_from(literals))
            a = draw(st.integers(0, len(lit)))
            b = draw(st.integers(a, len(lit)))
            parts.append(lit if kind == 1 else lit[a:b])  # whole, or a fragment
        elif kind == 3:
            parts.append(draw(_noise))
        else:
            parts.append(draw(st.binary(max_size=12)).replace(b"\n", b" "))
    line = b"".join(parts)
    return line.swapcase() if draw(st.integers(0, 9)) == 0 else line  # the caseless literals


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_lines_with_literal_fragments(matcher: Matcher, data: st.DataObject) -> None:
    compiled = matcher.compiled
    literals = sorted({form for form, _, _ in compiled.windows} | {window for _, _, window in compiled.windows})
    lines = data.draw(st.lists(_lines(literals), max_size=40))
    assert matcher(lines) == per_line(matcher, lines)
