"""The batch screen: which records get a second look before decoding, read off the joined chunk with numpy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.match import CompiledCatalogue, compile_catalogue
from analyzer.match.compiler import Entry, prefilter_literals
from analyzer.match.scanner import screen_and_scan
from analyzer.pipeline import Pipeline
from analyzer.types import Expression
from tests.match.helpers import catalogue, rule

CAT = catalogue(rule("refused", r"connect: connection refused"))
MAX = 64


def odd(value: bytes) -> bool:
    """The per-record test the screen stands in for (a superset of it is fine, a subset is not)."""
    return not value or value.isspace() or len(value) > MAX or (value[:1] == b"{" and value.rstrip()[-1:] != b"}")


records = st.lists(
    st.one_of(
        st.binary(max_size=80),
        st.sampled_from([b"", b" ", b"\n", b"{}", b'{"log":"x"}', b'{"log":"x"} ', b'{"log"', b"{" + b"x" * 70 + b"}"]),
    ),
    max_size=40,
)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> CompiledCatalogue:
    return compile_catalogue(CAT, cache_dir=tmp_path_factory.mktemp("hs"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=records)
def test_every_record_to_refuse_is_a_suspect(compiled: CompiledCatalogue, values: list[bytes]) -> None:
    _, suspects = screen_and_scan(compiled.windowed, values, MAX)
    assert {i for i, v in enumerate(values) if odd(v)} <= set(suspects.tolist())


def test_the_pipeline_counts_what_it_refuses_and_matches_the_rest(tmp_path: Path) -> None:
    compiled = compile_catalogue(CAT, cache_dir=tmp_path)
    pipeline = Pipeline(CAT, compiled, default_cluster="c", max_record_bytes=200)
    good = b'{"log":"dial tcp 10.0.0.1:80: connect: connection refused","kubernetes":{"pod_name":"p-1"}}'
    values = [b"", good, b"   ", b"{" + b" " * 300 + b"}", good[:-5], b" " + good, good + b"  \n", good]
    result = pipeline(values, [1.0] * len(values))
    assert result.rejected == {"empty": 2, "too-large": 1, "invalid-json": 1}
    # the blank-led and the newline-ended records are not refused: CRI/plain decoding takes them
    assert result.matches["refused"] == 4


def test_a_literal_holding_another_chosen_one_is_dropped() -> None:
    def entry(owner: str, pattern: str, caseless: bool = False) -> Entry:
        return Entry(owner, Expression(pattern, caseless), "f.yaml")

    literals, problems = prefilter_literals(
        [
            entry("a", r"connection refused"),
            entry("b", r"dial tcp [0-9.:]+: connect: connection refused"),  # holds a's literal: dropped
            entry("c", r"NOT READY", caseless=True),
            entry("d", r"proxy not ready yet"),  # c's caseless literal covers it
            entry("e", r"upstream timeout"),
            entry("f", r"UPSTREAM TIMEOUT now", caseless=True),  # e is case-sensitive: it does not cover f
        ]
    )
    assert not problems
    assert sorted(literals) == [
        (b"NOT READY", True),
        (b"UPSTREAM TIMEOUT now", True),
        (b"connection refused", False),
        (b"upstream timeout", False),
    ]
