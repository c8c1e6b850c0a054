"""Offline matching: the match-first path (decode only candidates) finds exactly what decoding every line
finds, with the same line numbers and times."""

from __future__ import annotations

import random

import pytest

from analyzer.catalogue import load_catalogue
from analyzer.decode import Format
from analyzer.match import CompiledCatalogue, compile_catalogue
from analyzer.offline import Found, LineMatcher
from analyzer.types import Catalogue
from tests.conftest import PATTERNS, corpus_lines


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalogue, CompiledCatalogue]:
    catalogue = load_catalogue(PATTERNS)
    return catalogue, compile_catalogue(catalogue, cache_dir=tmp_path_factory.mktemp("hs"))


def summary(found: list[Found]) -> list[tuple[int, float, tuple[str, ...], bytes]]:
    return [(f.line_no, f.time, tuple(r.id for r in f.rules), f.record.line) for f in found]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_match_first_equals_decoding_every_line(compiled: tuple[Catalogue, CompiledCatalogue], seed: int) -> None:
    catalogue, db = compiled
    rng = random.Random(seed)
    lines = [entry["line"].encode() for entry in corpus_lines()]
    # Shuffle, and add timestamp-less continuation lines so some matches take an earlier line's time.
    block = []
    for line in rng.sample(lines, len(lines)):
        block.append(line)
        if rng.random() < 0.3:
            block.append(b"    at io.envoy.Continuation(line " + str(rng.randint(1, 99)).encode() + b")")
    blocks = [block[: len(block) // 2], block[len(block) // 2 :]]
    fast, slow = LineMatcher(catalogue, db, Format.AUTO), LineMatcher(catalogue, db, Format.AUTO)
    fast_found = [f for b in blocks for f in fast._match_first(b)]
    slow_found = [f for b in blocks for f in slow._sequential(b)]
    assert summary(fast_found) == summary(slow_found)
    assert len(fast_found) > 30


def test_stream_time_is_the_last_event_time(compiled: tuple[Catalogue, CompiledCatalogue]) -> None:
    catalogue, db = compiled
    lines = [f"2024-05-0{d}T10:00:0{s}.000000Z\tinfo\tads\tpush {d}{s}".encode() for d in range(1, 4) for s in range(5)]
    lines.append(b"a continuation line without a time")
    fast, slow = LineMatcher(catalogue, db, Format.AUTO), LineMatcher(catalogue, db, Format.AUTO)
    fast._match_first(lines)
    slow._sequential(lines)
    assert fast.stats.last_time == slow.stats.last_time == 1714730404.0
    assert fast.stats.first_time == slow.stats.first_time == 1714557600.0
