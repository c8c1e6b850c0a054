"""Shared fixtures of the decode tests: the real-line corpus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = "istio_real_lines.jsonl"


def load_corpus() -> list[dict[str, str]]:
    """The real public Istio lines (../shared/corpus, or corpus/ in the repo); skip visibly without them."""
    candidates = [ROOT / "tests" / "data" / NAME, ROOT.parent / "shared" / "corpus" / NAME]
    for path in candidates:
        if path.exists():
            with path.open(encoding="utf-8") as fh:
                return [json.loads(line) for line in fh if line.strip()]
    pytest.skip(f"corpus not found in {candidates}")


@pytest.fixture(scope="session")
def corpus() -> list[dict[str, str]]:
    return load_corpus()


@pytest.fixture(scope="session")
def corpus_lines(corpus: list[dict[str, str]]) -> list[str]:
    return [entry["line"] for entry in corpus]


@pytest.fixture(scope="session")
def corpus_line(corpus_lines: list[str]) -> Callable[[str], str]:
    """Look up the one corpus line that starts with a given prefix (so hand tables cite real lines)."""

    def find(prefix: str) -> str:
        found = [line for line in corpus_lines if line.startswith(prefix)]
        assert len(found) == 1, f"{len(found)} corpus lines start with {prefix!r}"
        return found[0]

    return find
