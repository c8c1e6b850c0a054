from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.errors import CatalogueError
from analyzer.match import Matcher, RecordPrefilter, compile_catalogue
from analyzer.match import scanner as scanner_module
from analyzer.types import Catalogue
from tests.match.helpers import catalogue, rule

CAT = catalogue(
    rule("refused", r"connect: connection refused"),
    rule("crossing", r"foo\sbar"),  # \s can cross the batch separator
    rule("anchored", r"^ERROR [a-z]+$"),
    rule("negated", r"start[^x]{0,20}stop"),  # [^x] can cross it too
    rule("nocase", r"not ready", caseless=True),
    rule("two", r"alpha beta", r"gamma delta"),
)


def reference(cat: Catalogue, line: bytes) -> set[str]:
    found = set()
    for r in cat.rules:
        for e in r.expressions:
            if re.search(e.pattern.encode(), line, re.M | (re.I if e.caseless else 0)):
                found.add(r.id)
    return found


@pytest.fixture(scope="module")
def matcher(tmp_path_factory: pytest.TempPathFactory) -> Matcher:
    return Matcher(compile_catalogue(CAT, cache_dir=tmp_path_factory.mktemp("hs")))


def test_no_match_across_the_separator(matcher: Matcher) -> None:
    lines = [b"xx foo", b"bar yy", b"start here", b"stop there", b"ERROR abc", b"ok"]
    got = {i: set(owners) for i, owners in matcher(lines)}
    assert got == {4: {"anchored"}}


def test_many_batches_give_the_same_answer(matcher: Matcher, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [f"line {i} connect: connection refused".encode() if i % 7 == 0 else b"quiet" for i in range(5000)]
    expected = [i for i in range(5000) if i % 7 == 0]
    assert [i for i, _ in matcher(lines)] == expected
    monkeypatch.setattr(scanner_module, "BATCH_LINES", 3)
    monkeypatch.setattr(scanner_module, "BATCH_BYTES", 50)
    assert [i for i, _ in matcher(lines)] == expected


def test_long_and_empty_lines(matcher: Matcher) -> None:
    big = b"x" * (3 << 20) + b" connect: connection refused"
    assert matcher([b"", big, b"", b"\x00\xff NOT READY"]) == [(1, ("refused",)), (3, ("nocase",))]


_tokens = st.sampled_from(
    [
        "foo",
        "bar",
        " ",
        "\t",
        "\n",
        "start",
        "stop",
        "x",
        "ERROR",
        "abc",
        "connect: connection refused",
        "not ready",
        "NOT Ready",
        "alpha beta",
        "gamma delta",
        "é",
        "\x00",
        "\r",
    ]
)
_lines = st.lists(_tokens, max_size=8).map(lambda parts: "".join(parts).encode())


@settings(max_examples=300, deadline=None)
@given(st.lists(_lines, max_size=30))
def test_batch_equals_reference(matcher: Matcher, lines: list[bytes]) -> None:
    got = {i: set(owners) for i, owners in matcher(lines)}
    expected = {i: ids for i, line in enumerate(lines) if (ids := reference(CAT, line))}
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(_lines, max_size=30))
def test_prefilter_never_misses_a_json_encoded_match(matcher: Matcher, lines: list[bytes]) -> None:
    prefilter = RecordPrefilter(matcher.compiled)
    texts = [line.decode("utf-8", "replace") for line in lines]
    records = [json.dumps({"log": t, "stream": "stdout"}, ensure_ascii=True).encode() for t in texts]
    candidates = set(prefilter(records).tolist())
    for i, text in enumerate(texts):
        if reference(CAT, text.encode()):
            assert i in candidates


def test_cache_round_trip(tmp_path: Path) -> None:
    first = compile_catalogue(CAT, cache_dir=tmp_path)
    second = compile_catalogue(CAT, cache_dir=tmp_path)
    assert not first.from_cache and second.from_cache
    lines = [b"foo bar", b"connect: connection refused", b"nothing"]
    assert Matcher(first)(lines) == Matcher(second)(lines)


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    compiled = compile_catalogue(CAT, cache_dir=tmp_path)
    for path in tmp_path.iterdir():
        path.write_bytes(b"garbage")
    again = compile_catalogue(CAT, cache_dir=tmp_path)
    assert not again.from_cache and again.key == compiled.key
    assert Matcher(again)([b"foo bar"]) == [(0, ("crossing",))]


def test_compile_error_names_file_rule_and_reason(tmp_path: Path) -> None:
    bad = catalogue(rule("fine", "abc"), rule("lookahead", "abc(?=def)", source="patterns/bad.yaml"))
    with pytest.raises(CatalogueError) as info:
        compile_catalogue(bad, cache_dir=tmp_path)
    [problem] = info.value.problems
    assert problem.file == "patterns/bad.yaml" and problem.rule_id == "lookahead"
    assert "not supported" in problem.reason


def test_an_expression_without_a_safe_literal_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError) as info:
        compile_catalogue(catalogue(rule("fine", "connection refused"), rule("short", "a[0-9]b")), cache_dir=tmp_path)
    [problem] = info.value.problems
    assert problem.rule_id == "short" and "no required literal of 3+ characters" in problem.reason


@pytest.mark.parametrize(
    ("pattern", "common"),
    [
        (r"\b(?:UT|UF)\b", None),  # two-letter flags are no literal at all: refused as literal-less
        (r"PUT [a-z]", "PUT "),  # in every PUT request of the ordinary sample
        (r"istio-(?:init|proxy)\b", "istio-"),  # every pod's sidecar annotation names both
    ],
)
def test_a_literal_common_in_ordinary_traffic_is_refused(tmp_path: Path, pattern: str, common: str | None) -> None:
    with pytest.raises(CatalogueError) as info:
        compile_catalogue(catalogue(rule("common", pattern)), cache_dir=tmp_path)
    [problem] = info.value.problems
    assert problem.rule_id == "common"
    if common is not None:
        assert f"best prefilter literal {common!r} is in" in problem.reason and "ordinary" in problem.reason


def test_the_rarest_literal_is_chosen_and_the_choice_is_cached(tmp_path: Path) -> None:
    # Both sides are required; "istio-init" is in every record's annotations, "Back-off restarting" in none.
    cat = catalogue(rule("backoff", r"istio-init.{0,80}Back-off restarting"))
    compiled = compile_catalogue(cat, cache_dir=tmp_path)
    assert compiled.literals == ((b"Back-off restarting", False),)
    again = compile_catalogue(cat, cache_dir=tmp_path)
    assert again.from_cache and again.literals == compiled.literals
    assert RecordPrefilter(again)(
        [b'{"log":"istio-init ok"}', b'{"log":"istio-init Back-off restarting"}']
    ).tolist() == [1]


LOCAL = catalogue(
    rule("refused", r"connect: connection refused"),
    rule("anchored", r"^ERROR [a-z]+$"),
    rule("bounded", r"start[^x\n]{0,20}stop"),
    rule("nocase", r"not ready", caseless=True),
    rule("two", r"alpha beta", r"gamma delta"),
    rule("word", r"\bfoo\b"),
)


@pytest.fixture(scope="module")
def local_matcher(tmp_path_factory: pytest.TempPathFactory) -> Matcher:
    compiled = compile_catalogue(LOCAL, cache_dir=tmp_path_factory.mktemp("hs-local"))
    assert compiled.line_local  # the fast path: no rescans
    return Matcher(compiled)


@settings(max_examples=300, deadline=None)
@given(st.lists(_lines, max_size=30))
def test_line_local_batch_equals_reference(local_matcher: Matcher, lines: list[bytes]) -> None:
    got = {i: set(owners) for i, owners in local_matcher(lines)}
    expected = {i: ids for i, line in enumerate(lines) if (ids := reference(LOCAL, line))}
    assert got == expected


def test_line_local_many_batches(local_matcher: Matcher, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [b"foo alpha beta" if i % 5 == 0 else b"start...stop" if i % 5 == 1 else b"-" for i in range(3000)]
    expected = local_matcher(lines)
    monkeypatch.setattr(scanner_module, "BATCH_LINES", 7)
    monkeypatch.setattr(scanner_module, "BATCH_BYTES", 64)
    assert local_matcher(lines) == expected
    assert [i for i, _ in expected] == [i for i in range(3000) if i % 5 in (0, 1)]
    assert expected[0] == (0, ("two", "word"))


def test_exclude_drops_the_rule_on_a_look_alike_only(tmp_path: Path) -> None:
    from dataclasses import replace

    from analyzer.types import Expression

    gated = replace(
        rule("not-ready", r"Envoy proxy is NOT ready"), exclude=(Expression(r"draining|terminat", caseless=True),)
    )
    cat = catalogue(gated, rule("refused", r"connection refused"))
    m = Matcher(compile_catalogue(cat, cache_dir=tmp_path))
    problem = b"Envoy proxy is NOT ready: config not received from XDS server"
    benign = b"Envoy proxy is NOT ready: pod is Draining; connection refused"
    assert m.one(problem) == ("not-ready",)
    assert m.one(benign) == ("refused",)  # only the excluded rule is dropped, not the line
    assert m([problem, benign, b"quiet"]) == [(0, ("not-ready",)), (1, ("refused",))]
    assert m([benign.replace(b"; connection refused", b"")]) == []
