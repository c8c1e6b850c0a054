from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.match.literals import can_cross_newline, required_fragments, trailing_unbounded_repeat


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("Failed to watch[^\\n]{0,400}dial tcp", {b"Failed to watch"}),
        ("(connection refused|i/o timeout)", {b"connection refused", b"o timeout"}),
        ('"level":"error"', {b'"level":"error"'}),  # a quote is usable: also looked for as \" (variants)
        ("level ?error", {b"error"}),  # "level" alone is a key of every Istio JSON line: no filter
        # Two letters are common in any mix (UT is in every PUT): a flag must be matched in its position.
        ('response_flags"?: ?"?(?:[A-Z]{1,5},){0,8}DC\\b', None),
        ("(?:UH|NR) x", None),
        ('" 503 (?:UH|NR) ', {b'" 503 '}),
        ("(?: UF | UF,|,UF |,UF,)", {b" UF ", b" UF,", b",UF ", b",UF,"}),  # a flag in its position
        ("ab[0-9]", None),
        ("(?:foo)+barbaz", {b"barbaz"}),
        ("iptables-restore: line [0-9]+ failed", {b"iptables-restore: line "}),
        ("ab(cd|ef)", None),  # no fragment of 3+ characters on every path
        ("x.*", None),
        ("(?:abc)?defg", {b"defg"}),  # an optional group is not required
    ],
)
def test_required_fragments(pattern: str, expected: set[bytes] | None) -> None:
    got = required_fragments(pattern)
    assert (None if got is None else set(got)) == expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("abc.*", True), ("abc+", True), ("ab(c|d+)", True), ("abc{2,}", True), ("abc.{0,9}", False), ("a+bc", False)],
)
def test_trailing_unbounded_repeat(pattern: str, expected: bool) -> None:
    assert trailing_unbounded_repeat(pattern) is expected


_pieces = st.sampled_from(["abc", "defg", "(?:xyz|uvw)", "[0-9]+", ".{0,5}", "(?:qq)?", "hijk|lmno", " ", "a*"])


_words = st.lists(
    st.sampled_from(["abc", "defg", "xyz", "uvw", "hijk", "lmno", "12", "qq", " ", "a", "b"]), max_size=12
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_pieces, min_size=1, max_size=5), _words.map("".join))
def test_every_match_contains_a_fragment(parts: list[str], text: str) -> None:
    pattern = "".join(parts)
    fragments = required_fragments(pattern)
    if fragments is None:
        return
    m = re.search(pattern.encode(), text.encode(), re.M)
    if m:
        assert any(f in m.group(0) for f in fragments), (pattern, text, fragments)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("abc", False),
        ("a\\sb", True),
        ("a[^x]b", True),
        ("a[^x\\n]b", False),
        ("a.{0,9}b", False),
        ("a\\Db", True),
        ("a\\db", False),
        ("(?:a|b\\n)", True),
        ("a[ \\t]b", False),
        ("x\\Bz", True),
        ("a\\w+b", False),
        ("\\bUH\\b", False),
    ],
)
def test_can_cross_newline(pattern: str, expected: bool) -> None:
    assert can_cross_newline(pattern) is expected


def test_a_literal_with_a_quote_is_looked_for_json_escaped_too() -> None:
    from analyzer.match.literals import variants

    assert variants(b'"UF') == (b'"UF', b'\\"UF')
    assert variants(b",UF") == (b",UF",)
