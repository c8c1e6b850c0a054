"""The matching contract, proven against a plain reference: a rule matches a record if and only if one of
its expressions matches the decoded log text (Python ``re`` on the UTF-8 bytes, per line).

Checked on the real corpus and on generated lines with the characters that break naive designs: JSON
escapes (quotes, backslashes, TABs as ``\\t`` and ``\\u0009``), non-ASCII, NUL, CR and embedded newlines;
through the plain-line batch matcher and through the raw Fluent Bit record path (literal prefilter over the
encoded bytes, decode only candidates, exact rescan).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.catalogue import load_catalogue
from analyzer.decode import record_from_mapping
from analyzer.match import CompiledCatalogue, Matcher, RecordPrefilter, compile_catalogue
from analyzer.pipeline import Pipeline
from analyzer.types import Catalogue, LogRecord
from tests.conftest import PATTERNS, corpus_lines

Reference = Callable[[bytes], set[str]]


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(PATTERNS)


@pytest.fixture(scope="module")
def compiled(catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory) -> CompiledCatalogue:
    return compile_catalogue(catalogue, cache_dir=tmp_path_factory.mktemp("hs"))


@pytest.fixture(scope="module")
def reference(catalogue: Catalogue) -> Reference:
    compiled_re = [
        (rule.id, re.compile(e.pattern.encode(), re.M | (re.I if e.caseless else 0)))
        for rule in catalogue.rules
        for e in rule.expressions
    ]

    excludes = {
        rule.id: [re.compile(e.pattern.encode(), re.M | (re.I if e.caseless else 0)) for e in rule.exclude]
        for rule in catalogue.rules
    }

    def ids(text: bytes) -> set[str]:
        hits = {rule_id for rule_id, rx in compiled_re if rx.search(text)}
        return {rule_id for rule_id in hits if not any(rx.search(text) for rx in excludes[rule_id])}

    return ids


# -- encoders: how real shippers write the same text ------------------------------------------------------


def fluentbit_escape(text: str) -> str:
    """Fluent Bit's JSON string encoder: quote, backslash, control characters and non-ASCII as \\uXXXX."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif code > 0x7F:
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def fluentbit_record(text: str) -> bytes:
    return (
        '{"@timestamp":1732500000.123456,"time":"2024-11-25T02:00:00.123456789Z","stream":"stdout","_p":"F",'
        f'"log":"{fluentbit_escape(text)}","kubernetes":{{"pod_name":"reviews-v1-5f7d9c7b8-abcde"}}}}'
    ).encode()


ENCODERS: dict[str, Callable[[str], bytes]] = {
    "fluentbit": fluentbit_record,
    "json-ascii": lambda t: json.dumps({"log": t, "stream": "stderr"}, ensure_ascii=True).encode(),
    "orjson-utf8": lambda t: orjson.dumps({"time": "2024-11-25T02:00:00Z", "log": t}),
    "docker": lambda t: json.dumps({"log": t + "\n", "stream": "stdout", "time": "2024-11-25T02:00:00Z"}).encode(),
}


def decoded_line(text: str) -> bytes:
    """What the decoders hand to the matcher for a JSON envelope: the text, one trailing newline stripped."""
    record = record_from_mapping({"log": text})
    assert isinstance(record, LogRecord)
    return record.line


def check_raw_path(compiled: CompiledCatalogue, reference: Reference, texts: list[str]) -> None:
    matcher, prefilter = Matcher(compiled), RecordPrefilter(compiled)
    for name, encode in ENCODERS.items():
        values = [encode(t) for t in texts]
        candidates = set(prefilter(values).tolist())
        for i, (text, value) in enumerate(zip(texts, values, strict=True)):
            expected = reference(decoded_line(text))
            if expected:
                assert i in candidates, (name, text, expected)
            if i in candidates:
                record = record_from_mapping(orjson.loads(value))
                assert isinstance(record, LogRecord)
                assert set(matcher.one(record.line)) == expected, (name, text)


def check_line_path(compiled: CompiledCatalogue, reference: Reference, lines: list[bytes]) -> None:
    got = {i: set(owners) for i, owners in Matcher(compiled)(lines)}
    expected = {i: ids for i, line in enumerate(lines) if (ids := reference(line))}
    assert got == expected


# -- the real corpus ----------------------------------------------------------------------------------------


def test_corpus_plain_lines(compiled: CompiledCatalogue, reference: Reference) -> None:
    lines = [entry["line"].encode() for entry in corpus_lines()]
    assert sum(1 for line in lines if reference(line)) >= 30  # the corpus is mostly problems: a real check
    check_line_path(compiled, reference, lines)


def test_corpus_as_raw_records(compiled: CompiledCatalogue, reference: Reference) -> None:
    check_raw_path(compiled, reference, [entry["line"] for entry in corpus_lines()])


def test_pipeline_counts_equal_the_reference(
    catalogue: Catalogue, compiled: CompiledCatalogue, reference: Reference
) -> None:
    """The whole match-first pipeline (no metadata: every rule applies) counts exactly what re finds."""
    texts = [entry["line"] for entry in corpus_lines()] * 3
    values = [fluentbit_record(t) for t in texts]
    result = Pipeline(catalogue, compiled, default_cluster="c")(values, [0.0] * len(values))
    expected: Counter[str] = Counter()
    for text in texts:
        expected.update(reference(decoded_line(text)))
    assert result.matches == expected
    assert not result.rejected


# -- generated lines ---------------------------------------------------------------------------------------

_SPECIAL = ["\t", '"', "\\", "\\t", "\\u0009", "é", "日本", "\x00", "\r", "\n", "  ", "\u2028", "🙂", "{", "}", ":"]


@st.composite
def mutated_lines(draw: st.DrawFn) -> str:
    """A corpus line cut, spliced and salted with characters that JSON escapes or that cross separators."""
    corpus = [entry["line"] for entry in corpus_lines()]
    base = draw(st.sampled_from(corpus))
    parts = [base]
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(parts[-1])))
        piece = draw(st.one_of(st.sampled_from(_SPECIAL), st.sampled_from(corpus).map(lambda s: s[:40])))
        line = parts.pop()
        parts.append(line[:where] + piece + line[where:])
    if draw(st.booleans()):
        parts[-1] = parts[-1].replace(" ", "\t")
    return parts[-1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutated_lines(), min_size=1, max_size=12))
def test_generated_lines_both_paths(compiled: CompiledCatalogue, reference: Reference, texts: list[str]) -> None:
    check_line_path(compiled, reference, [t.encode("utf-8", "surrogatepass") for t in texts])
    check_raw_path(compiled, reference, texts)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_never_disagree(compiled: CompiledCatalogue, reference: Reference, lines: list[bytes]) -> None:
    lines = [line.replace(b"\n", b" ") for line in lines]  # one physical line each, as the readers split them
    check_line_path(compiled, reference, lines)
